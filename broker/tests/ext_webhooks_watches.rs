//! Webhooks (extensions §15) and URL watches (§17): across two replicas (an inbound call on
//! either reaches every live presence; the rate limit is shared; each watch is checked by
//! one replica at a time and survives the SIGKILL of the replica checking it), in dev mode
//! within their bounds and the SSRF rules, and with the exact frames the CLI sends.
//!
//! The outside world of the watches is a loopback HTTP server started by each test (the
//! brokers are told to allow 127.0.0.1 with `WATCH_ALLOWED_NETS`); nothing else is fetched.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::protocol::ext::watches::{WatchAck, WatchListResult};
use broker::protocol::ext::webhooks::{WebhookAck, WebhookList};
use broker::service::watches::observe;
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// Waits until `c` lists `n` peers (the registry has them all).
async fn peers(c: &mut Client, n: usize) {
    eventually("the peers are listed", async || {
        let list = c.request(ClientFrame::ListPeers).await;
        (list["peers"].as_array().unwrap().len() == n).then_some(())
    })
    .await;
}

/// The path of a webhook URL (`/hook/<mesh>/<secret>`).
fn hook_path(url: &str) -> String {
    let at = url.find("/hook/").unwrap();
    url[at..].to_string()
}

fn post(b: &Broker, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(b.addr, "POST", path, None, Some(body)).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn is_webhook_push(v: &Value) -> bool {
    v["type"] == "push" && v["subtype"] == "webhook"
}

fn is_triggered(v: &Value) -> bool {
    v["type"] == "push" && v["subtype"] == "system" && v["event"] == "watch_triggered"
}

/// The loopback server a watch fetches: answers request `n` (from 1) with `respond(n)`,
/// or holds it unanswered when `hang` is set (once).
struct Site {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    hang: Arc<AtomicBool>,
    /// The number of the request held unanswered (0: none yet).
    hung: Arc<AtomicUsize>,
    /// The most requests it was answering at once.
    max_in_flight: Arc<AtomicUsize>,
    last_request: Arc<Mutex<String>>,
}

impl Site {
    fn start(respond: impl Fn(usize) -> (u16, String) + Send + Sync + 'static) -> Site {
        Site::answering_after(Duration::ZERO, respond)
    }

    /// A site that takes `delay` to answer each request, so overlapping checks show.
    fn answering_after(
        delay: Duration,
        respond: impl Fn(usize) -> (u16, String) + Send + Sync + 'static,
    ) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let hang = Arc::new(AtomicBool::new(false));
        let hung = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (mx, inf) = (max_in_flight.clone(), in_flight.clone());
        let last_request = Arc::new(Mutex::new(String::new()));
        let respond = Arc::new(respond);
        let (h, g, l, hu) = (
            hits.clone(),
            hang.clone(),
            last_request.clone(),
            hung.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (h, g, l, hu) = (h.clone(), g.clone(), l.clone(), hu.clone());
                let respond = respond.clone();
                let (mx, inf) = (mx.clone(), inf.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    *l.lock().unwrap() = String::from_utf8_lossy(&head).to_lowercase();
                    let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                    if g.swap(false, Ordering::SeqCst) {
                        hu.store(n, Ordering::SeqCst);
                        // Never answered: the checker holds its lease until it dies.
                        let mut sink = [0u8; 64];
                        while matches!(stream.read(&mut sink), Ok(k) if k > 0) {}
                        return;
                    }
                    let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                    mx.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    inf.fetch_sub(1, Ordering::SeqCst);
                    let (status, body) = respond(n);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Site {
            addr,
            hits,
            hang,
            hung,
            max_in_flight,
            last_request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Settings every watch test uses: the loopback site is allowed, checks are frequent.
const WATCH_ENV: &[(&str, &str)] = &[
    ("WATCH_ALLOWED_NETS", "127.0.0.1/32"),
    ("WATCH_MIN_INTERVAL_SECS", "1"),
    ("WATCH_POLL_INTERVAL_MS", "100"),
];

fn watch_frame(url: &str, extra: Value) -> Value {
    let mut f = json!({"type": "watch", "url": url, "interval": 1});
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            f[k] = v;
        }
    }
    f
}

// ---------------------------------------------------------------------------------------
// Webhooks.

#[tokio::test]
async fn an_inbound_call_on_either_replica_reaches_every_live_presence_of_the_mesh() {
    let c = Cluster::new(&[("BROKER_PUBLIC_URL", "https://mesh.example.com/")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("hooks", None);
    let other = a.create_mesh("elsewhere", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let stranger = member(&a, &other, "stranger", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ca, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut st, _) = Client::join(&b.ws_url(), stranger.hello(&other, json!({}))).await;
    peers(&mut al, 3).await;

    let ack: WebhookAck = parse(
        &al.request(json!({"type": "create_webhook", "name": "ci"}))
            .await,
    );
    assert_eq!(ack.name, "ci");
    assert_eq!(ack.secret.len(), 64);
    assert!(
        ack.secret
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(
        ack.url,
        format!("https://mesh.example.com/hook/{mesh}/{}", ack.secret)
    );
    let path = hook_path(&ack.url);

    for (n, replica) in [&b, &a].into_iter().enumerate() {
        let body = json!({"build": "green", "n": n});
        let (status, reply) = post(replica, &path, &body.to_string());
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply, json!({"ok": true, "delivered": 3}));
        for client in [&mut al, &mut bo, &mut ca] {
            let push = client
                .expect_where("push", |v| is_webhook_push(v) && v["eventData"]["n"] == n)
                .await;
            assert_eq!(push["event"], "ci");
            assert_eq!(push["eventData"], body);
            assert_eq!(push["senderPubkey"], "webhook:ci");
            assert_eq!(push["priority"], "next");
            assert_eq!(push["nonce"], "");
            assert_eq!(push["meshId"], mesh);
            assert_eq!(push["messageId"].as_str().unwrap().len(), 36);
            let payload = STANDARD
                .decode(push["ciphertext"].as_str().unwrap())
                .unwrap();
            assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), body);
        }
    }
    st.expect_none(Duration::from_millis(300), is_webhook_push)
        .await;

    // The secret was shown once: the list (on the other replica) masks it.
    let list: WebhookList = parse(&bo.request(json!({"type": "list_webhooks"})).await);
    assert_eq!(list.webhooks.len(), 1);
    assert_eq!(list.webhooks[0].name, "ci");
    assert!(list.webhooks[0].active);
    assert!(!list.webhooks[0].url.contains(&ack.secret));
    assert!(
        list.webhooks[0].url.ends_with("/****"),
        "{:?}",
        list.webhooks[0]
    );

    // A wrong secret, or the right one under another mesh, is refused on both replicas.
    let wrong = format!("/hook/{mesh}/{}", "0".repeat(64));
    let foreign = format!("/hook/{other}/{}", ack.secret);
    for replica in [&a, &b] {
        for p in [&wrong, &foreign] {
            let (status, reply) = post(replica, p, "{}");
            assert_eq!(status, 401);
            assert_eq!(reply, json!({"ok": false, "error": "unauthorized"}));
        }
    }

    // Deleted through a: b refuses the next call at once (nothing cached).
    let del: WebhookAck = parse(
        &al.request(json!({"type": "delete_webhook", "name": "ci"}))
            .await,
    );
    assert_eq!((del.url.as_str(), del.secret.as_str()), ("", ""));
    assert_eq!(post(&b, &path, "{}").0, 401);
}

#[tokio::test]
async fn the_rate_of_one_webhook_is_shared_by_every_replica() {
    let c = Cluster::new(&[("WEBHOOK_RATE_PER_MIN", "3")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("rate", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let first: WebhookAck = parse(
        &al.request(json!({"type": "create_webhook", "name": "one"}))
            .await,
    );
    let second: WebhookAck = parse(
        &al.request(json!({"type": "create_webhook", "name": "two"}))
            .await,
    );
    let (p1, p2) = (hook_path(&first.url), hook_path(&second.url));
    for replica in [&a, &b, &a] {
        assert_eq!(post(replica, &p1, "{}").0, 200);
    }
    for replica in [&b, &a] {
        let (status, reply) = post(replica, &p1, "{}");
        assert_eq!(status, 429, "{reply}");
        assert_eq!(reply["ok"], false);
    }
    // Per webhook: the other one still has its whole budget.
    assert_eq!(post(&b, &p2, "{}").0, 200);
    let refused = metric(
        &b.metrics(),
        "broker_webhook_requests_refused_total{reason=\"rate_limit\"}",
    );
    assert!(refused >= 1.0, "{refused}");
}

#[tokio::test]
async fn webhooks_in_dev_mode_are_bounded_named_once_and_deleted_by_creator_or_admin() {
    let b = Broker::start(&[
        ("MAX_WEBHOOKS_PER_MESH", "2"),
        ("WEBHOOK_MAX_BODY_BYTES", "1024"),
    ]);
    let mesh = b.create_mesh("dev-hooks", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let admin = member(&b, &mesh, "root", json!({"role": "admin"}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ad, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;

    let ci: WebhookAck = parse(
        &al.request(json!({"type": "create_webhook", "name": "ci"}))
            .await,
    );
    // Unset BROKER_PUBLIC_URL: the reference's base.
    assert!(
        ci.url
            .starts_with(&format!("https://ic.claudemesh.com/hook/{mesh}/"))
    );
    let dup = al
        .request(json!({"type": "create_webhook", "name": "ci"}))
        .await;
    assert_eq!(dup["type"], "error");
    assert_eq!(dup["code"], "webhook_exists");
    assert_eq!(dup["message"], "Webhook \"ci\" already exists in this mesh");
    let nameless = al.request(json!({"type": "create_webhook"})).await;
    assert_eq!(
        (nameless["code"].as_str(), nameless["message"].as_str()),
        (Some("invalid_webhook"), Some("name is required"))
    );
    let long = al
        .request(json!({"type": "create_webhook", "name": "x".repeat(65)}))
        .await;
    assert_eq!(long["code"], "invalid_webhook");
    let deploy = bo
        .request(json!({"type": "create_webhook", "name": "deploy"}))
        .await;
    assert_eq!(deploy["type"], "webhook_ack");
    let third = al
        .request(json!({"type": "create_webhook", "name": "third"}))
        .await;
    assert_eq!(third["code"], "too_many_webhooks");

    // Only the creator or an admin deletes; a delete frees the name.
    let foreign = bo
        .request(json!({"type": "delete_webhook", "name": "ci"}))
        .await;
    assert_eq!(foreign["code"], "forbidden");
    let path = hook_path(&ci.url);
    assert_eq!(post(&b, &path, "{}").0, 200);
    let by_admin = ad
        .request(json!({"type": "delete_webhook", "name": "ci"}))
        .await;
    assert_eq!(by_admin["type"], "webhook_ack");
    assert_eq!(post(&b, &path, "{}").0, 401);
    let unknown = al
        .request(json!({"type": "delete_webhook", "name": "nope"}))
        .await;
    assert_eq!(unknown["type"], "webhook_ack");
    let again: WebhookAck = parse(
        &al.request(json!({"type": "create_webhook", "name": "ci"}))
            .await,
    );
    assert_ne!(again.secret, ci.secret);
    let path = hook_path(&again.url);

    // The inbound route's answers, in the spec's order.
    let big = json!({"pad": "x".repeat(2000)}).to_string();
    assert_eq!(
        post(&b, &path, &big),
        (413, json!({"ok": false, "error": "payload too large"}))
    );
    let bad_secret = format!("/hook/{mesh}/nope");
    assert_eq!(
        post(&b, &bad_secret, "not json"),
        (400, json!({"ok": false, "error": "invalid JSON"}))
    );
    assert_eq!(
        post(&b, &bad_secret, "{}"),
        (401, json!({"ok": false, "error": "unauthorized"}))
    );
    assert_eq!(
        post(&b, &path, "\"just a string\""),
        (400, json!({"ok": false, "error": "invalid JSON body"}))
    );
    // Arrays count as objects.
    assert_eq!(
        post(&b, &path, "[1, 2]"),
        (200, json!({"ok": true, "delivered": 3}))
    );
    let push = bo
        .expect_where("push", |v| is_webhook_push(v) && v["eventData"].is_array())
        .await;
    assert_eq!(push["eventData"], json!([1, 2]));
    let m = b.metrics();
    for reason in [
        "too_large",
        "bad_json",
        "unauthorized",
        "not_object",
        "exists",
    ] {
        let series = format!("broker_webhook_requests_refused_total{{reason=\"{reason}\"}}");
        assert!(metric(&m, &series) >= 1.0, "{series}");
    }
}

// ---------------------------------------------------------------------------------------
// URL watches.

#[tokio::test]
async fn each_watch_is_checked_by_one_replica_at_a_time_and_changes_reach_its_member_anywhere() {
    let c = Cluster::new(WATCH_ENV).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    // Each answer takes longer than a poll of the watchers: a second checker would overlap.
    let site = Site::answering_after(Duration::from_millis(400), |n| {
        (200, format!("version {n}"))
    });
    let mesh = a.create_mesh("watches", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    // Alice's daemon on b; a one-shot command (a session) on a makes the watch and leaves.
    let (mut daemon, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut cmd, _) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &alice.identity, &Identity::random(), json!({})),
    )
    .await;
    let ack: WatchAck = parse(
        &cmd.request(watch_frame(&site.url("/status"), json!({"label": "site"})))
            .await,
    );
    assert!(
        ack.watch_id.starts_with("w_") && ack.watch_id.len() == 10,
        "{ack:?}"
    );
    assert_eq!(ack.id, ack.watch_id);
    assert_eq!((ack.mode.as_str(), ack.interval), ("hash", 1));
    cmd.close().await;

    // Every check sees a new body, so every check but the baseline fires. Two replicas
    // checking the same watch at once would fire twice from the same old value.
    let mut last: Option<Value> = None;
    for _ in 0..4 {
        let t = daemon.expect_where("push", is_triggered).await;
        let data = &t["eventData"];
        assert_eq!(data["watchId"], ack.watch_id);
        assert_eq!(data["label"], "site");
        assert_eq!(t["priority"], "now");
        assert_ne!(data["oldValue"], data["newValue"]);
        if let Some(prev) = &last {
            assert_eq!(
                data["oldValue"], *prev,
                "a change was observed twice or skipped"
            );
        }
        last = Some(data["newValue"].clone());
    }
    assert_eq!(
        site.max_in_flight.load(Ordering::SeqCst),
        1,
        "two replicas checked the watch at once"
    );

    // Listed and cancelled through the member's other presence.
    let list: WatchListResult = parse(&daemon.request(json!({"type": "watch_list"})).await);
    assert_eq!(list.watches.len(), 1);
    let w = &list.watches[0];
    assert_eq!(
        (w.id.as_str(), w.label.as_deref()),
        (ack.watch_id.as_str(), Some("site"))
    );
    assert!(w.last_value.is_some() && w.last_check.is_some(), "{w:?}");
    let un: WatchAck = parse(
        &daemon
            .request(json!({"type": "unwatch", "watchId": ack.watch_id}))
            .await,
    );
    assert_eq!(
        (un.url.as_str(), un.interval),
        (site.url("/status").as_str(), 0)
    );
    let hits = site.hits();
    daemon
        .expect_none(Duration::from_millis(2500), |v| {
            is_triggered(v) && v["eventData"]["oldValue"] != *last.as_ref().unwrap()
        })
        .await;
    // At most the check in flight when it was cancelled.
    assert!(site.hits() <= hits + 1);
}

#[tokio::test]
async fn a_watch_survives_the_sigkill_of_the_replica_checking_it() {
    let mut env = WATCH_ENV.to_vec();
    env.extend([
        ("WATCH_FETCH_TIMEOUT_MS", "8000"),
        ("WATCH_LEASE_MS", "9000"),
    ]);
    let c = Cluster::new(&env).await;
    let a = c.replica("a");
    let site = Site::start(|n| (200, format!("version {n}")));
    let mesh = a.create_mesh("failover", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let (mut on_a, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack: WatchAck = parse(&on_a.request(watch_frame(&site.url("/"), json!({}))).await);
    on_a.expect_where("push", is_triggered).await;

    // The next check hangs on a, the only replica: a holds the watch's lease.
    site.hang.store(true, Ordering::SeqCst);
    let hung = eventually("a's check is in flight", async || {
        Some(site.hung.load(Ordering::SeqCst)).filter(|n| *n > 0)
    })
    .await;
    // What a recorded last: the body of the request before the hung one.
    let seen = observe(
        "hash",
        None,
        200,
        format!("version {}", hung - 1).as_bytes(),
    );
    let b = c.replica("b");
    let (mut on_b, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(a.pid().to_string())
        .status()
        .unwrap();

    // Once a's lease runs out, b checks the watch and tells alice on b.
    let t = on_b.expect_where("push", is_triggered).await;
    assert_eq!(t["eventData"]["watchId"], ack.watch_id);
    assert_eq!(
        t["eventData"]["oldValue"], seen,
        "the killed check recorded nothing"
    );
    assert!(site.hits() > hung);
    let list: WatchListResult = parse(&on_b.request(json!({"type": "watch_list"})).await);
    assert_eq!(list.watches.len(), 1);
}

#[tokio::test]
async fn watches_in_dev_mode_are_bounded_and_fetch_only_what_the_ssrf_rules_allow() {
    let mut env = WATCH_ENV.to_vec();
    env.push(("MAX_WATCHES_PER_MEMBER", "2"));
    let b = Broker::start(&env);
    let site = Site::start(|n| {
        let state = if n <= 2 { "up" } else { "down" };
        (
            200,
            json!({"service": {"state": state}, "n": n}).to_string(),
        )
    });
    let mesh = b.create_mesh("dev-watches", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    let port = site.addr.port();
    for url in [
        "ftp://127.0.0.1/".to_string(),
        "not a url".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://127.0.0.2:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.2]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://user:pw@127.0.0.1:{port}/"),
    ] {
        let r = al.request(watch_frame(&url, json!({}))).await;
        assert_eq!(r["type"], "error", "{url}: {r}");
        assert_eq!(r["code"], "invalid_args", "{url}: {r}");
    }
    let mode = al
        .request(watch_frame(&site.url("/"), json!({"mode": "xml"})))
        .await;
    assert_eq!(mode["code"], "invalid_args");
    for headers in [
        json!({"Host": "169.254.169.254"}),
        json!({"transfer-encoding": "chunked"}),
    ] {
        let r = al
            .request(watch_frame(&site.url("/"), json!({"headers": headers})))
            .await;
        assert_eq!(r["code"], "invalid_args", "{headers}: {r}");
    }
    assert_eq!(site.hits(), 0, "a refused watch fetched something");

    let ack: WatchAck = parse(
        &al.request(watch_frame(
            &site.url("/health"),
            json!({"mode": "json", "extract": "$.service.state", "notify_on": "match:down",
                   "headers": {"X-Token": "t1"}, "label": "api"}),
        ))
        .await,
    );
    let t = al.expect_where("push", is_triggered).await;
    assert_eq!(
        t["eventData"],
        json!({"watchId": ack.watch_id, "url": site.url("/health"), "label": "api",
               "mode": "json", "oldValue": "up", "newValue": "down"})
    );
    assert_eq!(t["senderPubkey"], "system");
    let request = site.last_request.lock().unwrap().clone();
    assert!(request.starts_with("get /health http/1.1"), "{request}");
    assert!(request.contains("x-token: t1"), "{request}");

    // A status watch with the default interval, then the member's bound.
    let status: WatchAck = parse(
        &al.request(json!({"type": "watch", "url": site.url("/"), "mode": "status"}))
            .await,
    );
    assert_eq!(status.interval, 30);
    let over = al.request(watch_frame(&site.url("/x"), json!({}))).await;
    assert_eq!(over["code"], "invalid_args");
    // Bob has his own budget, and cannot cancel alice's watch (answered like an unknown id).
    let foreign: WatchAck = parse(
        &bo.request(json!({"type": "unwatch", "watchId": ack.watch_id}))
            .await,
    );
    assert_eq!((foreign.url.as_str(), foreign.mode.as_str()), ("", ""));
    let bobs: WatchListResult = parse(&bo.request(json!({"type": "watch_list"})).await);
    assert!(bobs.watches.is_empty());
    let list: WatchListResult = parse(&al.request(json!({"type": "watch_list"})).await);
    assert_eq!(list.watches.len(), 2);
    assert_eq!(list.watches[0].last_value.as_deref(), Some("down"));
    let m = b.metrics();
    assert!(metric(&m, "broker_watch_requests_refused_total{reason=\"target\"}") >= 5.0);
    assert!(
        metric(
            &m,
            "broker_watch_requests_refused_total{reason=\"too_many\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_banned_members_watches_stop_unfetched() {
    let b = Broker::start(WATCH_ENV);
    let site = Site::start(|n| (200, format!("version {n}")));
    let mesh = b.create_mesh("bans", None);
    let root = member(&b, &mesh, "root", json!({"role": "admin"}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ad, _) = Client::join(&b.ws_url(), root.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let ack = bo.request(watch_frame(&site.url("/bob"), json!({}))).await;
    assert_eq!(ack["type"], "watch_ack");
    bo.expect_where("push", is_triggered).await;

    let banned = ad.request(ClientFrame::Ban(ban_request("bob"))).await;
    assert_ne!(banned["type"], "error", "{banned}");
    let revoked = r#"broker_watch_checks_total{reason="revoked"}"#;
    eventually("bob's watch is removed at its next check", async || {
        (metric(&b.metrics(), revoked) == 1.0).then_some(())
    })
    .await;
    let hits = site.hits();
    // Removed, not postponed: later polls find nothing due.
    ad.expect_none(Duration::from_millis(1500), |_| false).await;
    assert_eq!(site.hits(), hits);
    assert_eq!(metric(&b.metrics(), revoked), 1.0);
}

#[tokio::test]
async fn the_cli_frames_get_the_replies_the_cli_matches_on() {
    let b = Broker::start(WATCH_ENV);
    let site = Site::start(|_| (200, "same".to_string()));
    let mesh = b.create_mesh("cli", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    // `claudemesh webhook …` (tolerant matching: without `_reqId` the reply has none).
    al.send(json!({"type": "create_webhook", "name": "gh"}))
        .await;
    let ack = al.expect("webhook_ack").await;
    assert!(ack.get("_reqId").is_none());
    for field in ["name", "url", "secret"] {
        assert!(ack[field].is_string(), "{ack}");
    }
    al.send(json!({"type": "list_webhooks"})).await;
    let list = al.expect("webhook_list").await;
    let hook = &list["webhooks"][0];
    assert_eq!(hook["name"], "gh");
    assert!(hook["url"].is_string() && hook["active"] == true && hook["createdAt"].is_string());
    let del = al
        .request(json!({"type": "delete_webhook", "name": "gh"}))
        .await;
    assert_eq!(del["type"], "webhook_ack");

    // `claudemesh watch …` (strict matching: the exact `_reqId`).
    al.send(
        json!({"type": "watch", "url": site.url("/"), "mode": "hash", "interval": 30,
                   "notify_on": "changed", "label": "docs", "_reqId": "w1"}),
    )
    .await;
    let ack = al.expect("watch_ack").await;
    assert_eq!(ack["_reqId"], "w1");
    assert_eq!(ack["id"], ack["watchId"]);
    assert_eq!(
        (ack["mode"].as_str(), ack["interval"].as_u64()),
        (Some("hash"), Some(30))
    );
    al.send(json!({"type": "watch_list", "_reqId": "w2"})).await;
    let list = al.expect("watch_list_result").await;
    assert_eq!(list["_reqId"], "w2");
    let w = &list["watches"][0];
    for field in ["id", "url", "mode", "label", "interval", "createdAt"] {
        assert!(!w[field].is_null(), "{field}: {w}");
    }
    assert!(w.get("lastHash").is_some() && w.get("lastValue").is_some());
    al.send(json!({"type": "unwatch", "watchId": ack["watchId"], "_reqId": "w3"}))
        .await;
    let un = al.expect("watch_ack").await;
    assert_eq!(un["_reqId"], "w3");
    assert_eq!(un["interval"], 0);
    // A refusal is an `error` with the request's `_reqId`.
    al.send(json!({"type": "watch", "url": "file:///etc/passwd", "_reqId": "w4"}))
        .await;
    let err = al.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["_reqId"].as_str()),
        (Some("invalid_args"), Some("w4"))
    );
}
