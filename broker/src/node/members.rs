//! The member cache: the member rows the send path reads (recipient, grants, fan-out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Member, Store, StoreResult};

/// How long cached member rows are trusted without an invalidation.
const MEMBER_CACHE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct CachedMembers {
    rows: Option<(Instant, Arc<Vec<Member>>)>,
    /// Bumped by each invalidation, so a read that raced one is not cached.
    generation: u64,
}

/// Member rows of meshes with local sockets, read on every send. A cache: PostgreSQL is
/// the truth. Dropped when any replica changes the mesh's members (a `MembersChanged`
/// event, which reaches every replica with sockets in the mesh), when the last local
/// socket of the mesh leaves, and after `MEMBER_CACHE_TTL`.
pub struct MemberCache {
    store: Arc<dyn Store>,
    entries: Mutex<HashMap<String, CachedMembers>>,
}

impl MemberCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        MemberCache {
            store,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The mesh's member rows, from the cache when fresh; a read from the store is kept
    /// only when `keep()` says so after it (this replica still has sockets in the mesh, so
    /// it hears invalidations).
    pub async fn get(
        &self,
        mesh_id: &str,
        keep: impl FnOnce() -> bool,
    ) -> StoreResult<Arc<Vec<Member>>> {
        let generation = {
            let cache = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = cache.get(mesh_id);
            if let Some((at, rows)) = entry.and_then(|e| e.rows.as_ref())
                && at.elapsed() < MEMBER_CACHE_TTL
            {
                return Ok(rows.clone());
            }
            entry.map(|e| e.generation).unwrap_or(0)
        };
        let rows = Arc::new(self.store.members(mesh_id).await?);
        if keep() {
            let mut cache = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = cache.entry(mesh_id.to_string()).or_default();
            if entry.generation == generation {
                entry.rows = Some((Instant::now(), rows.clone()));
            }
        }
        Ok(rows)
    }

    /// Drops the cached rows of the mesh (an invalidation: a read racing it is not kept).
    pub fn forget(&self, mesh_id: &str) {
        let mut cache = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.entry(mesh_id.to_string()).or_default();
        entry.rows = None;
        entry.generation += 1;
    }

    /// Removes the mesh's entry altogether (its last local socket left).
    pub fn remove(&self, mesh_id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mesh_id);
    }
}
