//! Integration tests: the real `migrator` binary against a fresh PostgreSQL database per test.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls};

/// The server the tests create their databases on; `TEST_PG_URL` overrides it.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Every table the initial schema creates.
const V1_TABLES: [&str; 6] = [
    "meshes",
    "members",
    "invites",
    "message_queue",
    "audit_log",
    "peer_state",
];

fn admin_url() -> String {
    std::env::var("TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_string())
}

/// 64 random bits in hex (std's per-process random hash keys, mixed with pid and time).
fn random_hex() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// `url` with its database (the path) replaced by `db`, keeping any `?query`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own for one test, so tests run in parallel.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> Self {
        let admin = admin_url();
        let name = format!("migrator_test_{}", random_hex());
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        TestDb {
            url: with_database(&admin, &name),
            name,
        }
    }

    async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Drops the database, ending any session still connected to it.
    async fn remove(self) {
        connect(&admin_url())
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

async fn table_exists(client: &Client, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

/// The versions recorded in refinery's history table, in order (none when it does not exist).
async fn history(client: &Client) -> Vec<i64> {
    if !table_exists(client, "refinery_schema_history").await {
        return Vec::new();
    }
    client
        .query(
            "SELECT version::bigint FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The migrator binary with a clean environment: PATH, plus DATABASE_URL when given.
fn migrator(database_url: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrator"));
    cmd.env_clear()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd
}

/// What one migrator process did.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            success: out.status.success(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

impl Run {
    fn assert_success(&self) {
        assert!(self.success, "migrator failed: {self:?}");
    }

    /// A failure reported as exactly one `migrator: ...` line on stderr; returns that line.
    fn assert_failure(&self) -> &str {
        assert!(
            !self.success,
            "migrator succeeded where it should fail: {self:?}"
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr should be one line: {self:?}");
        assert!(
            lines[0].starts_with("migrator:"),
            "stderr should start with `migrator:`: {self:?}"
        );
        lines[0]
    }

    /// How many stdout lines say `applied V<version> <name>`.
    fn applied_count(&self, version: i64, name: &str) -> usize {
        let want = format!("applied V{version} {name}");
        self.stdout.lines().filter(|l| l.trim() == want).count()
    }

    /// The state `migrator status` reports for `version`, and the name it gives.
    fn status_of(&self, version: i64) -> Option<(String, String)> {
        let tag = format!("V{version}");
        self.stdout
            .lines()
            .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [v, state, name] if v == tag => Some((state.to_string(), name.to_string())),
                _ => None,
            })
    }
}

fn run(mut cmd: Command) -> Run {
    cmd.output().unwrap().into()
}

/// A temporary directory holding the shipped migrations plus a V2 that creates
/// `should_not_exist` and then fails.
struct BrokenMigrations(PathBuf);

/// The versions of the shipped migrations, in order.
fn shipped_versions() -> Vec<i64> {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut versions: Vec<i64> = std::fs::read_dir(&shipped)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix('V')?.split("__").next()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
}

/// The version of the broken migration: one after the newest shipped one.
fn broken_version() -> i64 {
    shipped_versions().last().copied().unwrap_or(0) + 1
}

impl BrokenMigrations {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("migrator-test-{}", random_hex()));
        std::fs::create_dir(&dir).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut copied = 0;
        for entry in std::fs::read_dir(&shipped).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sql") {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
                copied += 1;
            }
        }
        assert!(copied > 0, "no migrations found in {}", shipped.display());
        // The failure must come at execution, after the CREATE TABLE ran: a syntax error
        // would reject the whole batch before any statement of it executes.
        std::fs::write(
            dir.join(format!("V{}__broken.sql", broken_version())),
            "CREATE TABLE should_not_exist (id integer);\nINSERT INTO no_such_table VALUES (1);\n",
        )
        .unwrap();
        BrokenMigrations(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for BrokenMigrations {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn fresh_database_gets_the_initial_schema() {
    let db = TestDb::create().await;
    let out = run(migrator(Some(&db.url), &[]));
    out.assert_success();
    assert_eq!(out.applied_count(1, "initial_schema"), 1, "{out:?}");

    let client = db.client().await;
    for table in V1_TABLES {
        assert!(table_exists(&client, table).await, "table {table} missing");
    }
    let partial: Option<bool> = client
        .query_opt(
            "SELECT i.indpred IS NOT NULL FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = 'message_queue_pending' AND i.indrelid = 'message_queue'::regclass",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert_eq!(
        partial,
        Some(true),
        "message_queue_pending should be a partial index on message_queue"
    );
    assert_eq!(history(&client).await, shipped_versions());

    drop(client);
    db.remove().await;
}

#[tokio::test]
async fn rerun_is_a_no_op() {
    let db = TestDb::create().await;
    run(migrator(Some(&db.url), &[])).assert_success();

    let again = run(migrator(Some(&db.url), &[]));
    again.assert_success();
    assert!(again.stdout.contains("schema is current"), "{again:?}");
    assert_eq!(again.applied_count(1, "initial_schema"), 0, "{again:?}");
    assert_eq!(history(&db.client().await).await, shipped_versions());

    db.remove().await;
}

#[tokio::test]
async fn status_lists_pending_then_applied() {
    let db = TestDb::create().await;

    let before = run(migrator(Some(&db.url), &["status"]));
    before.assert_success();
    assert_eq!(
        before.status_of(1),
        Some(("pending".into(), "initial_schema".into())),
        "{before:?}"
    );
    // `status` only reads: it applies nothing.
    assert!(!table_exists(&db.client().await, "meshes").await);

    run(migrator(Some(&db.url), &["run"])).assert_success();

    let after = run(migrator(Some(&db.url), &["status"]));
    after.assert_success();
    assert_eq!(
        after.status_of(1),
        Some(("applied".into(), "initial_schema".into())),
        "{after:?}"
    );

    db.remove().await;
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let db = TestDb::create().await;

    // All four are running before the first is waited on.
    let children: Vec<Child> = (0..4)
        .map(|_| migrator(Some(&db.url), &[]).spawn().unwrap())
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().into())
        .collect();

    for r in &runs {
        r.assert_success();
    }
    let applied: usize = runs
        .iter()
        .map(|r| r.applied_count(1, "initial_schema"))
        .sum();
    assert_eq!(applied, 1, "exactly one migrator should apply V1: {runs:?}");
    let current = runs
        .iter()
        .filter(|r| r.stdout.contains("schema is current"))
        .count();
    assert_eq!(
        current, 3,
        "the other three should find the schema current: {runs:?}"
    );

    let client = db.client().await;
    assert_eq!(history(&client).await, shipped_versions());
    for table in V1_TABLES {
        assert!(table_exists(&client, table).await, "table {table} missing");
    }

    drop(client);
    db.remove().await;
}

#[tokio::test]
async fn broken_migration_on_fresh_database_changes_nothing() {
    let db = TestDb::create().await;
    let dir = BrokenMigrations::create();

    let out = run(migrator(Some(&db.url), &["--dir", dir.path()]));
    out.assert_failure();
    assert_eq!(out.applied_count(1, "initial_schema"), 0, "{out:?}");

    // One transaction for the whole run: V1 is rolled back along with V2.
    let client = db.client().await;
    assert!(
        !table_exists(&client, "meshes").await,
        "V1 must not survive a failed grouped run"
    );
    assert!(
        !table_exists(&client, "should_not_exist").await,
        "V2's table must be rolled back"
    );
    assert_eq!(history(&client).await, Vec::<i64>::new());

    drop(client);
    db.remove().await;
}

#[tokio::test]
async fn broken_migration_after_v1_keeps_v1() {
    let db = TestDb::create().await;
    run(migrator(Some(&db.url), &[])).assert_success();
    let dir = BrokenMigrations::create();

    let out = run(migrator(Some(&db.url), &["--dir", dir.path()]));
    out.assert_failure();

    let client = db.client().await;
    assert_eq!(history(&client).await, shipped_versions());
    assert!(table_exists(&client, "meshes").await);
    assert!(
        !table_exists(&client, "should_not_exist").await,
        "V2's table must be rolled back"
    );

    let status = run(migrator(Some(&db.url), &["status", "--dir", dir.path()]));
    status.assert_success();
    assert_eq!(
        status.status_of(1),
        Some(("applied".into(), "initial_schema".into())),
        "{status:?}"
    );
    assert_eq!(
        status.status_of(broken_version()),
        Some(("pending".into(), "broken".into())),
        "{status:?}"
    );

    drop(client);
    db.remove().await;
}

#[tokio::test]
async fn missing_database_url_fails() {
    let out = run(migrator(None, &[]));
    let line = out.assert_failure();
    assert!(line.contains("DATABASE_URL"), "{out:?}");
}

#[tokio::test]
async fn unreachable_database_fails_with_one_line() {
    let out = run(migrator(
        Some("postgres://postgres@127.0.0.1:1/postgres"),
        &[],
    ));
    out.assert_failure();
}

#[tokio::test]
async fn held_lock_bounds_the_wait() {
    let db = TestDb::create().await;
    let holder = db.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&migrator::LOCK_KEY])
        .await
        .unwrap();

    let mut cmd = migrator(Some(&db.url), &[]);
    cmd.env("MIGRATOR_LOCK_WAIT_MS", "300");
    let blocked = run(cmd);
    let line = blocked.assert_failure();
    assert!(
        line.contains("lock"),
        "the failure should mention the lock: {blocked:?}"
    );
    assert!(
        !table_exists(&holder, "meshes").await,
        "nothing may be applied without the lock"
    );
    assert_eq!(history(&holder).await, Vec::<i64>::new());

    let released: bool = holder
        .query_one("SELECT pg_advisory_unlock($1)", &[&migrator::LOCK_KEY])
        .await
        .unwrap()
        .get(0);
    assert!(released);

    let mut cmd = migrator(Some(&db.url), &[]);
    cmd.env("MIGRATOR_LOCK_WAIT_MS", "300");
    let out = run(cmd);
    out.assert_success();
    assert_eq!(out.applied_count(1, "initial_schema"), 1, "{out:?}");
    assert_eq!(history(&holder).await, shipped_versions());

    drop(holder);
    db.remove().await;
}
