//! Durability with PostgreSQL: what the broker acknowledged survives SIGKILL of the broker
//! and a restart of PostgreSQL, and the audit chain holds with concurrent writers.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use common::pg::{self, PgCluster};
use common::*;
use serde_json::json;

fn kill9(b: &mut Broker) {
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(b.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn an_acknowledged_message_survives_sigkill_of_the_broker() {
    let url = pg::fresh_db().await;
    let env = [("DATABASE_URL", url.as_str())];
    let mut b = Broker::start(&env);
    let mesh = b.create_mesh("durable", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack = a.send_msg(&bob.identity.pubkey, "next", "kept").await;
    assert_eq!(ack["queued"], true, "{ack}");
    // The store reports its group commits and the broker its schema version.
    let metrics = b.metrics();
    assert!(
        !metrics.contains("broker_store_batch_rows_count 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("broker_store_pool_wait_seconds_count"),
        "{metrics}"
    );
    eventually("the schema version gauge", async || {
        b.metrics()
            .contains(&format!(
                "broker_schema_version {}",
                broker::store::postgres::SCHEMA_VERSION
            ))
            .then_some(())
    })
    .await;
    kill9(&mut b);
    assert!(
        a.next_within(WAIT)
            .await
            .is_some_and(|e| matches!(e, Event::Closed(_)))
    );

    let b2 = Broker::start(&env);
    let (mut bc, _) = Client::join(&b2.ws_url(), bob.hello(&mesh, json!({}))).await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], ack["messageId"]);
    assert_eq!(push["ciphertext"], "kept");
    assert_eq!(push["senderName"], "alice");
    drop(b);
}

#[tokio::test]
async fn an_unacknowledged_push_survives_sigkill_and_comes_back() {
    let url = pg::fresh_db().await;
    let env = [("DATABASE_URL", url.as_str())];
    let mut b = Broker::start(&env);
    let mesh = b.create_mesh("unacked", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let ack = a.send_msg(&bob.identity.pubkey, "now", "pushed-once").await;
    assert_eq!(
        bc.expect_where("push", is_push).await["messageId"],
        ack["messageId"]
    );
    // Bob never sends client_ack: the broker dies with the message pushed, not confirmed.
    kill9(&mut b);

    let b2 = Broker::start(&env);
    let (mut bc, _) = Client::join(&b2.ws_url(), bob.hello(&mesh, json!({}))).await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], ack["messageId"]);
    bc.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;
    // Confirmed now: the next connection gets nothing.
    bc.request(ClientFrame::ListPeers).await;
    bc.close().await;
    let (mut bc, _) = Client::join(&b2.ws_url(), bob.hello(&mesh, json!({}))).await;
    bc.expect_none(Duration::from_millis(400), is_push).await;
}

#[tokio::test]
async fn a_postgres_restart_under_a_running_broker_loses_nothing_acknowledged() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = pg::create_db(&cluster.url("postgres")).await;
    pg::migrate(&url).await;
    let b = Broker::start(&[("DATABASE_URL", url.as_str())]);
    let mesh = b.create_mesh("outage", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let before = a
        .send_msg(&bob.identity.pubkey, "next", "before-outage")
        .await;
    assert_eq!(before["queued"], true);

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    eventually("readiness turns 503", async || {
        matches!(b.try_http("GET", "/health/ready", None, None), Ok((503, _))).then_some(())
    })
    .await;
    let (status, body) = b.try_http("GET", "/health", None, None).unwrap();
    assert_eq!(status, 200, "liveness survives a database outage");
    assert!(body.contains("\"db\":\"down\""), "{body}");
    assert!(b.metrics().contains("broker_db_healthy 0"));
    // A send during the outage is refused, never falsely acknowledged.
    let during = a
        .send_msg(&bob.identity.pubkey, "next", "during-outage")
        .await;
    assert_eq!(during["queued"], false, "{during}");
    assert!(
        during["error"].as_str().unwrap().contains("unavailable"),
        "{during}"
    );

    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    eventually("readiness recovers", async || {
        matches!(b.try_http("GET", "/health/ready", None, None), Ok((200, _))).then_some(())
    })
    .await;
    let after = a
        .send_msg(&bob.identity.pubkey, "next", "after-outage")
        .await;
    assert_eq!(after["queued"], true, "{after}");

    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let first = bc.expect_where("push", is_push).await;
    let second = bc.expect_where("push", is_push).await;
    assert_eq!(
        (first["ciphertext"].as_str(), second["ciphertext"].as_str()),
        (Some("before-outage"), Some("after-outage"))
    );
    bc.expect_none(Duration::from_millis(300), is_push).await;
}

#[tokio::test]
async fn concurrent_audit_writers_on_two_brokers_keep_one_chain() {
    let url = pg::fresh_db().await;
    let env = [("DATABASE_URL", url.as_str()), ("BROKER_SEND_BURST", "0")];
    let b1 = Broker::start(&env);
    let b2 = Broker::start(&env);
    let mesh = b1.create_mesh("audit", None);
    let mut clients = Vec::new();
    for i in 0..6 {
        let m = member(&b1, &mesh, &format!("peer{i}"), json!({}));
        let broker = if i % 2 == 0 { &b1 } else { &b2 };
        let (c, _) = Client::join(&broker.ws_url(), m.hello(&mesh, json!({}))).await;
        clients.push(c);
    }
    let sends_each = 15;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                for i in 0..sends_each {
                    let ack = c.send_msg("*", "low", &format!("b{i}")).await;
                    assert_eq!(ack["queued"], true);
                }
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // 6 joins and 90 sends, written off the send path by two processes.
    let want = 6 + 6 * sends_each;
    let verdict = eventually("every audit entry is written", async || {
        let (status, v) = b2.api("GET", &format!("/api/v1/meshes/{mesh}/audit/verify"), None);
        assert_eq!(status, 200, "{v}");
        (v["entries"] == json!(want)).then_some(v)
    })
    .await;
    assert_eq!(verdict["valid"], true, "{verdict}");
    assert!(verdict.get("brokenAt").is_none());

    // Altering one row by hand is reported as the break point.
    let db = pg::connect(&url).await;
    db.execute(
        "UPDATE audit_log SET payload = '{\"targetSpec\":\"@x\"}' WHERE mesh_id = $1 AND seq = 40",
        &[&mesh],
    )
    .await
    .unwrap();
    let (_, v) = b1.api("GET", &format!("/api/v1/meshes/{mesh}/audit/verify"), None);
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["brokenAt"], 40);
    drop(clients);
}

#[tokio::test]
async fn the_broker_refuses_an_unmigrated_database() {
    let url = pg::create_db(&pg::admin_url()).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("BROKER_PORT", "0")
        .env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run the migrator"), "{stderr}");
}

#[tokio::test]
async fn readiness_honours_expected_migration() {
    let url = pg::fresh_db().await;
    let b = Broker::start(&[("DATABASE_URL", url.as_str()), ("EXPECTED_MIGRATION", "1")]);
    assert_eq!(
        b.try_http("GET", "/health/ready", None, None).unwrap().0,
        200
    );
    drop(b);
    // A pin newer than the database: the replica runs but is not ready.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_broker"));
    cmd.env_clear()
        .env("DATABASE_URL", &url)
        .env(
            "EXPECTED_MIGRATION",
            (broker::store::postgres::SCHEMA_VERSION + 1).to_string(),
        )
        .env("BROKER_PORT", "0")
        .env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = eventually("the broker answers", async || {
        http(addr, "GET", "/health/ready", None, None).ok()
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("EXPECTED_MIGRATION"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

/// PostgreSQL killed (`-m immediate`) while sends are being committed: no send answered
/// as refused is ever delivered (a commit whose outcome the broker could not learn is
/// answered "outcome unknown", not refused), and retries with the same
/// `client_message_id` (after an unknown outcome, or even after a success) answer the
/// original `messageId` and deliver exactly once.
#[tokio::test]
async fn a_postgres_crash_mid_commit_reports_no_delivered_send_as_refused() {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = pg::create_db(&cluster.url("postgres")).await;
    pg::migrate(&url).await;
    let b = Broker::start(&[("DATABASE_URL", url.as_str()), ("BROKER_SEND_BURST", "0")]);
    let mesh = b.create_mesh("crash", None);
    let bob = member(&b, &mesh, "bob", json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..8 {
        let sender = member(&b, &mesh, &format!("sender{k}"), json!({}));
        let (mut c, _) = Client::join(&b.ws_url(), sender.hello(&mesh, json!({}))).await;
        let (stop, acked, target) = (stop.clone(), acked.clone(), bob.identity.pubkey.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let cid = format!("s{k}-{i}");
                i += 1;
                let reply = c
                    .request(ClientFrame::Send(Box::new(broker::protocol::Send {
                        client_message_id: Some(cid.clone()),
                        ..send_body(&target, Priority::Now, &cid)
                    })))
                    .await;
                if reply["queued"] == true {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                outcomes.push((cid, reply));
            }
            (c, outcomes)
        }));
    }
    eventually("sends are flowing", async || {
        (acked.load(Ordering::Relaxed) >= 200).then_some(())
    })
    .await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_immediate();
        cluster
    })
    .await
    .unwrap();
    eventually("readiness turns 503", async || {
        matches!(b.try_http("GET", "/health/ready", None, None), Ok((503, _))).then_some(())
    })
    .await;
    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    eventually("readiness recovers", async || {
        matches!(b.try_http("GET", "/health/ready", None, None), Ok((200, _))).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    // cid → messageId of every send that must be delivered once; cids that must not be.
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut refused = Vec::new();
    let mut unknown = 0;
    for t in tasks {
        let (mut c, outcomes) = t.await.unwrap();
        for (n, (cid, reply)) in outcomes.into_iter().enumerate() {
            let error = reply["error"].as_str().unwrap_or_default().to_string();
            let retry = if reply["queued"] == true {
                // Every tenth success is retried too: it must answer the same id.
                n % 10 == 0
            } else if error.contains("outcome unknown") {
                unknown += 1;
                true
            } else {
                assert!(error.contains("unavailable"), "{reply}");
                refused.push(cid.clone());
                false
            };
            if reply["queued"] == true {
                expected.insert(cid.clone(), reply["messageId"].as_str().unwrap().into());
            }
            if retry {
                let again = c
                    .request(ClientFrame::Send(Box::new(broker::protocol::Send {
                        client_message_id: Some(cid.clone()),
                        ..send_body(&bob.identity.pubkey, Priority::Now, &cid)
                    })))
                    .await;
                assert_eq!(again["queued"], true, "retry of {cid}: {again}");
                let id = again["messageId"].as_str().unwrap().to_string();
                if let Some(first) = expected.get(&cid) {
                    assert_eq!(
                        &id, first,
                        "a retry of {cid} answers the original messageId"
                    );
                }
                expected.insert(cid, id);
            }
        }
    }
    assert!(!refused.is_empty(), "the outage refused some sends");
    eprintln!(
        "{} to deliver, {} refused, {unknown} with an unknown outcome",
        expected.len(),
        refused.len()
    );

    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let mut delivered: HashMap<String, Vec<String>> = HashMap::new();
    while let Some(Event::Frame(v)) = bc.next_within(Duration::from_secs(1)).await {
        if !is_push(&v) {
            continue;
        }
        let id = v["messageId"].as_str().unwrap().to_string();
        bc.send(client_ack(&id)).await;
        delivered
            .entry(v["ciphertext"].as_str().unwrap().to_string())
            .or_default()
            .push(id);
    }
    for cid in &refused {
        assert!(
            !delivered.contains_key(cid),
            "{cid} was answered as refused but delivered (unknown outcomes: {unknown})"
        );
    }
    for (cid, id) in &expected {
        assert_eq!(
            delivered.get(cid),
            Some(&vec![id.clone()]),
            "{cid} is delivered exactly once, as {id}"
        );
    }
    assert_eq!(delivered.len(), expected.len(), "nothing else is delivered");
}
