//! Status-hook state: statuses waiting for their presence to connect.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::protocol::Status;

/// Hook statuses waiting (at most `HOOK_PENDING_MS`) for a presence to connect, by
/// [`HookState::key`] (a hash of `pid:cwd`), at most `HOOK_PENDING_MAX` of them. Lost if the
/// replica dies; a hook reports again on the next change.
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
