//! The operator API (spec §9), the other HTTP routes (spec §6) and start-up configuration
//! errors, against the real binary.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker::protocol::signing::{self, InviteFields, invite_text};
use common::*;
use serde_json::{Value, json};

/// An HTTP request with the admin token and a raw (possibly invalid) body.
fn raw_api(b: &Broker, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = b.try_http(method, path, Some(TOKEN), Some(body)).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An HTTP request without the admin token; returns status and JSON body.
fn public(b: &Broker, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = b.try_http(method, path, None, Some(body)).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts a 4xx answer with a non-empty `error` string.
fn assert_error(got: (u16, Value), status: u16, what: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: no error string in {}",
        got.1
    );
}

#[tokio::test]
async fn operator_api_refuses_missing_and_wrong_tokens() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("guarded", None);
    let routes = [
        ("POST", "/api/v1/meshes".to_string(), r#"{"name":"x"}"#),
        ("GET", format!("/api/v1/meshes/{mesh}"), ""),
        ("GET", format!("/api/v1/meshes/{mesh}/members"), ""),
        (
            "POST",
            format!("/api/v1/meshes/{mesh}/members"),
            r#"{"pubkey":"00","displayName":"x"}"#,
        ),
        ("POST", format!("/api/v1/meshes/{mesh}/invites"), "{}"),
        ("GET", format!("/api/v1/meshes/{mesh}/audit/verify"), ""),
    ];
    for (method, path, body) in &routes {
        for token in [None, Some("wrong"), Some("")] {
            let (status, text) = b.try_http(method, path, token, Some(body)).unwrap();
            assert_eq!(status, 401, "{method} {path} with {token:?}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v, json!({"error": "unauthorized"}), "{method} {path}");
        }
    }
    // Nothing was created by the refused POST.
    let (status, _) = b.api("GET", &format!("/api/v1/meshes/{mesh}/members"), None);
    assert_eq!(status, 200);
}

#[tokio::test]
async fn operator_api_refuses_bad_bodies_unknown_ids_and_duplicates() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("strict", None);
    let meshes = "/api/v1/meshes";
    let members = format!("/api/v1/meshes/{mesh}/members");

    assert_error(raw_api(&b, "POST", meshes, "{not json"), 400, "bad JSON");
    assert_error(raw_api(&b, "POST", meshes, "{}"), 400, "mesh without name");
    assert_error(
        raw_api(&b, "POST", meshes, r#"{"name": 7}"#),
        400,
        "mesh name not a string",
    );

    let good = Identity::random().pubkey;
    assert_error(raw_api(&b, "POST", &members, "[1,"), 400, "bad JSON");
    assert_error(
        b.api("POST", &members, Some(json!({"pubkey": good}))),
        400,
        "member without displayName",
    );
    assert_error(
        b.api("POST", &members, Some(json!({"displayName": "x"}))),
        400,
        "member without pubkey",
    );
    for bad in [
        "xyz".to_string(),
        good.to_uppercase(),
        good[..63].to_string(),
    ] {
        assert_error(
            b.api(
                "POST",
                &members,
                Some(json!({"pubkey": bad, "displayName": "x"})),
            ),
            400,
            "bad pubkey",
        );
    }
    assert_error(
        b.api(
            "POST",
            &members,
            Some(json!({"pubkey": good, "displayName": "x", "role": "owner"})),
        ),
        400,
        "bad role",
    );

    // Unknown mesh and member: 404.
    let nowhere = "/api/v1/meshes/no-such-mesh";
    assert_error(b.api("GET", nowhere, None), 404, "unknown mesh");
    assert_error(
        b.api("GET", &format!("{nowhere}/members"), None),
        404,
        "members of unknown mesh",
    );
    assert_error(
        b.api(
            "POST",
            &format!("{nowhere}/members"),
            Some(json!({"pubkey": good, "displayName": "x"})),
        ),
        404,
        "member of unknown mesh",
    );
    assert_error(
        b.api("POST", &format!("{nowhere}/invites"), Some(json!({}))),
        404,
        "invite of unknown mesh",
    );
    assert_error(
        b.api("GET", &format!("{nowhere}/audit/verify"), None),
        404,
        "audit of unknown mesh",
    );
    let grants = json!({"grants": {good.clone(): ["dm"]}});
    assert_error(
        b.api(
            "PUT",
            &format!("{members}/no-such-member/grants"),
            Some(grants.clone()),
        ),
        404,
        "grants of unknown member",
    );
    assert_error(
        b.api(
            "PUT",
            &format!("{nowhere}/members/no-such-member/grants"),
            Some(grants),
        ),
        404,
        "grants in unknown mesh",
    );

    // Grants: unknown capability and bad sender key.
    let alice = member(&b, &mesh, "alice", json!({}));
    let alice_grants = format!("{members}/{}/grants", alice.id);
    assert_error(
        b.api(
            "PUT",
            &alice_grants,
            Some(json!({"grants": {good.clone(): ["dm", "teleport"]}})),
        ),
        400,
        "unknown capability",
    );
    assert_error(
        b.api(
            "PUT",
            &alice_grants,
            Some(json!({"grants": {"not-a-key": ["dm"]}})),
        ),
        400,
        "bad grant key",
    );
    assert_error(
        raw_api(&b, "PUT", &alice_grants, "grants please"),
        400,
        "bad JSON",
    );

    // The same pubkey twice: 409; the first enrolment is intact.
    assert_error(
        b.api(
            "POST",
            &members,
            Some(json!({"pubkey": alice.identity.pubkey, "displayName": "alice again"})),
        ),
        409,
        "duplicate pubkey",
    );
    let (status, list) = b.api("GET", &members, None);
    assert_eq!(status, 200);
    assert_eq!(list["members"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn meshes_and_members_round_trip_and_show_who_is_online() {
    let b = Broker::start(&[]);
    let (status, created) = b.api(
        "POST",
        "/api/v1/meshes",
        Some(json!({"name": "Round Trip", "slug": "round-trip"})),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());
    assert_eq!(created["slug"], "round-trip");
    assert_eq!(created["name"], "Round Trip");
    let owner = created["ownerPubkey"].as_str().unwrap();
    assert!(signing::is_key_hex(owner), "{created}");

    let (status, got) = b.api("GET", &format!("/api/v1/meshes/{id}"), None);
    assert_eq!(status, 200, "{got}");
    for field in ["id", "slug", "name", "ownerPubkey"] {
        assert_eq!(got[field], created[field], "{field}");
    }
    assert!(got["createdAt"].as_str().unwrap().ends_with('Z'), "{got}");

    // A slug is made when none is given.
    let (status, other) = b.api("POST", "/api/v1/meshes", Some(json!({"name": "No Slug"})));
    assert_eq!(status, 201, "{other}");
    assert!(!other["slug"].as_str().unwrap().is_empty(), "{other}");
    assert_ne!(other["id"], created["id"]);

    let alice_id = Identity::random();
    let (status, m) = b.api(
        "POST",
        &format!("/api/v1/meshes/{id}/members"),
        Some(json!({"pubkey": alice_id.pubkey, "displayName": "alice", "role": "admin"})),
    );
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["meshId"], id.as_str());
    assert_eq!(m["pubkey"], alice_id.pubkey.as_str());
    assert_eq!(m["displayName"], "alice");
    assert_eq!(m["role"], "admin");
    let alice = Member {
        id: m["id"].as_str().unwrap().to_string(),
        identity: alice_id,
        name: "alice".into(),
    };
    let bob = member(&b, &id, "bob", json!({}));

    let online = |who: &Member| {
        let (status, list) = b.api("GET", &format!("/api/v1/meshes/{id}/members"), None);
        assert_eq!(status, 200, "{list}");
        let row = list["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == who.id.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {list}", who.name))
            .clone();
        assert_eq!(row["pubkey"], who.identity.pubkey.as_str(), "{row}");
        assert_eq!(row["displayName"], who.name.as_str(), "{row}");
        assert!(row["revokedAt"].is_null(), "{row}");
        row["online"].as_bool().unwrap()
    };
    assert!(!online(&alice));
    let (_alice_c, _) = Client::join(&b.ws_url(), alice.hello(&id, json!({}))).await;
    assert!(online(&alice));
    assert!(!online(&bob));
    let (status, list) = b.api("GET", &format!("/api/v1/meshes/{id}/members"), None);
    assert_eq!(status, 200);
    let roles: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.len(), 2, "{list}");
    assert!(
        roles.contains(&"admin") && roles.contains(&"member"),
        "{list}"
    );
}

#[tokio::test]
async fn grants_merge_and_null_removes_an_entry() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("grants", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let path = format!("/api/v1/meshes/{mesh}/members/{}/grants", alice.id);
    let (k1, k2, k3) = (
        Identity::random().pubkey,
        Identity::random().pubkey,
        Identity::random().pubkey,
    );

    let (status, v) = b.api(
        "PUT",
        &path,
        Some(json!({"grants": {k1.clone(): ["dm"], k2.clone(): ["read", "broadcast"]}})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"grants": {k1.clone(): ["dm"], k2.clone(): ["read", "broadcast"]}})
    );

    let (status, v) = b.api(
        "PUT",
        &path,
        Some(json!({"grants": {k1.clone(): null, k3.clone(): []}})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"grants": {k2.clone(): ["read", "broadcast"], k3.clone(): []}})
    );

    // Every capability of the spec is accepted.
    let all = [
        "read",
        "dm",
        "broadcast",
        "state-read",
        "state-write",
        "file-read",
    ];
    let (status, v) = b.api("PUT", &path, Some(json!({"grants": {k1.clone(): all}})));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["grants"][k1.as_str()], json!(all));
    assert_eq!(v["grants"].as_object().unwrap().len(), 3, "{v}");
}

/// Creates an invite; returns its answer.
fn invite(b: &Broker, mesh: &str, body: Value) -> Value {
    let (status, v) = b.api(
        "POST",
        &format!("/api/v1/meshes/{mesh}/invites"),
        Some(body),
    );
    assert_eq!(status, 201, "{v}");
    v
}

fn join_body(inv: &Value, who: &Identity, name: &str) -> Value {
    json!({"invite_token": inv["token"], "invite_payload": inv["payload"], "peer_pubkey": who.pubkey, "display_name": name})
}

fn post_join(b: &Broker, body: &Value) -> (u16, Value) {
    public(b, "POST", "/join", &body.to_string())
}

fn assert_join_refused(got: (u16, Value), what: &str) {
    assert_eq!(got.0, 400, "{what}: {}", got.1);
    assert_eq!(got.1["ok"], false, "{what}: {}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {}",
        got.1
    );
}

#[tokio::test]
async fn invites_are_signed_by_the_mesh_owner_key_and_enrol_on_join() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("Invited", None);
    let (_, info) = b.api("GET", &format!("/api/v1/meshes/{mesh}"), None);
    let owner_pubkey = info["ownerPubkey"].as_str().unwrap().to_string();

    let inv = invite(&b, &mesh, json!({}));
    let token = inv["token"].as_str().unwrap();
    assert!(inv["code"].as_str().is_some_and(|c| !c.is_empty()), "{inv}");
    assert_eq!(inv["link"], format!("ic://join/{token}"));
    let p = &inv["payload"];
    // The token is the base64url of the payload JSON.
    let decoded: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap();
    assert_eq!(&decoded, p);
    assert_eq!(p["v"], 1);
    assert_eq!(p["mesh_id"], mesh.as_str());
    assert_eq!(p["mesh_slug"], info["slug"]);
    assert_eq!(p["owner_pubkey"], owner_pubkey.as_str());
    assert_eq!(p["role"], "member");
    assert!(
        p["broker_url"].as_str().unwrap().starts_with("ws://"),
        "{p}"
    );
    assert!(
        p["expires_at"].as_i64().unwrap() > now_ms() / 1000,
        "expires_at is in unix seconds and in the future: {p}"
    );
    let fields = InviteFields {
        v: p["v"].as_i64().unwrap(),
        mesh_id: p["mesh_id"].as_str().unwrap(),
        mesh_slug: p["mesh_slug"].as_str().unwrap(),
        broker_url: p["broker_url"].as_str().unwrap(),
        expires_at: p["expires_at"].as_i64().unwrap(),
        mesh_root_key: p["mesh_root_key"].as_str().unwrap(),
        role: p["role"].as_str().unwrap(),
        owner_pubkey: p["owner_pubkey"].as_str().unwrap(),
    };
    assert!(
        signing::verify(
            &owner_pubkey,
            &invite_text(&fields),
            p["signature"].as_str().unwrap()
        )
        .is_ok(),
        "invite signature does not verify: {p}"
    );

    // Join, then connect with the enrolled identity.
    let dana = Identity::random();
    let (status, joined) = post_join(&b, &join_body(&inv, &dana, "dana"));
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["ok"], true, "{joined}");
    assert!(joined.get("alreadyMember").is_none(), "{joined}");
    let member_id = joined["memberId"].as_str().unwrap().to_string();
    let (_c, ack) = Client::join(&b.ws_url(), hello(&mesh, &member_id, &dana, json!({}))).await;
    assert_eq!(ack["memberDisplayName"], "dana", "{ack}");

    // The same key again: already a member, same id.
    let (status, again) = post_join(&b, &join_body(&inv, &dana, "dana"));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["alreadyMember"], true, "{again}");
    assert_eq!(again["memberId"], member_id.as_str(), "{again}");
}

#[tokio::test]
async fn an_admin_invite_enrols_an_admin() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("admins", None);
    let inv = invite(&b, &mesh, json!({"role": "admin", "expiresInSeconds": 600}));
    assert_eq!(inv["payload"]["role"], "admin");
    let fay = Identity::random();
    let (status, joined) = post_join(&b, &join_body(&inv, &fay, "fay"));
    assert_eq!(status, 200, "{joined}");
    let (_, list) = b.api("GET", &format!("/api/v1/meshes/{mesh}/members"), None);
    let row = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == joined["memberId"])
        .unwrap()
        .clone();
    assert_eq!(row["role"], "admin", "{list}");
    assert_eq!(row["displayName"], "fay", "{list}");
    assert_error(
        b.api(
            "POST",
            &format!("/api/v1/meshes/{mesh}/invites"),
            Some(json!({"role": "superuser"})),
        ),
        400,
        "invite with a bad role",
    );
}

#[tokio::test]
async fn join_refuses_exhausted_tampered_unknown_and_malformed_invites() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("picky", None);

    let once = invite(&b, &mesh, json!({"maxUses": 1}));
    let (status, v) = post_join(&b, &join_body(&once, &Identity::random(), "first"));
    assert_eq!(status, 200, "{v}");
    assert_join_refused(
        post_join(&b, &join_body(&once, &Identity::random(), "second")),
        "maxUses exhausted",
    );

    let inv = invite(&b, &mesh, json!({}));
    let mut body = join_body(&inv, &Identity::random(), "mallory");
    body["invite_payload"]["role"] = json!("admin");
    assert_join_refused(post_join(&b, &body), "role changed in the payload");

    let mut body = join_body(&inv, &Identity::random(), "mallory");
    let sig = body["invite_payload"]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    body["invite_payload"]["signature"] = json!(format!("{flipped}{}", &sig[1..]));
    assert_join_refused(post_join(&b, &body), "signature changed");

    let mut body = join_body(&inv, &Identity::random(), "mallory");
    body["invite_payload"]["mesh_slug"] = json!("other-slug");
    assert_join_refused(post_join(&b, &body), "signed field changed");

    let mut body = join_body(&inv, &Identity::random(), "mallory");
    body["invite_token"] = json!("no-such-token");
    assert_join_refused(post_join(&b, &body), "unknown token");

    assert_join_refused(public(&b, "POST", "/join", "{oops"), "bad JSON");
    assert_join_refused(public(&b, "POST", "/join", "{}"), "empty body");
    let mut body = join_body(&inv, &Identity::random(), "mallory");
    body["peer_pubkey"] = json!("ABC");
    assert_join_refused(post_join(&b, &body), "bad peer_pubkey");
    let mut body = join_body(&inv, &Identity::random(), "mallory");
    body.as_object_mut().unwrap().remove("display_name");
    assert_join_refused(post_join(&b, &body), "no display_name");

    // None of the refused joins enrolled anyone.
    let (_, list) = b.api("GET", &format!("/api/v1/meshes/{mesh}/members"), None);
    assert_eq!(list["members"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn audit_chain_verifies_after_joins_and_a_message() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("audited", None);
    let path = format!("/api/v1/meshes/{mesh}/audit/verify");
    let (status, v) = b.api("GET", &path, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["valid"], true, "{v}");

    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let ack = a.send_msg("*", "now", "aGVsbG8=").await;
    assert_eq!(ack["queued"], true, "{ack}");
    bc.expect_where("push", |v| v["ciphertext"] == "aGVsbG8=")
        .await;

    // Two joins and one message_sent, appended off the request path.
    let v = eventually("three audit entries", async || {
        let (status, v) = b.api("GET", &path, None);
        assert_eq!(status, 200, "{v}");
        (v["entries"].as_u64().unwrap() >= 3).then_some(v)
    })
    .await;
    assert_eq!(v["valid"], true, "{v}");
    assert!(v.get("brokenAt").is_none(), "{v}");
}

/// The status `observer` sees for the peer named `name`.
async fn status_seen(observer: &mut Client, name: &str) -> Option<String> {
    let peers = observer.request(ClientFrame::ListPeers).await;
    peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == name)
        .map(|p| p["status"].as_str().unwrap().to_string())
}

fn hook(b: &Broker, body: Value) -> (u16, Value) {
    public(b, "POST", "/hook/set-status", &body.to_string())
}

/// A second member whose process does not match the hooks of these tests.
async fn observer(b: &Broker, mesh: &str) -> Client {
    let watcher = member(b, mesh, "watcher", json!({}));
    Client::join(
        &b.ws_url(),
        watcher.hello(mesh, json!({"pid": 1, "cwd": "/elsewhere"})),
    )
    .await
    .0
}

#[tokio::test]
async fn hook_sets_the_status_of_the_live_presence_with_that_pid_and_cwd() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("hooks", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    // `hello()` connects with pid 4242 and cwd "/work".
    let (_alice_c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let mut watcher = observer(&b, &mesh).await;
    assert_eq!(status_seen(&mut watcher, "alice").await.unwrap(), "idle");

    let (status, v) = hook(
        &b,
        json!({"cwd": "/work", "pid": 4242, "status": "working", "session_id": "abc"}),
    );
    assert_eq!(status, 200, "{v}");
    // The reply never names the presence (an unauthenticated caller must not learn ids).
    assert_eq!(v, json!({"ok": true}));
    eventually("alice shown working", async || {
        (status_seen(&mut watcher, "alice").await? == "working").then_some(())
    })
    .await;
    // The watcher's own status was not touched.
    assert_eq!(status_seen(&mut watcher, "watcher").await.unwrap(), "idle");
}

#[tokio::test]
async fn a_hook_never_clears_dnd() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("dnd", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut alice_c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    alice_c
        .send(ClientFrame::SetStatus {
            status: Status::Dnd,
        })
        .await;
    assert_eq!(status_seen(&mut alice_c, "alice").await.unwrap(), "dnd");

    for status in ["idle", "working"] {
        let (code, v) = hook(&b, json!({"cwd": "/work", "pid": 4242, "status": status}));
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["ok"], true, "{v}");
        assert!(v.get("presence_id").is_none(), "{v}");
        // The hook reached alice's session before this request (its control comes first).
        assert_eq!(
            status_seen(&mut alice_c, "alice").await.unwrap(),
            "dnd",
            "hook {status} cleared dnd"
        );
    }
    // Once the client itself leaves dnd, hooks apply again.
    alice_c
        .send(ClientFrame::SetStatus {
            status: Status::Idle,
        })
        .await;
    // The hook must not race the client's own change (frames are handled in order, so a
    // list_peers answered idle comes after it).
    assert_eq!(status_seen(&mut alice_c, "alice").await.unwrap(), "idle");
    let (code, _) = hook(
        &b,
        json!({"cwd": "/work", "pid": 4242, "status": "working"}),
    );
    assert_eq!(code, 200);
    eventually("alice working after dnd ended", async || {
        (status_seen(&mut alice_c, "alice").await? == "working").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_hook_for_an_unknown_process_waits_for_it_to_connect() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("pending", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (code, v) = hook(
        &b,
        json!({"cwd": "/work/later", "pid": 31337, "status": "working"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"ok": true, "pending": true}));

    let mut watcher = observer(&b, &mesh).await;
    let (mut alice_c, _) = Client::join(
        &b.ws_url(),
        alice.hello(&mesh, json!({"pid": 31337, "cwd": "/work/later"})),
    )
    .await;
    assert_eq!(status_seen(&mut alice_c, "alice").await.unwrap(), "working");
    assert_eq!(status_seen(&mut watcher, "alice").await.unwrap(), "working");
}

#[tokio::test]
async fn hook_requests_are_rate_limited_size_limited_and_validated() {
    let b = Broker::start(&[("HOOK_RATE_PER_MIN", "3"), ("MAX_MESSAGE_BYTES", "1024")]);
    let body = json!({"cwd": "/rate", "pid": 7, "status": "idle"});
    for i in 0..3 {
        let (code, v) = hook(&b, body.clone());
        assert_eq!(code, 200, "request {i}: {v}");
    }
    let (code, v) = hook(&b, body.clone());
    assert_eq!(code, 429, "{v}");
    // The limit is per pid:cwd.
    let (code, v) = hook(&b, json!({"cwd": "/rate", "pid": 8, "status": "idle"}));
    assert_eq!(code, 200, "{v}");

    let big = json!({"cwd": "x".repeat(2000), "pid": 9, "status": "idle"});
    let (code, _) = hook(&b, big);
    assert_eq!(code, 413);

    for bad in [
        json!({"cwd": "/v", "pid": 10, "status": "sleeping"}),
        json!({"pid": 10, "status": "idle"}),
        json!({"cwd": "/v", "pid": 10}),
    ] {
        let (code, v) = hook(&b, bad.clone());
        assert_eq!(code, 400, "{bad}: {v}");
    }
    let (code, v) = public(&b, "POST", "/hook/set-status", "{status");
    assert_eq!(code, 400, "{v}");
}

/// Runs the binary with exactly `env`; returns exit code and stderr (killed after the wait).
fn run_with_env(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_broker"));
    cmd.env_clear()
        .env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_ADMIN_TOKEN", TOKEN);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("broker with {env:?} did not exit");
        }
    };
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn configuration_errors_exit_64_with_one_line_naming_the_variable() {
    for (env, name) in [
        (&[("BROKER_PORT", "nope")][..], "BROKER_PORT"),
        (
            &[("BROKER_PORT", "0"), ("BROKER_FROB", "1")][..],
            "BROKER_FROB",
        ),
    ] {
        let (code, stdout, stderr) = run_with_env(env);
        assert_eq!(code, Some(64), "{env:?}: stderr {stderr:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{env:?}: stderr {stderr:?}");
        assert!(lines[0].contains(name), "{env:?}: stderr {stderr:?}");
        assert!(
            !stdout.contains("listening on"),
            "{env:?}: it must not listen: {stdout:?}"
        );
    }
}

/// The value of the sample `series` (name with labels) in a Prometheus text, 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

const SERIES: &[&str] = &[
    "broker_connections_total",
    "broker_connections_active",
    r#"broker_messages_routed_total{priority="now"}"#,
    r#"broker_messages_routed_total{priority="next"}"#,
    r#"broker_messages_routed_total{priority="low"}"#,
    r#"broker_connections_rejected_total{reason="bad_signature"}"#,
    "broker_pushes_total",
];

fn snapshot(b: &Broker) -> Vec<f64> {
    let text = b.metrics();
    SERIES.iter().map(|s| sample(&text, s)).collect()
}

#[tokio::test]
async fn metrics_count_connections_routing_rejections_and_pushes() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("metered", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let before = snapshot(&b);

    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    // A direct message, pushed and acknowledged.
    let ack = a.send_msg(&bob.identity.pubkey, "now", "ZGlyZWN0").await;
    assert_eq!(ack["queued"], true, "{ack}");
    let push = bc
        .expect_where("push", |v| v["ciphertext"] == "ZGlyZWN0")
        .await;
    bc.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;
    // A broadcast.
    let ack = a.send_msg("*", "next", "YnJvYWRjYXN0").await;
    assert_eq!(ack["queued"], true, "{ack}");
    bc.expect_where("push", |v| v["ciphertext"] == "YnJvYWRjYXN0")
        .await;
    // A refused hello.
    let mut bad = alice.hello(&mesh, json!({}));
    bad["signature"] = json!(Identity::random().sign("something else"));
    let mut refused = Client::connect(&b.ws_url()).await;
    refused.send(bad).await;
    assert_eq!(refused.expect("error").await["code"], "bad_signature");
    refused.expect_close().await;

    // Counters only grow; the active gauge drops back once the refused socket is gone.
    let want = [3.0, 2.0, 1.0, 1.0, 0.0, 1.0, 2.0];
    let delta = || -> Vec<f64> {
        let now = snapshot(&b);
        now.iter().zip(&before).map(|(n, b)| n - b).collect()
    };
    eventually("metrics to reach their expected values", async || {
        let d = delta();
        (d.iter().zip(&want).all(|(d, w)| d >= w) && d[1] == want[1]).then_some(())
    })
    .await;
    assert_eq!(
        delta(),
        want,
        "deltas of {SERIES:?}; metrics:\n{}",
        b.metrics()
    );
}

#[tokio::test]
async fn health_reports_its_fields_and_readiness_is_200() {
    let b = Broker::start(&[]);
    let (status, text) = b.try_http("GET", "/health", None, None).unwrap();
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    for field in ["db", "redis", "version", "gitSha"] {
        assert!(
            v[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}: {v}"
        );
    }
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert!(v["uptime"].is_u64(), "{v}");

    let (status, text) = b.try_http("GET", "/health/ready", None, None).unwrap();
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "ready", "{v}");
}

/// Every mesh id of `GET /api/v1/meshes`, page by page, with the pages' sizes.
fn all_pages(b: &Broker, limit: usize) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/meshes?limit={limit}&cursor={c}"),
            None => format!("/api/v1/meshes?limit={limit}"),
        };
        let (status, page) = b.api("GET", &path, None);
        assert_eq!(status, 200, "{page}");
        let meshes = page["meshes"].as_array().unwrap();
        sizes.push(meshes.len());
        for m in meshes {
            assert!(m["createdAt"].as_str().unwrap().ends_with('Z'), "{m}");
            ids.push(m["id"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert!(page["nextCursor"].is_null(), "{page}");
                return (ids, sizes);
            }
        }
        assert!(sizes.len() < 100, "the pages never end");
    }
}

#[tokio::test]
async fn meshes_are_listed_in_pages_in_a_stable_order() {
    let b = Broker::start(&[]);
    let mut made: Vec<String> = (0..5)
        .map(|i| b.create_mesh(&format!("paged {i}"), None))
        .collect();
    made.sort();

    let (ids, sizes) = all_pages(&b, 2);
    assert_eq!(ids, made, "every mesh once, in id order");
    assert_eq!(sizes, vec![2, 2, 1]);
    let (ids, sizes) = all_pages(&b, 5);
    assert_eq!((ids, sizes), (made.clone(), vec![5]), "no empty last page");
    // The default page holds them all.
    let (status, page) = b.api("GET", "/api/v1/meshes", None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["meshes"].as_array().unwrap().len(), 5);
    assert!(page["nextCursor"].is_null());

    // A mesh created between two pages shows up in a later page if it sorts after the
    // cursor; nothing is listed twice.
    let (_, first) = b.api("GET", "/api/v1/meshes?limit=2", None);
    let cursor = first["nextCursor"].as_str().unwrap().to_string();
    made.push(b.create_mesh("late", None));
    made.sort();
    let (status, rest) = b.api(
        "GET",
        &format!("/api/v1/meshes?limit=1000&cursor={cursor}"),
        None,
    );
    assert_eq!(status, 200, "{rest}");
    let mut seen: Vec<String> = first["meshes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["meshes"].as_array().unwrap())
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let n = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), n, "listed twice: {seen:?}");

    for (query, what) in [
        ("limit=0", "limit 0"),
        ("limit=1001", "limit over 1000"),
        ("limit=ten", "limit not a number"),
        ("cursor=%%%", "cursor not from this API"),
        ("offset=3", "unknown parameter"),
    ] {
        assert_error(
            b.api("GET", &format!("/api/v1/meshes?{query}"), None),
            400,
            what,
        );
    }
    let (status, _) = b.try_http("GET", "/api/v1/meshes", None, None).unwrap();
    assert_eq!(status, 401);
}

/// `(valid, entries)` of the mesh's audit chain.
fn audit_verdict(b: &Broker, mesh: &str) -> (bool, u64) {
    let (status, v) = b.api("GET", &format!("/api/v1/meshes/{mesh}/audit/verify"), None);
    assert_eq!(status, 200, "{v}");
    (
        v["valid"].as_bool().unwrap(),
        v["entries"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn deleting_a_member_on_one_replica_closes_its_sockets_on_the_other() {
    use common::cluster::Cluster;
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("member delete", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    // bob grants carol's key a capability: the entry goes with carol.
    let (status, v) = a.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", bob.id),
        Some(json!({"grants": {carol.identity.pubkey.clone(): ["dm"]}})),
    );
    assert_eq!(status, 200, "{v}");

    // alice (two sockets) and bob on B; carol on A sends alice nothing yet.
    let (mut alice1, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut alice2, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bob_c, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (carol_c, _) = Client::join(&a.ws_url(), carol.hello(&mesh, json!({}))).await;
    // A message waits for carol while she is offline.
    carol_c.close().await;
    eventually("carol's presence to leave", async || {
        let m = a.metrics();
        (metric(&m, "broker_connections_active") == 0.0).then_some(())
    })
    .await;
    let ack = bob_c.send_msg(&carol.identity.pubkey, "next", "Zm9y").await;
    assert_eq!(ack["queued"], true, "{ack}");
    eventually("the queued message to count", async || {
        (metric(&a.metrics(), "broker_queue_depth") == 1.0).then_some(())
    })
    .await;
    let entries_before = audit_verdict(&a, &mesh).1;

    // alice is deleted through replica A: both her sockets on B close 4003, bob sees her go.
    let (status, v) = a.api(
        "DELETE",
        &format!("/api/v1/meshes/{mesh}/members/{}", alice.id),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"id": alice.id, "deleted": true, "closedConnections": 2})
    );
    assert_eq!(alice1.expect_close().await, close_of(codes::REMOVED));
    assert_eq!(alice2.expect_close().await, close_of(codes::REMOVED));
    let left = bob_c.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "alice", "{left}");
    // Replica B's cached member rows were dropped: a send to her key is not queued.
    let ack = bob_c.send_msg(&alice.identity.pubkey, "now", "Zm9y").await;
    assert_ne!(ack["queued"], true, "{ack}");
    // She can no longer connect, on either replica.
    for r in [&a, &b] {
        let (code, close) = refused(&r.ws_url(), alice.hello(&mesh, json!({}))).await;
        assert!(!code.is_empty());
        assert_eq!(close.0, 1008, "{code}");
    }
    let (status, list) = b.api("GET", &format!("/api/v1/meshes/{mesh}/members"), None);
    assert_eq!(status, 200);
    let names: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bob", "carol"], "{list}");
    assert_error(
        a.api(
            "DELETE",
            &format!("/api/v1/meshes/{mesh}/members/{}", alice.id),
            None,
        ),
        404,
        "a second delete",
    );

    // carol: deleted offline, with the message queued for her and bob's grant to her key.
    let (status, v) = b.api(
        "DELETE",
        &format!("/api/v1/meshes/{mesh}/members/{}", carol.id),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["closedConnections"], 0);
    eventually("the queued message to go", async || {
        (metric(&b.metrics(), "broker_queue_depth") == 0.0).then_some(())
    })
    .await;
    let (status, v) = a.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", bob.id),
        Some(json!({"grants": {}})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["grants"], json!({}), "carol's key left bob's grants");

    // The chain keeps its entries, gained the deletions (and peer_left), and verifies.
    let (valid, entries) = eventually("the deletions in the audit chain", async || {
        let (valid, entries) = audit_verdict(&a, &mesh);
        (entries >= entries_before + 3).then_some((valid, entries))
    })
    .await;
    assert!(
        valid,
        "the chain verifies after deletions ({entries} entries)"
    );
}

#[tokio::test]
async fn deleting_a_mesh_on_one_replica_closes_every_socket_and_removes_what_it_owned() {
    use common::cluster::Cluster;
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("mesh delete", None);
    let keep = a.create_mesh("kept", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let other = member(&a, &keep, "other", json!({}));
    let (mut alice_c, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bob_c, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut other_c, _) = Client::join(&b.ws_url(), other.hello(&keep, json!({}))).await;
    let ack = alice_c
        .send_msg(&carol.identity.pubkey, "next", "Zm9y")
        .await;
    assert_eq!(ack["queued"], true, "{ack}");
    let (status, _) = a.api(
        "POST",
        &format!("/api/v1/meshes/{mesh}/invites"),
        Some(json!({})),
    );
    assert_eq!(status, 201);
    eventually("the queued message to count", async || {
        (metric(&b.metrics(), "broker_queue_depth") == 1.0).then_some(())
    })
    .await;

    let (status, v) = a.api("DELETE", &format!("/api/v1/meshes/{mesh}"), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"id": mesh, "deleted": true, "closedConnections": 2})
    );
    assert_eq!(alice_c.expect_close().await, close_of(codes::REMOVED));
    assert_eq!(
        bob_c.expect_close().await,
        close_of(codes::REMOVED),
        "on the other replica"
    );

    // Gone on both replicas: the mesh, its members, its audit chain, its queue.
    for r in [&a, &b] {
        for path in [
            format!("/api/v1/meshes/{mesh}"),
            format!("/api/v1/meshes/{mesh}/members"),
            format!("/api/v1/meshes/{mesh}/audit/verify"),
        ] {
            assert_error(r.api("GET", &path, None), 404, &path);
        }
        let (code, close) = refused(&r.ws_url(), bob.hello(&mesh, json!({}))).await;
        assert!(!code.is_empty());
        assert_eq!(close.0, 1008, "{code}");
    }
    eventually("the queued message to go", async || {
        (metric(&a.metrics(), "broker_queue_depth") == 0.0).then_some(())
    })
    .await;
    let (ids, _) = all_pages(&a, 10);
    assert_eq!(ids, vec![keep.clone()]);
    assert_error(
        b.api("DELETE", &format!("/api/v1/meshes/{mesh}"), None),
        404,
        "a second delete",
    );
    // The other mesh is untouched, its socket open.
    let peers = other_c.request(ClientFrame::ListPeers).await;
    assert_eq!(peers["type"], "peers_list", "{peers}");
    assert!(audit_verdict(&a, &keep).0, "the other chain verifies");
}

#[tokio::test]
async fn deleting_in_dev_mode_closes_the_sockets_and_forgets_the_rows() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("dev delete", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut alice_c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bob_c, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let member_path = format!("/api/v1/meshes/{mesh}/members/{}", alice.id);
    let (status, v) = b.api("DELETE", &member_path, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(alice_c.expect_close().await, close_of(codes::REMOVED));
    let left = bob_c.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "alice", "{left}");
    assert!(audit_verdict(&b, &mesh).0);

    let (status, v) = b.api("DELETE", &format!("/api/v1/meshes/{mesh}"), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["closedConnections"], 1);
    assert_eq!(bob_c.expect_close().await, close_of(codes::REMOVED));
    assert_error(
        b.api("GET", &format!("/api/v1/meshes/{mesh}"), None),
        404,
        "gone",
    );
    let (status, page) = b.api("GET", "/api/v1/meshes", None);
    assert_eq!(status, 200);
    assert_eq!(page["meshes"], json!([]));
    assert_error(b.api("DELETE", &member_path, None), 404, "mesh gone");
}
