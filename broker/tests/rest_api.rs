//! API keys (extensions §10) and the REST v1 API (`rest.md`) against the real broker: keys
//! minted over WebSocket, the key layer's exact errors, topics and history over REST, the
//! SSE stream across replicas, revocation and bans in force on every replica at once, the
//! bot inbox across a SIGKILL, placement beside the operator API, and the OpenAPI document.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A REST call with an API key: status and JSON body.
fn rest(
    addr: SocketAddr,
    method: &str,
    path: &str,
    secret: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = http(addr, method, path, secret, body.as_deref()).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Mints a key over the client's WebSocket; returns the `apikey_created` reply.
async fn mint(c: &mut Client, label: &str, caps: &[&str], scopes: Option<&[&str]>) -> Value {
    let mut frame = json!({"type": "apikey_create", "label": label, "capabilities": caps});
    if let Some(s) = scopes {
        frame["topicScopes"] = json!(s);
    }
    let reply = c.request(frame).await;
    assert_eq!(reply["type"], "apikey_created", "{reply}");
    reply
}

fn secret(created: &Value) -> String {
    created["secret"].as_str().unwrap().to_string()
}

async fn create_topic(c: &mut Client, name: &str) -> String {
    let reply = c
        .request(json!({"type": "topic_create", "name": name}))
        .await;
    assert_eq!(reply["type"], "topic_created", "{reply}");
    reply["topic"]["id"].as_str().unwrap().to_string()
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn post_body(topic: &str, text: &str) -> Value {
    json!({"topic": topic, "ciphertext": b64(text), "nonce": b64("nonce-nonce-nonce-nonce!")})
}

/// The framework error shape of the key layer, with its code.
fn assert_key_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert!(
        body["timestamp"].is_string() && body["path"].is_string(),
        "{body}"
    );
}

/// A Server-Sent Events client over one HTTP/1.1 connection (chunked body).
struct Sse {
    r: BufReader<TcpStream>,
    buf: String,
}

#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl Sse {
    async fn open(
        addr: SocketAddr,
        path: &str,
        secret: &str,
        last_id: Option<&str>,
    ) -> Result<Sse, (u16, String)> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let last = last_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {secret}\r\n{last}Accept: text/event-stream\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut r = BufReader::new(s);
        let mut status_line = String::new();
        r.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            headers.push_str(&line.to_ascii_lowercase());
        }
        if status != 200 {
            return Err((status, headers));
        }
        assert!(
            headers.contains("content-type: text/event-stream"),
            "{headers}"
        );
        assert!(headers.contains("cache-control: no-cache"), "{headers}");
        Ok(Sse {
            r,
            buf: String::new(),
        })
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..at + 2).collect();
                let mut ev = SseEvent {
                    event: String::new(),
                    id: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = v.to_string();
                    }
                }
                return Some(ev);
            }
            // One chunk: its size in hex, the bytes, CRLF.
            let mut size = String::new();
            if self.r.read_line(&mut size).await.ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                return None;
            }
            let mut chunk = vec![0u8; n + 2];
            self.r.read_exact(&mut chunk).await.ok()?;
            chunk.truncate(n);
            self.buf.push_str(&String::from_utf8(chunk).unwrap());
        }
    }

    /// The next `message` event (skipping `ready` and `heartbeat`), within `WAIT`.
    async fn message(&mut self) -> SseEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                let ev = self.next().await.expect("the stream is open");
                if ev.event == "message" {
                    return ev;
                }
            }
        })
        .await
        .expect("a message event")
    }
}

#[tokio::test]
async fn dev_mode_keys_are_minted_listed_revoked_and_enforced_with_the_exact_errors() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("keys", None);
    let admin = member(&b, &mesh, "admin", json!({"role": "admin"}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    // Minting: the secret is shown once, in the reference's shape.
    let created = mint(&mut bc, "bob-bot", &["read"], None).await;
    let s = secret(&created);
    assert_eq!(s.len(), 46);
    assert!(s.starts_with("cm_"));
    assert_eq!(created["prefix"], &s[..11]);
    assert_eq!(created["capabilities"], json!(["read"]));
    assert_eq!(created["topicScopes"], Value::Null);
    assert_eq!(created["label"], "bob-bot");
    // Listing never shows a secret; bob sees his own keys only, the admin every key.
    let admin_key = mint(&mut ac, "admin-bot", &["admin"], None).await;
    let list = bc.request(json!({"type": "apikey_list"})).await;
    assert_eq!(list["type"], "apikey_list_response");
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{list}");
    assert_eq!(keys[0]["id"], created["id"]);
    assert!(keys[0].get("secret").is_none() && !list.to_string().contains(&s));
    assert_eq!(keys[0]["revokedAt"], Value::Null);
    let all = ac.request(json!({"type": "apikey_list"})).await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all["keys"][0]["id"], admin_key["id"], "newest first");

    // Ours: only admins mint `admin`; bad input is `invalid_args` with the `_reqId`.
    let refused = bc
        .request(json!({"type": "apikey_create", "label": "x", "capabilities": ["admin"]}))
        .await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = bc
        .request(json!({"type": "apikey_create", "label": "", "capabilities": []}))
        .await;
    assert_eq!(refused["code"], "invalid_args");
    assert_eq!(
        refused["message"],
        "label and at least one capability required"
    );
    let refused = bc.request(json!({"type": "apikey_revoke"})).await;
    assert_eq!(refused["code"], "invalid_args");
    assert_eq!(refused["message"], "id required");

    // The key layer, exactly.
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", None, None);
    assert_key_error(st, &v, 401, "error.api_key_missing");
    let (st, v) = rest(
        b.addr,
        "GET",
        "/api/v1/members",
        Some("cm_notakeyatallnotakeyatallnotakeyatallnotakey"),
        None,
    );
    assert_key_error(st, &v, 401, "error.api_key_invalid");
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some("sk_whatever"), None);
    assert_key_error(st, &v, 401, "error.api_key_invalid");
    // 401 before 404 on an unknown path.
    let (st, v) = rest(b.addr, "GET", "/api/v1/nowhere", None, None);
    assert_key_error(st, &v, 401, "error.api_key_missing");
    let (st, _) = rest(b.addr, "GET", "/api/v1/nowhere", Some(&s), None);
    assert_eq!(st, 404);

    // A read key reads; it does not post.
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some(&s), None);
    assert_eq!(st, 200, "{v}");
    let names: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "bob"]);
    assert_eq!(v["members"][1]["online"], true);
    let (st, v) = rest(
        b.addr,
        "POST",
        "/api/v1/messages",
        Some(&s),
        Some(post_body("general", "hi")),
    );
    assert_key_error(st, &v, 403, "error.api_key_missing_capability");
    // `admin` admits every capability.
    let (st, _) = rest(
        b.addr,
        "GET",
        "/api/v1/members",
        Some(&secret(&admin_key)),
        None,
    );
    assert_eq!(st, 200);

    // Topic scopes: routes naming a topic outside the list are refused; /topics filters.
    create_topic(&mut ac, "alpha").await;
    create_topic(&mut ac, "beta").await;
    let scoped = mint(&mut bc, "scoped", &["read", "send"], Some(&["alpha"])).await;
    let sc = secret(&scoped);
    let (st, v) = rest(
        b.addr,
        "GET",
        "/api/v1/topics/beta/messages",
        Some(&sc),
        None,
    );
    assert_key_error(st, &v, 403, "error.api_key_topic_out_of_scope");
    let (st, v) = rest(
        b.addr,
        "POST",
        "/api/v1/messages",
        Some(&sc),
        Some(post_body("beta", "x")),
    );
    assert_key_error(st, &v, 403, "error.api_key_topic_out_of_scope");
    let (st, v) = rest(b.addr, "GET", "/api/v1/me/workspace", Some(&sc), None);
    assert_key_error(st, &v, 403, "error.api_key_topic_out_of_scope");
    let (st, v) = rest(b.addr, "GET", "/api/v1/topics", Some(&sc), None);
    assert_eq!(st, 200, "{v}");
    let names: Vec<&str> = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha"]);
    let (st, v) = rest(
        b.addr,
        "GET",
        "/api/v1/topics/nope/messages",
        Some(&s),
        None,
    );
    assert_eq!(st, 404);
    assert_eq!(v, json!({"error": "topic_not_found", "topic": "nope"}));
    let (st, v) = rest(
        b.addr,
        "GET",
        "/api/v1/topics/alpha/messages?limit=0",
        Some(&s),
        None,
    );
    assert_eq!(st, 422, "{v}");
    assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    // `/me/*` needs a user behind the issuer.
    let (st, v) = rest(b.addr, "GET", "/api/v1/me/workspace", Some(&s), None);
    assert_eq!(
        (st, v),
        (400, json!({"error": "issuer_member_has_no_user"}))
    );

    // Revocation by prefix: at once, idempotent; others' keys are not found for non-admins.
    let id = created["id"].as_str().unwrap();
    let other = bc
        .request(json!({"type": "apikey_revoke", "id": admin_key["id"]}))
        .await;
    assert_eq!(other["status"], "not_found", "{other}");
    let short = bc
        .request(json!({"type": "apikey_revoke", "id": &id[..3]}))
        .await;
    assert_eq!(
        short["status"], "not_found",
        "a prefix needs 6 chars: {short}"
    );
    let revoked = bc
        .request(json!({"type": "apikey_revoke", "id": &id[..8]}))
        .await;
    assert_eq!(revoked["type"], "apikey_revoke_response");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["id"], id);
    let again = bc.request(json!({"type": "apikey_revoke", "id": id})).await;
    assert_eq!(again["status"], "revoked", "idempotent");
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some(&s), None);
    assert_key_error(st, &v, 401, "error.api_key_invalid");
    let list = bc.request(json!({"type": "apikey_list"})).await;
    let row = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert!(row["revokedAt"].is_string(), "{row}");
    assert!(row["lastUsedAt"].is_string(), "{row}");

    // CORS: any origin, credentials, preflight.
    let mut tcp = std::net::TcpStream::connect(b.addr).unwrap();
    use std::io::{Read, Write};
    write!(
        tcp,
        "OPTIONS /api/v1/messages HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let raw = raw.to_ascii_lowercase();
    assert!(raw.starts_with("http/1.1 204"), "{raw}");
    assert!(
        raw.contains("access-control-allow-origin: https://app.example"),
        "{raw}"
    );
    assert!(
        raw.contains("access-control-allow-headers: content-type, authorization"),
        "{raw}"
    );
    assert!(raw.contains("access-control-max-age: 3600"), "{raw}");
    assert!(
        raw.contains("access-control-allow-credentials: true"),
        "{raw}"
    );
}

#[tokio::test]
async fn the_cli_frames_get_the_replies_the_cli_matches_on() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("cli", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    // `withRestKey`: a 5-minute read key labelled cli-<purpose>-<pid>, without `_reqId`
    // (the tolerant client matches the oldest pending request of the type).
    let expires = broker::ids::iso8601_ms(now_ms() + 5 * 60_000);
    c.send(
        json!({"type": "apikey_create", "label": "cli-member-list-4242",
                  "capabilities": ["read"], "expiresAt": expires}),
    )
    .await;
    let created = c.expect("apikey_created").await;
    assert!(created.get("_reqId").is_none());
    for field in [
        "id",
        "secret",
        "label",
        "prefix",
        "capabilities",
        "createdAt",
    ] {
        assert!(!created[field].is_null(), "{field}: {created}");
    }
    assert!(created.as_object().unwrap().contains_key("topicScopes"));
    let s = secret(&created);
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some(&s), None);
    assert_eq!(st, 200, "{v}");
    let m = &v["members"][0];
    for field in [
        "memberId",
        "pubkey",
        "displayName",
        "role",
        "isHuman",
        "joinedAt",
        "online",
        "status",
    ] {
        assert!(!m[field].is_null(), "{field}: {m}");
    }
    c.send(json!({"type": "apikey_list"})).await;
    let list = c.expect("apikey_list_response").await;
    assert_eq!(list["keys"][0]["expiresAt"], expires.as_str());
    c.send(json!({"type": "apikey_revoke", "id": created["id"]}))
        .await;
    let revoked = c.expect("apikey_revoke_response").await;
    assert_eq!(revoked["status"], "revoked");
    // A REST bot shows up as a peer `via:"rest"` (its key was used).
    let bot = member(&b, &mesh, "bot", json!({}));
    let (mut bc, _) = Client::join(&b.ws_url(), bot.hello(&mesh, json!({}))).await;
    let bot_key = secret(&mint(&mut bc, "bot", &["read"], None).await);
    bc.close().await;
    let peers = eventually("the bot listed via rest", async || {
        let (st, v) = rest(b.addr, "GET", "/api/v1/peers", Some(&bot_key), None);
        assert_eq!(st, 200, "{v}");
        let bot = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["displayName"] == "bot")?
            .clone();
        (bot["via"] == "rest").then_some(v)
    })
    .await;
    let alice_row = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == "alice")
        .unwrap();
    assert_eq!(alice_row["via"], "ws");
    assert_eq!(alice_row["pubkey"], alice.identity.pubkey.as_str());
}

#[tokio::test]
async fn rest_is_served_on_the_public_port_and_the_operator_api_on_the_internal_one() {
    let b = Broker::start(&[("BROKER_INTERNAL_PORT", "0")]);
    let internal = b.internal_addr.unwrap();
    let mesh = b.create_mesh("placement", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let s = secret(&mint(&mut c, "k", &["read"], None).await);
    let (st, _) = rest(b.addr, "GET", "/api/v1/members", Some(&s), None);
    assert_eq!(st, 200);
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", None, None);
    assert_key_error(st, &v, 401, "error.api_key_missing");
    // The internal listener serves no REST route; the public one no operator route.
    let (st, _) = rest(internal, "GET", "/api/v1/members", Some(&s), None);
    assert_eq!(st, 404);
    let (st, _) = rest(b.addr, "GET", "/api/v1/meshes", Some(TOKEN), None);
    assert_eq!(st, 404);
    let (st, doc) = rest(b.addr, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/messages",
        "/api/v1/topics",
        "/api/v1/topics/{name}/messages",
        "/api/v1/topics/{name}/stream",
        "/api/v1/topics/{name}/read",
        "/api/v1/topics/{name}/key",
        "/api/v1/topics/{name}/claim-key",
        "/api/v1/topics/{name}/pending-seals",
        "/api/v1/topics/{name}/seal",
        "/api/v1/members",
        "/api/v1/peers",
        "/api/v1/notifications",
        "/api/v1/notifications/read",
        "/api/v1/me/peer-pubkey",
        "/api/v1/me/workspace",
        "/api/v1/me/topics",
        "/api/v1/me/notifications",
        "/api/v1/me/activity",
        "/api/v1/me/search",
        "/api/v1/me/tasks",
        "/api/v1/me/state",
        "/api/v1/me/memory",
        "/api/v1/inbox",
        "/api/v1/inbox/ack",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the document"
        );
    }
}

#[tokio::test]
async fn a_post_on_a_reaches_a_stream_on_b_and_history_pages_across_replicas() {
    // No polling to speak of: what reaches the stream was pushed by the bus.
    let c = Cluster::new(&[
        ("BROKER_SEND_BURST", "0"),
        ("REST_STREAM_POLL_MS", "600000"),
    ])
    .await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("streams", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bot = member(&a, &mesh, "bot", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bot.hello(&mesh, json!({}))).await;
    let topic_id = create_topic(&mut ac, "ops").await;
    bc.send(json!({"type": "topic_join", "topic": "ops"})).await;
    let writer = secret(&mint(&mut bc, "writer", &["read", "send"], Some(&["ops"])).await);
    let reader = secret(&mint(&mut ac, "reader", &["read"], None).await);

    let mut stream = Sse::open(b.addr, "/api/v1/topics/ops/stream", &reader, None)
        .await
        .unwrap();
    let ready = stream.next().await.unwrap();
    assert_eq!(ready.event, "ready");
    let ready: Value = serde_json::from_str(&ready.data).unwrap();
    assert_eq!(ready["topic"], "ops");
    assert_eq!(ready["topicId"], topic_id.as_str());

    // A REST post on A, a WebSocket post on A: both on B's stream, in order.
    let (st, posted) = rest(
        a.addr,
        "POST",
        "/api/v1/messages",
        Some(&writer),
        Some(post_body("ops", "from rest @alice")),
    );
    assert_eq!(st, 200, "{posted}");
    assert_eq!(posted["messageId"], posted["historyId"]);
    assert_eq!(posted["topic"], "ops");
    assert_eq!(posted["topicId"], topic_id.as_str());
    assert_eq!(posted["bodyVersion"], 1);
    assert_eq!(posted["notifications"], 1, "alice was mentioned");
    let ev = stream.message().await;
    assert_eq!(ev.id.as_deref(), posted["messageId"].as_str());
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["ciphertext"], b64("from rest @alice"));
    assert_eq!(data["senderName"], "bot");
    assert_eq!(data["senderPubkey"], bot.identity.pubkey.as_str());
    // The live WS topic member got a push too (one send path).
    let push = ac.expect_where("push", |p| p["topic"] == "ops").await;
    assert_eq!(push["messageId"], posted["messageId"]);
    let ack = ac
        .send_msg(&format!("#{topic_id}"), "next", &b64("from ws"))
        .await;
    assert_eq!(ack["queued"], true, "{ack}");
    let ev2 = stream.message().await;
    let data2: Value = serde_json::from_str(&ev2.data).unwrap();
    assert_eq!(data2["ciphertext"], b64("from ws"));
    assert_eq!(data2["senderName"], "alice");

    // Resuming with Last-Event-ID replays what came after it.
    for i in 0..5 {
        let (st, _) = rest(
            a.addr,
            "POST",
            "/api/v1/messages",
            Some(&writer),
            Some(post_body("ops", &format!("m{i}"))),
        );
        assert_eq!(st, 200);
    }
    let mut resumed = Sse::open(
        a.addr,
        "/api/v1/topics/ops/stream",
        &reader,
        ev.id.as_deref(),
    )
    .await
    .unwrap();
    let mut replayed = Vec::new();
    for _ in 0..6 {
        let m: Value = serde_json::from_str(&resumed.message().await.data).unwrap();
        replayed.push(STANDARD.decode(m["ciphertext"].as_str().unwrap()).unwrap());
    }
    let replayed: Vec<String> = replayed
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(replayed, ["from ws", "m0", "m1", "m2", "m3", "m4"]);

    // History pages on B, newest first, `before` strictly older.
    let (st, page1) = rest(
        b.addr,
        "GET",
        "/api/v1/topics/ops/messages?limit=3",
        Some(&reader),
        None,
    );
    assert_eq!(st, 200, "{page1}");
    let ids1: Vec<String> = page1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids1.len(), 3);
    let (_, page2) = rest(
        b.addr,
        "GET",
        &format!("/api/v1/topics/ops/messages?limit=3&before={}", ids1[2]),
        Some(&reader),
        None,
    );
    let ids2: Vec<String> = page2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let (_, page3) = rest(
        b.addr,
        "GET",
        &format!("/api/v1/topics/ops/messages?limit=3&before={}", ids2[2]),
        Some(&reader),
        None,
    );
    let ids3: Vec<String> = page3["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids3.len(), 1);
    let all: HashSet<&String> = ids1.iter().chain(&ids2).chain(&ids3).collect();
    assert_eq!(all.len(), 7, "seven messages, none twice");
    assert_eq!(
        ids3[0],
        posted["messageId"].as_str().unwrap(),
        "the oldest last"
    );

    // Mentions became notifications, read over REST by alice's key on B.
    let (st, n) = rest(b.addr, "GET", "/api/v1/notifications", Some(&reader), None);
    assert_eq!(st, 200, "{n}");
    assert_eq!(n["mentionedAs"], "alice");
    assert_eq!(n["notifications"][0]["id"], posted["messageId"]);
    assert_eq!(n["notifications"][0]["topicName"], "ops");
    // The REST reader's unread counts and its read mark.
    let (_, topics) = rest(b.addr, "GET", "/api/v1/topics", Some(&reader), None);
    assert!(
        topics["topics"][0]["unread"].as_u64().unwrap() >= 6,
        "{topics}"
    );
    let (st, read) = rest(
        b.addr,
        "PATCH",
        "/api/v1/topics/ops/read",
        Some(&reader),
        None,
    );
    assert_eq!(st, 200, "{read}");
    let (_, topics) = rest(a.addr, "GET", "/api/v1/topics", Some(&reader), None);
    assert_eq!(topics["topics"][0]["unread"], 0, "{topics}");
}

#[tokio::test]
async fn a_ws_peer_and_a_rest_bot_see_one_history_in_one_order() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("one-history", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bot = member(&a, &mesh, "bot", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bot.hello(&mesh, json!({}))).await;
    let topic_id = create_topic(&mut ac, "team").await;
    let key = secret(&mint(&mut bc, "bot", &["read", "send"], None).await);
    bc.close().await;
    for i in 0..4 {
        if i % 2 == 0 {
            let ack = ac
                .send_msg(&format!("#{topic_id}"), "next", &b64(&format!("ws {i}")))
                .await;
            assert_eq!(ack["queued"], true, "{ack}");
        } else {
            let (st, v) = rest(
                b.addr,
                "POST",
                "/api/v1/messages",
                Some(&key),
                Some(post_body("team", &format!("rest {i}"))),
            );
            assert_eq!(st, 200, "{v}");
        }
    }
    let ws = ac
        .request(json!({"type": "topic_history", "topic": "team", "limit": 10}))
        .await;
    let ws_ids: Vec<&str> = ws["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let (_, rest_page) = rest(
        b.addr,
        "GET",
        "/api/v1/topics/team/messages",
        Some(&key),
        None,
    );
    let rest_ids: Vec<&str> = rest_page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ws_ids.len(), 4, "{ws}");
    assert_eq!(ws_ids, rest_ids);
    let texts: Vec<String> = rest_page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            String::from_utf8(STANDARD.decode(m["ciphertext"].as_str().unwrap()).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(texts, ["rest 3", "ws 2", "rest 1", "ws 0"]);
}

#[tokio::test]
async fn a_revoked_key_and_a_banned_members_key_are_refused_on_both_replicas_at_once() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("revocation", None);
    let admin = member(&a, &mesh, "admin", json!({"role": "admin"}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), admin.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let k1 = mint(&mut bc, "one", &["read"], None).await;
    let k2 = mint(&mut bc, "two", &["read"], None).await;
    let (s1, s2) = (secret(&k1), secret(&k2));
    for addr in [a.addr, b.addr] {
        for s in [&s1, &s2] {
            assert_eq!(rest(addr, "GET", "/api/v1/members", Some(s), None).0, 200);
        }
    }
    // Revoked over B's WebSocket: the very next request on either replica is refused.
    let r = bc
        .request(json!({"type": "apikey_revoke", "id": k1["id"]}))
        .await;
    assert_eq!(r["status"], "revoked");
    for addr in [a.addr, b.addr] {
        let (st, v) = rest(addr, "GET", "/api/v1/members", Some(&s1), None);
        assert_key_error(st, &v, 401, "error.api_key_invalid");
        assert_eq!(rest(addr, "GET", "/api/v1/members", Some(&s2), None).0, 200);
    }
    // Bob is banned on A: his other key is refused on both replicas at once.
    let banned = ac.request(ClientFrame::Ban(ban_request("bob"))).await;
    assert!(banned["type"] != "error", "{banned}");
    for addr in [a.addr, b.addr] {
        let (st, v) = rest(addr, "GET", "/api/v1/members", Some(&s2), None);
        assert_key_error(st, &v, 401, "error.api_key_invalid");
    }
    let refused = r#"broker_rest_requests_refused_total{reason="key_invalid"}"#;
    assert!(metric(&a.metrics(), refused) >= 2.0);
}

#[tokio::test]
async fn the_bot_inbox_delivers_every_dm_at_least_once_across_a_sigkill() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0"), ("CLAIM_LEASE_MS", "1500")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("inbox", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bot = member(&a, &mesh, "bot", json!({}));
    let (mut bc, _) = Client::join(&b.ws_url(), bot.hello(&mesh, json!({}))).await;
    let key = secret(&mint(&mut bc, "inbox", &["read"], None).await);
    bc.close().await;
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let mut sent = HashSet::new();
    for i in 0..20 {
        let ack = ac
            .send_msg(&bot.identity.pubkey, "next", &format!("dm {i}"))
            .await;
        assert_eq!(ack["queued"], true, "{ack}");
        sent.insert(ack["messageId"].as_str().unwrap().to_string());
    }
    // The bot takes a first batch on A and acknowledges only half of it; A dies.
    let (st, first) = rest(a.addr, "GET", "/api/v1/inbox?limit=8", Some(&key), None);
    assert_eq!(st, 200, "{first}");
    let first: Vec<String> = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(first.len(), 8);
    let (st, acked) = rest(
        a.addr,
        "POST",
        "/api/v1/inbox/ack",
        Some(&key),
        Some(json!({"ids": first[..4]})),
    );
    assert_eq!(st, 200, "{acked}");
    assert_eq!(acked["confirmed"].as_array().unwrap().len(), 4);
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(a.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    drop(a);
    // On B it keeps polling: the unacknowledged ones come back after their lease.
    let mut seen: HashSet<String> = first.iter().cloned().collect();
    let mut confirmed: HashSet<String> = first[..4].iter().cloned().collect();
    eventually("every DM confirmed through B", async || {
        let (st, page) = rest(b.addr, "GET", "/api/v1/inbox?limit=50", Some(&key), None);
        assert_eq!(st, 200, "{page}");
        let ids: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["messageId"].as_str().unwrap().to_string())
            .collect();
        if !ids.is_empty() {
            let (st, r) = rest(
                b.addr,
                "POST",
                "/api/v1/inbox/ack",
                Some(&key),
                Some(json!({"ids": ids})),
            );
            assert_eq!(st, 200, "{r}");
            for id in r["confirmed"].as_array().unwrap() {
                confirmed.insert(id.as_str().unwrap().to_string());
            }
            seen.extend(ids);
        }
        (confirmed.len() == sent.len()).then_some(())
    })
    .await;
    assert_eq!(confirmed, sent);
    assert!(seen.is_superset(&sent));
    // Nothing is left.
    let (_, page) = rest(b.addr, "GET", "/api/v1/inbox", Some(&key), None);
    assert_eq!(page["messages"], json!([]));
}

#[tokio::test]
async fn a_stream_is_pushed_without_live_members_bounded_and_ended_by_a_revocation() {
    let c = Cluster::new(&[
        ("REST_STREAM_POLL_MS", "600000"),
        ("REST_STREAM_HEARTBEAT_MS", "300"),
        ("REST_MAX_STREAMS_PER_KEY", "1"),
    ])
    .await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("quiet", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let topic_id = create_topic(&mut ac, "quiet").await;
    let writer = secret(&mint(&mut ac, "writer", &["send"], None).await);
    let reader = mint(&mut ac, "reader", &["read"], None).await;
    ac.close().await;
    // B holds no socket of the mesh: only the stream keeps it subscribed.
    let mut stream = Sse::open(
        b.addr,
        "/api/v1/topics/quiet/stream",
        &secret(&reader),
        None,
    )
    .await
    .unwrap();
    assert_eq!(stream.next().await.unwrap().event, "ready");
    let refused = Sse::open(
        b.addr,
        "/api/v1/topics/quiet/stream",
        &secret(&reader),
        None,
    )
    .await;
    assert_eq!(
        refused.err().map(|e| e.0),
        Some(429),
        "REST_MAX_STREAMS_PER_KEY"
    );
    assert_eq!(metric(&b.metrics(), "broker_rest_streams_open"), 1.0);
    let (st, posted) = rest(
        a.addr,
        "POST",
        "/api/v1/messages",
        Some(&writer),
        Some(post_body("quiet", "nobody is live")),
    );
    assert_eq!(st, 200, "{posted}");
    let ev = stream.message().await;
    assert_eq!(ev.id.as_deref(), posted["messageId"].as_str());
    // A post over the WebSocket on A that no live presence receives (its only member is
    // the sender) still reaches the stream on B through the bus, not the 10-minute poll.
    {
        let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
        let ack = ac
            .send_msg(&format!("#{topic_id}"), "next", &b64("over the websocket"))
            .await;
        assert_eq!(ack["queued"], true, "{ack}");
        let ev = stream.message().await;
        assert!(ev.data.contains(&b64("over the websocket")), "{}", ev.data);
        ac.close().await;
    }
    // Heartbeats are events carrying epoch milliseconds.
    let beat = tokio::time::timeout(WAIT, async {
        loop {
            let ev = stream.next().await.unwrap();
            if ev.event == "heartbeat" {
                return ev;
            }
        }
    })
    .await
    .unwrap();
    assert!(beat.data.parse::<i64>().unwrap() > 0);
    // Revoked on A: the stream on B says so and ends.
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let r = ac
        .request(json!({"type": "apikey_revoke", "id": reader["id"]}))
        .await;
    assert_eq!(r["status"], "revoked");
    let ended = tokio::time::timeout(WAIT, async {
        let mut last = None;
        while let Some(ev) = stream.next().await {
            last = Some(ev);
        }
        last
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ended.event, "error");
    eventually("the stream's slot released", async || {
        (metric(&b.metrics(), "broker_rest_streams_open") == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn failed_key_lookups_are_rate_limited_per_source() {
    let b = Broker::start(&[("REST_AUTH_FAILURES_PER_MIN", "3")]);
    let bad = "cm_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for _ in 0..3 {
        let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some(bad), None);
        assert_key_error(st, &v, 401, "error.api_key_invalid");
    }
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some(bad), None);
    assert_eq!((st, v), (429, json!({"error": "rate_limited"})));
    let limited = r#"broker_rest_requests_refused_total{reason="rate_limited"}"#;
    assert_eq!(metric(&b.metrics(), limited), 1.0);
}

#[tokio::test]
async fn the_me_routes_span_every_mesh_of_the_issuing_user() {
    let db = common::pg::fresh_db().await;
    let b = Broker::start(&[("DATABASE_URL", db.as_str()), ("BROKER_SEND_BURST", "0")]);
    let (m1, m2) = (b.create_mesh("one", None), b.create_mesh("two", None));
    let ada1 = member(&b, &m1, "ada", json!({"userId": "u-ada"}));
    let ada2 = member(&b, &m2, "ada", json!({"userId": "u-ada"}));
    let bob = member(&b, &m2, "bob", json!({}));
    let (mut a1, _) = Client::join(&b.ws_url(), ada1.hello(&m1, json!({}))).await;
    let (mut a2, _) = Client::join(&b.ws_url(), ada2.hello(&m2, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&m2, json!({}))).await;
    create_topic(&mut a1, "alpha").await;
    let beta = create_topic(&mut a2, "beta").await;
    let ack = bc
        .send_msg(
            &format!("#{beta}"),
            "next",
            &b64("ping @ada about the deploy"),
        )
        .await;
    assert_eq!(ack["queued"], true, "{ack}");
    // Fire-and-forget (set_state answers nothing); the REST reads below wait for them.
    a2.send(json!({"type": "set_state", "key": "release", "value": "v2"}))
        .await;
    a2.send(json!({"type": "remember", "content": "the deploy runbook", "tags": ["ops"]}))
        .await;
    a2.send(json!({"type": "create_task", "title": "ship it"}))
        .await;
    // A key minted in mesh one sees the user's rows of both meshes.
    let key = secret(&mint(&mut a1, "me", &["read"], None).await);
    let get = |path: &str| {
        let (st, v) = rest(b.addr, "GET", path, Some(&key), None);
        assert_eq!(st, 200, "{path}: {v}");
        v
    };
    let ws = get("/api/v1/me/workspace");
    assert_eq!(ws["userId"], "u-ada");
    assert_eq!(ws["totals"]["meshes"], 2, "{ws}");
    assert_eq!(ws["totals"]["topics"], 2, "{ws}");
    assert_eq!(ws["totals"]["unreadMentions"], 1, "{ws}");
    let topics = get("/api/v1/me/topics");
    assert_eq!(
        topics["topics"][0]["name"], "beta",
        "most recent activity first: {topics}"
    );
    assert_eq!(topics["topics"][0]["unread"], 1);
    assert_eq!(topics["topics"][1]["lastMessageAt"], Value::Null);
    let n = get("/api/v1/me/notifications");
    assert_eq!(
        n["notifications"][0]["snippet"],
        "ping @ada about the deploy"
    );
    assert_eq!(n["totals"]["unread"], 1);
    let act = get("/api/v1/me/activity");
    assert_eq!(act["activity"][0]["senderName"], "bob");
    let found = get("/api/v1/me/search?q=deploy");
    assert_eq!(found["totals"]["messages"], 1, "{found}");
    let found = get("/api/v1/me/search?q=be");
    assert_eq!(found["topics"][0]["name"], "beta", "{found}");
    let state = eventually("the state entry", async || {
        let v = get("/api/v1/me/state?key=release");
        (v["totals"]["entries"] == 1).then_some(v)
    })
    .await;
    assert_eq!(state["entries"][0]["value"], "v2", "{state}");
    assert!(state["entries"][0]["meshSlug"].is_string());
    eventually("the memory", async || {
        (get("/api/v1/me/memory?q=runbook")["totals"]["entries"] == 1).then_some(())
    })
    .await;
    let tasks = eventually("the task", async || {
        let v = get("/api/v1/me/tasks");
        (v["totals"]["open"] == 1).then_some(v)
    })
    .await;
    assert_eq!(tasks["tasks"][0]["title"], "ship it", "{tasks}");
}

#[tokio::test]
async fn streams_end_at_once_on_every_replica_when_their_key_is_revoked_or_its_issuer_banned() {
    // Neither heartbeats nor polls within the test: the ends come from the bus.
    let c = Cluster::new(&[
        ("REST_STREAM_POLL_MS", "600000"),
        ("REST_STREAM_HEARTBEAT_MS", "600000"),
    ])
    .await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("ends", None);
    let admin = member(&a, &mesh, "admin", json!({"role": "admin"}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), admin.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&a.ws_url(), bob.hello(&mesh, json!({}))).await;
    create_topic(&mut ac, "news").await;
    let admins = mint(&mut ac, "admin-reader", &["read"], None).await;
    let bobs = secret(&mint(&mut bc, "bob-reader", &["read"], None).await);
    let path = "/api/v1/topics/news/stream";
    let mut s1 = Sse::open(b.addr, path, &secret(&admins), None)
        .await
        .unwrap();
    let mut s2 = Sse::open(b.addr, path, &bobs, None).await.unwrap();
    assert_eq!(s1.next().await.unwrap().event, "ready");
    assert_eq!(s2.next().await.unwrap().event, "ready");
    let last_event = async |s: &mut Sse| {
        tokio::time::timeout(WAIT, async {
            let mut last = None;
            while let Some(ev) = s.next().await {
                last = Some(ev);
            }
            last
        })
        .await
        .expect("the stream ended")
        .expect("an event before the end")
    };
    let r = ac
        .request(json!({"type": "apikey_revoke", "id": admins["id"]}))
        .await;
    assert_eq!(r["status"], "revoked");
    assert_eq!(last_event(&mut s1).await.event, "error");
    let banned = ac.request(ClientFrame::Ban(ban_request("bob"))).await;
    assert_eq!(banned["banned"], "bob", "{banned}");
    assert_eq!(last_event(&mut s2).await.event, "error");
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("expiry", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let expires = broker::ids::iso8601_ms(now_ms() + 1500);
    let created = c
        .request(
            json!({"type": "apikey_create", "label": "short", "capabilities": ["read"],
                        "expiresAt": expires}),
        )
        .await;
    assert_eq!(created["type"], "apikey_created", "{created}");
    let s = secret(&created);
    assert_eq!(
        rest(b.addr, "GET", "/api/v1/members", Some(&s), None).0,
        200
    );
    eventually("the key expired", async || {
        let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some(&s), None);
        (st == 401).then_some(v)
    })
    .await;
    let (st, v) = rest(b.addr, "GET", "/api/v1/members", Some(&s), None);
    assert_key_error(st, &v, 401, "error.api_key_invalid");
}
