//! Shared state (extensions §1): the mesh-wide key → JSON value map.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/state.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Last write wins**, per (mesh, key): a write replaces the value and its attribution.
//! - **Versions in commit order:** each write of a key gets the next `version` of that key
//!   (1 for the first), assigned under the row's lock, so of two writes of one key the one
//!   that commits later has the higher version. The broker carries the version in the
//!   `state_change` event; a replica never pushes an older version of a key after a newer
//!   one (`service::state::ChangeOrder`), so the last change a presence sees is the
//!   stored value, whichever replicas the writers were on.
//! - **Bounded:** a write of a new key into a mesh that already holds `max_keys` keys is
//!   refused ([`SetState::TooManyKeys`]), exactly, also under concurrent writers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::StoreResult;
use super::memory::MemoryStore;

/// One stored key.
#[derive(Debug, Clone, PartialEq)]
pub struct StateEntry {
    pub mesh_id: String,
    pub key: String,
    pub value: Value,
    /// The writer's member id.
    pub updated_by_member_id: String,
    /// The writer member's display name at the time of the write.
    pub updated_by_name: String,
    /// ms epoch.
    pub updated_at: i64,
    /// 1 for the first write of the key, then +1 per write, in commit order.
    pub version: i64,
}

/// One write.
#[derive(Debug, Clone)]
pub struct StateWrite<'a> {
    pub mesh_id: &'a str,
    pub key: &'a str,
    pub value: &'a Value,
    pub member_id: &'a str,
    pub member_name: &'a str,
    pub now_ms: i64,
    /// Most keys the mesh may hold; a write of a new key beyond it is refused. 0: no bound.
    pub max_keys: usize,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum SetState {
    /// Stored: the entry as committed (with its version).
    Written(StateEntry),
    /// The key is new and the mesh already holds `max_keys` keys: nothing changed.
    TooManyKeys,
}

/// Shared state (extensions §1): the mesh-wide key → JSON value map.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Upserts one key (see the module's guarantees).
    async fn set_state(&self, write: StateWrite<'_>) -> StoreResult<SetState>;

    /// One key, if set.
    async fn state(&self, mesh_id: &str, key: &str) -> StoreResult<Option<StateEntry>>;

    /// The mesh's keys ordered by key (bytewise), at most `limit`.
    async fn list_state(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<StateEntry>>;
}

/// What the in-memory backend keeps for this family: mesh id → key → entry.
#[derive(Debug, Default)]
pub struct MemoryState {
    meshes: Mutex<HashMap<String, BTreeMap<String, StateEntry>>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, StateEntry>>> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.meshes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().remove(mesh_id);
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn set_state(&self, w: StateWrite<'_>) -> StoreResult<SetState> {
        let mut meshes = self.state.lock();
        let keys = meshes.entry(w.mesh_id.to_string()).or_default();
        let version = match keys.get(w.key) {
            Some(old) => old.version + 1,
            None if w.max_keys > 0 && keys.len() >= w.max_keys => {
                return Ok(SetState::TooManyKeys);
            }
            None => 1,
        };
        let entry = StateEntry {
            mesh_id: w.mesh_id.to_string(),
            key: w.key.to_string(),
            value: w.value.clone(),
            updated_by_member_id: w.member_id.to_string(),
            updated_by_name: w.member_name.to_string(),
            updated_at: w.now_ms,
            version,
        };
        keys.insert(w.key.to_string(), entry.clone());
        Ok(SetState::Written(entry))
    }

    async fn state(&self, mesh_id: &str, key: &str) -> StoreResult<Option<StateEntry>> {
        Ok(self
            .state
            .lock()
            .get(mesh_id)
            .and_then(|keys| keys.get(key))
            .cloned())
    }

    async fn list_state(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<StateEntry>> {
        Ok(self
            .state
            .lock()
            .get(mesh_id)
            .map(|keys| keys.values().take(limit).cloned().collect())
            .unwrap_or_default())
    }
}
