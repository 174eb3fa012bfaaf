//! [`FileStore`](crate::store::files::FileStore) on PostgreSQL: tables `file`, `file_chunk`
//! (the body as `bytea` rows of at most 256 KiB), `file_key`, `file_access` and
//! `file_usage` (stored bytes per mesh). Each chunk is inserted in the same transaction
//! that adds its bytes to the mesh's `file_usage` row under a bound, so the per-mesh
//! budget is exact whatever replica streams which upload. With an object store
//! (`FILES_S3_*`) `file_reserve` counts each part the same way without a chunk row.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::files::{Begin, FileAccess, FileKey, FileRecord, FileStore};
use crate::store::{StoreError, StoreResult};

/// First key of the per-mesh advisory lock of new uploads (the file-count bound).
const FILE_LOCK_CLASS: i32 = 0x6669_6c65; // "file"

const COLUMNS: &str = "id, mesh_id, uploader_member_id, uploader_name, name, tags, persistent, \
                       encrypted, owner_pubkey, target_spec, size, uploaded_at";

fn record_from_row(r: &Row) -> FileRecord {
    FileRecord {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        uploader_member_id: r.get("uploader_member_id"),
        uploader_name: r.get("uploader_name"),
        name: r.get("name"),
        tags: r.get("tags"),
        persistent: r.get("persistent"),
        encrypted: r.get("encrypted"),
        owner_pubkey: r.get("owner_pubkey"),
        target_spec: r.get("target_spec"),
        size: r.get("size"),
        uploaded_at: r.get("uploaded_at"),
    }
}

/// Drops the chunks of `file_id` and releases their bytes from the mesh's usage; returns
/// whether the row existed. Runs inside the caller's transaction.
async fn drop_body(
    tx: &tokio_postgres::Transaction<'_>,
    mesh_id: &str,
    file_id: &str,
) -> StoreResult<bool> {
    let row = tx
        .query_opt(
            "SELECT stored_bytes FROM file WHERE id = $1 AND mesh_id = $2 FOR UPDATE",
            &[&file_id, &mesh_id],
        )
        .await
        .map_err(pg_error)?;
    let Some(row) = row else {
        return Ok(false);
    };
    let stored: i64 = row.get(0);
    tx.execute("DELETE FROM file_chunk WHERE file_id = $1", &[&file_id])
        .await
        .map_err(pg_error)?;
    tx.execute(
        "UPDATE file SET stored_bytes = 0 WHERE id = $1",
        &[&file_id],
    )
    .await
    .map_err(pg_error)?;
    if stored > 0 {
        tx.execute(
            "UPDATE file_usage SET bytes = GREATEST(bytes - $2, 0) WHERE mesh_id = $1",
            &[&mesh_id, &stored],
        )
        .await
        .map_err(pg_error)?;
    }
    Ok(true)
}

/// Counts `bytes` of an incomplete upload against the mesh's `file_usage` under
/// `max_mesh_bytes`, and stores `chunk` (PostgreSQL bodies) in the same transaction; without
/// a chunk the body is in the object store (`file_reserve`).
async fn count_bytes(
    store: &PgStore,
    mesh_id: &str,
    file_id: &str,
    chunk: Option<(i32, &[u8])>,
    bytes: u64,
    max_mesh_bytes: u64,
) -> StoreResult<bool> {
    let n = i64::try_from(bytes).unwrap_or(i64::MAX);
    let max = i64::try_from(max_mesh_bytes).unwrap_or(i64::MAX);
    let mut c = store.conn().await?;
    let tx = c.transaction().await.map_err(pg_error)?;
    let open = tx
        .query_opt(
            "SELECT 1 FROM file WHERE id = $1 AND mesh_id = $2 AND NOT complete FOR UPDATE",
            &[&file_id, &mesh_id],
        )
        .await
        .map_err(pg_error)?;
    if open.is_none() {
        return Err(StoreError::NotFound);
    }
    if n > max {
        return Ok(false);
    }
    let counted = tx
        .query_opt(
            "INSERT INTO file_usage (mesh_id, bytes) VALUES ($1, $2) \
                 ON CONFLICT (mesh_id) DO UPDATE SET bytes = file_usage.bytes + EXCLUDED.bytes \
                 WHERE file_usage.bytes + EXCLUDED.bytes <= $3 RETURNING bytes",
            &[&mesh_id, &n, &max],
        )
        .await
        .map_err(pg_error)?;
    if counted.is_none() {
        return Ok(false);
    }
    if let Some((seq, data)) = chunk {
        tx.execute(
            "INSERT INTO file_chunk (file_id, seq, data) VALUES ($1, $2, $3)",
            &[&file_id, &seq, &data],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.execute(
        "UPDATE file SET stored_bytes = stored_bytes + $2 WHERE id = $1",
        &[&file_id, &n],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(true)
}

#[async_trait]
impl FileStore for PgStore {
    async fn file_begin(
        &self,
        f: FileRecord,
        keys: Vec<FileKey>,
        max_files: usize,
        stale_before: i64,
    ) -> StoreResult<Begin> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&FILE_LOCK_CLASS, &f.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        let stale = tx
            .query(
                "SELECT id FROM file WHERE mesh_id = $1 AND NOT complete AND uploaded_at < $2",
                &[&f.mesh_id, &stale_before],
            )
            .await
            .map_err(pg_error)?;
        for row in stale {
            let id: String = row.get(0);
            drop_body(&tx, &f.mesh_id, &id).await?;
            tx.execute("DELETE FROM file WHERE id = $1", &[&id])
                .await
                .map_err(pg_error)?;
        }
        if max_files > 0 {
            let held: i64 = tx
                .query_one(
                    "SELECT count(*) FROM file WHERE mesh_id = $1 AND deleted_at IS NULL",
                    &[&f.mesh_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if held >= max_files as i64 {
                return Ok(Begin::TooManyFiles);
            }
        }
        tx.execute(
            "INSERT INTO file (id, mesh_id, uploader_member_id, uploader_name, name, tags, \
             persistent, encrypted, owner_pubkey, target_spec, size, uploaded_at, complete) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, false)",
            &[
                &f.id,
                &f.mesh_id,
                &f.uploader_member_id,
                &f.uploader_name,
                &f.name,
                &f.tags,
                &f.persistent,
                &f.encrypted,
                &f.owner_pubkey,
                &f.target_spec,
                &f.uploaded_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        for k in keys {
            tx.execute(
                "INSERT INTO file_key (file_id, pubkey, sealed_key) VALUES ($1, $2, $3) \
                 ON CONFLICT (file_id, pubkey) DO UPDATE SET sealed_key = EXCLUDED.sealed_key",
                &[&f.id, &k.pubkey, &k.sealed_key],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(Begin::Started)
    }

    async fn file_append(
        &self,
        mesh_id: &str,
        file_id: &str,
        seq: i32,
        data: &[u8],
        max_mesh_bytes: u64,
    ) -> StoreResult<bool> {
        count_bytes(
            self,
            mesh_id,
            file_id,
            Some((seq, data)),
            data.len() as u64,
            max_mesh_bytes,
        )
        .await
    }

    async fn file_reserve(
        &self,
        mesh_id: &str,
        file_id: &str,
        bytes: u64,
        max_mesh_bytes: u64,
    ) -> StoreResult<bool> {
        count_bytes(self, mesh_id, file_id, None, bytes, max_mesh_bytes).await
    }

    async fn file_complete(&self, mesh_id: &str, file_id: &str, size: i64) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE file SET complete = true, size = $3 \
                 WHERE id = $1 AND mesh_id = $2 AND NOT complete",
                &[&file_id, &mesh_id, &size],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn file_abort(&self, mesh_id: &str, file_id: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let open = tx
            .query_opt(
                "SELECT 1 FROM file WHERE id = $1 AND mesh_id = $2 AND NOT complete FOR UPDATE",
                &[&file_id, &mesh_id],
            )
            .await
            .map_err(pg_error)?;
        if open.is_some() {
            drop_body(&tx, mesh_id, file_id).await?;
            tx.execute("DELETE FROM file WHERE id = $1", &[&file_id])
                .await
                .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    async fn file(&self, mesh_id: &str, file_id: &str) -> StoreResult<Option<FileRecord>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM file WHERE id = $1 AND mesh_id = $2 AND complete \
                     AND deleted_at IS NULL"
                ),
                &[&file_id, &mesh_id],
            )
            .await?;
        Ok(rows.first().map(record_from_row))
    }

    async fn file_key(&self, file_id: &str, pubkey: &str) -> StoreResult<Option<String>> {
        let rows = self
            .query(
                "SELECT sealed_key FROM file_key WHERE file_id = $1 AND pubkey = $2",
                &[&file_id, &pubkey],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn file_chunk(&self, file_id: &str, seq: i32) -> StoreResult<Option<Vec<u8>>> {
        let rows = self
            .query(
                "SELECT c.data FROM file_chunk c JOIN file f ON f.id = c.file_id \
                 WHERE c.file_id = $1 AND c.seq = $2 AND f.complete AND f.deleted_at IS NULL",
                &[&file_id, &seq],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn file_list(
        &self,
        mesh_id: &str,
        query: Option<&str>,
        from: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FileRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM file WHERE mesh_id = $1 AND complete \
                     AND deleted_at IS NULL \
                     AND ($2::text IS NULL OR strpos(lower(name), lower($2)) > 0) \
                     AND ($3::text IS NULL OR uploader_name = $3) \
                     ORDER BY uploaded_at DESC, id DESC LIMIT $4"
                ),
                &[&mesh_id, &query, &from, &limit],
            )
            .await?;
        Ok(rows.iter().map(record_from_row).collect())
    }

    async fn file_grant(&self, file_id: &str, key: FileKey, max_keys: usize) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let exists = tx
            .query_opt("SELECT 1 FROM file WHERE id = $1 FOR UPDATE", &[&file_id])
            .await
            .map_err(pg_error)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        if max_keys > 0 {
            let others: i64 = tx
                .query_one(
                    "SELECT count(*) FROM file_key WHERE file_id = $1 AND pubkey <> $2",
                    &[&file_id, &key.pubkey],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            let replacing = tx
                .query_opt(
                    "SELECT 1 FROM file_key WHERE file_id = $1 AND pubkey = $2",
                    &[&file_id, &key.pubkey],
                )
                .await
                .map_err(pg_error)?
                .is_some();
            if !replacing && others >= max_keys as i64 {
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT INTO file_key (file_id, pubkey, sealed_key) VALUES ($1, $2, $3) \
             ON CONFLICT (file_id, pubkey) DO UPDATE SET sealed_key = EXCLUDED.sealed_key",
            &[&file_id, &key.pubkey, &key.sealed_key],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn file_delete(&self, mesh_id: &str, file_id: &str, now: i64) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let visible = tx
            .query_opt(
                "SELECT 1 FROM file WHERE id = $1 AND mesh_id = $2 AND complete \
                 AND deleted_at IS NULL FOR UPDATE",
                &[&file_id, &mesh_id],
            )
            .await
            .map_err(pg_error)?;
        if visible.is_none() {
            return Ok(false);
        }
        drop_body(&tx, mesh_id, file_id).await?;
        tx.execute(
            "UPDATE file SET deleted_at = $2 WHERE id = $1",
            &[&file_id, &now],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn file_log_access(
        &self,
        file_id: &str,
        access: FileAccess,
        max_log: usize,
    ) -> StoreResult<()> {
        let keep = i64::try_from(max_log.max(1)).unwrap_or(i64::MAX);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO file_access (file_id, peer_name, accessed_at) VALUES ($1, $2, $3)",
            &[&file_id, &access.peer_name, &access.accessed_at],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            "DELETE FROM file_access WHERE file_id = $1 AND id NOT IN (SELECT id FROM \
             file_access WHERE file_id = $1 ORDER BY accessed_at DESC, id DESC LIMIT $2)",
            &[&file_id, &keep],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    async fn file_accesses(&self, file_id: &str, limit: usize) -> StoreResult<Vec<FileAccess>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT peer_name, accessed_at FROM file_access WHERE file_id = $1 \
                 ORDER BY accessed_at DESC, id DESC LIMIT $2",
                &[&file_id, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| FileAccess {
                peer_name: r.get(0),
                accessed_at: r.get(1),
            })
            .collect())
    }

    async fn mesh_file_bytes(&self, mesh_id: &str) -> StoreResult<u64> {
        let rows = self
            .query(
                "SELECT bytes FROM file_usage WHERE mesh_id = $1",
                &[&mesh_id],
            )
            .await?;
        Ok(rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    async fn file_count(&self, mesh_id: &str) -> StoreResult<u64> {
        let rows = self
            .query(
                "SELECT count(*) FROM file WHERE mesh_id = $1 AND complete AND deleted_at IS NULL",
                &[&mesh_id],
            )
            .await?;
        Ok(rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }
}
