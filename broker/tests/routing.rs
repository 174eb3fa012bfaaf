//! Routing and delivery against the real binary: direct, broadcast and group sends,
//! grants, priority gating, queueing, re-push, order, limits (spec §4).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const NO_RATE_LIMIT: (&str, &str) = ("BROKER_SEND_BURST", "0");

#[tokio::test]
async fn direct_message_is_acked_pushed_and_confirmed() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("direct", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    let ack = a
        .request(ClientFrame::Send(Box::new(broker::protocol::Send {
            id: Some("local-1".into()),
            client_message_id: Some("cm-1".into()),
            ..send_body(&bob.identity.pubkey, Priority::Now, "c2VjcmV0")
        })))
        .await;
    let ack: Ack = parse(&ack);
    assert!(ack.queued, "{ack:?}");
    assert_eq!(ack.id, "local-1", "ack.id is the send's id");
    assert_eq!(ack.error, None);
    let message_id = ack.message_id.to_string();
    assert!(!message_id.is_empty());

    let push: Push = parse(&bc.expect_where("push", is_push).await);
    let created = push.created_at.clone();
    assert!(
        created.ends_with('Z') && created.len() == 24,
        "ISO 8601 with ms: {created}"
    );
    assert_eq!(
        push,
        Push {
            kind: broker::protocol::frames::tag::Push,
            message_id: message_id.clone().into(),
            mesh_id: mesh.clone().into(),
            sender_pubkey: alice.identity.pubkey.clone().into(),
            sender_member_pubkey: alice.identity.pubkey.clone().into(),
            sender_name: "alice".into(),
            priority: Priority::Now,
            nonce: "bm9uY2U=".into(),
            ciphertext: "c2VjcmV0".into(),
            created_at: created,
            client_message_id: Some("cm-1".into()),
            subtype: None,
        }
    );

    bc.send(client_ack(&message_id)).await;
    // Confirmed: a reconnect of bob does not get it again.
    bc.close().await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    bc.expect_none(Duration::from_millis(400), is_push).await;

    // Without `id`, ack.id is the client_message_id; without both, "".
    let ack = a
        .request(ClientFrame::Send(Box::new(broker::protocol::Send {
            nonce: String::new(),
            client_message_id: Some("cm-2".into()),
            ..send_body(&bob.identity.pubkey, Priority::Next, "x")
        })))
        .await;
    assert_eq!(ack["id"], "cm-2");
    let ack = a.send_msg(&bob.identity.pubkey, "next", "y").await;
    assert_eq!(ack["id"], "");
}

#[tokio::test]
async fn offline_members_get_their_messages_when_they_connect() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("offline", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    let ack = a
        .send_msg(&bob.identity.pubkey, "next", "while-you-were-out")
        .await;
    assert_eq!(ack["queued"], true, "{ack}");
    let stranger = Identity::random();
    let ack = a.send_msg(&stranger.pubkey, "next", "nobody").await;
    assert_eq!(ack["queued"], false);
    assert_eq!(ack["error"], "no connected peer for target");

    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["ciphertext"], "while-you-were-out");
    assert_eq!(push["senderName"], "alice");
}

#[tokio::test]
async fn messages_between_one_pair_arrive_in_send_order() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    let mesh = b.create_mesh("order", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    for i in 0..50 {
        a.send(ClientFrame::Send(Box::new(broker::protocol::Send {
            nonce: String::new(),
            ..send_body(&bob.identity.pubkey, Priority::Next, &format!("m{i}"))
        })))
        .await;
    }
    for i in 0..50 {
        let push = bc.expect_where("push", is_push).await;
        assert_eq!(push["ciphertext"], format!("m{i}"));
        bc.send(client_ack(push["messageId"].as_str().unwrap()))
            .await;
    }
}

#[tokio::test]
async fn unacked_pushes_are_pushed_again_after_the_lease_and_on_reconnect() {
    let b = Broker::start(&[("CLAIM_LEASE_MS", "300")]);
    let mesh = b.create_mesh("repush", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    let id = a.send_msg(&bob.identity.pubkey, "now", "again").await["messageId"].clone();
    let first = bc.expect_where("push", is_push).await;
    assert_eq!(first["messageId"], id);
    // Not acknowledged: the lease runs out and the same message comes back.
    let second = bc.expect_where("push", is_push).await;
    assert_eq!(second["messageId"], id);
    bc.send(client_ack(id.as_str().unwrap())).await;
    bc.expect_none(Duration::from_millis(800), is_push).await;

    // A push that is not acknowledged before the socket drops comes back on reconnect at
    // once, without waiting for the lease.
    let b2 = Broker::start(&[("CLAIM_LEASE_MS", "60000")]);
    let mesh = b2.create_mesh("repush-reconnect", None);
    let alice = member(&b2, &mesh, "alice", json!({}));
    let bob = member(&b2, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b2.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b2.ws_url(), bob.hello(&mesh, json!({}))).await;
    let id = a.send_msg(&bob.identity.pubkey, "now", "unacked").await["messageId"].clone();
    assert_eq!(bc.expect_where("push", is_push).await["messageId"], id);
    bc.abort();
    let (mut bc, _) = Client::join(&b2.ws_url(), bob.hello(&mesh, json!({}))).await;
    assert_eq!(bc.expect_where("push", is_push).await["messageId"], id);
}

#[tokio::test]
async fn broadcast_and_group_fan_out_with_self_skip_and_visibility() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    let mesh = b.create_mesh("fanout", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let dave = member(&b, &mesh, "dave", json!({}));
    let ops = json!({"groups": [{"name": "ops", "role": "lead"}]});
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, ops.clone())).await;
    let (mut a2, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, ops)).await;
    let (mut cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut dc, _) = Client::join(&b.ws_url(), dave.hello(&mesh, json!({}))).await;
    let ack = dc.request(ClientFrame::SetVisible { visible: false }).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["messageId"], "");
    assert_eq!(ack["queued"], false);
    assert_eq!(ack["id"], ack["_reqId"]);

    for target in ["*", "@all"] {
        let ack = a.send_msg(target, "now", target).await;
        assert_eq!(ack["queued"], true);
        assert_eq!(bc.expect_where("push", is_push).await["ciphertext"], target);
        assert_eq!(cc.expect_where("push", is_push).await["ciphertext"], target);
    }
    let ack = a.send_msg("@ops", "now", "ops-only").await;
    assert_eq!(ack["queued"], true);
    assert_eq!(
        bc.expect_where("push", is_push).await["ciphertext"],
        "ops-only"
    );
    cc.expect_none(Duration::from_millis(300), is_push).await;
    // The sender's own other presence and the hidden presence get none of it.
    a2.expect_none(Duration::from_millis(100), is_push).await;
    dc.expect_none(Duration::from_millis(100), is_push).await;

    // Groups change with join_group / leave_group.
    cc.send(join_group("ops", None)).await;
    bc.send(ClientFrame::LeaveGroup { name: "ops".into() })
        .await;
    let peers = cc.request(ClientFrame::ListPeers).await;
    let carol_row = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == "carol")
        .unwrap()
        .clone();
    assert_eq!(carol_row["groups"], json!([{"name": "ops"}]));
    a.send_msg("@ops", "now", "ops-2").await;
    assert_eq!(
        cc.expect_where("push", is_push).await["ciphertext"],
        "ops-2"
    );
    bc.expect_none(Duration::from_millis(300), is_push).await;
}

#[tokio::test]
async fn grants_block_direct_sends_and_skip_broadcast_recipients() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    let mesh = b.create_mesh("grants", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let (status, v) = b.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", bob.id),
        Some(json!({"grants": {alice.identity.pubkey.clone(): ["read"]}})),
    );
    assert_eq!(status, 200, "{v}");
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;

    let ack = a.send_msg(&bob.identity.pubkey, "now", "dm").await;
    assert_eq!(ack["queued"], false);
    assert_eq!(
        ack["error"],
        "blocked by recipient grants (sender lacks dm capability)"
    );
    let ack = a.send_msg("*", "now", "hello all").await;
    assert_eq!(
        ack["queued"], true,
        "blocked recipients are skipped silently"
    );
    assert_eq!(
        cc.expect_where("push", is_push).await["ciphertext"],
        "hello all"
    );
    bc.expect_none(Duration::from_millis(300), is_push).await;
    // No other path leaks it: bob reconnecting gets nothing either.
    bc.close().await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    bc.expect_none(Duration::from_millis(300), is_push).await;
    // Bob can still write to alice: grants are the recipient's.
    assert_eq!(
        bc.send_msg(&alice.identity.pubkey, "now", "reply").await["queued"],
        true
    );

    let metrics = b.metrics();
    assert!(
        metrics.contains(r#"broker_messages_dropped_by_grant_total{cap="dm"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"broker_messages_dropped_by_grant_total{cap="broadcast"} 1"#),
        "{metrics}"
    );

    // An empty list blocks everything; removing the entry restores the defaults.
    b.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", carol.id),
        Some(json!({"grants": {alice.identity.pubkey.clone(): []}})),
    );
    assert_eq!(
        a.send_msg(&carol.identity.pubkey, "now", "x").await["queued"],
        false
    );
    let (_, v) = b.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", carol.id),
        Some(json!({"grants": {alice.identity.pubkey.clone(): null}})),
    );
    assert_eq!(v["grants"], json!({}));
    assert_eq!(
        a.send_msg(&carol.identity.pubkey, "now", "y").await["queued"],
        true
    );
}

#[tokio::test]
async fn busy_presences_get_only_now_until_they_return_to_idle() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    let mesh = b.create_mesh("gating", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    bc.send(ClientFrame::SetStatus {
        status: Status::Working,
    })
    .await;
    eventually("bob is working", async || {
        let peers = a.request(ClientFrame::ListPeers).await;
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["displayName"] == "bob" && p["status"] == "working")
            .then_some(())
    })
    .await;

    a.send_msg(&bob.identity.pubkey, "next", "direct-next")
        .await;
    a.send_msg("*", "low", "broadcast-low").await;
    a.send_msg(&bob.identity.pubkey, "now", "direct-now").await;
    assert_eq!(
        bc.expect_where("push", is_push).await["ciphertext"],
        "direct-now"
    );
    bc.expect_none(Duration::from_millis(300), is_push).await;

    bc.send(ClientFrame::SetStatus {
        status: Status::Idle,
    })
    .await;
    let mut got = vec![
        bc.expect_where("push", is_push).await["ciphertext"]
            .as_str()
            .unwrap()
            .to_string(),
        bc.expect_where("push", is_push).await["ciphertext"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    got.sort();
    assert_eq!(got, vec!["broadcast-low", "direct-next"]);
}

#[tokio::test]
async fn send_limits_rate_size_and_target() {
    let b = Broker::start(&[
        ("BROKER_SEND_BURST", "3"),
        ("BROKER_SEND_PER_MIN", "60"),
        ("MAX_MESSAGE_BYTES", "1024"),
    ]);
    let mesh = b.create_mesh("limits", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    // A send's payload can never exceed MAX_MESSAGE_BYTES without its frame exceeding it
    // too, so the oversized case is the 1009 close below.
    let ack = a.send_msg("bob", "now", "x").await;
    assert_eq!(ack["queued"], false);
    assert!(
        ack["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid targetSpec"),
        "{ack}"
    );
    // The rate limit comes first, so the refused send above took one of the 3 tokens.
    for _ in 0..2 {
        let ack = a.send_msg(&bob.identity.pubkey, "now", "x").await;
        assert_eq!(ack["error"], Value::Null);
    }
    let ack = a.send_msg(&bob.identity.pubkey, "now", "x").await;
    assert!(
        ack["error"].as_str().unwrap().starts_with("rate_limit"),
        "{ack}"
    );
    let metrics = b.metrics();
    for reason in ["invalid", "rate_limit"] {
        assert!(
            metrics.contains(&format!(
                "broker_messages_rejected_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }

    // A frame over MAX_MESSAGE_BYTES closes the socket 1009.
    a.send(ClientFrame::SetSummary {
        summary: "y".repeat(2000),
    })
    .await;
    assert_eq!(a.expect_close().await.0, codes::FRAME_TOO_LARGE.code);
}

#[tokio::test]
async fn unknown_types_malformed_frames_and_req_id_echo() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("misc", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    // Deliberately frames the protocol does not define: raw JSON.
    let err = a.request(json!({"type": "teleport"})).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "unknown_message_type");
    a.send_raw(Message::text("{not json")).await;
    assert_eq!(a.expect("error").await["code"], "malformed");
    a.send_raw(Message::binary(vec![0u8; 4])).await;
    assert_eq!(a.expect("error").await["code"], "malformed");
    let err = a
        .request(json!({"type": "set_status", "status": "sleeping"}))
        .await;
    assert_eq!(err["code"], "malformed");
    // Still usable afterwards.
    let peers = a.request(ClientFrame::ListPeers).await;
    assert_eq!(peers["type"], "peers_list");
}

#[tokio::test]
async fn list_peers_reports_every_field() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("peers", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let session = Identity::random();
    let extra = json!({"hostname": "box", "peerType": "ai", "channel": "cli", "model": "m1", "groups": [{"name": "dev"}]});
    let (mut bc, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &session, extra),
    )
    .await;
    bc.send(ClientFrame::SetSummary {
        summary: "refactoring".into(),
    })
    .await;
    bc.send(ClientFrame::SetStats {
        stats: json!({"messagesIn": 1, "messagesOut": 2, "toolCalls": 3, "uptime": 4, "errors": 0}),
    })
    .await;
    let ack = bc
        .request(ClientFrame::SetProfile(ProfileFields {
            title: Some(json!("Dr")),
            bio: Some(json!("hi")),
            ..ProfileFields::default()
        }))
        .await;
    assert_eq!(ack["type"], "ack");

    let row = eventually("bob's row is complete", async || {
        let peers = a.request(ClientFrame::ListPeers).await;
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["displayName"] == "bob" && p["profile"]["bio"] == "hi")
            .cloned()
    })
    .await;
    assert_eq!(
        row["pubkey"],
        session.pubkey.as_str(),
        "routing key is the session key"
    );
    assert_eq!(row["memberPubkey"], bob.identity.pubkey.as_str());
    assert_eq!(row["status"], "idle");
    assert_eq!(row["summary"], "refactoring");
    assert_eq!(row["groups"], json!([{"name": "dev"}]));
    assert_eq!(row["peerRole"], "session");
    assert_eq!(row["cwd"], "/work/session");
    assert_eq!(row["hostname"], "box");
    assert_eq!(row["peerType"], "ai");
    assert_eq!(row["channel"], "cli");
    assert_eq!(row["model"], "m1");
    assert_eq!(row["stats"]["toolCalls"], 3);
    assert_eq!(row["profile"]["title"], "Dr");
    assert!(row["sessionId"].as_str().unwrap().starts_with("cc-"));
    assert!(row["connectedAt"].as_str().unwrap().ends_with('Z'));
    let peers = a.request(ClientFrame::ListPeers).await;
    let me = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(me["peerRole"], "control-plane");
    assert_eq!(me["summary"], Value::Null);
}

#[tokio::test]
async fn direct_to_a_session_key_reaches_that_session_only() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    let mesh = b.create_mesh("session-direct", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut daemon, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let s1 = Identity::random();
    let (mut sess, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s1, json!({})),
    )
    .await;

    assert_eq!(
        a.send_msg(&s1.pubkey, "now", "for-session").await["queued"],
        true
    );
    let push = sess.expect_where("push", is_push).await;
    assert_eq!(push["ciphertext"], "for-session");
    daemon
        .expect_none(Duration::from_millis(300), is_push)
        .await;

    // A session replies: the recipient sees the session key as sender.
    sess.send_msg(&alice.identity.pubkey, "now", "from-session")
        .await;
    let push = a.expect_where("push", is_push).await;
    assert_eq!(push["senderPubkey"], s1.pubkey.as_str());
    assert_eq!(push["senderMemberPubkey"], bob.identity.pubkey.as_str());
}

#[tokio::test]
async fn an_announced_session_key_cannot_capture_anothers_messages() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    let mesh = b.create_mesh("hijack", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let mallory = member(&b, &mesh, "mallory", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    // Announcing bob's member key as one's session key is refused.
    let mut c = Client::connect(&b.ws_url()).await;
    c.send(mallory.hello(&mesh, json!({"sessionPubkey": bob.identity.pubkey})))
        .await;
    assert_eq!(c.expect("error").await["code"], "bad_session_pubkey");

    // Announcing bob's (proven) session key does not divert messages sent to it.
    let s = Identity::random();
    let (mut m, _) = Client::join(
        &b.ws_url(),
        mallory.hello(&mesh, json!({"sessionPubkey": s.pubkey})),
    )
    .await;
    let (mut bs, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    assert_eq!(
        a.send_msg(&s.pubkey, "now", "for-bob-session").await["queued"],
        true
    );
    assert_eq!(
        bs.expect_where("push", is_push).await["ciphertext"],
        "for-bob-session"
    );
    // And a message to bob's member key, with bob offline, waits for bob.
    assert_eq!(
        a.send_msg(&bob.identity.pubkey, "now", "for-bob").await["queued"],
        true
    );
    m.expect_none(Duration::from_millis(300), is_push).await;
}
