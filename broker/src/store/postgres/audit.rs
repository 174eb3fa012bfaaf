//! The audit chain on PostgreSQL: appends serialised per mesh by a transaction-scoped
//! advisory lock, so writers on any number of replicas extend one chain and never fork it.

use serde_json::Value;

use super::{PgStore, pg_error};
use crate::ids::iso8601_ms;
use crate::protocol::audit::{GENESIS, canonical_json, entry_hash};
use crate::store::{AuditEntry, StoreResult};

/// First key of the advisory lock (the second is the hash of the mesh id).
const AUDIT_LOCK_CLASS: i32 = 0x6175_6474; // "audt"

pub(super) async fn append(
    store: &PgStore,
    mesh_id: &str,
    event_type: &str,
    actor: Option<&str>,
    payload: &Value,
    created_at: i64,
) -> StoreResult<()> {
    let mut c = store.conn().await?;
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
    let (seq, prev_hash) = match last {
        Some(r) => (r.get::<_, i64>(0) + 1, r.get::<_, String>(1)),
        None => (1, GENESIS.to_string()),
    };
    let hash = entry_hash(
        &prev_hash,
        mesh_id,
        event_type,
        actor,
        payload,
        &iso8601_ms(created_at),
    );
    tx.execute(
        "INSERT INTO audit_log (mesh_id, seq, event_type, actor_member_id, payload, created_at, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[&mesh_id, &seq, &event_type, &actor, &canonical_json(payload), &created_at, &prev_hash, &hash],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)
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
