//! The durable state of files (extensions §19.1): `get_file`, `list_files`, `file_status`,
//! `grant_file_access`, `delete_file`, and `POST /upload`, `GET /download/<id>`.
//!
//! A file is one metadata row, its sealed keys (one per peer public key, for encrypted
//! files), an access log, and its body as numbered chunks of at most
//! [`CHUNK_BYTES`](crate::service::files::CHUNK_BYTES) each. An upload is begun (the row,
//! incomplete), fed chunk by chunk (each chunk counted against the mesh's byte budget at
//! once, so concurrent uploads on several replicas cannot overrun it), then completed or
//! aborted. With an object store (`FILES_S3_*`, `crate::objects`) the body is one object
//! instead, and the upload only counts its bytes ([`FileStore::file_reserve`]); a file
//! without chunks and with a size is read from there. Only complete, undeleted files are
//! visible. A delete is soft: the row stays
//! (hidden), its chunks are dropped and their bytes released.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/files.rs`. Contract suite: `tests/store_contract.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub id: String,
    pub mesh_id: String,
    /// The member that uploaded it (its owner).
    pub uploader_member_id: String,
    /// The uploader's display name at upload time (`uploadedBy`).
    pub uploader_name: String,
    pub name: String,
    pub tags: Vec<String>,
    pub persistent: bool,
    pub encrypted: bool,
    /// `X-Owner-Pubkey`: the key the owner's own sealed key is for.
    pub owner_pubkey: Option<String>,
    /// `X-Target-Spec`: who may fetch it (`None`, `*`, `@all`: every member).
    pub target_spec: Option<String>,
    /// Bytes of the body (of a complete file).
    pub size: i64,
    /// Unix ms.
    pub uploaded_at: i64,
}

/// A sealed key of an encrypted file for one peer public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    pub pubkey: String,
    pub sealed_key: String,
}

/// One access of a file (`file_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAccess {
    pub peer_name: String,
    /// Unix ms.
    pub accessed_at: i64,
}

/// Why an upload could not begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    Started,
    /// The mesh already holds `max_files` files.
    TooManyFiles,
}

#[async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Begins an upload: stores `file` (incomplete, size 0) and its `keys`. First aborts the
    /// mesh's incomplete uploads begun before `stale_before` (an upload whose replica
    /// died), releasing their bytes. Refused when the mesh holds `max_files` (0: no bound)
    /// complete or incomplete files.
    async fn file_begin(
        &self,
        file: FileRecord,
        keys: Vec<FileKey>,
        max_files: usize,
        stale_before: i64,
    ) -> StoreResult<Begin>;

    /// Appends chunk `seq` (0, 1, …) of an incomplete upload and counts its bytes against
    /// the mesh's budget: `false`, nothing stored, when the mesh's stored bytes would pass
    /// `max_mesh_bytes`. `NotFound` when the upload is not incomplete any more.
    async fn file_append(
        &self,
        mesh_id: &str,
        file_id: &str,
        seq: i32,
        data: &[u8],
        max_mesh_bytes: u64,
    ) -> StoreResult<bool>;

    /// Counts `bytes` of an incomplete upload whose body goes to the object store
    /// (`FILES_S3_*`) against the mesh's budget, storing no chunk: as
    /// [`file_append`](FileStore::file_append) otherwise (`false`, nothing counted, past
    /// `max_mesh_bytes`; `NotFound` when the upload is not incomplete any more). The bytes
    /// are released as a chunk's are (abort, stale sweep, delete).
    async fn file_reserve(
        &self,
        mesh_id: &str,
        file_id: &str,
        bytes: u64,
        max_mesh_bytes: u64,
    ) -> StoreResult<bool>;

    /// Completes an upload of `size` bytes: the file becomes visible.
    async fn file_complete(&self, mesh_id: &str, file_id: &str, size: i64) -> StoreResult<()>;

    /// Aborts an incomplete upload: its row, keys and chunks go, its bytes are released.
    async fn file_abort(&self, mesh_id: &str, file_id: &str) -> StoreResult<()>;

    /// A complete, undeleted file of the mesh.
    async fn file(&self, mesh_id: &str, file_id: &str) -> StoreResult<Option<FileRecord>>;

    /// The sealed key of `file_id` for `pubkey`.
    async fn file_key(&self, file_id: &str, pubkey: &str) -> StoreResult<Option<String>>;

    /// Chunk `seq` of a complete file's body.
    async fn file_chunk(&self, file_id: &str, seq: i32) -> StoreResult<Option<Vec<u8>>>;

    /// Complete, undeleted files of the mesh, newest first, at most `limit`: `query` a
    /// case-insensitive substring of the name, `from` the exact uploader name.
    async fn file_list(
        &self,
        mesh_id: &str,
        query: Option<&str>,
        from: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FileRecord>>;

    /// Sets the sealed key of `file_id` for `key.pubkey` (replacing one); `false` when that
    /// would give the file more than `max_keys` keys.
    async fn file_grant(&self, file_id: &str, key: FileKey, max_keys: usize) -> StoreResult<bool>;

    /// Soft delete: hides the file, drops its chunks and releases its bytes. Whether a
    /// visible file was deleted.
    async fn file_delete(&self, mesh_id: &str, file_id: &str, now: i64) -> StoreResult<bool>;

    /// Appends an access, keeping the newest `max_log` of the file.
    async fn file_log_access(
        &self,
        file_id: &str,
        access: FileAccess,
        max_log: usize,
    ) -> StoreResult<()>;

    /// The file's accesses, newest first, at most `limit`.
    async fn file_accesses(&self, file_id: &str, limit: usize) -> StoreResult<Vec<FileAccess>>;

    /// Bytes the mesh's files hold (complete and in-progress uploads).
    async fn mesh_file_bytes(&self, mesh_id: &str) -> StoreResult<u64>;

    /// Complete, undeleted files of the mesh (`mesh_info.fileCount`).
    async fn file_count(&self, mesh_id: &str) -> StoreResult<u64>;
}

#[derive(Debug)]
struct Stored {
    record: FileRecord,
    complete: bool,
    deleted_at: Option<i64>,
    /// Bytes of its chunks counted against the mesh.
    stored: u64,
    keys: BTreeMap<String, String>,
    chunks: Vec<Vec<u8>>,
    accesses: VecDeque<FileAccess>,
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<String, Stored>,
    /// Stored bytes per mesh.
    usage: HashMap<String, u64>,
}

impl Inner {
    fn drop_body(&mut self, file_id: &str) {
        if let Some(f) = self.files.get_mut(file_id) {
            let freed = std::mem::take(&mut f.stored);
            f.chunks.clear();
            if let Some(u) = self.usage.get_mut(&f.record.mesh_id) {
                *u = u.saturating_sub(freed);
            }
        }
    }
}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `delete_mesh` removes (PostgreSQL: `ON DELETE CASCADE`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        let mut g = self.lock();
        g.files.retain(|_, f| f.record.mesh_id != mesh_id);
        g.usage.remove(mesh_id);
    }
}

fn visible(f: &Stored) -> bool {
    f.complete && f.deleted_at.is_none()
}

#[async_trait]
impl FileStore for MemoryStore {
    async fn file_begin(
        &self,
        file: FileRecord,
        keys: Vec<FileKey>,
        max_files: usize,
        stale_before: i64,
    ) -> StoreResult<Begin> {
        let mut g = self.files.lock();
        let stale: Vec<String> = g
            .files
            .values()
            .filter(|f| {
                f.record.mesh_id == file.mesh_id
                    && !f.complete
                    && f.record.uploaded_at < stale_before
            })
            .map(|f| f.record.id.clone())
            .collect();
        for id in stale {
            g.drop_body(&id);
            g.files.remove(&id);
        }
        let held = g
            .files
            .values()
            .filter(|f| f.record.mesh_id == file.mesh_id && f.deleted_at.is_none())
            .count();
        if max_files > 0 && held >= max_files {
            return Ok(Begin::TooManyFiles);
        }
        g.files.insert(
            file.id.clone(),
            Stored {
                record: file,
                complete: false,
                deleted_at: None,
                stored: 0,
                keys: keys.into_iter().map(|k| (k.pubkey, k.sealed_key)).collect(),
                chunks: Vec::new(),
                accesses: VecDeque::new(),
            },
        );
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
        let mut g = self.files.lock();
        let ok = g
            .files
            .get(file_id)
            .is_some_and(|f| f.record.mesh_id == mesh_id && !f.complete);
        if !ok {
            return Err(super::StoreError::NotFound);
        }
        let used = g.usage.get(mesh_id).copied().unwrap_or(0);
        let n = data.len() as u64;
        if used.saturating_add(n) > max_mesh_bytes {
            return Ok(false);
        }
        *g.usage.entry(mesh_id.to_string()).or_default() += n;
        if let Some(f) = g.files.get_mut(file_id) {
            let seq = usize::try_from(seq).unwrap_or(0);
            if f.chunks.len() <= seq {
                f.chunks.resize(seq + 1, Vec::new());
            }
            f.chunks[seq] = data.to_vec();
            f.stored += n;
        }
        Ok(true)
    }

    async fn file_reserve(
        &self,
        mesh_id: &str,
        file_id: &str,
        bytes: u64,
        max_mesh_bytes: u64,
    ) -> StoreResult<bool> {
        let mut g = self.files.lock();
        let ok = g
            .files
            .get(file_id)
            .is_some_and(|f| f.record.mesh_id == mesh_id && !f.complete);
        if !ok {
            return Err(super::StoreError::NotFound);
        }
        let used = g.usage.get(mesh_id).copied().unwrap_or(0);
        if used.saturating_add(bytes) > max_mesh_bytes {
            return Ok(false);
        }
        *g.usage.entry(mesh_id.to_string()).or_default() += bytes;
        if let Some(f) = g.files.get_mut(file_id) {
            f.stored += bytes;
        }
        Ok(true)
    }

    async fn file_complete(&self, mesh_id: &str, file_id: &str, size: i64) -> StoreResult<()> {
        let mut g = self.files.lock();
        match g.files.get_mut(file_id) {
            Some(f) if f.record.mesh_id == mesh_id && !f.complete => {
                f.complete = true;
                f.record.size = size;
                Ok(())
            }
            _ => Err(super::StoreError::NotFound),
        }
    }

    async fn file_abort(&self, mesh_id: &str, file_id: &str) -> StoreResult<()> {
        let mut g = self.files.lock();
        if g.files
            .get(file_id)
            .is_some_and(|f| f.record.mesh_id == mesh_id && !f.complete)
        {
            g.drop_body(file_id);
            g.files.remove(file_id);
        }
        Ok(())
    }

    async fn file(&self, mesh_id: &str, file_id: &str) -> StoreResult<Option<FileRecord>> {
        let g = self.files.lock();
        Ok(g.files
            .get(file_id)
            .filter(|f| f.record.mesh_id == mesh_id && visible(f))
            .map(|f| f.record.clone()))
    }

    async fn file_key(&self, file_id: &str, pubkey: &str) -> StoreResult<Option<String>> {
        let g = self.files.lock();
        Ok(g.files
            .get(file_id)
            .and_then(|f| f.keys.get(pubkey).cloned()))
    }

    async fn file_chunk(&self, file_id: &str, seq: i32) -> StoreResult<Option<Vec<u8>>> {
        let g = self.files.lock();
        let Ok(seq) = usize::try_from(seq) else {
            return Ok(None);
        };
        Ok(g.files
            .get(file_id)
            .filter(|f| visible(f))
            .and_then(|f| f.chunks.get(seq).cloned()))
    }

    async fn file_list(
        &self,
        mesh_id: &str,
        query: Option<&str>,
        from: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FileRecord>> {
        let g = self.files.lock();
        let query = query.map(str::to_lowercase);
        let mut out: Vec<FileRecord> = g
            .files
            .values()
            .filter(|f| f.record.mesh_id == mesh_id && visible(f))
            .filter(|f| {
                query
                    .as_deref()
                    .is_none_or(|q| f.record.name.to_lowercase().contains(q))
            })
            .filter(|f| from.is_none_or(|n| f.record.uploader_name == n))
            .map(|f| f.record.clone())
            .collect();
        out.sort_by(|a, b| {
            b.uploaded_at
                .cmp(&a.uploaded_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        out.truncate(limit);
        Ok(out)
    }

    async fn file_grant(&self, file_id: &str, key: FileKey, max_keys: usize) -> StoreResult<bool> {
        let mut g = self.files.lock();
        let Some(f) = g.files.get_mut(file_id) else {
            return Err(super::StoreError::NotFound);
        };
        if max_keys > 0 && !f.keys.contains_key(&key.pubkey) && f.keys.len() >= max_keys {
            return Ok(false);
        }
        f.keys.insert(key.pubkey, key.sealed_key);
        Ok(true)
    }

    async fn file_delete(&self, mesh_id: &str, file_id: &str, now: i64) -> StoreResult<bool> {
        let mut g = self.files.lock();
        let hit = g
            .files
            .get(file_id)
            .is_some_and(|f| f.record.mesh_id == mesh_id && visible(f));
        if !hit {
            return Ok(false);
        }
        g.drop_body(file_id);
        if let Some(f) = g.files.get_mut(file_id) {
            f.deleted_at = Some(now);
        }
        Ok(true)
    }

    async fn file_log_access(
        &self,
        file_id: &str,
        access: FileAccess,
        max_log: usize,
    ) -> StoreResult<()> {
        let mut g = self.files.lock();
        if let Some(f) = g.files.get_mut(file_id) {
            f.accesses.push_front(access);
            f.accesses.truncate(max_log.max(1));
        }
        Ok(())
    }

    async fn file_accesses(&self, file_id: &str, limit: usize) -> StoreResult<Vec<FileAccess>> {
        let g = self.files.lock();
        Ok(g.files
            .get(file_id)
            .map(|f| f.accesses.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn mesh_file_bytes(&self, mesh_id: &str) -> StoreResult<u64> {
        Ok(self.files.lock().usage.get(mesh_id).copied().unwrap_or(0))
    }

    async fn file_count(&self, mesh_id: &str) -> StoreResult<u64> {
        let g = self.files.lock();
        Ok(g.files
            .values()
            .filter(|f| f.record.mesh_id == mesh_id && visible(f))
            .count() as u64)
    }
}
