//! Persistent peer-hosted MCP registrations (extensions §14, **Ours:** persist persistent
//! entries): the durable copy of the registrations whose host asked for `persistent`, so
//! that they survive a restart of every replica and a Redis data loss. The live registry
//! (host presence, online state) is `cluster::mcp_registry`; this store only keeps what
//! must outlive it, and the service (`service::mcp_registry`) shows a stored entry missing
//! from the live registry as offline until its member says `hello` again.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/mcp_registry.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Upsert** per (mesh, server name); lists ordered by server name (bytewise).
//! - **Opaque:** `registration` (the registration as JSON text) is stored and returned as
//!   given.
//! - A deleted mesh loses its entries; a deleted member loses the entries it hosts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One stored registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMcpServer {
    pub mesh_id: String,
    pub server_name: String,
    /// The member that registered it.
    pub host_member_id: String,
    /// The registration as JSON text (`cluster::mcp_registry::Registration`).
    pub registration: String,
    /// ms epoch.
    pub updated_at: i64,
}

/// Persistent MCP registrations (extensions §14).
#[async_trait]
pub trait McpServerStore: Send + Sync + 'static {
    /// Upserts the entry.
    async fn save_mcp_server(&self, server: StoredMcpServer) -> StoreResult<()>;

    /// Deletes the entry; whether it existed.
    async fn delete_mcp_server(&self, mesh_id: &str, server_name: &str) -> StoreResult<bool>;

    /// The mesh's entries, ordered by server name, at most `limit`.
    async fn mcp_servers(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<StoredMcpServer>>;
}

type Servers = HashMap<String, BTreeMap<String, StoredMcpServer>>;

/// What the in-memory backend keeps for this family: mesh id → server name → entry.
#[derive(Debug, Default)]
pub struct MemoryState {
    meshes: Mutex<Servers>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Servers> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.meshes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().remove(mesh_id);
    }

    /// Forgets the entries a deleted member hosts (`MemoryStore::delete_member`).
    pub(super) fn forget_member(&self, mesh_id: &str, member_id: &str) {
        if let Some(servers) = self.lock().get_mut(mesh_id) {
            servers.retain(|_, s| s.host_member_id != member_id);
        }
    }
}

#[async_trait]
impl McpServerStore for MemoryStore {
    async fn save_mcp_server(&self, server: StoredMcpServer) -> StoreResult<()> {
        self.mcp_registry
            .lock()
            .entry(server.mesh_id.clone())
            .or_default()
            .insert(server.server_name.clone(), server);
        Ok(())
    }

    async fn delete_mcp_server(&self, mesh_id: &str, server_name: &str) -> StoreResult<bool> {
        let mut meshes = self.mcp_registry.lock();
        let removed = meshes
            .get_mut(mesh_id)
            .is_some_and(|s| s.remove(server_name).is_some());
        if meshes.get(mesh_id).is_some_and(BTreeMap::is_empty) {
            meshes.remove(mesh_id);
        }
        Ok(removed)
    }

    async fn mcp_servers(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<StoredMcpServer>> {
        Ok(self
            .mcp_registry
            .lock()
            .get(mesh_id)
            .map(|s| s.values().take(limit).cloned().collect())
            .unwrap_or_default())
    }
}
