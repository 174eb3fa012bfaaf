//! The vault (extensions §16): per-member client-encrypted blobs, keyed by
//! (mesh, member, key).
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/vault.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Own entries only:** every read and write names the member; no call returns or
//!   touches another member's entries.
//! - **Opaque:** `ciphertext`, `nonce` and `sealed_key` are stored and returned as given;
//!   the broker holds no key that opens them.
//! - **Upsert** per (mesh, member, key); lists and reads ordered by key (bytewise).
//! - **Bounded, exactly:** a new key for a member holding `max_entries` entries is refused,
//!   also under concurrent writers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultEntry {
    pub mesh_id: String,
    pub member_id: String,
    pub key: String,
    /// Base64 of the client's `crypto_secretbox`.
    pub ciphertext: String,
    /// Base64 of its nonce.
    pub nonce: String,
    /// Base64 of the box key sealed to the member's own x25519 key.
    pub sealed_key: String,
    /// `env` or `file`.
    pub entry_type: String,
    pub mount_path: Option<String>,
    pub description: Option<String>,
    /// ms epoch.
    pub updated_at: i64,
}

/// An entry without its blobs, as `vault_list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultMeta {
    pub key: String,
    pub entry_type: String,
    pub mount_path: Option<String>,
    pub description: Option<String>,
    pub updated_at: i64,
}

impl From<&VaultEntry> for VaultMeta {
    fn from(e: &VaultEntry) -> Self {
        VaultMeta {
            key: e.key.clone(),
            entry_type: e.entry_type.clone(),
            mount_path: e.mount_path.clone(),
            description: e.description.clone(),
            updated_at: e.updated_at,
        }
    }
}

/// The vault (extensions §16).
#[async_trait]
pub trait VaultStore: Send + Sync + 'static {
    /// Upserts the entry; `false` when the key is new and the member already holds
    /// `max_entries` entries (nothing changed). `max_entries` 0: no bound.
    async fn vault_set(&self, entry: VaultEntry, max_entries: usize) -> StoreResult<bool>;

    /// The member's entries among `keys`, ordered by key (unknown keys are skipped).
    async fn vault_get(
        &self,
        mesh_id: &str,
        member_id: &str,
        keys: &[String],
    ) -> StoreResult<Vec<VaultEntry>>;

    /// The member's entries without blobs, ordered by key, at most `limit`.
    async fn vault_list(
        &self,
        mesh_id: &str,
        member_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<VaultMeta>>;

    /// Deletes the member's entry; whether it existed.
    async fn vault_delete(&self, mesh_id: &str, member_id: &str, key: &str) -> StoreResult<bool>;
}

type Entries = HashMap<(String, String), BTreeMap<String, VaultEntry>>;

/// What the in-memory backend keeps for this family: (mesh id, member id) → key → entry.
#[derive(Debug, Default)]
pub struct MemoryState {
    members: Mutex<Entries>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().retain(|(mesh, _), _| mesh != mesh_id);
    }
}

fn owner(mesh_id: &str, member_id: &str) -> (String, String) {
    (mesh_id.to_string(), member_id.to_string())
}

#[async_trait]
impl VaultStore for MemoryStore {
    async fn vault_set(&self, entry: VaultEntry, max_entries: usize) -> StoreResult<bool> {
        let mut members = self.vault.lock();
        let keys = members
            .entry(owner(&entry.mesh_id, &entry.member_id))
            .or_default();
        if !keys.contains_key(&entry.key) && max_entries > 0 && keys.len() >= max_entries {
            return Ok(false);
        }
        keys.insert(entry.key.clone(), entry);
        Ok(true)
    }

    async fn vault_get(
        &self,
        mesh_id: &str,
        member_id: &str,
        keys: &[String],
    ) -> StoreResult<Vec<VaultEntry>> {
        Ok(self
            .vault
            .lock()
            .get(&owner(mesh_id, member_id))
            .map(|entries| {
                entries
                    .values()
                    .filter(|e| keys.contains(&e.key))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn vault_list(
        &self,
        mesh_id: &str,
        member_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<VaultMeta>> {
        Ok(self
            .vault
            .lock()
            .get(&owner(mesh_id, member_id))
            .map(|entries| entries.values().take(limit).map(VaultMeta::from).collect())
            .unwrap_or_default())
    }

    async fn vault_delete(&self, mesh_id: &str, member_id: &str, key: &str) -> StoreResult<bool> {
        Ok(self
            .vault
            .lock()
            .get_mut(&owner(mesh_id, member_id))
            .is_some_and(|entries| entries.remove(key).is_some()))
    }
}
