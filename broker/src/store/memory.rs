//! In-memory [`Store`](super::Store): single node only. Everything is lost when the process
//! exits; it exists for dev mode and fast tests, and gives the same ordering and claim
//! semantics as the durable backend. One impl block per capability trait.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    AuditEntry, Claim, Enrolment, Invite, Member, Mesh, MessageRef, NewMember, PeerState,
    QueuedMessage, StoreError, StoreResult,
};
use crate::ids;
use crate::store::{AuditStore, InviteStore, MeshStore, PeerStateStore, QueueStore, StoreBackend};

/// Single node only: see the module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    // One field per family whose capability trait lives in its own module
    // (`store/<family>.rs`), which keeps that family's state and its lock.
    pub(super) state: super::state::MemoryState,
    pub(super) memories: super::memories::MemoryState,
    pub(super) tasks: super::tasks::MemoryState,
    pub(super) streams: super::streams::MemoryState,
    pub(super) schedule: super::schedule::MemoryState,
    pub(super) clocks: super::clocks::MemoryState,
    pub(super) msg_status: super::msg_status::MemoryState,
    pub(super) contexts: super::contexts::MemoryState,
    pub(super) skills: super::skills::MemoryState,
    pub(super) vault: super::vault::MemoryState,
    pub(super) mcp_registry: super::mcp_registry::MemoryState,
    pub(super) files: super::files::MemoryState,
    pub(super) topics: super::topics::MemoryState,
    pub(super) apikeys: super::apikeys::MemoryState,
    pub(super) webhooks: super::webhooks::MemoryState,
    pub(super) watches: super::watches::MemoryState,
    pub(super) accounts: super::accounts::MemoryState,
    pub(super) web_members: super::web_members::MemoryState,
}

#[derive(Debug, Default)]
struct Inner {
    meshes: HashMap<String, Mesh>,
    /// mesh id → member id → member.
    members: HashMap<String, BTreeMap<String, Member>>,
    invites: HashMap<String, Invite>,
    /// One queue per recipient `(mesh, member)`, in sequence order (the commit order), so
    /// a drain or an ack touches only its recipient's backlog.
    queue: HashMap<(String, String), BTreeMap<u64, Row>>,
    next_seq: u64,
    /// Idempotency keys: (sender member, client_message_id) → (messageId, created_at),
    /// kept after delivery and swept with the queue TTL.
    dedup: HashMap<(String, String), (String, i64)>,
    peer_state: HashMap<(String, String), PeerState>,
    audit: HashMap<String, Vec<AuditEntry>>,
}

#[derive(Debug)]
struct Row {
    message: QueuedMessage,
    /// End of the current claim lease (ms epoch); 0 when unclaimed.
    claimed_until: i64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// See `Inner::replace_pubkey` (web-managed members, `store/web_members.rs`).
    pub(super) fn replace_member_pubkey(
        &self,
        mesh_id: &str,
        member_id: &str,
        pubkey: &str,
    ) -> StoreResult<(Member, bool)> {
        self.lock().replace_pubkey(mesh_id, member_id, pubkey)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still consistent enough
        // to serve: recover it instead of poisoning every later call.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivery status (extensions §7): the mesh's queued (undelivered) messages whose id
    /// starts with `prefix`, at most `limit`.
    pub(super) fn queued_with_prefix(
        &self,
        mesh_id: &str,
        prefix: &str,
        limit: usize,
    ) -> Vec<QueuedMessage> {
        let inner = self.lock();
        inner
            .queue
            .iter()
            .filter(|((mesh, _), _)| mesh == mesh_id)
            .flat_map(|(_, rows)| rows.values())
            .filter(|row| row.message.id.starts_with(prefix))
            .take(limit)
            .map(|row| row.message.clone())
            .collect()
    }

    /// What `delete_mesh` removes from the families' own state (as the PostgreSQL delete
    /// removes every row with the mesh's `mesh_id`): one call per family, each under its
    /// own lock and never under `inner`'s. A family added later adds its `forget_mesh` here.
    fn forget_mesh_in_families(&self, mesh_id: &str) {
        self.state.forget_mesh(mesh_id);
        self.memories.forget_mesh(mesh_id);
        self.tasks.forget_mesh(mesh_id);
        self.streams.forget_mesh(mesh_id);
        self.schedule.forget_mesh(mesh_id);
        self.clocks.forget_mesh(mesh_id);
        self.msg_status.forget_mesh(mesh_id);
        self.contexts.forget_mesh(mesh_id);
        self.skills.forget_mesh(mesh_id);
        self.vault.forget_mesh(mesh_id);
        self.mcp_registry.forget_mesh(mesh_id);
        self.files.forget_mesh(mesh_id);
        self.topics.forget_mesh(mesh_id);
        self.webhooks.forget_mesh(mesh_id);
        self.watches.forget_mesh(mesh_id);
        self.accounts.forget_mesh(mesh_id);
        self.web_members.forget_mesh(mesh_id);
    }

    /// What `delete_member` removes from the families' own state, exactly what the
    /// PostgreSQL delete removes (`postgres/members.rs`): what only the member had, its
    /// scheduled messages and its user link. What it gave the mesh (memories, tasks,
    /// shared state, streams, contexts, skills, delivery records) stays. Its URL watches
    /// go too.
    fn forget_member_in_families(&self, mesh_id: &str, member_id: &str) {
        self.schedule.forget_member(mesh_id, member_id);
        self.accounts.forget_member(mesh_id, member_id);
        self.watches.forget_member(mesh_id, member_id);
        self.mcp_registry.forget_member(mesh_id, member_id);
        self.topics.forget_member(mesh_id, member_id);
    }
}

fn new_member(mesh_id: &str, m: NewMember) -> Member {
    Member {
        id: ids::random_id(24),
        mesh_id: mesh_id.to_string(),
        pubkey: m.pubkey,
        display_name: m.display_name,
        role: m.role,
        user_id: m.user_id,
        revoked_at: None,
        peer_grants: BTreeMap::new(),
        default_groups: m.default_groups,
        role_tag: m.role_tag,
        message_mode: None,
        created_at: ids::now_ms(),
    }
}

impl Inner {
    fn insert_member(&mut self, mesh_id: &str, m: NewMember) -> StoreResult<Member> {
        if !self.meshes.contains_key(mesh_id) {
            return Err(StoreError::NotFound);
        }
        let members = self.members.entry(mesh_id.to_string()).or_default();
        if members.values().any(|x| x.pubkey == m.pubkey) {
            return Err(StoreError::Conflict(
                "pubkey is already a member of this mesh".into(),
            ));
        }
        let member = new_member(mesh_id, m);
        members.insert(member.id.clone(), member.clone());
        Ok(member)
    }

    /// Replaces a member's key (`WebMemberStore::set_web_member_pubkey`): the row and
    /// whether it changed; [`StoreError::Conflict`] when another member has the key.
    fn replace_pubkey(
        &mut self,
        mesh_id: &str,
        member_id: &str,
        pubkey: &str,
    ) -> StoreResult<(Member, bool)> {
        let taken = self
            .members
            .get(mesh_id)
            .is_some_and(|m| m.values().any(|x| x.id != member_id && x.pubkey == pubkey));
        if taken {
            return Err(StoreError::Conflict(
                "pubkey is already a member of this mesh".into(),
            ));
        }
        let member = self.member_mut(mesh_id, member_id)?;
        let changed = member.pubkey != pubkey;
        member.pubkey = pubkey.to_string();
        Ok((member.clone(), changed))
    }

    fn member_mut(&mut self, mesh_id: &str, member_id: &str) -> StoreResult<&mut Member> {
        self.members
            .get_mut(mesh_id)
            .and_then(|m| m.get_mut(member_id))
            .ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl StoreBackend for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn healthy(&self) -> bool {
        true
    }
}

#[async_trait]
impl MeshStore for MemoryStore {
    async fn create_mesh(&self, mesh: Mesh) -> StoreResult<Mesh> {
        let mut inner = self.lock();
        if inner.meshes.values().any(|m| m.slug == mesh.slug) {
            return Err(StoreError::Conflict(format!(
                "slug {:?} is taken",
                mesh.slug
            )));
        }
        inner.meshes.insert(mesh.id.clone(), mesh.clone());
        Ok(mesh)
    }

    async fn mesh(&self, mesh_id: &str) -> StoreResult<Option<Mesh>> {
        Ok(self.lock().meshes.get(mesh_id).cloned())
    }

    async fn add_member(&self, mesh_id: &str, member: NewMember) -> StoreResult<Member> {
        let member = self.lock().insert_member(mesh_id, member)?;
        // Ours (extensions §9): a new member is subscribed to `#general` (as the
        // PostgreSQL trigger of V10 does), under the family's lock only.
        self.topics.member_added(&member);
        Ok(member)
    }

    async fn members(&self, mesh_id: &str) -> StoreResult<Vec<Member>> {
        let inner = self.lock();
        let mut members: Vec<Member> = inner
            .members
            .get(mesh_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        members.sort_by_key(|m| m.created_at);
        Ok(members)
    }

    async fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<Member>> {
        Ok(self
            .lock()
            .members
            .get(mesh_id)
            .and_then(|m| m.values().find(|x| x.pubkey == pubkey).cloned()))
    }

    async fn member(&self, mesh_id: &str, member_id: &str) -> StoreResult<Option<Member>> {
        Ok(self
            .lock()
            .members
            .get(mesh_id)
            .and_then(|m| m.get(member_id).cloned()))
    }

    async fn update_grants(
        &self,
        mesh_id: &str,
        member_id: &str,
        patch: BTreeMap<String, Option<Vec<String>>>,
    ) -> StoreResult<BTreeMap<String, Vec<String>>> {
        let mut inner = self.lock();
        let member = inner.member_mut(mesh_id, member_id)?;
        for (sender, caps) in patch {
            match caps {
                Some(caps) => member.peer_grants.insert(sender, caps),
                None => member.peer_grants.remove(&sender),
            };
        }
        Ok(member.peer_grants.clone())
    }

    async fn set_revoked(
        &self,
        mesh_id: &str,
        member_id: &str,
        at: Option<i64>,
    ) -> StoreResult<()> {
        self.lock().member_mut(mesh_id, member_id)?.revoked_at = at;
        Ok(())
    }

    async fn list_meshes(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Mesh>> {
        let inner = self.lock();
        let mut page: Vec<&Mesh> = inner
            .meshes
            .values()
            .filter(|m| after.is_none_or(|a| m.id.as_str() > a))
            .collect();
        page.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(page.into_iter().take(limit).cloned().collect())
    }

    async fn delete_mesh(&self, mesh_id: &str) -> StoreResult<bool> {
        let mut inner = self.lock();
        let existed = inner.meshes.remove(mesh_id).is_some();
        let members = inner.members.remove(mesh_id).unwrap_or_default();
        inner.invites.retain(|_, i| i.mesh_id != mesh_id);
        inner.queue.retain(|(mesh, _), _| mesh != mesh_id);
        inner
            .dedup
            .retain(|(sender, _), _| !members.contains_key(sender));
        inner.peer_state.retain(|(mesh, _), _| mesh != mesh_id);
        inner.audit.remove(mesh_id);
        drop(inner);
        self.forget_mesh_in_families(mesh_id);
        Ok(existed)
    }

    async fn delete_member(&self, mesh_id: &str, member_id: &str) -> StoreResult<bool> {
        let mut inner = self.lock();
        let Some(members) = inner.members.get_mut(mesh_id) else {
            return Ok(false);
        };
        let Some(gone) = members.remove(member_id) else {
            return Ok(false);
        };
        for m in members.values_mut() {
            m.peer_grants.remove(&gone.pubkey);
        }
        let key = (mesh_id.to_string(), member_id.to_string());
        inner.queue.remove(&key);
        inner.peer_state.remove(&key);
        inner.dedup.retain(|(sender, _), _| sender != member_id);
        drop(inner);
        self.forget_member_in_families(mesh_id, member_id);
        Ok(true)
    }
}

#[async_trait]
impl InviteStore for MemoryStore {
    async fn create_invite(&self, invite: Invite) -> StoreResult<()> {
        self.lock().invites.insert(invite.code.clone(), invite);
        Ok(())
    }

    async fn invite_by_token(&self, token: &str) -> StoreResult<Option<Invite>> {
        Ok(self
            .lock()
            .invites
            .values()
            .find(|i| i.token == token || i.code == token)
            .cloned())
    }

    async fn redeem_invite(
        &self,
        code: &str,
        member: NewMember,
        now_s: i64,
    ) -> StoreResult<Enrolment> {
        let mut inner = self.lock();
        let invite = inner
            .invites
            .get(code)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if let Some(existing) = inner
            .members
            .get(&invite.mesh_id)
            .and_then(|m| m.values().find(|x| x.pubkey == member.pubkey))
        {
            return Ok(Enrolment {
                member: existing.clone(),
                already_member: true,
            });
        }
        if invite.expires_at <= now_s {
            return Err(StoreError::Invalid("invite has expired".into()));
        }
        if invite.max_uses.is_some_and(|max| invite.uses >= max) {
            return Err(StoreError::Invalid("invite has no uses left".into()));
        }
        let member = inner.insert_member(&invite.mesh_id, member)?;
        if let Some(i) = inner.invites.get_mut(code) {
            i.uses += 1;
        }
        drop(inner);
        self.topics.member_added(&member);
        Ok(Enrolment {
            member,
            already_member: false,
        })
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    async fn enqueue(&self, message: QueuedMessage) -> StoreResult<String> {
        let mut inner = self.lock();
        if let Some(client_id) = &message.client_message_id {
            let key = (message.sender_member_id.clone(), client_id.clone());
            if let Some((original, _)) = inner.dedup.get(&key) {
                return Ok(original.clone());
            }
            inner
                .dedup
                .insert(key, (message.id.clone(), message.created_at));
        }
        let id = message.id.clone();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let key = (message.mesh_id.clone(), message.target_member_id.clone());
        let row = Row {
            message,
            claimed_until: 0,
        };
        inner.queue.entry(key).or_default().insert(seq, row);
        Ok(id)
    }

    async fn claim(&self, c: Claim<'_>) -> StoreResult<Vec<QueuedMessage>> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let key = (c.mesh_id.to_string(), c.member_id.to_string());
        let Some(queue) = inner.queue.get_mut(&key) else {
            return Ok(out);
        };
        for row in queue.values_mut() {
            if out.len() >= c.limit {
                break;
            }
            let m = &row.message;
            let takeable = m
                .target_session_key
                .as_deref()
                .is_none_or(|k| Some(k) == c.session_key)
                && (c.all_priorities || m.priority == crate::protocol::Priority::Now)
                && (c.steal || row.claimed_until <= c.now_ms);
            if takeable {
                row.claimed_until = c.now_ms + c.lease_ms;
                out.push(m.clone());
            }
        }
        Ok(out)
    }

    async fn lease_pushed(
        &self,
        mesh_id: &str,
        member_id: &str,
        ids: &[String],
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<Vec<String>> {
        let mut inner = self.lock();
        let key = (mesh_id.to_string(), member_id.to_string());
        let Some(queue) = inner.queue.get_mut(&key) else {
            return Ok(Vec::new());
        };
        let mut leased = Vec::new();
        for row in queue.values_mut() {
            if row.claimed_until <= now_ms && ids.contains(&row.message.id) {
                row.claimed_until = until_ms;
                leased.push(row.message.id.clone());
            }
        }
        Ok(leased)
    }

    async fn mark_delivered(
        &self,
        mesh_id: &str,
        member_id: &str,
        message: MessageRef<'_>,
    ) -> StoreResult<bool> {
        let mut inner = self.lock();
        let key = (mesh_id.to_string(), member_id.to_string());
        let Some(queue) = inner.queue.get_mut(&key) else {
            return Ok(false);
        };
        let before = queue.len();
        let mut confirmed = Vec::new();
        queue.retain(|_, row| {
            let m = &row.message;
            let named = match message {
                MessageRef::Broker(id) => m.id == id,
                MessageRef::Client(id) => m.client_message_id.as_deref() == Some(id),
            };
            if named {
                confirmed.push(super::msg_status::SentMessage::confirmed(m, ids::now_ms()));
            }
            !named
        });
        let marked = queue.len() < before;
        if queue.is_empty() {
            inner.queue.remove(&key);
        }
        // Delivery status (extensions §7): a confirmed message leaves the queue into its
        // status record, as the PostgreSQL ack statement does.
        for m in confirmed {
            self.msg_status.record(m);
        }
        Ok(marked)
    }

    async fn sweep_expired(&self, before_ms: i64) -> StoreResult<u64> {
        let mut inner = self.lock();
        let mut swept = 0;
        inner.queue.retain(|_, queue| {
            let before = queue.len();
            queue.retain(|_, row| row.message.created_at >= before_ms);
            swept += before - queue.len();
            !queue.is_empty()
        });
        inner
            .dedup
            .retain(|_, (_, created_at)| *created_at >= before_ms);
        Ok(swept as u64)
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        Ok(self.lock().queue.values().map(BTreeMap::len).sum::<usize>() as u64)
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_audit(
        &self,
        mesh_id: &str,
        event_type: &str,
        actor_member_id: Option<&str>,
        payload: serde_json::Value,
        created_at: i64,
    ) -> StoreResult<()> {
        let mut inner = self.lock();
        let chain = inner.audit.entry(mesh_id.to_string()).or_default();
        let prev_hash = chain
            .last()
            .map(|e| e.hash.clone())
            .unwrap_or_else(|| crate::protocol::audit::GENESIS.to_string());
        let hash = crate::protocol::audit::entry_hash(
            &prev_hash,
            mesh_id,
            event_type,
            actor_member_id,
            &payload,
            &ids::iso8601_ms(created_at),
        );
        let seq = chain.len() as i64 + 1;
        chain.push(AuditEntry {
            seq,
            mesh_id: mesh_id.to_string(),
            event_type: event_type.to_string(),
            actor_member_id: actor_member_id.map(str::to_string),
            payload,
            created_at,
            prev_hash,
            hash,
        });
        Ok(())
    }

    /// The canonical text of every event is built before the store's lock is taken; under
    /// it, each entry costs one SHA-256 of its predecessor's hash and that text.
    async fn append_audit_batch(&self, events: Vec<super::AuditEvent>) -> StoreResult<()> {
        let mut dates = crate::protocol::audit::IsoDates::default();
        let prepared: Vec<(super::AuditEvent, Vec<u8>)> = events
            .into_iter()
            .map(|e| {
                let suffix = crate::protocol::audit::entry_suffix(
                    &e.mesh_id,
                    e.event_type,
                    e.actor.as_deref(),
                    &e.payload,
                    dates.format(e.created_at),
                );
                (e, suffix)
            })
            .collect();
        let mut inner = self.lock();
        for (e, suffix) in prepared {
            if !inner.audit.contains_key(&e.mesh_id) {
                inner.audit.insert(e.mesh_id.clone(), Vec::new());
            }
            let Some(chain) = inner.audit.get_mut(&e.mesh_id) else {
                continue;
            };
            let prev_hash = chain
                .last()
                .map(|e| e.hash.clone())
                .unwrap_or_else(|| crate::protocol::audit::GENESIS.to_string());
            let hash = crate::protocol::audit::chain_hash(&prev_hash, &suffix);
            let seq = chain.len() as i64 + 1;
            chain.push(AuditEntry {
                seq,
                mesh_id: e.mesh_id,
                event_type: e.event_type.to_string(),
                actor_member_id: e.actor,
                payload: e.payload,
                created_at: e.created_at,
                prev_hash,
                hash,
            });
        }
        Ok(())
    }

    async fn audit_entries(&self, mesh_id: &str) -> StoreResult<Vec<AuditEntry>> {
        Ok(self.lock().audit.get(mesh_id).cloned().unwrap_or_default())
    }

    async fn audit_page(
        &self,
        mesh_id: &str,
        event_type: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> StoreResult<super::AuditPage> {
        let inner = self.lock();
        let matching: Vec<&AuditEntry> = inner
            .audit
            .get(mesh_id)
            .map(|chain| {
                chain
                    .iter()
                    .rev()
                    .filter(|e| event_type.is_none_or(|t| e.event_type == t))
                    .collect()
            })
            .unwrap_or_default();
        Ok(super::AuditPage {
            total: matching.len() as i64,
            entries: matching
                .into_iter()
                .skip(offset)
                .take(limit)
                .cloned()
                .collect(),
        })
    }
}

#[async_trait]
impl PeerStateStore for MemoryStore {
    async fn save_peer_state(
        &self,
        mesh_id: &str,
        member_id: &str,
        state: PeerState,
    ) -> StoreResult<()> {
        self.lock()
            .peer_state
            .insert((mesh_id.to_string(), member_id.to_string()), state);
        Ok(())
    }

    async fn peer_state(&self, mesh_id: &str, member_id: &str) -> StoreResult<Option<PeerState>> {
        Ok(self
            .lock()
            .peer_state
            .get(&(mesh_id.to_string(), member_id.to_string()))
            .cloned())
    }
}
