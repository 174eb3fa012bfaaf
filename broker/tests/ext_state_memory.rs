//! Shared state (extensions §1) and memory (§2): across two replicas, in dev mode, within
//! their bounds, and with the exact frames the CLI and the daemon send.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use broker::protocol::ext::memories::{
    ForgetAck, MemoryRecallResult, MemoryResults, MemoryRow, MemoryStored,
};
use broker::protocol::ext::state::{StateChange, StateList, StateResult, StateValue};
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

fn is_state_change(v: &Value) -> bool {
    v["type"] == "state_change"
}

/// Sends a request with `_reqId` and returns the reply of `kind` that echoes it and the
/// ones after it that echo it too (`state_value` after `state_result`, …).
async fn ask(c: &mut Client, frame: Value, kinds: &[&str]) -> Vec<Value> {
    let id = broker::ids::random_id(8);
    let mut frame = frame;
    frame["_reqId"] = json!(id);
    c.send(frame).await;
    let mut out = Vec::new();
    for kind in kinds {
        out.push(c.expect_where(kind, |v| v["_reqId"] == json!(id)).await);
    }
    out
}

async fn get_state(c: &mut Client, key: &str) -> (StateResult, StateValue) {
    let r = ask(
        c,
        json!({"type": "get_state", "key": key}),
        &["state_result", "state_value"],
    )
    .await;
    (parse(&r[0]), parse(&r[1]))
}

async fn list_state(c: &mut Client) -> StateList {
    parse(&ask(c, json!({"type": "list_state"}), &["state_list"]).await[0])
}

async fn remember(c: &mut Client, content: &str, tags: &[&str]) -> MemoryStored {
    parse(
        &ask(
            c,
            json!({"type": "remember", "content": content, "tags": tags}),
            &["memory_stored"],
        )
        .await[0],
    )
}

/// `recall`: the `memory_results` rows, checked equal to the `memory_recall_result` ones.
async fn recall(c: &mut Client, query: &str) -> Vec<MemoryRow> {
    let r = ask(
        c,
        json!({"type": "recall", "query": query}),
        &["memory_results", "memory_recall_result"],
    )
    .await;
    let results: MemoryResults = parse(&r[0]);
    let matches: MemoryRecallResult = parse(&r[1]);
    assert_eq!(
        results.memories, matches.matches,
        "both replies carry the same rows"
    );
    results.memories
}

async fn set_state(c: &mut Client, key: &str, value: Value) {
    c.send(json!({"type": "set_state", "key": key, "value": value}))
        .await;
}

/// Waits for the next `state_change` of `key`.
async fn next_change(c: &mut Client, key: &str) -> StateChange {
    parse(
        &c.expect_where("state_change", |v| v["key"] == json!(key))
            .await,
    )
}

#[tokio::test]
async fn a_set_on_a_is_read_on_b_and_state_change_reaches_every_other_presence_on_both() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("state", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&a.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ca, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    // Alice's own session on the other replica: a sibling of the writing socket.
    let (mut sib, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &alice.identity, &Identity::random(), json!({})),
    )
    .await;
    // Every presence is registered before the write (the fan-out reads the registry).
    eventually("four peers listed on a", async || {
        let list = al.request(ClientFrame::ListPeers).await;
        (list["peers"].as_array().unwrap().len() == 4).then_some(())
    })
    .await;

    set_state(&mut al, "deploy", json!({"env": "prod", "n": 1})).await;
    for (who, client) in [
        ("bob on a", &mut bo),
        ("carol on b", &mut ca),
        ("alice's session on b", &mut sib),
    ] {
        let change = next_change(client, "deploy").await;
        assert_eq!(
            change,
            StateChange {
                key: "deploy".into(),
                value: json!({"env": "prod", "n": 1}),
                updated_by: "alice".into(),
            },
            "{who}"
        );
    }
    // Read on b at once: the write was committed before it was announced.
    let (result, value) = get_state(&mut ca, "deploy").await;
    assert_eq!(result.key, "deploy");
    assert_eq!(result.value, json!({"env": "prod", "n": 1}));
    assert_eq!(result.updated_by, "alice");
    assert!(result.updated_at.ends_with('Z'), "{}", result.updated_at);
    let state = value.state.expect("state_value carries the row");
    assert_eq!(
        (state.key.as_str(), &state.value),
        ("deploy", &result.value)
    );

    // A write on b reaches a, the writer on a included.
    set_state(&mut ca, "deploy", json!("rolled back")).await;
    assert_eq!(
        next_change(&mut al, "deploy").await.value,
        json!("rolled back")
    );
    assert_eq!(next_change(&mut bo, "deploy").await.updated_by, "carol");
    let list = list_state(&mut bo).await;
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].value, json!("rolled back"));

    // Never to the writing socket.
    al.expect_none(Duration::from_millis(300), |v| {
        is_state_change(v) && v["updatedBy"] == "alice"
    })
    .await;
    ca.expect_none(Duration::from_millis(300), |v| {
        is_state_change(v) && v["updatedBy"] == "carol"
    })
    .await;
}

/// Two writers of one key on different replicas race, round after round; every observer,
/// on both replicas, sees the key's changes in commit order, so its last one is the stored
/// value.
///
/// Each round, alice (on a) and bob (on b) write at the same moment and then read: once
/// both reads are answered both writes are committed, and the value stored after the round
/// is the round's later commit. So the commit order of the whole run is known: each
/// round's other value, then its stored value. What an observer receives must follow that
/// order (a value dropped because a newer one was already pushed is fine; an older value
/// after a newer one is not).
#[tokio::test]
async fn racing_writers_on_two_replicas_leave_every_presence_with_the_stored_value() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("race", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let dave = member(&a, &mesh, "dave", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ca, _) = Client::join(&a.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut da, _) = Client::join(&b.ws_url(), dave.hello(&mesh, json!({}))).await;
    eventually("four peers listed on b", async || {
        let list = bo.request(ClientFrame::ListPeers).await;
        (list["peers"].as_array().unwrap().len() == 4).then_some(())
    })
    .await;

    const ROUNDS: usize = 40;
    let mut commit_order: Vec<Value> = Vec::new();
    for i in 0..ROUNDS {
        let (va, vb) = (json!(format!("alice-{i}")), json!(format!("bob-{i}")));
        tokio::join!(
            set_state(&mut al, "k", va.clone()),
            set_state(&mut bo, "k", vb.clone())
        );
        // Frames of one socket are handled in order: these replies follow the writes.
        tokio::join!(get_state(&mut al, "k"), get_state(&mut bo, "k"));
        let (stored, _) = get_state(&mut ca, "k").await;
        let first = if stored.value == va { vb } else { va };
        commit_order.push(first);
        commit_order.push(stored.value);
    }
    let (stored_on_b, _) = get_state(&mut da, "k").await;
    assert_eq!(
        &stored_on_b.value,
        commit_order.last().unwrap(),
        "both replicas read one value"
    );

    for (who, client) in [("carol on a", &mut ca), ("dave on b", &mut da)] {
        let mut seen = Vec::new();
        loop {
            let change = next_change(client, "k").await;
            seen.push(change.value.clone());
            if &change.value == commit_order.last().unwrap() {
                break;
            }
        }
        client
            .expect_none(Duration::from_millis(300), is_state_change)
            .await;
        let positions: Vec<usize> = seen
            .iter()
            .map(|v| commit_order.iter().position(|c| c == v).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{who} saw changes out of commit order: {seen:?}\ncommit order: {commit_order:?}"
        );
    }
}

#[tokio::test]
async fn a_memory_stored_on_a_is_recalled_on_b_once_and_forgotten_only_by_its_author_or_an_admin() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("memory", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let admin = member(&a, &mesh, "root", json!({"role": "admin"}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ad, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;

    let stored = remember(
        &mut al,
        "The staging cluster deploys from the release branch every Friday",
        &["ops", "deploy"],
    )
    .await;
    assert_eq!(stored.id, stored.memory_id);
    assert_eq!(stored.id.len(), 32);
    let other = remember(&mut al, "Lunch is at noon", &[]).await;

    // Full-text search in PostgreSQL, through the other replica: stemmed, ranked, tags
    // not searched, stop words alone find nothing.
    let found = recall(&mut bo, "deploying friday").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, stored.id);
    assert_eq!(found[0].remembered_by, "alice");
    assert_eq!(found[0].tags, vec!["ops", "deploy"]);
    assert!(found[0].remembered_at.ends_with('Z'));
    assert!(
        recall(&mut bo, "ops").await.is_empty(),
        "tags are not searched"
    );
    assert!(recall(&mut bo, "the and of").await.is_empty());

    // Not the author, not an admin: the same ack, nothing forgotten.
    bo.send(json!({"type": "forget", "memoryId": stored.id}))
        .await;
    let ack: ForgetAck = parse(&bo.expect("ack").await);
    assert_eq!((ack.id.as_str(), ack.queued), (stored.id.as_str(), false));
    assert_eq!(recall(&mut bo, "friday").await.len(), 1);
    // The author forgets on a; gone on b at once.
    al.send(json!({"type": "forget", "memoryId": stored.id}))
        .await;
    al.expect("ack").await;
    assert!(recall(&mut bo, "friday").await.is_empty());
    // An admin forgets anyone's.
    ad.send(json!({"type": "forget", "memoryId": other.id}))
        .await;
    ad.expect("ack").await;
    assert!(recall(&mut al, "lunch").await.is_empty());
}

/// Dev mode (memory store, one broker): both families work and refuse what is over their
/// bounds, each refusal counted.
#[tokio::test]
async fn dev_mode_serves_state_and_memory_within_their_bounds() {
    let b = Broker::start(&[
        ("MAX_STATE_KEYS_PER_MESH", "2"),
        ("MAX_STATE_KEY_BYTES", "8"),
        ("MAX_MEMORIES_PER_MESH", "2"),
        ("MAX_MEMORY_CONTENT_BYTES", "64"),
        ("MAX_MEMORY_TAGS", "2"),
        ("MAX_MEMORY_TAG_BYTES", "4"),
        ("MAX_RECALL_QUERY_BYTES", "16"),
    ]);
    let mesh = b.create_mesh("dev", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    al.expect_system("peer_joined").await;

    set_state(&mut al, "b", json!(2)).await;
    assert_eq!(next_change(&mut bo, "b").await.value, json!(2));
    set_state(&mut al, "a", json!([1])).await;
    assert_eq!(next_change(&mut bo, "a").await.updated_by, "alice");
    let list = list_state(&mut bo).await;
    let keys: Vec<&str> = list.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["a", "b"], "ordered by key");

    let refusal = |code: &'static str| move |v: &Value| v["code"] == code;
    set_state(&mut al, "c", json!(3)).await;
    assert_eq!(
        al.expect_where("error", refusal("too_many_keys")).await["message"],
        "this mesh already holds 2 state keys; set an existing key instead"
    );
    set_state(&mut al, "a", json!("existing keys still change")).await;
    assert_eq!(
        next_change(&mut bo, "a").await.value,
        json!("existing keys still change")
    );
    set_state(&mut al, "much-too-long", json!(1)).await;
    al.expect_where("error", refusal("key_too_long")).await;
    set_state(&mut al, "a", Value::Null).await;
    al.expect_where("error", refusal("invalid")).await;
    al.send(json!({"type": "set_state", "key": 5})).await;
    assert_eq!(al.expect("error").await["code"], "malformed");

    let stored = remember(&mut al, "Redis runs on port 6379", &["db"]).await;
    let found = recall(&mut bo, "REDIS port").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, stored.id);
    remember(&mut bo, "a second note", &[]).await;
    for (frame, code) in [
        (
            json!({"type": "remember", "content": "third"}),
            "too_many_memories",
        ),
        (
            json!({"type": "remember", "content": "x".repeat(65)}),
            "content_too_large",
        ),
        (
            json!({"type": "remember", "content": "x", "tags": ["a", "b", "c"]}),
            "too_many_tags",
        ),
        (
            json!({"type": "remember", "content": "x", "tags": ["toolong"]}),
            "tag_too_long",
        ),
        (json!({"type": "remember", "content": "  "}), "invalid"),
        (
            json!({"type": "recall", "query": "q".repeat(17)}),
            "query_too_long",
        ),
    ] {
        let reply = ask(&mut al, frame, &["error"]).await;
        assert_eq!(reply[0]["code"], code, "{}", reply[0]);
    }
    al.send(json!({"type": "forget", "memoryId": stored.id}))
        .await;
    al.expect("ack").await;
    assert!(recall(&mut bo, "redis").await.is_empty());

    let metrics = b.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"broker_state_requests_refused_total{reason="too_many_keys"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"broker_memory_requests_refused_total{reason="tag_too_long"}"#
        ),
        1.0
    );
}

/// The exact frames of `claudemesh state`/`remember`/`recall`/`forget` and of the daemon,
/// and the reply fields each matches on (extensions §0.2).
#[tokio::test]
async fn cli_and_daemon_frames_get_the_replies_they_match_on() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("cli", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    // Cold path `state set`: no `_reqId`, no reply of any kind.
    c.send(json!({"type": "set_state", "key": "build", "value": "green"}))
        .await;
    c.expect_none(Duration::from_millis(300), |_| true).await;
    // `state get`: `state_result` with a truthy key; then `state_value` for the daemon.
    c.send(json!({"type": "get_state", "key": "build", "_reqId": "g1"}))
        .await;
    let result = c.expect("state_result").await;
    assert_eq!(
        (
            result["_reqId"].clone(),
            result["key"].clone(),
            result["value"].clone()
        ),
        (json!("g1"), json!("build"), json!("green"))
    );
    assert_eq!(result["updatedBy"], "alice");
    let value = c.expect("state_value").await;
    assert_eq!(value["_reqId"], "g1");
    assert_eq!(value["state"]["value"], "green");
    assert_eq!(value["state"]["key"], "build");
    // A miss: `key:""` (the CLI prints "(not set)"), `state:null` for the daemon.
    c.send(json!({"type": "get_state", "key": "nope", "_reqId": "g2"}))
        .await;
    let miss = c.expect("state_result").await;
    assert_eq!(
        miss,
        json!({"type": "state_result", "key": "", "value": null, "updatedBy": "",
               "updatedAt": "", "_reqId": "g2"})
    );
    let miss = c.expect("state_value").await;
    assert_eq!(miss["state"], Value::Null);
    // `state list` and `info`'s `list_state`: `state_list.entries`.
    c.send(json!({"type": "list_state", "_reqId": "l1"})).await;
    let list = c.expect("state_list").await;
    assert_eq!(list["_reqId"], "l1");
    assert_eq!(list["entries"][0]["key"], "build");
    assert_eq!(list["entries"][0]["updatedBy"], "alice");

    // `remember`: `memory_stored.id` (cold path) and `.memoryId` (daemon).
    c.send(
        json!({"type": "remember", "content": "use pnpm, not npm", "tags": ["js"], "_reqId": "r1"}),
    )
    .await;
    let stored = c.expect("memory_stored").await;
    assert_eq!(stored["_reqId"], "r1");
    assert_eq!(stored["id"], stored["memoryId"]);
    // Tags omitted, as the CLI does without `--tags`.
    c.send(json!({"type": "remember", "content": "second", "_reqId": "r2"}))
        .await;
    c.expect("memory_stored").await;
    // `recall`: `memory_results.memories` (cold path) and `memory_recall_result.matches`.
    c.send(json!({"type": "recall", "query": "pnpm", "_reqId": "q1"}))
        .await;
    let results = c.expect("memory_results").await;
    assert_eq!(results["_reqId"], "q1");
    let row = &results["memories"][0];
    assert_eq!(row["id"], stored["id"]);
    assert_eq!(row["content"], "use pnpm, not npm");
    assert_eq!(row["tags"], json!(["js"]));
    assert_eq!(row["rememberedBy"], "alice");
    assert!(row["rememberedAt"].is_string());
    let matches = c.expect("memory_recall_result").await;
    assert_eq!(matches["_reqId"], "q1");
    assert_eq!(matches["matches"], results["memories"]);
    // `forget`: no `_reqId`; an `ack` naming the memory, also for an unknown id.
    c.send(json!({"type": "forget", "memoryId": stored["id"]}))
        .await;
    let ack = c.expect("ack").await;
    assert_eq!(
        ack,
        json!({"type": "ack", "id": stored["id"], "messageId": stored["id"], "queued": false})
    );
    c.send(json!({"type": "forget", "memoryId": "unknown", "_reqId": "f2"}))
        .await;
    let ack = c.expect("ack").await;
    assert_eq!(
        (ack["id"].clone(), ack["_reqId"].clone()),
        (json!("unknown"), json!("f2"))
    );

    // Before the handshake, every one of them is `no_hello`.
    let mut early = Client::connect(&b.ws_url()).await;
    for t in [
        "set_state",
        "get_state",
        "list_state",
        "remember",
        "recall",
        "forget",
    ] {
        early.send(json!({"type": t})).await;
        assert_eq!(early.expect("error").await["code"], "no_hello", "{t}");
    }
}

/// PostgreSQL is the truth: what a replica wrote outlives its SIGKILL, and while Redis is
/// down state and memories are still written and read (only the `state_change` pushes,
/// at most once, wait for the bus).
#[tokio::test]
async fn state_and_memories_outlive_a_killed_replica_and_a_redis_outage() {
    let mut c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("faults", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    set_state(&mut al, "owner", json!("alice")).await;
    let stored = remember(&mut al, "the pager rotation starts on Monday", &[]).await;
    // Answered in order after the write: committed before the kill.
    get_state(&mut al, "owner").await;
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(a.pid().to_string())
        .status()
        .unwrap();
    al.expect_gone().await;
    let (result, _) = get_state(&mut bo, "owner").await;
    assert_eq!(
        (result.value, result.updated_by.as_str()),
        (json!("alice"), "alice")
    );
    let found = recall(&mut bo, "pager rotation").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, stored.id);

    c.redis.stop();
    eventually("b notices the outage", async || {
        matches!(b.try_http("GET", "/health/ready", None, None), Ok((503, _))).then_some(())
    })
    .await;
    set_state(&mut bo, "owner", json!("bob")).await;
    let (result, value) = get_state(&mut bo, "owner").await;
    assert_eq!(result.value, json!("bob"));
    assert_eq!(value.state.unwrap().updated_by, "bob");
    remember(&mut bo, "written while Redis was down", &[]).await;
    assert_eq!(recall(&mut bo, "redis down").await.len(), 1);
    c.redis.restart();
    let a2 = c.replica("a2");
    let (mut again, _) = Client::join(&a2.ws_url(), alice.hello(&mesh, json!({}))).await;
    assert_eq!(get_state(&mut again, "owner").await.0.value, json!("bob"));
    assert_eq!(list_state(&mut again).await.entries.len(), 1);
}
