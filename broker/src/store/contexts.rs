//! Contexts (extensions §11): one "what I am working on" record per (mesh, member).
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/contexts.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **One record per member:** a share replaces the member's record (summary, lists,
//!   name, time) and keeps its `id`, so `context_shared.id` is stable per member.
//! - **Newest first:** reads order by `updated_at` descending (then member id), at most
//!   `limit` records.
//! - **Search:** [`ContextStore::find_contexts`] matches a case-insensitive substring of
//!   the summary or a tag equal to the query.
//! - **Bounded:** the count of records is the count of members that shared; each record's
//!   fields are bounded by the service before they reach the store.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One member's shared context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// 32-char base62, kept across the member's later shares.
    pub id: String,
    pub mesh_id: String,
    pub member_id: String,
    /// The member's display name at the time of the share (`peerName`).
    pub member_name: String,
    pub summary: String,
    pub files_read: Vec<String>,
    pub key_findings: Vec<String>,
    pub tags: Vec<String>,
    /// ms epoch.
    pub updated_at: i64,
}

/// Contexts (extensions §11).
#[async_trait]
pub trait ContextStore: Send + Sync + 'static {
    /// Upserts the member's record; returns its id (the existing one when it had a record,
    /// else `context.id`).
    async fn share_context(&self, context: Context) -> StoreResult<String>;

    /// Records whose summary contains `query` (case-insensitively) or with a tag equal to
    /// it, newest first, at most `limit`.
    async fn find_contexts(
        &self,
        mesh_id: &str,
        query: &str,
        limit: usize,
    ) -> StoreResult<Vec<Context>>;

    /// Every record of the mesh, newest first, at most `limit`.
    async fn list_contexts(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<Context>>;
}

/// What the in-memory backend keeps for this family: mesh id → member id → record.
#[derive(Debug, Default)]
pub struct MemoryState {
    meshes: Mutex<HashMap<String, HashMap<String, Context>>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Context>>> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.meshes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().remove(mesh_id);
    }

    fn newest(&self, mesh_id: &str, limit: usize, keep: impl Fn(&Context) -> bool) -> Vec<Context> {
        let meshes = self.lock();
        let mut found: Vec<Context> = meshes
            .get(mesh_id)
            .map(|m| m.values().filter(|c| keep(c)).cloned().collect())
            .unwrap_or_default();
        found.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.member_id.cmp(&b.member_id))
        });
        found.truncate(limit);
        found
    }
}

#[async_trait]
impl ContextStore for MemoryStore {
    async fn share_context(&self, mut context: Context) -> StoreResult<String> {
        let mut meshes = self.contexts.lock();
        let members = meshes.entry(context.mesh_id.clone()).or_default();
        if let Some(old) = members.get(&context.member_id) {
            context.id = old.id.clone();
        }
        let id = context.id.clone();
        members.insert(context.member_id.clone(), context);
        Ok(id)
    }

    async fn find_contexts(
        &self,
        mesh_id: &str,
        query: &str,
        limit: usize,
    ) -> StoreResult<Vec<Context>> {
        let needle = query.to_lowercase();
        Ok(self.contexts.newest(mesh_id, limit, |c| {
            c.summary.to_lowercase().contains(&needle) || c.tags.iter().any(|t| t == query)
        }))
    }

    async fn list_contexts(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<Context>> {
        Ok(self.contexts.newest(mesh_id, limit, |_| true))
    }
}
