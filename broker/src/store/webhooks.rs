//! Webhooks (extensions §15): named inbound HTTP hooks of a mesh, found by the hash of
//! their secret.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/webhooks.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Unique name per mesh** among the stored rows; a delete removes the row, so the name
//!   is free again (**Ours**; the reference only deactivates it).
//! - **Secrets are never stored:** only `secret_hash` (hex SHA-256 of the secret), and the
//!   lookup of an inbound call is by (mesh, hash).
//! - **Bounded, exactly:** a new webhook in a mesh holding `max_per_mesh` is refused, also
//!   under concurrent writers.
//! - Lists are ordered by `created_at`, then name.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One stored webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub mesh_id: String,
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_hash: String,
    /// The member that created it (it, or an admin, may delete it).
    pub creator_member_id: String,
    /// ms epoch.
    pub created_at: i64,
}

/// What a create did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookCreated {
    Created,
    /// The mesh already has a webhook of that name (nothing changed).
    Exists,
    /// The mesh already holds `max_per_mesh` webhooks (nothing changed).
    TooMany,
}

/// Webhooks (extensions §15).
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Inserts the webhook unless its name is taken in its mesh or the mesh holds
    /// `max_per_mesh` (0: no bound).
    async fn webhook_create(
        &self,
        hook: Webhook,
        max_per_mesh: usize,
    ) -> StoreResult<WebhookCreated>;

    /// The mesh's webhooks, oldest first, at most `limit`.
    async fn webhook_list(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<Webhook>>;

    /// The mesh's webhook of that name.
    async fn webhook_get(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Webhook>>;

    /// Deletes the mesh's webhook of that name; whether it existed.
    async fn webhook_delete(&self, mesh_id: &str, name: &str) -> StoreResult<bool>;

    /// The mesh's webhook whose secret hashes to `secret_hash`.
    async fn webhook_by_secret(
        &self,
        mesh_id: &str,
        secret_hash: &str,
    ) -> StoreResult<Option<Webhook>>;
}

/// What the in-memory backend keeps for this family: mesh id → name → webhook.
#[derive(Debug, Default)]
pub struct MemoryState {
    meshes: Mutex<BTreeMap<String, BTreeMap<String, Webhook>>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Webhook>>> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.meshes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A mesh delete: its webhooks go with it.
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().remove(mesh_id);
    }
}

fn ordered(mut hooks: Vec<Webhook>) -> Vec<Webhook> {
    hooks.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    hooks
}

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn webhook_create(
        &self,
        hook: Webhook,
        max_per_mesh: usize,
    ) -> StoreResult<WebhookCreated> {
        let mut meshes = self.webhooks.lock();
        let hooks = meshes.entry(hook.mesh_id.clone()).or_default();
        if hooks.contains_key(&hook.name) {
            return Ok(WebhookCreated::Exists);
        }
        if max_per_mesh > 0 && hooks.len() >= max_per_mesh {
            return Ok(WebhookCreated::TooMany);
        }
        hooks.insert(hook.name.clone(), hook);
        Ok(WebhookCreated::Created)
    }

    async fn webhook_list(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<Webhook>> {
        let hooks = self
            .webhooks
            .lock()
            .get(mesh_id)
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        Ok(ordered(hooks).into_iter().take(limit).collect())
    }

    async fn webhook_get(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Webhook>> {
        Ok(self
            .webhooks
            .lock()
            .get(mesh_id)
            .and_then(|h| h.get(name))
            .cloned())
    }

    async fn webhook_delete(&self, mesh_id: &str, name: &str) -> StoreResult<bool> {
        Ok(self
            .webhooks
            .lock()
            .get_mut(mesh_id)
            .is_some_and(|h| h.remove(name).is_some()))
    }

    async fn webhook_by_secret(
        &self,
        mesh_id: &str,
        secret_hash: &str,
    ) -> StoreResult<Option<Webhook>> {
        Ok(self
            .webhooks
            .lock()
            .get(mesh_id)
            .and_then(|h| h.values().find(|w| w.secret_hash == secret_hash).cloned()))
    }
}
