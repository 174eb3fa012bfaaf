//! Reconnect storms and the replica-side presence cache (issue 16, items 5 and 7), against
//! two real replicas sharing PostgreSQL and Redis.
//!
//! - A storm of 1 500 handshakes at one replica with a small `HANDSHAKE_CONCURRENCY`: every
//!   client is admitted or told `overloaded` with a `retryAfterMs` (or a 503 before the
//!   upgrade), never `internal`, and all get in on retry; meanwhile the replica's heartbeat
//!   kept going (the other replica reaped nothing and it never healed).
//! - Broadcasts through the presence cache: a peer that joined on the other replica is
//!   reached as soon as its `peer_joined` was seen, one that left is no longer addressed,
//!   and what no event announces (a group change) is seen within `PRESENCE_CACHE_TTL_MS`.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::protocol::signing;
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// A replica of `cluster` with `extra` settings of its own on top of the cluster's.
fn replica(cluster: &Cluster, node: &str, extra: &[(&str, &str)]) -> Broker {
    let url = cluster.redis.url();
    let mut env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &cluster.db),
        ("REDIS_URL", &url),
        ("BROKER_NODE_ID", node),
        ("HEARTBEAT_INTERVAL_MS", "250"),
        ("NODE_DEAD_AFTER_MS", "2000"),
        ("RUST_LOG", "broker=info"),
    ];
    env.extend(cluster.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env.extend_from_slice(extra);
    Broker::start(&env)
}

/// A hello signed at a timestamp of its own (`ts`), so that many hellos of one member in
/// the same millisecond do not share a signature (the replay guard would refuse them).
fn hello_at(mesh: &str, m: &Member, session_id: &str, ts: i64) -> Value {
    let sig = m
        .identity
        .sign(&signing::hello_text(mesh, &m.id, &m.identity.pubkey, ts));
    m.hello(
        mesh,
        json!({"timestamp": ts, "signature": sig, "sessionId": session_id}),
    )
}

/// How one storm client got in: its socket, and the refusals it saw before.
struct Admitted {
    client: Client,
    refusals: Vec<String>,
}

/// Connects and says hello until admitted, backing off as told. Panics on any refusal
/// other than `overloaded` (with its `retryAfterMs` and close 1013 `try_again_later`) or a
/// 503 before the upgrade.
async fn storm_client(
    url: String,
    mesh: String,
    m: Member,
    session_id: String,
    clock: Arc<std::sync::Mutex<i64>>,
) -> Admitted {
    let mut refusals = Vec::new();
    loop {
        let mut c = match Client::connect_request(url.as_str()).await {
            Ok((c, _)) => c,
            Err(e) => {
                assert!(e.contains("503"), "upgrade refused other than 503: {e}");
                refusals.push("http_503".to_string());
                // The Retry-After header counts whole seconds; back off less, jittered.
                let ms = 200 + rand::random::<u64>() % 400;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
        };
        // Unique per member (one per mesh here) and close to now.
        let ts = {
            let mut last = clock.lock().unwrap();
            *last = (*last + 1).max(now_ms());
            *last
        };
        c.send(hello_at(&mesh, &m, &session_id, ts)).await;
        let reply = loop {
            match c.next_within(Duration::from_secs(20)).await {
                Some(Event::Frame(v)) if v["type"] == "hello_ack" || v["type"] == "error" => {
                    break v;
                }
                Some(Event::Frame(_)) => continue,
                other => panic!("no reply to a storm hello: {other:?}"),
            }
        };
        if reply["type"] == "hello_ack" {
            return Admitted {
                client: c,
                refusals,
            };
        }
        assert_eq!(reply["code"], "overloaded", "refused: {reply}");
        let retry = reply["retryAfterMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("overloaded without retryAfterMs: {reply}"));
        assert_eq!(
            c.expect_close().await,
            (1013, "try_again_later".to_string())
        );
        refusals.push("overloaded".to_string());
        tokio::time::sleep(Duration::from_millis(retry)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handshake_storm_is_admitted_in_turn_or_told_to_retry_never_internal() {
    // Idle sockets the test does not read stay up (no pong timeout during the storm).
    let cluster = Cluster::new(&[
        ("MAX_CONNECTIONS_PER_MESH", "5000"),
        ("PONG_TIMEOUT_MS", "600000"),
    ])
    .await;
    // `a` takes the storm with 8 handshake slots, a short queue and a short wait.
    let a = replica(
        &cluster,
        "a",
        &[
            ("HANDSHAKE_CONCURRENCY", "8"),
            ("HANDSHAKE_QUEUE_MAX", "64"),
            ("HANDSHAKE_QUEUE_WAIT_MS", "300"),
            ("HANDSHAKE_RETRY_AFTER_MS", "250"),
        ],
    );
    let b = replica(&cluster, "b", &[]);
    // 1 500 at once: debug builds verify signatures slowly, and the test signs every retry.
    const MESHES: usize = 15;
    const PER_MESH: usize = 100;
    let mut meshes = Vec::new();
    for i in 0..MESHES {
        let mesh = a.create_mesh(&format!("storm-{i}"), None);
        let m = member(&a, &mesh, &format!("stormer-{i}"), json!({}));
        meshes.push((mesh, m));
    }
    // Witnesses of the first mesh: `w` on `a`, `v` on `b`. Were `a`'s heartbeat starved,
    // `b` would declare it dead and reap its presences: `v` would hear `w` leave.
    let (mesh0, _) = meshes[0].clone();
    let w = member(&a, &mesh0, "witness-a", json!({}));
    let v = member(&a, &mesh0, "witness-b", json!({}));
    let (mut wc, _) = Client::join(&a.ws_url(), w.hello(&mesh0, json!({}))).await;
    let (mut vc, _) = Client::join(&b.ws_url(), v.hello(&mesh0, json!({}))).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mesh, m) in &meshes {
        let clock = Arc::new(std::sync::Mutex::new(0));
        for j in 0..PER_MESH {
            tasks.push(tokio::spawn(storm_client(
                a.ws_url(),
                mesh.clone(),
                m.clone(),
                format!("storm-{j}"),
                clock.clone(),
            )));
        }
    }
    let mut admitted = Vec::new();
    for t in tasks {
        admitted.push(t.await.expect("storm client"));
    }
    let took = started.elapsed();
    let overloaded: usize = admitted
        .iter()
        .map(|a| a.refusals.iter().filter(|r| *r == "overloaded").count())
        .sum();
    let before_upgrade: usize = admitted
        .iter()
        .map(|a| a.refusals.iter().filter(|r| *r == "http_503").count())
        .sum();
    eprintln!(
        "storm: {} admitted in {took:?}; {overloaded} overloaded refusals, {before_upgrade} 503s",
        admitted.len()
    );
    assert_eq!(admitted.len(), MESHES * PER_MESH);
    assert!(
        overloaded + before_upgrade > 0,
        "8 slots and a 300 ms wait must have told some of 1500 clients to retry"
    );
    let metrics = a.metrics();
    assert_eq!(
        metric(
            &metrics,
            "broker_connections_rejected_total{reason=\"internal\"}"
        ),
        0.0,
        "nobody was refused internal"
    );
    assert_eq!(
        metric(&metrics, "broker_handshakes_shed_total{reason=\"wait\"}")
            + metric(
                &metrics,
                "broker_handshakes_shed_total{reason=\"queue_full\"}"
            )
            + metric(&metrics, "broker_handshakes_shed_total{reason=\"upgrade\"}"),
        (overloaded + before_upgrade) as f64
    );
    // Every slot is given back (the last attaches finish just after their hello_ack).
    eventually("every handshake slot given back", async || {
        let m = a.metrics();
        (metric(&m, "broker_handshakes_in_flight") == 0.0
            && metric(&m, "broker_handshakes_waiting") == 0.0)
            .then_some(())
    })
    .await;
    // The heartbeat kept going: nothing of `a` was reaped, `a` never healed, and the
    // witnesses still see each other.
    assert_eq!(metric(&b.metrics(), "broker_presences_reaped_total"), 0.0);
    assert_eq!(
        metric(&metrics, "broker_replica_heals_total{reason=\"reaped\"}")
            + metric(&metrics, "broker_replica_heals_total{reason=\"clock_gap\"}"),
        0.0
    );
    vc.expect_none(Duration::from_millis(300), |f| {
        f["event"] == "peer_left" && f["eventData"]["pubkey"] == json!(w.identity.pubkey)
    })
    .await;
    let ack = wc.send_msg(&v.identity.pubkey, "now", "still here").await;
    assert_eq!(ack["queued"], true, "{ack}");
    assert_eq!(
        vc.expect_where("push", is_push).await["ciphertext"],
        "still here"
    );
    // Every admitted socket is still attached.
    for s in admitted.iter_mut().take(5) {
        let peers = s.client.request(json!({"type": "list_peers"})).await;
        assert_eq!(peers["type"], "peers_list", "{peers}");
    }
}

/// A cluster for the cache tests: `TTL` ms of presence cache, short lease grace.
async fn cache_cluster(ttl: &str) -> (Cluster, Broker, Broker) {
    let cluster = Cluster::new(&[("PRESENCE_CACHE_TTL_MS", ttl), ("LEASE_GRACE_MS", "300")]).await;
    let a = replica(&cluster, "a", &[]);
    let b = replica(&cluster, "b", &[]);
    (cluster, a, b)
}

/// Whether the broadcast `message_id` was addressed to anyone (`message_status`: its
/// delivery status is recorded off the send's path, so it may take a moment to appear).
async fn addressed(c: &mut Client, message_id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .request(json!({"type": "message_status", "messageId": message_id}))
            .await;
        if r["type"] == "message_status_result" {
            return r["delivered"].as_bool().expect("delivered");
        }
        assert!(Instant::now() < deadline, "no delivery status: {r}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_a_peer_that_joined_on_the_other_replica_and_not_one_that_left() {
    // A TTL far longer than the test: only the presence events can refresh `a`'s listing.
    let (_cluster, a, b) = cache_cluster("600000").await;
    let mesh = a.create_mesh("cache", None);
    let s = member(&a, &mesh, "sender", json!({}));
    let p = member(&a, &mesh, "peer", json!({}));
    let (mut sc, _) = Client::join(&a.ws_url(), s.hello(&mesh, json!({}))).await;
    // Fills `a`'s listing of the mesh: the sender alone.
    let ack = sc.send_msg("*", "now", "nobody yet").await;
    assert_eq!(ack["queued"], true, "{ack}");
    assert!(!addressed(&mut sc, ack["messageId"].as_str().unwrap()).await);
    let misses = metric(&a.metrics(), "broker_presence_cache_total{reason=\"miss\"}");
    assert!(misses >= 1.0);

    // The peer joins on `b`; once the sender saw it join, a broadcast reaches it.
    let (mut pc, _) = Client::join(&b.ws_url(), p.hello(&mesh, json!({}))).await;
    sc.expect_system("peer_joined").await;
    let ack = sc.send_msg("*", "now", "hello peer").await;
    assert_eq!(ack["queued"], true, "{ack}");
    assert_eq!(
        pc.expect_where("push", is_push).await["ciphertext"],
        "hello peer"
    );
    // A second broadcast is served from the refreshed listing (a hit).
    let before = metric(&a.metrics(), "broker_presence_cache_total{reason=\"hit\"}");
    sc.send_msg("*", "now", "again").await;
    assert_eq!(
        pc.expect_where("push", is_push).await["ciphertext"],
        "again"
    );
    assert!(metric(&a.metrics(), "broker_presence_cache_total{reason=\"hit\"}") > before);

    // The peer leaves for good (its grace ends on `b`); once the sender saw it leave, a
    // broadcast is addressed to nobody.
    pc.close().await;
    sc.expect_system("peer_left").await;
    let ack = sc.send_msg("*", "now", "gone").await;
    assert!(
        !addressed(&mut sc, ack["messageId"].as_str().unwrap()).await,
        "the broadcast was addressed to the peer that left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_no_event_announces_is_seen_within_the_cache_ttl() {
    const TTL_MS: u64 = 700;
    let (_cluster, a, b) = cache_cluster(&TTL_MS.to_string()).await;
    let mesh = a.create_mesh("ttl", None);
    let s = member(&a, &mesh, "sender", json!({}));
    let p = member(&a, &mesh, "peer", json!({}));
    let (mut sc, _) = Client::join(&a.ws_url(), s.hello(&mesh, json!({}))).await;
    let (mut pc, _) = Client::join(&b.ws_url(), p.hello(&mesh, json!({}))).await;
    sc.expect_system("peer_joined").await;
    // Fills `a`'s listing: the peer is in no group yet.
    sc.send_msg("*", "now", "fill").await;
    assert_eq!(pc.expect_where("push", is_push).await["ciphertext"], "fill");
    // The peer joins `ops` on `b`: a change no event announces.
    pc.send(join_group("ops", None)).await;
    let joined = Instant::now();
    // Until the TTL ran out, `@ops` may miss it; after, it reaches it.
    let mut n = 0;
    'seen: loop {
        n += 1;
        sc.send_msg("@ops", "now", &format!("ops-{n}")).await;
        let until = Instant::now() + Duration::from_millis(100);
        while let Some(Event::Frame(f)) = pc
            .next_within(until.saturating_duration_since(Instant::now()))
            .await
        {
            if is_push(&f)
                && f["ciphertext"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("ops-"))
            {
                break 'seen;
            }
        }
        assert!(
            joined.elapsed() < Duration::from_millis(TTL_MS + 1500),
            "a group change was not seen within the cache TTL"
        );
    }
    eprintln!("group change seen after {:?}", joined.elapsed());
}
