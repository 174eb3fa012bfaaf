//! Hostile handshakes against the real binary: what an unauthenticated `hello` may cost
//! (nothing of the mesh is read before the signature verifies), the per-mesh connection
//! cap kept exact across replicas, a replica's SIGKILL and a Redis restart, and session-key
//! capture (a `hello` announcing another member's proven session key).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use broker::protocol::signing;
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// `hello` with its signature made by someone else (well-formed, does not verify).
fn badly_signed(m: &Member, mesh: &str) -> Value {
    let mut h = m.hello(mesh, json!({}));
    let ts = h["timestamp"].as_i64().unwrap();
    h["signature"] =
        json!(Identity::random().sign(&signing::hello_text(mesh, &m.id, &m.identity.pubkey, ts)));
    h
}

/// CPU time (user + system, in clock ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Peers in a `list_peers` reply; 0 for an error reply (Redis not back yet).
fn peer_count(list: &Value) -> usize {
    list["peers"].as_array().map_or(0, Vec::len)
}

// ---------------------------------------------------------------------------------------
// Item 6: no mesh-sized work before the signature; an exact cap
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn at_a_full_mesh_bad_signatures_are_refused_as_such_and_only_members_learn_capacity() {
    let b = Broker::start(&[("MAX_CONNECTIONS_PER_MESH", "2")]);
    let url = b.ws_url();
    let mesh = b.create_mesh("full", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (_c1, _) = Client::join(&url, alice.hello(&mesh, json!({}))).await;
    let (_c2, _) = Client::join(&url, alice.hello(&mesh, json!({}))).await;

    // The signature is checked before the (now O(1)) capacity check.
    assert_refused(&url, badly_signed(&bob, &mesh), "bad_signature").await;
    let s = Identity::random();
    let mut sh = session_hello(&mesh, &bob.identity, &s, json!({}));
    sh["parentAttestation"]["signature"] = json!(Identity::random().sign("not the attestation"));
    assert_refused(&url, sh, "bad_signature").await;
    let mut sh = session_hello(&mesh, &bob.identity, &s, json!({}));
    sh["signature"] = json!(Identity::random().sign("not the session hello"));
    assert_refused(&url, sh, "bad_signature").await;
    let mut stale = bob.hello(&mesh, json!({}));
    stale["timestamp"] = json!(now_ms() - 120_000);
    assert_refused(&url, stale, "timestamp_skew").await;
    // A well-signed hello by a key that is no member learns nothing about the mesh.
    let stranger = Identity::random();
    assert_refused(
        &url,
        hello(&mesh, "nobody", &stranger, json!({})),
        "unauthorized",
    )
    .await;

    // Members do get `capacity`, over both handshakes.
    assert_refused(&url, bob.hello(&mesh, json!({})), "capacity").await;
    assert_refused(
        &url,
        session_hello(&mesh, &bob.identity, &s, json!({})),
        "capacity",
    )
    .await;
}

#[tokio::test]
async fn unauthenticated_hellos_never_list_the_mesh() {
    let c = Cluster::new(&[("MAX_CONNECTIONS_PER_MESH", "100")]).await;
    let a = c.replica("a");
    let url = a.ws_url();
    let big = a.create_mesh("big", None);
    let small = a.create_mesh("small", None);
    let crowd = member(&a, &big, "crowd", json!({}));
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(Client::join(&url, crowd.hello(&big, json!({}))).await.0);
    }
    let lone = member(&a, &small, "lone", json!({}));
    let (_lone, _) = Client::join(&url, lone.hello(&small, json!({}))).await;
    let mallory_big = member(&a, &big, "mallory", json!({}));
    let mallory_small = member(&a, &small, "mallory", json!({}));

    // Bad hellos at a full mesh of 100, then at a mesh of 1: CPU per batch is reported.
    const N: usize = 200;
    let mut ticks = Vec::new();
    for (m, mesh) in [(&mallory_big, &big), (&mallory_small, &small)] {
        let listed = c.redis_calls("hgetall").await;
        let before = cpu_ticks(a.pid());
        for _ in 0..N {
            assert_eq!(
                refused(&url, badly_signed(m, mesh)).await.0,
                "bad_signature"
            );
        }
        ticks.push(cpu_ticks(a.pid()) - before);
        // Listing the mesh is two HGETALLs; the bound leaves room for background work.
        let calls = c.redis_calls("hgetall").await - listed;
        assert!(
            calls < N as u64 / 10,
            "{calls} HGETALLs for {N} hellos whose signature does not verify: they read the mesh"
        );
    }
    eprintln!(
        "broker CPU for {N} bad hellos: {} ticks at a mesh of 100, {} ticks at a mesh of 1",
        ticks[0], ticks[1]
    );
    // Still full: a member is refused `capacity` without the mesh being listed.
    let listed = c.redis_calls("hgetall").await;
    assert_refused(&url, mallory_big.hello(&big, json!({})), "capacity").await;
    assert!(
        c.redis_calls("hgetall").await - listed < 2,
        "the capacity check lists the mesh"
    );
}

#[tokio::test]
async fn the_mesh_cap_is_exact_across_replicas_and_frees_when_a_killed_replica_is_reaped() {
    let c = Cluster::new(&[("MAX_CONNECTIONS_PER_MESH", "3")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("cap", None);
    let watcher = member(&a, &mesh, "watcher", json!({}));
    let peer = member(&a, &mesh, "peer", json!({}));
    let (mut w, _) = Client::join(&a.ws_url(), watcher.hello(&mesh, json!({}))).await;
    let (_p1, _) = Client::join(&b.ws_url(), peer.hello(&mesh, json!({}))).await;
    let s = Identity::random();
    let (_p2, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &peer.identity, &s, json!({})),
    )
    .await;
    for r in [&a, &b] {
        assert_refused(&r.ws_url(), peer.hello(&mesh, json!({})), "capacity").await;
    }
    // b dies with both; once they are reaped their slots are free again, and no more.
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(b.pid().to_string())
        .status()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            w.expect_system("peer_left").await["eventData"]["name"],
            "peer"
        );
    }
    let (_p3, _) = Client::join(&a.ws_url(), peer.hello(&mesh, json!({}))).await;
    let (_p4, _) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &peer.identity, &s, json!({})),
    )
    .await;
    assert_refused(&a.ws_url(), peer.hello(&mesh, json!({})), "capacity").await;
    assert_eq!(peer_count(&w.request(ClientFrame::ListPeers).await), 3);
}

#[tokio::test]
async fn the_mesh_cap_is_exact_after_a_redis_restart() {
    let mut c = Cluster::new(&[("MAX_CONNECTIONS_PER_MESH", "2")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("cap-restart", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    assert_refused(&a.ws_url(), bob.hello(&mesh, json!({})), "capacity").await;

    c.redis.stop();
    c.redis.restart();
    eventually("both presences are re-registered", async || {
        (peer_count(&ac.request(ClientFrame::ListPeers).await) == 2).then_some(())
    })
    .await;
    // The new Redis counts the re-registered presences: still full.
    assert_refused(&b.ws_url(), bob.hello(&mesh, json!({})), "capacity").await;
    // A closed socket frees its slot.
    bc.close().await;
    let _t = eventually("bob's slot is free again", async || {
        let mut t = Client::connect(&a.ws_url()).await;
        t.send(bob.hello(&mesh, json!({}))).await;
        match t.next_within(WAIT).await {
            Some(Event::Frame(f)) if f["type"] == "hello_ack" => Some(t),
            _ => None,
        }
    })
    .await;
    assert_refused(&b.ws_url(), bob.hello(&mesh, json!({})), "capacity").await;
}

// ---------------------------------------------------------------------------------------
// Item 14: session-key capture
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hello_may_not_announce_another_members_proven_session_key() {
    let c = Cluster::new(&[("LEASE_GRACE_MS", "300"), ("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("capture", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut cc, _) = Client::join(&a.ws_url(), carol.hello(&mesh, json!({}))).await;
    // Bob holds an honest socket, to show that nothing addressed to S reaches him.
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    let s = Identity::random();
    let (sc, _) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &alice.identity, &s, json!({})),
    )
    .await;
    let capture = json!({"sessionPubkey": s.pubkey});
    // While alice's session is live, on either replica.
    for r in [&a, &b] {
        assert_refused(
            &r.ws_url(),
            bob.hello(&mesh, capture.clone()),
            "bad_session_pubkey",
        )
        .await;
    }
    // Alice's own control plane may announce her session's key.
    let (alice_cp, _) = Client::join(&b.ws_url(), alice.hello(&mesh, capture.clone())).await;
    alice_cp.close().await;

    // After the session ended (grace over, peer_left sent), the key stays reserved.
    sc.close().await;
    cc.expect_where("push", |v| {
        v["event"] == "peer_left" && v["eventData"]["pubkey"] == json!(s.pubkey)
    })
    .await;
    for r in [&b, &a] {
        assert_refused(
            &r.ws_url(),
            bob.hello(&mesh, capture.clone()),
            "bad_session_pubkey",
        )
        .await;
    }

    // A direct message to S never reaches bob: the next push he sees is the marker.
    cc.send_msg(&s.pubkey, "now", "for-alices-session").await;
    let ack = cc.send_msg(&bob.identity.pubkey, "now", "marker").await;
    assert_eq!(ack["queued"], true, "{ack}");
    assert_eq!(
        bc.expect_where("push", is_push).await["ciphertext"],
        "marker"
    );
    for r in [&a, &b] {
        let m = r.metrics();
        assert!(
            m.contains("broker_connections_rejected_total{reason=\"bad_session_pubkey\"} 2"),
            "{m}"
        );
        assert!(
            m.contains("broker_session_keys_refused_total{reason=\"proven_session_key\"}"),
            "{m}"
        );
    }
}

#[tokio::test]
async fn a_hello_may_not_announce_a_live_routing_key_of_another_member() {
    let b = Broker::start(&[]);
    let url = b.ws_url();
    let mesh = b.create_mesh("announced", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let k = Identity::random().pubkey;
    // Alice announces K (unproven); bob may not announce it while her presence is live.
    let (_ac, _) = Client::join(&url, alice.hello(&mesh, json!({"sessionPubkey": k}))).await;
    assert_refused(
        &url,
        bob.hello(&mesh, json!({"sessionPubkey": k})),
        "bad_session_pubkey",
    )
    .await;
    // Alice herself may (another control plane of hers, e.g. a second CLI).
    let (_ac2, _) = Client::join(&url, alice.hello(&mesh, json!({"sessionPubkey": k}))).await;
    // Bob announcing his own fresh key is fine.
    let own = Identity::random().pubkey;
    let (_bc, _) = Client::join(&url, bob.hello(&mesh, json!({"sessionPubkey": own}))).await;
    assert!(
        b.metrics()
            .contains("broker_session_keys_refused_total{reason=\"live_routing_key\"} 1")
    );
}
