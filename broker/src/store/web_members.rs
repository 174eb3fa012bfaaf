//! Web-managed members (`rest.md` §4.10, issue 13): member rows the web chat manages for a
//! signed-in user, whose ed25519 key the browser holds (IndexedDB) and may replace with
//! `POST /api/v1/me/peer-pubkey`.
//!
//! A web-managed row is marked with the user it is managed for (`members.web_user_id`,
//! migration V15; the reference's `dashboard_user_id`), at most one per (mesh, user). Every
//! other member (CLI enrolment, invites, the operator API) is not web-managed: its key lives
//! on the client's disk and never changes.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/members.rs`. Contract suite: `tests/store_contract.rs`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::memory::MemoryStore;
use super::{Member, MeshStore, NewMember, StoreError, StoreResult};

/// The outcome of [`WebMemberStore::set_web_member_pubkey`].
#[derive(Debug, Clone)]
pub enum KeyChange {
    /// No member of the mesh has this id.
    NotFound,
    /// The member is not web-managed: its key is held by its client.
    NotWebManaged,
    /// The key is stored; `changed` is false when it was already this key (then the sealed
    /// copies are kept).
    Set { member: Box<Member>, changed: bool },
}

/// Web-managed member rows.
#[async_trait]
pub trait WebMemberStore: Send + Sync + 'static {
    /// The user's web-managed member row in the mesh (a revoked one included).
    async fn web_member(&self, mesh_id: &str, user_id: &str) -> StoreResult<Option<Member>>;

    /// Creates the user's web-managed row `m` in the mesh unless one exists (then `m` is
    /// ignored); the row and whether it was created. A concurrent second call returns the
    /// first call's row. [`StoreError::Conflict`] when `m.pubkey` is another member's.
    async fn create_web_member(
        &self,
        mesh_id: &str,
        user_id: &str,
        m: NewMember,
    ) -> StoreResult<(Member, bool)>;

    /// Whether the member is web-managed.
    async fn is_web_member(&self, mesh_id: &str, member_id: &str) -> StoreResult<bool>;

    /// Replaces a web-managed member's key (lowercase hex) and, when it changed, deletes the
    /// member's sealed topic-key copies in the same write, so that it is listed by
    /// `pending-seals` again. [`StoreError::Conflict`] when another member of the mesh has
    /// the key.
    async fn set_web_member_pubkey(
        &self,
        mesh_id: &str,
        member_id: &str,
        pubkey: &str,
    ) -> StoreResult<KeyChange>;
}

/// What the in-memory backend keeps for this family: (mesh, user) → member id.
#[derive(Debug, Default)]
pub struct MemoryState {
    rows: Mutex<HashMap<(String, String), String>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn member_id(&self, mesh_id: &str, user_id: &str) -> Option<String> {
        self.lock()
            .get(&(mesh_id.to_string(), user_id.to_string()))
            .cloned()
    }

    fn is_web(&self, mesh_id: &str, member_id: &str) -> bool {
        self.lock()
            .iter()
            .any(|((mesh, _), id)| mesh == mesh_id && id == member_id)
    }

    /// Forgets a deleted mesh's rows.
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().retain(|(mesh, _), _| mesh != mesh_id);
    }
}

#[async_trait]
impl WebMemberStore for MemoryStore {
    async fn web_member(&self, mesh_id: &str, user_id: &str) -> StoreResult<Option<Member>> {
        let Some(id) = self.web_members.member_id(mesh_id, user_id) else {
            return Ok(None);
        };
        self.member(mesh_id, &id).await
    }

    async fn create_web_member(
        &self,
        mesh_id: &str,
        user_id: &str,
        m: NewMember,
    ) -> StoreResult<(Member, bool)> {
        if let Some(found) = self.web_member(mesh_id, user_id).await? {
            return Ok((found, false));
        }
        let created = self.add_member(mesh_id, m).await?;
        let winner = {
            let mut rows = self.web_members.lock();
            rows.entry((mesh_id.to_string(), user_id.to_string()))
                .or_insert_with(|| created.id.clone())
                .clone()
        };
        if winner == created.id {
            return Ok((created, true));
        }
        // A concurrent call won: this row was never handed out.
        self.delete_member(mesh_id, &created.id).await?;
        let found = self
            .member(mesh_id, &winner)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((found, false))
    }

    async fn is_web_member(&self, mesh_id: &str, member_id: &str) -> StoreResult<bool> {
        Ok(self.web_members.is_web(mesh_id, member_id))
    }

    async fn set_web_member_pubkey(
        &self,
        mesh_id: &str,
        member_id: &str,
        pubkey: &str,
    ) -> StoreResult<KeyChange> {
        if self.member(mesh_id, member_id).await?.is_none() {
            return Ok(KeyChange::NotFound);
        }
        if !self.web_members.is_web(mesh_id, member_id) {
            return Ok(KeyChange::NotWebManaged);
        }
        let (member, changed) = self.replace_member_pubkey(mesh_id, member_id, pubkey)?;
        if changed {
            self.topics.forget_keys_of(member_id);
        }
        Ok(KeyChange::Set {
            member: Box::new(member),
            changed,
        })
    }
}
