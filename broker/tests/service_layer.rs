//! The service layer as a second adapter: the operations the WebSocket session calls
//! (`send`, the queue's `drain` and `client_ack`, `list_peers`, presence changes,
//! moderation) are called here in-process, on the dev-mode
//! memory backends (store, presence, bus), without any socket. Each test checks the typed
//! outcome or error, its wire text and metric label, and what the operation left in the
//! store, the presence backend or on the bus.

use std::collections::BTreeMap;
use std::sync::Arc;

use broker::cluster::bus::{MemoryBus, MeshEvent};
use broker::cluster::presence::{MemoryPresence, PeerRole, Presence, PresenceRecord};
use broker::config::Config;
use broker::metrics::Metrics;
use broker::node::Node;
use broker::protocol::Selection;
use broker::protocol::{Priority, Status, codes};
use broker::service::{
    self, Delivery, ModerationError, PresenceChange, Principal, SendError, SendRequest, ServiceCtx,
    Verb, moderation,
};
use broker::store::memory::MemoryStore;
use broker::store::{Claim, Member, Mesh, MeshStore, NewMember, QueueStore, Role};
use tokio::sync::mpsc::UnboundedReceiver;

/// One replica's service context on the memory backends, with the bus's event stream.
struct Fixture {
    ctx: ServiceCtx,
    store: Arc<MemoryStore>,
    presence: Arc<MemoryPresence>,
    node: Arc<Node>,
    bus_events: UnboundedReceiver<(String, MeshEvent)>,
    mesh: Mesh,
}

fn config(overrides: &[(&str, &str)]) -> Config {
    let src: BTreeMap<String, String> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_source(&src).expect("config")
}

async fn fixture(overrides: &[(&str, &str)]) -> Fixture {
    let (sink, bus_events) = tokio::sync::mpsc::unbounded_channel();
    let store = Arc::new(MemoryStore::new());
    let presence = Arc::new(MemoryPresence::new());
    let node = Arc::new(Node::new(
        config(overrides),
        store.clone(),
        presence.clone(),
        Arc::new(MemoryBus::new(sink)),
        Metrics::new(),
    ));
    let mesh = store
        .create_mesh(Mesh {
            id: "mesh-1".into(),
            slug: "team".into(),
            name: "Team".into(),
            owner_user_id: None,
            owner_seed_hex: String::new(),
            owner_pubkey: String::new(),
            root_key: String::new(),
            created_at: 0,
        })
        .await
        .expect("mesh");
    Fixture {
        ctx: ServiceCtx::new(&node),
        store,
        presence,
        node,
        bus_events,
        mesh,
    }
}

fn key(c: char) -> String {
    c.to_string().repeat(64)
}

impl Fixture {
    async fn member(&self, name: &str, pubkey: &str) -> Member {
        self.member_as(name, pubkey, Role::Member).await
    }

    async fn member_as(&self, name: &str, pubkey: &str, role: Role) -> Member {
        self.store
            .add_member(
                &self.mesh.id,
                NewMember {
                    pubkey: pubkey.into(),
                    display_name: name.into(),
                    role,
                    user_id: None,
                    default_groups: vec![],
                    role_tag: None,
                },
            )
            .await
            .expect("member")
    }

    /// A live presence of `member` in the presence backend, and the principal acting
    /// through it.
    async fn online(&self, member: &Member, visible: bool) -> (Principal, PresenceRecord) {
        let record = PresenceRecord {
            presence_id: format!("p-{}", member.display_name),
            mesh_id: self.mesh.id.clone(),
            member_id: member.id.clone(),
            member_pubkey: member.pubkey.clone(),
            session_pubkey: None,
            display_name: member.display_name.clone(),
            session_id: format!("s-{}", member.display_name),
            peer_role: PeerRole::Session,
            node_id: self.node.config.instance_id.clone(),
            conn_id: format!("conn-{}", member.display_name),
            grace_until: None,
            status: Status::Idle,
            summary: None,
            visible,
            groups: vec![],
            profile: Default::default(),
            stats: None,
            pid: None,
            cwd: String::new(),
            hostname: None,
            peer_type: None,
            channel: None,
            model: None,
            connected_at: broker::ids::now_ms(),
            last_pong_at: broker::ids::now_ms(),
        };
        self.presence.attach(record.clone()).await.expect("attach");
        let principal = Principal::from_presence(self.mesh.clone(), member.clone(), &record);
        (principal, record)
    }

    /// What a connection of `member` would be pushed now.
    async fn drain(&self, member: &Member) -> Vec<broker::store::QueuedMessage> {
        self.store
            .claim(Claim {
                mesh_id: &self.mesh.id,
                member_id: &member.id,
                session_key: None,
                all_priorities: true,
                steal: true,
                lease_ms: 30_000,
                now_ms: broker::ids::now_ms(),
                limit: 100,
            })
            .await
            .expect("claim")
    }

    fn rejected(&self, reason: &str) -> u64 {
        let line = format!("broker_messages_rejected_total{{reason=\"{reason}\"}} ");
        self.node
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map(|v| v.trim().parse().expect("a count"))
            .unwrap_or(0)
    }
}

fn message(target: &str, ciphertext: &str, client_id: Option<&str>) -> SendRequest {
    SendRequest {
        target_spec: target.into(),
        priority: Priority::Now,
        nonce: "bm9uY2U".into(),
        ciphertext: ciphertext.into(),
        client_message_id: client_id.map(str::to_string),
    }
}

#[tokio::test]
async fn a_send_to_an_unknown_key_is_no_peer_with_its_wire_text_and_label() {
    let f = fixture(&[]).await;
    let alice = f.member("alice", &key('a')).await;
    let (principal, _) = f.online(&alice, true).await;

    let err = service::send(&f.ctx, &principal, message(&key('f'), "x", None))
        .await
        .expect_err("nobody has that key");
    assert_eq!(err, SendError::NoPeer);
    assert_eq!(err.message(), "no connected peer for target");
    assert_eq!(err.metric_label(), "no_target");
    assert_eq!(f.rejected("no_target"), 1, "the refusal is counted");

    let err = service::send(&f.ctx, &principal, message("not a target", "x", None))
        .await
        .expect_err("not a target spec");
    assert_eq!(err.metric_label(), "invalid");
    assert!(matches!(err, SendError::InvalidTarget(_)), "{err:?}");
}

#[tokio::test]
async fn a_direct_send_is_queued_once_for_the_recipients_drain() {
    let f = fixture(&[]).await;
    let alice = f.member("alice", &key('a')).await;
    let bob = f.member("bob", &key('b')).await;
    let (principal, _) = f.online(&alice, true).await;

    let mut acked = None;
    let outcome = service::send_with(
        &f.ctx,
        &principal,
        message(&bob.pubkey, "c2VjcmV0", Some("c-1")),
        |o| acked = Some(o.message_id.clone()),
    )
    .await
    .expect("queued");
    assert_eq!(
        outcome.delivery,
        Delivery::Queued {
            recipient_member_id: bob.id.clone()
        }
    );
    assert_eq!(
        acked.as_deref(),
        Some(outcome.message_id.as_str()),
        "accepted before returning"
    );
    // A retry with the same client id is the same message.
    let again = service::send(
        &f.ctx,
        &principal,
        message(&bob.pubkey, "c2VjcmV0", Some("c-1")),
    )
    .await
    .expect("idempotent");
    assert_eq!(again.message_id, outcome.message_id);

    let pushed = f.drain(&bob).await;
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    let m = &pushed[0];
    assert_eq!(m.id, outcome.message_id);
    assert_eq!(m.ciphertext, "c2VjcmV0");
    assert_eq!(m.sender_pubkey, alice.pubkey);
    assert_eq!(m.sender_name, "alice");
    assert_eq!(m.client_message_id.as_deref(), Some("c-1"));
    assert!(
        f.drain(&alice).await.is_empty(),
        "nothing for the sender itself"
    );
}

#[tokio::test]
async fn a_broadcast_is_published_to_the_other_presences_only() {
    let mut f = fixture(&[]).await;
    let alice = f.member("alice", &key('a')).await;
    let bob = f.member("bob", &key('b')).await;
    let (principal, _) = f.online(&alice, true).await;
    let (_, bob_record) = f.online(&bob, true).await;
    // As a replica with sockets in the mesh is.
    f.node.bus.subscribe(&f.mesh.id).await.expect("subscribe");

    let outcome = service::send(&f.ctx, &principal, message("*", "aGk", None))
        .await
        .expect("published");
    assert_eq!(outcome.delivery, Delivery::Fanout { presences: 1 });
    let (mesh_id, event) = f.bus_events.try_recv().expect("an event on the bus");
    assert_eq!(mesh_id, f.mesh.id);
    match event {
        MeshEvent::Deliver {
            presence_ids,
            frame,
            ..
        } => {
            assert_eq!(
                &*presence_ids,
                std::slice::from_ref(&bob_record.presence_id)
            );
            let push: serde_json::Value = serde_json::from_slice(&frame).expect("json");
            assert_eq!(push["type"], "push");
            assert_eq!(push["messageId"], outcome.message_id.as_str());
            assert_eq!(push["ciphertext"], "aGk");
        }
        other => panic!("not a delivery: {other:?}"),
    }
}

#[tokio::test]
async fn refusals_carry_the_wire_text_of_the_ack() {
    // The limiter comes first: the refused oversized send takes one of the two tokens.
    let f = fixture(&[("BROKER_SEND_BURST", "2"), ("BROKER_SEND_PER_MIN", "1")]).await;
    let alice = f.member("alice", &key('a')).await;
    let bob = f.member("bob", &key('b')).await;
    let (principal, _) = f.online(&alice, true).await;

    let max = f.node.config.max_message_bytes;
    let err = service::send(
        &f.ctx,
        &principal,
        message(&bob.pubkey, &"x".repeat(max), None),
    )
    .await
    .expect_err("over MAX_MESSAGE_BYTES");
    assert_eq!(
        (err.metric_label(), err.message().as_str()),
        ("too_large", "payload too large")
    );
    service::send(&f.ctx, &principal, message(&bob.pubkey, "x", None))
        .await
        .expect("the burst");
    let err = service::send(&f.ctx, &principal, message(&bob.pubkey, "x", None))
        .await
        .expect_err("over the rate");
    assert_eq!(err, SendError::RateLimited { per_min: 1 });
    assert_eq!(
        err.message(),
        "rate_limit: more than 1 messages per minute, slow down"
    );
    assert_eq!(f.rejected("rate_limit"), 1);
}

#[tokio::test]
async fn a_revoked_sender_is_refused_and_a_grant_blocks_a_dm() {
    let f = fixture(&[]).await;
    let alice = f.member("alice", &key('a')).await;
    let bob = f.member("bob", &key('b')).await;
    let carol = f.member("carol", &key('c')).await;
    let (alice_p, _) = f.online(&alice, true).await;
    let (carol_p, _) = f.online(&carol, true).await;

    // Bob takes no direct messages from carol (alice keeps the default capabilities).
    f.store
        .update_grants(
            &f.mesh.id,
            &bob.id,
            BTreeMap::from([(carol.pubkey.clone(), Some(vec!["read".to_string()]))]),
        )
        .await
        .expect("grants");
    let err = service::send(&f.ctx, &carol_p, message(&bob.pubkey, "x", None))
        .await
        .expect_err("carol lacks dm");
    assert_eq!(err, SendError::Grant);
    assert_eq!(
        err.message(),
        "blocked by recipient grants (sender lacks dm capability)"
    );
    service::send(&f.ctx, &alice_p, message(&bob.pubkey, "x", None))
        .await
        .expect("alice may");

    f.store
        .set_revoked(&f.mesh.id, &alice.id, Some(1))
        .await
        .expect("ban");
    let err = service::send(&f.ctx, &alice_p, message(&bob.pubkey, "x", None))
        .await
        .expect_err("alice is banned");
    assert_eq!(err.error_code(), Some("revoked"));
    assert_eq!(err.metric_label(), "revoked");
    assert_eq!(
        err.message(),
        "You've been removed from \"Team\". Contact the mesh owner to rejoin."
    );
    assert_eq!(f.drain(&bob).await.len(), 1, "only alice's first message");
}

#[tokio::test]
async fn list_peers_and_a_status_change_through_the_service() {
    let f = fixture(&[]).await;
    let alice = f.member("alice", &key('a')).await;
    let bob = f.member("bob", &key('b')).await;
    let (alice_p, mut alice_record) = f.online(&alice, true).await;
    let (bob_p, _) = f.online(&bob, false).await;

    let names = |peers: Vec<PresenceRecord>| {
        let mut n: Vec<String> = peers.into_iter().map(|r| r.display_name).collect();
        n.sort();
        n
    };
    let seen = service::list_peers(&f.ctx, &alice_p).await.expect("list");
    assert_eq!(names(seen), ["alice"], "bob is hidden");
    let seen = service::list_peers(&f.ctx, &bob_p).await.expect("list");
    assert_eq!(names(seen), ["alice", "bob"], "a hidden peer sees itself");

    service::presence::update(
        &f.ctx,
        &alice_p,
        &mut alice_record,
        PresenceChange::Status(Status::Dnd),
    )
    .await
    .expect("status");
    assert_eq!(alice_record.status, Status::Dnd);
    let shared = f.presence.list(&f.mesh.id).await.expect("list");
    let shared = shared
        .iter()
        .find(|r| r.presence_id == alice_p.presence_id)
        .expect("alice's record");
    assert_eq!(
        shared.status,
        Status::Dnd,
        "written to the presence backend"
    );

    let max = f.node.config.max_presence_field_bytes;
    let err = service::presence::update(
        &f.ctx,
        &alice_p,
        &mut alice_record,
        PresenceChange::Summary("s".repeat(max + 1)),
    )
    .await
    .expect_err("over MAX_PRESENCE_FIELD_BYTES");
    assert_eq!(err.code, "field_too_large");
    assert_eq!(
        err.message,
        format!("summary is {} bytes, at most {max} are allowed", max + 1)
    );
    assert_eq!(alice_record.summary, None, "a refusal changes nothing");
}

#[tokio::test]
async fn moderation_is_for_admins_and_a_ban_revokes_and_closes() {
    let mut f = fixture(&[]).await;
    let admin = f.member_as("root", &key('d'), Role::Admin).await;
    let alice = f.member("alice", &key('a')).await;
    let bob = f.member("bob", &key('b')).await;
    let (admin_p, _) = f.online(&admin, true).await;
    let (alice_p, _) = f.online(&alice, true).await;
    let (_, bob_record) = f.online(&bob, true).await;
    f.node.bus.subscribe(&f.mesh.id).await.expect("subscribe");

    let sel = Selection {
        target: Some("bob".into()),
        stale: None,
        all: None,
    };
    let err = moderation::disconnect_or_kick(&f.ctx, &alice_p, true, &sel, |_| {
        panic!("a refused kick answers nothing else")
    })
    .await
    .expect_err("alice is no admin");
    assert_eq!(err, ModerationError::Forbidden { verb: Verb::Kick });
    assert_eq!(
        (err.code(), err.message().as_str()),
        ("forbidden", "only owner or admin can kick")
    );
    assert!(f.bus_events.try_recv().is_err(), "nobody was closed");

    let err = moderation::ban(&f.ctx, &admin_p, "nobody", None, |_| panic!("no ban"))
        .await
        .expect_err("no such member");
    assert_eq!(
        (err.code(), err.message().as_str()),
        ("not_found", "no member matches \"nobody\"")
    );

    let mut replied = None;
    let victim = moderation::ban(&f.ctx, &admin_p, "bob", Some("spam"), |v| {
        replied = Some(v.display_name.clone())
    })
    .await
    .expect("banned");
    assert_eq!(victim.id, bob.id);
    assert_eq!(replied.as_deref(), Some("bob"));
    let row = f.store.member(&f.mesh.id, &bob.id).await.expect("row");
    assert!(row.expect("bob").revoked_at.is_some(), "the row is revoked");
    let close = std::iter::from_fn(|| f.bus_events.try_recv().ok())
        .find_map(|(_, e)| match e {
            MeshEvent::Close { conn_ids, code, .. } => Some((conn_ids, code)),
            _ => None,
        })
        .expect("a close on the bus");
    assert_eq!(
        close,
        (vec![bob_record.conn_id.clone()], codes::BANNED.code)
    );
    // The banned member's next send is refused, through the same function.
    let bob_p = Principal::from_presence(f.mesh.clone(), bob.clone(), &bob_record);
    let err = service::send(&f.ctx, &bob_p, message(&alice.pubkey, "x", None))
        .await
        .expect_err("banned");
    assert_eq!(err.metric_label(), "revoked");

    let bans = moderation::list_bans(&f.ctx, &admin_p).await.expect("bans");
    assert_eq!(
        bans.iter()
            .map(|m| m.display_name.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    moderation::unban(&f.ctx, &admin_p, "bob")
        .await
        .expect("unbanned");
    assert!(
        moderation::list_bans(&f.ctx, &admin_p)
            .await
            .expect("bans")
            .is_empty()
    );
}

#[tokio::test]
async fn the_queue_drains_under_a_lease_and_client_ack_confirms_only_what_was_pushed() {
    use broker::service::queue::{self, AckRequest, DrainRequest};

    let f = fixture(&[]).await;
    let alice = f.member("alice", &key('a')).await;
    let bob = f.member("bob", &key('b')).await;
    let (alice_p, _) = f.online(&alice, true).await;
    let (bob_p, _) = f.online(&bob, true).await;
    let request = |steal| DrainRequest {
        steal,
        all_priorities: true,
        limit: queue::CLAIM_BATCH,
    };
    let ids = |drained: &queue::Drained| {
        drained
            .messages
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>()
    };

    let sent = service::send(&f.ctx, &alice_p, message(&bob.pubkey, "b25l", Some("c-1")))
        .await
        .expect("queued");
    let before = broker::ids::now_ms();
    let first = queue::drain(&f.ctx, &bob_p, request(false))
        .await
        .expect("drained");
    assert_eq!(ids(&first), [sent.message_id.as_str()]);
    assert_eq!(first.messages[0].ciphertext, "b25l");
    assert_eq!(first.messages[0].client_message_id.as_deref(), Some("c-1"));
    let lease = f.node.config.claim_lease.as_millis() as i64;
    assert!(
        first.lease_until >= before + lease,
        "leased for CLAIM_LEASE_MS: {} < {}",
        first.lease_until,
        before + lease
    );
    assert!(!first.more, "one message is not a full batch");
    assert!(
        queue::drain(&f.ctx, &bob_p, request(false))
            .await
            .expect("drained")
            .messages
            .is_empty(),
        "leased: a second drain within the lease returns nothing"
    );
    assert!(
        queue::drain(&f.ctx, &alice_p, request(true))
            .await
            .expect("drained")
            .messages
            .is_empty(),
        "nothing for the sender"
    );
    // A new connection of bob's takes over what the earlier one was pushed.
    let stolen = queue::drain(&f.ctx, &bob_p, request(true))
        .await
        .expect("drained");
    assert_eq!(ids(&stolen), [sent.message_id.as_str()]);

    // A client-id ack with no matching pushed id confirms nothing, even though an
    // undelivered message of bob's has that client id.
    let outcome = queue::client_ack(
        &f.ctx,
        &bob_p,
        AckRequest::ClientId {
            client_id: "c-1",
            pushed: vec![("some-other-id", Some("c-2")), ("no-client-id", None)],
        },
    )
    .await
    .expect("ack");
    assert!(outcome.confirmed.is_empty(), "{outcome:?}");
    assert_eq!(
        ids(&queue::drain(&f.ctx, &bob_p, request(true))
            .await
            .expect("drained")),
        [sent.message_id.as_str()],
        "still undelivered"
    );

    let outcome = queue::client_ack(
        &f.ctx,
        &bob_p,
        AckRequest::ClientId {
            client_id: "c-1",
            pushed: vec![("no-client-id", None), (&sent.message_id, Some("c-1"))],
        },
    )
    .await
    .expect("ack");
    assert_eq!(outcome.confirmed, [sent.message_id.as_str()]);
    for steal in [false, true] {
        assert!(
            queue::drain(&f.ctx, &bob_p, request(steal))
                .await
                .expect("drained")
                .messages
                .is_empty(),
            "confirmed: no drain returns it again (steal: {steal})"
        );
    }

    // By broker id: confirmed for its recipient only.
    let second = service::send(&f.ctx, &alice_p, message(&bob.pubkey, "dHdv", None))
        .await
        .expect("queued");
    let outcome = queue::client_ack(&f.ctx, &alice_p, AckRequest::BrokerId(&second.message_id))
        .await
        .expect("ack");
    assert!(
        outcome.confirmed.is_empty(),
        "not alice's message: {outcome:?}"
    );
    let outcome = queue::client_ack(&f.ctx, &bob_p, AckRequest::BrokerId(&second.message_id))
        .await
        .expect("ack");
    assert_eq!(outcome.confirmed, [second.message_id.as_str()]);
    assert!(
        queue::drain(&f.ctx, &bob_p, request(true))
            .await
            .expect("drained")
            .messages
            .is_empty()
    );
}
