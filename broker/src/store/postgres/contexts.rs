//! [`ContextStore`](crate::store::contexts::ContextStore) on PostgreSQL: table `context`, one
//! row per (mesh, member), upserted with `ON CONFLICT` (which keeps the row's `id`).

use async_trait::async_trait;
use tokio_postgres::Row;

use super::PgStore;
use crate::store::StoreResult;
use crate::store::contexts::{Context, ContextStore};

const COLUMNS: &str =
    "id, mesh_id, member_id, member_name, summary, files_read, key_findings, tags, updated_at";

fn context_from_row(r: &Row) -> Context {
    Context {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        member_id: r.get("member_id"),
        member_name: r.get("member_name"),
        summary: r.get("summary"),
        files_read: r.get("files_read"),
        key_findings: r.get("key_findings"),
        tags: r.get("tags"),
        updated_at: r.get("updated_at"),
    }
}

fn limit_of(limit: usize) -> i64 {
    limit.min(i64::MAX as usize) as i64
}

#[async_trait]
impl ContextStore for PgStore {
    async fn share_context(&self, c: Context) -> StoreResult<String> {
        let rows = self
            .query(
                &format!(
                    "INSERT INTO context ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (mesh_id, member_id) DO UPDATE SET \
                     member_name = EXCLUDED.member_name, summary = EXCLUDED.summary, \
                     files_read = EXCLUDED.files_read, key_findings = EXCLUDED.key_findings, \
                     tags = EXCLUDED.tags, updated_at = EXCLUDED.updated_at \
                     RETURNING id"
                ),
                &[
                    &c.id,
                    &c.mesh_id,
                    &c.member_id,
                    &c.member_name,
                    &c.summary,
                    &c.files_read,
                    &c.key_findings,
                    &c.tags,
                    &c.updated_at,
                ],
            )
            .await?;
        Ok(rows.first().map(|r| r.get("id")).unwrap_or(c.id))
    }

    async fn find_contexts(
        &self,
        mesh_id: &str,
        query: &str,
        limit: usize,
    ) -> StoreResult<Vec<Context>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM context WHERE mesh_id = $1 \
                     AND (strpos(lower(summary), lower($2)) > 0 OR $2 = ANY (tags)) \
                     ORDER BY updated_at DESC, member_id COLLATE \"C\" LIMIT $3"
                ),
                &[&mesh_id, &query, &limit_of(limit)],
            )
            .await?;
        Ok(rows.iter().map(context_from_row).collect())
    }

    async fn list_contexts(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<Context>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM context WHERE mesh_id = $1 \
                     ORDER BY updated_at DESC, member_id COLLATE \"C\" LIMIT $2"
                ),
                &[&mesh_id, &limit_of(limit)],
            )
            .await?;
        Ok(rows.iter().map(context_from_row).collect())
    }
}
