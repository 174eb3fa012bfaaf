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
    // Local to this loop, the one consumer of the replica's events (see its doc).
    let mut state_order = crate::service::state::ChangeOrder::default();
    loop {
        tokio::select! {
            _ = node.kill.cancelled() => break,
            ev = events.recv() => match ev {
                Some((mesh_id, event)) => {
                    node.presence_cache.observe(&mesh_id, &event);
                    if state_order.admit(&node, &mesh_id, &event) {
                        apply(&node, &mesh_id, event, held_limit);
                    }
                }
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
            trace,
        } => {
            // One push span per replica and fan-out, in the sender's trace (only when the
            // event carries one: spans are exported and the sender's were too).
            let span = match trace.as_deref() {
                Some(tp) if crate::telemetry::on() => {
                    let span = tracing::info_span!(
                        "push",
                        otel.kind = "producer",
                        mesh.id = mesh_id,
                        messaging.system = "claudemesh",
                        messaging.operation.type = "send",
                        messaging.operation.name = "push",
                        messaging.destination.name =
                            if priority.is_some() { "fanout" } else { "system" },
                        messaging.message.body.size = frame.len(),
                        push.addressed = presence_ids.len(),
                        push.recipients = tracing::field::Empty,
                    );
                    crate::telemetry::follow(&span, Some(tp));
                    span
                }
                _ => tracing::Span::none(),
            };
            let _entered = span.enter();
            let pushed = node
                .hub
                .deliver(mesh_id, &presence_ids, priority, &frame, held_limit);
            span.record("push.recipients", pushed);
            node.metrics.pushes_total.inc_by(pushed);
            // A topic post also wakes this replica's SSE streams of the topic (REST v1).
            crate::rest::sse::delivered(mesh_id, &frame);
        }
        MeshEvent::Doorbell { member_id } => node.hub.ring(mesh_id, &member_id),
        // The message itself: one local connection of the member pushes it without a
        // claim (or none is here, and it waits in the queue for its recipient's drain).
        MeshEvent::Direct {
            member_id,
            message,
            frame,
        } => {
            let push = crate::hub::DirectPush {
                id: message.id,
                session_key: message.session_key,
                priority: message.priority,
                client_id: message.client_id,
                trace: message.trace,
                created_at: message.created_at,
                frame,
            };
            node.hub
                .direct(mesh_id, &member_id, push, node.config.outbound_queue_bytes);
        }
        MeshEvent::Close {
            conn_ids,
            code,
            reason,
            after,
        } => node.hub.close(mesh_id, &conn_ids, code, &reason, after),
        // Sockets have nothing to do: only the member cache.
        MeshEvent::MembersChanged => {
            node.members.forget(mesh_id);
            // A ban or a key revocation: the mesh's REST SSE streams re-read their key.
            crate::rest::sse::recheck(mesh_id);
        }
        MeshEvent::HookStatus {
            presence_id,
            status,
        } => node.apply_routed_hook(mesh_id, &presence_id, status),
        // Stale versions were dropped by `ChangeOrder` in `run`; a system push otherwise.
        MeshEvent::StateChange {
            presence_ids,
            frame,
            ..
        } => {
            node.hub
                .deliver(mesh_id, &presence_ids, None, &frame, held_limit);
        }
    }
}
