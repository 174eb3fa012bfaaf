//! Presence lifecycle: attach after a handshake (new presence, reattach or replacement),
//! detach when the socket ends, lease grace and its expiry, and the join/leave events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{Attached, Conn, Session};
use crate::auth::{HandshakeError, Verified};
use crate::cluster::bus::{AfterClose, MeshEvent};
use crate::cluster::presence::PresenceRecord;
use crate::hub::{Control, Held, SessionHandle};
use crate::ids::{self, now_ms};
use crate::node::Node;
use crate::protocol::frames::{
    HelloAck, MemberProfile, PeerJoined, PeerLeft, PeerReturned, Restored, tag,
};
use crate::protocol::{self, Status, SystemEvent, codes};
use crate::store::PeerState;

fn unavailable(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError {
        code: "internal",
        message: format!("broker backend unavailable: {e}"),
    }
}

pub(crate) use crate::service::presence::join_leave_recipients;

/// Publishes a system event to `presence_ids`.
pub(crate) async fn announce(
    node: &Arc<Node>,
    mesh_id: &str,
    presence_ids: Vec<String>,
    event: SystemEvent,
) {
    let ctx = crate::service::ServiceCtx::new(node);
    crate::service::presence::announce(&ctx, mesh_id, presence_ids, event).await;
}

/// A presence is gone for good: save what its member will get back, tell the others.
pub(crate) async fn end_presence(node: &Arc<Node>, record: PresenceRecord) {
    let state = PeerState {
        groups: record.groups.clone(),
        summary: record.summary.clone(),
        profile: record.profile.clone(),
        stats: record.stats.clone(),
        last_seen_at: now_ms(),
    };
    if let Err(e) = node
        .store
        .save_peer_state(&record.mesh_id, &record.member_id, state)
        .await
    {
        warn!(error = %e, "peer state not saved");
    }
    // Its stream subscriptions end with it (a reattach keeps them: it never gets here).
    crate::service::streams::presence_ended(&node.stream_subscriptions, &record).await;
    // What waits on it fails now; its MCP registrations go offline or away (extensions §14).
    crate::service::mcp_registry::presence_ended(&crate::service::ServiceCtx::new(node), &record)
        .await;
    let records = mesh_presences(node, &record.mesh_id).await;
    // Gone here at once (its `peer_left` tells the other replicas).
    node.presence_cache.invalidate(&record.mesh_id);
    let to = join_leave_recipients(&records, &record);
    let left = SystemEvent::PeerLeft(PeerLeft {
        name: record.display_name.clone(),
        pubkey: record.routing_key().to_string(),
    });
    announce(node, &record.mesh_id, to, left).await;
    node.audit(
        &record.mesh_id,
        "peer_left",
        Some(&record.member_id),
        json!({"pubkey": record.routing_key()}),
    );
}

/// Every presence of the mesh, through the replica's presence cache (join/leave recipients
/// may be a moment stale: see `node/presence_cache.rs`); empty when presence is down.
async fn mesh_presences(node: &Arc<Node>, mesh_id: &str) -> Arc<Vec<PresenceRecord>> {
    match node
        .presence_cache
        .list(&*node.presence, mesh_id, || node.hub.has_mesh(mesh_id))
        .await
    {
        Ok(records) => records,
        Err(e) => {
            warn!(error = %e, "presence unavailable: join/leave not announced");
            Arc::default()
        }
    }
}

/// Waits out a presence's lease grace and ends it unless a reattach took it over.
fn spawn_grace_timer(node: Arc<Node>, mesh_id: String, presence_id: String) {
    let grace = node.config.lease_grace;
    let tracker = node.tracker.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(grace + Duration::from_millis(5)) => {}
            // The presence stays in grace in the shared backend; in a cluster another
            // replica's reaper ends it. In dev mode the process is going away anyway.
            _ = node.stopping.cancelled() => return,
        }
        match node.presence.expire(&mesh_id, &presence_id, now_ms()).await {
            Ok(Some(record)) => {
                node.metrics.presences_expired.inc();
                end_presence(&node, record).await;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "presence expiry failed"),
        }
    });
}

pub(super) async fn attach(
    s: &Conn,
    mut v: Verified,
    req_id: Option<&str>,
    ctl_tx: crate::hub::ControlQueue,
) -> Result<Attached, HandshakeError> {
    let node = s.node.clone();
    // Healing after being declared dead, or re-syncing after a Redis data loss: the
    // shared state is not to be trusted yet. Refused as during an outage (retryable).
    if let Some(why) = node.sync_problem() {
        return Err(unavailable(why));
    }
    // What the hello announces is bounded like the frames that change it later.
    if let Err(r) = crate::service::presence::check_hello_meta(&node.config, &v.meta) {
        return Err(HandshakeError {
            code: r.code,
            message: r.message,
        });
    }
    let now = now_ms();
    let mesh_id = v.mesh.id.clone();
    tracing::Span::current().record("mesh_id", mesh_id.as_str());
    // The records with this handshake's session key or `sessionId`, read by the handshake
    // a moment ago (`auth::related`); the attach below is compare-and-set anyway.
    let records = std::mem::take(&mut v.records);
    let session_id = v.meta.session_id.clone().unwrap_or_default();

    // Reattach: same session key, or without session keys the same member and sessionId.
    let previous = records.iter().find(|r| {
        r.member_id == v.member.id
            && match &v.session_key {
                Some(k) => r.session_pubkey.as_deref() == Some(k.as_str()),
                None => {
                    r.session_pubkey.is_none()
                        && !session_id.is_empty()
                        && r.session_id == session_id
                }
            }
    });
    // Replacement: another live presence of the mesh with the same sessionId.
    let replaced: Vec<&PresenceRecord> = records
        .iter()
        .filter(|r| r.is_live() && !session_id.is_empty() && r.session_id == session_id)
        .filter(|r| previous.is_none_or(|p| p.presence_id != r.presence_id))
        .collect();

    let restored = if previous.is_none() {
        node.store
            .peer_state(&mesh_id, &v.member.id)
            .await
            .map_err(unavailable)?
    } else {
        None
    };
    let groups = v
        .meta
        .groups
        .clone()
        .or_else(|| previous.map(|p| p.groups.clone()))
        .or_else(|| {
            restored
                .as_ref()
                .map(|r| r.groups.clone())
                .filter(|g| !g.is_empty())
        })
        .unwrap_or_else(|| v.member.default_groups.clone());
    let groups = crate::service::presence::bounded_groups(&node.config, groups);
    let cwd = v.meta.cwd.clone().unwrap_or_default();
    let status = node
        .take_pending_hook(v.meta.pid, &cwd)
        .await
        // A hook never clears dnd, not even through a reattach.
        .filter(|_| previous.is_none_or(|p| p.status != Status::Dnd))
        .or_else(|| previous.map(|p| p.status))
        .unwrap_or(Status::Idle);
    let display_name = v
        .meta
        .display_name
        .clone()
        .unwrap_or_else(|| v.member.display_name.clone());
    let record = PresenceRecord {
        presence_id: previous
            .map(|p| p.presence_id.clone())
            .unwrap_or_else(|| ids::random_id(24)),
        mesh_id: mesh_id.clone(),
        member_id: v.member.id.clone(),
        member_pubkey: v.member.pubkey.clone(),
        session_pubkey: v.session_key.clone(),
        display_name,
        session_id,
        peer_role: v.peer_role,
        node_id: node.config.instance_id.clone(),
        conn_id: s.conn_id.clone(),
        grace_until: None,
        status,
        summary: previous.and_then(|p| p.summary.clone()),
        visible: previous.is_none_or(|p| p.visible),
        groups,
        profile: previous.map(|p| p.profile.clone()).unwrap_or_default(),
        stats: previous.and_then(|p| p.stats.clone()),
        pid: v.meta.pid,
        cwd: cwd.clone(),
        hostname: v.meta.hostname.clone(),
        peer_type: v.meta.peer_type.clone(),
        channel: v.meta.channel.clone(),
        model: v.meta.model.clone(),
        connected_at: previous.map(|p| p.connected_at).unwrap_or(now),
        last_pong_at: now,
    };

    let handle = Arc::new(SessionHandle {
        conn_id: s.conn_id.clone(),
        mesh_id: mesh_id.clone(),
        presence_id: record.presence_id.clone(),
        member_id: v.member.id.clone(),
        session_key: v.session_key.clone(),
        pid: v.meta.pid,
        cwd: cwd.clone(),
        out: s.out.clone(),
        control: ctl_tx,
        drain: Notify::new(),
        status: Mutex::new(record.status),
        held: Mutex::new(Held::default()),
        gate: Mutex::new(Some(Vec::new())),
        direct: Default::default(),
    });
    // In the hub (and subscribed) before the record is visible to anyone, so nothing
    // addressed to this presence can miss it; gated until the hello_ack is queued, so
    // nothing reaches the client before its hello_ack.
    node.hub.insert(handle.clone());
    node.sync_subscription(&mesh_id).await;
    // The cap is enforced by the attach itself too: handshakes racing on several replicas
    // past the O(1) check before it get `capacity` here, and leave nothing behind.
    let cap = node.config.max_connections_per_mesh;
    let attached = match node.presence.attach_within(record.clone(), cap).await {
        Ok(crate::cluster::presence::Attach::Done(p)) => Ok(p),
        Ok(crate::cluster::presence::Attach::Full) => Err(crate::auth::mesh_full()),
        Err(e) => Err(unavailable(e)),
    };
    let prior = match attached {
        Ok(p) => p,
        Err(e) => {
            node.hub.remove(&mesh_id, &s.conn_id);
            node.sync_subscription(&mesh_id).await;
            return Err(e);
        }
    };
    let mut to_close: Vec<String> = replaced.iter().map(|r| r.conn_id.clone()).collect();
    if let Some(p) = prior.filter(|p| p.is_live() && p.conn_id != s.conn_id) {
        to_close.push(p.conn_id);
    }
    if !to_close.is_empty() {
        // The replaced sockets end their presences (replacement) or find their presence
        // already taken over (reattach), so they never move it into grace.
        let after = if replaced.is_empty() {
            AfterClose::Grace
        } else {
            AfterClose::End
        };
        let event = MeshEvent::Close {
            conn_ids: to_close,
            code: codes::SESSION_REPLACED.code,
            reason: codes::SESSION_REPLACED.reason.into(),
            after,
        };
        if let Err(e) = node.publish(&mesh_id, event).await {
            warn!(error = %e, "session replacement not published");
        }
    }

    let ack = HelloAck {
        kind: tag::HelloAck,
        presence_id: record.presence_id.clone(),
        member_display_name: v.member.display_name.clone(),
        member_profile: MemberProfile {
            role_tag: v.member.role_tag.clone(),
            groups: v.member.default_groups.clone(),
            message_mode: v
                .member
                .message_mode
                .clone()
                .unwrap_or_else(|| "push".into()),
        },
        restored: restored.as_ref().map(|r| Restored {
            restored: true,
            last_summary: r.summary.clone(),
            last_seen_at: ids::iso8601_ms(r.last_seen_at),
            restored_groups: r.groups.clone(),
            restored_stats: r.stats.clone(),
        }),
        req_id: req_id.map(str::to_string),
    };
    s.reply(protocol::encode(&ack));
    node.metrics
        .handshake_seconds
        .observe(s.opened.elapsed().as_secs_f64());
    handle.open_gate(node.config.held_queue_bytes);

    if !node.is_accepting() || node.healing.load(std::sync::atomic::Ordering::SeqCst) {
        // Shutdown (or a heal) began during this handshake: this socket missed the
        // closing round.
        let _ = handle.control.send(Control::Close {
            code: codes::GOING_AWAY.code,
            reason: codes::GOING_AWAY.reason.into(),
            after: AfterClose::Grace,
        });
    }

    if previous.is_none() {
        // The whole mesh, only for a new presence, and from the cache.
        let to = join_leave_recipients(&mesh_presences(&node, &mesh_id).await, &record);
        let pubkey = record.routing_key().to_string();
        match &restored {
            Some(r) => {
                let returned = SystemEvent::PeerReturned(PeerReturned {
                    groups: record.groups.clone(),
                    last_seen_at: ids::iso8601_ms(r.last_seen_at),
                    name: record.display_name.clone(),
                    pubkey: pubkey.clone(),
                    summary: r.summary.clone(),
                });
                announce(&node, &mesh_id, to, returned).await;
            }
            None => {
                let joined = SystemEvent::PeerJoined(PeerJoined {
                    groups: record.groups.clone(),
                    name: record.display_name.clone(),
                    pubkey: pubkey.clone(),
                });
                announce(&node, &mesh_id, to, joined).await;
            }
        }
        node.audit(
            &mesh_id,
            "peer_joined",
            Some(&v.member.id),
            json!({"pubkey": pubkey, "groups": record.groups, "restored": restored.is_some(), "role": record.peer_role.as_str()}),
        );
    } else {
        debug!(presence_id = %record.presence_id, "reattached");
    }
    // This replica's listing of the mesh changed (a new presence, or one back from grace).
    node.presence_cache.invalidate(&mesh_id);

    if previous.is_none() {
        // Its member's offline persistent MCP registrations come back (extensions §14).
        crate::service::mcp_registry::member_returned(
            &crate::service::ServiceCtx::new(&node),
            &record,
        )
        .await;
    }

    // The caller drains next: a new connection takes over whatever its member's earlier
    // connections had claimed.
    Ok(Attached {
        handle,
        principal: crate::service::Principal::from_presence(v.mesh, v.member, &record),
        record,
        unacked: HashMap::new(),
    })
}

/// Ends the presence `presence_id` held by the connection `conn_id`, after its socket
/// ended: into lease grace, or for good.
pub(super) async fn detach(
    node: &Arc<Node>,
    conn_id: &str,
    mesh_id: &str,
    presence_id: &str,
    after: AfterClose,
) {
    let node = node.clone();
    let (mesh_id, presence_id) = (mesh_id.to_string(), presence_id.to_string());
    node.hub.remove(&mesh_id, conn_id);
    node.sync_subscription(&mesh_id).await;
    match after {
        AfterClose::Grace => {
            let until = now_ms() + node.config.lease_grace.as_millis() as i64;
            match node
                .presence
                .release(&mesh_id, &presence_id, conn_id, until)
                .await
            {
                Ok(true) => {
                    node.presence_cache.invalidate(&mesh_id);
                    // Peer requests waiting on this socket fail at once (extensions §13, §14).
                    crate::service::mcp_registry::socket_closed(
                        &crate::service::ServiceCtx::new(&node),
                        &mesh_id,
                        &presence_id,
                    )
                    .await;
                    spawn_grace_timer(node, mesh_id, presence_id)
                }
                Ok(false) => debug!("presence was taken over by another connection"),
                Err(e) => warn!(error = %e, "presence release failed"),
            }
        }
        AfterClose::End => match node.presence.remove(&mesh_id, &presence_id, conn_id).await {
            Ok(Some(record)) => end_presence(&node, record).await,
            Ok(None) => {}
            Err(e) => warn!(error = %e, "presence removal failed"),
        },
    }
}

/// Held-frame flush and drain bookkeeping used by status changes.
pub(super) fn take_held(handle: &SessionHandle) -> Vec<bytes::Bytes> {
    handle.held.lock().unwrap_or_else(|p| p.into_inner()).take()
}

impl Session {
    /// After a bus outage or a Redis data loss: restore this connection's presence record
    /// (the backend may have lost it) unless another connection took it over meanwhile,
    /// then drain the queue for doorbells that were lost. Reports itself done to the
    /// re-sync, which waits for every session before the replica counts as re-synced.
    pub(super) async fn resync(
        &mut self,
        owners: Option<Arc<std::collections::HashMap<String, String>>>,
    ) -> Option<AfterClose> {
        let after = self.resync_presence(owners).await;
        self.node.resync_done(&self.conn_id);
        after
    }

    async fn resync_presence(
        &mut self,
        owners: Option<Arc<std::collections::HashMap<String, String>>>,
    ) -> Option<AfterClose> {
        let node = self.node.clone();
        let a = &self.attached;
        // A ban issued while the bus was down could not reach this socket. The member rows
        // come from the mesh's cache, which the re-sync emptied first.
        if let Ok(members) = node.mesh_members(&a.principal.mesh.id).await
            && members
                .iter()
                .any(|m| m.id == a.principal.member.id && m.revoked_at.is_some())
        {
            self.out.close(codes::BANNED.code, codes::BANNED.reason);
            return Some(AfterClose::End);
        }
        let owner = match owners {
            Some(owners) => owners.get(&a.record.presence_id).cloned(),
            None => match node.presence.list_for_resync(&a.principal.mesh.id).await {
                Ok(records) => records
                    .into_iter()
                    .find(|r| r.presence_id == a.record.presence_id)
                    .map(|r| r.conn_id),
                Err(e) => {
                    warn!(error = %e, "resync: presence unavailable");
                    return None;
                }
            },
        };
        match owner {
            Some(conn_id) if conn_id != self.conn_id => {
                // Replaced while the bus was down: the replacement's close never reached us.
                self.out
                    .close(codes::SESSION_REPLACED.code, codes::SESSION_REPLACED.reason);
                return Some(AfterClose::Grace);
            }
            Some(_) => {}
            None => match node.presence.attach(a.record.clone()).await {
                Ok(_) => announce_return(&node, &a.record).await,
                Err(e) => warn!(error = %e, "resync: presence not restored"),
            },
        }
        self.drain(false).await;
        None
    }
}

/// A presence the re-sync brought back: if it had been ended meanwhile (a survivor reaped
/// it while this replica was cut off, so its peers were told `peer_left`; its saved peer
/// state is newer than its connection), its peers are told `peer_returned`, as an attach
/// tells them of a returning member. A record lost with an emptied Redis, which nobody
/// ended, comes back silently.
async fn announce_return(node: &Arc<Node>, record: &PresenceRecord) {
    let state = match node
        .store
        .peer_state(&record.mesh_id, &record.member_id)
        .await
    {
        Ok(Some(state)) if state.last_seen_at >= record.connected_at => state,
        Ok(_) => {
            debug!(presence_id = %record.presence_id, "resync: presence restored silently");
            return;
        }
        Err(e) => {
            warn!(error = %e, "resync: peer state unavailable; return not announced");
            return;
        }
    };
    let records = node
        .presence
        .list_for_resync(&record.mesh_id)
        .await
        .unwrap_or_default();
    let to = join_leave_recipients(&records, record);
    debug!(presence_id = %record.presence_id, recipients = to.len(), "resync: presence restored, return announced");
    let pubkey = record.routing_key().to_string();
    let returned = SystemEvent::PeerReturned(PeerReturned {
        groups: record.groups.clone(),
        last_seen_at: ids::iso8601_ms(state.last_seen_at),
        name: record.display_name.clone(),
        pubkey: pubkey.clone(),
        summary: state.summary.clone(),
    });
    announce(node, &record.mesh_id, to, returned).await;
    node.audit(
        &record.mesh_id,
        "peer_joined",
        Some(&record.member_id),
        json!({"pubkey": pubkey, "groups": record.groups, "restored": true, "role": record.peer_role.as_str(), "resync": true}),
    );
}
