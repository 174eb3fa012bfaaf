//! The cluster housekeeping every replica runs: its heartbeat, reaping the presences of
//! replicas that died, expiring grace leases whose timer was lost, and healing when this
//! replica itself was declared dead. `cluster/` only hands out the records it reaped or
//! expired; ending each presence is the session lifecycle's (`end_presence`), called here.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use crate::hub::Control;
use crate::ids::now_ms;
use crate::lifecycle::AfterClose;
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
pub async fn run(node: Arc<Node>) -> super::WorkerResult {
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
    Ok(())
}

/// This replica was declared dead (or may have been): its presences may be gone from
/// Redis, so its sockets are invisible to the cluster (no broadcasts, no moderation, no
/// ban). It closes every one `going_away`; each client reconnects through a full
/// handshake (ban check included). Until it has healed, readiness answers 503 and
/// handshakes are refused.
pub(super) fn heal(node: &Arc<Node>, reason: &'static str) {
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
            code: crate::protocol::codes::GOING_AWAY.code,
            reason: crate::protocol::codes::GOING_AWAY.reason.into(),
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
