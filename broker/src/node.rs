//! One replica's shared state: its configuration, its backends and its local sockets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::bus::Bus;
use crate::cluster::presence::Presence;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::Status;
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
    /// Hook statuses waiting (at most `HOOK_PENDING_MS`) for a presence to connect, by
    /// [`Node::hook_key`] (a hash of `pid:cwd`), at most `HOOK_PENDING_MAX` of them. Lost if
    /// the replica dies; a hook reports again on the next change.
    pub hook_pending: Mutex<HashMap<String, (Status, Instant)>>,
    /// Meshes this replica is subscribed to on the bus. The async lock serialises
    /// (un)subscription with the hub's view, so a mesh is subscribed exactly while it has
    /// local sockets, however joins and leaves interleave.
    subscriptions: tokio::sync::Mutex<HashSet<String>>,
    /// Member rows of meshes with local sockets, read on every send. A cache: PostgreSQL
    /// is the truth. Dropped when any replica changes the mesh's members (a
    /// `MembersChanged` event, which reaches every replica with sockets in the mesh), when
    /// the last local socket of the mesh leaves, and after `MEMBER_CACHE_TTL`.
    members: Mutex<HashMap<String, CachedMembers>>,
    /// Set while this replica heals after it was declared dead (a pause or a partition
    /// longer than `NODE_DEAD_AFTER_MS`): its sockets are being closed `1001`, readiness
    /// answers 503 and handshakes are refused until a clean heartbeat after they are gone.
    pub healing: AtomicBool,
    /// The connections the current heal closed; healed once none is left in the hub.
    pub heal_conns: Mutex<HashSet<String>>,
    /// Connections told to re-sync that have not finished yet: the re-sync is complete
    /// (and the replica reports itself re-synced to the cluster) once none is left.
    pub resync_waiting: Mutex<HashSet<String>>,
    /// Rung when the presence backend lost its data: re-sync now, bus recovery or not.
    pub resync_requested: tokio::sync::Notify,
}

/// How long cached member rows are trusted without an invalidation.
const MEMBER_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Default)]
struct CachedMembers {
    rows: Option<(Instant, Arc<Vec<crate::store::Member>>)>,
    /// Bumped by each invalidation, so a read that raced one is not cached.
    generation: u64,
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
        Node {
            config,
            store,
            presence,
            bus,
            hub: Hub::new(),
            metrics,
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
            kill: CancellationToken::new(),
            accepting: AtomicBool::new(true),
            started: Instant::now(),
            conn_seq: AtomicU64::new(0),
            hook_pending: Mutex::new(HashMap::new()),
            subscriptions: tokio::sync::Mutex::new(HashSet::new()),
            members: Mutex::new(HashMap::new()),
            healing: AtomicBool::new(false),
            heal_conns: Mutex::new(HashSet::new()),
            resync_waiting: Mutex::new(HashSet::new()),
            resync_requested: tokio::sync::Notify::new(),
        }
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
        let generation = {
            let cache = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let entry = cache.get(mesh_id);
            if let Some((at, rows)) = entry.and_then(|e| e.rows.as_ref())
                && at.elapsed() < MEMBER_CACHE_TTL
            {
                return Ok(rows.clone());
            }
            entry.map(|e| e.generation).unwrap_or(0)
        };
        let rows = Arc::new(self.store.members(mesh_id).await?);
        if self.hub.has_mesh(mesh_id) {
            let mut cache = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let entry = cache.entry(mesh_id.to_string()).or_default();
            if entry.generation == generation {
                entry.rows = Some((Instant::now(), rows.clone()));
            }
        }
        Ok(rows)
    }

    /// Drops this replica's cached member rows of the mesh.
    pub fn forget_members(&self, mesh_id: &str) {
        let mut cache = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.entry(mesh_id.to_string()).or_default();
        entry.rows = None;
        entry.generation += 1;
    }

    /// After a change to the mesh's members (enrolment, grants, ban): every replica drops
    /// its cached rows.
    pub async fn members_changed(&self, mesh_id: &str) {
        self.forget_members(mesh_id);
        if let Err(e) = self
            .publish(mesh_id, crate::cluster::bus::MeshEvent::MembersChanged)
            .await
        {
            tracing::warn!(error = %e, "member change not published; other replicas refresh within the cache TTL");
        }
    }

    /// Publishes on the bus, timing it (`broker_bus_publish_seconds`).
    pub async fn publish(
        &self,
        mesh_id: &str,
        event: crate::cluster::bus::MeshEvent,
    ) -> Result<(), crate::cluster::bus::BusError> {
        let started = Instant::now();
        let result = self.bus.publish(mesh_id, event).await;
        self.metrics
            .bus_publish_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Subscribes or unsubscribes the mesh so that it matches whether local sockets remain.
    pub async fn sync_subscription(&self, mesh_id: &str) {
        let mut subs = self.subscriptions.lock().await;
        let want = self.hub.has_mesh(mesh_id);
        if want && !subs.contains(mesh_id) {
            match self.bus.subscribe(mesh_id).await {
                Ok(()) => {
                    subs.insert(mesh_id.to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mesh subscription failed; retried when the bus recovers")
                }
            }
        } else if !want && subs.contains(mesh_id) {
            // Without a subscription this replica would miss invalidations.
            self.members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(mesh_id);
            match self.bus.unsubscribe(mesh_id).await {
                Ok(()) => {
                    subs.remove(mesh_id);
                }
                Err(e) => tracing::warn!(error = %e, "mesh unsubscription failed"),
            }
        }
    }

    /// After the bus reconnected: subscribe every local mesh again (idempotent).
    pub async fn resubscribe_all(&self) {
        let mut subs = self.subscriptions.lock().await;
        subs.clear();
        for mesh_id in self.hub.mesh_ids() {
            match self.bus.subscribe(&mesh_id).await {
                Ok(()) => {
                    subs.insert(mesh_id);
                }
                Err(e) => tracing::warn!(error = %e, "mesh resubscription failed"),
            }
        }
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
        self: &Arc<Self>,
        mesh_id: &str,
        event_type: &'static str,
        actor: Option<&str>,
        payload: serde_json::Value,
    ) {
        let node = self.clone();
        let (mesh_id, actor) = (mesh_id.to_string(), actor.map(str::to_string));
        self.tracker.spawn(async move {
            let at = crate::ids::now_ms();
            if let Err(e) = node
                .store
                .append_audit(&mesh_id, event_type, actor.as_deref(), payload, at)
                .await
            {
                node.metrics.audit_write_failures.inc();
                tracing::warn!(mesh_id = %mesh_id, event_type, error = %e, "audit write failed");
            }
        });
    }

    /// The key of a hook's rate limit and pending status: a hash of `pid:cwd`, so that
    /// what an unauthenticated caller sends never becomes a map key or a Redis key name as
    /// is (fixed length, whatever the `cwd`).
    pub fn hook_key(pid: i64, cwd: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(pid.to_string())
            .chain_update(b":")
            .chain_update(cwd)
            .finalize();
        hex::encode(&digest[..16])
    }

    /// Keeps a hook status for the process `pid` in `cwd`, about to connect. Expired entries
    /// are dropped first, and the map is bounded (`HOOK_PENDING_MAX`) so an unauthenticated
    /// caller cannot grow it at will: beyond the bound a new status is dropped and counted.
    /// Returns whether the status was kept.
    pub fn remember_pending_hook(&self, pid: i64, cwd: &str, status: Status) -> bool {
        let key = Self::hook_key(pid, cwd);
        let mut pending = self.hook_pending.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.config.hook_pending;
        pending.retain(|_, (_, at)| at.elapsed() < ttl);
        if pending.len() < self.config.hook_pending_max || pending.contains_key(&key) {
            pending.insert(key, (status, Instant::now()));
            true
        } else {
            self.metrics.hook_pending_dropped.inc();
            false
        }
    }

    /// Takes the pending hook status of a presence that just connected. Only a status
    /// reported for exactly this `pid` and `cwd` applies: a presence without a pid gets
    /// none.
    pub fn take_pending_hook(&self, pid: Option<i64>, cwd: &str) -> Option<Status> {
        let pid = pid?;
        let key = Self::hook_key(pid, cwd);
        let mut pending = self.hook_pending.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.config.hook_pending;
        pending
            .remove(&key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(s, _)| s)
    }
}
