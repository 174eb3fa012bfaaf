//! Cluster mode on a Redis Cluster (`REDIS_MODE=cluster`): two broker replicas sharing
//! PostgreSQL and a private three-master Redis Cluster route, fan out, reap a SIGKILLed
//! replica's presences and expire its graces, and recover from a shard's restart.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::{Duration, Instant};

use common::redis_cluster::ShardedCluster;
use common::*;
use serde_json::{Value, json};

fn peer_names(list: &Value) -> Vec<String> {
    let list: PeersList = parse(list);
    let mut names: Vec<String> = list.peers.into_iter().map(|p| p.display_name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn two_replicas_on_a_redis_cluster_list_route_and_fan_out_on_sharded_channels() {
    let c = ShardedCluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("sharded", None);
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
    assert_eq!(joined["eventData"]["name"], "bob");

    cross_replica_exchange(
        &mut ac,
        &mut bc,
        &mut cc,
        &alice.identity.pubkey,
        &bob.identity.pubkey,
    )
    .await;
    let on_a = peer_names(&ac.request(ClientFrame::ListPeers).await);
    let on_b = peer_names(&bc.request(ClientFrame::ListPeers).await);
    assert_eq!(on_a, vec!["alice", "bob", "carol"]);
    assert_eq!(on_a, on_b);

    // A session key is found through the per-mesh index: a DM to it reaches its session.
    let s = Identity::random();
    let (mut sc, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    let ack = ac.send_msg(&s.pubkey, "now", "to-the-session").await;
    assert_eq!(ack["queued"], true, "{ack}");
    assert_eq!(
        sc.expect_where("push", is_push).await["ciphertext"],
        "to-the-session"
    );

    // Fan-out went over sharded pub/sub only, and the keys are spread over the shards.
    assert!(c.redis.calls("spublish") > 0);
    assert_eq!(c.redis.calls("publish"), 0);
    assert!(c.redis.calls("ssubscribe") > 0);
    let per_shard = c.redis.keys_per_shard();
    assert!(
        per_shard.iter().filter(|n| **n > 0).count() >= 2,
        "keys on one shard only: {per_shard:?}"
    );
}

#[tokio::test]
async fn a_killed_replicas_live_presences_are_reaped_and_its_graces_expire_on_a_redis_cluster() {
    let c = ShardedCluster::new(&[("LEASE_GRACE_MS", "3000")]).await;
    let a = c.replica("a");
    let b = c.replica("b");
    // Two meshes, so the dead replica's records are in several slots.
    let mesh1 = a.create_mesh("failover-1", None);
    let mesh2 = a.create_mesh("failover-2", None);
    let alice = member(&a, &mesh1, "alice", json!({}));
    let bob = member(&a, &mesh1, "bob", json!({}));
    let dave = member(&a, &mesh1, "dave", json!({}));
    let erin = member(&a, &mesh2, "erin", json!({}));
    let frank = member(&a, &mesh2, "frank", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh1, json!({}))).await;
    let (mut ec, _) = Client::join(&a.ws_url(), erin.hello(&mesh2, json!({}))).await;
    let (_bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh1, json!({}))).await;
    let (_fc, _) = Client::join(&b.ws_url(), frank.hello(&mesh2, json!({}))).await;
    let (dc, _) = Client::join(&b.ws_url(), dave.hello(&mesh1, json!({}))).await;
    ac.expect_system("peer_joined").await;
    ac.expect_system("peer_joined").await;
    ec.expect_system("peer_joined").await;
    // Dave leaves: his presence is in grace on b when b dies; only the backstop of a
    // survivor can end it.
    dc.close().await;
    eventually("dave's presence is in grace", async || {
        let list: PeersList = parse(&ac.request(ClientFrame::ListPeers).await);
        list.peers
            .iter()
            .all(|p| p.display_name != "dave")
            .then_some(())
    })
    .await;

    let killed = Instant::now();
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(b.pid().to_string())
        .status()
        .unwrap();
    let mut left = Vec::new();
    while left.len() < 2 {
        let ev = ac.expect_system("peer_left").await;
        left.push(ev["eventData"]["name"].as_str().unwrap().to_string());
    }
    left.sort();
    assert_eq!(left, ["bob", "dave"]);
    let ev = ec.expect_system("peer_left").await;
    assert_eq!(ev["eventData"]["name"], "frank");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "reaped after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        peer_names(&ac.request(ClientFrame::ListPeers).await),
        vec!["alice"]
    );
    assert_eq!(
        peer_names(&ec.request(ClientFrame::ListPeers).await),
        vec!["erin"]
    );
}

#[tokio::test]
async fn fan_out_and_presence_recover_after_the_meshs_shard_restarts() {
    let mut c = ShardedCluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("shard-restart", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;
    ac.send_msg("*", "now", "before").await;
    assert_eq!(
        bc.expect_where("push", is_push).await["ciphertext"],
        "before"
    );

    // The shard holding the mesh's keys and channel dies and comes back empty.
    let shard = c.redis.shard_of(&format!("{{mesh:m:{mesh}}}"));
    c.redis.kill(shard);
    c.redis.restart(shard);
    c.redis.wait_ok();

    // Presences are registered again (the bus reconnect re-syncs every replica) and the
    // resubscribed channel carries fan-out again.
    // (While the re-sync barrier is up after a data loss, the listing fails `internal`.)
    eventually("both peers are listed again", async || {
        let list = ac.request(ClientFrame::ListPeers).await;
        (list["type"] == "peers_list" && peer_names(&list) == ["alice", "bob"]).then_some(())
    })
    .await;
    eventually("a broadcast crosses replicas again", async || {
        ac.send_msg("*", "now", "after").await;
        let got = bc.next_within(Duration::from_millis(300)).await;
        matches!(got, Some(Event::Frame(v)) if is_push(&v) && v["ciphertext"] == "after")
            .then_some(())
    })
    .await;
    let dm = ac.send_msg(&bob.identity.pubkey, "now", "dm-after").await;
    assert_eq!(dm["queued"], true, "{dm}");
    let push = bc
        .expect_where("push", |v| is_push(v) && v["ciphertext"] == "dm-after")
        .await;
    assert_eq!(push["messageId"], dm["messageId"]);
    for r in [&a, &b] {
        eventually("readiness is 200", async || {
            matches!(r.try_http("GET", "/health/ready", None, None), Ok((200, _))).then_some(())
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// The presence backend itself on both key layouts
// ---------------------------------------------------------------------------------------

use broker::cluster::mcp_registry::{McpRegistry, Pending, PendingKind, RedisMcpRegistry};
use broker::cluster::presence::{
    MemoryPresence, PeerRole, Presence, PresenceQuery, PresenceRecord,
};
use broker::cluster::redis_presence::RedisPresence;
use broker::cluster::subscriptions::{RedisStreamSubscriptions, StreamSubscriptions, Subscribe};
use common::redis::RedisServer;
use common::redis_cluster::RedisCluster;

fn record(
    mesh: &str,
    id: &str,
    node: &str,
    member: &str,
    session_key: Option<&str>,
) -> PresenceRecord {
    PresenceRecord {
        presence_id: id.into(),
        mesh_id: mesh.into(),
        member_id: member.into(),
        member_pubkey: format!("pk-{member}"),
        session_pubkey: session_key.map(str::to_string),
        display_name: id.into(),
        session_id: format!("sid-{id}"),
        peer_role: PeerRole::ControlPlane,
        node_id: node.into(),
        conn_id: format!("{node}/{id}"),
        grace_until: None,
        status: Status::Idle,
        summary: None,
        visible: true,
        groups: Vec::new(),
        profile: serde_json::Map::new(),
        stats: None,
        pid: Some(42),
        cwd: format!("/w/{id}"),
        hostname: None,
        peer_type: None,
        channel: None,
        model: None,
        connected_at: 1,
        last_pong_at: 1,
    }
}

fn ids(records: &[PresenceRecord]) -> Vec<&str> {
    records.iter().map(|r| r.presence_id.as_str()).collect()
}

/// The lookups, the grace backstop and (`shared`: a backend several replicas share) the
/// reaper on one backend: records of one dead node in two meshes (two slots on a cluster)
/// are each returned exactly once.
async fn contract(p: &dyn Presence, shared: bool) {
    let now = now_ms();
    let q = |member: Option<&'static str>, key: Option<&'static str>, sid: Option<&'static str>| {
        PresenceQuery {
            member_id: member,
            routing_key: key,
            session_key: None,
            session_id: sid,
        }
    };
    p.attach(record("m1", "a1", "n1", "ma", Some("sk1")))
        .await
        .unwrap();
    p.attach(record("m2", "a2", "n1", "ma", None))
        .await
        .unwrap();
    p.attach(record("m1", "b1", "n2", "mb", None))
        .await
        .unwrap();
    assert_eq!(
        ids(&p.find("m1", q(Some("ma"), None, None)).await.unwrap()),
        ["a1"]
    );
    assert_eq!(
        ids(&p.find("m1", q(None, Some("sk1"), None)).await.unwrap()),
        ["a1"]
    );
    assert_eq!(
        ids(&p.find("m1", q(None, Some("pk-mb"), None)).await.unwrap()),
        ["b1"]
    );
    // A member key is not the routing key of a presence that has a session key.
    assert!(
        p.find("m1", q(None, Some("pk-ma"), None))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&p.find("m1", q(None, None, Some("sid-b1"))).await.unwrap()),
        ["b1"]
    );
    let both = p
        .find("m1", q(Some("mb"), Some("sk1"), None))
        .await
        .unwrap();
    assert_eq!(ids(&both), ["a1", "b1"]);
    let session = PresenceQuery {
        session_key: Some("sk1"),
        ..PresenceQuery::default()
    };
    assert_eq!(ids(&p.find("m1", session).await.unwrap()), ["a1"]);
    assert!(
        p.find("m1", PresenceQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&p.find("m2", q(Some("ma"), None, None)).await.unwrap()),
        ["a2"]
    );

    // A reattach that changes the session id moves its index entries.
    let mut moved = record("m1", "b1", "n2", "mb", None);
    moved.session_id = "sid-new".into();
    moved.conn_id = "n2/b1-2".into();
    p.attach(moved).await.unwrap();
    assert!(
        p.find("m1", q(None, None, Some("sid-b1")))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&p.find("m1", q(None, None, Some("sid-new"))).await.unwrap()),
        ["b1"]
    );

    // The grace backstop: a2 released with a deadline already passed.
    assert!(p.release("m2", "a2", "n1/a2", now - 1).await.unwrap());
    assert_eq!(p.live_count("m2").await.unwrap(), 0);
    let expired = p.expire_due(now).await.unwrap();
    assert_eq!(ids(&expired), ["a2"]);
    assert!(p.expire_due(now).await.unwrap().is_empty(), "exactly once");
    assert!(
        p.find("m2", q(Some("ma"), None, None))
            .await
            .unwrap()
            .is_empty()
    );

    if !shared {
        return;
    }
    // The reaper: n1 stopped beating long ago, n2 beats now.
    p.attach(record("m2", "a3", "n1", "ma", None))
        .await
        .unwrap();
    p.heartbeat("n1", 1_000, 2_000).await.unwrap();
    p.heartbeat("n2", now, 2_000).await.unwrap();
    let mut reaped = p.reap_dead_nodes(now - 5_000).await.unwrap();
    reaped.sort_by(|a, b| a.presence_id.cmp(&b.presence_id));
    assert_eq!(ids(&reaped), ["a1", "a3"]);
    assert!(p.reap_dead_nodes(now - 5_000).await.unwrap().is_empty());
    assert_eq!(ids(&p.list("m1").await.unwrap()), ["b1"]);
    assert!(p.list("m2").await.unwrap().is_empty());
    assert!(
        p.find("m1", q(Some("ma"), None, None))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(p.live_count("m1").await.unwrap(), 1);
    // The status hook's index (another slot than the mesh on a cluster).
    let found = p.find_process(42, "/w/b1").await.unwrap();
    assert_eq!(found.map(|r| r.presence_id), Some("b1".to_string()));
}

#[tokio::test]
async fn presence_lookups_the_grace_backstop_and_the_reaper_hold_on_every_backend() {
    contract(&MemoryPresence::new(), false).await;

    let single = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let client = ::redis::Client::open(single.url()).unwrap();
    let conn = ::redis::aio::ConnectionManager::new(client).await.unwrap();
    contract(&RedisPresence::new(conn.clone(), "one"), true).await;

    // A rolling upgrade: a record written by an older replica (no lookup index) is found.
    let mut c = conn.clone();
    let legacy = serde_json::to_string(&record("m9", "old", "n9", "mo", None)).unwrap();
    ::redis::pipe()
        .hset("up:presence:m9", "old", legacy)
        .hset("up:owner:m9", "old", "n9/old|0")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let p = RedisPresence::new(conn, "up");
    let q = PresenceQuery {
        member_id: Some("mo"),
        ..PresenceQuery::default()
    };
    assert_eq!(ids(&p.find("m9", q).await.unwrap()), ["old"]);

    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let urls: Vec<String> = cluster.urls().split(',').map(str::to_string).collect();
    let conn = ::redis::cluster::ClusterClient::new(urls)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    contract(&RedisPresence::new(conn.clone(), "sharded"), true).await;

    // The other per-mesh registries on the cluster: their scripts name keys of the mesh's
    // slot at run time (stream sets, pending indexes), which a cluster allows in one slot.
    let subs = RedisStreamSubscriptions::new(conn.clone(), "sharded");
    assert_eq!(
        subs.subscribe("m1", "p1", "s1", 2).await.unwrap(),
        Subscribe::Added
    );
    assert_eq!(
        subs.subscribe("m1", "p1", "s2", 2).await.unwrap(),
        Subscribe::Added
    );
    assert_eq!(
        subs.subscribe("m1", "p1", "s3", 2).await.unwrap(),
        Subscribe::Full
    );
    assert_eq!(
        subs.subscribers("m1", &["s1", "s2"]).await.unwrap(),
        [["p1"], ["p1"]]
    );
    assert_eq!(subs.remove_presence("m1", "p1").await.unwrap(), 2);
    assert!(subs.subscribers("m1", &["s1"]).await.unwrap()[0].is_empty());
    let registry = RedisMcpRegistry::new(conn, "sharded");
    let pending = Pending {
        id: "call-1".into(),
        kind: PendingKind::McpCall,
        requester_presence_id: "req".into(),
        target_presence_id: "tgt".into(),
        req_id: None,
        subject: "srv".into(),
        deadline_ms: now_ms() + 60_000,
    };
    assert!(registry.open("m1", &pending, 4, now_ms()).await.unwrap());
    assert_eq!(
        registry.open_to("m1", "tgt", now_ms()).await.unwrap(),
        ["call-1"]
    );
    let taken = registry.take("m1", "call-1", Some("tgt")).await.unwrap();
    assert_eq!(taken.map(|p| p.id), Some("call-1".to_string()));
    assert!(
        registry
            .open_to("m1", "tgt", now_ms())
            .await
            .unwrap()
            .is_empty()
    );
    // The two meshes' keys sit in two slots, every one of them under its mesh's tag.
    let per_shard = cluster.keys_per_shard();
    assert!(per_shard.iter().sum::<u64>() > 0, "{per_shard:?}");
}
