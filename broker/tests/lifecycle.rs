//! Presence lifecycle against the real binary: join/leave events, lease grace, reattach,
//! replacement, restore, stale sockets, slow consumers and shutdown (spec §3.4, §5).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn join_and_leave_events_follow_the_lease_grace() {
    let b = Broker::start(&[("LEASE_GRACE_MS", "300")]);
    let mesh = b.create_mesh("events", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    // Alice's own second control-plane presence does not announce itself to her.
    let (a2, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    a.expect_none(Duration::from_millis(200), is_join_or_leave)
        .await;

    let (bc, _) = Client::join(
        &b.ws_url(),
        bob.hello(&mesh, json!({"groups": [{"name": "ops"}]})),
    )
    .await;
    let joined = a.expect_system("peer_joined").await;
    assert_eq!(joined["eventData"]["name"], "bob");
    assert_eq!(joined["eventData"]["pubkey"], bob.identity.pubkey.as_str());
    assert_eq!(joined["eventData"]["groups"], json!([{"name": "ops"}]));
    assert_eq!(joined["senderPubkey"], "system");
    assert_eq!(joined["priority"], "low");

    bc.close().await;
    let left = a.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "bob");
    a2.close().await;
}

#[tokio::test]
async fn a_session_reattaches_within_grace_silently_and_gets_its_queue() {
    let b = Broker::start(&[("LEASE_GRACE_MS", "5000")]);
    let mesh = b.create_mesh("reattach", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let session = Identity::random();
    let (bc, first) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &session, json!({})),
    )
    .await;
    a.expect_system("peer_joined").await;

    bc.abort();
    // While bob is away, a message for his session waits.
    let ack = a.send_msg(&session.pubkey, "next", "queued-in-grace").await;
    assert_eq!(ack["queued"], true, "{ack}");

    let (mut bc, second) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &session, json!({})),
    )
    .await;
    assert_eq!(
        first["presenceId"], second["presenceId"],
        "same presence after reattach"
    );
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["ciphertext"], "queued-in-grace");
    bc.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;
    a.expect_none(Duration::from_millis(400), is_join_or_leave)
        .await;

    // Reattaching while the old socket is still open replaces that socket.
    let (mut bc2, third) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &session, json!({})),
    )
    .await;
    assert_eq!(third["presenceId"], first["presenceId"]);
    assert_eq!(bc.expect_close().await, close_of(codes::SESSION_REPLACED));
    a.expect_none(Duration::from_millis(400), is_join_or_leave)
        .await;
    // The presence is live on the new socket, not in grace.
    assert_eq!(
        a.send_msg(&session.pubkey, "now", "after-replace").await["queued"],
        true
    );
    assert_eq!(
        bc2.expect_where("push", is_push).await["ciphertext"],
        "after-replace"
    );
}

#[tokio::test]
async fn a_hello_with_the_same_session_id_reattaches_and_replaces_the_open_socket() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("replace", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut old, first) = Client::join(
        &b.ws_url(),
        bob.hello(&mesh, json!({"sessionId": "daemon-1"})),
    )
    .await;
    a.expect_system("peer_joined").await;
    let (_new, second) = Client::join(
        &b.ws_url(),
        bob.hello(&mesh, json!({"sessionId": "daemon-1"})),
    )
    .await;
    assert_eq!(old.expect_close().await, close_of(codes::SESSION_REPLACED));
    assert_eq!(
        first["presenceId"], second["presenceId"],
        "member key + sessionId reattach"
    );
    a.expect_none(Duration::from_millis(300), is_join_or_leave)
        .await;

    // A different session key with the same sessionId is a new presence replacing the old.
    let s1 = Identity::random();
    let s2 = Identity::random();
    let (mut c1, p1) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s1, json!({"sessionId": "cc-1"})),
    )
    .await;
    let (_c2, p2) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s2, json!({"sessionId": "cc-1"})),
    )
    .await;
    assert_ne!(p1["presenceId"], p2["presenceId"]);
    assert_eq!(c1.expect_close().await, close_of(codes::SESSION_REPLACED));
    let peers = eventually("only the new session is listed", async || {
        let peers = a.request(ClientFrame::ListPeers).await;
        let keys: Vec<Value> = peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pubkey"].clone())
            .collect();
        (!keys.contains(&json!(s1.pubkey))).then_some(keys)
    })
    .await;
    assert!(peers.contains(&json!(s2.pubkey)));
}

#[tokio::test]
async fn state_is_restored_after_the_grace_ends() {
    let b = Broker::start(&[("LEASE_GRACE_MS", "200")]);
    let mesh = b.create_mesh("restore", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(
        &b,
        &mesh,
        "bob",
        json!({"defaultGroups": [{"name": "default"}]}),
    );
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, ack) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    assert_eq!(ack["restored"], Value::Null);
    assert_eq!(ack["memberProfile"]["groups"], json!([{"name": "default"}]));
    bc.send(ClientFrame::SetSummary {
        summary: "fixing bugs".into(),
    })
    .await;
    bc.send(join_group("ops", Some("lead"))).await;
    // list_peers is answered after the two frames above: frames are handled in order.
    bc.request(ClientFrame::ListPeers).await;
    bc.close().await;
    a.expect_system("peer_left").await;

    let (_bc, ack) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    assert_eq!(ack["restored"], true);
    assert_eq!(ack["lastSummary"], "fixing bugs");
    assert_eq!(
        ack["restoredGroups"],
        json!([{"name": "default"}, {"name": "ops", "role": "lead"}])
    );
    assert!(ack["lastSeenAt"].as_str().unwrap().ends_with('Z'));
    let returned = a.expect_system("peer_returned").await;
    assert_eq!(returned["eventData"]["summary"], "fixing bugs");
    let peers = a.request(ClientFrame::ListPeers).await;
    let row = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(
        row["groups"],
        json!([{"name": "default"}, {"name": "ops", "role": "lead"}])
    );
}

#[tokio::test]
async fn a_socket_that_never_answers_pings_is_terminated() {
    let b = Broker::start(&[
        ("PING_INTERVAL_MS", "100"),
        ("PONG_TIMEOUT_MS", "400"),
        ("LEASE_GRACE_MS", "100"),
    ]);
    let mesh = b.create_mesh("stale", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    // Bob's client never reads again, so it never answers a ping.
    let (_silent, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    a.expect_system("peer_joined").await;
    let left = a.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "bob");
    // Alice keeps reading, answers pings, and stays.
    let peers = a.request(ClientFrame::ListPeers).await;
    assert_eq!(peers["peers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let b = Broker::start(&[
        ("BROKER_SEND_BURST", "0"),
        ("OUTBOUND_QUEUE_BYTES", "262144"),
    ]);
    let mesh = b.create_mesh("slow", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut slow, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let chunk = "z".repeat(60_000);
    // Far more than the kernel's socket buffers plus the 256 KiB queue.
    for _ in 0..400 {
        let ack = a.send_msg("*", "now", &chunk).await;
        assert_eq!(ack["queued"], true);
        if b.metrics().contains("broker_slow_consumer_closes_total 1") {
            break;
        }
    }
    eventually("the slow consumer is counted", async || {
        b.metrics()
            .contains("broker_slow_consumer_closes_total 1")
            .then_some(())
    })
    .await;
    // Once bob reads again he finds the broadcasts that fit, then the close.
    assert_eq!(slow.expect_close().await, close_of(codes::SLOW_CONSUMER));
}

#[tokio::test]
async fn sigterm_closes_sockets_going_away_and_exits() {
    let mut b = Broker::start(&[
        ("SHUTDOWN_DRAIN_MS", "300"),
        ("SHUTDOWN_DEADLINE_MS", "5000"),
    ]);
    let mesh = b.create_mesh("shutdown", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let addr = b.addr;
    let status = tokio::task::spawn_blocking(move || {
        let status = b.terminate();
        (status, b)
    });
    assert_eq!(a.expect_close().await, close_of(codes::GOING_AWAY));
    assert_eq!(bc.expect_close().await, close_of(codes::GOING_AWAY));
    let (status, _b) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed"
    );
}
