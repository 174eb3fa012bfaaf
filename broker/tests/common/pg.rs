//! PostgreSQL for tests: a fresh database per test on the shared server, or a private
//! cluster (initdb + pg_ctl) that a fault test can stop and restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio_postgres::NoTls;

/// The shared server tests create their databases on (`TEST_PG_URL` overrides it).
pub fn admin_url() -> String {
    std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `base` with its database name replaced by `db`.
pub fn with_db(base: &str, db: &str) -> String {
    let (prefix, _) = base.rsplit_once('/').expect("URL has a database path");
    format!("{prefix}/{db}")
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed by this test: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Creates an empty database on the server at `admin` and returns its URL.
///
/// The name carries this process's id (`t_<pid>_<random>`), and the first call of a test
/// process drops the databases of test processes that are gone: a suite run leaves only
/// its last binary's databases behind instead of hundreds of megabytes per run.
pub async fn create_db(admin: &str) -> String {
    let client = connect(admin).await;
    sweep_dead_databases(&client).await;
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        broker::ids::random_id(12).to_lowercase()
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    with_db(admin, &name)
}

/// The process id in a test database's name, if it has one (`t_<pid>_<random>`).
fn creator_pid(datname: &str) -> Option<u32> {
    let (pid, rest) = datname.strip_prefix("t_")?.split_once('_')?;
    (!rest.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// Drops, once per process, the test databases whose creating process has exited.
async fn sweep_dead_databases(client: &tokio_postgres::Client) {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Ok(rows) = client
        .query(
            r"SELECT datname FROM pg_database WHERE datname LIKE 't\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Best effort: another process may be dropping the same database right now.
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// Applies the embedded migrations, as the migrator job does.
pub async fn migrate(url: &str) {
    let mut client = migrator::connect(url).await.expect("connect for migration");
    migrator::migrate(&mut client, migrator::embedded(), Duration::from_secs(30))
        .await
        .expect("migrations apply");
}

/// A fresh, migrated database on the shared server.
pub async fn fresh_db() -> String {
    let url = create_db(&admin_url()).await;
    migrate(&url).await;
    url
}

fn bin(name: &str) -> PathBuf {
    for v in ["15", "16", "17", "14", "13"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/{name}"));
        if p.exists() {
            return p;
        }
    }
    panic!("PostgreSQL server binaries ({name}) are not installed: apt-get install -y postgresql");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (initdb refuses root).
fn run_pg(tool: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin(tool));
        c
    } else {
        Command::new(bin(tool))
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} runs: {e}"))
}

/// A private PostgreSQL cluster on its own port, stopped when dropped.
pub struct PgCluster {
    dir: PathBuf,
    pub port: u16,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = std::env::temp_dir().join(format!("pg-test-{}", broker::ids::random_id(10)));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success());
            assert_eq!(
                ok.ok(),
                Some(true),
                "chown the cluster directory to postgres"
            );
        }
        let data = dir.join("data");
        let out = run_pg(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = PgCluster { dir, port };
        cluster.start_server();
        cluster
    }

    fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            path(&self.dir)
        );
        let log = self.dir.join("postgres.log");
        let out = run_pg(
            "pg_ctl",
            &[
                "-D",
                path(&self.dir.join("data")),
                "-o",
                &opts,
                "-l",
                path(&log),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (fast shutdown: sessions are cut, as in a crash of the clients' view).
    pub fn stop(&self) {
        self.stop_with("fast");
    }

    /// Stops the server with `-m immediate`: every backend dies at once, mid-commit
    /// included, as in a crash; the next start runs crash recovery.
    pub fn stop_immediate(&self) {
        self.stop_with("immediate");
    }

    fn stop_with(&self, mode: &str) {
        let data = self.dir.join("data");
        let out = run_pg("pg_ctl", &["-D", path(&data), "-m", mode, "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&self) {
        self.start_server();
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = run_pg(
            "pg_ctl",
            &[
                "-D",
                path(&self.dir.join("data")),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
