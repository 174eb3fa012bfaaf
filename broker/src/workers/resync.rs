//! Re-syncing this replica after the bus recovered from an outage (events may have been
//! lost) or Redis lost its data: resubscribe, drop the member caches, and tell every local
//! session to re-register its presence and re-drain its queue, paced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::housekeeping::heal;
use crate::hub::{Control, SessionHandle};
use crate::ids::now_ms;
use crate::node::Node;

/// Sessions told to re-sync between two pauses.
const RESYNC_BATCH: usize = 100;
const RESYNC_PAUSE: Duration = Duration::from_millis(50);
/// How long a re-sync waits for its sessions before it reports this replica re-synced
/// anyway (a session busy in a long handler must not hold the cluster's barrier forever).
const RESYNC_WAIT: Duration = Duration::from_secs(10);

/// Re-syncs this replica each time the bus reports a recovery or Redis lost its data.
pub async fn run(node: Arc<Node>) -> super::WorkerResult {
    let mut reconnects = node.bus.reconnects();
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            changed = reconnects.changed() => if changed.is_err() { break },
            _ = node.resync_requested.notified() => {}
        }
        resync(&node).await;
    }
    Ok(())
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
