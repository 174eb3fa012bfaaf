//! Who is connected where, and the limits that must hold across every replica.
//!
//! # Semantics every backend gives
//!
//! - A [`PresenceRecord`] is **live** (`grace_until == None`, owned by one connection id) or
//!   in **grace** (its socket closed; it waits `LEASE_GRACE_MS` for a reattach).
//! - Ownership is compare-and-set: [`Presence::release`] and [`Presence::update`] only act
//!   when the caller's connection still owns the record, so a socket that was replaced by a
//!   reattach (on any replica) can never push the presence back into grace.
//! - **TTL:** a record in grace whose deadline passed is removed by whoever calls
//!   [`Presence::expire`] first (exactly one caller gets it back, so `peer_left` is sent once).
//! - **Limits:** [`Presence::remember_signature`] and [`Presence::take_send_token`] are
//!   atomic in the backend, so the replay guard and the send rate limit hold cluster-wide.
//!   So is the cap of [`Presence::attach_within`]: the count and the attach are one step.
//! - Records are ephemeral: nothing here survives a restart of the backend, and nothing
//!   here is durable state.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::protocol::{Group, Status};

/// `control-plane` for `hello` connections, `session` for `session_hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerRole {
    ControlPlane,
    Session,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::ControlPlane => "control-plane",
            PeerRole::Session => "session",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PresenceRecord {
    pub presence_id: String,
    pub mesh_id: String,
    pub member_id: String,
    pub member_pubkey: String,
    pub session_pubkey: Option<String>,
    pub display_name: String,
    pub session_id: String,
    pub peer_role: PeerRole,
    /// The replica holding the socket.
    pub node_id: String,
    /// The connection that owns the record (unique across the cluster).
    pub conn_id: String,
    /// `None` while the socket is open; the grace deadline (ms epoch) after it closed.
    pub grace_until: Option<i64>,
    pub status: Status,
    pub summary: Option<String>,
    pub visible: bool,
    pub groups: Vec<Group>,
    pub profile: Map<String, Value>,
    pub stats: Option<Value>,
    pub pid: Option<i64>,
    pub cwd: String,
    pub hostname: Option<String>,
    pub peer_type: Option<String>,
    pub channel: Option<String>,
    pub model: Option<String>,
    pub connected_at: i64,
    pub last_pong_at: i64,
}

/// The fixed-length key of a process (`pid` in `cwd`), for the status hook: a hash, so
/// that what an unauthenticated caller sends never becomes a map key or a Redis key name
/// as is.
pub fn process_key(pid: i64, cwd: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(pid.to_string())
        .chain_update(b":")
        .chain_update(cwd)
        .finalize();
    hex::encode(&digest[..16])
}

impl PresenceRecord {
    /// The [`process_key`] of the process this presence announced, if it gave a `pid`.
    pub fn process_key(&self) -> Option<String> {
        self.pid.map(|pid| process_key(pid, &self.cwd))
    }

    /// The key others address this presence by: its session key, else its member key.
    pub fn routing_key(&self) -> &str {
        self.session_pubkey
            .as_deref()
            .unwrap_or(&self.member_pubkey)
    }

    pub fn is_live(&self) -> bool {
        self.grace_until.is_none()
    }
}

/// What [`Presence::find`] looks up in one mesh: the records matching **any** of the
/// given criteria. `None` and empty strings never match.
#[derive(Debug, Clone, Copy, Default)]
pub struct PresenceQuery<'a> {
    /// `record.member_id == member_id`.
    pub member_id: Option<&'a str>,
    /// `record.routing_key() == routing_key` (its session key, else its member key).
    pub routing_key: Option<&'a str>,
    /// `record.session_pubkey == Some(session_key)`.
    pub session_key: Option<&'a str>,
    /// `record.session_id == session_id`.
    pub session_id: Option<&'a str>,
}

fn given(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

impl PresenceQuery<'_> {
    /// Whether `r` matches one of the criteria.
    pub fn matches(&self, r: &PresenceRecord) -> bool {
        given(self.member_id).is_some_and(|m| r.member_id == m)
            || given(self.routing_key).is_some_and(|k| r.routing_key() == k)
            || given(self.session_key).is_some_and(|k| r.session_pubkey.as_deref() == Some(k))
            || given(self.session_id).is_some_and(|s| r.session_id == s)
    }

    /// No criterion given: nothing can match.
    pub fn is_empty(&self) -> bool {
        given(self.member_id).is_none()
            && given(self.routing_key).is_none()
            && given(self.session_key).is_none()
            && given(self.session_id).is_none()
    }
}

/// The order [`Presence::list`] and [`Presence::find`] return records in.
pub fn sort_records(records: &mut [PresenceRecord]) {
    records.sort_by(|a, b| {
        a.connected_at
            .cmp(&b.connected_at)
            .then(a.presence_id.cmp(&b.presence_id))
    });
}

/// One change to a live record.
#[derive(Debug, Clone)]
pub enum PresencePatch {
    Status(Status),
    Summary(String),
    Visible(bool),
    Profile(Map<String, Value>),
    Stats(Value),
    Groups(Vec<Group>),
    LastPong(i64),
}

impl PresencePatch {
    pub fn apply(self, r: &mut PresenceRecord) {
        match self {
            PresencePatch::Status(s) => r.status = s,
            PresencePatch::Summary(s) => r.summary = Some(s),
            PresencePatch::Visible(v) => r.visible = v,
            PresencePatch::Profile(p) => r.profile.extend(p),
            PresencePatch::Stats(s) => r.stats = Some(s),
            PresencePatch::Groups(g) => r.groups = g,
            PresencePatch::LastPong(t) => r.last_pong_at = t,
        }
    }
}

/// The outcome of [`Presence::attach_within`].
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived return value; `Done` is the usual case, boxing it would allocate on every attach"
)]
pub enum Attach {
    /// Attached; the record it replaced, if any.
    Done(Option<PresenceRecord>),
    /// The mesh's live set was full: nothing was written.
    Full,
}

/// What a heartbeat found out about this replica's standing in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// A survivor declared this replica dead and reaped its presences since the last
    /// heartbeat (its tombstone was there, or its heartbeat entry had been removed).
    pub reaped: bool,
    /// The backend lost its data (a Redis restart): its epoch changed. Presences must be
    /// re-registered; until the whole cluster has, [`Presence::resync_pending`] holds.
    pub data_lost: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

pub type PresenceResult<T> = Result<T, PresenceError>;

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Every record of the mesh, live and in grace.
    async fn list(&self, mesh_id: &str) -> PresenceResult<Vec<PresenceRecord>>;
    /// The records (live and in grace) of the mesh matching `q`, sorted like
    /// [`Presence::list`]; fails like it (outage, re-sync barrier). Backends answer it
    /// from per-mesh indexes, without reading the whole mesh (the handshake's and a
    /// session-key DM's lookups); this default lists and filters.
    async fn find(
        &self,
        mesh_id: &str,
        q: PresenceQuery<'_>,
    ) -> PresenceResult<Vec<PresenceRecord>> {
        let mut records = self.list(mesh_id).await?;
        records.retain(|r| q.matches(r));
        Ok(records)
    }
    /// Inserts the record, or takes over an existing one with the same id (reattach).
    /// Returns the record it replaced, if any.
    async fn attach(&self, record: PresenceRecord) -> PresenceResult<Option<PresenceRecord>>;
    /// [`Presence::attach`] for a handshake: refused ([`Attach::Full`], nothing changed) in
    /// the same atomic step when the mesh already has `cap` live records and this record's
    /// id is not one of them, so concurrent handshakes on several replicas cannot overshoot
    /// `MAX_CONNECTIONS_PER_MESH`. `cap == 0` never refuses.
    async fn attach_within(&self, record: PresenceRecord, cap: usize) -> PresenceResult<Attach>;
    /// Applies `patch` if `conn_id` still owns the record.
    async fn update(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        patch: PresencePatch,
    ) -> PresenceResult<bool>;
    /// Moves the record into grace until `grace_until` if `conn_id` still owns it.
    async fn release(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        grace_until: i64,
    ) -> PresenceResult<bool>;
    /// Removes the record if it is in grace and its deadline is `<= now_ms`.
    async fn expire(
        &self,
        mesh_id: &str,
        presence_id: &str,
        now_ms: i64,
    ) -> PresenceResult<Option<PresenceRecord>>;
    /// Removes the record if `conn_id` owns it (kick, ban, replacement).
    async fn remove(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
    ) -> PresenceResult<Option<PresenceRecord>>;
    /// `true` the first time a signature is seen within `ttl`; `false` for a replay.
    async fn remember_signature(&self, signature: &str, ttl: Duration) -> PresenceResult<bool>;
    /// Takes one token of `key`'s bucket (`burst` tokens, refilled `per_min` a minute).
    async fn take_send_token(&self, key: &str, burst: u32, per_min: u32) -> PresenceResult<bool>;
    /// Whether the backend answers now (readiness).
    async fn healthy(&self) -> bool;

    /// Records `node_id` alive at `now_ms` (cluster heartbeat) and reports what the
    /// replica must react to: it was declared dead meanwhile, or the backend lost its data.
    /// Also advances the cluster's re-sync barrier after a data loss (see
    /// [`Presence::resync_pending`]); a replica silent for `dead_after_ms` is not waited for.
    async fn heartbeat(
        &self,
        node_id: &str,
        now_ms: i64,
        dead_after_ms: i64,
    ) -> PresenceResult<Heartbeat>;
    /// Forgets `node_id`'s heartbeat (clean shutdown: its presences are all in grace).
    async fn leave(&self, node_id: &str) -> PresenceResult<()>;
    /// Ends the live records of every node whose last heartbeat is older than
    /// `stale_before`; each record is returned to exactly one caller.
    async fn reap_dead_nodes(&self, stale_before: i64) -> PresenceResult<Vec<PresenceRecord>>;
    /// Removes records whose grace ended by `now_ms`; each is returned to exactly one caller.
    /// This is the backstop for grace timers lost with a replica.
    async fn expire_due(&self, now_ms: i64) -> PresenceResult<Vec<PresenceRecord>>;

    /// How many records of the mesh are live, in O(1): the handshake's capacity check.
    /// Exact across replicas: a record counts from the attach that makes it live until it
    /// goes into grace or is removed, expired or reaped (every such change is atomic with
    /// the count), and a re-registration after a backend restart counts it again.
    async fn live_count(&self, mesh_id: &str) -> PresenceResult<usize>;
    /// Remembers for `ttl` that `member_id` proved `session_key` in the mesh (a verified
    /// `session_hello`). A later call for the same member never shortens the memory; a
    /// call for another member (who proved it too) takes it over.
    async fn remember_session_key(
        &self,
        mesh_id: &str,
        session_key: &str,
        member_id: &str,
        ttl: Duration,
    ) -> PresenceResult<()>;
    /// The member that proved `session_key` in the mesh within the remembered TTL.
    async fn session_key_prover(
        &self,
        mesh_id: &str,
        session_key: &str,
    ) -> PresenceResult<Option<String>>;
    /// The live record, in any mesh, of the process `pid` in `cwd` (the status hook's
    /// target): the most recently connected one when several are. Backends may keep an
    /// index from [`process_key`] to records, written by every attach and refreshed by
    /// every update of a live record (so a live record stays findable); what the index
    /// names is checked against the record itself.
    async fn find_process(&self, pid: i64, cwd: &str) -> PresenceResult<Option<PresenceRecord>>;

    /// After a data loss of the backend, until every live replica has re-registered its
    /// presences: [`Presence::list`] fails as during an outage (fan-out, `list_peers` and
    /// handshakes never act on the half-empty state). Never in a single-node backend.
    fn resync_pending(&self) -> bool {
        false
    }
    /// [`Presence::list`] for the re-sync itself, which must read while `resync_pending`.
    async fn list_for_resync(&self, mesh_id: &str) -> PresenceResult<Vec<PresenceRecord>> {
        self.list(mesh_id).await
    }
    /// This replica has re-registered every local presence in the current epoch.
    async fn resynced(&self, _node_id: &str) -> PresenceResult<()> {
        Ok(())
    }

    /// Keeps a status hook's `status` for the process whose [`process_key`] is `key`, which
    /// has not connected yet, for `ttl`, where every replica's handshake can take it
    /// ([`Presence::take_pending_hook`]): at most `max` such statuses wait at once
    /// cluster-wide (a status for a key already waiting replaces it). `Some(false)`: the
    /// bound was reached and the status is dropped; `None`: this backend does not share
    /// pending statuses (single node: the replica keeps them itself).
    async fn keep_pending_hook(
        &self,
        _key: &str,
        _status: Status,
        _ttl: Duration,
        _max: usize,
    ) -> PresenceResult<Option<bool>> {
        Ok(None)
    }
    /// Takes (reads and removes, atomically, so exactly one handshake applies it) the
    /// status waiting under `key`, if it has not expired.
    async fn take_pending_hook(&self, _key: &str) -> PresenceResult<Option<Status>> {
        Ok(None)
    }
}

/// Token buckets kept before the full (idle) ones are forgotten.
const MAX_IDLE_BUCKETS: usize = 10_000;

/// Proven session keys kept before the expired ones are swept.
const PROVEN_KEYS_SWEEP_AT: usize = 10_000;

/// In-process presence: single node only.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    meshes: HashMap<String, HashMap<String, PresenceRecord>>,
    signatures: HashMap<String, Instant>,
    buckets: HashMap<String, (f64, Instant)>,
    /// Live presence ids per mesh, kept with every change of liveness (`live_count`).
    live: HashMap<String, HashSet<String>>,
    /// (mesh, proven session key) → (member id, remembered until).
    proven_keys: HashMap<(String, String), (String, Instant)>,
}

impl MemoryPresence {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryInner {
    fn owned(
        &mut self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
    ) -> Option<&mut PresenceRecord> {
        self.meshes
            .get_mut(mesh_id)?
            .get_mut(presence_id)
            .filter(|r| r.conn_id == conn_id)
    }

    /// Keeps `live` in step with one record's liveness.
    fn set_live(&mut self, mesh_id: &str, presence_id: &str, live: bool) {
        if live {
            self.live
                .entry(mesh_id.to_string())
                .or_default()
                .insert(presence_id.to_string());
        } else if let Some(ids) = self.live.get_mut(mesh_id) {
            ids.remove(presence_id);
            if ids.is_empty() {
                self.live.remove(mesh_id);
            }
        }
    }

    fn attach(&mut self, record: PresenceRecord) -> Option<PresenceRecord> {
        self.set_live(&record.mesh_id, &record.presence_id, record.is_live());
        let mesh = self.meshes.entry(record.mesh_id.clone()).or_default();
        mesh.insert(record.presence_id.clone(), record)
    }

    fn take(&mut self, mesh_id: &str, presence_id: &str) -> Option<PresenceRecord> {
        self.set_live(mesh_id, presence_id, false);
        let mesh = self.meshes.get_mut(mesh_id)?;
        let record = mesh.remove(presence_id);
        if mesh.is_empty() {
            self.meshes.remove(mesh_id);
        }
        record
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn list(&self, mesh_id: &str) -> PresenceResult<Vec<PresenceRecord>> {
        let mut records: Vec<PresenceRecord> = self
            .lock()
            .meshes
            .get(mesh_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        records.sort_by(|a, b| {
            a.connected_at
                .cmp(&b.connected_at)
                .then(a.presence_id.cmp(&b.presence_id))
        });
        Ok(records)
    }

    async fn find(
        &self,
        mesh_id: &str,
        q: PresenceQuery<'_>,
    ) -> PresenceResult<Vec<PresenceRecord>> {
        // In process: a scan of the mesh's map under the lock clones only the matches.
        let mut records: Vec<PresenceRecord> = self
            .lock()
            .meshes
            .get(mesh_id)
            .map(|m| m.values().filter(|r| q.matches(r)).cloned().collect())
            .unwrap_or_default();
        sort_records(&mut records);
        Ok(records)
    }

    async fn attach(&self, record: PresenceRecord) -> PresenceResult<Option<PresenceRecord>> {
        let mut inner = self.lock();
        Ok(inner.attach(record))
    }

    async fn attach_within(&self, record: PresenceRecord, cap: usize) -> PresenceResult<Attach> {
        let mut inner = self.lock();
        let live = inner.live.get(&record.mesh_id);
        let full = cap > 0
            && live.map_or(0, HashSet::len) >= cap
            && !live.is_some_and(|ids| ids.contains(&record.presence_id));
        if full {
            return Ok(Attach::Full);
        }
        Ok(Attach::Done(inner.attach(record)))
    }

    async fn update(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        patch: PresencePatch,
    ) -> PresenceResult<bool> {
        let mut inner = self.lock();
        match inner.owned(mesh_id, presence_id, conn_id) {
            Some(r) if r.is_live() => {
                patch.apply(r);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        grace_until: i64,
    ) -> PresenceResult<bool> {
        let mut inner = self.lock();
        match inner.owned(mesh_id, presence_id, conn_id) {
            Some(r) if r.is_live() => {
                r.grace_until = Some(grace_until);
                inner.set_live(mesh_id, presence_id, false);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn expire(
        &self,
        mesh_id: &str,
        presence_id: &str,
        now_ms: i64,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut inner = self.lock();
        let due = inner
            .meshes
            .get(mesh_id)
            .and_then(|m| m.get(presence_id))
            .is_some_and(|r| r.grace_until.is_some_and(|g| g <= now_ms));
        Ok(if due {
            inner.take(mesh_id, presence_id)
        } else {
            None
        })
    }

    async fn remove(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut inner = self.lock();
        if inner.owned(mesh_id, presence_id, conn_id).is_none() {
            return Ok(None);
        }
        Ok(inner.take(mesh_id, presence_id))
    }

    async fn remember_signature(&self, signature: &str, ttl: Duration) -> PresenceResult<bool> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.signatures.retain(|_, until| *until > now);
        if inner.signatures.contains_key(signature) {
            return Ok(false);
        }
        inner.signatures.insert(signature.to_string(), now + ttl);
        Ok(true)
    }

    async fn take_send_token(&self, key: &str, burst: u32, per_min: u32) -> PresenceResult<bool> {
        if burst == 0 || per_min == 0 {
            return Ok(true);
        }
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.buckets.len() > MAX_IDLE_BUCKETS {
            // A bucket untouched for a whole refill period is full again: forgetting it is exact.
            let full_after = Duration::from_secs_f64(60.0 * f64::from(burst) / f64::from(per_min));
            inner
                .buckets
                .retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, at) = inner
            .buckets
            .entry(key.to_string())
            .or_insert((f64::from(burst), now));
        let refill = now.duration_since(*at).as_secs_f64() * f64::from(per_min) / 60.0;
        *tokens = (*tokens + refill).min(f64::from(burst));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn healthy(&self) -> bool {
        true
    }

    // One node: there is no other replica to watch or to be reaped by.
    async fn heartbeat(
        &self,
        _node_id: &str,
        _now_ms: i64,
        _dead_after_ms: i64,
    ) -> PresenceResult<Heartbeat> {
        Ok(Heartbeat::default())
    }

    async fn leave(&self, _node_id: &str) -> PresenceResult<()> {
        Ok(())
    }

    async fn reap_dead_nodes(&self, _stale_before: i64) -> PresenceResult<Vec<PresenceRecord>> {
        Ok(Vec::new())
    }

    async fn expire_due(&self, now_ms: i64) -> PresenceResult<Vec<PresenceRecord>> {
        let mut inner = self.lock();
        let due: Vec<(String, String)> = inner
            .meshes
            .values()
            .flat_map(|m| m.values())
            .filter(|r| r.grace_until.is_some_and(|g| g <= now_ms))
            .map(|r| (r.mesh_id.clone(), r.presence_id.clone()))
            .collect();
        Ok(due
            .into_iter()
            .filter_map(|(m, p)| inner.take(&m, &p))
            .collect())
    }

    async fn live_count(&self, mesh_id: &str) -> PresenceResult<usize> {
        Ok(self.lock().live.get(mesh_id).map_or(0, HashSet::len))
    }

    async fn remember_session_key(
        &self,
        mesh_id: &str,
        session_key: &str,
        member_id: &str,
        ttl: Duration,
    ) -> PresenceResult<()> {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.proven_keys.len() >= PROVEN_KEYS_SWEEP_AT {
            inner.proven_keys.retain(|_, (_, until)| *until > now);
        }
        let until = now + ttl;
        let entry = inner
            .proven_keys
            .entry((mesh_id.to_string(), session_key.to_string()))
            .or_insert_with(|| (member_id.to_string(), until));
        if entry.0 != member_id || entry.1 < until {
            *entry = (member_id.to_string(), until);
        }
        Ok(())
    }

    async fn session_key_prover(
        &self,
        mesh_id: &str,
        session_key: &str,
    ) -> PresenceResult<Option<String>> {
        let inner = self.lock();
        Ok(inner
            .proven_keys
            .get(&(mesh_id.to_string(), session_key.to_string()))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(member, _)| member.clone()))
    }

    async fn find_process(&self, pid: i64, cwd: &str) -> PresenceResult<Option<PresenceRecord>> {
        // Single node: the records themselves are the index.
        let inner = self.lock();
        Ok(inner
            .meshes
            .values()
            .flat_map(|m| m.values())
            .filter(|r| r.is_live() && r.pid == Some(pid) && r.cwd == cwd)
            .max_by_key(|r| r.connected_at)
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, conn: &str) -> PresenceRecord {
        PresenceRecord {
            presence_id: id.into(),
            mesh_id: "m".into(),
            member_id: format!("member-{id}"),
            member_pubkey: "ab".repeat(32),
            session_pubkey: None,
            display_name: id.into(),
            session_id: String::new(),
            peer_role: PeerRole::ControlPlane,
            node_id: "n".into(),
            conn_id: conn.into(),
            grace_until: None,
            status: Status::Idle,
            summary: None,
            visible: true,
            groups: Vec::new(),
            profile: Map::new(),
            stats: None,
            pid: None,
            cwd: String::new(),
            hostname: None,
            peer_type: None,
            channel: None,
            model: None,
            connected_at: 0,
            last_pong_at: 0,
        }
    }

    #[tokio::test]
    async fn attach_within_refuses_a_new_record_at_the_cap_and_nothing_else() {
        let p = MemoryPresence::new();
        for id in ["a", "b"] {
            let r = record(id, &format!("n/{id}"));
            assert!(matches!(
                p.attach_within(r, 2).await,
                Ok(Attach::Done(None))
            ));
        }
        // Full: a new record is refused and nothing is written.
        let refused = p.attach_within(record("c", "n/c"), 2).await;
        assert!(matches!(refused, Ok(Attach::Full)));
        assert_eq!(p.live_count("m").await.unwrap(), 2);
        assert_eq!(p.list("m").await.unwrap().len(), 2);
        // A live record taken over (reattach) is not a new slot; no cap never refuses.
        let takeover = p.attach_within(record("a", "n/a2"), 2).await;
        assert!(matches!(takeover, Ok(Attach::Done(Some(_)))));
        assert!(matches!(
            p.attach_within(record("d", "n/d"), 0).await,
            Ok(Attach::Done(None))
        ));
        // A record in grace frees its slot; coming back from grace takes one again.
        assert!(p.release("m", "d", "n/d", 1).await.unwrap());
        assert!(p.release("m", "b", "n/b", 1).await.unwrap());
        assert!(matches!(
            p.attach_within(record("c", "n/c"), 2).await,
            Ok(Attach::Done(None))
        ));
        assert!(matches!(
            p.attach_within(record("b", "n/b2"), 2).await,
            Ok(Attach::Full)
        ));
    }
}
