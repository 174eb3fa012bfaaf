//! [`ScheduleStore`](crate::store::schedule::ScheduleStore) on PostgreSQL.
//!
//! A claim is a transaction on a connection of its own: the due rows are locked with
//! `FOR UPDATE SKIP LOCKED` (the pollers of other replicas skip them, a cancel waits), the
//! caller fires them, and [`DueClaim::commit`] writes every outcome and commits. A claim
//! dropped without a commit takes its connection out of the pool and closes it, so the
//! server rolls the transaction back and the rows are due again.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, db_error, pg_error};
use crate::store::schedule::{
    ClaimBackend, DueClaim, FireOutcome, ScheduleStore, ScheduledEntry, limit_error,
};
use crate::store::{StoreError, StoreResult};

const COLUMNS: &str = "id, mesh_id, presence_id, member_id, \"to\", message, deliver_at, cron, subtype, \
                       fired_count, cancelled, fired_at, created_at";

fn entry_from_row(r: &Row) -> ScheduledEntry {
    ScheduledEntry {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        presence_id: r.get("presence_id"),
        member_id: r.get("member_id"),
        to: r.get("to"),
        message: r.get("message"),
        deliver_at: r.get("deliver_at"),
        cron: r.get("cron"),
        subtype: r.get("subtype"),
        fired_count: r.get("fired_count"),
        cancelled: r.get("cancelled"),
        fired_at: r.get("fired_at"),
        created_at: r.get("created_at"),
    }
}

struct PgClaim {
    conn: Option<deadpool_postgres::Object>,
}

impl Drop for PgClaim {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The transaction is still open: never hand this connection back to the pool.
            // Closing it makes the server roll back and release the row locks.
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

#[async_trait]
impl ClaimBackend for PgClaim {
    async fn commit(mut self: Box<Self>, outcomes: Vec<(String, FireOutcome)>) -> StoreResult<()> {
        let Some(conn) = self.conn.as_ref() else {
            return Err(StoreError::Unavailable("claim already ended".into()));
        };
        let fired = conn
            .prepare_cached(
                "UPDATE scheduled_message SET fired_count = fired_count + 1, \
                 deliver_at = coalesce($2, deliver_at), attempt_at = coalesce($2, attempt_at), \
                 fired_at = CASE WHEN $2::bigint IS NULL THEN $3 ELSE fired_at END \
                 WHERE id = $1",
            )
            .await
            .map_err(pg_error)?;
        let retry = conn
            .prepare_cached("UPDATE scheduled_message SET attempt_at = $2 WHERE id = $1")
            .await
            .map_err(pg_error)?;
        for (id, outcome) in &outcomes {
            match *outcome {
                FireOutcome::Fired { at, next } => {
                    conn.execute(&fired, &[id, &next, &at])
                        .await
                        .map_err(pg_error)?;
                }
                FireOutcome::Retry { retry_at } => {
                    conn.execute(&retry, &[id, &retry_at])
                        .await
                        .map_err(pg_error)?;
                }
            }
        }
        conn.batch_execute("COMMIT").await.map_err(pg_error)?;
        // Committed: the connection is clean and may go back to the pool.
        drop(self.conn.take());
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for PgStore {
    async fn create_scheduled(&self, e: ScheduledEntry, max_active: usize) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        // One creator per member at a time, so the count below cannot be overtaken.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('scheduled_message:' || $1 || ':' || $2, 0))",
            &[&e.mesh_id, &e.member_id],
        )
        .await
        .map_err(pg_error)?;
        let active: i64 = tx
            .query_one(
                "SELECT count(*) FROM scheduled_message \
                 WHERE mesh_id = $1 AND member_id = $2 AND NOT cancelled AND fired_at IS NULL",
                &[&e.mesh_id, &e.member_id],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        if active >= max_active as i64 {
            return Err(limit_error());
        }
        tx.execute(
            "INSERT INTO scheduled_message (id, mesh_id, presence_id, member_id, \"to\", message, \
             deliver_at, attempt_at, cron, subtype, fired_count, cancelled, fired_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &e.id,
                &e.mesh_id,
                &e.presence_id,
                &e.member_id,
                &e.to,
                &e.message,
                &e.deliver_at,
                &e.cron,
                &e.subtype,
                &e.fired_count,
                &e.cancelled,
                &e.fired_at,
                &e.created_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)
    }

    async fn list_scheduled(
        &self,
        mesh_id: &str,
        member_id: &str,
    ) -> StoreResult<Vec<ScheduledEntry>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM scheduled_message \
             WHERE mesh_id = $1 AND member_id = $2 AND NOT cancelled AND fired_at IS NULL \
             ORDER BY created_at, id"
        );
        Ok(self
            .query(&sql, &[&mesh_id, &member_id])
            .await?
            .iter()
            .map(entry_from_row)
            .collect())
    }

    async fn cancel_scheduled(
        &self,
        mesh_id: &str,
        member_id: &str,
        id: &str,
    ) -> StoreResult<bool> {
        let n = self
            .execute(
                "UPDATE scheduled_message SET cancelled = true \
                 WHERE id = $1 AND mesh_id = $2 AND member_id = $3 \
                 AND NOT cancelled AND fired_at IS NULL",
                &[&id, &mesh_id, &member_id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn claim_due(&self, now_ms: i64, limit: usize) -> StoreResult<DueClaim<'_>> {
        let conn = self.conn().await?;
        let mut claim = PgClaim { conn: None };
        conn.batch_execute("BEGIN").await.map_err(db_error)?;
        // From here on a failure drops the claim, which closes the connection.
        claim.conn = Some(conn);
        let sql = format!(
            "SELECT {COLUMNS} FROM scheduled_message \
             WHERE NOT cancelled AND fired_at IS NULL AND attempt_at <= $1 \
             ORDER BY attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
        );
        let c = claim
            .conn
            .as_ref()
            .ok_or_else(|| db_error("no connection"))?;
        let stmt = c.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = c
            .query(&stmt, &[&now_ms, &(limit as i64)])
            .await
            .map_err(pg_error)?;
        let entries = rows.iter().map(entry_from_row).collect();
        Ok(DueClaim::new(entries, Box::new(claim)))
    }
}
