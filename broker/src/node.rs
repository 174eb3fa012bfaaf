//! One replica's shared state: its configuration, its backends and its local sockets.
//!
//! `Node` holds them; the state with behaviour of its own has an owner of its own
//! ([`MemberCache`], [`Subscriptions`], [`AuditSpawner`], [`HookState`]), which modules that
//! need only that take instead of the whole node.

mod audit;
mod hooks;
mod members;
mod presence_cache;
mod subscriptions;

pub use audit::AuditSpawner;
pub use hooks::{HookRoute, HookState};
pub use members::MemberCache;
pub use presence_cache::PresenceCache;
pub use subscriptions::Subscriptions;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::bus::{Bus, BusError, MeshEvent};
use crate::cluster::presence::Presence;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything the tasks of one replica share. Each field says why it exists.
pub struct Node {
    pub config: Config,
    /// Durable truth (meshes, members, queue).
    pub store: Arc<dyn Store>,
    /// Who is connected where, and the cluster-wide limits.
    pub presence: Arc<dyn Presence>,
    /// Fan-out to the replicas holding a mesh's sockets.
    pub bus: Arc<dyn Bus>,
    /// This replica's own sockets.
    pub hub: Hub,
    pub metrics: Metrics,
    /// Every task this replica spawns, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when shutdown begins: timers and background loops stop.
    pub stopping: CancellationToken,
    /// Cancelled at the shutdown deadline: every socket is dropped at once.
    pub kill: CancellationToken,
    /// False while draining (readiness answers 503).
    pub accepting: AtomicBool,
    pub started: Instant,
    conn_seq: AtomicU64,
    /// Hook statuses waiting for a presence to connect.
    pub hooks: HookState,
    /// Meshes this replica is subscribed to on the bus.
    pub subscriptions: Subscriptions,
    /// Member rows of meshes with local sockets, read on every send.
    pub members: MemberCache,
    /// Audit appends, off the caller's path.
    pub auditor: AuditSpawner,
    /// Set while this replica heals after it was declared dead (a pause or a partition
    /// longer than `NODE_DEAD_AFTER_MS`): its sockets are being closed `going_away`, readiness
    /// answers 503 and handshakes are refused until a clean heartbeat after they are gone.
    pub healing: AtomicBool,
    /// The connections the current heal closed; healed once none is left in the hub.
    pub heal_conns: Mutex<HashSet<String>>,
    /// Connections told to re-sync that have not finished yet: the re-sync is complete
    /// (and the replica reports itself re-synced to the cluster) once none is left.
    pub resync_waiting: Mutex<HashSet<String>>,
    /// Rung when the presence backend lost its data: re-sync now, bus recovery or not.
    pub resync_requested: tokio::sync::Notify,
    /// Stream subscriptions of presences (extensions §4), cluster-wide in cluster mode.
    pub stream_subscriptions: Arc<dyn crate::cluster::subscriptions::StreamSubscriptions>,
    /// The peer MCP registry and the pending peer requests (extensions §13, §14),
    /// cluster-wide in cluster mode.
    pub mcp_registry: Arc<dyn crate::cluster::mcp_registry::McpRegistry>,
    /// The peer requests this replica waits on (their timers), bounded by
    /// `MAX_PENDING_PEER_REQUESTS_PER_REPLICA`.
    pub peer_pending: Arc<crate::service::peer_relay::PendingSlots>,
    /// Listings of meshes with local sockets, for fan-out and join/leave recipients.
    pub presence_cache: PresenceCache,
    /// Handshake slots (`HANDSHAKE_CONCURRENCY`): reconnect storms wait their turn.
    pub admission: crate::auth::Admission,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
        bus: Arc<dyn Bus>,
        metrics: Metrics,
    ) -> Self {
        let tracker = TaskTracker::new();
        Node {
            presence_cache: PresenceCache::new(
                config.presence_cache_ttl,
                metrics.presence_cache.clone(),
            ),
            admission: crate::auth::Admission::new(&config, &metrics),
            hooks: HookState::new(
                config.hook_pending,
                config.hook_pending_max,
                metrics.hook_pending_dropped.clone(),
            ),
            subscriptions: Subscriptions::new(bus.clone()),
            members: MemberCache::new(store.clone()),
            auditor: AuditSpawner::new(
                store.clone(),
                tracker.clone(),
                audit::AuditMetrics {
                    failures: metrics.audit_write_failures.clone(),
                    buffered: metrics.audit_buffered.clone(),
                    buffer_full: metrics.audit_buffer_full.clone(),
                },
                audit::AuditBounds {
                    buffer: config.audit_buffer,
                    batch_max: config.audit_batch_max,
                    linger: config.audit_flush,
                },
            ),
            config,
            store,
            presence,
            bus,
            hub: Hub::new(),
            metrics,
            tracker,
            stopping: CancellationToken::new(),
            kill: CancellationToken::new(),
            accepting: AtomicBool::new(true),
            started: Instant::now(),
            conn_seq: AtomicU64::new(0),
            healing: AtomicBool::new(false),
            heal_conns: Mutex::new(HashSet::new()),
            resync_waiting: Mutex::new(HashSet::new()),
            resync_requested: tokio::sync::Notify::new(),
            stream_subscriptions: Arc::new(
                crate::cluster::subscriptions::MemoryStreamSubscriptions::new(),
            ),
            mcp_registry: Arc::new(crate::cluster::mcp_registry::MemoryMcpRegistry::new()),
            peer_pending: Arc::new(crate::service::peer_relay::PendingSlots::default()),
        }
    }

    /// Keeps the peer MCP registry and the pending peer requests in `registry` (Redis in
    /// cluster mode) instead of this process's memory.
    pub fn with_mcp_registry(
        mut self,
        registry: Arc<dyn crate::cluster::mcp_registry::McpRegistry>,
    ) -> Self {
        self.mcp_registry = registry;
        self
    }

    /// Keeps stream subscriptions in `subscriptions` (Redis in cluster mode) instead of
    /// this process's memory.
    pub fn with_stream_subscriptions(
        mut self,
        subscriptions: Arc<dyn crate::cluster::subscriptions::StreamSubscriptions>,
    ) -> Self {
        self.stream_subscriptions = subscriptions;
        self
    }

    /// Why this replica must not take new sessions nor trust the shared presence state
    /// now, if it must not: it is healing after being declared dead, or the cluster is
    /// re-syncing after a Redis data loss. Readiness answers 503 with it and handshakes
    /// are refused `internal` (retryable).
    pub fn sync_problem(&self) -> Option<&'static str> {
        if self.healing.load(Ordering::SeqCst) {
            Some("healing: this replica was declared dead")
        } else if self.presence.resync_pending() {
            Some("re-syncing after a Redis data loss")
        } else {
            None
        }
    }

    /// A session finished its part of the re-sync (or needs none).
    pub fn resync_done(&self, conn_id: &str) {
        self.resync_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(conn_id);
    }

    /// The mesh's member rows, from the cache while this replica has sockets in the mesh.
    pub async fn mesh_members(
        &self,
        mesh_id: &str,
    ) -> crate::store::StoreResult<Arc<Vec<crate::store::Member>>> {
        self.members
            .get(mesh_id, || self.hub.has_mesh(mesh_id))
            .await
    }

    /// Drops this replica's cached member rows of the mesh.
    pub fn forget_members(&self, mesh_id: &str) {
        self.members.forget(mesh_id);
    }

    /// After a change to the mesh's members (enrolment, grants, ban): every replica drops
    /// its cached rows.
    pub async fn members_changed(&self, mesh_id: &str) {
        self.members.forget(mesh_id);
        if let Err(e) = self.publish(mesh_id, MeshEvent::MembersChanged).await {
            tracing::warn!(error = %e, "member change not published; other replicas refresh within the cache TTL");
        }
    }

    /// Publishes on the bus, timing it (`broker_bus_publish_seconds`).
    pub async fn publish(&self, mesh_id: &str, event: MeshEvent) -> Result<(), BusError> {
        let started = Instant::now();
        let result = self.bus.publish(mesh_id, event).await;
        self.metrics
            .bus_publish_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Subscribes or unsubscribes the mesh so that it matches whether local sockets remain.
    pub async fn sync_subscription(&self, mesh_id: &str) {
        self.subscriptions
            .sync(
                mesh_id,
                // Local sockets, or REST SSE streams (`rest::sse`) woken by the mesh's events.
                || self.hub.has_mesh(mesh_id) || crate::rest::sse::has_mesh(mesh_id),
                // Without a subscription this replica would miss invalidations.
                || {
                    self.members.remove(mesh_id);
                    self.presence_cache.invalidate(mesh_id);
                },
            )
            .await;
    }

    /// After the bus reconnected: subscribe every local mesh again (idempotent).
    pub async fn resubscribe_all(&self) {
        let mut meshes = self.hub.mesh_ids();
        meshes.extend(crate::rest::sse::mesh_ids());
        meshes.sort();
        meshes.dedup();
        // Presence events may have been missed while the bus was away.
        self.presence_cache.clear();
        self.subscriptions.resubscribe_all(meshes).await;
    }

    /// A connection id unique across the cluster: this node's id and a sequence number.
    pub fn next_conn_id(&self) -> String {
        let n = self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}/{n}", self.config.instance_id)
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// Appends to the mesh's audit chain off the caller's path. A failed write is never
    /// silent: it is logged and counted.
    pub fn audit(
        &self,
        mesh_id: &str,
        event_type: &'static str,
        actor: Option<&str>,
        payload: serde_json::Value,
    ) {
        self.auditor.append(mesh_id, event_type, actor, payload);
    }

    /// See [`HookState::key`].
    pub fn hook_key(pid: i64, cwd: &str) -> String {
        HookState::key(pid, cwd)
    }

    /// The narrow handles the handshake checks take.
    pub fn handshake(&self) -> crate::auth::Handshake<'_> {
        crate::auth::Handshake {
            store: &*self.store,
            presence: &*self.presence,
            limits: crate::auth::Limits {
                timestamp_skew: self.config.timestamp_skew,
                max_connections_per_mesh: self.config.max_connections_per_mesh,
                session_key_memory: self.config.session_key_memory,
                session_hello_burst: self.config.session_hello_burst,
                session_hellos_per_min: self.config.session_hellos_per_min,
            },
            metrics: &self.metrics,
        }
    }
}

impl<'a> From<&'a Node> for crate::auth::Handshake<'a> {
    fn from(node: &'a Node) -> Self {
        node.handshake()
    }
}

impl<'a> From<&'a Arc<Node>> for crate::auth::Handshake<'a> {
    fn from(node: &'a Arc<Node>) -> Self {
        node.handshake()
    }
}
