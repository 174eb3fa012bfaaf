//! Contexts (extensions §11), skills (§12) and the vault (§16): across two replicas, after
//! a restart of every replica, in dev mode within their bounds, and with the exact frames
//! the CLI and the daemon send.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::protocol::ext::contexts::{ContextList, ContextResults, ContextShared};
use broker::protocol::ext::skills::{SkillAck, SkillList};
use broker::protocol::ext::state::StateChange;
use broker::protocol::ext::vault::{VaultAck, VaultGetResult, VaultListResult};
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// Waits until `c` lists `n` peers (the fan-out reads the registry).
async fn peers(c: &mut Client, n: usize) {
    eventually("the peers are listed", async || {
        let list = c.request(ClientFrame::ListPeers).await;
        (list["peers"].as_array().unwrap().len() == n).then_some(())
    })
    .await;
}

fn share_context(summary: &str, tags: &[&str]) -> Value {
    json!({"type": "share_context", "summary": summary, "filesRead": ["src/main.rs"],
           "keyFindings": ["the cache is cold"], "tags": tags})
}

/// A `vault_set` with blobs of the client's shape (the bytes are arbitrary: the broker
/// cannot tell them from a real box).
fn vault_set(key: &str, seed: u8) -> Value {
    json!({"type": "vault_set", "key": key,
           "ciphertext": STANDARD.encode([seed; 40]),
           "nonce": STANDARD.encode([seed; 24]),
           "sealed_key": STANDARD.encode([seed; 80]),
           "entry_type": "env", "description": format!("secret {key}")})
}

#[tokio::test]
async fn a_context_shared_on_a_is_found_on_b_and_announced_to_every_other_presence() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("contexts", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ca, _) = Client::join(&a.ws_url(), carol.hello(&mesh, json!({}))).await;
    // Alice's own session on the other replica: a sibling of the sharing socket.
    let (mut sib, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &alice.identity, &Identity::random(), json!({})),
    )
    .await;
    peers(&mut al, 4).await;

    let shared: ContextShared = parse(
        &al.request(share_context("Deploying the Redis cache", &["ops"]))
            .await,
    );
    assert_eq!(shared.id.len(), 32);
    for (who, client) in [
        ("bob on b", &mut bo),
        ("carol on a", &mut ca),
        ("alice's session on b", &mut sib),
    ] {
        let change: StateChange = parse(
            &client
                .expect_where("state_change", |v| v["key"] == "_context:alice")
                .await,
        );
        assert_eq!(
            change,
            StateChange {
                key: "_context:alice".into(),
                value: json!("Deploying the Redis cache"),
                updated_by: "alice".into(),
            },
            "{who}"
        );
    }
    // Found through the other replica at once: by a case-insensitive substring of the
    // summary, or by an exact tag; a partial tag is no match.
    for query in ["redis CACHE", "ops"] {
        let found: ContextResults = parse(
            &bo.request(json!({"type": "get_context", "query": query}))
                .await,
        );
        assert_eq!(found.contexts.len(), 1, "{query}");
        let row = &found.contexts[0];
        assert_eq!(row.peer_name, "alice");
        assert_eq!(row.files_read, vec!["src/main.rs"]);
        assert_eq!(row.key_findings, vec!["the cache is cold"]);
        assert_eq!(row.tags, vec!["ops"]);
        assert!(row.updated_at.ends_with('Z'));
    }
    let none: ContextResults = parse(
        &bo.request(json!({"type": "get_context", "query": "op"}))
            .await,
    );
    assert!(none.contexts.is_empty());

    // One record per member: sharing again replaces it and keeps its id; newest first.
    bo.request(share_context("Reviewing the queue", &[])).await;
    let again: ContextShared = parse(&al.request(share_context("Redis is warm now", &[])).await);
    assert_eq!(again.id, shared.id);
    let list: ContextList = parse(&ca.request(json!({"type": "list_contexts"})).await);
    let rows: Vec<(&str, &str)> = list
        .contexts
        .iter()
        .map(|c| (c.peer_name.as_str(), c.summary.as_str()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("alice", "Redis is warm now"),
            ("bob", "Reviewing the queue")
        ]
    );
    // Never announced to the sharing socket.
    al.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "state_change" && v["key"] == "_context:alice"
    })
    .await;
}

#[tokio::test]
async fn only_the_author_or_an_admin_replaces_or_removes_a_skill_across_replicas() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("skills", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let root = member(&a, &mesh, "root", json!({"role": "admin"}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ad, _) = Client::join(&b.ws_url(), root.hello(&mesh, json!({}))).await;

    let manifest =
        json!({"when_to_use": "before a deploy", "allowed_tools": ["Bash"], "context": "fork"});
    let share = |instructions: &str| {
        json!({"type": "share_skill", "name": "deploy", "description": "Ship it",
               "instructions": instructions, "tags": ["ops"], "manifest": manifest})
    };
    let ack: SkillAck = parse(&al.request(share("Run the pipeline")).await);
    assert_eq!(
        (ack.name.as_str(), ack.action.as_str()),
        ("deploy", "shared")
    );

    // Read on b.
    let data = bo
        .request(json!({"type": "get_skill", "name": "deploy"}))
        .await;
    assert_eq!(data["type"], "skill_data");
    let skill = &data["skill"];
    assert_eq!(skill["author"], "alice");
    assert_eq!(skill["instructions"], "Run the pipeline");
    assert_eq!(skill["manifest"], manifest);
    assert!(skill["createdAt"].as_str().unwrap().ends_with('Z'));

    // Bob (on b) may neither replace nor remove alice's skill.
    let refused = bo.request(share("Skip the tests")).await;
    assert_eq!(
        (refused["type"].clone(), refused["code"].clone()),
        (json!("error"), json!("forbidden"))
    );
    let ack: SkillAck = parse(
        &bo.request(json!({"type": "remove_skill", "name": "deploy"}))
            .await,
    );
    assert_eq!(ack.action, "not_found");
    let data = al
        .request(json!({"type": "get_skill", "name": "deploy"}))
        .await;
    assert_eq!(
        data["skill"]["instructions"], "Run the pipeline",
        "unchanged"
    );

    // The author replaces it on a; bob's own skill is his.
    let ack: SkillAck = parse(&al.request(share("Run the pipeline twice")).await);
    assert_eq!(ack.action, "shared");
    bo.request(
        json!({"type": "share_skill", "name": "backup", "description": "Nightly",
                      "instructions": "pg_dump"}),
    )
    .await;
    let list: SkillList = parse(&al.request(json!({"type": "list_skills"})).await);
    let names: Vec<(&str, &str)> = list
        .skills
        .iter()
        .map(|s| (s.name.as_str(), s.author.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("backup", "bob"), ("deploy", "alice")],
        "by name"
    );
    let filtered: SkillList = parse(
        &al.request(json!({"type": "list_skills", "query": "NIGHT"}))
            .await,
    );
    assert_eq!(filtered.skills.len(), 1);
    assert_eq!(filtered.skills[0].name, "backup");

    // An admin (on b) removes anyone's; gone on a at once.
    let ack: SkillAck = parse(
        &ad.request(json!({"type": "remove_skill", "name": "deploy"}))
            .await,
    );
    assert_eq!(ack.action, "removed");
    let data = al
        .request(json!({"type": "get_skill", "name": "deploy"}))
        .await;
    assert_eq!(data["skill"], Value::Null);
    assert_eq!(
        metric(
            &b.metrics(),
            r#"broker_skill_requests_refused_total{reason="forbidden"}"#
        ),
        2.0,
        "the refused replace and the refused remove"
    );
}

#[tokio::test]
async fn vault_entries_are_per_member_and_survive_a_restart_of_every_replica() {
    let c = Cluster::new(&[]).await;
    let (mut a, mut b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("vault", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    let set = vault_set("API_TOKEN", 7);
    let ack: VaultAck = parse(&al.request(set.clone()).await);
    assert_eq!(
        (ack.key.as_str(), ack.action.as_str()),
        ("API_TOKEN", "stored")
    );
    al.request(vault_set("DB_PASSWORD", 8)).await;

    // Alice's own session on b reads the blobs exactly as sent.
    let (mut sess, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &alice.identity, &Identity::random(), json!({})),
    )
    .await;
    let got: VaultGetResult = parse(
        &sess
            .request(json!({"type": "vault_get", "keys": ["API_TOKEN", "MISSING"]}))
            .await,
    );
    assert_eq!(got.entries.len(), 1);
    let e = &got.entries[0];
    assert_eq!(e.ciphertext, set["ciphertext"].as_str().unwrap());
    assert_eq!(e.nonce, set["nonce"].as_str().unwrap());
    assert_eq!(e.sealed_key, set["sealed_key"].as_str().unwrap());
    assert_eq!(
        (e.entry_type.as_str(), e.mount_path.as_deref()),
        ("env", None)
    );

    // Bob, on b, sees none of alice's entries and cannot delete them.
    let list: VaultListResult = parse(&bo.request(json!({"type": "vault_list"})).await);
    assert!(list.entries.is_empty());
    let got: VaultGetResult = parse(
        &bo.request(json!({"type": "vault_get", "keys": ["API_TOKEN"]}))
            .await,
    );
    assert!(got.entries.is_empty());
    let ack: VaultAck = parse(
        &bo.request(json!({"type": "vault_delete", "key": "API_TOKEN"}))
            .await,
    );
    assert_eq!(ack.action, "not_found");

    // Every replica restarts; the entries are intact.
    drop((al, bo, sess));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    drop((a, b));
    let (a, b) = (c.replica("a"), c.replica("b"));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let list: VaultListResult = parse(&al.request(json!({"type": "vault_list"})).await);
    let keys: Vec<&str> = list.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["API_TOKEN", "DB_PASSWORD"]);
    assert_eq!(
        list.entries[0].description.as_deref(),
        Some("secret API_TOKEN")
    );
    assert!(list.entries[0].updated_at.ends_with('Z'));
    let got: VaultGetResult = parse(
        &al.request(json!({"type": "vault_get", "keys": ["API_TOKEN"]}))
            .await,
    );
    assert_eq!(
        got.entries[0].ciphertext,
        set["ciphertext"].as_str().unwrap()
    );
    let ack: VaultAck = parse(
        &al.request(json!({"type": "vault_delete", "key": "API_TOKEN"}))
            .await,
    );
    assert_eq!(ack.action, "deleted");
    let (mut on_a, _) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &alice.identity, &Identity::random(), json!({})),
    )
    .await;
    let list: VaultListResult = parse(&on_a.request(json!({"type": "vault_list"})).await);
    assert_eq!(list.entries.len(), 1, "the delete on b is seen on a");
}

/// Dev mode (memory store, one broker) with `env`: alice and bob connected to one mesh.
async fn dev_pair(env: &[(&str, &str)]) -> (Broker, Client, Client) {
    let b = Broker::start(env);
    let mesh = b.create_mesh("dev", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    al.expect_system("peer_joined").await;
    (b, al, bo)
}

fn assert_counted(b: &Broker, counts: &[(&str, f64)]) {
    let metrics = b.metrics();
    for (name, n) in counts {
        assert_eq!(metric(&metrics, name), *n, "{name}");
    }
}

/// Dev mode: contexts are shared, pushed and found, and refused over their bounds, each refusal counted.
#[tokio::test]
async fn dev_mode_serves_contexts_within_their_bounds() {
    let (b, mut al, mut bo) = dev_pair(&[
        ("MAX_CONTEXT_SUMMARY_BYTES", "32"),
        ("MAX_CONTEXT_ITEMS", "2"),
        ("MAX_CONTEXT_ITEM_BYTES", "8"),
    ])
    .await;
    al.request(json!({"type": "share_context", "summary": "Fixing the build", "tags": ["ci"]}))
        .await;
    let change = bo
        .expect_where("state_change", |v| v["key"] == "_context:alice")
        .await;
    assert_eq!(change["value"], "Fixing the build");
    let found: ContextResults = parse(
        &bo.request(json!({"type": "get_context", "query": "ci"}))
            .await,
    );
    assert_eq!(found.contexts[0].peer_name, "alice");
    for (frame, code) in [
        (json!({"type": "share_context", "summary": " "}), "invalid"),
        (
            json!({"type": "share_context", "summary": "x".repeat(33)}),
            "field_too_large",
        ),
        (
            json!({"type": "share_context", "summary": "s", "tags": ["a", "b", "c"]}),
            "field_too_large",
        ),
        (
            json!({"type": "share_context", "summary": "s", "filesRead": ["much/too/long"]}),
            "field_too_large",
        ),
        (json!({"type": "share_context", "summary": 5}), "malformed"),
    ] {
        let reply = al.request(frame).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code))
        );
    }

    assert_counted(
        &b,
        &[
            (
                r#"broker_context_requests_refused_total{reason="field_too_large"}"#,
                3.0,
            ),
            (
                r#"broker_context_requests_refused_total{reason="invalid"}"#,
                1.0,
            ),
        ],
    );
}

/// Dev mode: skills are shared and replaced by their author, and refused over their bounds or to others, each refusal counted.
#[tokio::test]
async fn dev_mode_serves_skills_within_their_bounds() {
    let (b, mut al, mut bo) = dev_pair(&[
        ("MAX_SKILLS_PER_MESH", "1"),
        ("MAX_SKILL_NAME_BYTES", "8"),
        ("MAX_SKILL_MANIFEST_BYTES", "16"),
        ("MAX_SKILL_TAGS", "1"),
    ])
    .await;
    let ack: SkillAck = parse(
        &al.request(
            json!({"type": "share_skill", "name": "lint", "description": "",
                           "instructions": "cargo clippy", "manifest": {"a": 1}}),
        )
        .await,
    );
    assert_eq!(ack.action, "shared");
    for (frame, code) in [
        (
            json!({"type": "share_skill", "name": "fmt", "instructions": "cargo fmt"}),
            "too_many_skills",
        ),
        (
            json!({"type": "share_skill", "name": "much-too-long", "instructions": "x"}),
            "field_too_large",
        ),
        (
            json!({"type": "share_skill", "name": "lint", "instructions": "x",
                   "manifest": {"a": "0123456789abcdef"}}),
            "field_too_large",
        ),
        (
            json!({"type": "share_skill", "name": "lint", "instructions": "x", "tags": ["a", "b"]}),
            "field_too_large",
        ),
        (json!({"type": "share_skill", "name": "lint"}), "invalid"),
        (
            json!({"type": "share_skill", "name": "lint", "instructions": "x"}),
            "forbidden",
        ),
    ] {
        let who = if code == "forbidden" {
            &mut bo
        } else {
            &mut al
        };
        let reply = who.request(frame).await;
        assert_eq!(reply["code"], code, "{reply}");
    }
    let ack: SkillAck = parse(
        &al.request(json!({"type": "share_skill", "name": "lint", "instructions": "cargo clippy -D warnings"}))
            .await,
    );
    assert_eq!(
        ack.action, "shared",
        "an existing name can be replaced at the bound"
    );

    assert_counted(
        &b,
        &[
            (
                r#"broker_skill_requests_refused_total{reason="too_many_skills"}"#,
                1.0,
            ),
            (
                r#"broker_skill_requests_refused_total{reason="forbidden"}"#,
                1.0,
            ),
            (
                r#"broker_skill_requests_refused_total{reason="field_too_large"}"#,
                3.0,
            ),
            (
                r#"broker_skill_requests_refused_total{reason="invalid"}"#,
                1.0,
            ),
        ],
    );
}

/// Dev mode: vault entries are stored per member, and refused over their bounds or when not of the client's shape, each refusal counted.
#[tokio::test]
async fn dev_mode_serves_the_vault_within_its_bounds() {
    let (b, mut al, mut bo) = dev_pair(&[
        ("MAX_VAULT_ENTRIES_PER_MEMBER", "1"),
        ("MAX_VAULT_KEY_BYTES", "8"),
        ("MAX_VAULT_BLOB_BYTES", "64"),
    ])
    .await;
    let ack: VaultAck = parse(&al.request(vault_set("K1", 1)).await);
    assert_eq!(ack.action, "stored");
    let ack: VaultAck = parse(&al.request(vault_set("K1", 2)).await);
    assert_eq!(ack.action, "stored", "an upsert at the bound");
    let ack: VaultAck = parse(&bo.request(vault_set("K1", 3)).await);
    assert_eq!(ack.action, "stored", "bound and keys are per member");
    let plaintext = {
        let mut f = vault_set("K2", 1);
        f["key"] = json!("K1");
        f["ciphertext"] = json!("hunter2 in the clear");
        f
    };
    let short_nonce = {
        let mut f = vault_set("K1", 1);
        f["nonce"] = json!(STANDARD.encode([1u8; 12]));
        f
    };
    let bad_type = {
        let mut f = vault_set("K1", 1);
        f["entry_type"] = json!("secret");
        f
    };
    let big = {
        let mut f = vault_set("K1", 1);
        f["ciphertext"] = json!(STANDARD.encode([1u8; 60]));
        f
    };
    for (frame, why) in [
        (vault_set("K2", 1), "too_many_entries"),
        (vault_set("MUCH_TOO_LONG", 1), "too_large"),
        (plaintext, "invalid"),
        (short_nonce, "invalid"),
        (bad_type, "invalid"),
        (big, "too_large"),
    ] {
        let reply = al.request(frame).await;
        assert_eq!(reply["code"], "vault_error", "{why}: {reply}");
    }
    let got: VaultGetResult = parse(
        &al.request(json!({"type": "vault_get", "keys": ["K1"]}))
            .await,
    );
    assert_eq!(got.entries[0].ciphertext, STANDARD.encode([2u8; 40]));
    let reply = al
        .request(json!({"type": "vault_get", "keys": ["K1", "K2"]}))
        .await;
    assert_eq!(reply["code"], "vault_error", "more keys than the bound");

    assert_counted(
        &b,
        &[
            (
                r#"broker_vault_requests_refused_total{reason="too_many_entries"}"#,
                1.0,
            ),
            (
                r#"broker_vault_requests_refused_total{reason="invalid"}"#,
                3.0,
            ),
            (
                r#"broker_vault_requests_refused_total{reason="too_large"}"#,
                3.0,
            ),
        ],
    );
}

/// The exact frames of `claudemesh context`, `skill list/get/remove`, `vault
/// set/list/delete` and of the daemon's MCP prompts, and the reply fields each matches on
/// (extensions §0.2), `_reqId` missing included.
#[tokio::test]
async fn cli_and_daemon_frames_get_the_replies_they_match_on() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("cli", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    // `context share`: no `_reqId` (the reference's reply carries none either).
    c.send(json!({"type": "share_context", "summary": "auth refactor",
                  "filesRead": ["src/auth.rs"], "keyFindings": ["tokens are hashed"],
                  "tags": ["auth"]}))
        .await;
    let shared = c.expect("context_shared").await;
    assert!(shared["id"].is_string());
    assert!(shared.get("_reqId").is_none());
    // `context get`: tolerant `context_results.contexts`.
    c.send(json!({"type": "get_context", "query": "auth", "_reqId": "g1"}))
        .await;
    let results = c.expect("context_results").await;
    assert_eq!(results["_reqId"], "g1");
    let row = &results["contexts"][0];
    for field in [
        "peerName",
        "summary",
        "filesRead",
        "keyFindings",
        "tags",
        "updatedAt",
    ] {
        assert!(row.get(field).is_some(), "{field} in {row}");
    }
    // `context list`: `context_list.contexts`, also without a `_reqId`.
    c.send(json!({"type": "list_contexts"})).await;
    let list = c.expect("context_list").await;
    assert!(list.get("_reqId").is_none());
    assert_eq!(
        list["contexts"][0],
        json!({"peerName": "alice", "summary": "auth refactor", "tags": ["auth"],
               "updatedAt": row["updatedAt"]})
    );

    // Skills: the daemon's strict `list_skills`/`get_skill` read `skill_list.skills` and
    // `skill_data.skill`; a missing skill is `skill:null` ("Skill not found").
    c.send(
        json!({"type": "share_skill", "name": "review", "description": "Code review",
                  "instructions": "Read the diff", "tags": ["qa"],
                  "manifest": {"user_invocable": false, "argument_hint": "<pr>"}, "_reqId": "s1"}),
    )
    .await;
    assert_eq!(
        c.expect("skill_ack").await,
        json!({"type": "skill_ack", "name": "review", "action": "shared", "_reqId": "s1"})
    );
    c.send(json!({"type": "list_skills", "_reqId": "d1"})).await;
    let list = c.expect("skill_list").await;
    assert_eq!(list["_reqId"], "d1");
    assert_eq!(
        list["skills"][0],
        json!({"name": "review", "description": "Code review", "tags": ["qa"],
               "author": "alice", "createdAt": list["skills"][0]["createdAt"]})
    );
    c.send(json!({"type": "list_skills", "query": "QA", "_reqId": "d2"}))
        .await;
    assert_eq!(
        c.expect("skill_list").await["skills"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    c.send(json!({"type": "get_skill", "name": "review", "_reqId": "d3"}))
        .await;
    let data = c.expect("skill_data").await;
    assert_eq!(data["_reqId"], "d3");
    assert_eq!(data["skill"]["instructions"], "Read the diff");
    assert_eq!(
        data["skill"]["manifest"],
        json!({"user_invocable": false, "argument_hint": "<pr>"})
    );
    c.send(json!({"type": "get_skill", "name": "nope", "_reqId": "d4"}))
        .await;
    assert_eq!(
        c.expect("skill_data").await,
        json!({"type": "skill_data", "skill": null, "_reqId": "d4"})
    );
    c.send(json!({"type": "remove_skill", "name": "review", "_reqId": "s2"}))
        .await;
    assert_eq!(c.expect("skill_ack").await["action"], "removed");
    c.send(json!({"type": "remove_skill", "name": "review", "_reqId": "s3"}))
        .await;
    assert_eq!(
        c.expect("skill_ack").await,
        json!({"type": "skill_ack", "name": "review", "action": "not_found", "_reqId": "s3"})
    );

    // Vault: snake_case, strict `_reqId` on every reply.
    let mut set = vault_set("GITHUB_TOKEN", 9);
    set["_reqId"] = json!("v1");
    set["entry_type"] = json!("file");
    set["mount_path"] = json!("/home/me/.token");
    c.send(set).await;
    assert_eq!(
        c.expect("vault_ack").await,
        json!({"type": "vault_ack", "key": "GITHUB_TOKEN", "action": "stored", "_reqId": "v1"})
    );
    c.send(json!({"type": "vault_list", "_reqId": "v2"})).await;
    let list = c.expect("vault_list_result").await;
    assert_eq!(list["_reqId"], "v2");
    let entry = &list["entries"][0];
    assert_eq!(
        (
            entry["key"].clone(),
            entry["entry_type"].clone(),
            entry["mount_path"].clone()
        ),
        (
            json!("GITHUB_TOKEN"),
            json!("file"),
            json!("/home/me/.token")
        )
    );
    assert!(entry["updated_at"].is_string());
    assert!(entry.get("ciphertext").is_none(), "no blobs in a list");
    c.send(json!({"type": "vault_get", "keys": ["GITHUB_TOKEN"], "_reqId": "v3"}))
        .await;
    let got = c.expect("vault_get_result").await;
    assert_eq!(got["_reqId"], "v3");
    for field in [
        "key",
        "ciphertext",
        "nonce",
        "sealed_key",
        "entry_type",
        "mount_path",
    ] {
        assert!(got["entries"][0].get(field).is_some(), "{field}");
    }
    c.send(json!({"type": "vault_set", "key": "X", "_reqId": "v4"}))
        .await;
    let refused = c.expect("error").await;
    assert_eq!(
        (refused["code"].clone(), refused["_reqId"].clone()),
        (json!("vault_error"), json!("v4"))
    );
    c.send(json!({"type": "vault_delete", "key": "GITHUB_TOKEN", "_reqId": "v5"}))
        .await;
    assert_eq!(
        c.expect("vault_ack").await,
        json!({"type": "vault_ack", "key": "GITHUB_TOKEN", "action": "deleted", "_reqId": "v5"})
    );
    c.send(json!({"type": "vault_delete", "key": "GITHUB_TOKEN", "_reqId": "v6"}))
        .await;
    assert_eq!(c.expect("vault_ack").await["action"], "not_found");

    // Before the handshake, every one of them is `no_hello`.
    let mut early = Client::connect(&b.ws_url()).await;
    for t in broker::protocol::ext::contexts::TYPES
        .iter()
        .chain(broker::protocol::ext::skills::TYPES)
        .chain(broker::protocol::ext::vault::TYPES)
    {
        early.send(json!({"type": t})).await;
        assert_eq!(early.expect("error").await["code"], "no_hello", "{t}");
    }
}
