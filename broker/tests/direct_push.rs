//! Direct messages pushed without a claim (issue 16, item 1): the doorbell carries the
//! committed message and the recipient's replica pushes it at once, then records the lease.
//! Against two real replicas, PostgreSQL and Redis: no claim on the normal path, no loss
//! when the pushing replica dies before the `client_ack`, no duplicate when a doorbell
//! races a drain.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::cluster::Cluster;
use common::pg;
use common::*;
use serde_json::{Value, json};

const DOORBELL: &str = r#"broker_direct_pushes_total{path="doorbell"}"#;
const CLAIM: &str = r#"broker_direct_pushes_total{path="claim"}"#;

fn send_with_client_id(target: &str, ciphertext: &str, client_id: &str) -> ClientFrame {
    ClientFrame::Send(Box::new(broker::protocol::Send {
        client_message_id: Some(client_id.to_string()),
        ..send_body(target, Priority::Now, ciphertext)
    }))
}

/// Leased (`claimed_until` in the future) undelivered rows.
async fn leased_rows(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM message_queue WHERE delivered_at IS NULL AND claimed_until > $1",
        &[&now_ms()],
    )
    .await
    .unwrap()
    .get(0)
}

/// A DM to a recipient online on the other replica is pushed by the doorbell alone: the
/// recipient's replica counts only doorbell pushes, no claimed push, and the lease of
/// each pushed message is recorded after the push (hidden from other claims until its
/// `client_ack`, which then removes it).
#[tokio::test]
async fn a_dm_to_a_recipient_on_the_other_replica_is_pushed_without_a_claim() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0"), ("DIRECT_PUSH", "true")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let db = pg::connect(&c.db).await;
    let mesh = a.create_mesh("direct", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;
    // Bob's session answers a request only after its post-attach drain: no claim can race
    // the first doorbell below.
    bc.request(json!({"type": "list_peers"})).await;

    let mut sent = Vec::new();
    for i in 0..20 {
        let ack = ac
            .send_msg(&bob.identity.pubkey, "now", &format!("m{i}"))
            .await;
        assert_eq!(ack["queued"], true, "{ack}");
        let push = bc.expect_where("push", is_push).await;
        assert_eq!(push["messageId"], ack["messageId"], "in send order");
        assert_eq!(push["ciphertext"], format!("m{i}"));
        sent.push(ack["messageId"].as_str().unwrap().to_string());
    }
    let m = b.metrics();
    assert_eq!(metric(&m, DOORBELL), 20.0, "{m}");
    assert_eq!(metric(&m, CLAIM), 0.0, "no push came from a claim: {m}");

    eventually(
        "the leases of the pushed messages are recorded",
        async || (leased_rows(&db).await == 20).then_some(()),
    )
    .await;
    for id in &sent {
        bc.send(client_ack(id)).await;
    }
    eventually("the confirmed messages leave the queue", async || {
        let left: i64 = db
            .query_one("SELECT count(*) FROM message_queue", &[])
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    // Nothing is pushed again once its lease would have ended.
    bc.expect_none(Duration::from_millis(300), is_push).await;
}

/// A message pushed by doorbell whose replica is SIGKILLed before the recipient's
/// `client_ack` is not lost: the recipient reconnects to the survivor and gets it again
/// (from PostgreSQL, by claim), and the survivor gets the next message by doorbell.
#[tokio::test]
async fn a_doorbell_push_unconfirmed_when_its_replica_dies_is_delivered_again_on_the_survivor() {
    let c = Cluster::new(&[
        ("BROKER_SEND_BURST", "0"),
        ("DIRECT_PUSH", "true"),
        ("CLAIM_LEASE_MS", "2000"),
    ])
    .await;
    let a = c.replica("a");
    let b = c.replica("b");
    let db = pg::connect(&c.db).await;
    let mesh = a.create_mesh("direct-kill", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;
    // After bob's post-attach drain (his session answers only after it).
    bc.request(json!({"type": "list_peers"})).await;

    let ack = ac.send_msg(&bob.identity.pubkey, "now", "in-flight").await;
    assert_eq!(ack["queued"], true, "{ack}");
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], ack["messageId"]);
    assert_eq!(metric(&b.metrics(), DOORBELL), 1.0);
    // Killed after the push and the recorded lease, before any client_ack.
    eventually("the lease is recorded", async || {
        (leased_rows(&db).await == 1).then_some(())
    })
    .await;
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(b.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    bc.expect_gone().await;

    let (mut bc, _) = Client::join(&a.ws_url(), bob.hello(&mesh, json!({}))).await;
    let again = bc.expect_where("push", is_push).await;
    assert_eq!(again["messageId"], ack["messageId"], "{again}");
    assert_eq!(again["ciphertext"], "in-flight");
    assert_eq!(metric(&a.metrics(), CLAIM), 1.0);
    bc.send(client_ack(again["messageId"].as_str().unwrap()))
        .await;

    let next = ac.send_msg(&bob.identity.pubkey, "now", "after").await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], next["messageId"]);
    assert_eq!(metric(&a.metrics(), DOORBELL), 1.0);
    // The confirmed one is never pushed again, even after its lease.
    bc.expect_none(Duration::from_millis(2500), |v| {
        is_push(v) && v["messageId"] == ack["messageId"]
    })
    .await;
}

/// A doorbell racing a drain of the same connection pushes nothing twice: the recipient
/// connects while messages are being sent (some claimed by its first drain, some carried
/// by doorbells, some both), and retried sends ring plain doorbells whose claims find rows
/// the connection was already pushed. Each message arrives exactly once.
#[tokio::test]
async fn a_doorbell_racing_a_drain_pushes_each_message_once() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0"), ("DIRECT_PUSH", "true")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("direct-race", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    const N: usize = 150;

    let sending = async {
        let mut ids = Vec::new();
        for i in 0..N {
            let client_id = format!("c{i}");
            let frame = send_with_client_id(&bob.identity.pubkey, &format!("m{i}"), &client_id);
            let ack = ac.request(frame.clone()).await;
            assert_eq!(ack["queued"], true, "{ack}");
            if i % 10 == 0 {
                // A retry: answered with the first id, and a doorbell without the message.
                let retry = ac.request(frame).await;
                assert_eq!(retry["messageId"], ack["messageId"], "{retry}");
            }
            ids.push(ack["messageId"].as_str().unwrap().to_string());
        }
        ids
    };
    let joining = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Client::join(&b.ws_url(), bob.hello(&mesh, json!({})))
            .await
            .0
    };
    let (ids, mut bc) = tokio::join!(sending, joining);

    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < N {
        let push = bc.expect_where("push", is_push).await;
        *seen
            .entry(push["messageId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Well within the lease: nothing more may come.
    let extra = async {
        let mut extra: Vec<Value> = Vec::new();
        while let Some(Event::Frame(f)) = bc.next_within(Duration::from_millis(500)).await {
            if is_push(&f) {
                extra.push(f);
            }
        }
        extra
    }
    .await;
    assert!(extra.is_empty(), "pushed again: {extra:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pushed twice: {twice:?}");
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "{id} pushed once");
    }
    let m = b.metrics();
    assert_eq!(
        metric(&m, DOORBELL) + metric(&m, CLAIM),
        N as f64,
        "one push per message: {m}"
    );
}
