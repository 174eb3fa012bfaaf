//! The cluster housekeeping every replica runs: its heartbeat, reaping the presences of
//! replicas that died, expiring grace leases whose timer was lost, healing when this
//! replica itself was declared dead, and re-syncing after the bus recovered from an outage
//! or Redis lost its data.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use crate::cluster::bus::AfterClose;
use crate::hub::{Control, SessionHandle};
use crate::ids::now_ms;
use crate::metrics::ReasonLabel;
use crate::node::Node;
use crate::session::end_presence;

/// Heartbeat, reap and expire on every `HEARTBEAT_INTERVAL_MS` tick. While draining it
/// keeps heartbeating until the last local socket is gone, so survivors never reap
/// presences that are still being handed over.
///
/// A tick that comes more than `NODE_DEAD_AFTER_MS` (wall clock) after this loop began
/// waiting for it means this process did not run meanwhile (SIGSTOP, a VM pause, CPU
/// starvation; a slow heartbeat during an outage does not count):
/// survivors may have reaped it, so it heals at once, before anything else runs. A
/// heartbeat that finds the tombstone a survivor left when it reaped this replica heals it
/// too. Reaping others waits until this replica has heartbeated without a break for
/// `NODE_DEAD_AFTER_MS` (after its start, an outage or a pause): right after an outage
/// every heartbeat is stale, and the first replica back must not reap the others.
pub async fn housekeeping(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead_after = node.config.node_dead_after.as_millis() as i64;
    // Start of the current unbroken run of successful heartbeats.
    let mut steady_since: Option<i64> = None;
    loop {
        let idle_from = now_ms();
        tokio::select! {
            _ = node.kill.cancelled() => break,
            _ = tick.tick() => {}
        }
        if node.stopping.is_cancelled() && node.hub.is_empty() {
            break;
        }
        let now = now_ms();
        let gap = now - idle_from > dead_after;
        if gap {
            steady_since = None;
            heal(&node, "clock_gap");
        }
        let beat = match node
            .presence
            .heartbeat(&node.config.instance_id, now, dead_after)
            .await
        {
            Ok(beat) => beat,
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                steady_since = None;
                continue;
            }
        };
        if beat.reaped && !gap {
            steady_since = None;
            heal(&node, "reaped");
        }
        if beat.data_lost {
            node.metrics.redis_data_losses.inc();
            node.resync_requested.notify_one();
        }
        if !gap && !beat.reaped {
            check_healed(&node);
        }
        let steady = now - *steady_since.get_or_insert(now) >= dead_after;
        if steady {
            match node.presence.reap_dead_nodes(now - dead_after).await {
                Ok(records) => {
                    if !records.is_empty() {
                        info!(
                            count = records.len(),
                            "reaped the presences of a dead replica"
                        );
                    }
                    for record in records {
                        node.metrics.presences_reaped.inc();
                        end_presence(&node, record).await;
                    }
                }
                Err(e) => warn!(error = %e, "reaping failed"),
            }
        }
        match node.presence.expire_due(now).await {
            Ok(records) => {
                for record in records {
                    node.metrics.presences_expired.inc();
                    end_presence(&node, record).await;
                }
            }
            Err(e) => warn!(error = %e, "grace expiry failed"),
        }
    }
}

/// This replica was declared dead (or may have been): its presences may be gone from
/// Redis, so its sockets are invisible to the cluster (no broadcasts, no moderation, no
/// ban). It closes every one `1001 going_away`; each client reconnects through a full
/// handshake (ban check included). Until it has healed, readiness answers 503 and
/// handshakes are refused.
fn heal(node: &Arc<Node>, reason: &'static str) {
    node.metrics
        .replica_heals
        .get_or_create(&ReasonLabel { reason })
        .inc();
    node.healing.store(true, Ordering::SeqCst);
    let handles = node.hub.all();
    warn!(
        sockets = handles.len(),
        reason, "this replica may have been declared dead: closing its sockets to heal"
    );
    let mut conns = node.heal_conns.lock().unwrap_or_else(|p| p.into_inner());
    for h in handles {
        conns.insert(h.conn_id.clone());
        let _ = h.control.send(Control::Close {
            code: 1001,
            reason: "going_away".into(),
            after: AfterClose::Grace,
        });
    }
}

/// Healed: a clean heartbeat, and every socket the heal closed has left the hub.
fn check_healed(node: &Node) {
    if !node.healing.load(Ordering::SeqCst) {
        return;
    }
    let open: HashSet<String> = node.hub.all().iter().map(|h| h.conn_id.clone()).collect();
    let mut conns = node.heal_conns.lock().unwrap_or_else(|p| p.into_inner());
    conns.retain(|c| open.contains(c));
    if conns.is_empty() {
        node.healing.store(false, Ordering::SeqCst);
        info!("healed: this replica takes sessions again");
    }
}

/// Sessions told to re-sync between two pauses.
const RESYNC_BATCH: usize = 100;
const RESYNC_PAUSE: Duration = Duration::from_millis(50);
/// How long a re-sync waits for its sessions before it reports this replica re-synced
/// anyway (a session busy in a long handler must not hold the cluster's barrier forever).
const RESYNC_WAIT: Duration = Duration::from_secs(10);

/// Re-syncs this replica each time the bus reports a recovery or Redis lost its data.
pub async fn resync_on_reconnect(node: Arc<Node>) {
    let mut reconnects = node.bus.reconnects();
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            changed = reconnects.changed() => if changed.is_err() { break },
            _ = node.resync_requested.notified() => {}
        }
        resync(&node).await;
    }
}

async fn resync(node: &Arc<Node>) {
    // A replica that was declared dead meanwhile heals instead: re-registering its
    // presences silently would hide from its peers that they were told `peer_left`.
    let dead_after = node.config.node_dead_after.as_millis() as i64;
    match node
        .presence
        .heartbeat(&node.config.instance_id, now_ms(), dead_after)
        .await
    {
        Ok(beat) => {
            if beat.reaped {
                heal(node, "reaped");
            }
            if beat.data_lost {
                node.metrics.redis_data_losses.inc();
            }
        }
        Err(e) => warn!(error = %e, "resync: heartbeat failed"),
    }
    node.resubscribe_all().await;
    if !node.healing.load(Ordering::SeqCst) {
        resync_sessions(node).await;
    }
    if let Err(e) = node.presence.resynced(&node.config.instance_id).await {
        warn!(error = %e, "resync: could not report this replica re-synced");
    }
}

/// Tells every local session to re-sync and waits until each has (or has gone).
async fn resync_sessions(node: &Arc<Node>) {
    let mut by_mesh: HashMap<String, Vec<Arc<SessionHandle>>> = HashMap::new();
    for handle in node.hub.all() {
        by_mesh
            .entry(handle.mesh_id.clone())
            .or_default()
            .push(handle);
    }
    {
        let mut waiting = node
            .resync_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        waiting.extend(by_mesh.values().flatten().map(|h| h.conn_id.clone()));
    }
    // One presence listing per mesh, shared by its sessions, and paced: thousands of
    // sessions re-syncing at once would swamp Redis and the store they re-sync with.
    let mut sent = 0usize;
    for (mesh_id, handles) in by_mesh {
        // Invalidations may have been lost with the bus.
        node.forget_members(&mesh_id);
        let owners = match node.presence.list_for_resync(&mesh_id).await {
            Ok(records) => Some(Arc::new(
                records
                    .into_iter()
                    .map(|r| (r.presence_id, r.conn_id))
                    .collect::<HashMap<_, _>>(),
            )),
            Err(e) => {
                warn!(error = %e, "resync: presence unavailable; sessions list it themselves");
                None
            }
        };
        for handle in handles {
            if handle
                .control
                .send(Control::Resync {
                    owners: owners.clone(),
                })
                .is_err()
            {
                node.resync_done(&handle.conn_id);
            }
            sent += 1;
            if sent.is_multiple_of(RESYNC_BATCH) {
                tokio::time::sleep(RESYNC_PAUSE).await;
            }
        }
    }
    info!(sessions = sent, "resync: sessions told to re-sync");
    let deadline = tokio::time::Instant::now() + RESYNC_WAIT;
    loop {
        let open: HashSet<String> = node.hub.all().iter().map(|h| h.conn_id.clone()).collect();
        let left = {
            let mut waiting = node
                .resync_waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            waiting.retain(|c| open.contains(c));
            waiting.len()
        };
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                sessions = left,
                "resync: sessions still busy; reporting re-synced anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
