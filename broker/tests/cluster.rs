//! Cluster mode: two broker processes sharing PostgreSQL and Redis behave as one broker,
//! and survive a replica's SIGKILL, a Redis restart and a rolling shutdown.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

fn peer_names(list: &Value) -> Vec<String> {
    let list: PeersList = parse(list);
    let mut names: Vec<String> = list.peers.into_iter().map(|p| p.display_name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn messages_reach_peers_on_the_other_replica() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("cross", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut cc, _) = Client::join(
        &b.ws_url(),
        carol.hello(&mesh, json!({"groups": [{"name": "ops"}]})),
    )
    .await;
    let joined = ac.expect_system("peer_joined").await;
    assert_eq!(
        joined["eventData"]["name"], "bob",
        "system events cross replicas"
    );

    cross_replica_exchange(
        &mut ac,
        &mut bc,
        &mut cc,
        &alice.identity.pubkey,
        &bob.identity.pubkey,
    )
    .await;

    // Both replicas list the same peers.
    let on_a = peer_names(&ac.request(ClientFrame::ListPeers).await);
    let on_b = peer_names(&bc.request(ClientFrame::ListPeers).await);
    assert_eq!(on_a, vec!["alice", "bob", "carol"]);
    assert_eq!(on_a, on_b);
}

#[tokio::test]
async fn a_killed_replicas_presences_are_reaped_and_its_clients_recover_on_the_survivor() {
    let c = Cluster::new(&[]).await;
    let a = c.replica("a");
    let b = c.replica("b");
    let mesh = a.create_mesh("failover", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;
    // Pushed to bob on b but not confirmed when b dies.
    let unconfirmed = ac.send_msg(&bob.identity.pubkey, "now", "in-flight").await;
    assert_eq!(
        bc.expect_where("push", is_push).await["messageId"],
        unconfirmed["messageId"]
    );

    let killed = Instant::now();
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(b.pid().to_string())
        .status()
        .unwrap();
    let left = ac.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "bob");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "reaped after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        peer_names(&ac.request(ClientFrame::ListPeers).await),
        vec!["alice"]
    );

    // Queued while bob is away, then bob reconnects to the survivor and gets everything.
    let queued = ac
        .send_msg(&bob.identity.pubkey, "next", "while-away")
        .await;
    assert_eq!(queued["queued"], true);
    let (mut bc, _) = Client::join(&a.ws_url(), bob.hello(&mesh, json!({}))).await;
    let first = bc.expect_where("push", is_push).await;
    let second = bc.expect_where("push", is_push).await;
    assert_eq!(first["messageId"], unconfirmed["messageId"]);
    assert_eq!(second["messageId"], queued["messageId"]);
    drop(b.log_text());
}

#[tokio::test]
async fn moderation_closes_the_target_on_the_other_replica() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("moderation", None);
    let admin = member(&a, &mesh, "admin", json!({"role": "admin"}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut ad, _) = Client::join(&a.ws_url(), admin.hello(&mesh, json!({}))).await;
    let s = Identity::random();
    let (mut bs, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    let (mut cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;

    let ack = ad.request(ClientFrame::Kick(select("bob"))).await;
    assert_eq!(ack["affected"], json!(["bob"]));
    assert_eq!(bs.expect_close().await, close_of(codes::KICKED));
    let ack = ad.request(ClientFrame::Ban(ban_request("carol"))).await;
    assert_eq!(ack["banned"], "carol");
    assert_eq!(cc.expect_close().await, close_of(codes::BANNED));
    let mut again = Client::connect(&b.ws_url()).await;
    again.send(carol.hello(&mesh, json!({}))).await;
    assert_eq!(again.expect("error").await["code"], "revoked");
}

#[tokio::test]
async fn a_lease_reattaches_on_the_other_replica_silently() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("reattach", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let s = Identity::random();
    let (b1, first) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    ac.expect_system("peer_joined").await;
    b1.abort();
    let (mut b2, second) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    assert_eq!(first["presenceId"], second["presenceId"]);
    // Reattach while the socket on the other replica is still open: that socket is replaced.
    let (_b3, third) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    assert_eq!(third["presenceId"], first["presenceId"]);
    assert_eq!(b2.expect_close().await, close_of(codes::SESSION_REPLACED));
    ac.expect_none(Duration::from_millis(500), is_join_or_leave)
        .await;
}

#[tokio::test]
async fn connection_cap_and_send_rate_hold_across_replicas() {
    let c = Cluster::new(&[
        ("MAX_CONNECTIONS_PER_MESH", "2"),
        ("BROKER_SEND_BURST", "3"),
        ("BROKER_SEND_PER_MIN", "60"),
    ])
    .await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("limits", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut on_a, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut on_b, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    for broker in [&a, &b] {
        let mut third = Client::connect(&broker.ws_url()).await;
        third.send(bob.hello(&mesh, json!({}))).await;
        assert_eq!(third.expect("error").await["code"], "capacity");
    }
    // One member's bucket is shared by its sockets on both replicas.
    assert_eq!(
        on_a.send_msg(&bob.identity.pubkey, "now", "1").await["queued"],
        true
    );
    assert_eq!(
        on_b.send_msg(&bob.identity.pubkey, "now", "2").await["queued"],
        true
    );
    assert_eq!(
        on_a.send_msg(&bob.identity.pubkey, "now", "3").await["queued"],
        true
    );
    let refused = on_b.send_msg(&bob.identity.pubkey, "now", "4").await;
    assert!(
        refused["error"].as_str().unwrap().starts_with("rate_limit"),
        "{refused}"
    );
    // The replay guard is shared too.
    let h = bob.hello(&mesh, json!({}));
    on_a.close().await;
    eventually("the closed socket no longer counts", async || {
        (on_b.request(ClientFrame::ListPeers).await["peers"]
            .as_array()
            .unwrap()
            .len()
            == 1)
            .then_some(())
    })
    .await;
    let (_ok, _) = Client::join(&a.ws_url(), h.clone()).await;
    let mut replay = Client::connect(&b.ws_url()).await;
    replay.send(h).await;
    let code = replay.expect("error").await["code"].clone();
    assert!(code == "replayed" || code == "capacity", "{code}");
}

#[tokio::test]
async fn a_redis_restart_loses_nothing_acknowledged_and_readiness_recovers() {
    let mut c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("redis-outage", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;

    c.redis.stop();
    for r in [&a, &b] {
        eventually("readiness turns 503 without Redis", async || {
            matches!(r.try_http("GET", "/health/ready", None, None), Ok((503, _))).then_some(())
        })
        .await;
        assert_eq!(r.try_http("GET", "/health", None, None).unwrap().0, 200);
    }
    // Direct messages by member key are still accepted: they wait in PostgreSQL.
    let during = ac
        .send_msg(&bob.identity.pubkey, "now", "during-outage")
        .await;
    assert_eq!(during["queued"], true, "{during}");
    // Local delivery keeps working: alice to herself on the same replica.
    let own = ac.send_msg(&alice.identity.pubkey, "now", "local").await;
    assert_eq!(own["queued"], true);
    assert_eq!(
        ac.expect_where("push", is_push).await["ciphertext"],
        "local"
    );

    c.redis.restart();
    for r in [&a, &b] {
        eventually("readiness recovers", async || {
            matches!(r.try_http("GET", "/health/ready", None, None), Ok((200, _))).then_some(())
        })
        .await;
    }
    // Bob's replica re-drained after the recovery: the message reaches him.
    assert_eq!(
        bc.expect_where("push", is_push).await["messageId"],
        during["messageId"]
    );
    // Presences were re-registered in the new (empty) Redis, and fan-out works again.
    eventually("both peers are listed again", async || {
        (peer_names(&ac.request(ClientFrame::ListPeers).await) == ["alice", "bob"]).then_some(())
    })
    .await;
    ac.send_msg("*", "now", "after").await;
    assert_eq!(
        bc.expect_where("push", is_push).await["ciphertext"],
        "after"
    );
}

#[tokio::test]
async fn sigterm_hands_sessions_over_to_another_replica_silently() {
    let c = Cluster::new(&[("SHUTDOWN_DRAIN_MS", "200")]).await;
    let a = c.replica("a");
    let mut b = c.replica("b");
    let mesh = a.create_mesh("rolling", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let s = Identity::random();
    let (mut bc, first) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    ac.expect_system("peer_joined").await;

    let stopping = tokio::task::spawn_blocking(move || {
        let status = b.terminate();
        (status, b)
    });
    assert_eq!(bc.expect_close().await, close_of(codes::GOING_AWAY));
    let (_bc, second) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    assert_eq!(
        first["presenceId"], second["presenceId"],
        "the lease moved to replica a"
    );
    let (status, _b) = stopping.await.unwrap();
    assert!(status.success());
    ac.expect_none(Duration::from_millis(500), is_join_or_leave)
        .await;
}

#[tokio::test]
async fn concurrent_audit_writes_from_both_replicas_verify() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("audit", None);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let m = member(&a, &mesh, &format!("p{i}"), json!({}));
        let url = if i % 2 == 0 { a.ws_url() } else { b.ws_url() };
        let hello = m.hello(&mesh, json!({}));
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = Client::join(&url, hello).await;
            for n in 0..10 {
                assert_eq!(
                    c.send_msg("*", "low", &format!("{n}")).await["queued"],
                    true
                );
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let v = eventually("4 joins and 40 sends are audited", async || {
        let (_, v) = b.api("GET", &format!("/api/v1/meshes/{mesh}/audit/verify"), None);
        (v["entries"] == json!(44)).then_some(v)
    })
    .await;
    assert_eq!(v["valid"], true, "{v}");
}

#[tokio::test]
async fn a_grant_changed_through_one_replica_applies_on_the_other_at_once() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("grants", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    // Replica b caches the mesh's members on this first send.
    assert_eq!(
        ac.send_msg(&bob.identity.pubkey, "now", "allowed").await["queued"],
        true
    );
    let (status, _) = a.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", bob.id),
        Some(json!({"grants": {alice.identity.pubkey.clone(): ["read"]}})),
    );
    assert_eq!(status, 200);
    // The change made on a invalidates b's cache: refused well within the cache's TTL.
    let started = Instant::now();
    eventually("the new grant applies on replica b", async || {
        let ack = ac.send_msg(&bob.identity.pubkey, "now", "probe").await;
        (ack["queued"] == false).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}
