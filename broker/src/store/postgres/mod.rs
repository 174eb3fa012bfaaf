//! [`Store`](crate::store::Store) on PostgreSQL (deadpool-postgres): the durable truth of a
//! cluster. One file per capability: `members.rs` (meshes, members, grants, bans),
//! `invites.rs`, `queue.rs`, `audit.rs`, `peer_state.rs`; this file holds the pool, the error
//! mapping and [`StoreBackend`].
//!
//! Durable sends are group-committed by a writer task (see [`queue`]), `client_ack`s are
//! batched the same way, drains claim rows with `FOR UPDATE SKIP LOCKED` and a lease, and
//! audit appends serialise per mesh under `pg_advisory_xact_lock` (see [`audit`]).
//! The schema belongs to the migrator; this module only checks its version.

mod accounts;
mod apikeys;
mod audit;
mod clocks;
mod contexts;
mod files;
mod invites;
mod mcp_registry;
mod members;
mod memories;
mod msg_status;
mod peer_state;
mod queue;
mod schedule;
mod skills;
mod state;
mod streams;
mod tasks;
mod topics;
mod vault;
mod watches;
mod webhooks;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use crate::protocol::Group;
use crate::store::{QueuedMessage, StoreBackend, StoreError, StoreResult};

/// The newest migration this broker was built for (`migrator/migrations/V{n}__*.sql`).
pub const SCHEMA_VERSION: i64 = 15;

/// How long a query may wait for a pooled connection or a new one before it fails.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// Histograms the store reports into (cloned handles of the broker's metrics).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub batch_rows: prometheus_client::metrics::histogram::Histogram,
    pub pool_wait_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// The PostgreSQL store. Cloning shares the pool and the batching tasks.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    metrics: queue::Metrics,
    enqueuer: queue::Batcher<QueuedMessage, Option<String>>,
    acker: queue::Batcher<queue::AckItem, bool>,
    leaser: queue::Batcher<queue::LeaseItem, bool>,
    auditor: queue::Batcher<audit::AuditItem, ()>,
    /// Delivery-status records of fan-outs (extensions §7), group-committed.
    fanouts: queue::Batcher<crate::store::msg_status::SentMessage, ()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

pub(crate) fn db_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict("already exists".into())
        }
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => StoreError::NotFound,
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl PgStore {
    /// Builds the pool and the batching tasks. Connections are opened lazily.
    pub fn new(url: &str, pool_size: usize) -> StoreResult<PgStore> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("DATABASE_URL: {e}")))?;
        pg.connect_timeout(POOL_TIMEOUT);
        if pg.get_application_name().is_none() {
            pg.application_name("mesh-broker");
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(db_error)?;
        let metrics = queue::Metrics::default();
        Ok(PgStore {
            enqueuer: queue::Batcher::spawn(pool.clone(), metrics.clone(), queue::insert_batch),
            acker: queue::Batcher::spawn(pool.clone(), metrics.clone(), queue::ack_batch),
            leaser: queue::Batcher::spawn(pool.clone(), metrics.clone(), queue::lease_batch),
            auditor: queue::Batcher::spawn(pool.clone(), metrics.clone(), audit::append_batch),
            fanouts: queue::Batcher::spawn(pool.clone(), metrics.clone(), msg_status::fanout_batch),
            pool,
            metrics,
        })
    }

    /// Reports batch sizes and pool waits into `metrics` from now on.
    pub fn with_metrics(self, metrics: StoreMetrics) -> Self {
        let _ = self.metrics.set(metrics);
        self
    }

    async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        queue::timed_get(&self.pool, &self.metrics).await
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        let span = crate::telemetry::db_span(sql);
        tracing::Instrument::instrument(
            async {
                let c = self.conn().await?;
                let stmt = c.prepare_cached(sql).await.map_err(pg_error)?;
                c.query(&stmt, params).await.map_err(pg_error)
            },
            span.clone(),
        )
        .await
        .inspect_err(|_| {
            span.record("otel.status_code", "error");
        })
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<u64> {
        let span = crate::telemetry::db_span(sql);
        tracing::Instrument::instrument(
            async {
                let c = self.conn().await?;
                let stmt = c.prepare_cached(sql).await.map_err(pg_error)?;
                c.execute(&stmt, params).await.map_err(pg_error)
            },
            span.clone(),
        )
        .await
        .inspect_err(|_| {
            span.record("otel.status_code", "error");
        })
    }
}

fn groups_json(groups: &[Group]) -> Value {
    serde_json::to_value(groups).unwrap_or(Value::Array(vec![]))
}

#[async_trait]
impl StoreBackend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn healthy(&self) -> bool {
        self.query("SELECT 1", &[]).await.is_ok()
    }

    async fn schema_version(&self) -> StoreResult<Option<i64>> {
        let exists = self
            .query(
                "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
                &[],
            )
            .await?;
        if !exists.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(Some(0));
        }
        let rows = self
            .query(
                "SELECT coalesce(max(version), 0)::bigint FROM refinery_schema_history",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_version_matches_the_newest_migration() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrator/migrations");
        let newest = std::fs::read_dir(dir)
            .expect("migrator/migrations exists")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix('V')?.split("__").next()?.parse::<i64>().ok())
            .max();
        assert_eq!(
            newest,
            Some(super::SCHEMA_VERSION),
            "bump SCHEMA_VERSION with every migration"
        );
    }
}
