//! Status hooks: statuses waiting for their presence to connect, and hooks routed to the
//! replica that holds their presence.
//!
//! A hook names a process (`pid`, `cwd`), not a mesh. The replica that receives it looks
//! for that process among its own sockets first, then in the presence registry
//! ([`Presence::find_process`](crate::cluster::presence::Presence::find_process), which
//! knows the mesh and presence of every live process cluster-wide) and publishes a
//! [`MeshEvent::HookStatus`] on that mesh: the replica holding the socket applies it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::cluster::bus::MeshEvent;
use crate::hub::Control;
use crate::node::Node;
use crate::protocol::Status;

/// Where a hook went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookRoute {
    /// Applied to a socket of this replica.
    Local,
    /// Published to the replica holding the presence (the registry found it).
    Routed,
    /// No live presence has this process (or the registry or bus failed): the caller may
    /// keep it pending.
    NotFound,
}

/// Hook statuses waiting (at most `HOOK_PENDING_MS`) for a presence to connect, by
/// [`HookState::key`] (a hash of `pid:cwd`), at most `HOOK_PENDING_MAX` of them: on a single
/// node, and in a cluster only while Redis fails (else Redis keeps them, see
/// [`Node::remember_pending_hook`]). Lost if the replica dies; a hook reports again on the
/// next change.
pub struct HookState {
    pending: Mutex<HashMap<String, (Status, Instant)>>,
    ttl: Duration,
    max: usize,
    dropped: Counter,
}

impl HookState {
    pub fn new(ttl: Duration, max: usize, dropped: Counter) -> Self {
        HookState {
            pending: Mutex::new(HashMap::new()),
            ttl,
            max,
            dropped,
        }
    }

    /// The key of a hook's rate limit and pending status: a hash of `pid:cwd`, so that
    /// what an unauthenticated caller sends never becomes a map key or a Redis key name as
    /// is (fixed length, whatever the `cwd`).
    pub fn key(pid: i64, cwd: &str) -> String {
        crate::cluster::presence::process_key(pid, cwd)
    }

    /// Keeps a hook status for the process `pid` in `cwd`, about to connect. Expired entries
    /// are dropped first, and the map is bounded (`HOOK_PENDING_MAX`) so an unauthenticated
    /// caller cannot grow it at will: beyond the bound a new status is dropped and counted.
    /// Returns whether the status was kept.
    pub fn remember(&self, pid: i64, cwd: &str, status: Status) -> bool {
        let key = Self::key(pid, cwd);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.ttl;
        pending.retain(|_, (_, at)| at.elapsed() < ttl);
        if pending.len() < self.max || pending.contains_key(&key) {
            pending.insert(key, (status, Instant::now()));
            true
        } else {
            self.dropped.inc();
            false
        }
    }

    /// Takes the pending hook status of a presence that just connected. Only a status
    /// reported for exactly this `pid` and `cwd` applies: a presence without a pid gets
    /// none.
    pub fn take(&self, pid: Option<i64>, cwd: &str) -> Option<Status> {
        let pid = pid?;
        let key = Self::key(pid, cwd);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.ttl;
        pending
            .remove(&key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(s, _)| s)
    }
}

impl Node {
    /// Keeps a hook status for the process `pid` in `cwd`, which has not connected yet. In
    /// a cluster the presence backend keeps it (Redis, bounded by `HOOK_PENDING_MAX`
    /// cluster-wide), so the handshake of that process applies it on whichever replica it
    /// connects to; a single node keeps it in [`HookState`]. If Redis fails, this replica
    /// keeps it (it then applies only if the process connects here). Returns whether the
    /// status was kept; a dropped one is counted (`broker_hook_pending_dropped_total`).
    pub async fn remember_pending_hook(&self, pid: i64, cwd: &str, status: Status) -> bool {
        let key = HookState::key(pid, cwd);
        let shared = self
            .presence
            .keep_pending_hook(&key, status, self.hooks.ttl, self.hooks.max)
            .await;
        match shared {
            Ok(Some(true)) => true,
            Ok(Some(false)) => {
                self.hooks.dropped.inc();
                false
            }
            Ok(None) => self.hooks.remember(pid, cwd, status),
            Err(e) => {
                tracing::warn!(error = %e, "hook: pending status kept on this replica only");
                self.hooks.remember(pid, cwd, status)
            }
        }
    }

    /// Takes the pending hook status of a presence that is connecting (its handshake):
    /// the one this replica keeps, else the one the presence backend shares. Only a status
    /// reported for exactly this `pid` and `cwd` applies: a presence without a pid gets
    /// none.
    pub async fn take_pending_hook(&self, pid: Option<i64>, cwd: &str) -> Option<Status> {
        let pid = pid?;
        if let Some(status) = self.hooks.take(Some(pid), cwd) {
            return Some(status);
        }
        match self
            .presence
            .take_pending_hook(&HookState::key(pid, cwd))
            .await
        {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(error = %e, "hook: pending statuses unavailable");
                None
            }
        }
    }

    /// Applies a hook's status to the process `pid` in `cwd` wherever it is connected:
    /// on this replica directly, else through the registry and the bus. Every failure of
    /// the registry or the bus is `NotFound` (logged): a hook is a low-trust signal, the
    /// next one tries again.
    pub async fn route_hook(&self, pid: i64, cwd: &str, status: Status) -> HookRoute {
        if let Some(h) = self.hub.find_by_process(pid, cwd) {
            let _ = h.control.send(Control::HookStatus(status));
            return HookRoute::Local;
        }
        let record = match self.presence.find_process(pid, cwd).await {
            Ok(Some(r)) => r,
            Ok(None) => return HookRoute::NotFound,
            Err(e) => {
                tracing::warn!(error = %e, "hook: the presence registry is unavailable");
                return HookRoute::NotFound;
            }
        };
        let event = MeshEvent::HookStatus {
            presence_id: record.presence_id,
            status,
        };
        match self.publish(&record.mesh_id, event).await {
            Ok(()) => HookRoute::Routed,
            Err(e) => {
                tracing::warn!(error = %e, "hook: not published to the presence's replica");
                HookRoute::NotFound
            }
        }
    }

    /// A hook routed here by another replica: the local connection of the presence, if
    /// this replica still holds it, applies the status (never clearing `dnd`).
    pub fn apply_routed_hook(&self, mesh_id: &str, presence_id: &str, status: Status) {
        if let Some(h) = self.hub.find_presence(mesh_id, presence_id) {
            let _ = h.control.send(Control::HookStatus(status));
        }
    }
}
