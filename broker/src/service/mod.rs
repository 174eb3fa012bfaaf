//! The operations a peer can perform, without a transport: each takes the acting
//! [`Principal`] and a typed request and returns a typed result or a typed error (with its
//! metric label and the exact wire text). The WebSocket session is one adapter (decode a
//! frame, call, encode the reply); the tests are another, and the REST handlers will be a
//! third. Nothing here writes to a socket.

pub mod apikeys;
pub mod audit_query;
pub mod clocks;
pub mod contexts;
pub mod cron;
pub mod files;
pub mod humans;
pub mod info;
pub mod mcp_registry;
pub mod memories;
pub mod moderation;
pub mod msg_status;
pub mod peer_relay;
pub mod peers;
pub mod presence;
pub mod queue;
pub mod schedule;
pub mod send;
pub mod skills;
pub mod state;
pub mod streams;
pub mod tasks;
pub mod topics;
pub mod vault;
pub mod watches;
pub mod webhooks;

use std::sync::Arc;

pub use moderation::{ModerationError, Verb};
pub use peers::{PeersError, list_peers};
pub use presence::{PresenceChange, PresenceError};
pub use queue::{AckError, AckOutcome, AckRequest, DrainRequest, Drained, QueueError};
pub use send::{Delivery, SendError, SendOutcome, SendRequest, send, send_with};

use crate::cluster::bus::{BusError, MeshEvent};
use crate::cluster::presence::{PeerRole, Presence, PresenceRecord};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::{Member, Mesh, Store, StoreResult};

/// How the acting party proved who it is. Later kinds (an API key, a web session) add a
/// variant; the operations read the fields of [`Principal`], not the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A member's own key, through `hello`.
    Member,
    /// A session key the member attested, through `session_hello`.
    Session,
    /// An API key of the REST API (`rest.md` §2), acting as the member that issued it.
    ApiKey,
}

/// Who is acting: the mesh, the member row as of the handshake, and the presence it acts
/// through.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub mesh: Mesh,
    pub member: Member,
    /// The presence this principal acts through.
    pub presence_id: String,
    /// The key others address it by (its session key if it has one, else its member key).
    pub routing_key: String,
    /// The name it announced (or its member's).
    pub display_name: String,
    /// Its session key, if it is a session.
    pub session_key: Option<String>,
    pub peer_role: PeerRole,
}

impl Principal {
    /// The principal acting through `record` as `member` of `mesh`.
    pub fn from_presence(mesh: Mesh, member: Member, record: &PresenceRecord) -> Self {
        Principal {
            kind: if record.session_pubkey.is_some() {
                PrincipalKind::Session
            } else {
                PrincipalKind::Member
            },
            mesh,
            member,
            presence_id: record.presence_id.clone(),
            routing_key: record.routing_key().to_string(),
            display_name: record.display_name.clone(),
            session_key: record.session_pubkey.clone(),
            peer_role: record.peer_role,
        }
    }
}

/// What the operations need from the replica. Every dependency on [`Node`] goes through
/// this one place, so that splitting `Node` changes only these accessors.
#[derive(Debug, Clone)]
pub struct ServiceCtx {
    node: Arc<Node>,
}

impl ServiceCtx {
    pub fn new(node: &Arc<Node>) -> Self {
        ServiceCtx { node: node.clone() }
    }

    /// Durable truth (meshes, members, queue).
    pub fn store(&self) -> &dyn Store {
        self.node.store.as_ref()
    }

    /// Who is connected where, and the cluster-wide limits.
    pub fn presence(&self) -> &dyn Presence {
        self.node.presence.as_ref()
    }

    /// Every presence of the mesh through the replica's presence cache, for fan-out: may
    /// be a moment stale (`node/presence_cache.rs` says how much).
    pub async fn mesh_presences(
        &self,
        mesh_id: &str,
    ) -> crate::cluster::presence::PresenceResult<Arc<Vec<PresenceRecord>>> {
        let node = &self.node;
        node.presence_cache
            .list(&*node.presence, mesh_id, || node.hub.has_mesh(mesh_id))
            .await
    }

    /// A presence of the mesh changed what fan-out selects by (groups, visibility): this
    /// replica's cached listing of the mesh is dropped.
    pub fn presence_changed(&self, mesh_id: &str) {
        self.node.presence_cache.invalidate(mesh_id);
    }

    /// Stream subscriptions of presences (extensions §4), cluster-wide.
    pub fn stream_subscriptions(&self) -> &dyn crate::cluster::subscriptions::StreamSubscriptions {
        self.node.stream_subscriptions.as_ref()
    }

    /// The limits.
    pub fn config(&self) -> &Config {
        &self.node.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.node.metrics
    }

    /// The mesh's member rows, through the replica's member cache.
    pub async fn members(&self, mesh_id: &str) -> StoreResult<Arc<Vec<Member>>> {
        self.node.mesh_members(mesh_id).await
    }

    /// Publishes on the bus (timed).
    pub async fn publish(&self, mesh_id: &str, event: MeshEvent) -> Result<(), BusError> {
        self.node.publish(mesh_id, event).await
    }

    /// After a change to the mesh's members (a ban): every replica drops its cached rows.
    pub async fn members_changed(&self, mesh_id: &str) {
        self.node.members_changed(mesh_id).await;
    }

    /// A presence is gone for good: its state is saved and its peers are told.
    pub async fn end_presence(&self, record: PresenceRecord) {
        crate::session::end_presence(&self.node, record).await;
    }

    /// Records a broadcast's or group message's delivery status (extensions §7) off the
    /// caller's path, on a tracked task. A failed write is logged: the message was
    /// delivered, only `message_status` will not find it.
    pub fn record_fanout(&self, message: crate::store::msg_status::SentMessage) {
        let store = self.node.store.clone();
        self.node.tracker.spawn(async move {
            if let Err(e) = store.record_fanout(message).await {
                tracing::warn!(error = %e, "delivery status of a fan-out not recorded");
            }
        });
    }

    /// Appends to the mesh's audit chain off the caller's path.
    pub fn audit(
        &self,
        mesh_id: &str,
        event_type: &'static str,
        actor: Option<&str>,
        payload: serde_json::Value,
    ) {
        self.node.audit(mesh_id, event_type, actor, payload);
    }
}

/// What the peer relay and the peer MCP registry (extensions §13, §14) need from the
/// replica.
impl ServiceCtx {
    /// The peer MCP registry and the pending peer requests, cluster-wide.
    pub fn mcp_registry(&self) -> &dyn crate::cluster::mcp_registry::McpRegistry {
        self.node.mcp_registry.as_ref()
    }

    /// This replica's share of the pending peer requests (one timer each).
    pub fn peer_pending(&self) -> &Arc<peer_relay::PendingSlots> {
        &self.node.peer_pending
    }

    /// Runs `task` on the replica's tracker, so the shutdown drain accounts for it; it is
    /// dropped when shutdown begins.
    pub fn spawn_until_stopping(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let stopping = self.node.stopping.clone();
        self.node.tracker.spawn(async move {
            tokio::select! {
                _ = stopping.cancelled() => {}
                _ = task => {}
            }
        });
    }
}
