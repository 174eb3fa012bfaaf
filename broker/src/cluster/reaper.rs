//! The cluster housekeeping every replica runs: its heartbeat, reaping the presences of
//! replicas that died, expiring grace leases whose timer was lost, and re-syncing after
//! the bus recovered from an outage.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use crate::hub::{Control, SessionHandle};
use crate::ids::now_ms;
use crate::node::Node;
use crate::session::end_presence;

/// Heartbeat, reap and expire on every `HEARTBEAT_INTERVAL_MS` tick. While draining it
/// keeps heartbeating until the last local socket is gone, so survivors never reap
/// presences that are still being handed over.
pub async fn housekeeping(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead_after = node.config.node_dead_after.as_millis() as i64;
    loop {
        tokio::select! {
            _ = node.kill.cancelled() => break,
            _ = tick.tick() => {}
        }
        if node.stopping.is_cancelled() && node.hub.is_empty() {
            break;
        }
        let now = now_ms();
        if let Err(e) = node.presence.heartbeat(&node.config.instance_id, now).await {
            warn!(error = %e, "heartbeat failed");
            continue;
        }
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

/// Sessions told to re-sync between two pauses.
const RESYNC_BATCH: usize = 100;
const RESYNC_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Re-syncs this replica each time the bus reports a recovery.
pub async fn resync_on_reconnect(node: Arc<Node>) {
    let mut reconnects = node.bus.reconnects();
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            changed = reconnects.changed() => if changed.is_err() { break },
        }
        node.resubscribe_all().await;
        let mut by_mesh: HashMap<String, Vec<Arc<SessionHandle>>> = HashMap::new();
        for handle in node.hub.all() {
            by_mesh
                .entry(handle.mesh_id.clone())
                .or_default()
                .push(handle);
        }
        // One presence listing per mesh, shared by its sessions, and paced: thousands of
        // sessions re-syncing at once would swamp Redis and the store they re-sync with.
        let mut sent = 0usize;
        for (mesh_id, handles) in by_mesh {
            // Invalidations may have been lost with the bus.
            node.forget_members(&mesh_id);
            let owners = match node.presence.list(&mesh_id).await {
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
                let _ = handle.control.send(Control::Resync {
                    owners: owners.clone(),
                });
                sent += 1;
                if sent.is_multiple_of(RESYNC_BATCH) {
                    tokio::time::sleep(RESYNC_PAUSE).await;
                }
            }
        }
    }
}
