//! The broker's schema migrations and the one way to apply them: under a PostgreSQL
//! session advisory lock, so any number of migrators started together apply each
//! migration exactly once (refinery itself takes no lock).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use refinery::{Migration, Runner};
use tokio_postgres::{Client, NoTls};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Key of the advisory lock every migrator takes (an arbitrary constant: "cmesh-mg").
pub const LOCK_KEY: i64 = 0x636d_6573_682d_6d67;

/// The migrations built into this binary.
pub fn embedded() -> Runner {
    embedded::migrations::runner()
}

/// Migrations read from a directory instead (operators testing a migration, and tests).
pub fn from_dir(dir: &Path) -> Result<Runner> {
    let migrations: Vec<Migration> = refinery::load_sql_migrations(dir)
        .with_context(|| format!("reading migrations from {}", dir.display()))?;
    Ok(Runner::new(&migrations))
}

/// The newest version among `runner`'s migrations.
pub fn latest_version(runner: &Runner) -> i64 {
    runner
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Connects one dedicated, unpooled session (advisory locks belong to a session).
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to DATABASE_URL")?;
    tokio::spawn(async move {
        // The connection ends with the client; its error, if any, surfaces in queries.
        let _ = connection.await;
    });
    Ok(client)
}

/// Waits up to `wait` for the migration lock.
pub async fn lock(client: &Client, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("another migrator has held the migration lock for more than {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies every pending migration in one transaction, under the lock; returns the
/// versions applied by this call (empty when the schema was already current).
pub async fn migrate(
    client: &mut Client,
    runner: Runner,
    wait: Duration,
) -> Result<Vec<(i64, String)>> {
    lock(client, wait).await?;
    // All or nothing: a failing migration leaves the schema as it was.
    let report = runner.set_grouped(true).run_async(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .ok();
    let report = report.map_err(|e| anyhow::anyhow!("migration failed: {}", one_line(&e)))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| (i64::from(m.version()), m.name().to_string()))
        .collect())
}

/// An error and its causes on one line (PostgreSQL messages may span several).
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if let Some(db) = find_db_error(e) {
        text.push_str(&format!(": {} ({})", db.message(), db.code().code()));
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn find_db_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a tokio_postgres::error::DbError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(db) = c.downcast_ref::<tokio_postgres::error::DbError>() {
            return Some(db);
        }
        if let Some(db) = c
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|pg| pg.as_db_error())
        {
            return Some(db);
        }
        cur = c.source();
    }
    None
}

/// `(version, name, applied)` for every migration of `runner`, plus applied versions the
/// runner does not know (a newer schema than this binary).
pub async fn status(client: &mut Client, runner: &Runner) -> Result<Vec<(i64, String, bool)>> {
    let row = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?;
    let applied = if row.get::<_, bool>(0) {
        runner
            .get_applied_migrations_async(client)
            .await
            .map_err(|e| anyhow::anyhow!("reading the migration history: {e}"))?
    } else {
        Vec::new()
    };
    let mut rows: Vec<(i64, String, bool)> = runner
        .get_migrations()
        .iter()
        .map(|m| {
            let v = i64::from(m.version());
            (
                v,
                m.name().to_string(),
                applied.iter().any(|a| i64::from(a.version()) == v),
            )
        })
        .collect();
    for a in &applied {
        let v = i64::from(a.version());
        if !rows.iter().any(|r| r.0 == v) {
            rows.push((v, a.name().to_string(), true));
        }
    }
    rows.sort();
    Ok(rows)
}
