//! Delivery status (extensions §7), audit queries (§8), mesh info (§18), status hooks across
//! replicas (protocol §6) and the answers to the families this broker does not offer (§0.3,
//! §19): each cluster guarantee with two replicas, each family in dev mode, and the exact
//! frames the CLI sends.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use broker::protocol::ext::audit_query::{AuditResult, AuditVerifyResult};
use broker::protocol::ext::info::MeshInfoResult;
use broker::protocol::ext::msg_status::MessageStatusResult;
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

fn status_request(id: &str) -> Value {
    json!({"type": "message_status", "messageId": id})
}

/// The `error` a request got, as `(code, message)`.
fn error_of(v: &Value) -> (String, String) {
    assert_eq!(v["type"], "error", "{v}");
    (
        v["code"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap().to_string(),
    )
}

fn hook_body(pid: i64, cwd: &str, status: &str) -> String {
    json!({"pid": pid, "cwd": cwd, "status": status, "session_id": "s"}).to_string()
}

fn post_hook(b: &Broker, body: &str) -> (u16, Value) {
    let (status, text) = b
        .try_http("POST", "/hook/set-status", None, Some(body))
        .unwrap();
    (status, serde_json::from_str(&text).unwrap())
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
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Delivery status (§7)
// ---------------------------------------------------------------------------------------

/// A message sent through replica A is looked up on replica B and the other way round:
/// direct (held, then delivered after the `client_ack` on the other replica), broadcast and
/// group; a prefix works; Ours: a member sees only messages it sent or that were addressed
/// to it, to everyone or to its groups; the errors are the spec's.
#[tokio::test]
async fn message_status_answers_for_a_message_sent_through_either_replica() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("status", Some("owner"));
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut ca, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut cb, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut cc, _) = Client::join(
        &b.ws_url(),
        carol.hello(&mesh, json!({"groups": [{"name": "ops"}]})),
    )
    .await;

    // Direct, through A; looked up on B by its recipient before and after its client_ack.
    let ack = ca.send_msg(&bob.identity.pubkey, "now", "for bob").await;
    let id = ack["messageId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "message ids are 32 base62 chars: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    let push = cb.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], id.as_str());
    let held: MessageStatusResult = parse(&cb.request(status_request(&id)).await);
    assert_eq!(held.target_spec, bob.identity.pubkey);
    assert!(!held.delivered);
    assert_eq!(held.delivered_at, None);
    assert_eq!(held.recipients.len(), 1);
    assert_eq!(
        (
            held.recipients[0].name.as_str(),
            held.recipients[0].pubkey.as_str(),
            held.recipients[0].status.as_str()
        ),
        ("bob", bob.identity.pubkey.as_str(), "held")
    );
    cb.send(client_ack(&id)).await;
    let done: MessageStatusResult = eventually("the ack is recorded", async || {
        let r: MessageStatusResult = parse(&ca.request(status_request(&id)).await);
        r.delivered.then_some(r)
    })
    .await;
    assert!(done.delivered_at.as_deref().unwrap().ends_with('Z'));
    assert_eq!(done.recipients[0].status, "delivered");
    assert_eq!(done.message_id, id);

    // Broadcast through B, looked up on A by a prefix: every live presence is a recipient.
    let ack = cc.send_msg("*", "now", "hello all").await;
    let bid = ack["messageId"].as_str().unwrap().to_string();
    let prefix = &bid[..12];
    let r: MessageStatusResult = eventually("the fan-out is recorded", async || {
        let v = ca.request(status_request(prefix)).await;
        (v["type"] == "message_status_result").then(|| parse(&v))
    })
    .await;
    assert_eq!(r.message_id, prefix, "the id as sent");
    assert_eq!(r.target_spec, "*");
    assert!(r.delivered);
    let mut names: Vec<&str> = r.recipients.iter().map(|x| x.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "bob", "carol"], "sender included");

    // A group message through A: carol (in @ops, on B) sees it, bob (not in it) does not.
    let ack = ca.send_msg("@ops", "now", "ops only").await;
    let gid = ack["messageId"].as_str().unwrap().to_string();
    let r: MessageStatusResult = eventually("the group fan-out is recorded", async || {
        let v = cc.request(status_request(&gid)).await;
        (v["type"] == "message_status_result").then(|| parse(&v))
    })
    .await;
    assert_eq!(r.target_spec, "@ops");
    assert_eq!(r.recipients.len(), 1);
    assert_eq!(r.recipients[0].name, "carol");
    assert_eq!(
        error_of(&cb.request(status_request(&gid)).await),
        ("not_found".into(), "message not found".into()),
        "Ours: not addressed to bob"
    );
    // Bob may not see alice's direct message to carol either; carol and alice may.
    let ack = ca
        .send_msg(&carol.identity.pubkey, "now", "for carol")
        .await;
    let did = ack["messageId"].as_str().unwrap().to_string();
    assert_eq!(
        error_of(&cb.request(status_request(&did)).await).0,
        "not_found"
    );
    let r: MessageStatusResult = parse(&cc.request(status_request(&did)).await);
    assert_eq!(r.target_spec, carol.identity.pubkey);
    let r: MessageStatusResult = parse(&ca.request(status_request(&did)).await);
    assert_eq!(r.recipients[0].name, "carol");

    // A direct message to a member that is not connected: one `unknown` recipient.
    let dave = member(&a, &mesh, "dave", json!({}));
    let ack = ca.send_msg(&dave.identity.pubkey, "now", "later").await;
    let lid = ack["messageId"].as_str().unwrap().to_string();
    let r: MessageStatusResult = parse(&ca.request(status_request(&lid)).await);
    assert_eq!(
        (
            r.recipients[0].name.as_str(),
            r.recipients[0].pubkey.as_str(),
            r.recipients[0].status.as_str()
        ),
        ("unknown", &dave.identity.pubkey[..16], "disconnected")
    );

    // Errors.
    assert_eq!(
        error_of(&ca.request(status_request("abc")).await),
        (
            "invalid_argument".into(),
            "messageId must be 8-32 base62 chars (got 3)".into()
        )
    );
    assert_eq!(
        error_of(&ca.request(status_request("abcd-efgh")).await).0,
        "invalid_argument"
    );
    assert_eq!(
        error_of(&ca.request(status_request("Zz9Zz9Zz9Zz9")).await),
        ("not_found".into(), "message not found".into())
    );
    // Two records with one prefix (written behind the broker's back, as random ids almost
    // never share 8 characters): ambiguous on both replicas; a longer prefix resolves.
    let db = pg::connect(&c.db).await;
    for id in [
        "AmbigPfxA0000000000000000000000A",
        "AmbigPfxB0000000000000000000000B",
    ] {
        db.execute(
            "INSERT INTO message_status (mesh_id, id, sender_member_id, target_spec, created_at, delivered_at) \
             VALUES ($1, $2, $3, '*', $4, $4)",
            &[&mesh, &id, &alice.id, &now_ms()],
        )
        .await
        .unwrap();
    }
    for client in [&mut ca, &mut cb] {
        assert_eq!(
            error_of(&client.request(status_request("AmbigPfx")).await),
            (
                "ambiguous_prefix".into(),
                "prefix matched 2 messages — use a longer id".into()
            )
        );
        let one: MessageStatusResult = parse(&client.request(status_request("AmbigPfxB")).await);
        assert_eq!(one.target_spec, "*");
    }
    // Another mesh's message is not found.
    let other = a.create_mesh("other", None);
    let erin = member(&a, &other, "erin", json!({}));
    let (mut ce, _) = Client::join(&b.ws_url(), erin.hello(&other, json!({}))).await;
    assert_eq!(
        error_of(&ce.request(status_request(&bid)).await).0,
        "not_found"
    );

    // The replica that carried the direct messages dies (SIGKILL): B still answers.
    drop(a);
    let r: MessageStatusResult = parse(&cc.request(status_request(&did)).await);
    assert_eq!(r.target_spec, carol.identity.pubkey);
    let r: MessageStatusResult = parse(&cb.request(status_request(&id)).await);
    assert!(r.delivered);
    assert_eq!(r.recipients[0].name, "bob");
}

// ---------------------------------------------------------------------------------------
// Audit queries (§8)
// ---------------------------------------------------------------------------------------

/// Owners and admins read the same chain from either replica (page, filter, total,
/// verification); others are `forbidden`; a tampered entry is reported by both replicas.
#[tokio::test]
async fn audit_query_and_verify_see_the_same_chain_from_both_replicas() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("audit", Some("owner-user"));
    let owner = member(&a, &mesh, "owner", json!({"userId": "owner-user"}));
    let admin = member(&a, &mesh, "admin", json!({"role": "admin"}));
    let plain = member(&a, &mesh, "plain", json!({}));
    let (mut co, _) = Client::join(&a.ws_url(), owner.hello(&mesh, json!({}))).await;
    let (mut cd, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;
    let (mut cp, _) = Client::join(&b.ws_url(), plain.hello(&mesh, json!({}))).await;
    co.send_msg("*", "now", "one").await;
    cd.send_msg("*", "now", "two").await;

    // Both replicas answer from the store: wait for the appends, then compare.
    let query = json!({"type": "audit_query", "limit": 1000});
    let from_a: AuditResult = eventually("the audit appends", async || {
        let r: AuditResult = parse(&co.request(query.clone()).await);
        (r.entries
            .iter()
            .filter(|e| e.event_type == "message_sent")
            .count()
            == 2)
            .then_some(r)
    })
    .await;
    let from_b: AuditResult = parse(&cd.request(query.clone()).await);
    let hashes = |r: &AuditResult| r.entries.iter().map(|e| e.hash.clone()).collect::<Vec<_>>();
    assert_eq!(hashes(&from_a), hashes(&from_b), "the same chain");
    assert_eq!(from_a.total, from_b.total);
    assert_eq!(from_a.total as usize, from_a.entries.len());
    assert!(
        from_a.entries.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let sent: Vec<_> = from_a
        .entries
        .iter()
        .filter(|e| e.event_type == "message_sent")
        .collect();
    // The two sends went through different replicas: their appends may land in either order.
    let mut actors: Vec<&str> = sent.iter().map(|e| e.actor.as_str()).collect();
    actors.sort();
    assert_eq!(actors, ["admin", "owner"], "the display names");
    assert!(sent.iter().all(|e| e.payload["targetSpec"] == "*"));

    let page: AuditResult = parse(
        &cd.request(
            json!({"type": "audit_query", "limit": 1, "offset": 1, "eventType": "message_sent"}),
        )
        .await,
    );
    assert_eq!(page.total, 2);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].hash, sent[1].hash);

    for client in [&mut co, &mut cd] {
        let v: AuditVerifyResult = parse(&client.request(json!({"type": "audit_verify"})).await);
        assert!(v.valid, "{v:?}");
        assert_eq!(v.entries as i64, from_a.total);
        assert_eq!(v.broken_at, None);
    }
    for frame in [
        json!({"type": "audit_query"}),
        json!({"type": "audit_verify"}),
    ] {
        assert_eq!(
            error_of(&cp.request(frame).await),
            (
                "forbidden".into(),
                "only owner or admin can read the audit log".into()
            )
        );
    }

    // Tampering is seen by both replicas, at the same entry.
    let db = pg::connect(&c.db).await;
    let seq = sent[1].id;
    db.execute(
        "UPDATE audit_log SET payload = '{\"targetSpec\":\"@forged\"}' WHERE mesh_id = $1 AND seq = $2",
        &[&mesh, &seq],
    )
    .await
    .unwrap();
    for client in [&mut co, &mut cd] {
        let v: AuditVerifyResult = parse(&client.request(json!({"type": "audit_verify"})).await);
        assert!(!v.valid);
        assert_eq!(v.broken_at, Some(seq));
    }
}

// ---------------------------------------------------------------------------------------
// Mesh info (§18)
// ---------------------------------------------------------------------------------------

/// `claudemesh info` sends `mesh_info`, `list_peers` and `list_state` at once: each gets its
/// typed reply; the overview counts live presences on both replicas.
#[tokio::test]
async fn claudemesh_info_gets_its_three_replies_across_replicas() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("info", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ca, _) = Client::join(
        &a.ws_url(),
        alice.hello(&mesh, json!({"groups": [{"name": "dev", "role": "lead"}]})),
    )
    .await;
    let (mut cb, _) = Client::join(
        &b.ws_url(),
        bob.hello(&mesh, json!({"groups": [{"name": "ops"}]})),
    )
    .await;
    // What bob writes through replica b is counted by replica a.
    cb.send(json!({"type": "remember", "content": "the build cache lives on disk", "_reqId": "r"}))
        .await;
    cb.expect("memory_stored").await;
    cb.send(json!({"type": "create_task", "title": "ship it", "_reqId": "t"}))
        .await;
    cb.expect("task_created").await;
    cb.send(json!({"type": "set_state", "key": "phase", "value": "review"}))
        .await;
    ca.expect("state_change").await;
    for (t, id) in [
        ("mesh_info", "i1"),
        ("list_peers", "i2"),
        ("list_state", "i3"),
    ] {
        ca.send(json!({"type": t, "_reqId": id})).await;
    }
    let info: MeshInfoResult = parse(&ca.expect("mesh_info_result").await);
    let peers = ca.expect("peers_list").await;
    let state = ca.expect("state_list").await;
    assert_eq!(info.req_id.as_deref(), Some("i1"));
    assert_eq!(peers["_reqId"], "i2");
    assert_eq!(state["_reqId"], "i3");
    assert_eq!(info.mesh, mesh);
    assert_eq!(info.peers, 2, "both replicas' presences");
    assert_eq!(info.groups, ["@dev", "@ops"]);
    assert_eq!(info.your_name, "alice");
    assert_eq!(info.your_groups.len(), 1);
    assert_eq!(info.your_groups[0].name, "dev");
    assert_eq!(info.your_groups[0].role.as_deref(), Some("lead"));
    assert_eq!(
        (info.file_count, info.tables.len(), info.collections.len()),
        (0, 0, 0)
    );
    assert_eq!(info.memory_count, 1, "the memory stored through b");
    assert_eq!(info.state_keys, ["phase"]);
    assert_eq!(
        (info.tasks.open, info.tasks.claimed, info.tasks.done),
        (1, 0, 0)
    );
}

// ---------------------------------------------------------------------------------------
// Status hooks across replicas (protocol §6)
// ---------------------------------------------------------------------------------------

/// A hook that lands on replica A reaches the session on replica B (through the registry
/// and the bus); it still never clears `dnd`; a process connected nowhere is kept pending.
#[tokio::test]
async fn a_hook_landing_on_one_replica_reaches_the_session_on_the_other() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("hooks", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let watcher = member(&a, &mesh, "watcher", json!({}));
    let (mut cw, _) = Client::join(&a.ws_url(), watcher.hello(&mesh, json!({"pid": 1}))).await;
    let (mut cs, _) = Client::join(
        &b.ws_url(),
        alice.hello(&mesh, json!({"pid": 31337, "cwd": "/work/hooked"})),
    )
    .await;

    let (status, body) = post_hook(&a, &hook_body(31337, "/work/hooked", "working"));
    assert_eq!(
        (status, body),
        (200, json!({"ok": true})),
        "routed, not pending"
    );
    eventually("the session on B is working", async || {
        (status_of(&mut cw, "alice").await == "working").then_some(())
    })
    .await;
    // The session itself holds that status: a held message waits for idle.
    let (status, _) = post_hook(&a, &hook_body(31337, "/work/hooked", "idle"));
    assert_eq!(status, 200);
    eventually("idle again", async || {
        (status_of(&mut cw, "alice").await == "idle").then_some(())
    })
    .await;

    // dnd set by the client is never cleared by a hook, from either replica.
    cs.send(json!({"type": "set_status", "status": "dnd"}))
        .await;
    eventually("dnd", async || {
        (status_of(&mut cw, "alice").await == "dnd").then_some(())
    })
    .await;
    for replica in [&a, &b] {
        let (status, _) = post_hook(replica, &hook_body(31337, "/work/hooked", "idle"));
        assert_eq!(status, 200);
    }
    cs.expect_none(Duration::from_millis(300), |v| v["type"] == "error")
        .await;
    assert_eq!(status_of(&mut cw, "alice").await, "dnd");

    // A process connected nowhere is pending on the replica that got the hook.
    let (status, body) = post_hook(&a, &hook_body(999, "/work/nowhere", "working"));
    assert_eq!((status, body), (200, json!({"ok": true, "pending": true})));
}

// ---------------------------------------------------------------------------------------
// Dev mode (memory store, one broker)
// ---------------------------------------------------------------------------------------

/// Every family of this file on the memory backends.
#[tokio::test]
async fn dev_mode_serves_status_audit_info_hooks_and_refusals() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("dev", Some("owner-user"));
    let owner = member(&b, &mesh, "owner", json!({"userId": "owner-user"}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut co, _) = Client::join(
        &b.ws_url(),
        owner.hello(&mesh, json!({"pid": 555, "cwd": "/dev/owner"})),
    )
    .await;
    let (mut cb, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    // Delivery status.
    let ack = co.send_msg(&bob.identity.pubkey, "now", "hi").await;
    let id = ack["messageId"].as_str().unwrap().to_string();
    cb.expect_where("push", is_push).await;
    let held: MessageStatusResult = parse(&co.request(status_request(&id)).await);
    assert!(!held.delivered);
    cb.send(client_ack(&id)).await;
    eventually("delivered", async || {
        let r: MessageStatusResult = parse(&co.request(status_request(&id[..10])).await);
        r.delivered.then_some(())
    })
    .await;
    let ack = cb.send_msg("@all", "now", "all").await;
    let r: MessageStatusResult = eventually("the fan-out is recorded", async || {
        let v = co
            .request(status_request(ack["messageId"].as_str().unwrap()))
            .await;
        (v["type"] == "message_status_result").then(|| parse(&v))
    })
    .await;
    assert_eq!(r.target_spec, "@all");
    assert_eq!(r.recipients.len(), 2);

    // Audit.
    let page: AuditResult = eventually("the audit appends", async || {
        let r: AuditResult = parse(&co.request(json!({"type": "audit_query", "limit": 2})).await);
        (r.total >= 4).then_some(r)
    })
    .await;
    assert_eq!(page.entries.len(), 2);
    let v: AuditVerifyResult = parse(&co.request(json!({"type": "audit_verify"})).await);
    assert!(v.valid);
    assert_eq!(
        error_of(&cb.request(json!({"type": "audit_verify"})).await).0,
        "forbidden"
    );

    // Mesh info.
    let info: MeshInfoResult = parse(&cb.request(json!({"type": "mesh_info"})).await);
    assert_eq!((info.peers, info.your_name.as_str()), (2, "bob"));

    // Hooks (the local path) and a refusal.
    let (status, body) = post_hook(&b, &hook_body(555, "/dev/owner", "working"));
    assert_eq!((status, body), (200, json!({"ok": true})));
    eventually("working", async || {
        (status_of(&mut cb, "owner").await == "working").then_some(())
    })
    .await;
    let v = co
        .request(json!({"type": "vector_store", "collection": "c", "text": "t"}))
        .await;
    assert_eq!(
        error_of(&v),
        (
            "unsupported".into(),
            "vector_store: vector search is not available on this broker (needs Qdrant)".into()
        )
    );
}

// ---------------------------------------------------------------------------------------
// What the CLI sends (§0.2)
// ---------------------------------------------------------------------------------------

/// How the cold-path client would release a pending request of `category` on `reply`:
/// a typed reply of the expected type, or an `error` (which releases the oldest pending
/// request of the first non-empty category, §0.2 rule 3).
fn releases(reply: &Value, typed: Option<&str>) -> bool {
    match typed {
        Some(t) => reply["type"] == t,
        None => reply["type"] == "error" && reply["code"] == "unsupported",
    }
}

/// One command of every refused family, sent exactly as the CLI sends it (with or without
/// `_reqId`), gets a reply that releases the CLI's pending request at once: the typed
/// empty reply of a list-style read, else `unsupported`. Fire-and-forget frames stay
/// silent. The HTTP routes of §19 answer 501.
#[tokio::test]
async fn every_refused_family_releases_the_cli_at_once() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("cli", None);
    let m = member(&b, &mesh, "cli", json!({}));
    let (mut c, _) = Client::join(&b.ws_url(), m.hello(&mesh, json!({}))).await;

    // (frame, the reply type the CLI matches, or None for `unsupported`).
    let cases: Vec<(Value, Option<&str>)> = vec![
        // (§19.1 files are built: `tests/ext_files.rs`.)
        // §19.2 vectors
        (json!({"type": "list_collections"}), Some("collection_list")),
        (
            json!({"type": "vector_search", "collection": "c", "query": "q"}),
            None,
        ),
        // §19.3 graph
        (
            json!({"type": "graph_query", "cypher": "MATCH (n) RETURN n"}),
            None,
        ),
        // §19.4 per-mesh SQL
        (json!({"type": "mesh_schema"}), Some("mesh_schema_result")),
        (json!({"type": "mesh_query", "sql": "select 1"}), None),
        // §19.5 managed services
        (json!({"type": "mcp_catalog"}), Some("mcp_catalog_result")),
        (
            json!({"type": "mcp_schema", "server_name": "svc"}),
            Some("mcp_schema_result"),
        ),
        (
            json!({"type": "mcp_deploy", "server_name": "svc", "source": {"type": "git", "url": "x"}}),
            None,
        ),
    ];
    for (frame, typed) in cases {
        let reply = c.request(frame.clone()).await;
        assert!(releases(&reply, typed), "{frame} got {reply}");
        if let Some(t) = typed {
            assert_eq!(reply["type"], t);
        }
    }
    // The CLI's own frames of this file's families, as `msg-status` and `info` send them.
    let ack = c.send_msg("*", "now", "x").await;
    let id = ack["messageId"].as_str().unwrap().to_string();
    eventually("the fan-out is recorded", async || {
        let v = c.request(status_request(&id)).await;
        (v["type"] == "message_status_result").then_some(())
    })
    .await;
    c.send(json!({"type": "message_status", "messageId": id}))
        .await;
    let r = c.expect("message_status_result").await;
    assert!(r.get("_reqId").is_none());
    for field in [
        "messageId",
        "targetSpec",
        "delivered",
        "deliveredAt",
        "recipients",
    ] {
        assert!(r.get(field).is_some(), "{field} in {r}");
    }
    c.send(json!({"type": "mesh_info"})).await;
    let info = c.expect("mesh_info_result").await;
    for field in [
        "mesh",
        "peers",
        "groups",
        "stateKeys",
        "memoryCount",
        "fileCount",
        "tasks",
        "streams",
        "tables",
        "collections",
        "yourName",
        "yourGroups",
    ] {
        assert!(info.get(field).is_some(), "{field} in {info}");
    }
    assert!(info.get("_reqId").is_none());

    // HTTP routes of §19 (files, §19.1, are built: `tests/ext_files.rs`).
    let (status, body) = b.try_http("POST", "/tg/token", None, Some("{}")).unwrap();
    assert_eq!(status, 501);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "telegram bridge is not available on this broker"})
    );
}
