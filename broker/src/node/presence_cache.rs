//! The presence cache: this replica's listing of a mesh's presences, for what needs the
//! whole mesh (broadcast and group fan-out, join/leave recipients) and may be a moment
//! stale. A cache: the presence backend is the truth, and everything that must be exact
//! (the cap, reattach, replacement, a DM's session key) asks the backend directly.
//!
//! An entry is kept only while this replica has sockets in the mesh, that is while it is
//! subscribed to the mesh's bus events, so that it hears what invalidates it:
//! - every presence event of the mesh (`peer_joined`, `peer_returned`, `peer_left`,
//!   `peer_visible`, `peer_hidden` system pushes, which every subscribed replica receives
//!   whoever they address), a `Close` (replacement, kick), a `MembersChanged` (ban): the
//!   dispatcher's hook, [`PresenceCache::observe`];
//! - a local attach or detach ([`PresenceCache::invalidate`]);
//! - and `PRESENCE_CACHE_TTL_MS` for what no event announces (a reattach from grace on
//!   another replica, a group change there).
//!
//! So a broadcast sent after its sender saw a `peer_joined` reaches that peer; one sent
//! within the TTL of an unannounced change may miss it (broadcasts are at most once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::cluster::bus::MeshEvent;
use crate::cluster::presence::{Presence, PresenceRecord, PresenceResult};
use crate::metrics::ReasonLabel;

#[derive(Debug)]
struct Entry {
    records: Arc<Vec<PresenceRecord>>,
    filled: Instant,
    /// The generation the listing was read at (see [`PresenceCache::generation`]).
    generation: u64,
}

/// See the module documentation.
pub struct PresenceCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// Per-mesh invalidation marks: the global generation at the mesh's last invalidation.
    /// A listing read before it is not kept.
    invalidated: Mutex<HashMap<String, u64>>,
    /// Bumped by every invalidation, cluster-wide order irrelevant: only "did an
    /// invalidation of this mesh happen since the read began" matters.
    generation: AtomicU64,
    /// The generation of the last [`PresenceCache::clear`]: an invalidation of every mesh.
    cleared: AtomicU64,
    outcomes: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for PresenceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl PresenceCache {
    /// A cache trusting a listing for `ttl` (zero: no cache, every lookup lists).
    pub fn new(ttl: Duration, outcomes: Family<ReasonLabel, Counter>) -> Self {
        PresenceCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
            invalidated: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
            outcomes,
        }
    }

    fn count(&self, reason: &'static str) {
        self.outcomes.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Every record of the mesh (live and in grace), from the cache when fresh, else from
    /// `presence`. A listing is kept only when `keep()` says so after it was read (this
    /// replica has sockets in the mesh, so it hears the invalidations) and no invalidation
    /// of the mesh happened while it was read.
    pub async fn list(
        &self,
        presence: &dyn Presence,
        mesh_id: &str,
        keep: impl FnOnce() -> bool,
    ) -> PresenceResult<Arc<Vec<PresenceRecord>>> {
        if self.ttl.is_zero() {
            return Ok(Arc::new(presence.list(mesh_id).await?));
        }
        let started = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries.get(mesh_id)
                && e.filled.elapsed() < self.ttl
            {
                let records = e.records.clone();
                drop(entries);
                self.count("hit");
                return Ok(records);
            }
            self.generation.load(Ordering::SeqCst)
        };
        self.count("miss");
        let records = Arc::new(presence.list(mesh_id).await?);
        if keep() {
            let invalidated = self
                .invalidated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(mesh_id)
                .copied()
                .unwrap_or(0)
                .max(self.cleared.load(Ordering::SeqCst));
            // Kept unless an invalidation came after the read began.
            if invalidated <= started {
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                // A concurrent fill that began later wins.
                if entries.get(mesh_id).is_none_or(|e| e.generation <= started) {
                    entries.insert(
                        mesh_id.to_string(),
                        Entry {
                            records: records.clone(),
                            filled: Instant::now(),
                            generation: started,
                        },
                    );
                }
            }
        }
        Ok(records)
    }

    /// Drops the mesh's listing; a listing being read meanwhile is not kept.
    pub fn invalidate(&self, mesh_id: &str) {
        let at = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let dropped = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mesh_id)
            .is_some();
        let mut invalidated = self.invalidated.lock().unwrap_or_else(|p| p.into_inner());
        invalidated.insert(mesh_id.to_string(), at);
        // The marks only matter for reads in flight: keep the map small.
        if invalidated.len() > 4096 {
            let horizon = at.saturating_sub(4096);
            invalidated.retain(|_, g| *g > horizon);
        }
        drop(invalidated);
        if dropped {
            self.count("invalidated");
        }
    }

    /// Drops everything (the bus reconnected: events may have been missed).
    pub fn clear(&self) {
        let at = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.cleared.store(at, Ordering::SeqCst);
        let dropped = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let n = entries.len();
            entries.clear();
            n
        };
        if dropped > 0 {
            self.outcomes
                .get_or_create(&ReasonLabel {
                    reason: "invalidated",
                })
                .inc_by(dropped as u64);
        }
    }

    /// The dispatcher's hook: a bus event of the mesh that may change who is present (a
    /// presence system event, a close, a member change) invalidates the mesh's listing.
    pub fn observe(&self, mesh_id: &str, event: &MeshEvent) {
        let changes = match event {
            MeshEvent::Deliver {
                priority: None,
                frame,
                ..
            } => is_presence_event(frame),
            MeshEvent::Close { .. } | MeshEvent::MembersChanged => true,
            _ => false,
        };
        if changes {
            self.invalidate(mesh_id);
        }
    }
}

/// Whether a system push is one of the presence events (`peer_joined`, `peer_returned`,
/// `peer_left`, `peer_visible`, `peer_hidden`): `"event":"peer_` in the compact JSON.
fn is_presence_event(frame: &[u8]) -> bool {
    const NEEDLE: &[u8] = br#""event":"peer_"#;
    frame.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::presence::MemoryPresence;
    use crate::protocol::SystemEvent;
    use crate::protocol::frames::PeerLeft;

    async fn seen(cache: &PresenceCache, presence: &MemoryPresence, keep: bool) -> usize {
        cache
            .list(presence, "m", || keep)
            .await
            .expect("list")
            .len()
    }

    fn record(mesh: &str, id: &str) -> PresenceRecord {
        PresenceRecord {
            presence_id: id.into(),
            mesh_id: mesh.into(),
            member_id: format!("mem-{id}"),
            member_pubkey: "a".repeat(64),
            session_pubkey: None,
            display_name: id.into(),
            session_id: id.into(),
            peer_role: crate::cluster::presence::PeerRole::Session,
            node_id: "n".into(),
            conn_id: format!("n/{id}"),
            grace_until: None,
            status: crate::protocol::Status::Idle,
            summary: None,
            visible: true,
            groups: vec![],
            profile: Default::default(),
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
    async fn serves_fresh_listings_and_drops_them_on_presence_events() {
        let presence = MemoryPresence::new();
        presence.attach(record("m", "p1")).await.expect("attach");
        let cache = PresenceCache::new(Duration::from_secs(60), Family::default());
        assert_eq!(seen(&cache, &presence, true).await, 1);
        presence.attach(record("m", "p2")).await.expect("attach");
        // Cached: the second presence is not seen yet.
        assert_eq!(seen(&cache, &presence, true).await, 1);
        // A presence event of another mesh changes nothing.
        let left = crate::protocol::system_push(
            "m",
            SystemEvent::PeerLeft(PeerLeft {
                name: "x".into(),
                pubkey: "k".into(),
            }),
            0,
        );
        let event = MeshEvent::Deliver {
            presence_ids: vec!["p1".to_string()].into(),
            priority: None,
            frame: left,
            trace: None,
        };
        cache.observe("other", &event);
        assert_eq!(seen(&cache, &presence, true).await, 1);
        cache.observe("m", &event);
        assert_eq!(seen(&cache, &presence, true).await, 2);
    }

    #[tokio::test]
    async fn keeps_nothing_without_sockets_nor_with_a_zero_ttl() {
        let presence = MemoryPresence::new();
        presence.attach(record("m", "p1")).await.expect("attach");
        let cache = PresenceCache::new(Duration::from_secs(60), Family::default());
        assert_eq!(seen(&cache, &presence, false).await, 1);
        presence.attach(record("m", "p2")).await.expect("attach");
        assert_eq!(seen(&cache, &presence, false).await, 2);
        let uncached = PresenceCache::new(Duration::ZERO, Family::default());
        assert_eq!(seen(&uncached, &presence, true).await, 2);
        presence.attach(record("m", "p3")).await.expect("attach");
        assert_eq!(seen(&uncached, &presence, true).await, 3);
    }

    #[tokio::test]
    async fn a_bus_reconnect_drops_every_listing() {
        let presence = MemoryPresence::new();
        presence.attach(record("m", "p1")).await.expect("attach");
        let cache = PresenceCache::new(Duration::from_secs(60), Family::default());
        assert_eq!(seen(&cache, &presence, true).await, 1);
        presence.attach(record("m", "p2")).await.expect("attach");
        cache.clear();
        assert_eq!(seen(&cache, &presence, true).await, 2);
    }

    #[test]
    fn only_presence_system_events_count() {
        assert!(is_presence_event(
            br#"{"type":"push","subtype":"system","event":"peer_joined"}"#
        ));
        assert!(!is_presence_event(
            br#"{"type":"push","subtype":"system","event":"state_change"}"#
        ));
    }
}
