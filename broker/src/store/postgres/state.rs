//! [`StateStore`](crate::store::state::StateStore) on PostgreSQL: table `state`, one row per
//! (mesh, key). A write of an existing key is one `UPDATE` that takes the row's lock and
//! bumps its `version`, so concurrent writers of one key on any number of replicas commit
//! in version order; a write of a new key serialises with the mesh's other new keys under a
//! transaction-scoped advisory lock, so the per-mesh key bound is exact.

use async_trait::async_trait;
use serde_json::Value;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::state::{SetState, StateEntry, StateStore, StateWrite};

/// First key of the per-mesh advisory lock of new keys (the second is the mesh id's hash).
const STATE_LOCK_CLASS: i32 = 0x7374_6174; // "stat"

const COLUMNS: &str =
    "mesh_id, key, value, updated_by_member_id, updated_by_name, updated_at, version";

fn entry_from_row(r: &Row) -> StateEntry {
    StateEntry {
        mesh_id: r.get("mesh_id"),
        key: r.get("key"),
        value: r.get::<_, Value>("value"),
        updated_by_member_id: r.get("updated_by_member_id"),
        updated_by_name: r.get("updated_by_name"),
        updated_at: r.get("updated_at"),
        version: r.get("version"),
    }
}

#[async_trait]
impl StateStore for PgStore {
    async fn set_state(&self, w: StateWrite<'_>) -> StoreResult<SetState> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let updated = tx
            .query_opt(
                &format!(
                    "UPDATE state SET value = $3, updated_by_member_id = $4, updated_by_name = $5, \
                     updated_at = $6, version = version + 1 \
                     WHERE mesh_id = $1 AND key = $2 RETURNING {COLUMNS}"
                ),
                &[
                    &w.mesh_id,
                    &w.key,
                    w.value,
                    &w.member_id,
                    &w.member_name,
                    &w.now_ms,
                ],
            )
            .await
            .map_err(pg_error)?;
        if let Some(row) = updated {
            tx.commit().await.map_err(pg_error)?;
            return Ok(SetState::Written(entry_from_row(&row)));
        }
        // A new key: count and insert under the mesh's lock, so two new keys racing for the
        // last slot cannot both take it.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&STATE_LOCK_CLASS, &w.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        if w.max_keys > 0 {
            let count: i64 = tx
                .query_one(
                    "SELECT count(*) FROM state WHERE mesh_id = $1",
                    &[&w.mesh_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if count >= w.max_keys as i64 {
                // The key may have been inserted meanwhile by a writer that held the lock:
                // then it is an update, which the bound does not refuse.
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM state WHERE mesh_id = $1 AND key = $2",
                        &[&w.mesh_id, &w.key],
                    )
                    .await
                    .map_err(pg_error)?
                    .is_some();
                if !exists {
                    return Ok(SetState::TooManyKeys);
                }
            }
        }
        // ON CONFLICT: a writer of the same key committed between the UPDATE and the lock.
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO state ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, 1) \
                     ON CONFLICT (mesh_id, key) DO UPDATE SET value = EXCLUDED.value, \
                     updated_by_member_id = EXCLUDED.updated_by_member_id, \
                     updated_by_name = EXCLUDED.updated_by_name, \
                     updated_at = EXCLUDED.updated_at, version = state.version + 1 \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &w.mesh_id,
                    &w.key,
                    w.value,
                    &w.member_id,
                    &w.member_name,
                    &w.now_ms,
                ],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(SetState::Written(entry_from_row(&row)))
    }

    async fn state(&self, mesh_id: &str, key: &str) -> StoreResult<Option<StateEntry>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM state WHERE mesh_id = $1 AND key = $2"),
                &[&mesh_id, &key],
            )
            .await?;
        Ok(rows.first().map(entry_from_row))
    }

    async fn list_state(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<StateEntry>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM state WHERE mesh_id = $1 \
                     ORDER BY key COLLATE \"C\" LIMIT $2"
                ),
                &[&mesh_id, &limit],
            )
            .await?;
        Ok(rows.iter().map(entry_from_row).collect())
    }
}
