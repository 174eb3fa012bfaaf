//! Hostile input to the status hook and to presence fields: unauthenticated hook floods,
//! hooks that try to reach sessions they do not name, and members that try to grow their
//! presence until other sockets are closed (issue #10 items 4, 5 and 15).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::net::{IpAddr, SocketAddr};

use common::pg;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn hook(b: &Broker, body: &Value) -> (u16, Value) {
    let (status, text) = b
        .try_http("POST", "/hook/set-status", None, Some(&body.to_string()))
        .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A hook request sent from the local source address `src` (any 127/8 address works on
/// the loopback interface), so tests can be several clients.
async fn hook_from(addr: SocketAddr, src: &str, body: &Value) -> (u16, Value) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "POST /hook/set-status HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    )
}

/// The status `observer` sees for the peer named `name` (a `list_peers` of its own, so
/// every control command queued for it before this request has been applied).
async fn status_seen(observer: &mut Client, name: &str) -> String {
    let peers = observer.request(ClientFrame::ListPeers).await;
    assert_eq!(peers["type"], "peers_list", "{peers}");
    peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == name)
        .map(|p| p["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{name} not in {peers}"))
}

#[tokio::test]
async fn a_hook_flood_with_distinct_large_cwds_keeps_the_broker_small() {
    // The per-source limit is off here: this test is about what each accepted or refused
    // request may leave behind, not about how many are let through.
    let b = Broker::start(&[
        ("HOOK_RATE_PER_SOURCE_PER_MIN", "0"),
        ("HOOK_RATE_PER_MIN", "30"),
        ("HOOK_PENDING_MAX", "1000"),
    ]);
    let pid = b.pid();
    let before = rss_mib(pid);
    let addr = b.addr;
    let flood = move |count: usize, cwd_len: usize, salt: &'static str| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
                    for i in 0..count / 8 {
                        let prefix = format!("/{salt}/{t}/{i}/");
                        let cwd = format!("{prefix}{}", "d".repeat(cwd_len - prefix.len()));
                        let body = json!({"cwd": cwd, "pid": 100_000 + i, "status": "working"})
                            .to_string();
                        let (code, _) =
                            http(addr, "POST", "/hook/set-status", None, Some(&body)).unwrap();
                        *codes.entry(code).or_default() += 1;
                    }
                    codes
                })
            })
            .collect();
        let mut all = std::collections::BTreeMap::<u16, usize>::new();
        for t in threads {
            for (k, v) in t.join().unwrap() {
                *all.entry(k).or_default() += v;
            }
        }
        all
    };
    // Cwds far beyond any real path, then many distinct cwds of an allowed length.
    let oversized = tokio::task::spawn_blocking(move || flood(2_000, 60_000, "big"))
        .await
        .unwrap();
    let allowed = tokio::task::spawn_blocking(move || flood(4_000, 4_000, "ok"))
        .await
        .unwrap();
    let grown = rss_mib(pid) - before;
    assert!(
        grown < 40.0,
        "broker RSS grew by {grown:.1} MiB (oversized: {oversized:?}, allowed: {allowed:?})"
    );
    assert!(
        oversized.keys().all(|c| *c == 400 || *c == 413),
        "an oversized cwd must be refused: {oversized:?}"
    );
    assert_eq!(allowed.get(&200), Some(&4_000), "{allowed:?}");
    let (code, v) = hook(
        &b,
        &json!({"cwd": "c".repeat(4_097), "pid": 1, "status": "idle"}),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    let metrics = b.metrics();
    assert!(
        metrics.contains(r#"broker_hook_requests_rejected_total{reason="too_large"}"#),
        "{metrics}"
    );
    // The allowed flood overflowed the bounded pending map; the rest was dropped.
    let dropped = metric_value(&metrics, "broker_hook_pending_dropped_total").unwrap_or(0.0);
    assert!(dropped > 0.0, "{metrics}");
}

#[tokio::test]
async fn hooks_are_rate_limited_per_source_address() {
    let b = Broker::start(&[
        ("HOOK_RATE_PER_SOURCE_PER_MIN", "5"),
        ("HOOK_RATE_PER_MIN", "30"),
    ]);
    for i in 0..5 {
        let (code, v) = hook_from(
            b.addr,
            "127.0.0.1",
            &json!({"cwd": format!("/src/{i}"), "pid": i, "status": "idle"}),
        )
        .await;
        assert_eq!(code, 200, "request {i}: {v}");
    }
    // A new pid:cwd does not escape the source's budget.
    let (code, v) = hook_from(
        b.addr,
        "127.0.0.1",
        &json!({"cwd": "/src/new", "pid": 99, "status": "idle"}),
    )
    .await;
    assert_eq!(code, 429, "{v}");
    // Another source has a budget of its own.
    let (code, v) = hook_from(
        b.addr,
        "127.0.0.2",
        &json!({"cwd": "/src/new", "pid": 99, "status": "idle"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert!(
        b.metrics()
            .contains(r#"broker_hook_requests_rejected_total{reason="rate_limit_source"} 1"#),
        "{}",
        b.metrics()
    );
}

#[tokio::test]
async fn a_hook_applies_only_to_the_presence_with_its_pid_and_cwd_and_never_leaks_its_id() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("scope", None);
    let other_mesh = b.create_mesh("scope-other", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let carol = member(&b, &other_mesh, "carol", json!({}));
    // Both connect with cwd "/work": alice with pid 4242, carol (another mesh) with 5151.
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut cc, _) =
        Client::join(&b.ws_url(), carol.hello(&other_mesh, json!({"pid": 5151}))).await;

    // No pid: it names no presence, so it changes none and keeps nothing pending.
    let (code, v) = hook(&b, &json!({"cwd": "/work", "status": "working"}));
    assert_eq!(code, 200, "{v}");
    assert!(v.get("presence_id").is_none(), "{v}");
    assert_ne!(v["pending"], true, "{v}");
    assert_eq!(status_seen(&mut ac, "alice").await, "idle");
    assert_eq!(status_seen(&mut cc, "carol").await, "idle");

    // With alice's pid: alice only, and the reply names no presence.
    let (code, v) = hook(
        &b,
        &json!({"cwd": "/work", "pid": 4242, "status": "working"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"ok": true}));
    assert_eq!(status_seen(&mut ac, "alice").await, "working");
    assert_eq!(status_seen(&mut cc, "carol").await, "idle");

    // A hook cannot set dnd: a status a hook could not clear again.
    let (code, v) = hook(&b, &json!({"cwd": "/work", "pid": 5151, "status": "dnd"}));
    assert_eq!(code, 400, "{v}");
    assert_eq!(status_seen(&mut cc, "carol").await, "idle");
    // What a hook set, a hook clears.
    let (code, v) = hook(&b, &json!({"cwd": "/work", "pid": 4242, "status": "idle"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(status_seen(&mut ac, "alice").await, "idle");
}

#[tokio::test]
async fn a_pending_hook_status_applies_only_to_the_pid_it_named() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("pending-scope", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));

    // A pid-less hook is not kept for whichever process connects next in that cwd.
    let (code, v) = hook(&b, &json!({"cwd": "/later", "status": "working"}));
    assert_eq!(code, 200, "{v}");
    let (mut ac, _) = Client::join(
        &b.ws_url(),
        alice.hello(&mesh, json!({"pid": 77, "cwd": "/later"})),
    )
    .await;
    assert_eq!(status_seen(&mut ac, "alice").await, "idle");

    // A pending hook for pid 78 is not applied to pid 79 in the same cwd, only to 78.
    let (code, v) = hook(
        &b,
        &json!({"cwd": "/later2", "pid": 78, "status": "working"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"ok": true, "pending": true}));
    let (mut bc, _) = Client::join(
        &b.ws_url(),
        bob.hello(&mesh, json!({"pid": 79, "cwd": "/later2"})),
    )
    .await;
    assert_eq!(status_seen(&mut bc, "bob").await, "idle");
    let (mut cc, _) = Client::join(
        &b.ws_url(),
        carol.hello(&mesh, json!({"pid": 78, "cwd": "/later2"})),
    )
    .await;
    assert_eq!(status_seen(&mut cc, "carol").await, "working");
}

#[tokio::test]
async fn groups_and_presence_fields_are_bounded_with_clear_error_codes() {
    let b = Broker::start(&[
        ("MAX_GROUPS_PER_PRESENCE", "3"),
        ("MAX_GROUP_NAME_BYTES", "16"),
        ("MAX_PRESENCE_FIELD_BYTES", "512"),
    ]);
    let mesh = b.create_mesh("bounds", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    for name in ["g1", "g2", "g3"] {
        ac.send(join_group(name, None)).await;
    }
    // Joining a group again is no new group.
    ac.send(join_group("g3", Some("lead"))).await;
    let err = ac.request(join_group("g4", None)).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "too_many_groups", "{err}");
    let err = ac.request(join_group(&"x".repeat(17), None)).await;
    assert_eq!(err["code"], "name_too_long", "{err}");
    let err = ac.request(join_group("g1", Some(&"r".repeat(17)))).await;
    assert_eq!(err["code"], "name_too_long", "{err}");
    for frame in [
        ClientFrame::SetSummary {
            summary: "s".repeat(513),
        },
        ClientFrame::SetProfile(ProfileFields {
            bio: Some(json!("b".repeat(513))),
            ..ProfileFields::default()
        }),
        ClientFrame::SetStats {
            stats: json!({"messagesIn": 1, "blob": "x".repeat(513)}),
        },
    ] {
        let err = ac.request(frame.clone()).await;
        assert_eq!(err["code"], "field_too_large", "{frame:?}: {err}");
    }
    let peers = ac.request(ClientFrame::ListPeers).await;
    let me = &peers["peers"][0];
    assert_eq!(
        me["groups"],
        json!([{"name": "g1"}, {"name": "g2"}, {"name": "g3", "role": "lead"}])
    );
    assert!(me["summary"].is_null(), "{me}");
    assert!(me.get("profile").is_none(), "{me}");

    // A hello that announces too many groups, an over-long group name or display name is
    // refused before it becomes a presence.
    let groups: Vec<Value> = (0..4).map(|i| json!({"name": format!("h{i}")})).collect();
    for extra in [
        json!({"groups": groups}),
        json!({"groups": [{"name": "y".repeat(17)}]}),
        json!({"displayName": "n".repeat(513)}),
    ] {
        let mut c = Client::connect(&b.ws_url()).await;
        c.send(alice.hello(&mesh, extra.clone())).await;
        let err = c.expect("error").await;
        assert!(
            ["too_many_groups", "name_too_long", "field_too_large"]
                .contains(&err["code"].as_str().unwrap()),
            "{extra}: {err}"
        );
        assert_eq!(c.expect_close().await.0, codes::HANDSHAKE.code, "{extra}");
    }
    let metrics = b.metrics();
    assert!(
        metrics.contains(r#"broker_presence_updates_rejected_total{reason="too_many_groups"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_member_with_a_huge_presence_cannot_get_bystanders_closed() {
    let b = Broker::start(&[
        ("BROKER_SEND_BURST", "0"),
        ("OUTBOUND_QUEUE_BYTES", "32768"),
    ]);
    let mesh = b.create_mesh("bystanders", None);
    let mallory = member(&b, &mesh, "mallory", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut mc, _) = Client::join(
        &b.ws_url(),
        mallory.hello(&mesh, json!({"sessionId": "mallory-1"})),
    )
    .await;

    // Mallory tries to grow her presence past the others' outbound bound, every way a
    // member can: many groups with long names, a long summary, profile and stats.
    for i in 0..8 {
        mc.send(join_group(&format!("{i}{}", "g".repeat(30_000)), None))
            .await;
    }
    for i in 0..200 {
        mc.send(join_group(&format!("group-{i}"), None)).await;
    }
    let big = "s".repeat(60_000);
    mc.send(ClientFrame::SetSummary {
        summary: big.clone(),
    })
    .await;
    mc.send(ClientFrame::SetProfile(ProfileFields {
        bio: Some(json!(big)),
        ..ProfileFields::default()
    }))
    .await;
    mc.send(ClientFrame::SetStats {
        stats: json!({"blob": big}),
    })
    .await;
    // Her own last request proves the others were handled.
    mc.request(ClientFrame::SetVisible { visible: true }).await;

    // The bystanders still get their peer lists, and stay connected.
    for c in [&mut bc, &mut cc] {
        let peers = c.request(ClientFrame::ListPeers).await;
        assert_eq!(peers["type"], "peers_list", "{peers}");
        assert_eq!(peers["peers"].as_array().unwrap().len(), 3, "{peers}");
    }

    // She connects again as a new presence announcing a huge group: the announcement
    // must not close anyone either.
    let mut m2 = Client::connect(&b.ws_url()).await;
    m2.send(mallory.hello(
        &mesh,
        json!({"sessionId": "mallory-2", "groups": [{"name": "h".repeat(40_000)}]}),
    ))
    .await;
    let answer = m2.next_within(WAIT).await;
    assert!(answer.is_some(), "no answer to the hello");
    for c in [&mut bc, &mut cc] {
        let peers = c.request(ClientFrame::ListPeers).await;
        assert_eq!(peers["type"], "peers_list", "{peers}");
        let ack = c.send_msg("*", "now", "still here").await;
        assert_eq!(ack["queued"], true, "{ack}");
    }
    assert_eq!(
        metric_value(&b.metrics(), "broker_slow_consumer_closes_total"),
        Some(0.0),
        "{}",
        b.metrics()
    );
}

#[tokio::test]
async fn a_peer_list_larger_than_the_outbound_bound_is_an_error_for_the_requester() {
    // Every presence is within its bounds, but together they do not fit one small queue.
    let b = Broker::start(&[
        ("OUTBOUND_QUEUE_BYTES", "8192"),
        ("MAX_PRESENCE_FIELD_BYTES", "3000"),
    ]);
    let mesh = b.create_mesh("crowd", None);
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let mut others = Vec::new();
    for i in 0..4 {
        let m = member(&b, &mesh, &format!("peer{i}"), json!({}));
        let (mut c, _) = Client::join(&b.ws_url(), m.hello(&mesh, json!({}))).await;
        c.send(ClientFrame::SetSummary {
            summary: "s".repeat(2_900),
        })
        .await;
        c.request(ClientFrame::SetVisible { visible: true }).await;
        others.push(c);
    }
    let err = bc.request(ClientFrame::ListPeers).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "reply_too_large", "{err}");
    // Bob is still connected and served.
    let ack = bc.request(ClientFrame::SetVisible { visible: true }).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(
        b.metrics()
            .contains(r#"broker_replies_too_large_total{reason="peers_list"} 1"#),
        "{}",
        b.metrics()
    );
}

#[tokio::test]
async fn cluster_hook_limiter_keys_have_a_ttl_and_a_bounded_name() {
    let db = pg::fresh_db().await;
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let replica = |node: &str| {
        Broker::start(&[
            ("DATABASE_URL", &db),
            ("REDIS_URL", &url),
            ("BROKER_NODE_ID", node),
            ("HOOK_RATE_PER_SOURCE_PER_MIN", "6"),
        ])
    };
    let (a, b) = (replica("a"), replica("b"));
    // The per-source budget is cluster-wide: three requests on each replica use it up.
    for (i, r) in [&a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let cwd = format!("/{i}/{}", "p".repeat(4_000));
        let (code, v) = hook(r, &json!({"cwd": cwd, "pid": i, "status": "working"}));
        assert_eq!(code, 200, "request {i}: {v}");
    }
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let limiter: Vec<&String> = keys.iter().filter(|k| k.contains(":rate:")).collect();
    assert!(limiter.len() >= 7, "{keys:?}");
    for key in limiter {
        assert!(key.len() <= 128, "limiter key of {} bytes", key.len());
        let ttl: i64 = ::redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    let (code, v) = hook(&a, &json!({"cwd": "/x", "pid": 1, "status": "working"}));
    assert_eq!(code, 429, "{v}");
}

#[tokio::test]
async fn a_system_event_larger_than_the_outbound_bound_is_not_announced() {
    // Groups within their bounds, but a peer_joined about them exceeds a small queue.
    let b = Broker::start(&[("OUTBOUND_QUEUE_BYTES", "2048")]);
    let mesh = b.create_mesh("announce", None);
    let bob = member(&b, &mesh, "bob", json!({}));
    let alice = member(&b, &mesh, "alice", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let groups: Vec<Value> = (0..30)
        .map(|i| json!({"name": format!("{i:02}{}", "g".repeat(58))}))
        .collect();
    let mut ac = Client::connect(&b.ws_url()).await;
    ac.send(alice.hello(&mesh, json!({"groups": groups}))).await;
    // Alice's own hello_ack may not fit her queue either: that is her problem, not bob's.
    assert!(
        ac.next_within(WAIT).await.is_some(),
        "no answer to the hello"
    );
    // Carol joins after alice: her (small) announcement reaches bob after alice's would.
    let (_cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let joined = bc.expect_system("peer_joined").await;
    assert_eq!(joined["eventData"]["name"], "carol", "{joined}");
    let ack = bc.request(ClientFrame::SetVisible { visible: true }).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    eventually("the oversized announcement is counted", async || {
        b.metrics()
            .contains(r#"broker_replies_too_large_total{reason="system_event"} 1"#)
            .then_some(())
    })
    .await;
}
