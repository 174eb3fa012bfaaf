//! [`Presence`] on Redis: the records every replica sees, the replica heartbeats, and the
//! cluster-wide limits. Every multi-key change is one Lua script, so it is atomic.
//!
//! Keys (`P` is `REDIS_PREFIX`): `P:presence:{mesh}` hash id → record JSON;
//! `P:owner:{mesh}` hash id → `conn|grace` (grace 0 = live); `P:grace` zset of records in
//! grace by deadline; `P:nodep:{node}` set of a node's live records; `P:nodes` zset of
//! node heartbeats; `P:reap:{node}` the claim of the replica reaping a dead node;
//! `P:sig:{signature}` replay guard; `P:rate:{key}` token buckets; `P:live:{mesh}` set of
//! the mesh's live presence ids (the O(1) capacity count, kept by every script that changes
//! liveness); `P:skey:{mesh}:{session key}` the member that proved a session key (TTL);
//! `P:reaped:{node}` the tombstone a reaper leaves for the node it declared dead;
//! `P:proc:{process key}` the status hook's index, a zset of `mesh|presence` of the records
//! of one process by `connectedAt` (the 16 newest; TTL, refreshed by every update of a
//! live record);
//! `P:epoch:current` the data epoch (a random id each time Redis starts empty) and, after a
//! data loss, `P:epoch:lost` / `P:epoch:expect` / `P:epoch:synced`, the re-sync barrier.
//! `P:pidx:{mesh}` the lookup index of [`Presence::find`] (`lua/index.lua`).
//!
//! These are the names on one Redis. On Redis Cluster (a `ClusterConnection`) the same keys
//! carry hash tags (`redis_conn::Keys`): a mesh's keys `{P:m:{mesh}}:…` (and its grace
//! zset and per-node sets are per mesh there), the cluster-wide ones `{P}:…`, and what one
//! script does on one Redis runs as per-slot steps (`{P}:nodemeshes:{node}` and
//! `{P}:gracemeshes` are the hints that find a node's and a grace's meshes); see
//! `docs/redis-cluster.md`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use prometheus_client::metrics::counter::Counter;

use super::presence::{
    Attach, Heartbeat, Presence, PresenceError, PresencePatch, PresenceQuery, PresenceRecord,
    PresenceResult, sort_records,
};
use super::redis_conn::{Keys, RedisConn};
use crate::protocol::Status;

fn err(e: redis::RedisError) -> PresenceError {
    PresenceError(e.to_string())
}

/// Lua helpers of the per-mesh lookup index (`P:pidx:{mesh}`), prepended to the scripts
/// that change which records exist.
const INDEX_LUA: &str = include_str!("lua/index.lua");

fn indexed(script: &str) -> Script {
    Script::new(&format!("{INDEX_LUA}\n{script}"))
}

pub struct RedisPresence {
    conn: RedisConn,
    keys: Keys,
    attach: Script,
    update: Script,
    release: Script,
    expire: Script,
    remove: Script,
    reap: Script,
    take_token: Script,
    remember_key: Script,
    heartbeat: Script,
    /// Keeps a status hook's status pending (`P:hookp:*`), bounded cluster-wide.
    keep_hook: Script,
    /// The handshake's and a session-key DM's lookups from the per-mesh index.
    find: Script,
    /// Redis Cluster only: the per-slot steps of what one script does on one Redis.
    grace_hint: Script,
    grace_hint_after: Script,
    expire_mesh: Script,
    reap_mesh: Script,
    process_index: Script,
    /// Redis Cluster only: the meshes this replica's node ids already have in their
    /// `{P}:nodemeshes:{node}` hint (cleared by a data loss).
    hinted: Mutex<HashSet<(String, String)>>,
    /// Held across one heartbeat, script and bookkeeping both: two overlapping heartbeats
    /// (the housekeeping tick and a re-sync) processed out of order would read the second
    /// one's "not listed" against the epoch the first one just learnt, and call it a reap.
    beat: tokio::sync::Mutex<()>,
    /// What this replica knows of the backend's data epoch and the re-sync barrier.
    epoch: Mutex<EpochState>,
    /// The signatures this replica accepted within their replay window: a second guard
    /// that survives a Redis data loss, and what it re-seeds the new Redis with.
    replay: Mutex<ReplayCache>,
    /// How long a `P:proc:{key}` index (the status hook's) lives without a refresh; every
    /// attach and every update of a record of that process refreshes it.
    process_ttl_ms: u64,
}

/// [`RedisPresence::process_ttl_ms`] unless the broker sets it: four 30 s ping ticks.
const PROCESS_TTL_MS: u64 = 120_000;

/// How long a reaped replica's tombstone waits for it to come back and read it.
const TOMBSTONE_TTL_MS: u64 = 3_600_000;
/// Signatures re-seeded per pipeline after a data loss.
const RESEED_CHUNK: usize = 500;

/// The backend's data epoch as this replica saw it, and the cluster's re-sync barrier.
///
/// Every heartbeat creates `P:epoch:current` (a random id) if it is missing and reads it
/// back; another epoch than the one seen before means Redis lost its data. The replica
/// that notices writes `P:epoch:lost` (when) and adds to `P:epoch:expect` itself and every
/// replica it saw alive before the loss; each replica adds itself to `P:epoch:synced` once
/// it re-registered its presences. Until every expected replica is in `P:epoch:synced` (or
/// silent for `NODE_DEAD_AFTER_MS`; at most 4 × `NODE_DEAD_AFTER_MS` in all), every
/// replica's `list` fails as during an outage.
#[derive(Debug, Default)]
struct EpochState {
    /// `None` until the first heartbeat.
    known: Option<String>,
    /// The re-sync barrier is up: `list` fails.
    pending: bool,
    /// Replicas alive at the last heartbeat before a loss (who re-syncs must be waited for).
    alive: Vec<String>,
    /// The node ids this instance heartbeated for (one in production).
    beating: HashSet<String>,
    /// Redis Cluster: the run id of every primary at the last heartbeat that could read
    /// them all. A primary with a new run id restarted, maybe empty: a data loss too (the
    /// epoch key lives on one shard only).
    shards: Option<std::collections::BTreeMap<String, String>>,
}

/// Bounded FIFO of accepted signatures and the end of their replay window. The window is
/// the same for every hello (2 × `TIMESTAMP_SKEW_MS`), so the oldest entry ends first;
/// each lookup checks the entry's own end anyway.
#[derive(Debug, Default)]
struct ReplayCache {
    order: VecDeque<(Arc<str>, i64)>,
    until: HashMap<Arc<str>, i64>,
    max: usize,
    evicted: Counter,
}

impl ReplayCache {
    fn pop_front(&mut self) -> Option<i64> {
        let (sig, until) = self.order.pop_front()?;
        if self.until.get(&sig) == Some(&until) {
            self.until.remove(&sig);
        }
        Some(until)
    }

    fn prune(&mut self, now: i64) {
        while self.order.front().is_some_and(|(_, until)| *until <= now) {
            self.pop_front();
        }
    }

    fn contains(&mut self, sig: &str, now: i64) -> bool {
        self.prune(now);
        self.until.get(sig).is_some_and(|until| *until > now)
    }

    fn insert(&mut self, sig: &str, until: i64, now: i64) {
        self.prune(now);
        if self.max == 0 {
            return;
        }
        while self.order.len() >= self.max {
            if self.pop_front().is_some_and(|u| u > now) {
                self.evicted.inc();
            }
        }
        let sig: Arc<str> = Arc::from(sig);
        self.until.insert(sig.clone(), until);
        self.order.push_back((sig, until));
    }

    /// The signatures whose window is still open, with its end.
    fn open(&mut self, now: i64) -> Vec<(String, i64)> {
        self.prune(now);
        self.until
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(s, u)| (s.to_string(), *u))
            .collect()
    }
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// The node id of a connection id (`node/n`).
fn node_of(conn_id: &str) -> &str {
    conn_id.rsplit_once('/').map(|(n, _)| n).unwrap_or(conn_id)
}

/// A flat script reply `{record, owner, record, owner, ...}` as records.
fn pairs(flat: Vec<Option<String>>) -> Vec<PresenceRecord> {
    let mut it = flat.into_iter();
    let mut out = Vec::new();
    while let (Some(record), Some(owner)) = (it.next(), it.next()) {
        out.extend(decode(record, owner));
    }
    out
}

/// A record and its owner string (`conn|grace`) as stored.
fn decode(record: Option<String>, owner: Option<String>) -> Option<PresenceRecord> {
    let mut r: PresenceRecord = serde_json::from_str(&record?).ok()?;
    let owner = owner?;
    let (conn, grace) = owner.rsplit_once('|')?;
    r.conn_id = conn.to_string();
    r.grace_until = grace.parse::<i64>().ok().filter(|g| *g > 0);
    Some(r)
}

impl RedisPresence {
    /// With one Redis (a [`redis::aio::ConnectionManager`]) or Redis Cluster (a
    /// [`redis::cluster_async::ClusterConnection`]): the key layout follows the connection.
    pub fn new(conn: impl Into<RedisConn>, prefix: &str) -> Self {
        let conn = conn.into();
        let keys = Keys::new(prefix, conn.is_cluster());
        RedisPresence {
            conn,
            keys,
            attach: indexed(include_str!("lua/attach.lua")),
            update: Script::new(include_str!("lua/update.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            expire: indexed(include_str!("lua/expire.lua")),
            remove: indexed(include_str!("lua/remove.lua")),
            reap: indexed(include_str!("lua/reap.lua")),
            take_token: Script::new(include_str!("lua/take_token.lua")),
            remember_key: Script::new(include_str!("lua/remember_key.lua")),
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            keep_hook: Script::new(include_str!("lua/keep_pending_hook.lua")),
            find: indexed(include_str!("lua/find.lua")),
            grace_hint: Script::new(include_str!("lua/grace_hint.lua")),
            grace_hint_after: Script::new(include_str!("lua/grace_hint_after.lua")),
            expire_mesh: indexed(include_str!("lua/expire_mesh.lua")),
            reap_mesh: indexed(include_str!("lua/reap_mesh.lua")),
            process_index: Script::new(include_str!("lua/process_index.lua")),
            hinted: Mutex::new(HashSet::new()),
            beat: tokio::sync::Mutex::new(()),
            epoch: Mutex::new(EpochState::default()),
            replay: Mutex::new(ReplayCache {
                max: 100_000,
                ..ReplayCache::default()
            }),
            process_ttl_ms: PROCESS_TTL_MS,
        }
    }

    /// How long the status hook's index entry of a record lives without an update of the
    /// record: a few ping intervals, since every ping tick updates the record.
    pub fn with_process_ttl(mut self, ttl: Duration) -> Self {
        self.process_ttl_ms = (ttl.as_millis() as u64).max(1);
        self
    }

    /// The status hook's index entry of a record (`P:proc:{process key}`), if it has a pid.
    fn process_index(&self, record: &PresenceRecord) -> Option<String> {
        record.process_key().map(|k| self.keys.lone("proc", &k))
    }

    /// Bounds the local replay cache (`REPLAY_CACHE_MAX`) and counts the signatures it
    /// forgets early (`broker_replay_cache_evictions_total`).
    pub fn with_replay_cache(self, max: usize, evicted: Counter) -> Self {
        {
            let mut cache = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            cache.max = max;
            cache.evicted = evicted;
        }
        self
    }

    fn hinted_set(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.hinted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn epoch_state(&self) -> std::sync::MutexGuard<'_, EpochState> {
        self.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replay_cache(&self) -> std::sync::MutexGuard<'_, ReplayCache> {
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record of the mesh; with `gated`, fails while the re-sync barrier is up, and
    /// puts it up if the epoch changed under this replica (a restart noticed by a read
    /// before any heartbeat).
    async fn list_records(
        &self,
        mesh_id: &str,
        gated: bool,
    ) -> PresenceResult<Vec<PresenceRecord>> {
        let mut c = self.conn.clone();
        // Compared with the epoch known *before* the read: a heartbeat that learns the
        // first epoch while this read is in flight is not a change of epoch.
        let known_before = self.epoch_state().known.clone();
        let (mut records, mut owners, epoch): (
            HashMap<String, String>,
            HashMap<String, String>,
            Option<String>,
        ) = if self.cluster() {
            // The epoch is another slot: two requests, at the same time.
            let mut e = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.hgetall(self.mk("presence", mesh_id))
                .hgetall(self.mk("owner", mesh_id));
            let (mesh, epoch) = tokio::join!(
                pipe.query_async::<(HashMap<String, String>, HashMap<String, String>)>(&mut c),
                e.get::<_, Option<String>>(self.gk("epoch", "current"))
            );
            let (records, owners) = mesh.map_err(err)?;
            (records, owners, epoch.map_err(err)?)
        } else {
            redis::pipe()
                .hgetall(self.mk("presence", mesh_id))
                .hgetall(self.mk("owner", mesh_id))
                .get(self.gk("epoch", "current"))
                .query_async(&mut c)
                .await
                .map_err(err)?
        };
        if gated {
            self.gate(known_before, epoch)?;
        }
        let ids: Vec<String> = records.keys().cloned().collect();
        let mut out: Vec<PresenceRecord> = ids
            .iter()
            .filter_map(|id| decode(records.remove(id), owners.remove(id)))
            .collect();
        out.sort_by(|a, b| {
            a.connected_at
                .cmp(&b.connected_at)
                .then(a.presence_id.cmp(&b.presence_id))
        });
        Ok(out)
    }

    /// Fails while the re-sync barrier is up; puts it up when `epoch` (read just now) is
    /// not the one known before the read.
    fn gate(&self, known_before: Option<String>, epoch: Option<String>) -> PresenceResult<()> {
        let mut st = self.epoch_state();
        if known_before.is_some() && known_before != epoch {
            st.pending = true;
        }
        if st.pending {
            return Err(PresenceError(
                "re-syncing after a Redis data loss; retry shortly".into(),
            ));
        }
        Ok(())
    }

    /// After a data loss: puts up the barrier in the new Redis and writes back the
    /// signatures this replica accepted whose replay window is still open.
    async fn on_data_loss(
        &self,
        node_id: &str,
        now_ms: i64,
        alive: Vec<String>,
    ) -> PresenceResult<()> {
        let mut c = self.conn.clone();
        let mut expect: Vec<String> = alive;
        expect.push(node_id.to_string());
        redis::pipe()
            .cmd("SET")
            .arg(self.gk("epoch", "lost"))
            .arg(now_ms)
            .arg("NX")
            .ignore()
            .sadd(self.gk("epoch", "expect"), expect)
            .ignore()
            .srem(self.gk("epoch", "synced"), node_id)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(err)?;
        self.hinted_set().clear();
        let open = self.replay_cache().open(now_ms);
        for chunk in open.chunks(RESEED_CHUNK) {
            if self.cluster() {
                // Every signature is a slot of its own: one request each (rare: a data loss).
                for (sig, until) in chunk {
                    redis::cmd("SET")
                        .arg(self.keys.lone("sig", sig))
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg((until - now_ms).max(1))
                        .query_async::<Option<String>>(&mut c)
                        .await
                        .map_err(err)?;
                }
                continue;
            }
            let mut pipe = redis::pipe();
            for (sig, until) in chunk {
                pipe.cmd("SET")
                    .arg(self.keys.lone("sig", sig))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg((until - now_ms).max(1))
                    .ignore();
            }
            pipe.query_async::<()>(&mut c).await.map_err(err)?;
        }
        tracing::warn!(
            reseeded = open.len(),
            "Redis lost its data: replay guard re-seeded, presences re-sync"
        );
        Ok(())
    }

    /// The attach script; `cap == 0` never refuses.
    async fn attach_capped(&self, record: PresenceRecord, cap: usize) -> PresenceResult<Attach> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(&record).map_err(|e| PresenceError(e.to_string()))?;
        let mesh_id = &record.mesh_id;
        let node = node_of(&record.conn_id);
        let entry = format!("{mesh_id}|{}", record.presence_id);
        if self.cluster() {
            // Before the record exists: the reaper finds the node's sets of this mesh.
            self.hint_node_mesh(node, mesh_id).await?;
        }
        let mut invocation = self.attach.key(self.mk("presence", mesh_id));
        invocation
            .key(self.mk("owner", mesh_id))
            .key(self.grace_key(mesh_id))
            .key(self.nodep_key(mesh_id, node))
            .key(self.mk("live", mesh_id))
            .key(self.mk("pidx", mesh_id))
            .arg(&record.presence_id)
            .arg(json)
            .arg(&record.conn_id)
            .arg(&entry)
            .arg(self.nodep_prefix(mesh_id))
            .arg(cap);
        let index = self.process_index(&record);
        if let Some(index) = index.as_ref().filter(|_| !self.cluster()) {
            invocation
                .key(index)
                .arg(self.process_ttl_ms)
                .arg(record.connected_at);
        }
        let out: Option<(Option<String>, Option<String>)> =
            invocation.invoke_async(&mut c).await.map_err(err)?;
        if let (Some(index), true, Some(_)) = (index, self.cluster(), out.as_ref()) {
            self.index_process(&index, &entry, record.connected_at)
                .await?;
        }
        Ok(match out {
            Some((old, owner)) => Attach::Done(decode(old, owner)),
            None => Attach::Full,
        })
    }

    fn cluster(&self) -> bool {
        self.keys.cluster()
    }

    /// Redis Cluster: records that `node` has records in `mesh_id`
    /// (`{P}:nodemeshes:{node}`), once per mesh and data epoch.
    async fn hint_node_mesh(&self, node: &str, mesh_id: &str) -> PresenceResult<()> {
        let pair = (node.to_string(), mesh_id.to_string());
        if self.hinted_set().contains(&pair) {
            return Ok(());
        }
        let mut c = self.conn.clone();
        c.sadd::<_, _, ()>(self.gk("nodemeshes", node), mesh_id)
            .await
            .map_err(err)?;
        let mut hinted = self.hinted_set();
        if hinted.len() >= 100_000 {
            hinted.clear();
        }
        hinted.insert(pair);
        Ok(())
    }

    /// Redis Cluster: ends a dead node's live records, one script per mesh it had records
    /// in (its `{P}:nodemeshes:{node}` hint); each record goes to exactly one caller.
    async fn reap_node_meshes(&self, node: &str) -> PresenceResult<Vec<PresenceRecord>> {
        let mut c = self.conn.clone();
        let meshes: Vec<String> = c.smembers(self.gk("nodemeshes", node)).await.map_err(err)?;
        let mut reaped = Vec::new();
        for mesh_id in meshes {
            let out: Vec<Option<String>> = self
                .reap_mesh
                .key(self.mk("presence", &mesh_id))
                .key(self.mk("owner", &mesh_id))
                .key(self.mk("live", &mesh_id))
                .key(self.mk("pidx", &mesh_id))
                .key(self.nodep_key(&mesh_id, node))
                .arg(node)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            reaped.extend(pairs(out));
        }
        Ok(reaped)
    }

    /// Redis Cluster: the backstop of grace timers, mesh by mesh through the
    /// `{P}:gracemeshes` hint (meshes by their earliest grace deadline).
    async fn expire_due_meshes(&self, now_ms: i64) -> PresenceResult<Vec<PresenceRecord>> {
        let mut c = self.conn.clone();
        let hints = self.gk("gracemeshes", "");
        let meshes: Vec<String> = c
            .zrangebyscore_limit(&hints, "-inf", now_ms, 0, 64)
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        for mesh_id in meshes {
            let mut reply: Vec<Option<String>> = self
                .expire_mesh
                .key(self.mk("presence", &mesh_id))
                .key(self.mk("owner", &mesh_id))
                .key(self.grace_key(&mesh_id))
                .key(self.mk("live", &mesh_id))
                .key(self.mk("pidx", &mesh_id))
                .arg(now_ms)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            let next = if reply.is_empty() {
                None
            } else {
                reply.remove(0)
            };
            out.extend(pairs(reply));
            self.grace_hint_after
                .key(&hints)
                .arg(&mesh_id)
                .arg(next.unwrap_or_default())
                .arg(now_ms)
                .invoke_async::<i64>(&mut c)
                .await
                .map_err(err)?;
        }
        Ok(out)
    }

    /// Redis Cluster: the status hook's index entry, a step of its own (another slot).
    async fn index_process(
        &self,
        index: &str,
        entry: &str,
        connected_at: i64,
    ) -> PresenceResult<()> {
        let mut c = self.conn.clone();
        self.process_index
            .key(index)
            .arg(entry)
            .arg(self.process_ttl_ms)
            .arg(connected_at)
            .invoke_async::<i64>(&mut c)
            .await
            .map(drop)
            .map_err(err)
    }

    /// A key of one mesh (`presence`, `owner`, `live`, `pidx`).
    fn mk(&self, kind: &str, mesh_id: &str) -> String {
        self.keys.mesh(kind, mesh_id, "")
    }

    /// A cluster-wide key (`nodes`, `epoch:*`, `reap:*`, `reaped:*`).
    fn gk(&self, kind: &str, id: &str) -> String {
        self.keys.global(kind, id)
    }

    /// The records in grace by deadline: one zset with one Redis, one per mesh in a
    /// cluster (found through the `{P}:gracemeshes` hint).
    fn grace_key(&self, mesh_id: &str) -> String {
        if self.cluster() {
            self.mk("grace", mesh_id)
        } else {
            self.gk("grace", "")
        }
    }

    fn nodes_key(&self) -> String {
        self.gk("nodes", "")
    }

    /// A node's live records (`mesh|presence`): one set per node with one Redis, one per
    /// node and mesh in a cluster (the meshes in the `{P}:nodemeshes:{node}` hint).
    fn nodep_key(&self, mesh_id: &str, node: &str) -> String {
        if self.cluster() {
            self.keys.mesh("nodep", mesh_id, node)
        } else {
            self.gk("nodep", node)
        }
    }

    fn nodep_prefix(&self, mesh_id: &str) -> String {
        if self.cluster() {
            format!("{}:", self.keys.mesh("nodep", mesh_id, ""))
        } else {
            format!("{}:nodep:", self.keys.prefix())
        }
    }

    fn skey(&self, mesh_id: &str, session_key: &str) -> String {
        self.keys.mesh("skey", mesh_id, session_key)
    }

    async fn get(
        &self,
        mesh_id: &str,
        presence_id: &str,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let (record, owner): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.mk("presence", mesh_id), presence_id)
            .hget(self.mk("owner", mesh_id), presence_id)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(decode(record, owner))
    }

    async fn expire_one(
        &self,
        mesh_id: &str,
        presence_id: &str,
        now_ms: i64,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let out: Option<(Option<String>, Option<String>)> = self
            .expire
            .key(self.mk("presence", mesh_id))
            .key(self.mk("owner", mesh_id))
            .key(self.grace_key(mesh_id))
            .key(self.mk("live", mesh_id))
            .key(self.mk("pidx", mesh_id))
            .arg(presence_id)
            .arg(now_ms)
            .arg(format!("{mesh_id}|{presence_id}"))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(out.and_then(|(r, o)| decode(r, o)))
    }
}

#[async_trait]
impl Presence for RedisPresence {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn list(&self, mesh_id: &str) -> PresenceResult<Vec<PresenceRecord>> {
        self.list_records(mesh_id, true).await
    }

    async fn find(
        &self,
        mesh_id: &str,
        q: PresenceQuery<'_>,
    ) -> PresenceResult<Vec<PresenceRecord>> {
        let mut ranges: Vec<Vec<u8>> = Vec::new();
        let criteria = [
            ("m", q.member_id),
            ("k", q.routing_key),
            ("s", q.session_key),
            ("i", q.session_id),
        ];
        for (tag, value) in criteria {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                ranges.push(format!("[{tag}|{v}|").into_bytes());
                let mut max = format!("({tag}|{v}|").into_bytes();
                max.push(0xff);
                ranges.push(max);
            }
        }
        let known_before = self.epoch_state().known.clone();
        let mut c = self.conn.clone();
        let mut e = self.conn.clone();
        let mut invocation = self.find.key(self.mk("presence", mesh_id));
        invocation
            .key(self.mk("owner", mesh_id))
            .key(self.mk("pidx", mesh_id));
        for r in &ranges {
            invocation.arg(r.as_slice());
        }
        // The epoch read beside it gates it like `list` (another slot in a cluster).
        let (found, epoch) = tokio::join!(
            invocation.invoke_async::<Vec<Option<String>>>(&mut c),
            e.get::<_, Option<String>>(self.gk("epoch", "current"))
        );
        let found = found.map_err(err)?;
        self.gate(known_before, epoch.map_err(err)?)?;
        let mut it = found.into_iter();
        let mut out = Vec::new();
        while let (Some(_id), Some(record), Some(owner)) = (it.next(), it.next(), it.next()) {
            out.extend(decode(record, owner).filter(|r| q.matches(r)));
        }
        sort_records(&mut out);
        Ok(out)
    }

    async fn attach(&self, record: PresenceRecord) -> PresenceResult<Option<PresenceRecord>> {
        // Without a cap the script always attaches.
        Ok(match self.attach_capped(record, 0).await? {
            Attach::Done(old) => old,
            Attach::Full => None,
        })
    }

    async fn attach_within(&self, record: PresenceRecord, cap: usize) -> PresenceResult<Attach> {
        self.attach_capped(record, cap).await
    }

    async fn update(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        patch: PresencePatch,
    ) -> PresenceResult<bool> {
        let Some(mut record) = self.get(mesh_id, presence_id).await? else {
            return Ok(false);
        };
        if record.conn_id != conn_id || !record.is_live() {
            return Ok(false);
        }
        patch.apply(&mut record);
        let json = serde_json::to_string(&record).map_err(|e| PresenceError(e.to_string()))?;
        let mut c = self.conn.clone();
        let mut invocation = self.update.key(self.mk("presence", mesh_id));
        invocation
            .key(self.mk("owner", mesh_id))
            .arg(presence_id)
            .arg(conn_id)
            .arg(json);
        let entry = format!("{mesh_id}|{presence_id}");
        let index = self.process_index(&record);
        if let Some(index) = index.as_ref().filter(|_| !self.cluster()) {
            invocation
                .key(index)
                .arg(&entry)
                .arg(self.process_ttl_ms)
                .arg(record.connected_at);
        }
        let done: i64 = invocation.invoke_async(&mut c).await.map_err(err)?;
        if let (Some(index), true, 1) = (index, self.cluster(), done) {
            self.index_process(&index, &entry, record.connected_at)
                .await?;
        }
        Ok(done == 1)
    }

    async fn release(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        grace_until: i64,
    ) -> PresenceResult<bool> {
        let mut c = self.conn.clone();
        if self.cluster() {
            // Before the record goes into grace: expire_due finds the mesh by this hint.
            self.grace_hint
                .key(self.gk("gracemeshes", ""))
                .arg(mesh_id)
                .arg(grace_until)
                .arg(crate::ids::now_ms())
                .invoke_async::<i64>(&mut c)
                .await
                .map_err(err)?;
        }
        let done: i64 = self
            .release
            .key(self.mk("owner", mesh_id))
            .key(self.grace_key(mesh_id))
            .key(self.nodep_key(mesh_id, node_of(conn_id)))
            .key(self.mk("live", mesh_id))
            .arg(presence_id)
            .arg(conn_id)
            .arg(grace_until)
            .arg(format!("{mesh_id}|{presence_id}"))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(done == 1)
    }

    async fn expire(
        &self,
        mesh_id: &str,
        presence_id: &str,
        now_ms: i64,
    ) -> PresenceResult<Option<PresenceRecord>> {
        self.expire_one(mesh_id, presence_id, now_ms).await
    }

    async fn remove(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let out: Option<(Option<String>, Option<String>)> = self
            .remove
            .key(self.mk("presence", mesh_id))
            .key(self.mk("owner", mesh_id))
            .key(self.grace_key(mesh_id))
            .key(self.nodep_key(mesh_id, node_of(conn_id)))
            .key(self.mk("live", mesh_id))
            .key(self.mk("pidx", mesh_id))
            .arg(presence_id)
            .arg(conn_id)
            .arg(format!("{mesh_id}|{presence_id}"))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(out.and_then(|(r, o)| decode(r, o)))
    }

    async fn remember_signature(&self, signature: &str, ttl: Duration) -> PresenceResult<bool> {
        let now = crate::ids::now_ms();
        // Redis is the cluster-wide guard; this replica's own memory also holds when Redis
        // lost its data.
        if self.replay_cache().contains(signature, now) {
            return Ok(false);
        }
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.lone("sig", signature))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        if set.is_some() {
            let until = now + ttl.as_millis() as i64;
            self.replay_cache().insert(signature, until, now);
        }
        Ok(set.is_some())
    }

    async fn take_send_token(&self, key: &str, burst: u32, per_min: u32) -> PresenceResult<bool> {
        if burst == 0 || per_min == 0 {
            return Ok(true);
        }
        let mut c = self.conn.clone();
        let ok: i64 = self
            .take_token
            .key(self.keys.lone("rate", key))
            .arg(burst)
            .arg(per_min)
            .arg(crate::ids::now_ms())
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(ok == 1)
    }

    async fn healthy(&self) -> bool {
        // Reading the epoch proves Redis answers and notices a restart at once: readiness
        // must not say 200 between a data loss and the next heartbeat.
        let mut c = self.conn.clone();
        let known_before = self.epoch_state().known.clone();
        let Ok(epoch) = c
            .get::<_, Option<String>>(self.gk("epoch", "current"))
            .await
        else {
            return false;
        };
        let mut st = self.epoch_state();
        if known_before.is_some() && known_before != epoch {
            st.pending = true;
            return false;
        }
        true
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        now_ms: i64,
        dead_after_ms: i64,
    ) -> PresenceResult<Heartbeat> {
        let _one_at_a_time = self.beat.lock().await;
        let mut c = self.conn.clone();
        type Reply = (
            String,
            i64,
            i64,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            String,
        );
        let (epoch, tombstone, listed, alive, expect, synced, lost): Reply = self
            .heartbeat
            .key(self.nodes_key())
            .key(self.gk("epoch", "current"))
            .key(self.gk("reaped", node_id))
            .key(self.gk("epoch", "expect"))
            .key(self.gk("epoch", "synced"))
            .key(self.gk("epoch", "lost"))
            .arg(node_id)
            .arg(now_ms)
            .arg(crate::ids::random_id(16))
            .arg(now_ms - dead_after_ms)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        // Never fails the heartbeat: a shard down must not make this replica look dead.
        let shards = self.conn.shard_runs().await;
        let (data_lost, reaped, alive_before) = {
            let mut st = self.epoch_state();
            let first = st.known.is_none();
            let shard_restarted = match (&shards, &st.shards) {
                (Some(now), Some(before)) => now
                    .iter()
                    .any(|(addr, run)| before.get(addr).is_some_and(|b| b != run)),
                _ => false,
            };
            if shard_restarted {
                tracing::warn!("a Redis Cluster primary restarted: treated as a data loss");
            }
            let data_lost =
                (!first && st.known.as_deref() != Some(epoch.as_str())) || shard_restarted;
            let first_beat = st.beating.insert(node_id.to_string());
            // Missing from the nodes while the epoch is unchanged: a survivor removed us.
            let reaped = tombstone == 1 || (!first_beat && !data_lost && listed == 0);
            st.known = Some(epoch);
            let alive_before = std::mem::replace(&mut st.alive, alive.clone());
            if data_lost {
                st.pending = true;
            } else if let Ok(lost_at) = lost.parse::<i64>() {
                let alive: HashSet<&String> = alive.iter().collect();
                let synced: HashSet<&String> = synced.iter().collect();
                let since = now_ms - lost_at;
                let waited_for = |n: &String| {
                    !synced.contains(n) && (alive.contains(n) || since <= dead_after_ms)
                };
                // Bounded: a replica that heartbeats but never finishes its re-sync does
                // not keep the cluster unusable.
                st.pending = since <= 4 * dead_after_ms && expect.iter().any(waited_for);
            } else {
                st.pending = false;
            }
            (data_lost, reaped, alive_before)
        };
        if data_lost {
            self.on_data_loss(node_id, now_ms, alive_before).await?;
        }
        // Only once the loss is handled: a failed hand-over is noticed again next time.
        if shards.is_some() {
            self.epoch_state().shards = shards;
        }
        Ok(Heartbeat { reaped, data_lost })
    }

    fn resync_pending(&self) -> bool {
        self.epoch_state().pending
    }

    async fn list_for_resync(&self, mesh_id: &str) -> PresenceResult<Vec<PresenceRecord>> {
        self.list_records(mesh_id, false).await
    }

    async fn resynced(&self, node_id: &str) -> PresenceResult<()> {
        let mut c = self.conn.clone();
        c.sadd::<_, _, ()>(self.gk("epoch", "synced"), node_id)
            .await
            .map_err(err)
    }

    async fn leave(&self, node_id: &str) -> PresenceResult<()> {
        let mut c = self.conn.clone();
        if self.cluster() {
            // Its records are all in grace: no reaper will read its mesh hint.
            return redis::pipe()
                .zrem(self.nodes_key(), node_id)
                .ignore()
                .del(self.gk("nodemeshes", node_id))
                .ignore()
                .query_async::<()>(&mut c)
                .await
                .map_err(err);
        }
        c.zrem::<_, _, ()>(self.nodes_key(), node_id)
            .await
            .map_err(err)
    }

    async fn reap_dead_nodes(&self, stale_before: i64) -> PresenceResult<Vec<PresenceRecord>> {
        let mut c = self.conn.clone();
        let dead: Vec<String> = c
            .zrangebyscore(self.nodes_key(), "-inf", stale_before)
            .await
            .map_err(err)?;
        let mut reaped = Vec::new();
        for node in dead {
            // One replica reaps a dead node; the claim expires in case that replica dies too.
            let claimed: Option<String> = redis::cmd("SET")
                .arg(self.gk("reap", &node))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            if claimed.is_none() {
                continue;
            }
            if self.cluster() {
                reaped.extend(self.reap_node_meshes(&node).await?);
            }
            let members: Vec<String> = if self.cluster() {
                Vec::new()
            } else {
                c.smembers(self.gk("nodep", &node)).await.map_err(err)?
            };
            for m in members {
                let Some((mesh_id, presence_id)) = m.split_once('|') else {
                    continue;
                };
                let out: Option<(Option<String>, Option<String>)> = self
                    .reap
                    .key(self.mk("presence", mesh_id))
                    .key(self.mk("owner", mesh_id))
                    .key(self.mk("live", mesh_id))
                    .key(self.mk("pidx", mesh_id))
                    .arg(presence_id)
                    .arg(&node)
                    .invoke_async(&mut c)
                    .await
                    .map_err(err)?;
                reaped.extend(out.and_then(|(r, o)| decode(r, o)));
            }
            // The tombstone tells the node, should it come back (a pause, a partition), that
            // it was declared dead: it heals instead of serving sockets nobody can reach.
            let node_set = if self.cluster() {
                self.gk("nodemeshes", &node)
            } else {
                self.gk("nodep", &node)
            };
            redis::pipe()
                .del(node_set)
                .zrem(self.nodes_key(), &node)
                .cmd("SET")
                .arg(self.gk("reaped", &node))
                .arg(1)
                .arg("PX")
                .arg(TOMBSTONE_TTL_MS)
                .ignore()
                .query_async::<()>(&mut c)
                .await
                .map_err(err)?;
        }
        Ok(reaped)
    }

    async fn expire_due(&self, now_ms: i64) -> PresenceResult<Vec<PresenceRecord>> {
        if self.cluster() {
            return self.expire_due_meshes(now_ms).await;
        }
        let mut c = self.conn.clone();
        let due: Vec<String> = c
            .zrangebyscore_limit(self.gk("grace", ""), "-inf", now_ms, 0, 256)
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        for m in due {
            let Some((mesh_id, presence_id)) = m.split_once('|') else {
                c.zrem::<_, _, ()>(self.gk("grace", ""), &m)
                    .await
                    .map_err(err)?;
                continue;
            };
            out.extend(self.expire_one(mesh_id, presence_id, now_ms).await?);
        }
        Ok(out)
    }

    async fn live_count(&self, mesh_id: &str) -> PresenceResult<usize> {
        let mut c = self.conn.clone();
        c.scard(self.mk("live", mesh_id)).await.map_err(err)
    }

    async fn remember_session_key(
        &self,
        mesh_id: &str,
        session_key: &str,
        member_id: &str,
        ttl: Duration,
    ) -> PresenceResult<()> {
        let mut c = self.conn.clone();
        self.remember_key
            .key(self.skey(mesh_id, session_key))
            .arg(member_id)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async::<i64>(&mut c)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn session_key_prover(
        &self,
        mesh_id: &str,
        session_key: &str,
    ) -> PresenceResult<Option<String>> {
        let mut c = self.conn.clone();
        c.get(self.skey(mesh_id, session_key)).await.map_err(err)
    }

    async fn find_process(&self, pid: i64, cwd: &str) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let index = self
            .keys
            .lone("proc", &super::presence::process_key(pid, cwd));
        // Newest connection first; entries whose record is gone are dropped on the way.
        let entries: Vec<String> = c.zrevrange(&index, 0, 15).await.map_err(err)?;
        let mut gone = Vec::new();
        let mut found = None;
        for entry in &entries {
            let Some((mesh_id, presence_id)) = entry.rsplit_once('|') else {
                gone.push(entry.clone());
                continue;
            };
            match self.get(mesh_id, presence_id).await? {
                Some(r) if r.pid == Some(pid) && r.cwd == cwd => {
                    if r.is_live() {
                        found = Some(r);
                        break;
                    }
                }
                _ => gone.push(entry.clone()),
            }
        }
        if !gone.is_empty() {
            c.zrem::<_, _, ()>(&index, gone).await.map_err(err)?;
        }
        Ok(found)
    }

    async fn keep_pending_hook(
        &self,
        key: &str,
        status: Status,
        ttl: Duration,
        max: usize,
    ) -> PresenceResult<Option<bool>> {
        let mut c = self.conn.clone();
        let kept: i64 = self
            .keep_hook
            .key(self.keys.grouped("hookp", "index"))
            .key(self.keys.grouped("hookp", key))
            .arg(key)
            .arg(status_text(status))
            .arg(crate::ids::now_ms())
            .arg((ttl.as_millis() as u64).max(1))
            .arg(max)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(Some(kept == 1))
    }

    async fn take_pending_hook(&self, key: &str) -> PresenceResult<Option<Status>> {
        let mut c = self.conn.clone();
        // One transaction: of two handshakes of the same process, only one gets it.
        let (text,): (Option<String>,) = redis::pipe()
            .atomic()
            .cmd("GETDEL")
            .arg(self.keys.grouped("hookp", key))
            .zrem(self.keys.grouped("hookp", "index"), key)
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(text.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok()))
    }
}

/// A status as the pending-hook entry stores it: its wire name (`idle`, `working`).
fn status_text(status: Status) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "idle".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_cache_remembers_each_signature_for_its_own_window_and_stays_bounded() {
        let evicted = Counter::default();
        let mut cache = ReplayCache {
            max: 2,
            evicted: evicted.clone(),
            ..ReplayCache::default()
        };
        cache.insert("long", 10_000, 0);
        cache.insert("short", 100, 0);
        assert!(cache.contains("short", 99));
        // Behind an entry that lasts longer, a short one still ends on time.
        assert!(!cache.contains("short", 100));
        assert!(cache.contains("long", 100));
        assert_eq!(cache.open(100), vec![("long".to_string(), 10_000)]);
        // Full: the oldest entry whose window is still open is dropped, and counted.
        cache.insert("a", 10_000, 200);
        cache.insert("b", 10_000, 300);
        assert!(!cache.contains("long", 300));
        assert!(cache.contains("a", 300) && cache.contains("b", 300));
        assert!(cache.order.len() <= 2 && cache.until.len() <= 2);
        assert!(evicted.get() >= 1);
        assert!(!cache.contains("a", 10_000));
    }
}
