//! [`VaultStore`](crate::store::vault::VaultStore) on PostgreSQL: table `vault_entry`, one row
//! per (mesh, member, key). A write of an existing key is one `UPDATE`; a new key is counted
//! and inserted under the member's advisory lock, so the per-member bound is exact.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::vault::{VaultEntry, VaultMeta, VaultStore};

/// First key of the per-member advisory lock of new keys (the second is a hash of the
/// mesh and member ids).
const VAULT_LOCK_CLASS: i32 = 0x7661_756c; // "vaul"

const COLUMNS: &str = "mesh_id, member_id, key, ciphertext, nonce, sealed_key, entry_type, \
                       mount_path, description, updated_at";

fn entry_from_row(r: &Row) -> VaultEntry {
    VaultEntry {
        mesh_id: r.get("mesh_id"),
        member_id: r.get("member_id"),
        key: r.get("key"),
        ciphertext: r.get("ciphertext"),
        nonce: r.get("nonce"),
        sealed_key: r.get("sealed_key"),
        entry_type: r.get("entry_type"),
        mount_path: r.get("mount_path"),
        description: r.get("description"),
        updated_at: r.get("updated_at"),
    }
}

#[async_trait]
impl VaultStore for PgStore {
    async fn vault_set(&self, e: VaultEntry, max_entries: usize) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
            &e.mesh_id,
            &e.member_id,
            &e.key,
            &e.ciphertext,
            &e.nonce,
            &e.sealed_key,
            &e.entry_type,
            &e.mount_path,
            &e.description,
            &e.updated_at,
        ];
        let updated = tx
            .execute(
                "UPDATE vault_entry SET ciphertext = $4, nonce = $5, sealed_key = $6, \
                 entry_type = $7, mount_path = $8, description = $9, updated_at = $10 \
                 WHERE mesh_id = $1 AND member_id = $2 AND key = $3",
                &params,
            )
            .await
            .map_err(pg_error)?;
        if updated == 0 {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3))",
                &[&VAULT_LOCK_CLASS, &e.mesh_id, &e.member_id],
            )
            .await
            .map_err(pg_error)?;
            if max_entries > 0 {
                let count: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM vault_entry WHERE mesh_id = $1 AND member_id = $2 \
                         AND key <> $3",
                        &[&e.mesh_id, &e.member_id, &e.key],
                    )
                    .await
                    .map_err(pg_error)?
                    .get(0);
                if count >= max_entries as i64 {
                    return Ok(false);
                }
            }
            // ON CONFLICT: a writer of the same key committed between the UPDATE and the lock.
            tx.execute(
                &format!(
                    "INSERT INTO vault_entry ({COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (mesh_id, member_id, key) DO UPDATE SET \
                     ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce, \
                     sealed_key = EXCLUDED.sealed_key, entry_type = EXCLUDED.entry_type, \
                     mount_path = EXCLUDED.mount_path, description = EXCLUDED.description, \
                     updated_at = EXCLUDED.updated_at"
                ),
                &params,
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn vault_get(
        &self,
        mesh_id: &str,
        member_id: &str,
        keys: &[String],
    ) -> StoreResult<Vec<VaultEntry>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM vault_entry WHERE mesh_id = $1 AND member_id = $2 \
                     AND key = ANY ($3) ORDER BY key COLLATE \"C\""
                ),
                &[&mesh_id, &member_id, &keys],
            )
            .await?;
        Ok(rows.iter().map(entry_from_row).collect())
    }

    async fn vault_list(
        &self,
        mesh_id: &str,
        member_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<VaultMeta>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .query(
                "SELECT key, entry_type, mount_path, description, updated_at FROM vault_entry \
                 WHERE mesh_id = $1 AND member_id = $2 ORDER BY key COLLATE \"C\" LIMIT $3",
                &[&mesh_id, &member_id, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| VaultMeta {
                key: r.get("key"),
                entry_type: r.get("entry_type"),
                mount_path: r.get("mount_path"),
                description: r.get("description"),
                updated_at: r.get("updated_at"),
            })
            .collect())
    }

    async fn vault_delete(&self, mesh_id: &str, member_id: &str, key: &str) -> StoreResult<bool> {
        let n = self
            .execute(
                "DELETE FROM vault_entry WHERE mesh_id = $1 AND member_id = $2 AND key = $3",
                &[&mesh_id, &member_id, &key],
            )
            .await?;
        Ok(n > 0)
    }
}
