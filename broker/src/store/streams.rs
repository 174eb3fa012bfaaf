//! Streams (extensions §4): the stream names of a mesh (subscriptions are live state in the
//! registry, `cluster::subscriptions`).
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/streams.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Idempotent create:** one stream per (mesh, name); creating an existing name, also
//!   concurrently on several replicas, answers the existing stream.
//! - **Bounded:** a mesh holds at most the `max_per_mesh` given to
//!   [`StreamStore::create_stream`]; beyond it a new name is refused
//!   ([`CreateStream::Full`]), an existing one is still answered.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One stream name of a mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub id: String,
    pub mesh_id: String,
    pub name: String,
    /// The creator's display name (`""` when unknown).
    pub created_by: String,
    pub created_at: i64,
}

/// What [`StreamStore::create_stream`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateStream {
    /// The stream, new or the one that had this name already.
    Stream(Stream),
    /// The mesh already holds `max_per_mesh` streams: nothing was written.
    Full,
}

/// Streams (extensions §4): the stream names of a mesh.
#[async_trait]
pub trait StreamStore: Send + Sync + 'static {
    /// Creates `stream` unless its mesh has one of that name, which is answered instead
    /// (`max_per_mesh == 0`: no bound).
    async fn create_stream(&self, stream: Stream, max_per_mesh: usize)
    -> StoreResult<CreateStream>;
    /// The mesh's streams, oldest first.
    async fn list_streams(&self, mesh_id: &str) -> StoreResult<Vec<Stream>>;
}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<MemoryStreams>,
}

#[derive(Debug, Default)]
struct MemoryStreams {
    /// Creation order, so streams created within one millisecond keep their order.
    next_seq: u64,
    /// mesh id → name → (creation sequence, stream).
    meshes: HashMap<String, HashMap<String, (u64, Stream)>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryStreams> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().meshes.remove(mesh_id);
    }
}

#[async_trait]
impl StreamStore for MemoryStore {
    async fn create_stream(
        &self,
        stream: Stream,
        max_per_mesh: usize,
    ) -> StoreResult<CreateStream> {
        let mut all = self.streams.lock();
        all.next_seq += 1;
        let seq = all.next_seq;
        let mesh = all.meshes.entry(stream.mesh_id.clone()).or_default();
        if let Some((_, existing)) = mesh.get(&stream.name) {
            return Ok(CreateStream::Stream(existing.clone()));
        }
        if max_per_mesh > 0 && mesh.len() >= max_per_mesh {
            return Ok(CreateStream::Full);
        }
        mesh.insert(stream.name.clone(), (seq, stream.clone()));
        Ok(CreateStream::Stream(stream))
    }

    async fn list_streams(&self, mesh_id: &str) -> StoreResult<Vec<Stream>> {
        let all = self.streams.lock();
        let mut out: Vec<(u64, Stream)> = all
            .meshes
            .get(mesh_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at).then(a.0.cmp(&b.0)));
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }
}
