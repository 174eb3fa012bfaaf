//! [`MemoriesStore`](crate::store::memories::MemoriesStore) on PostgreSQL: table `memory`,
//! searched through its generated `search_vector` (`to_tsvector('english', content)`, GIN
//! index) with `plainto_tsquery('english', …)`, ranked by `ts_rank`. Inserts serialise per
//! mesh under a transaction-scoped advisory lock, so the per-mesh bound is exact.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::memories::{Forgetter, MemoriesStore, Memory};

/// First key of the per-mesh advisory lock of inserts (the second is the mesh id's hash).
const MEMORY_LOCK_CLASS: i32 = 0x6d65_6d6f; // "memo"

const COLUMNS: &str = "id, mesh_id, content, tags, member_id, member_name, created_at";

fn memory_from_row(r: &Row) -> Memory {
    Memory {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        content: r.get("content"),
        tags: r.get("tags"),
        member_id: r.get("member_id"),
        member_name: r.get("member_name"),
        created_at: r.get("created_at"),
    }
}

#[async_trait]
impl MemoriesStore for PgStore {
    async fn remember(&self, m: Memory, max_per_mesh: usize) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        if max_per_mesh > 0 {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&MEMORY_LOCK_CLASS, &m.mesh_id],
            )
            .await
            .map_err(pg_error)?;
            let count: i64 = tx
                .query_one(
                    "SELECT count(*) FROM memory WHERE mesh_id = $1 AND forgotten_at IS NULL",
                    &[&m.mesh_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if count >= max_per_mesh as i64 {
                return Ok(false);
            }
        }
        tx.execute(
            &format!("INSERT INTO memory ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
            &[
                &m.id,
                &m.mesh_id,
                &m.content,
                &m.tags,
                &m.member_id,
                &m.member_name,
                &m.created_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn memory_count(&self, mesh_id: &str) -> StoreResult<u64> {
        let rows = self
            .query(
                "SELECT count(*) FROM memory WHERE mesh_id = $1 AND forgotten_at IS NULL",
                &[&mesh_id],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    async fn recall(&self, mesh_id: &str, query: &str, limit: usize) -> StoreResult<Vec<Memory>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM memory, plainto_tsquery('english', $2) AS q \
                     WHERE mesh_id = $1 AND forgotten_at IS NULL AND search_vector @@ q \
                     ORDER BY ts_rank(search_vector, q) DESC, created_at DESC, id DESC \
                     LIMIT $3"
                ),
                &[&mesh_id, &query, &limit],
            )
            .await?;
        Ok(rows.iter().map(memory_from_row).collect())
    }

    async fn forget(
        &self,
        mesh_id: &str,
        memory_id: &str,
        by: Forgetter<'_>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let author = match by {
            Forgetter::Author(member) => Some(member),
            Forgetter::Anyone => None,
        };
        let n = self
            .execute(
                "UPDATE memory SET forgotten_at = $4 WHERE id = $2 AND mesh_id = $1 \
                 AND forgotten_at IS NULL AND ($3::text IS NULL OR member_id = $3)",
                &[&mesh_id, &memory_id, &author, &now_ms],
            )
            .await?;
        Ok(n > 0)
    }
}
