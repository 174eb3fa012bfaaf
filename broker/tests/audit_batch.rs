//! The audit buffer (`AUDIT_BUFFER`, `AUDIT_BATCH_MAX`, `AUDIT_FLUSH_MS`): appends in
//! batches keep one verifiable chain with one `message_sent` entry per acked send, across
//! two brokers on one database, and a clean stop writes out what is still buffered.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::*;
use serde_json::json;

async fn message_sent_rows(db: &tokio_postgres::Client, mesh: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM audit_log WHERE mesh_id = $1 AND event_type = 'message_sent'",
        &[&mesh],
    )
    .await
    .unwrap()
    .get(0)
}

/// Concurrent sends through two brokers, each appending small batches: the chain
/// verifies and holds one `message_sent` per acked send (audit_query finds them all).
#[tokio::test]
async fn batched_appends_from_two_brokers_keep_one_chain_with_every_send() {
    let url = pg::fresh_db().await;
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("BROKER_SEND_BURST", "0"),
        ("AUDIT_BATCH_MAX", "5"),
        ("AUDIT_FLUSH_MS", "3"),
    ];
    let b1 = Broker::start(&env);
    let b2 = Broker::start(&env);
    let mesh = b1.create_mesh("audit-batch", None);
    let members: Vec<Member> = (0..6)
        .map(|i| member(&b1, &mesh, &format!("peer{i}"), json!({})))
        .collect();
    let keys: Vec<String> = members.iter().map(|m| m.identity.pubkey.clone()).collect();
    let mut clients = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let broker = if i % 2 == 0 { &b1 } else { &b2 };
        let (c, _) = Client::join(&broker.ws_url(), m.hello(&mesh, json!({}))).await;
        clients.push(c);
    }
    let sends_each = 40;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let next = keys[(i + 1) % 6].clone();
            tokio::spawn(async move {
                for n in 0..sends_each {
                    // Direct messages to the next peer, and a broadcast now and then.
                    let target = if n % 10 == 0 {
                        "*".to_string()
                    } else {
                        next.clone()
                    };
                    let ack = c.send_msg(&target, "low", &format!("m{n}")).await;
                    assert_eq!(ack["type"], "ack", "{ack}");
                }
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let sends = 6 * sends_each;
    let want = 6 + sends;
    let verdict = eventually("every audit entry is written", async || {
        let (status, v) = b2.api("GET", &format!("/api/v1/meshes/{mesh}/audit/verify"), None);
        assert_eq!(status, 200, "{v}");
        (v["entries"].as_i64().unwrap() >= want as i64).then_some(v)
    })
    .await;
    assert_eq!(verdict["valid"], true, "{verdict}");
    assert_eq!(
        verdict["entries"],
        json!(want),
        "6 joins and every send, once"
    );
    let db = pg::connect(&url).await;
    assert_eq!(message_sent_rows(&db, &mesh).await, sends as i64);
    // Batches were appended (the buffer's gauge is back to zero on both).
    for b in [&b1, &b2] {
        assert_eq!(metric(&b.metrics(), "broker_audit_buffered"), 0.0);
        assert_eq!(
            metric(&b.metrics(), "broker_audit_write_failures_total"),
            0.0
        );
    }
    drop(clients);
}

/// With a linger far beyond the test, nothing is appended while the broker runs; a clean
/// stop (SIGTERM, `drain`) still writes every acked send's entry before the process ends.
#[tokio::test]
async fn a_clean_stop_writes_out_the_buffered_audit_events() {
    let url = pg::fresh_db().await;
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("BROKER_SEND_BURST", "0"),
        ("AUDIT_BATCH_MAX", "100000"),
        ("AUDIT_FLUSH_MS", "3600000"),
    ];
    let mut b = Broker::start(&env);
    let mesh = b.create_mesh("audit-stop", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ca, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (_cb, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let sends = 40;
    for n in 0..sends {
        let ack = ca
            .send_msg(&bob.identity.pubkey, "now", &format!("m{n}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let db = pg::connect(&url).await;
    // Still buffered: the batch waits for its hour (or for the stop).
    assert_eq!(message_sent_rows(&db, &mesh).await, 0);
    let buffered = metric(&b.metrics(), "broker_audit_buffered");
    assert!(buffered >= sends as f64, "{buffered} buffered");
    let status = b.terminate();
    assert!(status.success(), "{status:?}\n{}", b.log_text());
    assert_eq!(message_sent_rows(&db, &mesh).await, sends as i64);
    // And the chain the stop wrote verifies (read by a fresh broker).
    let b2 = Broker::start(&env);
    let (_, v) = b2.api("GET", &format!("/api/v1/meshes/{mesh}/audit/verify"), None);
    assert_eq!(v["valid"], true, "{v}");
    assert!(v["entries"].as_i64().unwrap() >= 2 + sends as i64, "{v}");
}
