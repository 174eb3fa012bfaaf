//! Durable state: meshes, members, grants, bans, invites, the direct-message queue and the
//! per-member peer state kept for restore.
//!
//! # Capabilities
//!
//! The seam is one trait per family of state: [`MeshStore`] (meshes, members, grants,
//! revocation), [`InviteStore`], [`QueueStore`], [`AuditStore`], [`PeerStateStore`], and
//! [`StoreBackend`] (kind, health, schema). [`Store`] is all of them: a backend implements
//! the parts and the blanket impl gives it `Store`, so the broker holds one
//! `Arc<dyn Store>` and a module may narrow it to the capability it uses
//! (`Arc<dyn QueueStore>`). Each capability has its own contract suite, run on both
//! backends, in `tests/store_contract.rs`; a new family adds a trait, a bound on `Store` and
//! a suite.
//!
//! # Guarantees every backend gives
//!
//! - **Durability:** when a write method returns `Ok`, the write is as durable as the
//!   backend can make it (committed in PostgreSQL; in memory for [`memory::MemoryStore`],
//!   which is single node only and loses everything when the process exits).
//! - **Queue order:** [`QueueStore::enqueue`] assigns each message a sequence number in commit
//!   order; [`QueueStore::claim`] returns messages in that order, so two messages from one
//!   sender to one recipient are claimed (and pushed) in send order.
//! - **Claims are leases:** a claimed message is hidden from other non-stealing claims
//!   until its lease ends or it is marked delivered; a stealing claim (a member's new
//!   connection) takes it at once. A message is at-least-once: it is claimed again until
//!   [`QueueStore::mark_delivered`] names it.
//! - **Expiry:** undelivered messages older than the queue TTL are removed by
//!   [`QueueStore::sweep_expired`], which the broker calls on a timer; so are the
//!   idempotency keys (`sender member`, `client_message_id`) of older sends.
//! - **Idempotent sends:** [`QueueStore::enqueue`] of a sender's `client_message_id` seen
//!   before (within the TTL) queues nothing and answers the original `messageId`.
//! - **No sockets:** a store knows nothing of connections; the broker rings the doorbell.

pub mod accounts;
pub mod apikeys;
pub mod clocks;
pub mod contexts;
pub mod files;
pub mod mcp_registry;
pub mod memories;
pub mod memory;
pub mod msg_status;
pub mod postgres;
pub mod schedule;
pub mod skills;
pub mod state;
pub mod streams;
pub mod tasks;
pub mod topics;
pub mod vault;
pub mod watches;
pub mod web_members;
pub mod webhooks;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::protocol::{Group, Priority};

/// A member's role in its mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mesh {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub owner_user_id: Option<String>,
    /// The 32-byte seed of the owner signing key, in hex: the broker signs invites with it.
    pub owner_seed_hex: String,
    pub owner_pubkey: String,
    /// The mesh's root key (base64url, 32 bytes), carried by invites to new members.
    pub root_key: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub mesh_id: String,
    pub pubkey: String,
    pub display_name: String,
    pub role: Role,
    pub user_id: Option<String>,
    /// Set: banned.
    pub revoked_at: Option<i64>,
    /// `{sender pubkey: [capabilities]}` (spec §4.5).
    pub peer_grants: BTreeMap<String, Vec<String>>,
    pub default_groups: Vec<Group>,
    pub role_tag: Option<String>,
    pub message_mode: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewMember {
    pub pubkey: String,
    pub display_name: String,
    pub role: Role,
    pub user_id: Option<String>,
    pub default_groups: Vec<Group>,
    pub role_tag: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Invite {
    /// Short id of the invite.
    pub code: String,
    /// What a client presents to `POST /join` (the base64url payload of the link).
    pub token: String,
    pub mesh_id: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: i64,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub payload: Value,
}

/// A direct message waiting for, or being delivered to, its recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub id: String,
    pub mesh_id: String,
    pub sender_member_id: String,
    /// The sender's routing key (session key if it had one).
    pub sender_pubkey: String,
    pub sender_member_pubkey: String,
    pub sender_name: String,
    pub target_member_id: String,
    /// Set when the message was addressed to a session key: only that session may take it.
    pub target_session_key: Option<String>,
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    pub client_message_id: Option<String>,
    pub created_at: i64,
    /// The `subtype` its push carries (a scheduled reminder's `reminder`, extensions §5).
    pub subtype: Option<String>,
    /// The W3C `traceparent` of the send that queued it (`None` when that replica exported
    /// no traces): its push and its `client_ack` continue the send's trace.
    pub trace: Option<String>,
}

/// Which queued messages a connection takes.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub mesh_id: &'a str,
    pub member_id: &'a str,
    /// The claiming connection's session key; messages addressed to another session key are
    /// not taken.
    pub session_key: Option<&'a str>,
    /// `false` while the presence is busy: only `now` messages are taken.
    pub all_priorities: bool,
    /// Take messages whose lease has not ended yet (a member's new connection does).
    pub steal: bool,
    pub lease_ms: i64,
    pub now_ms: i64,
    pub limit: usize,
}

/// How a `client_ack` names a message.
#[derive(Debug, Clone, Copy)]
pub enum MessageRef<'a> {
    Broker(&'a str),
    Client(&'a str),
}

/// What a member leaves behind for its next connection (spec §3.4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerState {
    pub groups: Vec<Group>,
    pub summary: Option<String>,
    pub profile: Map<String, Value>,
    pub stats: Option<Value>,
    pub last_seen_at: i64,
}

/// One entry of a mesh's tamper-evident audit chain (spec §7).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Position in the mesh's chain, from 1.
    pub seq: i64,
    pub mesh_id: String,
    pub event_type: String,
    pub actor_member_id: Option<String>,
    pub payload: Value,
    pub created_at: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// One event waiting to be appended to its mesh's audit chain
/// ([`AuditStore::append_audit_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub mesh_id: String,
    pub event_type: &'static str,
    pub actor: Option<String>,
    pub payload: Value,
    /// Epoch milliseconds.
    pub created_at: i64,
}

/// One page of a mesh's audit chain ([`AuditStore::audit_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Entries matching the filter, over all pages.
    pub total: i64,
}

/// The result of walking a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerdict {
    pub valid: bool,
    pub entries: usize,
    /// `seq` of the first entry whose link or hash does not hold.
    pub broken_at: Option<i64>,
}

/// Walks `entries` (in chain order) and reports the first broken link or hash.
pub fn verify_audit(entries: &[AuditEntry]) -> AuditVerdict {
    let mut prev = crate::protocol::audit::GENESIS.to_string();
    for e in entries {
        let hash = crate::protocol::audit::entry_hash(
            &prev,
            &e.mesh_id,
            &e.event_type,
            e.actor_member_id.as_deref(),
            &e.payload,
            &crate::ids::iso8601_ms(e.created_at),
        );
        if e.prev_hash != prev || e.hash != hash {
            return AuditVerdict {
                valid: false,
                entries: entries.len(),
                broken_at: Some(e.seq),
            };
        }
        prev = hash;
    }
    AuditVerdict {
        valid: true,
        entries: entries.len(),
        broken_at: None,
    }
}

/// Outcome of `POST /join`.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub member: Member,
    pub already_member: bool,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write whose commit may or may not have happened (the connection broke while the
    /// commit was in flight) and that could not be resolved. Never report it as refused:
    /// the caller retries with the same idempotency key.
    #[error("store outcome unknown: {0}")]
    OutcomeUnknown(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The durable-state seam: every capability trait below, implemented by both backends.
/// See the module documentation for the guarantees.
///
/// A backend implements the parts and gets `Store` from the blanket impl, so
/// `Arc<dyn Store>` carries every capability. A new family of durable state adds a
/// capability trait (and its contract suite in `tests/store_contract.rs`) and a bound here,
/// instead of growing one trait.
pub trait Store:
    StoreBackend
    + MeshStore
    + InviteStore
    + QueueStore
    + AuditStore
    + PeerStateStore
    + state::StateStore
    + memories::MemoriesStore
    + tasks::TaskStore
    + streams::StreamStore
    + schedule::ScheduleStore
    + clocks::ClockStore
    + msg_status::MessageStatusStore
    + contexts::ContextStore
    + skills::SkillStore
    + vault::VaultStore
    + mcp_registry::McpServerStore
    + files::FileStore
    + topics::TopicStore
    + apikeys::ApiKeyStore
    + webhooks::WebhookStore
    + watches::WatchStore
    + accounts::AccountStore
    + web_members::WebMemberStore
{
}

impl<T> Store for T where
    T: StoreBackend
        + MeshStore
        + InviteStore
        + QueueStore
        + AuditStore
        + PeerStateStore
        + state::StateStore
        + memories::MemoriesStore
        + tasks::TaskStore
        + streams::StreamStore
        + schedule::ScheduleStore
        + clocks::ClockStore
        + msg_status::MessageStatusStore
        + contexts::ContextStore
        + skills::SkillStore
        + vault::VaultStore
        + mcp_registry::McpServerStore
        + files::FileStore
        + topics::TopicStore
        + apikeys::ApiKeyStore
        + webhooks::WebhookStore
        + watches::WatchStore
        + accounts::AccountStore
        + web_members::WebMemberStore
{
}

/// What the backend is and whether it answers (`/health`, readiness, start-up checks).
#[async_trait]
pub trait StoreBackend: Send + Sync + 'static {
    /// A short name for `/health` (`memory`, `postgres`).
    fn kind(&self) -> &'static str;

    /// Whether the backend answers now (readiness).
    async fn healthy(&self) -> bool;

    /// The applied schema migration, for backends that have a schema (`None` in memory).
    async fn schema_version(&self) -> StoreResult<Option<i64>> {
        Ok(None)
    }
}

/// Meshes and their members: enrolment, grants and revocation (bans).
#[async_trait]
pub trait MeshStore: Send + Sync + 'static {
    async fn create_mesh(&self, mesh: Mesh) -> StoreResult<Mesh>;
    async fn mesh(&self, mesh_id: &str) -> StoreResult<Option<Mesh>>;

    /// Adds a member; [`StoreError::Conflict`] when the pubkey is already a member.
    async fn add_member(&self, mesh_id: &str, member: NewMember) -> StoreResult<Member>;
    async fn members(&self, mesh_id: &str) -> StoreResult<Vec<Member>>;
    /// The member with this pubkey, revoked or not.
    async fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<Member>>;
    async fn member(&self, mesh_id: &str, member_id: &str) -> StoreResult<Option<Member>>;
    /// Merges `patch` into the member's grants (`None` removes an entry); returns the result.
    async fn update_grants(
        &self,
        mesh_id: &str,
        member_id: &str,
        patch: BTreeMap<String, Option<Vec<String>>>,
    ) -> StoreResult<BTreeMap<String, Vec<String>>>;
    /// Sets or clears `revoked_at`.
    async fn set_revoked(&self, mesh_id: &str, member_id: &str, at: Option<i64>)
    -> StoreResult<()>;
    /// One page of meshes in id order (a stable order: ids never change): those whose id
    /// sorts after `after` (every mesh when `None`), at most `limit`.
    async fn list_meshes(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Mesh>>;
    /// Deletes the mesh and everything it owns, in one step: its members (grants and bans
    /// with them), invites, the messages queued in it, the idempotency keys of its members'
    /// sends, their saved peer state and the mesh's audit chain. `false` when there was no
    /// such mesh; what is left under its id (a write that raced an earlier delete) is purged
    /// all the same, so a repeated delete cleans up.
    async fn delete_mesh(&self, mesh_id: &str) -> StoreResult<bool>;
    /// Deletes one member: its row, the messages queued for it, the idempotency keys of its
    /// sends, its saved peer state, its scheduled messages, and its key from the other
    /// members' grants. What it gave the mesh stays: messages it sent that wait for other
    /// members, memories, tasks, shared state; the audit chain is not touched. `false` when
    /// the mesh has no such member. (The memory store leaves the extension families' rows,
    /// which live in their own modules' state, in place: dev mode only, gone at exit.)
    async fn delete_member(&self, mesh_id: &str, member_id: &str) -> StoreResult<bool>;
}

/// Invites and their redemption (`POST /join`).
#[async_trait]
pub trait InviteStore: Send + Sync + 'static {
    async fn create_invite(&self, invite: Invite) -> StoreResult<()>;
    async fn invite_by_token(&self, token: &str) -> StoreResult<Option<Invite>>;
    /// Atomically checks the invite's uses, counts one and adds the member; an existing
    /// member of that pubkey is returned as `already_member` without using the invite.
    async fn redeem_invite(
        &self,
        code: &str,
        member: NewMember,
        now_s: i64,
    ) -> StoreResult<Enrolment>;
}

/// The direct-message queue: idempotent enqueue, lease claims, delivery, TTL sweep, depth.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Durably queues a direct message and returns its `messageId`. A message with a
    /// `client_message_id` its sender already used (within the queue TTL, delivered or
    /// not) is not queued again: the original's id is returned. A failure whose commit
    /// outcome is unknown is [`StoreError::OutcomeUnknown`], never `Unavailable`.
    async fn enqueue(&self, message: QueuedMessage) -> StoreResult<String>;
    /// Claims deliverable messages for one connection, in queue order.
    async fn claim(&self, claim: Claim<'_>) -> StoreResult<Vec<QueuedMessage>>;
    /// Records the lease of messages pushed without a claim (a doorbell carried them):
    /// each of these ids of the member still undelivered and unleased (or whose lease
    /// ended by `now_ms`) is leased until `until_ms`, as a claim would have. Returns the
    /// ids leased; any other was delivered meanwhile or claimed by another connection
    /// (which pushes it too: a duplicate, never a loss).
    async fn lease_pushed(
        &self,
        mesh_id: &str,
        member_id: &str,
        ids: &[String],
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<Vec<String>>;
    /// Marks a message of this recipient delivered; `false` when there was none to mark.
    async fn mark_delivered(
        &self,
        mesh_id: &str,
        member_id: &str,
        message: MessageRef<'_>,
    ) -> StoreResult<bool>;
    /// Removes undelivered messages created before `before_ms`; returns how many.
    async fn sweep_expired(&self, before_ms: i64) -> StoreResult<u64>;
    /// Undelivered messages across all meshes (the `broker_queue_depth` gauge).
    async fn queue_depth(&self) -> StoreResult<u64>;
}

/// The per-mesh tamper-evident audit chain (spec §7).
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends an event to the mesh's audit chain; concurrent appends never fork it.
    async fn append_audit(
        &self,
        mesh_id: &str,
        event_type: &str,
        actor_member_id: Option<&str>,
        payload: Value,
        created_at: i64,
    ) -> StoreResult<()>;
    /// Appends events, in order, to their meshes' chains: one entry per event, as if
    /// appended one by one, but with one lock (or one transaction per mesh) per batch.
    async fn append_audit_batch(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        for e in events {
            self.append_audit(
                &e.mesh_id,
                e.event_type,
                e.actor.as_deref(),
                e.payload,
                e.created_at,
            )
            .await?;
        }
        Ok(())
    }

    /// The mesh's chain in order.
    async fn audit_entries(&self, mesh_id: &str) -> StoreResult<Vec<AuditEntry>>;
    /// One page of the mesh's chain, newest first (extensions §8): the entries of
    /// `event_type` (all when `None`) after skipping `offset` of them, at most `limit`, and
    /// how many match over all pages.
    async fn audit_page(
        &self,
        mesh_id: &str,
        event_type: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> StoreResult<AuditPage>;
}

/// What a member leaves behind for its next connection (spec §3.4).
#[async_trait]
pub trait PeerStateStore: Send + Sync + 'static {
    async fn save_peer_state(
        &self,
        mesh_id: &str,
        member_id: &str,
        state: PeerState,
    ) -> StoreResult<()>;
    async fn peer_state(&self, mesh_id: &str, member_id: &str) -> StoreResult<Option<PeerState>>;
}
