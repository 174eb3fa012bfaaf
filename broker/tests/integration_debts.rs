//! Debts between the families and the first wave (issues #12, #14, #17), each against the
//! real binary: deletes through the operator API reach every family's data on every
//! backend (a deleted mesh's clock stops, a deleted member's scheduled messages never
//! fire), and a status hook for a process that has not connected yet applies on whichever
//! replica the process then connects to, bounded and expiring in Redis.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::cluster::Cluster;
use common::pg;
use common::*;
use serde_json::{Value, json};

/// The backends a single broker runs on: dev mode (everything in memory) and the durable
/// single node (PostgreSQL).
async fn single_nodes(extra: &[(&str, &str)]) -> Vec<(&'static str, Broker)> {
    let db = pg::fresh_db().await;
    let mut durable = vec![("DATABASE_URL", db.as_str())];
    durable.extend_from_slice(extra);
    vec![
        ("memory", Broker::start(extra)),
        ("postgres", Broker::start(&durable)),
    ]
}

fn clocks_held(b: &Broker) -> f64 {
    metric_value(&b.metrics(), "broker_clocks_held").unwrap_or(0.0)
}

fn fires(b: &Broker, reason: &str) -> f64 {
    metric_value(
        &b.metrics(),
        &format!("broker_scheduled_fires_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_deleted_meshs_clock_stops_on_every_backend() {
    for (backend, b) in single_nodes(&[]).await {
        let mesh = b.create_mesh("doomed", None);
        let alice = member(&b, &mesh, "alice", json!({}));
        let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
        let set = ac
            .request(json!({"type": "set_clock", "speed": 1000}))
            .await;
        assert_eq!(set["type"], "clock_status", "{backend}: {set}");
        eventually(&format!("{backend}: the clock is leased"), async || {
            (clocks_held(&b) == 1.0).then_some(())
        })
        .await;

        let (status, body) = b.api("DELETE", &format!("/api/v1/meshes/{mesh}"), None);
        assert_eq!(status, 200, "{backend}: {body}");
        // No replica leases the deleted mesh's clock any more: it stops ticking.
        eventually(&format!("{backend}: the clock stops"), async || {
            (clocks_held(&b) == 0.0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_deleted_members_scheduled_messages_never_fire_on_every_backend() {
    for (backend, b) in single_nodes(&[("SCHEDULE_POLL_INTERVAL_MS", "50")]).await {
        let mesh = b.create_mesh("sched", None);
        let gone = member(&b, &mesh, "gone", json!({}));
        let stays = member(&b, &mesh, "stays", json!({}));
        let bob = member(&b, &mesh, "bob", json!({}));
        let (mut gc, _) = Client::join(&b.ws_url(), gone.hello(&mesh, json!({}))).await;
        let (mut sc, _) = Client::join(&b.ws_url(), stays.hello(&mesh, json!({}))).await;
        let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
        let bob_key = bob.identity.pubkey.clone();

        // The deleted member's message is due first; the one after it proves the scheduler
        // ran past its due time.
        let at = now_ms() + 3_000;
        for (c, text, deliver_at) in [
            (&mut gc, "from gone", at),
            (&mut sc, "from stays", at + 300),
        ] {
            let ack = c
                .request(json!({"type": "schedule", "to": bob_key, "message": text, "deliverAt": deliver_at}))
                .await;
            assert_eq!(ack["type"], "scheduled_ack", "{backend}: {ack}");
        }
        let (status, body) = b.api(
            "DELETE",
            &format!("/api/v1/meshes/{mesh}/members/{}", gone.id),
            None,
        );
        assert_eq!(status, 200, "{backend}: {body}");

        let push = bc.expect_where("push", is_push).await;
        let text = base64_decode(push["ciphertext"].as_str().unwrap());
        assert_eq!(
            text, "from stays",
            "{backend}: the deleted member's message fired"
        );
        assert_eq!(fires(&b, "sent"), 1.0, "{backend}");
        assert_eq!(
            fires(&b, "refused"),
            0.0,
            "{backend}: a deleted member's entry was still claimed"
        );
    }
}

/// A signed-in user's CLI call (`Authorization: Bearer <session token>`).
fn cli(b: &Broker, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (code, text) = http(b.addr, method, path, Some(token), Some(&body.to_string())).unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_deleted_meshs_slug_is_free_again_on_every_backend() {
    for (backend, b) in single_nodes(&[]).await {
        let (code, user) = b.api(
            "POST",
            "/api/v1/users",
            Some(json!({"email": "o@example.com", "displayName": "Owner", "password": "a long enough password"})),
        );
        assert_eq!(code, 201, "{backend}: {user}");
        let (code, t) = b.api(
            "POST",
            "/cli/token",
            Some(json!({"user_id": user["id"], "email": "o@example.com", "name": "Owner"})),
        );
        assert_eq!(code, 200, "{backend}: {t}");
        let token = t["token"].as_str().unwrap();
        let create = |slug: &str| {
            cli(
                &b,
                token,
                "POST",
                "/cli/mesh/create",
                json!({"name": "Team", "slug": slug, "pubkey": Identity::random().pubkey}),
            )
        };
        let (code, created) = create("first");
        assert_eq!(code, 200, "{backend}: {created}");
        let mesh_id = created["id"].as_str().unwrap().to_string();
        // Renamed: the accounts family keeps the new slug.
        let (code, v) = cli(
            &b,
            token,
            "PATCH",
            "/api/cli/meshes/first",
            json!({"slug": "team"}),
        );
        assert_eq!(code, 200, "{backend}: {v}");
        let (code, v) = b.api("DELETE", &format!("/api/v1/meshes/{mesh_id}"), None);
        assert_eq!(code, 200, "{backend}: {v}");
        // The operator deleted it: its (renamed) slug names nothing any more.
        let (code, again) = create("team");
        assert_eq!(
            code, 200,
            "{backend}: the deleted mesh's slug is still taken: {again}"
        );
        assert_eq!(again["slug"], "team", "{backend}");
    }
}

fn base64_decode(s: &str) -> String {
    use base64::Engine;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Pending status hooks in a cluster
// ---------------------------------------------------------------------------------------

fn post_hook(b: &Broker, pid: i64, cwd: &str, status: &str) -> (u16, Value) {
    let body = json!({"pid": pid, "cwd": cwd, "status": status}).to_string();
    let (code, text) = b
        .try_http("POST", "/hook/set-status", None, Some(&body))
        .unwrap();
    (code, serde_json::from_str(&text).unwrap())
}

/// The status `list_peers` shows for `name`.
async fn status_of(c: &mut Client, name: &str) -> String {
    let list = c.request(json!({"type": "list_peers"})).await;
    list["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == name)
        .map(|p| p["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

/// The Redis keys of pending hooks, with their TTL (ms).
fn pending_keys(c: &Cluster) -> Vec<(String, i64)> {
    let client = ::redis::Client::open(c.redis.url().as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*:hookp:*")
        .query(&mut conn)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let ttl: i64 = ::redis::cmd("PTTL").arg(&k).query(&mut conn).unwrap();
            (k, ttl)
        })
        .collect()
}

#[tokio::test]
async fn a_pending_hook_applies_when_its_process_connects_to_another_replica() {
    let c = Cluster::new(&[("HOOK_PENDING_MS", "60000")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("pending", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let watcher = member(&a, &mesh, "watcher", json!({}));
    let (mut cw, _) = Client::join(&a.ws_url(), watcher.hello(&mesh, json!({}))).await;

    // The hook lands on A before the process has connected anywhere.
    let (code, body) = post_hook(&a, 4242, "/work/later", "working");
    assert_eq!((code, body), (200, json!({"ok": true, "pending": true})));
    // Another process in the same cwd gets nothing of it.
    let (_bc, _) = Client::join(
        &b.ws_url(),
        bob.hello(&mesh, json!({"pid": 4243, "cwd": "/work/later"})),
    )
    .await;
    assert_eq!(status_of(&mut cw, "bob").await, "idle");
    // The process connects to B: it starts with the pending status.
    let (ac, _) = Client::join(
        &b.ws_url(),
        alice.hello(&mesh, json!({"pid": 4242, "cwd": "/work/later"})),
    )
    .await;
    assert_eq!(status_of(&mut cw, "alice").await, "working");
    // Taken by that handshake: a second connection of the process starts idle.
    ac.close().await;
    eventually("alice has left", async || {
        let list = cw.request(json!({"type": "list_peers"})).await;
        (!list["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["displayName"] == "alice"))
        .then_some(())
    })
    .await;
    assert_eq!(pending_keys(&c), vec![], "taken, with its index entry");
    let (_ac, _) = Client::join(
        &a.ws_url(),
        alice.hello(&mesh, json!({"pid": 4242, "cwd": "/work/later"})),
    )
    .await;
    assert_eq!(status_of(&mut cw, "alice").await, "idle");
}

#[tokio::test]
async fn cluster_pending_hooks_are_bounded_cluster_wide_and_expire_in_redis() {
    let c = Cluster::new(&[
        ("HOOK_PENDING_MAX", "3"),
        ("HOOK_PENDING_MS", "60000"),
        ("HOOK_RATE_PER_SOURCE_PER_MIN", "0"),
    ])
    .await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    // Three kept, two on A and one on B; the bound is shared, so the fourth, on B, is
    // dropped and counted there.
    let long_cwd = format!("/{}", "d".repeat(4_000));
    for (i, r) in [&a, &a, &b].into_iter().enumerate() {
        let (code, body) = post_hook(r, 100 + i as i64, &long_cwd, "working");
        assert_eq!((code, body), (200, json!({"ok": true, "pending": true})));
    }
    let (code, body) = post_hook(&b, 200, &long_cwd, "working");
    assert_eq!((code, body), (200, json!({"ok": true, "pending": false})));
    assert_eq!(
        metric(&b.metrics(), "broker_hook_pending_dropped_total"),
        1.0
    );
    // A status for a process already waiting replaces it, even at the bound.
    let (code, body) = post_hook(&b, 100, &long_cwd, "idle");
    assert_eq!((code, body), (200, json!({"ok": true, "pending": true})));
    // Fixed-length names, whatever the cwd, and every key expires.
    let keys = pending_keys(&c);
    assert_eq!(keys.len(), 4, "three entries and their index: {keys:?}");
    for (key, ttl) in &keys {
        assert!(key.len() <= 64, "a pending hook key of {} bytes", key.len());
        assert!(*ttl > 0 && *ttl <= 60_000, "{key} has TTL {ttl}");
    }
}

#[tokio::test]
async fn a_pending_hook_expires_after_hook_pending_ms() {
    let c = Cluster::new(&[("HOOK_PENDING_MS", "300")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("expiry", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let watcher = member(&a, &mesh, "watcher", json!({}));
    let (mut cw, _) = Client::join(&a.ws_url(), watcher.hello(&mesh, json!({}))).await;
    let (code, body) = post_hook(&a, 77, "/work/late", "working");
    assert_eq!((code, body), (200, json!({"ok": true, "pending": true})));
    eventually("the pending status has expired in Redis", async || {
        pending_keys(&c).is_empty().then_some(())
    })
    .await;
    let (_ac, _) = Client::join(
        &b.ws_url(),
        alice.hello(&mesh, json!({"pid": 77, "cwd": "/work/late"})),
    )
    .await;
    assert_eq!(status_of(&mut cw, "alice").await, "idle");
}
