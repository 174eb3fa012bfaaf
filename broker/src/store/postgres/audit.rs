//! The audit chain on PostgreSQL: appends serialised per mesh by a transaction-scoped
//! advisory lock, so writers on any number of replicas extend one chain and never fork it.

use async_trait::async_trait;
use serde_json::Value;

use super::{PgStore, pg_error};
use crate::protocol::audit::{GENESIS, IsoDates, canonical_json, entry_hash};
use crate::store::{AuditEntry, AuditPage, AuditStore, StoreResult};

/// First key of the advisory lock (the second is the hash of the mesh id).
pub(super) const AUDIT_LOCK_CLASS: i32 = 0x6175_6474; // "audt"

/// The `audit_log` columns of one mesh's part of a batch, for one multi-row insert.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    event_type: Vec<String>,
    actor: Vec<Option<String>>,
    payload: Vec<String>,
    created_at: Vec<i64>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

/// One event waiting to be appended.
pub(super) struct AuditItem {
    pub mesh_id: String,
    pub event_type: String,
    pub actor: Option<String>,
    pub payload: Value,
    pub created_at: i64,
}

/// Appends a batch: per mesh, one transaction under the mesh's advisory lock extends the
/// chain with all of that mesh's events, in submission order, with one multi-row insert.
/// Concurrent batches (other replicas) wait for the lock, so the chain never forks.
pub(super) async fn append_batch(
    mut c: deadpool_postgres::Object,
    batch: Vec<AuditItem>,
) -> StoreResult<Vec<()>> {
    let mut meshes: Vec<&str> = batch.iter().map(|i| i.mesh_id.as_str()).collect();
    meshes.sort_unstable();
    meshes.dedup();
    for mesh_id in meshes {
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&AUDIT_LOCK_CLASS, &mesh_id],
        )
        .await
        .map_err(pg_error)?;
        let last = tx
            .query_opt(
                "SELECT seq, hash FROM audit_log WHERE mesh_id = $1 ORDER BY seq DESC LIMIT 1",
                &[&mesh_id],
            )
            .await
            .map_err(pg_error)?;
        let (mut seq, mut prev) = match last {
            Some(r) => (r.get::<_, i64>(0), r.get::<_, String>(1)),
            None => (0, GENESIS.to_string()),
        };
        let mut rows = Columns::default();
        let mut dates = IsoDates::default();
        for item in batch.iter().filter(|i| i.mesh_id == mesh_id) {
            let hash = entry_hash(
                &prev,
                mesh_id,
                &item.event_type,
                item.actor.as_deref(),
                &item.payload,
                dates.format(item.created_at),
            );
            seq += 1;
            rows.seq.push(seq);
            rows.event_type.push(item.event_type.clone());
            rows.actor.push(item.actor.clone());
            rows.payload.push(canonical_json(&item.payload));
            rows.created_at.push(item.created_at);
            rows.prev_hash
                .push(std::mem::replace(&mut prev, hash.clone()));
            rows.hash.push(hash);
        }
        tx.execute(
            "INSERT INTO audit_log (mesh_id, seq, event_type, actor_member_id, payload, created_at, prev_hash, hash) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[])",
            &[&mesh_id, &rows.seq, &rows.event_type, &rows.actor, &rows.payload, &rows.created_at, &rows.prev_hash, &rows.hash],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
    }
    Ok(vec![(); batch.len()])
}

pub(super) async fn entries(store: &PgStore, mesh_id: &str) -> StoreResult<Vec<AuditEntry>> {
    let rows = store
        .query(
            "SELECT seq, event_type, actor_member_id, payload, created_at, prev_hash, hash \
             FROM audit_log WHERE mesh_id = $1 ORDER BY seq",
            &[&mesh_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            seq: r.get("seq"),
            mesh_id: mesh_id.to_string(),
            event_type: r.get("event_type"),
            actor_member_id: r.get("actor_member_id"),
            // A payload altered into invalid JSON still breaks the chain at this entry.
            payload: serde_json::from_str(r.get("payload")).unwrap_or(Value::Null),
            created_at: r.get("created_at"),
            prev_hash: r.get("prev_hash"),
            hash: r.get("hash"),
        })
        .collect())
}

/// Extensions §8: one page, newest first, read in one statement (the count is a window
/// over the same filter, so page and total agree).
pub(super) async fn page(
    store: &PgStore,
    mesh_id: &str,
    event_type: Option<&str>,
    limit: usize,
    offset: usize,
) -> StoreResult<AuditPage> {
    let (limit, offset) = (limit as i64, offset as i64);
    let rows = store
        .query(
            "WITH matching AS ( \
                 SELECT seq, event_type, actor_member_id, payload, created_at, prev_hash, hash \
                 FROM audit_log WHERE mesh_id = $1 AND ($2::text IS NULL OR event_type = $2)) \
             SELECT (SELECT count(*) FROM matching) AS total, p.* FROM \
                 (SELECT * FROM matching ORDER BY seq DESC LIMIT $3 OFFSET $4) p \
             RIGHT JOIN (SELECT 1) one ON true ORDER BY p.seq DESC",
            &[&mesh_id, &event_type, &limit, &offset],
        )
        .await?;
    let total = rows.first().map(|r| r.get::<_, i64>("total")).unwrap_or(0);
    let entries = rows
        .iter()
        .filter_map(|r| {
            Some(AuditEntry {
                seq: r.get::<_, Option<i64>>("seq")?,
                mesh_id: mesh_id.to_string(),
                event_type: r.get("event_type"),
                actor_member_id: r.get("actor_member_id"),
                payload: serde_json::from_str(r.get("payload")).unwrap_or(Value::Null),
                created_at: r.get("created_at"),
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
            })
        })
        .collect();
    Ok(AuditPage { entries, total })
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(
        &self,
        mesh_id: &str,
        event_type: &str,
        actor_member_id: Option<&str>,
        payload: Value,
        created_at: i64,
    ) -> StoreResult<()> {
        let item = AuditItem {
            mesh_id: mesh_id.to_string(),
            event_type: event_type.to_string(),
            actor: actor_member_id.map(str::to_string),
            payload,
            created_at,
        };
        self.auditor.submit(item).await
    }

    /// One call of [`append_batch`] (a transaction per mesh) on a pooled connection,
    /// without going through the one-event batcher.
    async fn append_audit_batch(&self, events: Vec<crate::store::AuditEvent>) -> StoreResult<()> {
        let batch = events
            .into_iter()
            .map(|e| AuditItem {
                mesh_id: e.mesh_id,
                event_type: e.event_type.to_string(),
                actor: e.actor,
                payload: e.payload,
                created_at: e.created_at,
            })
            .collect();
        append_batch(self.conn().await?, batch).await.map(drop)
    }

    async fn audit_entries(&self, mesh_id: &str) -> StoreResult<Vec<AuditEntry>> {
        entries(self, mesh_id).await
    }

    async fn audit_page(
        &self,
        mesh_id: &str,
        event_type: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> StoreResult<AuditPage> {
        page(self, mesh_id, event_type, limit, offset).await
    }
}
