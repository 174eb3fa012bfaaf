//! The drop guard of the session task (see [`Session`]'s `Drop`).

use super::Session;
use crate::cluster::bus::AfterClose;

/// The drop guard of an attached session: a session task that ends without detaching
/// (it panicked, or its future was dropped mid-await) must leave no ghost presence, so
/// the drop closes the socket and runs the detach (into grace) on a task of its own.
/// After a normal end the detach has begun (`detached`) and this does nothing.
impl Drop for Session {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        self.kill.cancel();
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.node.metrics.connections_active.dec();
        let node = self.node.clone();
        let conn_id = std::mem::take(&mut self.conn_id);
        let mesh_id = self.attached.principal.mesh.id.clone();
        let presence_id = self.attached.record.presence_id.clone();
        tracing::warn!(conn_id = %conn_id, "session task ended without detaching; detaching now");
        self.node.tracker.spawn(async move {
            super::events::detach(&node, &conn_id, &mesh_id, &presence_id, AfterClose::Grace).await;
        });
    }
}

#[cfg(test)]
mod tests {
    //! A panic cannot be provoked honestly from outside the binary (every handler is
    //! total over client input), so the guard is tested here: a session task that panics
    //! while attached leaves its presence in grace, not live.

    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;
    use std::sync::atomic::AtomicI64;
    use std::time::Instant;

    use serde_json::Map;
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::super::{Attached, Session};
    use crate::cluster::bus::MemoryBus;
    use crate::cluster::presence::{MemoryPresence, PeerRole, Presence, PresenceRecord};
    use crate::config::Config;
    use crate::hub::{Held, SessionHandle};
    use crate::metrics::Metrics;
    use crate::node::Node;
    use crate::outbound::Outbound;
    use crate::protocol::Status;
    use crate::service::{Principal, ServiceCtx};
    use crate::store::memory::MemoryStore;
    use crate::store::{Member, Mesh, Role};

    fn record(conn_id: &str) -> PresenceRecord {
        PresenceRecord {
            presence_id: "p1".into(),
            mesh_id: "m1".into(),
            member_id: "u1".into(),
            member_pubkey: "k".repeat(64),
            session_pubkey: None,
            display_name: "alice".into(),
            session_id: "s1".into(),
            peer_role: PeerRole::Session,
            node_id: "n".into(),
            conn_id: conn_id.into(),
            grace_until: None,
            status: Status::Idle,
            summary: None,
            visible: true,
            groups: vec![],
            profile: Map::new(),
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
    async fn a_session_task_that_panics_while_attached_leaves_no_live_presence() {
        let config = Config::from_source(&BTreeMap::<String, String>::new()).expect("defaults");
        let (sink, _events) = tokio::sync::mpsc::unbounded_channel();
        let presence = Arc::new(MemoryPresence::new());
        let node = Arc::new(Node::new(
            config,
            Arc::new(MemoryStore::new()),
            presence.clone(),
            Arc::new(MemoryBus::new(sink)),
            Metrics::new(),
        ));
        let conn_id = node.next_conn_id();
        let record = record(&conn_id);
        presence.attach(record.clone()).await.expect("attach");
        let (out, _out_rx) = Outbound::new(
            1 << 20,
            node.metrics.outbound_queue_bytes.clone(),
            node.metrics.slow_consumer_closes.clone(),
            node.metrics.ws_pongs_coalesced.clone(),
        );
        let control = crate::hub::ControlQueue::default();
        let handle = Arc::new(SessionHandle {
            conn_id: conn_id.clone(),
            mesh_id: "m1".into(),
            presence_id: "p1".into(),
            member_id: "u1".into(),
            session_key: None,
            pid: None,
            cwd: String::new(),
            out: out.clone(),
            control,
            drain: Notify::new(),
            status: std::sync::Mutex::new(Status::Idle),
            held: std::sync::Mutex::new(Held::default()),
            gate: std::sync::Mutex::new(None),
            direct: Default::default(),
        });
        let mesh = Mesh {
            id: "m1".into(),
            slug: "m".into(),
            name: "m".into(),
            owner_user_id: None,
            owner_seed_hex: String::new(),
            owner_pubkey: String::new(),
            root_key: String::new(),
            created_at: 0,
        };
        let member = Member {
            id: "u1".into(),
            mesh_id: "m1".into(),
            pubkey: "k".repeat(64),
            display_name: "alice".into(),
            role: Role::Member,
            user_id: None,
            revoked_at: None,
            peer_grants: BTreeMap::new(),
            default_groups: vec![],
            role_tag: None,
            message_mode: None,
            created_at: 0,
        };
        let session = Session {
            svc: ServiceCtx::new(&node),
            node: node.clone(),
            conn_id,
            out,
            kill: CancellationToken::new(),
            closing: CancellationToken::new(),
            last_pong: Arc::new(AtomicI64::new(0)),
            attached: Attached {
                handle,
                principal: Principal::from_presence(mesh, member, &record),
                record,
                unacked: HashMap::new(),
            },
            detached: false,
        };
        let kill = session.kill.clone();

        let task = tokio::spawn(async move {
            let _session = session;
            panic!("a handler bug");
        });
        assert!(task.await.expect_err("the task panicked").is_panic());
        assert!(kill.is_cancelled(), "the socket is dropped");
        // The detach runs on a task of its own: await the presence going into grace.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let records = presence.list("m1").await.expect("list");
            assert_eq!(records.len(), 1, "{records:?}");
            if records[0].grace_until.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the presence stays live: {records:?}"
            );
            tokio::task::yield_now().await;
        }
    }
}
