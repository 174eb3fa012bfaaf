//! [`StreamStore`](crate::store::streams::StreamStore) on PostgreSQL: table `stream`, one
//! row per (mesh, name). Creates serialise per mesh under a transaction-scoped advisory
//! lock, so the per-mesh bound is exact and concurrent creates of one name answer one id.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::streams::{CreateStream, Stream, StreamStore};

/// First key of the per-mesh advisory lock of creates (the second is the mesh id's hash).
const STREAM_LOCK_CLASS: i32 = 0x7374_726d; // "strm"

fn stream_from_row(r: &Row) -> Stream {
    Stream {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        name: r.get("name"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
    }
}

#[async_trait]
impl StreamStore for PgStore {
    async fn create_stream(
        &self,
        stream: Stream,
        max_per_mesh: usize,
    ) -> StoreResult<CreateStream> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&STREAM_LOCK_CLASS, &stream.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        if let Some(row) = tx
            .query_opt(
                "SELECT * FROM stream WHERE mesh_id = $1 AND name = $2",
                &[&stream.mesh_id, &stream.name],
            )
            .await
            .map_err(pg_error)?
        {
            return Ok(CreateStream::Stream(stream_from_row(&row)));
        }
        if max_per_mesh > 0 {
            let count: i64 = tx
                .query_one(
                    "SELECT count(*) FROM stream WHERE mesh_id = $1",
                    &[&stream.mesh_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if count >= max_per_mesh as i64 {
                return Ok(CreateStream::Full);
            }
        }
        tx.execute(
            "INSERT INTO stream (id, mesh_id, name, created_by, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                &stream.id,
                &stream.mesh_id,
                &stream.name,
                &stream.created_by,
                &stream.created_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(CreateStream::Stream(stream))
    }

    async fn list_streams(&self, mesh_id: &str) -> StoreResult<Vec<Stream>> {
        let rows = self
            .query(
                "SELECT * FROM stream WHERE mesh_id = $1 ORDER BY created_at, seq",
                &[&mesh_id],
            )
            .await?;
        Ok(rows.iter().map(stream_from_row).collect())
    }
}
