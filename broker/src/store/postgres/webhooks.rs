//! [`WebhookStore`](crate::store::webhooks::WebhookStore) on PostgreSQL: table `webhook`,
//! unique (mesh, name) and (mesh, secret hash). A create counts and inserts under the
//! mesh's advisory lock, so the per-mesh bound is exact.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::webhooks::{Webhook, WebhookCreated, WebhookStore};
use crate::store::{StoreError, StoreResult};

/// First key of the per-mesh advisory lock of new webhooks (the second is a hash of the
/// mesh id).
const WEBHOOK_LOCK_CLASS: i32 = 0x7768_6b73; // "whks"

const COLUMNS: &str = "id, mesh_id, name, secret_hash, creator_member_id, created_at";

fn from_row(r: &Row) -> Webhook {
    Webhook {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        name: r.get("name"),
        secret_hash: r.get("secret_hash"),
        creator_member_id: r.get("creator_member_id"),
        created_at: r.get("created_at"),
    }
}

#[async_trait]
impl WebhookStore for PgStore {
    async fn webhook_create(&self, h: Webhook, max_per_mesh: usize) -> StoreResult<WebhookCreated> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&WEBHOOK_LOCK_CLASS, &h.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        let row = tx
            .query_one(
                "SELECT count(*) AS n, count(*) FILTER (WHERE name = $2) AS taken \
                 FROM webhook WHERE mesh_id = $1",
                &[&h.mesh_id, &h.name],
            )
            .await
            .map_err(pg_error)?;
        let (n, taken): (i64, i64) = (row.get("n"), row.get("taken"));
        if taken > 0 {
            return Ok(WebhookCreated::Exists);
        }
        if max_per_mesh > 0 && n >= max_per_mesh as i64 {
            return Ok(WebhookCreated::TooMany);
        }
        let inserted = tx
            .execute(
                &format!("INSERT INTO webhook ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
                &[
                    &h.id,
                    &h.mesh_id,
                    &h.name,
                    &h.secret_hash,
                    &h.creator_member_id,
                    &h.created_at,
                ],
            )
            .await
            .map_err(pg_error);
        match inserted {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => return Ok(WebhookCreated::Exists),
            Err(e) => return Err(e),
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(WebhookCreated::Created)
    }

    async fn webhook_list(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<Webhook>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM webhook WHERE mesh_id = $1 \
                     ORDER BY created_at, name COLLATE \"C\" LIMIT $2"
                ),
                &[&mesh_id, &limit],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    async fn webhook_get(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Webhook>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM webhook WHERE mesh_id = $1 AND name = $2"),
                &[&mesh_id, &name],
            )
            .await?;
        Ok(rows.first().map(from_row))
    }

    async fn webhook_delete(&self, mesh_id: &str, name: &str) -> StoreResult<bool> {
        let n = self
            .execute(
                "DELETE FROM webhook WHERE mesh_id = $1 AND name = $2",
                &[&mesh_id, &name],
            )
            .await?;
        Ok(n > 0)
    }

    async fn webhook_by_secret(
        &self,
        mesh_id: &str,
        secret_hash: &str,
    ) -> StoreResult<Option<Webhook>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM webhook WHERE mesh_id = $1 AND secret_hash = $2"),
                &[&mesh_id, &secret_hash],
            )
            .await?;
        Ok(rows.first().map(from_row))
    }
}
