//! The peer file and directory relay (extensions §13) and the peer-hosted MCP registry
//! (§14): requests that travel between presences on different replicas and come back to
//! the requester only, their timeouts and bounds, the host's departure (a closed socket, a
//! SIGKILLed replica), dev mode, and the exact frames the CLI sends.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use broker::protocol::ext::mcp_registry::{
    McpCallForward, McpCallResult, McpListResult, McpRegisterAck,
};
use broker::protocol::ext::peer_relay::{
    DirRequestForward, DirResponseForward, FileRequestForward, FileResponseForward,
};
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// Waits until `c` lists `n` peers (routing reads the registry).
async fn peers(c: &mut Client, n: usize) {
    eventually("the peers are listed", async || {
        let list = c.request(ClientFrame::ListPeers).await;
        (list["peers"].as_array().unwrap().len() == n).then_some(())
    })
    .await;
}

/// `owner` lets `requester` read its files (grant `file-read`; the defaults exclude it).
fn grant_file_read(b: &Broker, mesh: &str, owner: &Member, requester: &Member) {
    let (status, v) = b.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", owner.id),
        Some(json!({"grants": {requester.identity.pubkey.clone(): ["dm", "broadcast", "file-read"]}})),
    );
    assert_eq!(status, 200, "{v}");
}

fn register(name: &str, tools: &[&str], persistent: bool) -> Value {
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| json!({"name": t, "description": format!("the {t} tool"), "inputSchema": {"type": "object", "properties": {}}}))
        .collect();
    json!({"type": "mcp_register", "serverName": name, "description": format!("{name} server"),
           "tools": tools, "persistent": persistent})
}

fn mcp_call(server: &str, tool: &str, args: Value) -> Value {
    json!({"type": "mcp_call", "serverName": server, "toolName": tool, "args": args})
}

fn is_result_of(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| v["_reqId"] == id
}

#[tokio::test]
async fn a_file_request_on_a_reaches_the_owner_on_b_and_only_the_requester_gets_the_answer() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("relay", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let eve = member(&a, &mesh, "eve", json!({}));
    grant_file_read(&a, &mesh, &bob, &alice);
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ev, _) = Client::join(&a.ws_url(), eve.hello(&mesh, json!({}))).await;
    peers(&mut al, 3).await;

    al.send(
        json!({"type": "peer_file_request", "targetPubkey": bob.identity.pubkey,
                   "filePath": "notes/todo.md", "_reqId": "f1"}),
    )
    .await;
    let fwd: FileRequestForward = parse(&bo.expect("peer_file_request_forward").await);
    assert_eq!(fwd.requester_pubkey, alice.identity.pubkey);
    assert_eq!(fwd.file_path, "notes/todo.md");
    assert_eq!(
        fwd.req_id.len(),
        32,
        "the broker's relay id, not the requester's"
    );
    assert_ne!(fwd.req_id, "f1");

    // Someone who learns the relay id cannot answer in the owner's place.
    ev.send(
        json!({"type": "peer_file_response", "requesterPubkey": alice.identity.pubkey,
                   "filePath": "notes/todo.md", "content": "ZXZpbA==", "_reqId": fwd.req_id}),
    )
    .await;
    // The owner's answer reaches the requester, with the requester's own _reqId.
    bo.send(
        json!({"type": "peer_file_response", "requesterPubkey": alice.identity.pubkey,
                   "filePath": "notes/todo.md", "content": "aGVsbG8=", "_reqId": fwd.req_id}),
    )
    .await;
    let back: FileResponseForward = parse(&al.expect("peer_file_response_forward").await);
    assert_eq!(
        back,
        FileResponseForward {
            file_path: "notes/todo.md".into(),
            content: Some("aGVsbG8=".into()),
            error: None,
            req_id: Some("f1".into()),
        }
    );
    // Answered once: a second answer is dropped; nobody else saw anything.
    bo.send(
        json!({"type": "peer_file_response", "requesterPubkey": alice.identity.pubkey,
                   "filePath": "notes/todo.md", "content": "YWdhaW4=", "_reqId": fwd.req_id}),
    )
    .await;
    al.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "peer_file_response_forward"
    })
    .await;
    ev.expect_none(Duration::from_millis(100), |v| {
        v["type"].as_str().unwrap_or_default().starts_with("peer_")
    })
    .await;

    // A directory listing the same way, from the other replica's side.
    al.send(
        json!({"type": "peer_dir_request", "targetPubkey": bob.identity.pubkey,
                   "dirPath": "src", "pattern": "*.rs", "_reqId": "d1"}),
    )
    .await;
    let fwd: DirRequestForward = parse(&bo.expect("peer_dir_request_forward").await);
    assert_eq!(fwd.pattern.as_deref(), Some("*.rs"));
    bo.send(
        json!({"type": "peer_dir_response", "requesterPubkey": alice.identity.pubkey,
                   "dirPath": "src", "entries": ["main.rs", "lib.rs"], "_reqId": fwd.req_id}),
    )
    .await;
    let back: DirResponseForward = parse(&al.expect("peer_dir_response_forward").await);
    assert_eq!(back.entries, Some(vec!["main.rs".into(), "lib.rs".into()]));
    assert_eq!(back.req_id.as_deref(), Some("d1"));

    // Eve has no file-read grant from bob; nobody has the key 00…
    let refused = ev
        .request(json!({"type": "peer_file_request", "targetPubkey": bob.identity.pubkey, "filePath": "x"}))
        .await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    bo.expect_none(Duration::from_millis(200), |v| {
        v["type"] == "peer_file_request_forward"
    })
    .await;
    let missing = al
        .request(
            json!({"type": "peer_file_request", "targetPubkey": "00".repeat(32), "filePath": "x"}),
        )
        .await;
    assert_eq!(missing["code"], "peer_not_found");
    assert_eq!(missing["message"], "target peer not connected");
    let metrics = a.metrics();
    assert_eq!(
        metric(
            &metrics,
            "broker_relay_requests_refused_total{reason=\"forbidden\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &b.metrics(),
            "broker_peer_requests_finished_total{reason=\"answered\"}"
        ) >= 2.0
    );
}

#[tokio::test]
async fn relays_time_out_are_bounded_per_presence_and_fail_when_the_target_leaves_in_dev_mode() {
    let b = Broker::start(&[
        ("PEER_RELAY_TIMEOUT_MS", "1000"),
        ("MAX_PENDING_PEER_REQUESTS_PER_PRESENCE", "2"),
    ]);
    let mesh = b.create_mesh("relay-dev", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    grant_file_read(&b, &mesh, &bob, &alice);
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    peers(&mut al, 2).await;

    let file = |id: &str| {
        json!({"type": "peer_file_request", "targetPubkey": bob.identity.pubkey,
               "filePath": format!("{id}.txt"), "_reqId": id})
    };
    al.send(file("t1")).await;
    al.send(file("t2")).await;
    let full = al.request(file("t3")).await;
    assert_eq!(full["code"], "too_many_pending", "{full}");
    bo.expect("peer_file_request_forward").await;
    bo.expect("peer_file_request_forward").await;
    // Bob never answers: each request times out, with its own _reqId.
    for id in ["t1", "t2"] {
        let back: FileResponseForward = parse(
            &al.expect_where("peer_file_response_forward", is_result_of(id))
                .await,
        );
        assert_eq!(back.error.as_deref(), Some("peer did not answer within 1s"));
        assert_eq!(back.file_path, format!("{id}.txt"));
    }
    assert_eq!(
        metric(
            &b.metrics(),
            "broker_peer_requests_finished_total{reason=\"timed_out\"}"
        ),
        2.0
    );

    // Room again; then the target's socket closes mid-request: the requester is told at once.
    al.send(file("t4")).await;
    bo.expect("peer_file_request_forward").await;
    bo.close().await;
    let back: FileResponseForward = parse(
        &al.expect_where("peer_file_response_forward", is_result_of("t4"))
            .await,
    );
    assert_eq!(back.error.as_deref(), Some("target peer disconnected"));
    eventually("the timers are done", async || {
        (metric(&b.metrics(), "broker_peer_requests_pending") == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_mcp_call_on_a_reaches_the_host_on_b_and_only_the_registering_member_changes_it() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("mcp", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let eve = member(&a, &mesh, "eve", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ev, _) = Client::join(&a.ws_url(), eve.hello(&mesh, json!({}))).await;
    peers(&mut al, 3).await;

    let ack: McpRegisterAck = parse(&bo.request(register("fs", &["read", "write"], false)).await);
    assert_eq!((ack.server_name.as_str(), ack.tool_count), ("fs", 2));
    let announced = al.expect_system("mcp_registered").await;
    assert_eq!(
        announced["eventData"],
        json!({"serverName": "fs", "description": "fs server", "tools": ["read", "write"], "hostedBy": "bob"})
    );
    assert_eq!(announced["priority"], "low");
    bo.expect_none(Duration::from_millis(200), |v| {
        v["event"] == "mcp_registered"
    })
    .await;

    let list: McpListResult = parse(&al.request(json!({"type": "mcp_list"})).await);
    assert_eq!(list.servers.len(), 1);
    let fs = &list.servers[0];
    assert_eq!(
        (fs.name.as_str(), fs.hosted_by.as_str(), fs.online),
        ("fs", "bob", true)
    );
    assert_eq!(fs.tools[1].name, "write");
    assert_eq!(fs.offline_since, None);

    al.send(
        json!({"type": "mcp_call", "serverName": "fs", "toolName": "read",
                   "args": {"path": "a.txt"}, "_reqId": "c1"}),
    )
    .await;
    let fwd: McpCallForward = parse(&bo.expect("mcp_call_forward").await);
    assert_eq!(fwd.call_id.len(), 36);
    assert_eq!(
        (
            fwd.server_name.as_str(),
            fwd.tool_name.as_str(),
            fwd.caller_name.as_str()
        ),
        ("fs", "read", "alice")
    );
    assert_eq!(fwd.args, json!({"path": "a.txt"}));
    // The answer counts only from the presence the call went to.
    ev.send(json!({"type": "mcp_call_response", "callId": fwd.call_id, "result": "forged"}))
        .await;
    bo.send(json!({"type": "mcp_call_response", "callId": fwd.call_id,
                   "result": {"content": [{"type": "text", "text": "hello"}]}}))
        .await;
    let result: McpCallResult = parse(&al.expect("mcp_call_result").await);
    assert_eq!(
        result,
        McpCallResult {
            result: Some(json!({"content": [{"type": "text", "text": "hello"}]})),
            error: None,
            req_id: Some("c1".into()),
        }
    );
    al.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "mcp_call_result"
    })
    .await;

    // Another member can neither replace nor remove it.
    let hijack = ev.request(register("fs", &["steal"], false)).await;
    assert_eq!(hijack["code"], "forbidden", "{hijack}");
    let removal = ev
        .request(json!({"type": "mcp_unregister", "serverName": "fs"}))
        .await;
    assert_eq!(removal["code"], "forbidden");
    let list: McpListResult = parse(&al.request(json!({"type": "mcp_list"})).await);
    assert_eq!(list.servers[0].hosted_by, "bob");
    assert_eq!(list.servers[0].tools.len(), 2);

    // The host unregisters: the others are told, and a call finds nothing.
    bo.send(json!({"type": "mcp_unregister", "serverName": "fs"}))
        .await;
    let gone = al.expect_system("mcp_unregistered").await;
    assert_eq!(
        gone["eventData"],
        json!({"serverName": "fs", "hostedBy": "bob"})
    );
    let missing: McpCallResult = parse(&al.request(mcp_call("fs", "read", json!({}))).await);
    assert_eq!(
        missing.error,
        Some(json!("MCP server \"fs\" not found in mesh"))
    );
    assert_eq!(
        metric(
            &a.metrics(),
            "broker_mcp_requests_refused_total{reason=\"forbidden\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn the_hosts_disconnect_fails_its_calls_at_once_and_a_reregistration_elsewhere_takes_over() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("mcp-takeover", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    peers(&mut al, 2).await;
    bo.request(register("db", &["query"], false)).await;

    // Bob registers the name again through a second connection, on replica a: it takes over.
    let (mut bo2, _) = Client::join(
        &a.ws_url(),
        bob.hello(&mesh, json!({"displayName": "bob-laptop"})),
    )
    .await;
    let ack: McpRegisterAck = parse(
        &bo2.request(register("db", &["query", "explain"], false))
            .await,
    );
    assert_eq!(ack.tool_count, 2);
    al.send(
        json!({"type": "mcp_call", "serverName": "db", "toolName": "explain",
                   "args": {}, "_reqId": "c2"}),
    )
    .await;
    let fwd: McpCallForward = parse(&bo2.expect("mcp_call_forward").await);
    bo.expect_none(Duration::from_millis(200), |v| {
        v["type"] == "mcp_call_forward"
    })
    .await;

    // The host's socket closes mid-call: the caller is told at once (not after 30 s).
    bo2.close().await;
    let failed: McpCallResult =
        parse(&al.expect_where("mcp_call_result", is_result_of("c2")).await);
    assert_eq!(
        failed.error,
        Some(json!("MCP server \"db\" host disconnected"))
    );
    // A late answer from the departed host matches nothing.
    assert_eq!(fwd.server_name, "db");
    let late: McpCallResult = parse(&al.request(mcp_call("db", "query", json!({}))).await);
    assert_eq!(
        late.error,
        Some(json!("MCP server \"db\" host disconnected"))
    );
}

#[tokio::test]
async fn a_call_to_a_host_whose_replica_is_killed_fails_instead_of_hanging() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("mcp-kill", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    grant_file_read(&a, &mesh, &bob, &alice);
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    peers(&mut al, 2).await;
    bo.request(register("search", &["find"], false)).await;
    al.send(
        json!({"type": "mcp_call", "serverName": "search", "toolName": "find",
                   "args": {"q": "x"}, "_reqId": "k1"}),
    )
    .await;
    bo.expect("mcp_call_forward").await;
    // A relayed read waits on the same host.
    al.send(
        json!({"type": "peer_dir_request", "targetPubkey": bob.identity.pubkey,
                   "dirPath": ".", "_reqId": "k2"}),
    )
    .await;
    bo.expect("peer_dir_request_forward").await;

    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(b.pid().to_string())
        .status()
        .unwrap();
    // The survivor reaps b's presences (NODE_DEAD_AFTER_MS 2 s in tests), well before the
    // 30 s call timeout.
    let failed: McpCallResult =
        parse(&al.expect_where("mcp_call_result", is_result_of("k1")).await);
    assert_eq!(
        failed.error,
        Some(json!("MCP server \"search\" host disconnected"))
    );
    let dir: DirResponseForward = parse(
        &al.expect_where("peer_dir_response_forward", is_result_of("k2"))
            .await,
    );
    assert_eq!(dir.error.as_deref(), Some("target peer disconnected"));
    let list: McpListResult = parse(&al.request(json!({"type": "mcp_list"})).await);
    assert!(
        list.servers.is_empty(),
        "a non-persistent entry leaves with its host"
    );
}

#[tokio::test]
async fn dev_mode_bounds_timeouts_and_persistent_entries_that_go_offline_and_come_back() {
    let b = Broker::start(&[
        ("MCP_CALL_TIMEOUT_MS", "1000"),
        ("MAX_MCP_SERVERS_PER_MESH", "2"),
        ("MAX_MCP_TOOLS", "3"),
        ("LEASE_GRACE_MS", "200"),
    ]);
    let mesh = b.create_mesh("mcp-dev", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    peers(&mut al, 2).await;

    let many = bo
        .request(register("big", &["a", "b", "c", "d"], false))
        .await;
    assert_eq!(many["code"], "field_too_large", "{many}");
    let nameless = bo.request(register("", &[], false)).await;
    assert_eq!(nameless["code"], "invalid");
    bo.request(register("one", &["a"], true)).await;
    bo.request(register("two", &["a"], false)).await;
    let full = bo.request(register("three", &["a"], false)).await;
    assert_eq!(full["code"], "too_many_mcp_servers");
    // Replacing an existing name is no new entry.
    let again: McpRegisterAck = parse(&bo.request(register("two", &["a", "b"], false)).await);
    assert_eq!(again.tool_count, 2);

    // The host never answers: the call times out with the spec's text.
    let timed_out: McpCallResult = parse(&al.request(mcp_call("one", "a", json!({}))).await);
    assert_eq!(timed_out.error, Some(json!("MCP call timed out (1s)")));
    bo.expect("mcp_call_forward").await;

    // The host leaves for good: the persistent entry stays offline, the other goes.
    bo.close().await;
    al.expect_system("peer_left").await;
    let list: McpListResult = parse(&al.request(json!({"type": "mcp_list"})).await);
    assert_eq!(list.servers.len(), 1, "{list:?}");
    assert_eq!(list.servers[0].name, "one");
    assert!(!list.servers[0].online);
    assert!(
        list.servers[0]
            .offline_since
            .as_deref()
            .unwrap()
            .ends_with('Z')
    );
    let offline: McpCallResult = parse(&al.request(mcp_call("one", "a", json!({}))).await);
    let text = offline.error.unwrap();
    let text = text.as_str().unwrap();
    assert!(
        text.starts_with("Server 'one' is offline — hosted by bob who disconnected ")
            && text.ends_with(" ago. It will restore when they reconnect."),
        "{text}"
    );

    // Bob says hello again: the entry is restored with the new presence as host.
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let restored = al.expect_system("mcp_restored").await;
    assert_eq!(
        restored["eventData"],
        json!({"serverName": "one", "hostedBy": "bob"})
    );
    al.send(json!({"type": "mcp_call", "serverName": "one", "toolName": "a", "args": {}, "_reqId": "r"}))
        .await;
    let fwd: McpCallForward = parse(&bo.expect("mcp_call_forward").await);
    bo.send(json!({"type": "mcp_call_response", "callId": fwd.call_id, "result": 42}))
        .await;
    let result: McpCallResult = parse(&al.expect_where("mcp_call_result", is_result_of("r")).await);
    assert_eq!(result.result, Some(json!(42)));
}

/// The `--service` MCP proxy and `claudemesh mesh-mcp list|call` (cold-path client): the
/// frames it sends, the reply types it matches (tolerant: `_reqId`, else the oldest waiting
/// request of the type), and the host side's frames as the CLI writes them.
#[tokio::test]
async fn the_cli_frames_get_the_reply_types_and_fields_the_cli_matches_on() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("mcp-cli", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    peers(&mut al, 2).await;

    // An empty registry: a typed empty list and the reference's not-found text, at once.
    al.send(json!({"type": "mcp_list", "_reqId": "l1"})).await;
    let list = al.expect("mcp_list_result").await;
    assert_eq!(
        list,
        json!({"type": "mcp_list_result", "servers": [], "_reqId": "l1"})
    );
    al.send(json!({"type": "mcp_call", "serverName": "gh", "toolName": "issues", "args": {}, "_reqId": "c0"}))
        .await;
    let none = al.expect("mcp_call_result").await;
    assert_eq!(
        none,
        json!({"type": "mcp_call_result", "error": "MCP server \"gh\" not found in mesh", "_reqId": "c0"})
    );

    // A host registers (no _reqId), is listed, and answers a forward it has no handler for
    // with the CLI's own error text; a call without _reqId gets a result without one.
    bo.send(register("gh", &["issues"], false)).await;
    bo.expect("mcp_register_ack").await;
    let list = al.request(json!({"type": "mcp_list"})).await;
    assert_eq!(
        list["servers"][0],
        json!({"name": "gh", "description": "gh server", "hostedBy": "bob",
               "tools": [{"name": "issues", "description": "the issues tool"}], "online": true})
    );
    al.send(json!({"type": "mcp_call", "serverName": "gh", "toolName": "issues", "args": {"state": "open"}}))
        .await;
    let fwd = bo.expect("mcp_call_forward").await;
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = fwd
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    };
    assert_eq!(
        keys,
        [
            "args",
            "callId",
            "callerName",
            "serverName",
            "toolName",
            "type"
        ]
    );
    bo.send(json!({"type": "mcp_call_response", "callId": fwd["callId"],
                   "error": "No MCP call handler registered on this peer"}))
        .await;
    let result = al.expect("mcp_call_result").await;
    assert_eq!(
        result,
        json!({"type": "mcp_call_result", "error": "No MCP call handler registered on this peer"})
    );
    // Fire-and-forget frames stay silent (an error would release another pending request).
    bo.send(json!({"type": "mcp_call_response", "callId": "nope", "result": 1}))
        .await;
    bo.send(
        json!({"type": "peer_file_response", "requesterPubkey": alice.identity.pubkey,
                   "filePath": "x", "content": ""}),
    )
    .await;
    bo.send(json!({"type": "mcp_unregister", "serverName": "gh"}))
        .await;
    bo.expect_none(Duration::from_millis(300), |v| {
        v["type"] == "error" || v["type"] == "mcp_call_result"
    })
    .await;
    al.expect_system("mcp_unregistered").await;
}

/// **Ours:** persistent entries are kept in PostgreSQL: after every replica restarted and
/// Redis lost its data, the entry is listed offline, calls get the offline text, and its
/// member's next `hello` (on any replica) restores it.
#[tokio::test]
async fn a_persistent_entry_survives_a_restart_of_everything_and_comes_back_with_its_host() {
    let mut c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("mcp-persist", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let mut bo = bo;
    bo.request(register("notes", &["search"], true)).await;
    bo.request(register("scratch", &["x"], false)).await;
    bo.abort();
    drop((a, b));
    c.redis.stop();
    c.redis.restart();

    let (a, b) = (c.replica("a2"), c.replica("b2"));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let list: McpListResult = parse(&al.request(json!({"type": "mcp_list"})).await);
    assert_eq!(list.servers.len(), 1, "{list:?}");
    let notes = &list.servers[0];
    assert_eq!((notes.name.as_str(), notes.online), ("notes", false));
    assert!(notes.offline_since.is_some());
    assert_eq!(notes.tools[0].name, "search");
    let offline: McpCallResult = parse(&al.request(mcp_call("notes", "search", json!({}))).await);
    assert!(
        offline
            .error
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("Server 'notes' is offline — hosted by bob"),
    );
    // Nobody else can take the name meanwhile.
    let taken = al.request(register("notes", &["steal"], false)).await;
    assert_eq!(taken["code"], "forbidden");

    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let restored = al.expect_system("mcp_restored").await;
    assert_eq!(
        restored["eventData"],
        json!({"serverName": "notes", "hostedBy": "bob"})
    );
    al.send(
        json!({"type": "mcp_call", "serverName": "notes", "toolName": "search",
                   "args": {"q": "todo"}, "_reqId": "p1"}),
    )
    .await;
    let fwd: McpCallForward = parse(&bo.expect("mcp_call_forward").await);
    bo.send(json!({"type": "mcp_call_response", "callId": fwd.call_id, "result": ["todo.md"]}))
        .await;
    let result: McpCallResult =
        parse(&al.expect_where("mcp_call_result", is_result_of("p1")).await);
    assert_eq!(result.result, Some(json!(["todo.md"])));
    // Unregistered by its host, it is gone from the store too.
    bo.send(json!({"type": "mcp_unregister", "serverName": "notes"}))
        .await;
    al.expect_system("mcp_unregistered").await;
    drop((a, b));
    let a = c.replica("a3");
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let list: McpListResult = parse(&al.request(json!({"type": "mcp_list"})).await);
    assert!(list.servers.is_empty(), "{list:?}");
}

/// The replica's bound counts the timers it keeps, whoever the requesters are; an answered
/// request gives its slot back.
#[tokio::test]
async fn the_per_replica_bound_holds_and_an_answer_frees_its_slot() {
    let b = Broker::start(&[("MAX_PENDING_PEER_REQUESTS_PER_REPLICA", "1")]);
    let mesh = b.create_mesh("relay-replica", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    grant_file_read(&b, &mesh, &bob, &alice);
    grant_file_read(&b, &mesh, &bob, &carol);
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut ca, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    peers(&mut al, 3).await;
    let file =
        json!({"type": "peer_file_request", "targetPubkey": bob.identity.pubkey, "filePath": "f"});

    al.send(
        json!({"type": "peer_file_request", "targetPubkey": bob.identity.pubkey,
                   "filePath": "f", "_reqId": "a1"}),
    )
    .await;
    let fwd: FileRequestForward = parse(&bo.expect("peer_file_request_forward").await);
    let full = ca.request(file.clone()).await;
    assert_eq!(full["code"], "too_many_pending");
    assert!(
        full["message"]
            .as_str()
            .unwrap()
            .contains("MAX_PENDING_PEER_REQUESTS_PER_REPLICA"),
        "{full}"
    );
    bo.send(
        json!({"type": "peer_file_response", "requesterPubkey": alice.identity.pubkey,
                   "filePath": "f", "content": "", "_reqId": fwd.req_id}),
    )
    .await;
    al.expect_where("peer_file_response_forward", is_result_of("a1"))
        .await;
    eventually("the answered request's slot is free", async || {
        (metric(&b.metrics(), "broker_peer_requests_pending") == 0.0).then_some(())
    })
    .await;
    ca.send(
        json!({"type": "peer_file_request", "targetPubkey": bob.identity.pubkey,
                   "filePath": "f", "_reqId": "c1"}),
    )
    .await;
    bo.expect("peer_file_request_forward").await;
    assert_eq!(
        metric(
            &b.metrics(),
            "broker_relay_requests_refused_total{reason=\"too_many_pending\"}"
        ),
        1.0
    );
}

/// A pending request belongs to the requester's presence, not its socket (extensions §0.6):
/// a requester that reattaches on the other replica meanwhile still gets the answer.
#[tokio::test]
async fn an_answer_follows_a_requester_that_reattached_on_the_other_replica() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("relay-reattach", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    grant_file_read(&a, &mesh, &bob, &alice);
    let session = json!({"sessionId": "alice-session-1"});
    let (mut al, ack) = Client::join(&a.ws_url(), alice.hello(&mesh, session.clone())).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    peers(&mut al, 2).await;
    bo.request(register("kv", &["get"], false)).await;

    al.send(
        json!({"type": "peer_file_request", "targetPubkey": bob.identity.pubkey,
                   "filePath": "a.txt", "_reqId": "r1"}),
    )
    .await;
    al.send(
        json!({"type": "mcp_call", "serverName": "kv", "toolName": "get",
                   "args": {}, "_reqId": "r2"}),
    )
    .await;
    let file: FileRequestForward = parse(&bo.expect("peer_file_request_forward").await);
    let call: McpCallForward = parse(&bo.expect("mcp_call_forward").await);
    al.abort();
    let (mut al, again) = Client::join(&b.ws_url(), alice.hello(&mesh, session)).await;
    assert!(ack["presenceId"].is_string());
    assert_eq!(again["presenceId"], ack["presenceId"], "a reattach");

    bo.send(
        json!({"type": "peer_file_response", "requesterPubkey": alice.identity.pubkey,
                   "filePath": "a.txt", "content": "aGk=", "_reqId": file.req_id}),
    )
    .await;
    bo.send(json!({"type": "mcp_call_response", "callId": call.call_id, "result": "v"}))
        .await;
    let back: FileResponseForward = parse(
        &al.expect_where("peer_file_response_forward", is_result_of("r1"))
            .await,
    );
    assert_eq!(back.content.as_deref(), Some("aGk="));
    let result: McpCallResult =
        parse(&al.expect_where("mcp_call_result", is_result_of("r2")).await);
    assert_eq!(result.result, Some(json!("v")));
}
