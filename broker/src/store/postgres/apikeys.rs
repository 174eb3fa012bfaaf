//! [`ApiKeyStore`](crate::store::apikeys::ApiKeyStore) on PostgreSQL: table `api_key`, one
//! row per key (prefix and SHA-256 hash, never the secret). A new key is counted and
//! inserted under its issuer's advisory lock, so the per-member bound is exact.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::apikeys::{ApiKey, ApiKeyStore, RevokeOutcome};

/// First key of the per-issuer advisory lock of new keys (the second is a hash of the
/// mesh and member ids).
const APIKEY_LOCK_CLASS: i32 = 0x6170_696b; // "apik"

const COLUMNS: &str = "id, mesh_id, label, prefix, secret_hash, capabilities, topic_scopes, \
                       issued_by_member_id, created_at, last_used_at, revoked_at, expires_at";

fn key_from_row(r: &Row) -> ApiKey {
    ApiKey {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        label: r.get("label"),
        prefix: r.get("prefix"),
        secret_hash: r.get("secret_hash"),
        capabilities: r.get("capabilities"),
        topic_scopes: r.get("topic_scopes"),
        issued_by_member_id: r.get("issued_by_member_id"),
        created_at: r.get("created_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
        expires_at: r.get("expires_at"),
    }
}

/// `%`, `_` and `\` taken literally in a `LIKE` pattern.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl ApiKeyStore for PgStore {
    async fn create_api_key(
        &self,
        k: ApiKey,
        max_per_member: usize,
        purge_before: i64,
    ) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let issuer = k.issued_by_member_id.clone().unwrap_or_default();
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3))",
            &[&APIKEY_LOCK_CLASS, &k.mesh_id, &issuer],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            "DELETE FROM api_key WHERE mesh_id = $1 \
             AND issued_by_member_id IS NOT DISTINCT FROM $2 \
             AND (revoked_at < $3 OR expires_at < $3)",
            &[&k.mesh_id, &k.issued_by_member_id, &purge_before],
        )
        .await
        .map_err(pg_error)?;
        if max_per_member > 0 {
            let held: i64 = tx
                .query_one(
                    "SELECT count(*) FROM api_key WHERE mesh_id = $1 \
                     AND issued_by_member_id IS NOT DISTINCT FROM $2",
                    &[&k.mesh_id, &k.issued_by_member_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if held >= max_per_member as i64 {
                return Ok(false);
            }
        }
        tx.execute(
            &format!(
                "INSERT INTO api_key ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                &k.id,
                &k.mesh_id,
                &k.label,
                &k.prefix,
                &k.secret_hash,
                &k.capabilities,
                &k.topic_scopes,
                &k.issued_by_member_id,
                &k.created_at,
                &k.last_used_at,
                &k.revoked_at,
                &k.expires_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn api_keys(&self, mesh_id: &str, issuer: Option<&str>) -> StoreResult<Vec<ApiKey>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM api_key WHERE mesh_id = $1 \
                     AND ($2::text IS NULL OR issued_by_member_id = $2) \
                     ORDER BY created_at DESC, seq DESC"
                ),
                &[&mesh_id, &issuer],
            )
            .await?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn api_keys_by_prefix(&self, prefix: &str) -> StoreResult<Vec<ApiKey>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM api_key WHERE prefix = $1 LIMIT 8"),
                &[&prefix],
            )
            .await?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM api_key WHERE id = $1"),
                &[&key_id],
            )
            .await?;
        Ok(rows.first().map(key_from_row))
    }

    async fn revoke_api_key(
        &self,
        mesh_id: &str,
        id_or_prefix: &str,
        issuer: Option<&str>,
        min_prefix: usize,
        now: i64,
    ) -> StoreResult<RevokeOutcome> {
        let pattern = if id_or_prefix.len() >= min_prefix {
            format!("{}%", like_escape(id_or_prefix))
        } else {
            like_escape(id_or_prefix)
        };
        let rows = self
            .query(
                "SELECT id FROM api_key WHERE mesh_id = $1 \
                 AND ($2::text IS NULL OR issued_by_member_id = $2) \
                 AND (id = $3 OR id LIKE $4) ORDER BY id LIMIT 2",
                &[&mesh_id, &issuer, &id_or_prefix, &pattern],
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        match ids.as_slice() {
            [] => Ok(RevokeOutcome::NotFound),
            [id] => {
                self.execute(
                    "UPDATE api_key SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[id, &now],
                )
                .await?;
                Ok(RevokeOutcome::Revoked(id.clone()))
            }
            _ => Ok(RevokeOutcome::NotUnique(ids)),
        }
    }

    async fn touch_api_key(&self, key_id: &str, at: i64) -> StoreResult<()> {
        self.execute(
            "UPDATE api_key SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $2)",
            &[&key_id, &at],
        )
        .await?;
        Ok(())
    }

    async fn recent_key_issuers(&self, mesh_id: &str, since: i64) -> StoreResult<Vec<String>> {
        let rows = self
            .query(
                "SELECT DISTINCT issued_by_member_id FROM api_key WHERE mesh_id = $1 \
                 AND revoked_at IS NULL AND last_used_at >= $2 \
                 AND issued_by_member_id IS NOT NULL ORDER BY 1",
                &[&mesh_id, &since],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
