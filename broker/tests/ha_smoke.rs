//! The HA topology of `compose/compose.yaml`, run natively: two broker replicas sharing a
//! fresh PostgreSQL database and a private Redis, behind HAProxy running the very
//! `compose/haproxy.cfg` of the compose stack (its addresses and check interval come from
//! environment variables whose defaults are the compose values).
//!
//! Through the load balancer: the sticky cookie pins HTTP and WebSocket upgrades to one
//! replica; direct, broadcast and group messages cross replicas; cookie-less clients (as
//! claudemesh clients are) work wherever they land; a SIGKILLed replica's clients
//! reconnect to the survivor, reattach and get their queue; concurrent audit writes from
//! both replicas keep one chain that verifies.
//!
//! Needs `/usr/sbin/haproxy` (`apt-get install -y haproxy`); `.ci/run` installs it.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pg;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::{COOKIE, SET_COOKIE};

const HAPROXY: &str = "/usr/sbin/haproxy";
/// The HAProxy configuration of the compose stack, run as is.
const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose/haproxy.cfg");
/// The server names (and cookie values) of `compose/haproxy.cfg`; the replicas of this test
/// use them as `BROKER_NODE_ID` too, so `/health`'s `nodeId` names the server.
const A: &str = "broker-a";
const B: &str = "broker-b";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP response with its headers (header names lower-cased).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the `SERVERID` cookie the load balancer set, if it set one.
    fn server_cookie(&self) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find_map(|(_, v)| server_cookie(v))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// `SERVERID=broker-a; path=/; HttpOnly` → `broker-a`.
fn server_cookie(set_cookie: &str) -> Option<String> {
    set_cookie
        .split(';')
        .next()?
        .trim()
        .strip_prefix("SERVERID=")
        .map(str::to_string)
}

/// A one-shot HTTP/1.1 request that can carry the sticky cookie and shows the headers.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<Reply> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(WAIT))?;
    let cookie = cookie
        .map(|c| format!("Cookie: SERVERID={c}\r\n"))
        .unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// HAProxy with `compose/haproxy.cfg`, killed when dropped.
struct LoadBalancer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl LoadBalancer {
    fn start(a: SocketAddr, b: SocketAddr) -> LoadBalancer {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: the HA smoke test runs the compose stack's HAProxy \
             configuration natively; install it with `apt-get install -y haproxy` \
             (.ci/run does this)"
        );
        let dir = std::env::temp_dir().join(format!("haproxy-test-{}", broker::ids::random_id(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("haproxy.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(HAPROXY)
            // -db: stay in the foreground; logs go to stdout (`log stdout` in the file).
            .args(["-db", "-f", HAPROXY_CFG])
            .env("LB_BIND", addr.to_string())
            .env("LB_SERVER_A_ADDR", a.to_string())
            .env("LB_SERVER_B_ADDR", b.to_string())
            // Fast checks, so a dead replica leaves the pool within about half a second.
            .env("CHECK_INTER", "200ms")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{HAPROXY} does not start: {e}"));
        let mut lb = LoadBalancer { child, addr, log };
        // Ready when each cookie reaches its server, which also proves both are UP.
        let deadline = Instant::now() + WAIT;
        for server in [A, B] {
            loop {
                if let Some(status) = lb.child.try_wait().unwrap() {
                    panic!("haproxy exited with {status}; log:\n{}", lb.log_text());
                }
                if let Ok(r) = request(lb.addr, "GET", "/health", Some(server), None)
                    && r.status == 200
                    && r.json()["nodeId"] == server
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy never routed to {server}; log:\n{}",
                    lb.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        lb
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        request(self.addr, "GET", path, cookie, None).unwrap()
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The compose topology: a fresh database, a private Redis, two replicas, the load balancer.
/// Fields drop in order: the load balancer first, Redis last.
struct Ha {
    lb: LoadBalancer,
    a: Broker,
    b: Broker,
    _redis: RedisServer,
}

impl Ha {
    async fn start(extra: &[(&str, &str)]) -> Ha {
        let db = pg::fresh_db().await;
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let url = redis.url();
        let replica = |node: &str| {
            let mut env: Vec<(&str, &str)> = vec![
                ("DATABASE_URL", &db),
                ("REDIS_URL", &url),
                ("BROKER_NODE_ID", node),
                ("HEARTBEAT_INTERVAL_MS", "250"),
                ("NODE_DEAD_AFTER_MS", "2000"),
                // As in compose.yaml: /metrics and the operator API on an internal port
                // that the load balancer does not route to.
                ("BROKER_INTERNAL_PORT", "0"),
            ];
            env.extend_from_slice(extra);
            Broker::start(&env)
        };
        let (a, b) = (replica(A), replica(B));
        let lb = LoadBalancer::start(a.addr, b.addr);
        Ha {
            lb,
            a,
            b,
            _redis: redis,
        }
    }

    fn replica(&self, server: &str) -> &Broker {
        if server == A { &self.a } else { &self.b }
    }

    /// Sockets attached on `server`, asked of the replica itself, not through the LB.
    fn connections_on(&self, server: &str) -> u64 {
        let (status, v) = self.replica(server).api("GET", "/health", None);
        assert_eq!(status, 200, "{v}");
        v["connections"].as_u64().unwrap()
    }
}

/// A WebSocket client that goes through the load balancer and may carry the sticky
/// cookie, which `common::Client` cannot send. It keeps what the upgrade response said.
/// A test client through the load balancer: the harness's [`Client`], plus what the
/// upgrade response said about stickiness.
struct LbClient {
    client: Client,
    /// The server that answered the upgrade (HAProxy's `X-Served-By`).
    served_by: String,
    /// The `SERVERID` the load balancer set on the upgrade response, if any.
    set_cookie: Option<String>,
}

impl std::ops::Deref for LbClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for LbClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl LbClient {
    async fn connect(lb: &LoadBalancer, cookie: Option<&str>) -> Result<LbClient, String> {
        let mut req = lb.ws_url().into_client_request().unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert(
                COOKIE,
                HeaderValue::from_str(&format!("SERVERID={c}")).unwrap(),
            );
        }
        let (client, resp) = Client::connect_request(req).await?;
        let served_by = resp
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let set_cookie = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(server_cookie);
        Ok(LbClient {
            client,
            served_by,
            set_cookie,
        })
    }

    /// Connects with `cookie` and completes the handshake; returns the `hello_ack`.
    async fn join(lb: &LoadBalancer, cookie: Option<&str>, hello: Value) -> (LbClient, Value) {
        let mut c = LbClient::connect(lb, cookie)
            .await
            .unwrap_or_else(|e| panic!("websocket through the load balancer: {e}"));
        c.send(hello).await;
        let ack = c.expect("hello_ack").await;
        (c, ack)
    }

    /// Reconnects as a client does after its socket dropped: retries (with a little
    /// jitter) until a handshake completes or the deadline passes.
    async fn rejoin(
        lb: &LoadBalancer,
        cookie: Option<&str>,
        hello: impl Fn() -> Value,
    ) -> (LbClient, Value) {
        let deadline = Instant::now() + 2 * WAIT;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let err = match LbClient::connect(lb, cookie).await {
                Ok(mut c) => {
                    c.send(hello()).await;
                    match c.next_within(WAIT).await {
                        Some(Event::Frame(v)) if v["type"] == "hello_ack" => return (c, v),
                        other => format!("{other:?}"),
                    }
                }
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "no reconnect through the load balancer after {attempt} attempts: {err}; log:\n{}",
                lb.log_text()
            );
            let jitter = broker::ids::now_ms().rem_euclid(50) as u64;
            tokio::time::sleep(Duration::from_millis(50 + jitter)).await;
        }
    }
}

#[tokio::test]
async fn the_cookie_pins_http_and_websocket_upgrades_to_one_replica() {
    let ha = Ha::start(&[]).await;

    // Without a cookie: round robin over both replicas, and every answer sets the cookie
    // naming the replica that gave it.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let r = ha.lb.get("/health", None);
        assert_eq!(r.status, 200, "{r:?}");
        let node = r.json()["nodeId"].as_str().unwrap().to_string();
        assert_eq!(r.server_cookie().as_deref(), Some(node.as_str()), "{r:?}");
        assert_eq!(r.header("x-served-by"), Some(node.as_str()));
        seen.insert(node);
    }
    assert_eq!(
        seen,
        BTreeSet::from([A.to_string(), B.to_string()]),
        "cookie-less requests spread"
    );
    // The load balancer's port is the internet-facing one: no metrics, no operator API.
    assert_eq!(ha.lb.get("/metrics", None).status, 404);
    let api = request(ha.lb.addr, "GET", "/api/v1/meshes", None, Some(TOKEN)).unwrap();
    assert_eq!(api.status, 404, "{api:?}");

    // With the cookie of the first answer: always that replica, and no new cookie.
    let first = ha.lb.get("/health", None);
    let pinned = first.server_cookie().expect("Set-Cookie: SERVERID=…");
    for _ in 0..10 {
        let r = ha.lb.get("/health", Some(&pinned));
        assert_eq!(r.json()["nodeId"], pinned.as_str(), "{r:?}");
        assert_eq!(r.server_cookie(), None, "a valid cookie is not set again");
    }

    // A WebSocket upgrade with the cookie lands on the pinned replica, for either replica.
    let mesh = ha.a.create_mesh("sticky", None);
    let mut clients = Vec::new();
    for (server, other) in [(B, A), (A, B)] {
        let before = (ha.connections_on(server), ha.connections_on(other));
        let m = member(&ha.a, &mesh, &format!("on-{server}"), json!({}));
        let (c, _) = LbClient::join(&ha.lb, Some(server), m.hello(&mesh, json!({}))).await;
        assert_eq!(
            c.served_by, server,
            "the upgrade went to the pinned replica"
        );
        assert_eq!(c.set_cookie, None, "a pinned upgrade gets no new cookie");
        assert_eq!(
            (ha.connections_on(server), ha.connections_on(other)),
            (before.0 + 1, before.1),
            "the socket is attached on {server} and only there"
        );
        clients.push(c);
    }
    assert_eq!((ha.connections_on(A), ha.connections_on(B)), (1, 1));

    // A cookie-less upgrade is load-balanced and is told where it landed.
    let m = member(&ha.a, &mesh, "no-cookie", json!({}));
    let (c, _) = LbClient::join(&ha.lb, None, m.hello(&mesh, json!({}))).await;
    let landed = c
        .set_cookie
        .clone()
        .expect("the upgrade response sets SERVERID");
    assert_eq!(landed, c.served_by);
    assert_eq!(ha.connections_on(&landed), 2);
}

#[tokio::test]
async fn direct_broadcast_and_group_messages_cross_replicas_through_the_load_balancer() {
    let ha = Ha::start(&[("BROKER_SEND_BURST", "0")]).await;
    let mesh = ha.a.create_mesh("cross", None);
    let alice = member(&ha.a, &mesh, "alice", json!({}));
    let bob = member(&ha.a, &mesh, "bob", json!({}));
    let carol = member(&ha.a, &mesh, "carol", json!({}));
    let (mut ac, _) = LbClient::join(&ha.lb, Some(A), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = LbClient::join(&ha.lb, Some(B), bob.hello(&mesh, json!({}))).await;
    let s = Identity::random();
    let (mut cc, _) = LbClient::join(
        &ha.lb,
        Some(B),
        session_hello(
            &mesh,
            &carol.identity,
            &s,
            json!({"groups": [{"name": "ops"}]}),
        ),
    )
    .await;
    assert_eq!(
        (
            ac.served_by.as_str(),
            bc.served_by.as_str(),
            cc.served_by.as_str()
        ),
        (A, B, B)
    );
    assert_eq!(
        ac.expect_system("peer_joined").await["eventData"]["name"],
        "bob"
    );
    assert_eq!(
        ac.expect_system("peer_joined").await["eventData"]["name"],
        "carol"
    );

    cross_replica_exchange(
        &mut ac,
        &mut bc,
        &mut cc,
        &alice.identity.pubkey,
        &bob.identity.pubkey,
    )
    .await;
}

#[tokio::test]
async fn cookie_less_clients_are_served_correctly_wherever_they_land() {
    // claudemesh clients send no cookies: the load balancer spreads them, and nothing
    // may depend on which replica each one reached.
    let ha = Ha::start(&[("BROKER_SEND_BURST", "0")]).await;
    let mesh = ha.a.create_mesh("cookie-less", None);
    let names = ["p0", "p1", "p2", "p3"];
    let members: Vec<Member> = names
        .iter()
        .map(|n| member(&ha.a, &mesh, n, json!({})))
        .collect();
    let url = ha.lb.ws_url();
    let mut clients = Vec::new();
    for m in &members {
        clients.push(Client::join(&url, m.hello(&mesh, json!({}))).await.0);
    }
    assert!(
        ha.connections_on(A) >= 1 && ha.connections_on(B) >= 1,
        "round robin put clients on both replicas ({} on a, {} on b)",
        ha.connections_on(A),
        ha.connections_on(B)
    );
    // Every joined peer is visible from every client, whichever replica serves it.
    for c in clients.iter_mut() {
        eventually("every client lists all four peers", async || {
            let list = c.request(ClientFrame::ListPeers).await;
            (list["peers"].as_array().unwrap().len() == names.len()).then_some(())
        })
        .await;
    }

    // Everyone messages everyone directly, then broadcasts.
    for (i, sender) in clients.iter_mut().enumerate() {
        for (j, to) in members.iter().enumerate() {
            if i != j {
                let ack = sender
                    .send_msg(&to.identity.pubkey, "now", &format!("{i}->{j}"))
                    .await;
                assert_eq!(ack["queued"], true, "{ack}");
            }
        }
        sender.send_msg("*", "now", &format!("all-from-{i}")).await;
    }
    for (j, c) in clients.iter_mut().enumerate() {
        let mut got = BTreeSet::new();
        for _ in 0..2 * (names.len() - 1) {
            let push = c.expect_where("push", is_push).await;
            if !push["ciphertext"].as_str().unwrap().starts_with("all") {
                c.send(client_ack(push["messageId"].as_str().unwrap()))
                    .await;
            }
            got.insert(push["ciphertext"].as_str().unwrap().to_string());
        }
        let mut want = BTreeSet::new();
        for i in (0..names.len()).filter(|&i| i != j) {
            want.insert(format!("{i}->{j}"));
            want.insert(format!("all-from-{i}"));
        }
        assert_eq!(got, want, "what {} received", names[j]);
    }
}

#[tokio::test]
async fn clients_of_a_killed_replica_reattach_on_the_survivor_through_the_load_balancer() {
    // Long enough that the survivor does not reap the dead replica's presences before
    // their clients are back: they reattach instead of leaving and joining again.
    let ha = Ha::start(&[("NODE_DEAD_AFTER_MS", "15000")]).await;
    let mesh = ha.a.create_mesh("failover", None);
    let alice = member(&ha.a, &mesh, "alice", json!({}));
    let bob = member(&ha.a, &mesh, "bob", json!({}));
    let carol = member(&ha.a, &mesh, "carol", json!({}));
    let (mut ac, _) = LbClient::join(&ha.lb, Some(A), alice.hello(&mesh, json!({}))).await;
    // Bob: a session key, pinned to b like a browser would be.
    let s = Identity::random();
    let bob_hello = || session_hello(&mesh, &bob.identity, &s, json!({}));
    let (mut bc, bob_first) = LbClient::join(&ha.lb, Some(B), bob_hello()).await;
    // Carol: a control-plane hello with a fixed sessionId, on b, and later cookie-less.
    let carol_hello = || carol.hello(&mesh, json!({"sessionId": "carol-1"}));
    let (mut cc, carol_first) = LbClient::join(&ha.lb, Some(B), carol_hello()).await;
    assert_eq!((bc.served_by.as_str(), cc.served_by.as_str()), (B, B));
    ac.expect_system("peer_joined").await;
    ac.expect_system("peer_joined").await;

    // Pushed to bob on b but not confirmed when b dies.
    let in_flight = ac.send_msg(&bob.identity.pubkey, "now", "in-flight").await;
    assert_eq!(
        bc.expect_where("push", is_push).await["messageId"],
        in_flight["messageId"]
    );

    Command::new("kill")
        .arg("-KILL")
        .arg(ha.b.pid().to_string())
        .status()
        .unwrap();
    bc.expect_gone().await;
    cc.expect_gone().await;

    // Sent while they are away: queued in PostgreSQL.
    let for_bob = ac
        .send_msg(&bob.identity.pubkey, "next", "while-away")
        .await;
    let for_carol = ac
        .send_msg(&carol.identity.pubkey, "next", "while-away")
        .await;
    assert_eq!(
        (for_bob["queued"].clone(), for_carol["queued"].clone()),
        (json!(true), json!(true))
    );

    // Bob comes back with his stale cookie: redispatched to a and re-pinned there.
    let (mut bc, bob_again) = LbClient::rejoin(&ha.lb, Some(B), bob_hello).await;
    assert_eq!(bc.served_by, A);
    assert_eq!(
        bc.set_cookie.as_deref(),
        Some(A),
        "the cookie now names the survivor"
    );
    assert_eq!(
        bob_again["presenceId"], bob_first["presenceId"],
        "bob reattached"
    );
    let first = bc.expect_where("push", is_push).await;
    let second = bc.expect_where("push", is_push).await;
    assert_eq!(
        (first["messageId"].clone(), second["messageId"].clone()),
        (in_flight["messageId"].clone(), for_bob["messageId"].clone())
    );

    // Carol comes back as a claudemesh client does: no cookie.
    let (mut cc, carol_again) = LbClient::rejoin(&ha.lb, None, carol_hello).await;
    assert_eq!(cc.served_by, A);
    assert_eq!(
        carol_again["presenceId"], carol_first["presenceId"],
        "carol reattached"
    );
    assert_eq!(
        cc.expect_where("push", is_push).await["messageId"],
        for_carol["messageId"]
    );

    // The mesh saw no one leave or join, and everything now runs on a.
    ac.expect_none(Duration::from_millis(500), is_join_or_leave)
        .await;
    assert_eq!(ha.connections_on(A), 3);
    let r = ha.lb.get("/health", Some(B));
    assert_eq!(
        r.json()["nodeId"],
        A,
        "the load balancer routes around the dead replica"
    );
}

#[tokio::test]
async fn concurrent_audit_writes_through_the_load_balancer_keep_one_chain() {
    let ha = Ha::start(&[("BROKER_SEND_BURST", "0")]).await;
    let mesh = ha.a.create_mesh("audit", None);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let m = member(&ha.a, &mesh, &format!("p{i}"), json!({}));
        let server = if i % 2 == 0 { A } else { B };
        let hello = m.hello(&mesh, json!({}));
        let (mut c, _) = LbClient::join(&ha.lb, Some(server), hello).await;
        assert_eq!(c.served_by, server);
        tasks.push(tokio::spawn(async move {
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
    let path = format!("/api/v1/meshes/{mesh}/audit/verify");
    // The operator API is not behind the load balancer: each replica's internal port has it.
    let r = request(ha.lb.addr, "GET", &path, None, Some(TOKEN)).unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let v = eventually("4 joins and 40 sends are audited", async || {
        let (status, v) = ha.a.api("GET", &path, None);
        (status == 200 && v["entries"] == json!(44)).then_some(v)
    })
    .await;
    assert_eq!(v["valid"], true, "{v}");
    // Both replicas read the same chain.
    for server in [A, B] {
        let (status, v) = ha.replica(server).api("GET", &path, None);
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (v["valid"].clone(), v["entries"].clone()),
            (json!(true), json!(44))
        );
    }
}
