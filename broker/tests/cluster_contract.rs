//! One contract for each cluster seam, `Presence` and `Bus`, run against every backend: the memory backends and Redis (a private redis-server and a random key prefix per test).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::{Duration, Instant};

use broker::cluster::bus::{AfterClose, Bus, MemoryBus, MeshEvent};
use broker::cluster::presence::{
    MemoryPresence, PeerRole, Presence, PresencePatch, PresenceRecord,
};
use broker::cluster::redis_bus::RedisBus;
use broker::cluster::redis_presence::RedisPresence;
use broker::protocol::{Group, Priority, Status, codes};
use bytes::Bytes;
use common::redis::RedisServer;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);

/// Polls `f` every 20 ms until it holds; panics after `within`.
async fn poll_until(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

fn prefix() -> String {
    format!("ct-{}", broker::ids::random_id(10))
}

/// A client and connection built the way `broker::run` builds them.
async fn redis_conn(server: &RedisServer) -> (redis::Client, ConnectionManager) {
    let client = redis::Client::open(format!("{}?protocol=resp3", server.url())).unwrap();
    let conn = ConnectionManager::new_with_config(client.clone(), ConnectionManagerConfig::new())
        .await
        .unwrap();
    (client, conn)
}

async fn redis_presence(server: &RedisServer, prefix: &str) -> RedisPresence {
    let (_, conn) = redis_conn(server).await;
    RedisPresence::new(conn.clone(), prefix)
}

/// The receiving end of a bus sink.
struct Events(mpsc::UnboundedReceiver<(String, MeshEvent)>);

impl Events {
    async fn next(&mut self, what: &str) -> (String, MeshEvent) {
        match tokio::time::timeout(WAIT, self.0.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the sink closed while waiting for {what}"),
            Err(_) => panic!("no event within {WAIT:?}: {what}"),
        }
    }

    /// The next event is `want` on `mesh`.
    async fn expect(&mut self, mesh: &str, want: &MeshEvent, what: &str) {
        let (got_mesh, got) = self.next(what).await;
        assert_eq!(
            (got_mesh.as_str(), describe(&got)),
            (mesh, describe(want)),
            "{what}"
        );
    }

    /// Nothing arrives for `QUIET`.
    async fn expect_quiet(&mut self, what: &str) {
        match tokio::time::timeout(QUIET, self.0.recv()).await {
            Err(_) => {}
            Ok(Some((mesh, e))) => panic!("unexpected event on {mesh}: {e:?} ({what})"),
            Ok(None) => panic!("the sink closed ({what})"),
        }
    }
}

fn memory_bus() -> (MemoryBus, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    (MemoryBus::new(tx), Events(rx))
}

/// A Redis bus as `broker::run` connects it; its loops stop when the guard drops.
async fn redis_bus(
    server: &RedisServer,
    prefix: &str,
    node: &str,
) -> (RedisBus, Events, DropGuard) {
    let (client, conn) = redis_conn(server).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let bus = RedisBus::connect(client, conn, prefix, node, tx, stop.clone())
        .await
        .unwrap();
    (bus, Events(rx), stop.drop_guard())
}

// ---------------------------------------------------------------------------------------
// Presence contract
// ---------------------------------------------------------------------------------------

/// A live record owned by `conn` (`node/n`).
fn record(mesh: &str, id: &str, conn: &str) -> PresenceRecord {
    let node = conn.rsplit_once('/').map_or(conn, |(n, _)| n);
    PresenceRecord {
        presence_id: id.into(),
        mesh_id: mesh.into(),
        member_id: format!("member-{id}"),
        member_pubkey: "ab".repeat(32),
        session_pubkey: None,
        display_name: format!("peer {id}"),
        session_id: format!("s-{id}"),
        peer_role: PeerRole::ControlPlane,
        node_id: node.into(),
        conn_id: conn.into(),
        grace_until: None,
        status: Status::Idle,
        summary: None,
        visible: true,
        groups: Vec::new(),
        profile: Map::new(),
        stats: None,
        pid: Some(4242),
        cwd: "/work".into(),
        hostname: None,
        peer_type: None,
        channel: None,
        model: None,
        connected_at: 1_700_000_000_000,
        last_pong_at: 1_700_000_000_000,
    }
}

fn in_grace(r: &PresenceRecord, until: i64) -> PresenceRecord {
    PresenceRecord {
        grace_until: Some(until),
        ..r.clone()
    }
}

/// Every field, for comparing records (`PresenceRecord` has no `PartialEq`).
fn fields(r: &PresenceRecord) -> Value {
    serde_json::to_value(r).unwrap()
}

/// The records' fields, by presence id (the contract does not order `list`).
fn all_fields(rs: &[PresenceRecord]) -> Vec<Value> {
    let mut rs = rs.to_vec();
    rs.sort_by(|a, b| a.presence_id.cmp(&b.presence_id));
    rs.iter().map(fields).collect()
}

fn ids(rs: &[PresenceRecord]) -> Vec<String> {
    let mut ids: Vec<String> = rs.iter().map(|r| r.presence_id.clone()).collect();
    ids.sort();
    ids
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn attach_and_list_round_trip(p: &dyn Presence) {
    let mut a = record("m1", "p-a", "n1/1");
    a.groups = vec![
        Group {
            name: "ops".into(),
            role: Some("lead".into()),
        },
        Group {
            name: "all".into(),
            role: None,
        },
    ];
    a.profile = object(json!({"avatar": "🦀", "tags": ["x", "y"], "n": 3, "nested": {"k": null}}));
    a.stats = Some(json!({"sent": 3, "load": 0.5}));
    a.summary = Some("refactoring the hub".into());
    a.status = Status::Dnd;
    a.visible = false;
    a.hostname = Some("box".into());
    a.peer_type = Some("claude".into());
    a.channel = Some("cli".into());
    a.model = Some("opus".into());
    let mut b = record("m1", "p-b", "n2/1");
    b.session_pubkey = Some("cd".repeat(32));
    b.peer_role = PeerRole::Session;
    b.pid = None;
    b.connected_at += 5;
    b.last_pong_at += 7;
    let c = record("m2", "p-c", "n1/2");

    for r in [&a, &b, &c] {
        assert!(
            p.attach(r.clone()).await.unwrap().is_none(),
            "a first attach replaces nothing"
        );
    }
    let m1 = p.list("m1").await.unwrap();
    assert_eq!(all_fields(&m1), all_fields(&[a.clone(), b.clone()]));
    assert!(m1.iter().all(PresenceRecord::is_live));
    let got_b = m1.iter().find(|r| r.presence_id == "p-b").unwrap();
    assert_eq!(got_b.routing_key(), "cd".repeat(32));
    assert_eq!(got_b.peer_role, PeerRole::Session);
    let got_a = m1.iter().find(|r| r.presence_id == "p-a").unwrap();
    assert_eq!(got_a.routing_key(), "ab".repeat(32));
    assert_eq!(got_a.session_pubkey, None);

    assert_eq!(
        all_fields(&p.list("m2").await.unwrap()),
        all_fields(&[c]),
        "list is per mesh"
    );
    assert!(p.list("m3").await.unwrap().is_empty());
}

async fn reattach_returns_the_replaced_record(p: &dyn Presence) {
    let old = record("m1", "p1", "n1/1");
    assert!(p.attach(old.clone()).await.unwrap().is_none());
    let mut new = record("m1", "p1", "n2/1");
    new.display_name = "renamed".into();
    new.connected_at += 10;
    let replaced = p
        .attach(new.clone())
        .await
        .unwrap()
        .expect("a reattach returns the record it replaced");
    assert_eq!(fields(&replaced), fields(&old));
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(std::slice::from_ref(&new)),
        "the new owner wins"
    );

    // The replaced connection owns nothing any more.
    assert!(
        !p.update("m1", "p1", "n1/1", PresencePatch::Status(Status::Working))
            .await
            .unwrap()
    );
    assert!(!p.release("m1", "p1", "n1/1", 5_000).await.unwrap());
    assert!(p.remove("m1", "p1", "n1/1").await.unwrap().is_none());
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(std::slice::from_ref(&new))
    );

    // The usual reattach takes over a record in grace, and ends the grace.
    assert!(p.release("m1", "p1", "n2/1", 5_000).await.unwrap());
    let newer = record("m1", "p1", "n3/1");
    let replaced = p.attach(newer.clone()).await.unwrap().unwrap();
    assert_eq!(fields(&replaced), fields(&in_grace(&new, 5_000)));
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(std::slice::from_ref(&newer))
    );
    assert!(p.expire("m1", "p1", i64::MAX).await.unwrap().is_none());
    assert!(p.expire_due(i64::MAX).await.unwrap().is_empty());
    assert!(
        p.update("m1", "p1", "n3/1", PresencePatch::Status(Status::Working))
            .await
            .unwrap()
    );
}

async fn update_needs_the_owning_live_connection(p: &dyn Presence) {
    let mut r = record("m1", "p1", "n1/1");
    r.profile = object(json!({"a": 1}));
    p.attach(r.clone()).await.unwrap();

    let groups = vec![Group {
        name: "ops".into(),
        role: None,
    }];
    for patch in [
        PresencePatch::Status(Status::Working),
        PresencePatch::Summary("busy".into()),
        PresencePatch::Visible(false),
        PresencePatch::Profile(object(json!({"b": 2}))),
        PresencePatch::Stats(json!({"sent": 1})),
        PresencePatch::Groups(groups.clone()),
        PresencePatch::LastPong(1_700_000_000_999),
    ] {
        assert!(
            p.update("m1", "p1", "n1/1", patch.clone()).await.unwrap(),
            "{patch:?} by the owner"
        );
    }
    let mut want = r.clone();
    want.status = Status::Working;
    want.summary = Some("busy".into());
    want.visible = false;
    want.profile = object(json!({"a": 1, "b": 2}));
    want.stats = Some(json!({"sent": 1}));
    want.groups = groups;
    want.last_pong_at = 1_700_000_000_999;
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(std::slice::from_ref(&want))
    );

    let stale = PresencePatch::Status(Status::Dnd);
    assert!(
        !p.update("m1", "p1", "n1/2", stale.clone()).await.unwrap(),
        "a stale connection"
    );
    assert!(
        !p.update("m2", "p1", "n1/1", stale.clone()).await.unwrap(),
        "another mesh"
    );
    assert!(
        !p.update("m1", "p9", "n1/1", stale.clone()).await.unwrap(),
        "an unknown presence"
    );
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(std::slice::from_ref(&want)),
        "refused updates change nothing"
    );

    assert!(p.release("m1", "p1", "n1/1", 5_000).await.unwrap());
    assert!(
        !p.update("m1", "p1", "n1/1", PresencePatch::Summary("after".into()))
            .await
            .unwrap(),
        "a record in grace is not updated"
    );
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(&[in_grace(&want, 5_000)])
    );
}

async fn release_moves_into_grace_once(p: &dyn Presence) {
    let r = record("m1", "p1", "n1/1");
    p.attach(r.clone()).await.unwrap();
    assert!(
        !p.release("m1", "p1", "n1/2", 5_000).await.unwrap(),
        "a stale connection"
    );
    assert!(!p.release("m1", "p9", "n1/1", 5_000).await.unwrap());
    assert!(p.list("m1").await.unwrap()[0].is_live());

    assert!(p.release("m1", "p1", "n1/1", 5_000).await.unwrap());
    let listed = p.list("m1").await.unwrap();
    assert!(!listed[0].is_live());
    assert_eq!(
        all_fields(&listed),
        all_fields(&[in_grace(&r, 5_000)]),
        "in grace, still owned by its connection"
    );

    assert!(
        !p.release("m1", "p1", "n1/1", 9_000).await.unwrap(),
        "a second release"
    );
    assert!(!p.release("m1", "p1", "n1/2", 9_000).await.unwrap());
    assert!(
        !p.update("m1", "p1", "n1/1", PresencePatch::Visible(false))
            .await
            .unwrap()
    );
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(&[in_grace(&r, 5_000)]),
        "the first deadline holds"
    );
}

async fn expire_only_after_the_deadline(p: &dyn Presence) {
    let r = record("m1", "p1", "n1/1");
    p.attach(r.clone()).await.unwrap();
    assert!(p.release("m1", "p1", "n1/1", 1_000).await.unwrap());
    assert!(
        p.expire("m1", "p1", 999).await.unwrap().is_none(),
        "before the deadline"
    );
    let got = p
        .expire("m1", "p1", 1_000)
        .await
        .unwrap()
        .expect("at the deadline");
    assert_eq!(fields(&got), fields(&in_grace(&r, 1_000)));
    assert!(
        p.expire("m1", "p1", 2_000).await.unwrap().is_none(),
        "only once"
    );
    assert!(p.list("m1").await.unwrap().is_empty());

    // A live record never expires.
    let live = record("m1", "p2", "n1/2");
    p.attach(live.clone()).await.unwrap();
    assert!(p.expire("m1", "p2", i64::MAX).await.unwrap().is_none());

    // A reattach before the deadline wins.
    p.attach(record("m1", "p3", "n1/3")).await.unwrap();
    assert!(p.release("m1", "p3", "n1/3", 1_000).await.unwrap());
    let back = record("m1", "p3", "n2/3");
    assert!(p.attach(back.clone()).await.unwrap().is_some());
    assert!(p.expire("m1", "p3", 2_000).await.unwrap().is_none());
    assert!(p.expire("m1", "p9", 2_000).await.unwrap().is_none());
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(&[live, back])
    );
}

async fn remove_needs_the_owner(p: &dyn Presence) {
    let r = record("m1", "p1", "n1/1");
    p.attach(r.clone()).await.unwrap();
    assert!(
        p.remove("m1", "p1", "n1/2").await.unwrap().is_none(),
        "a stale connection"
    );
    assert_eq!(p.list("m1").await.unwrap().len(), 1);
    let got = p
        .remove("m1", "p1", "n1/1")
        .await
        .unwrap()
        .expect("the owner");
    assert_eq!(fields(&got), fields(&r));
    assert!(
        p.remove("m1", "p1", "n1/1").await.unwrap().is_none(),
        "only once"
    );
    assert!(p.list("m1").await.unwrap().is_empty());

    // A record in grace is still its connection's, and once removed it never expires.
    let g = record("m1", "p2", "n1/2");
    p.attach(g.clone()).await.unwrap();
    assert!(p.release("m1", "p2", "n1/2", 1_000).await.unwrap());
    let got = p.remove("m1", "p2", "n1/2").await.unwrap().unwrap();
    assert_eq!(fields(&got), fields(&in_grace(&g, 1_000)));
    assert!(p.expire("m1", "p2", 2_000).await.unwrap().is_none());
    assert!(p.expire_due(2_000).await.unwrap().is_empty());
}

async fn signatures_are_remembered_for_their_ttl(p: &dyn Presence) {
    let long = Duration::from_secs(60);
    assert!(
        p.remember_signature("sig-a", long).await.unwrap(),
        "first sight"
    );
    assert!(
        !p.remember_signature("sig-a", long).await.unwrap(),
        "a replay"
    );
    assert!(
        p.remember_signature("sig-b", long).await.unwrap(),
        "another signature"
    );
    assert!(!p.remember_signature("sig-a", long).await.unwrap());

    // After the ttl the signature is forgotten, and not before.
    let ttl = Duration::from_millis(200);
    let start = Instant::now();
    assert!(p.remember_signature("sig-short", ttl).await.unwrap());
    poll_until("the short signature to be forgotten", WAIT, async || {
        if !p.remember_signature("sig-short", ttl).await.unwrap() {
            return false;
        }
        let elapsed = start.elapsed();
        // 5 ms for Redis's millisecond clock.
        assert!(
            elapsed + Duration::from_millis(5) >= ttl,
            "forgotten after {elapsed:?}, before its ttl of {ttl:?}"
        );
        true
    })
    .await;
    assert!(
        !p.remember_signature("sig-short", ttl).await.unwrap(),
        "remembered again"
    );
    assert!(!p.remember_signature("sig-a", long).await.unwrap());
}

async fn send_tokens_limit_the_burst(p: &dyn Presence) {
    let start = Instant::now();
    for i in 0..3 {
        assert!(
            p.take_send_token("k1", 3, 60).await.unwrap(),
            "token {i} of the burst"
        );
    }
    assert!(
        !p.take_send_token("k1", 3, 60).await.unwrap(),
        "the burst is spent"
    );
    for i in 0..3 {
        assert!(
            p.take_send_token("k2", 3, 60).await.unwrap(),
            "another key has its own bucket ({i})"
        );
    }
    assert!(!p.take_send_token("k2", 3, 60).await.unwrap());
    assert!(!p.take_send_token("k1", 3, 60).await.unwrap());
    for _ in 0..20 {
        assert!(
            p.take_send_token("k3", 0, 60).await.unwrap(),
            "burst 0 is unlimited"
        );
        assert!(
            p.take_send_token("k4", 3, 0).await.unwrap(),
            "per_min 0 is unlimited"
        );
    }

    // 60 a minute: one token back after a second.
    poll_until("a refilled token", WAIT, async || {
        p.take_send_token("k1", 3, 60).await.unwrap()
    })
    .await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "refilled after {elapsed:?}"
    );
    assert!(!p.take_send_token("k1", 3, 60).await.unwrap());
}

async fn expire_due_hands_each_record_out_once(p: &dyn Presence) {
    let mut want = Vec::new();
    for i in 0..40 {
        let mesh = if i % 2 == 0 { "m1" } else { "m2" };
        let id = format!("p{i:02}");
        let conn = format!("n1/{i}");
        p.attach(record(mesh, &id, &conn)).await.unwrap();
        assert!(p.release(mesh, &id, &conn, 1_000 + i).await.unwrap());
        want.push(id);
    }
    p.attach(record("m1", "live", "n1/100")).await.unwrap();
    p.attach(record("m1", "later", "n1/101")).await.unwrap();
    assert!(p.release("m1", "later", "n1/101", 1_000_000).await.unwrap());

    assert!(
        p.expire_due(999).await.unwrap().is_empty(),
        "nothing is due yet"
    );
    let (x, y) = tokio::join!(p.expire_due(2_000), p.expire_due(2_000));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x.iter().chain(&y).all(|r| r.grace_until.is_some()));
    let both: Vec<PresenceRecord> = x.into_iter().chain(y).collect();
    assert_eq!(
        ids(&both),
        want,
        "two concurrent callers get each due record once"
    );
    assert!(p.expire_due(2_000).await.unwrap().is_empty());
    assert_eq!(ids(&p.list("m1").await.unwrap()), ["later", "live"]);
    assert!(p.list("m2").await.unwrap().is_empty());
}

async fn live_count_follows_every_change_of_liveness(p: &dyn Presence) {
    async fn counts(p: &dyn Presence) -> (usize, usize) {
        (
            p.live_count("m1").await.unwrap(),
            p.live_count("m2").await.unwrap(),
        )
    }
    assert_eq!(counts(p).await, (0, 0));
    for (id, conn) in [("p1", "n1/1"), ("p2", "n1/2"), ("p3", "n2/1")] {
        p.attach(record("m1", id, conn)).await.unwrap();
    }
    p.attach(record("m2", "q1", "n1/3")).await.unwrap();
    assert_eq!(counts(p).await, (3, 1));
    // A live record taken over by another connection (a reattach elsewhere) counts once.
    p.attach(record("m1", "p1", "n2/2")).await.unwrap();
    assert_eq!(counts(p).await, (3, 1));
    // Grace does not count; a second release changes nothing; a reattach counts again.
    assert!(p.release("m1", "p2", "n1/2", 1_000).await.unwrap());
    assert!(!p.release("m1", "p2", "n1/2", 1_000).await.unwrap());
    assert_eq!(counts(p).await, (2, 1));
    p.attach(record("m1", "p2", "n2/3")).await.unwrap();
    assert_eq!(counts(p).await, (3, 1));
    // Removal by a stale owner changes nothing; by the owner it does.
    assert!(p.remove("m1", "p1", "n1/1").await.unwrap().is_none());
    assert_eq!(counts(p).await, (3, 1));
    assert!(p.remove("m1", "p1", "n2/2").await.unwrap().is_some());
    assert_eq!(counts(p).await, (2, 1));
    // Expiry (the timer and the backstop) removes records that no longer counted.
    assert!(p.release("m1", "p2", "n2/3", 1_000).await.unwrap());
    assert!(p.release("m1", "p3", "n2/1", 2_000).await.unwrap());
    assert_eq!(counts(p).await, (0, 1));
    assert!(p.expire("m1", "p2", 1_000).await.unwrap().is_some());
    assert_eq!(ids(&p.expire_due(2_000).await.unwrap()), ["p3"]);
    assert_eq!(counts(p).await, (0, 1));
    // And a mesh fills up again from zero.
    p.attach(record("m1", "p4", "n1/9")).await.unwrap();
    assert_eq!(counts(p).await, (1, 1));
}

async fn proven_session_keys_are_remembered_per_mesh_for_their_ttl(p: &dyn Presence) {
    let (k, short) = ("cd".repeat(32), "ef".repeat(32));
    assert_eq!(p.session_key_prover("m1", &k).await.unwrap(), None);
    p.remember_session_key("m1", &k, "alice", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        p.session_key_prover("m1", &k).await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(
        p.session_key_prover("m2", &k).await.unwrap(),
        None,
        "per mesh"
    );
    // The same member proving it again with a shorter TTL does not shorten the memory.
    p.remember_session_key("m1", &k, "alice", Duration::from_millis(1))
        .await
        .unwrap();
    p.remember_session_key("m1", &short, "bob", Duration::from_millis(150))
        .await
        .unwrap();
    assert_eq!(
        p.session_key_prover("m1", &short).await.unwrap().as_deref(),
        Some("bob")
    );
    poll_until("the short memory ends", WAIT, async || {
        p.session_key_prover("m1", &short).await.unwrap().is_none()
    })
    .await;
    assert_eq!(
        p.session_key_prover("m1", &k).await.unwrap().as_deref(),
        Some("alice")
    );
    // Another member that proved the key too takes it over.
    p.remember_session_key("m1", &k, "carol", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        p.session_key_prover("m1", &k).await.unwrap().as_deref(),
        Some("carol")
    );
}

/// The status hook's lookup: the most recently connected live record of a process, in any
/// mesh; a record in grace or gone is not found, an older live one of the process is.
async fn processes_are_found_across_meshes(p: &dyn Presence) {
    assert!(p.find_process(4242, "/work").await.unwrap().is_none());
    let older = record("m1", "A", "n1/1");
    let newer = PresenceRecord {
        connected_at: older.connected_at + 1_000,
        ..record("m2", "B", "n2/1")
    };
    let elsewhere = PresenceRecord {
        cwd: "/elsewhere".into(),
        ..record("m1", "C", "n1/2")
    };
    p.attach(older.clone()).await.unwrap();
    p.attach(elsewhere).await.unwrap();
    let found = p.find_process(4242, "/work").await.unwrap().unwrap();
    assert_eq!(found.presence_id, "A");
    p.attach(newer).await.unwrap();
    let found = p.find_process(4242, "/work").await.unwrap().unwrap();
    assert_eq!(
        (found.mesh_id.as_str(), found.presence_id.as_str()),
        ("m2", "B"),
        "the most recently connected, in another mesh"
    );
    assert!(
        p.find_process(4243, "/work").await.unwrap().is_none(),
        "another pid"
    );
    assert_eq!(
        p.find_process(4242, "/elsewhere")
            .await
            .unwrap()
            .unwrap()
            .presence_id,
        "C"
    );
    // An update (the ping tick) keeps it findable; grace and removal end it.
    assert!(
        p.update("m2", "B", "n2/1", PresencePatch::LastPong(1))
            .await
            .unwrap()
    );
    assert!(p.release("m2", "B", "n2/1", i64::MAX).await.unwrap());
    assert_eq!(
        p.find_process(4242, "/work")
            .await
            .unwrap()
            .unwrap()
            .presence_id,
        "A",
        "B is in grace: the older live record"
    );
    p.remove("m1", "A", "n1/1").await.unwrap();
    assert!(p.find_process(4242, "/work").await.unwrap().is_none());
    let without_pid = PresenceRecord {
        pid: None,
        ..record("m3", "D", "n1/3")
    };
    p.attach(without_pid).await.unwrap();
    assert!(p.find_process(4242, "/work").await.unwrap().is_none());
}

macro_rules! presence_contract {
    ($($name:ident),* $(,)?) => {
        mod presence_memory {
            $(#[tokio::test] async fn $name() { super::$name(&super::MemoryPresence::new()).await; })*
        }
        mod presence_redis {
            $(#[tokio::test] async fn $name() {
                let server = super::RedisServer::start();
                super::$name(&super::redis_presence(&server, &super::prefix()).await).await;
            })*
        }
    };
}

presence_contract!(
    attach_and_list_round_trip,
    reattach_returns_the_replaced_record,
    update_needs_the_owning_live_connection,
    release_moves_into_grace_once,
    expire_only_after_the_deadline,
    remove_needs_the_owner,
    signatures_are_remembered_for_their_ttl,
    send_tokens_limit_the_burst,
    expire_due_hands_each_record_out_once,
    live_count_follows_every_change_of_liveness,
    proven_session_keys_are_remembered_per_mesh_for_their_ttl,
    processes_are_found_across_meshes,
);

// A single node never dies: on the memory backend heartbeat and reaping do nothing by design.

#[tokio::test]
async fn redis_presence_reaps_only_the_live_records_of_dead_nodes() {
    let server = RedisServer::start();
    let p = redis_presence(&server, &prefix()).await;
    let now = common::now_ms();
    p.heartbeat("A", now - 60_000, 8_000).await.unwrap();
    p.heartbeat("B", now, 8_000).await.unwrap();

    let a1 = record("m1", "p1", "A/1");
    p.attach(a1.clone()).await.unwrap();
    let a2 = record("m1", "p2", "A/2");
    p.attach(a2.clone()).await.unwrap();
    assert!(p.release("m1", "p2", "A/2", now + 60_000).await.unwrap());
    let b1 = record("m1", "p3", "B/1");
    p.attach(b1.clone()).await.unwrap();
    p.attach(record("m2", "p4", "A/3")).await.unwrap();
    let moved = record("m2", "p4", "B/9");
    assert!(
        p.attach(moved.clone()).await.unwrap().is_some(),
        "reattached on B"
    );

    let reaped = p.reap_dead_nodes(now - 10_000).await.unwrap();
    assert_eq!(
        all_fields(&reaped),
        all_fields(std::slice::from_ref(&a1)),
        "only A's live record"
    );
    assert!(
        p.reap_dead_nodes(now - 10_000).await.unwrap().is_empty(),
        "a second reap"
    );
    assert!(
        p.reap_dead_nodes(now - 1).await.unwrap().is_empty(),
        "B is alive"
    );
    assert_eq!(
        all_fields(&p.list("m1").await.unwrap()),
        all_fields(&[in_grace(&a2, now + 60_000), b1.clone()])
    );
    assert_eq!(
        all_fields(&p.list("m2").await.unwrap()),
        all_fields(&[moved])
    );

    // A's record in grace still ends when its lease does.
    assert_eq!(ids(&p.expire_due(now + 60_000).await.unwrap()), ["p2"]);

    // A node that left cleanly is not reaped.
    p.leave("B").await.unwrap();
    assert!(p.reap_dead_nodes(i64::MAX).await.unwrap().is_empty());
    assert_eq!(ids(&p.list("m1").await.unwrap()), ["p3"]);
}

#[tokio::test]
async fn redis_presence_reaping_a_dead_node_frees_its_live_count() {
    let server = RedisServer::start();
    let p = redis_presence(&server, &prefix()).await;
    let now = common::now_ms();
    p.heartbeat("A", now - 60_000, 8_000).await.unwrap();
    p.heartbeat("B", now, 8_000).await.unwrap();
    p.attach(record("m1", "a1", "A/1")).await.unwrap();
    p.attach(record("m1", "a2", "A/2")).await.unwrap();
    assert!(p.release("m1", "a2", "A/2", now + 60_000).await.unwrap());
    p.attach(record("m1", "b1", "B/1")).await.unwrap();
    p.attach(record("m2", "moved", "A/3")).await.unwrap();
    p.attach(record("m2", "moved", "B/9")).await.unwrap();
    assert_eq!(p.live_count("m1").await.unwrap(), 2);
    assert_eq!(p.live_count("m2").await.unwrap(), 1);
    assert_eq!(ids(&p.reap_dead_nodes(now - 10_000).await.unwrap()), ["a1"]);
    assert_eq!(p.live_count("m1").await.unwrap(), 1, "only B's record");
    assert_eq!(p.live_count("m2").await.unwrap(), 1, "reattached on B");
}

#[tokio::test]
async fn redis_presence_concurrent_reapers_get_each_record_once() {
    let server = RedisServer::start();
    let prefix = prefix();
    // Two replicas, each with its own connection.
    let (p, q) = (
        redis_presence(&server, &prefix).await,
        redis_presence(&server, &prefix).await,
    );
    let now = common::now_ms();
    p.heartbeat("A", now - 60_000, 8_000).await.unwrap();
    q.heartbeat("C", now - 60_000, 8_000).await.unwrap();
    p.heartbeat("B", now, 8_000).await.unwrap();
    let mut want = Vec::new();
    for i in 0..30 {
        for node in ["A", "C"] {
            let mesh = if i % 2 == 0 { "m1" } else { "m2" };
            let id = format!("{node}-{i:02}");
            p.attach(record(mesh, &id, &format!("{node}/{i}")))
                .await
                .unwrap();
            want.push(id);
        }
    }
    want.sort();
    p.attach(record("m1", "B-00", "B/0")).await.unwrap();

    let (x, y) = tokio::join!(
        p.reap_dead_nodes(now - 10_000),
        q.reap_dead_nodes(now - 10_000)
    );
    let both: Vec<PresenceRecord> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    assert_eq!(ids(&both), want, "each record reaped once");
    assert!(both.iter().all(PresenceRecord::is_live));
    assert!(p.reap_dead_nodes(now - 10_000).await.unwrap().is_empty());
    assert!(q.reap_dead_nodes(now - 10_000).await.unwrap().is_empty());
    assert_eq!(ids(&p.list("m1").await.unwrap()), ["B-00"]);
    assert!(q.list("m2").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Bus contract
// ---------------------------------------------------------------------------------------

/// Every field of an event, for comparing events (`MeshEvent` has no `PartialEq`).
fn describe(e: &MeshEvent) -> Value {
    match e {
        MeshEvent::Deliver {
            presence_ids,
            priority,
            frame,
            ..
        } => json!({"deliver": {
            "presence_ids": presence_ids.to_vec(),
            "priority": priority.map(Priority::as_str),
            "frame": frame.to_vec(),
        }}),
        MeshEvent::Doorbell { member_id } => json!({"doorbell": member_id}),
        MeshEvent::Direct {
            member_id,
            message,
            frame,
        } => json!({"direct": {
            "member_id": member_id,
            "message": serde_json::to_value(message).unwrap(),
            "frame": frame.to_vec(),
        }}),
        MeshEvent::MembersChanged => json!("members_changed"),
        MeshEvent::HookStatus {
            presence_id,
            status,
        } => json!({"hook_status": {"presence_id": presence_id, "status": status.as_str()}}),
        MeshEvent::Close {
            conn_ids,
            code,
            reason,
            after,
        } => json!({"close": {
            "conn_ids": conn_ids,
            "code": code,
            "reason": reason,
            "after": match after { AfterClose::Grace => "grace", AfterClose::End => "end" },
        }}),
        MeshEvent::StateChange {
            presence_ids,
            key,
            version,
            frame,
        } => json!({"state_change": {
            "presence_ids": presence_ids.to_vec(),
            "key": key,
            "version": version,
            "frame": frame.to_vec(),
        }}),
    }
}

fn deliver(presence_ids: &[&str], priority: Option<Priority>, frame: &[u8]) -> MeshEvent {
    MeshEvent::Deliver {
        presence_ids: presence_ids.iter().map(|s| s.to_string()).collect(),
        priority,
        frame: Bytes::copy_from_slice(frame),
        trace: None,
    }
}

fn numbered(i: usize) -> MeshEvent {
    deliver(
        &["p1"],
        Some(Priority::Next),
        format!("frame {i}").as_bytes(),
    )
}

async fn bus_delivers_each_event_once(bus: &dyn Bus, events: &mut Events) {
    assert!(bus.healthy().await);
    bus.subscribe("m1").await.unwrap();
    let sent = [
        deliver(
            &["p1", "p2"],
            Some(Priority::Low),
            b"{\"type\":\"push\",\"ciphertext\":\"a\\nb\"}\n\x00\xff\xfe",
        ),
        deliver(&["p3"], Some(Priority::Now), b"now"),
        deliver(&["p1"], None, b""),
        MeshEvent::Doorbell {
            member_id: "member-1".into(),
        },
        MeshEvent::MembersChanged,
        MeshEvent::HookStatus {
            presence_id: "p9".into(),
            status: Status::Working,
        },
        MeshEvent::Close {
            conn_ids: vec!["n1/1".into(), "n2/7".into()],
            code: codes::KICKED.code,
            reason: codes::KICKED.reason.into(),
            after: AfterClose::End,
        },
        MeshEvent::Close {
            conn_ids: vec!["n1/2".into()],
            code: codes::GOING_AWAY.code,
            reason: codes::GOING_AWAY.reason.into(),
            after: AfterClose::Grace,
        },
        // The frame travels raw after the header, as a `Deliver`'s does.
        MeshEvent::StateChange {
            presence_ids: vec!["p1".to_string(), "p4".to_string()].into(),
            key: "deploy\nkey".into(),
            version: 7,
            frame: Bytes::from_static(b"{\"type\":\"state_change\",\"value\":\"a\\nb\"}\n\x00"),
        },
        // A doorbell with its committed message (a `Doorbell` on the wire), frame raw.
        MeshEvent::Direct {
            member_id: "member-2".into(),
            message: broker::cluster::bus::DirectHeader {
                id: "msg-1".into(),
                session_key: Some("sk".into()),
                priority: Priority::Next,
                client_id: Some("c\n1".into()),
                trace: None,
                created_at: 42,
            },
            frame: Bytes::from_static(b"{\"type\":\"push\",\"ciphertext\":\"a\\nb\"}\n\x00"),
        },
    ];
    for e in &sent {
        bus.publish("m1", e.clone()).await.unwrap();
        events
            .expect("m1", e, "the subscriber gets the event")
            .await;
    }
    events
        .expect_quiet("each event arrives once (no echo)")
        .await;
    assert!(bus.healthy().await);
    assert_eq!(
        *bus.reconnects().borrow(),
        0,
        "no outage, no reconnect tick"
    );
}

async fn bus_keeps_publish_order(bus: &dyn Bus, events: &mut Events) {
    bus.subscribe("m1").await.unwrap();
    bus.subscribe("m2").await.unwrap();
    for i in 0..100 {
        bus.publish("m1", numbered(i)).await.unwrap();
        bus.publish("m2", numbered(1000 + i)).await.unwrap();
    }
    let (mut m1, mut m2) = (0, 0);
    for _ in 0..200 {
        let (mesh, got) = events.next("the numbered frames").await;
        let want = if mesh == "m1" {
            m1 += 1;
            numbered(m1 - 1)
        } else {
            m2 += 1;
            numbered(1000 + m2 - 1)
        };
        assert_eq!(describe(&got), describe(&want), "publish order on {mesh}");
    }
    assert_eq!((m1, m2), (100, 100));
    events.expect_quiet("no duplicates").await;
}

macro_rules! bus_contract {
    ($($name:ident),* $(,)?) => {
        mod bus_memory {
            $(#[tokio::test] async fn $name() {
                let (bus, mut events) = super::memory_bus();
                super::$name(&bus, &mut events).await;
            })*
        }
        mod bus_redis {
            $(#[tokio::test] async fn $name() {
                let server = super::RedisServer::start();
                let (bus, mut events, _stop) = super::redis_bus(&server, &super::prefix(), "n1").await;
                super::$name(&bus, &mut events).await;
            })*
        }
    };
}

bus_contract!(bus_delivers_each_event_once, bus_keeps_publish_order);

#[tokio::test]
async fn memory_bus_stops_after_unsubscribe() {
    let (bus, mut events) = memory_bus();
    bus.publish("m1", numbered(0)).await.unwrap();
    events.expect_quiet("not subscribed yet").await;
    bus.subscribe("m1").await.unwrap();
    bus.publish("m1", numbered(1)).await.unwrap();
    events.expect("m1", &numbered(1), "subscribed").await;
    bus.unsubscribe("m1").await.unwrap();
    bus.publish("m1", numbered(2)).await.unwrap();
    events.expect_quiet("unsubscribed").await;
    drop(events);
    assert!(!bus.healthy().await, "the hub has stopped");
}

#[tokio::test]
async fn redis_bus_reaches_every_subscribed_replica() {
    let server = RedisServer::start();
    let prefix = prefix();
    let (a, mut a_events, _a) = redis_bus(&server, &prefix, "A").await;
    let (b, mut b_events, _b) = redis_bus(&server, &prefix, "B").await;
    // A third replica subscribed to nothing, to publish without receiving.
    let (c, _c_events, _c) = redis_bus(&server, &prefix, "C").await;
    a.subscribe("m1").await.unwrap();
    b.subscribe("m1").await.unwrap();

    let e = deliver(&["p1"], Some(Priority::Next), b"from A");
    a.publish("m1", e.clone()).await.unwrap();
    b_events.expect("m1", &e, "B gets A's event").await;
    a_events.expect("m1", &e, "A gets its own event").await;
    let d = MeshEvent::Doorbell {
        member_id: "member-1".into(),
    };
    b.publish("m1", d.clone()).await.unwrap();
    a_events.expect("m1", &d, "A gets B's event").await;
    b_events.expect("m1", &d, "B gets its own event").await;
    a_events.expect_quiet("once on A").await;
    b_events.expect_quiet("once on B").await;

    // Order holds across replicas too.
    for i in 0..100 {
        a.publish("m1", numbered(i)).await.unwrap();
    }
    for i in 0..100 {
        b_events
            .expect("m1", &numbered(i), "A's frames in order on B")
            .await;
        a_events
            .expect("m1", &numbered(i), "A's frames in order on A")
            .await;
    }

    b.unsubscribe("m1").await.unwrap();
    b.subscribe("m2").await.unwrap();
    let x = deliver(&["p1"], None, b"after B left, from A");
    a.publish("m1", x.clone()).await.unwrap();
    let z = deliver(&["p1"], None, b"after B left, from C");
    c.publish("m1", z.clone()).await.unwrap();
    a_events.expect("m1", &x, "A still gets its own").await;
    a_events.expect("m1", &z, "A still gets the others'").await;
    // Redis sends B's messages in publish order: had B got x or z, they would come first.
    let y = deliver(&["p2"], None, b"barrier");
    c.publish("m2", y.clone()).await.unwrap();
    b_events
        .expect("m2", &y, "B gets nothing more of m1, only m2")
        .await;
    b_events.expect_quiet("B unsubscribed from m1").await;
    a_events.expect_quiet("A not subscribed to m2").await;
}

/// Stops Redis for `outage` (at least until the bus noticed), restarts it, and checks the
/// bus heals: healthy again, a reconnect tick, and its subscription back.
async fn redis_bus_survives_an_outage(outage: Duration, recovery: Duration) {
    let mut server = RedisServer::start();
    let prefix = prefix();
    let (a, mut a_events, _a) = redis_bus(&server, &prefix, "A").await;
    a.subscribe("m1").await.unwrap();
    assert!(a.healthy().await);
    let before = *a.reconnects().borrow();

    let stopped = Instant::now();
    tokio::task::block_in_place(|| server.stop());
    poll_until("the bus to notice the outage", WAIT, async || {
        !a.healthy().await
    })
    .await;
    if let Some(left) = outage.checked_sub(stopped.elapsed()) {
        // The outage itself is what is under test.
        tokio::time::sleep(left).await;
    }
    tokio::task::block_in_place(|| server.restart());
    poll_until(
        "the bus to be healthy after the restart",
        recovery,
        async || a.healthy().await,
    )
    .await;
    poll_until("a reconnect tick", recovery, async || {
        *a.reconnects().borrow() > before
    })
    .await;

    // A fresh replica's publish reaches A on the mesh it subscribed before the outage.
    let (c, _c_events, _c) = redis_bus(&server, &prefix, "C").await;
    let e = deliver(&["p1"], Some(Priority::Now), b"after the outage");
    let deadline = Instant::now() + WAIT;
    loop {
        c.publish("m1", e.clone()).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(200), a_events.0.recv()).await {
            Ok(Some((mesh, got))) => {
                assert_eq!((mesh.as_str(), describe(&got)), ("m1", describe(&e)));
                break;
            }
            Ok(None) => panic!("A's sink closed"),
            Err(_) => assert!(
                Instant::now() < deadline,
                "A never resubscribed to m1 after the outage"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_recovers_after_an_outage() {
    redis_bus_survives_an_outage(Duration::ZERO, WAIT).await;
}

/// An outage longer than the connection manager's reconnect retries (about 6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_recovers_after_a_long_outage() {
    redis_bus_survives_an_outage(Duration::from_secs(12), Duration::from_secs(20)).await;
}

// ---------------------------------------------------------------------------------------
// Wire format and layering
// ---------------------------------------------------------------------------------------

/// Messages exactly as the previous release's hand-written encoder published them.
const PREVIOUS_RELEASE: &[(&[u8], &str)] = &[
    (
        b"{\"o\":\"n1\",\"k\":\"d\",\"p\":[\"p1\",\"p2\"],\"r\":\"low\",\"end\":false,\"t\":\"00-abc-def-01\"}\n{\"type\":\"push\"}\n\x00",
        r#"{"deliver":{"presence_ids":["p1","p2"],"priority":"low","frame":[123,34,116,121,112,101,34,58,34,112,117,115,104,34,125,10,0]}}"#,
    ),
    (
        b"{\"o\":\"n1\",\"k\":\"d\",\"p\":[\"p1\"],\"end\":false}\nx\ny",
        r#"{"deliver":{"presence_ids":["p1"],"priority":null,"frame":[120,10,121]}}"#,
    ),
    (
        b"{\"o\":\"n1\",\"k\":\"b\",\"m\":\"m1\",\"end\":false}\n",
        r#"{"doorbell":"m1"}"#,
    ),
    (
        b"{\"o\":\"n1\",\"k\":\"u\",\"end\":false,\"t\":\"00-abc-def-01\"}\n",
        r#""members_changed""#,
    ),
    (
        b"{\"o\":\"n1\",\"k\":\"c\",\"p\":[\"n/1\",\"n/2\"],\"code\":4001,\"reason\":\"kicked\",\"end\":true}\n",
        r#"{"close":{"conn_ids":["n/1","n/2"],"code":4001,"reason":"kicked","after":"end"}}"#,
    ),
    (
        b"{\"o\":\"n1\",\"k\":\"c\",\"p\":[\"n/1\"],\"code\":1000,\"reason\":\"disconnected\",\"end\":false}\n",
        r#"{"close":{"conn_ids":["n/1"],"code":1000,"reason":"disconnected","after":"grace"}}"#,
    ),
];

/// The header the previous release decoded, field for field: what an older replica still
/// running during a rolling upgrade reads.
#[derive(serde::Deserialize)]
#[allow(dead_code, reason = "decoding is the assertion")]
struct PreviousHeader {
    o: String,
    k: char,
    #[serde(default)]
    p: Vec<String>,
    #[serde(default)]
    r: Option<Priority>,
    #[serde(default)]
    m: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    end: bool,
    #[serde(default)]
    t: Option<String>,
}

/// The derived wire format reads what the previous release published, and the previous
/// release reads what it publishes: replicas of both versions interoperate during a rollout.
#[test]
fn bus_wire_format_is_compatible_with_the_previous_release() {
    use broker::cluster::bus::wire;
    for (bytes, want) in PREVIOUS_RELEASE {
        let env = wire::decode(Bytes::from_static(bytes)).expect("decodes");
        assert_eq!(env.origin, "n1");
        let want: Value = serde_json::from_str(want).unwrap();
        assert_eq!(describe(&env.event), want);
        // Re-encoded, it decodes to the same event, and the old header schema reads it.
        let again = wire::encode("n2", &env.event, Some("00-x-y-01"));
        let back = wire::decode(Bytes::from(again.clone())).expect("re-decodes");
        assert_eq!(
            (back.origin.as_str(), back.trace.as_deref()),
            ("n2", Some("00-x-y-01"))
        );
        assert_eq!(describe(&back.event), want);
        let split = again.iter().position(|b| *b == b'\n').unwrap();
        let old: PreviousHeader = serde_json::from_slice(&again[..split]).expect("old reader");
        let old_split = bytes.iter().position(|b| *b == b'\n').unwrap();
        let expected: PreviousHeader = serde_json::from_slice(&bytes[..old_split]).unwrap();
        assert_eq!(
            (old.k, old.p, old.r, old.m, old.code, old.reason, old.end),
            (
                expected.k,
                expected.p,
                expected.r,
                expected.m,
                expected.code,
                expected.reason,
                expected.end
            )
        );
        assert_eq!(
            &again[split + 1..],
            &bytes[old_split + 1..],
            "raw frame bytes"
        );
    }
    assert!(wire::decode(Bytes::from_static(b"garbage")).is_none());
    assert!(wire::decode(Bytes::from_static(b"{\"o\":\"n\",\"k\":\"?\"}\n")).is_none());
}

/// The Rust files under `broker/src/<dir>`, with their text.
fn sources(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(dir);
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        if d.is_file() {
            out.push((
                d.display().to_string(),
                std::fs::read_to_string(&d).unwrap(),
            ));
            continue;
        }
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
                stack.push(path);
            }
        }
    }
    out
}

/// `cluster/` holds the seams and their backends only: nothing from the layers above it
/// (sessions, the node, the HTTP server, the local socket index, background workers).
#[test]
fn cluster_imports_nothing_from_above() {
    let above = ["session", "node", "server", "hub", "workers", "auth"];
    let mut offences = Vec::new();
    for (path, text) in sources("cluster") {
        for (n, line) in text.lines().enumerate() {
            for module in above {
                if line.contains(&format!("crate::{module}::"))
                    || line.contains(&format!("crate::{module};"))
                    || line.contains(&format!("crate::{module}}}"))
                {
                    offences.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "cluster/ imports from above:\n{}",
        offences.join("\n")
    );
}

/// The socket index knows sockets, not the bus: the dispatcher translates events.
#[test]
fn hub_knows_no_bus_types() {
    for (path, text) in sources("hub.rs") {
        for (n, line) in text.lines().enumerate() {
            assert!(
                !line.contains("cluster::bus") && !line.contains("MeshEvent"),
                "{path}:{}: {}",
                n + 1,
                line.trim()
            );
        }
    }
}

/// Two heartbeats of one replica that overlap (the housekeeping tick and a re-sync) right
/// after Redis lost its data: whichever reply is processed first, neither may conclude that
/// a survivor removed this replica (that would close every socket on it for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_overlapping_heartbeats_after_a_data_loss_are_not_a_reap() {
    let server = RedisServer::start();
    let p = std::sync::Arc::new(redis_presence(&server, &prefix()).await);
    let (_, mut admin) = redis_conn(&server).await;
    for round in 0..20 {
        let now = common::now_ms();
        p.heartbeat("A", now, 8_000).await.unwrap();
        p.heartbeat("A", now, 8_000).await.unwrap();
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        let beats: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.heartbeat("A", common::now_ms(), 8_000).await })
            })
            .collect();
        let mut lost = 0;
        for beat in beats {
            let beat = beat.await.unwrap().unwrap();
            assert!(
                !beat.reaped,
                "round {round}: an overlapping heartbeat saw a reap"
            );
            lost += usize::from(beat.data_lost);
        }
        assert_eq!(lost, 1, "round {round}: the data loss is reported once");
    }
}

// ---------------------------------------------------------------------------------------
// Stream subscriptions (`cluster::subscriptions`)
// ---------------------------------------------------------------------------------------

use broker::cluster::subscriptions::{
    MemoryStreamSubscriptions, RedisStreamSubscriptions, StreamSubscriptions, Subscribe,
};

async fn redis_stream_subscriptions(server: &RedisServer) -> RedisStreamSubscriptions {
    let (_, conn) = redis_conn(server).await;
    RedisStreamSubscriptions::new(conn, &prefix())
}

/// Subscribing is idempotent and bounded per presence, streams and presences are per
/// mesh, and both directions (a stream's subscribers, a presence's streams) agree.
async fn subscriptions_are_per_presence_and_bounded(s: &dyn StreamSubscriptions) {
    assert_eq!(
        s.subscribe("m1", "p1", "logs", 2).await.unwrap(),
        Subscribe::Added
    );
    assert_eq!(
        s.subscribe("m1", "p1", "logs", 2).await.unwrap(),
        Subscribe::Already
    );
    assert_eq!(
        s.subscribe("m1", "p1", "a:b c", 2).await.unwrap(),
        Subscribe::Added
    );
    assert_eq!(
        s.subscribe("m1", "p1", "third", 2).await.unwrap(),
        Subscribe::Full
    );
    assert_eq!(
        s.subscribe("m1", "p1", "logs", 2).await.unwrap(),
        Subscribe::Already,
        "at the bound"
    );
    assert_eq!(
        s.subscribe("m1", "p2", "logs", 0).await.unwrap(),
        Subscribe::Added
    );
    assert_eq!(
        s.subscribe("m2", "p1", "logs", 2).await.unwrap(),
        Subscribe::Added
    );
    assert_eq!(
        s.subscribers("m1", &["logs", "a:b c", "third", "none"])
            .await
            .unwrap(),
        vec![
            vec!["p1".to_string(), "p2".to_string()],
            vec!["p1".to_string()],
            vec![],
            vec![]
        ]
    );
    assert_eq!(
        s.streams_of("m1", "p1").await.unwrap(),
        vec!["a:b c", "logs"]
    );
    assert_eq!(
        s.subscribers("m2", &["logs"]).await.unwrap(),
        vec![vec!["p1".to_string()]]
    );
    assert!(s.subscribers("m1", &[]).await.unwrap().is_empty());

    assert!(s.unsubscribe("m1", "p1", "logs").await.unwrap());
    assert!(!s.unsubscribe("m1", "p1", "logs").await.unwrap());
    assert_eq!(
        s.subscribers("m1", &["logs"]).await.unwrap(),
        vec![vec!["p2".to_string()]]
    );
    assert_eq!(
        s.subscribe("m1", "p1", "third", 2).await.unwrap(),
        Subscribe::Added,
        "room again"
    );
}

/// A presence that ends loses every subscription, in every stream's set; others keep theirs.
async fn an_ended_presence_loses_all_its_subscriptions(s: &dyn StreamSubscriptions) {
    for stream in ["a", "b", "c"] {
        s.subscribe("m1", "gone", stream, 0).await.unwrap();
    }
    s.subscribe("m1", "stays", "a", 0).await.unwrap();
    s.subscribe("m2", "gone", "a", 0).await.unwrap();
    assert_eq!(s.remove_presence("m1", "gone").await.unwrap(), 3);
    assert_eq!(s.remove_presence("m1", "gone").await.unwrap(), 0);
    assert!(s.streams_of("m1", "gone").await.unwrap().is_empty());
    assert_eq!(
        s.subscribers("m1", &["a", "b", "c"]).await.unwrap(),
        vec![vec!["stays".to_string()], vec![], vec![]]
    );
    assert_eq!(
        s.subscribers("m2", &["a"]).await.unwrap(),
        vec![vec!["gone".to_string()]],
        "per mesh"
    );
    s.subscribe("m1", "x", "b", 0).await.unwrap();
    s.subscribe("m1", "y", "b", 0).await.unwrap();
    s.prune("m1", &["x".to_string(), "stays".to_string()])
        .await
        .unwrap();
    assert_eq!(
        s.subscribers("m1", &["a", "b"]).await.unwrap(),
        vec![vec![], vec!["y".to_string()]]
    );
}

/// Concurrent subscribes of one presence never overshoot its bound.
async fn concurrent_subscribes_respect_the_bound(s: &dyn StreamSubscriptions) {
    let all =
        (0..20).map(|i| async move { s.subscribe("m1", "p", &format!("s{i}"), 5).await.unwrap() });
    let outcomes = futures_util::future::join_all(all).await;
    assert_eq!(
        outcomes.iter().filter(|o| **o == Subscribe::Added).count(),
        5
    );
    assert_eq!(s.streams_of("m1", "p").await.unwrap().len(), 5);
}

macro_rules! subscriptions_contract {
    ($($name:ident),* $(,)?) => {
        mod subscriptions_memory {
            $(#[tokio::test] async fn $name() { super::$name(&super::MemoryStreamSubscriptions::new()).await; })*
        }
        mod subscriptions_redis {
            $(#[tokio::test] async fn $name() {
                let server = super::RedisServer::start();
                super::$name(&super::redis_stream_subscriptions(&server).await).await;
            })*
        }
    };
}

subscriptions_contract!(
    subscriptions_are_per_presence_and_bounded,
    an_ended_presence_loses_all_its_subscriptions,
    concurrent_subscribes_respect_the_bound,
);

/// Two replicas' handles on one Redis see one registry.
#[tokio::test]
async fn redis_stream_subscriptions_are_shared_between_replicas() {
    let server = RedisServer::start();
    let p = prefix();
    let (_, c1) = redis_conn(&server).await;
    let (_, c2) = redis_conn(&server).await;
    let (a, b) = (
        RedisStreamSubscriptions::new(c1, &p),
        RedisStreamSubscriptions::new(c2, &p),
    );
    a.subscribe("m1", "p1", "logs", 1).await.unwrap();
    assert_eq!(
        b.subscribers("m1", &["logs"]).await.unwrap(),
        vec![vec!["p1".to_string()]]
    );
    assert_eq!(
        b.subscribe("m1", "p1", "other", 1).await.unwrap(),
        Subscribe::Full,
        "one bound"
    );
    b.remove_presence("m1", "p1").await.unwrap();
    assert!(a.streams_of("m1", "p1").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// The peer MCP registry and pending peer requests (`cluster::mcp_registry`)
// ---------------------------------------------------------------------------------------

use broker::cluster::mcp_registry::{
    McpRegistry, MemoryMcpRegistry, Pending, PendingKind, RedisMcpRegistry, Registration, Swap,
    Tool,
};

async fn redis_mcp_registry(server: &RedisServer) -> RedisMcpRegistry {
    let (_, conn) = redis_conn(server).await;
    RedisMcpRegistry::new(conn, &prefix())
}

fn registration(name: &str, member: &str, presence: &str) -> Registration {
    Registration {
        server_name: name.into(),
        description: format!("{name} server"),
        tools: vec![Tool {
            name: "t".into(),
            description: "a tool".into(),
            input_schema: serde_json::json!({"type": "object", "properties": {"x": {"type": "number", "default": 1.5}}, "required": []}),
        }],
        persistent: false,
        host_member_id: member.into(),
        host_presence_id: presence.into(),
        hosted_by: "host".into(),
        online: true,
        offline_since: None,
        registered_at: 1,
    }
}

fn pending(id: &str, requester: &str, target: &str, deadline_ms: i64) -> Pending {
    Pending {
        id: id.into(),
        kind: PendingKind::McpCall,
        requester_presence_id: requester.into(),
        target_presence_id: target.into(),
        req_id: Some(format!("r-{id}")),
        subject: "srv".into(),
        deadline_ms,
    }
}

/// Registrations are compare-and-set by their previous value, bounded per mesh for new
/// names only, and per mesh.
async fn registrations_are_compare_and_set_and_bounded(r: &dyn McpRegistry) {
    let one = registration("one", "m1", "p1");
    assert_eq!(
        r.swap("mesh", "one", None, Some(&one), 2).await.unwrap(),
        Swap::Done
    );
    assert_eq!(
        r.swap("mesh", "one", None, Some(&one), 2).await.unwrap(),
        Swap::Conflict,
        "not absent any more"
    );
    let read = r.server("mesh", "one").await.unwrap().unwrap();
    assert_eq!(read, one, "a registration round-trips exactly");
    let moved = Registration {
        host_presence_id: "p2".into(),
        ..read.clone()
    };
    assert_eq!(
        r.swap("mesh", "one", Some(&read), Some(&moved), 2)
            .await
            .unwrap(),
        Swap::Done
    );
    assert_eq!(
        r.swap("mesh", "one", Some(&read), None, 2).await.unwrap(),
        Swap::Conflict,
        "a stale expected value changes nothing"
    );
    let two = registration("two", "m1", "p1");
    r.swap("mesh", "two", None, Some(&two), 2).await.unwrap();
    assert_eq!(
        r.swap(
            "mesh",
            "three",
            None,
            Some(&registration("three", "m", "p")),
            2
        )
        .await
        .unwrap(),
        Swap::Full
    );
    let two_again = Registration {
        description: "replaced".into(),
        ..two.clone()
    };
    assert_eq!(
        r.swap("mesh", "two", Some(&two), Some(&two_again), 2)
            .await
            .unwrap(),
        Swap::Done,
        "replacing is no new name"
    );
    assert_eq!(
        r.swap("other", "one", None, Some(&one), 2).await.unwrap(),
        Swap::Done,
        "per mesh"
    );
    let names: Vec<String> = r
        .servers("mesh")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.server_name)
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(
        r.swap("mesh", "one", Some(&moved), None, 2).await.unwrap(),
        Swap::Done
    );
    assert!(r.server("mesh", "one").await.unwrap().is_none());
}

/// A pending request is taken exactly once, only by its target when one is named, and the
/// requester's bound counts open requests only.
async fn pending_requests_are_taken_once_and_bounded_per_requester(r: &dyn McpRegistry) {
    let now = broker::ids::now_ms();
    assert!(
        r.open("m", &pending("a", "req", "host", now + 60_000), 2, now)
            .await
            .unwrap()
    );
    assert!(
        r.open("m", &pending("b", "req", "host", now + 60_000), 2, now)
            .await
            .unwrap()
    );
    assert!(
        !r.open("m", &pending("c", "req", "host", now + 60_000), 2, now)
            .await
            .unwrap()
    );
    assert!(
        r.open("m", &pending("d", "other", "host", now + 60_000), 2, now)
            .await
            .unwrap()
    );
    assert_eq!(r.open_to("m", "host", now).await.unwrap(), ["a", "b", "d"]);
    assert!(r.is_open("m", "a").await.unwrap());
    assert!(r.take("m", "a", Some("intruder")).await.unwrap().is_none());
    let taken = r.take("m", "a", Some("host")).await.unwrap().unwrap();
    assert_eq!(taken, pending("a", "req", "host", now + 60_000));
    assert!(r.take("m", "a", None).await.unwrap().is_none(), "once");
    assert!(!r.is_open("m", "a").await.unwrap());
    assert!(
        r.open("m", &pending("c", "req", "host", now + 60_000), 2, now)
            .await
            .unwrap(),
        "room again"
    );
    assert_eq!(r.open_to("m", "host", now).await.unwrap(), ["b", "c", "d"]);
    assert!(
        r.take("other-mesh", "b", None).await.unwrap().is_none(),
        "per mesh"
    );
    // Expired entries no longer count against the bound.
    let later = now + 120_000;
    assert!(
        r.open("m", &pending("e", "req", "host", later + 1_000), 2, later)
            .await
            .unwrap()
    );
    assert_eq!(r.open_to("m", "host", later).await.unwrap(), ["e"]);
}

macro_rules! mcp_registry_contract {
    ($($name:ident),* $(,)?) => {
        mod mcp_registry_memory {
            $(#[tokio::test] async fn $name() { super::$name(&super::MemoryMcpRegistry::new()).await; })*
        }
        mod mcp_registry_redis {
            $(#[tokio::test] async fn $name() {
                let server = super::RedisServer::start();
                super::$name(&super::redis_mcp_registry(&server).await).await;
            })*
        }
    };
}

mcp_registry_contract!(
    registrations_are_compare_and_set_and_bounded,
    pending_requests_are_taken_once_and_bounded_per_requester,
);

/// Pending status hooks (`keep_pending_hook`/`take_pending_hook`): shared by Redis, bounded
/// across every caller, replaced in place, taken once, expiring; the memory backend does
/// not share them (its replica keeps them itself).
#[tokio::test]
async fn redis_presence_keeps_pending_hooks_bounded_and_takes_each_once() {
    let server = RedisServer::start();
    let prefix = prefix();
    let p = redis_presence(&server, &prefix).await;
    let q = redis_presence(&server, &prefix).await;
    let ttl = Duration::from_secs(60);
    assert_eq!(
        p.keep_pending_hook("k1", Status::Working, ttl, 2)
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        q.keep_pending_hook("k2", Status::Working, ttl, 2)
            .await
            .unwrap(),
        Some(true)
    );
    // The bound is shared: a third key is dropped, a key already waiting is replaced.
    assert_eq!(
        q.keep_pending_hook("k3", Status::Working, ttl, 2)
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(
        q.keep_pending_hook("k1", Status::Idle, ttl, 2)
            .await
            .unwrap(),
        Some(true)
    );
    // Taken by exactly one caller, whichever client wrote it.
    assert_eq!(q.take_pending_hook("k1").await.unwrap(), Some(Status::Idle));
    assert_eq!(p.take_pending_hook("k1").await.unwrap(), None);
    assert_eq!(p.take_pending_hook("k3").await.unwrap(), None);
    // Taking made room again.
    assert_eq!(
        p.keep_pending_hook("k3", Status::Working, Duration::from_millis(50), 2)
            .await
            .unwrap(),
        Some(true)
    );
    // The bound is full (k2, k3) until k3 expires: then its slot is free for k4.
    let deadline = Instant::now() + WAIT;
    while p
        .keep_pending_hook("k4", Status::Working, ttl, 2)
        .await
        .unwrap()
        != Some(true)
    {
        assert!(Instant::now() < deadline, "k3 never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.take_pending_hook("k3").await.unwrap(), None, "expired");
    assert_eq!(
        p.take_pending_hook("k2").await.unwrap(),
        Some(Status::Working)
    );
    let memory = MemoryPresence::new();
    assert_eq!(
        memory
            .keep_pending_hook("k1", Status::Working, ttl, 2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(memory.take_pending_hook("k1").await.unwrap(), None);
}
