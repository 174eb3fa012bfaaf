//! A replica that was declared dead heals, a re-sync announces what it re-registers, and
//! nothing silently succeeds against the empty state of a restarted Redis. Two real broker
//! processes, real PostgreSQL, a private redis-server; the freeze is a real SIGSTOP, the
//! partition is a real Redis ACL that shuts one replica out.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::pg;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

/// The Redis user replica `b` logs in as, so the test can shut it out (a partition).
const B_USER: &str = "replica-b";
const B_PASS: &str = "b-secret";

struct Cluster<R = RedisServer> {
    db: String,
    redis: R,
}

/// What the cluster needs of its redis-server.
trait Server {
    fn port(&self) -> u16;
}

impl Server for RedisServer {
    fn port(&self) -> u16 {
        self.port
    }
}

impl Cluster {
    async fn new() -> Cluster {
        let db = pg::fresh_db().await;
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        Cluster { db, redis }
    }
}

impl Cluster<AclRedis> {
    async fn with_acl() -> Cluster<AclRedis> {
        let db = pg::fresh_db().await;
        let redis = tokio::task::spawn_blocking(AclRedis::start).await.unwrap();
        Cluster { db, redis }
    }
}

/// A private redis-server whose user `B_USER` replica b logs in as. A partition is that
/// user losing every permission (its commands fail, its connections are dropped); the
/// user always exists, so b's logins keep succeeding (a refused login would leave the
/// client library's connection failed for good).
struct AclRedis {
    child: Option<std::process::Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Server for AclRedis {
    fn port(&self) -> u16 {
        self.port
    }
}

impl AclRedis {
    fn start() -> AclRedis {
        let dir = std::env::temp_dir().join(format!("redis-acl-{}", broker::ids::random_id(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = AclRedis {
            child: None,
            port,
            dir,
        };
        r.spawn(true);
        r
    }

    /// Starts the server, empty, with b's user admitted or shut out.
    fn spawn(&mut self, admitted: bool) {
        let perms = if admitted { "~* &* +@all" } else { "-@all" };
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--user")
            .args(format!("{B_USER} on >{B_PASS} {perms}").split(' '))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AclRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl<R: Server> Cluster<R> {
    /// A replica; with `user` it logs in to Redis as that ACL user.
    fn replica(&self, node: &str, user: Option<(&str, &str)>) -> Broker {
        let url = match user {
            Some((u, p)) => format!("redis://{u}:{p}@127.0.0.1:{}/", self.redis.port()),
            None => format!("redis://127.0.0.1:{}/", self.redis.port()),
        };
        Broker::start(&[
            ("DATABASE_URL", &self.db),
            ("REDIS_URL", &url),
            ("BROKER_NODE_ID", node),
            ("HEARTBEAT_INTERVAL_MS", "250"),
            ("NODE_DEAD_AFTER_MS", "2000"),
            ("BROKER_SEND_BURST", "0"),
        ])
    }

    async fn redis_cmd(&self, args: &[&str]) {
        let client =
            ::redis::Client::open(format!("redis://127.0.0.1:{}/", self.redis.port())).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = ::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async::<::redis::Value>(&mut c).await.unwrap();
    }

    /// Gives replica b's user its permissions back, and drops its connections so they
    /// come back with their subscriptions.
    async fn admit_b(&self) {
        self.redis_cmd(&["ACL", "SETUSER", B_USER, "~*", "&*", "+@all"])
            .await;
        self.redis_cmd(&["CLIENT", "KILL", "USER", B_USER]).await;
    }

    /// Shuts replica b out of Redis: every command it sends fails, its connections drop.
    async fn partition_b(&self) {
        self.redis_cmd(&["ACL", "SETUSER", B_USER, "-@all"]).await;
        self.redis_cmd(&["CLIENT", "KILL", "USER", B_USER]).await;
    }
}

fn signal(b: &Broker, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(b.pid().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers in {list}"))
        .iter()
        .map(|p| p["displayName"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn ready_status(b: &Broker) -> u16 {
    b.try_http("GET", "/health/ready", None, None)
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// What a hello gets: `Ok(())` for a hello_ack, else the error code.
async fn try_hello(url: &str, hello: Value) -> Result<(), String> {
    let mut c = Client::connect(url).await;
    c.send(hello).await;
    match c.next_within(WAIT).await {
        Some(Event::Frame(f)) if f["type"] == "hello_ack" => Ok(()),
        Some(Event::Frame(f)) if f["type"] == "error" => Err(f["code"].as_str().unwrap().into()),
        other => panic!("unexpected answer to a hello: {other:?}"),
    }
}

/// Polls a replica's readiness from a thread (requests to a frozen process wait in its
/// accept backlog) and keeps every status seen, in order.
struct ReadinessWatch {
    stop: Arc<AtomicBool>,
    seen: std::thread::JoinHandle<Vec<u16>>,
}

impl ReadinessWatch {
    fn start(b: &Broker) -> ReadinessWatch {
        let addr = b.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let seen = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let s = http(addr, "GET", "/health/ready", None, None)
                    .map(|(s, _)| s)
                    .unwrap_or(0);
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            seen
        });
        ReadinessWatch { stop, seen }
    }

    fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        self.seen.join().unwrap()
    }
}

/// Item 7: SIGSTOP a replica past NODE_DEAD_AFTER_MS; a survivor reaps its presences and
/// a member is banned meanwhile. On SIGCONT the replica sees it was declared dead, closes
/// every socket 1001 `going_away` (so clients reconnect through a full handshake, ban
/// check included) and answers readiness 503 until it has healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_closes_its_sockets_and_is_unready_until_healed() {
    let c = Cluster::new().await;
    let (a, b) = (c.replica("a", None), c.replica("b", None));
    let mesh = a.create_mesh("frozen", None);
    let admin = member(&a, &mesh, "admin", json!({"role": "admin"}));
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ad, _) = Client::join(&a.ws_url(), admin.hello(&mesh, json!({}))).await;
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;

    signal(&b, "STOP");
    let frozen = Instant::now();
    let left = ac.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "bob", "b's presence was reaped");
    assert!(frozen.elapsed() > Duration::from_millis(1500));
    assert_eq!(
        names(&ac.request(ClientFrame::ListPeers).await),
        ["admin", "alice"]
    );
    let ack = ad.request(ClientFrame::Ban(ban_request("bob"))).await;
    assert_eq!(ack["banned"], "bob", "{ack}");

    let watch = ReadinessWatch::start(&b);
    signal(&b, "CONT");
    // The banned member tries to broadcast through the replica that missed the ban.
    bc.send(send_frame("*", Priority::Now, "after-resume"))
        .await;
    assert_eq!(bc.expect_close().await, close_of(codes::GOING_AWAY));
    ac.expect_none(Duration::from_millis(500), |v| {
        is_push(v) && v["ciphertext"] == "after-resume"
    })
    .await;
    eventually("b is ready again", async || {
        (ready_status(&b) == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = tokio::task::spawn_blocking(move || watch.finish())
        .await
        .unwrap();
    let unready = seen.iter().position(|s| *s == 503);
    assert!(
        unready.is_some_and(|i| seen[i + 1..].contains(&200)),
        "readiness of b after SIGCONT: {seen:?}"
    );
    // Reconnecting goes through the ban check.
    let code = eventually("bob's reconnect is answered", async || {
        match try_hello(&b.ws_url(), bob.hello(&mesh, json!({}))).await {
            Err(code) if code == "internal" => None,
            other => Some(other),
        }
    })
    .await;
    assert_eq!(code, Err("revoked".to_string()));
    // The healed replica serves the others normally.
    let carol = member(&a, &mesh, "carol", json!({}));
    let (_cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    assert_eq!(
        names(&ac.request(ClientFrame::ListPeers).await),
        ["admin", "alice", "carol"]
    );
}

/// Item 10: after a Redis restart, until every replica has re-synced, a broadcast is never
/// acknowledged as handed to a fan-out computed from the empty Redis, and a hello captured
/// before the restart cannot be replayed on either replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_nothing_succeeds_against_the_empty_state() {
    let mut c = Cluster::new().await;
    let (a, b) = (c.replica("a", None), c.replica("b", None));
    let mesh = a.create_mesh("restart", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;
    // A hello an attacker captured: accepted once, on replica a.
    let captured = carol.hello(&mesh, json!({}));
    let (cc, _) = Client::join(&a.ws_url(), captured.clone()).await;
    cc.close().await;

    c.redis.stop();
    for r in [&a, &b] {
        eventually("the outage is noticed", async || {
            (ready_status(r) == 503).then_some(())
        })
        .await;
    }
    c.redis.restart();
    // Broadcast as soon as Redis answers: an ack with queued:true means the fan-out saw bob.
    let deadline = Instant::now() + WAIT;
    let delivered = loop {
        assert!(Instant::now() < deadline, "no broadcast was accepted");
        let text = format!("probe-{}", broker::ids::random_id(6));
        let ack = ac.send_msg("*", "now", &text).await;
        if ack["queued"] == true {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let got = bc
        .expect_where("push", |v| {
            is_push(v) && v["ciphertext"] == delivered.as_str()
        })
        .await;
    assert_eq!(got["ciphertext"], delivered.as_str());

    for r in [&a, &b] {
        eventually("readiness recovers", async || {
            (ready_status(r) == 200).then_some(())
        })
        .await;
    }
    assert_eq!(
        names(&ac.request(ClientFrame::ListPeers).await),
        ["alice", "bob"]
    );
    // The replay guard lost its window with the data; replaying is refused on both.
    for r in [&b, &a] {
        assert_eq!(
            try_hello(&r.ws_url(), captured.clone()).await,
            Err("replayed".to_string()),
            "replay on {}",
            r.addr
        );
    }
    // Fresh hellos work again.
    let (_cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
}

/// Item 9: replica b is cut off from Redis long enough for a to reap its presences (its
/// peers are told `peer_left`); then Redis restarts empty (the reap tombstone is gone too)
/// and b comes back. b's re-sync re-registers the presence, and the peers that were told
/// `peer_left` are told `peer_returned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_announces_the_presences_it_brings_back() {
    let mut c = Cluster::with_acl().await;
    let (a, b) = (c.replica("a", None), c.replica("b", Some((B_USER, B_PASS))));
    let mesh = a.create_mesh("partition", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.expect_system("peer_joined").await;

    c.partition_b().await;
    let left = ac.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "bob");
    c.redis.stop();
    c.redis.spawn(false);
    eventually("a is ready again", async || {
        (ready_status(&a) == 200).then_some(())
    })
    .await;
    c.admit_b().await;

    let back = ac.expect_system("peer_returned").await;
    assert_eq!(back["eventData"]["name"], "bob", "{back}");
    for r in [&b, &a] {
        eventually("both are ready again", async || {
            (ready_status(r) == 200).then_some(())
        })
        .await;
    }
    assert_eq!(
        names(&ac.request(ClientFrame::ListPeers).await),
        ["alice", "bob"]
    );
    // Bob's socket stayed open through all of it and is reachable again.
    let ack = ac.send_msg("*", "now", "welcome-back").await;
    assert_eq!(ack["queued"], true, "{ack}");
    bc.expect_where("push", |v| is_push(v) && v["ciphertext"] == "welcome-back")
        .await;
}
