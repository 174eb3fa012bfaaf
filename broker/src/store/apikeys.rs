//! The durable state of API keys (extensions §10, `rest.md` §2): bearer keys of the REST
//! API, minted over WebSocket.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/apikeys.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **No secret:** a key is stored as its `prefix` (the first 11 chars of the secret) and
//!   the SHA-256 hex of the whole secret; the secret itself never reaches the store.
//! - **Read through:** every lookup reads the store, so a revocation is seen by every
//!   replica at its next request (there is no cache to invalidate).
//! - **Revocation is idempotent:** revoking a revoked key answers its id and keeps the
//!   first `revoked_at`.
//! - **Bounded per issuer:** [`ApiKeyStore::create_api_key`] refuses a key when the issuer
//!   already holds `max_per_member` rows, after removing its rows revoked or expired before
//!   `purge_before` (exactly, also under concurrent creators).

use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One API key row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub mesh_id: String,
    pub label: String,
    /// The first 11 chars of the secret (`cm_` + 8).
    pub prefix: String,
    /// SHA-256 hex of the whole secret.
    pub secret_hash: String,
    /// ⊆ {`send`, `read`, `state_write`, `admin`}.
    pub capabilities: Vec<String>,
    /// Topic names; `None` = every topic.
    pub topic_scopes: Option<Vec<String>>,
    /// The member that minted it.
    pub issued_by_member_id: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// What [`ApiKeyStore::revoke_api_key`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The full id of the revoked key.
    Revoked(String),
    NotFound,
    /// The prefix names more than one key (two of them).
    NotUnique(Vec<String>),
}

/// API keys (extensions §10).
#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores a new key; `false` (nothing stored) when its issuer already holds
    /// `max_per_member` keys once its rows revoked or expired before `purge_before` are
    /// removed. `max_per_member` 0: no bound.
    async fn create_api_key(
        &self,
        key: ApiKey,
        max_per_member: usize,
        purge_before: i64,
    ) -> StoreResult<bool>;

    /// The mesh's keys (only those `issuer` minted, when given), newest first, revoked
    /// included.
    async fn api_keys(&self, mesh_id: &str, issuer: Option<&str>) -> StoreResult<Vec<ApiKey>>;

    /// The keys whose prefix is `prefix` (any mesh; at most a few).
    async fn api_keys_by_prefix(&self, prefix: &str) -> StoreResult<Vec<ApiKey>>;

    /// One key by id.
    async fn api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>>;

    /// Revokes the key of the mesh whose id is `id_or_prefix` or starts with it (only among
    /// those `issuer` minted, when given). A prefix shorter than `min_prefix` matches only
    /// a full id.
    async fn revoke_api_key(
        &self,
        mesh_id: &str,
        id_or_prefix: &str,
        issuer: Option<&str>,
        min_prefix: usize,
        now: i64,
    ) -> StoreResult<RevokeOutcome>;

    /// Sets `last_used_at` (best effort).
    async fn touch_api_key(&self, key_id: &str, at: i64) -> StoreResult<()>;

    /// Members of the mesh that issued a non-revoked key used at or after `since`.
    async fn recent_key_issuers(&self, mesh_id: &str, since: i64) -> StoreResult<Vec<String>>;
}

/// What the in-memory backend keeps for this family: every key, in creation order.
#[derive(Debug, Default)]
pub struct MemoryState {
    keys: Mutex<Vec<ApiKey>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ApiKey>> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a key row is dead (revoked or expired) since before `t`.
pub fn dead_before(k: &ApiKey, t: i64) -> bool {
    k.revoked_at.is_some_and(|r| r < t) || k.expires_at.is_some_and(|e| e < t)
}

#[async_trait]
impl ApiKeyStore for MemoryStore {
    async fn create_api_key(
        &self,
        key: ApiKey,
        max_per_member: usize,
        purge_before: i64,
    ) -> StoreResult<bool> {
        let mut keys = self.apikeys.lock();
        keys.retain(|k| {
            !(k.mesh_id == key.mesh_id
                && k.issued_by_member_id == key.issued_by_member_id
                && dead_before(k, purge_before))
        });
        let held = keys
            .iter()
            .filter(|k| {
                k.mesh_id == key.mesh_id && k.issued_by_member_id == key.issued_by_member_id
            })
            .count();
        if max_per_member > 0 && held >= max_per_member {
            return Ok(false);
        }
        keys.push(key);
        Ok(true)
    }

    async fn api_keys(&self, mesh_id: &str, issuer: Option<&str>) -> StoreResult<Vec<ApiKey>> {
        let keys = self.apikeys.lock();
        // Newest first; among keys of one millisecond, the later created first (the stable
        // sort keeps the reversed insertion order).
        let mut out: Vec<ApiKey> = keys
            .iter()
            .rev()
            .filter(|k| k.mesh_id == mesh_id)
            .filter(|k| issuer.is_none() || k.issued_by_member_id.as_deref() == issuer)
            .cloned()
            .collect();
        out.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        Ok(out)
    }

    async fn api_keys_by_prefix(&self, prefix: &str) -> StoreResult<Vec<ApiKey>> {
        let keys = self.apikeys.lock();
        Ok(keys
            .iter()
            .filter(|k| k.prefix == prefix)
            .cloned()
            .collect())
    }

    async fn api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>> {
        let keys = self.apikeys.lock();
        Ok(keys.iter().find(|k| k.id == key_id).cloned())
    }

    async fn revoke_api_key(
        &self,
        mesh_id: &str,
        id_or_prefix: &str,
        issuer: Option<&str>,
        min_prefix: usize,
        now: i64,
    ) -> StoreResult<RevokeOutcome> {
        let mut keys = self.apikeys.lock();
        let matches: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.mesh_id == mesh_id)
            .filter(|(_, k)| issuer.is_none() || k.issued_by_member_id.as_deref() == issuer)
            .filter(|(_, k)| {
                k.id == id_or_prefix
                    || (id_or_prefix.len() >= min_prefix && k.id.starts_with(id_or_prefix))
            })
            .map(|(i, _)| i)
            .take(2)
            .collect();
        match matches.as_slice() {
            [] => Ok(RevokeOutcome::NotFound),
            [i] => {
                let k = &mut keys[*i];
                k.revoked_at.get_or_insert(now);
                Ok(RevokeOutcome::Revoked(k.id.clone()))
            }
            many => Ok(RevokeOutcome::NotUnique(
                many.iter().map(|i| keys[*i].id.clone()).collect(),
            )),
        }
    }

    async fn touch_api_key(&self, key_id: &str, at: i64) -> StoreResult<()> {
        let mut keys = self.apikeys.lock();
        if let Some(k) = keys.iter_mut().find(|k| k.id == key_id) {
            k.last_used_at = Some(at);
        }
        Ok(())
    }

    async fn recent_key_issuers(&self, mesh_id: &str, since: i64) -> StoreResult<Vec<String>> {
        let keys = self.apikeys.lock();
        let mut out: Vec<String> = keys
            .iter()
            .filter(|k| k.mesh_id == mesh_id && k.revoked_at.is_none())
            .filter(|k| k.last_used_at.is_some_and(|t| t >= since))
            .filter_map(|k| k.issued_by_member_id.clone())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}
