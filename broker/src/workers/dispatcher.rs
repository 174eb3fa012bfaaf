//! The one task that hands this replica's bus events to its sockets, in arrival order
//! (which keeps publish order per replica and mesh). It translates each [`MeshEvent`] into
//! calls on the hub (which knows sockets, not the bus) and the member cache.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};

use super::WorkerResult;
use crate::cluster::bus::MeshEvent;
use crate::node::Node;

/// The receiving end of the bus sink, shared so that a restarted dispatcher takes over
/// where the last one stopped.
pub type Events = Arc<Mutex<mpsc::UnboundedReceiver<(String, MeshEvent)>>>;

/// Runs until the node is killed (events keep flowing to sockets while they drain) or the
/// bus is gone.
pub async fn run(node: Arc<Node>, events: Events) -> WorkerResult {
    let mut events = events.lock().await;
    let held_limit = node.config.held_queue_bytes;
    loop {
        tokio::select! {
            _ = node.kill.cancelled() => break,
            ev = events.recv() => match ev {
                Some((mesh_id, event)) => apply(&node, &mesh_id, event, held_limit),
                None => break,
            },
        }
    }
    Ok(())
}

/// Applies one bus event to the local connections (or caches) it concerns.
pub fn apply(node: &Node, mesh_id: &str, event: MeshEvent, held_limit: usize) {
    match event {
        MeshEvent::Deliver {
            presence_ids,
            priority,
            frame,
        } => {
            let pushed = node
                .hub
                .deliver(mesh_id, &presence_ids, priority, &frame, held_limit);
            node.metrics.pushes_total.inc_by(pushed);
        }
        MeshEvent::Doorbell { member_id } => node.hub.ring(mesh_id, &member_id),
        MeshEvent::Close {
            conn_ids,
            code,
            reason,
            after,
        } => node.hub.close(mesh_id, &conn_ids, code, &reason, after),
        // Sockets have nothing to do: only the member cache.
        MeshEvent::MembersChanged => node.members.forget(mesh_id),
    }
}
