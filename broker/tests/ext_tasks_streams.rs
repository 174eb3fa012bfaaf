//! Tasks (extensions §3) and streams (extensions §4): a claim has exactly one winner across
//! replicas; a publish on one replica reaches the subscribers on the other once each, in
//! order, never the publisher; subscriptions follow their presence to another replica and
//! end with it. Dev-mode runs of both families, their bounds, and the exact frames the CLI
//! sends.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use broker::protocol::ext::streams::{StreamData, StreamFrame, StreamList};
use broker::protocol::ext::tasks::{CreateTask, ListTasks, TaskCreated, TaskFrame, TaskList};
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// Sends `frame` with `_reqId` `id` without waiting.
async fn send_with_id(c: &mut Client, frame: impl serde::Serialize, id: &str) {
    let mut v = to_json(&frame);
    v["_reqId"] = json!(id);
    c.send(v).await;
}

/// The next frame carrying `_reqId` `id` (system events before it are dropped).
async fn reply_to(c: &mut Client, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Some(Event::Frame(f)) if f["_reqId"] == json!(id) => return f,
            Some(Event::Frame(_)) => continue,
            other => panic!("no reply {id}: {other:?}"),
        }
    }
}

fn create_task(title: &str) -> TaskFrame {
    TaskFrame::CreateTask(CreateTask {
        title: title.into(),
        ..CreateTask::default()
    })
}

fn claim(id: &str) -> TaskFrame {
    TaskFrame::ClaimTask { task_id: id.into() }
}

fn complete(id: &str, result: Option<&str>) -> TaskFrame {
    TaskFrame::CompleteTask {
        task_id: id.into(),
        result: result.map(str::to_string),
    }
}

fn list_tasks() -> TaskFrame {
    TaskFrame::ListTasks(ListTasks::default())
}

fn publish(stream: &str, data: Value) -> StreamFrame {
    StreamFrame::Publish {
        stream: stream.into(),
        data,
    }
}

fn subscribe(stream: &str) -> StreamFrame {
    StreamFrame::Subscribe {
        stream: stream.into(),
    }
}

fn is_stream_data(v: &Value) -> bool {
    v["type"] == "stream_data"
}

/// The subscriber count of `name` in a `stream_list` reply.
fn count_of(list: &Value, name: &str) -> usize {
    let list: StreamList = parse(list);
    list.streams
        .iter()
        .find(|s| s.name == name)
        .map_or(0, |s| s.subscriber_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_claims_over_two_replicas_have_exactly_one_winner() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("claims", None);
    let creator = member(&a, &mesh, "creator", json!({}));
    let (mut cc, _) = Client::join(&a.ws_url(), creator.hello(&mesh, json!({}))).await;
    let created: TaskCreated = parse(&cc.request(create_task("the one task")).await);

    // 50 presences (10 members × 5 sessions), alternating between the replicas.
    let mut claimers = Vec::new();
    for m in 0..10 {
        let who = member(&a, &mesh, &format!("claimer-{m}"), json!({}));
        for s in 0..5 {
            let replica = if (m * 5 + s) % 2 == 0 { &a } else { &b };
            let hello = who.hello(&mesh, json!({"sessionId": format!("c{m}-{s}")}));
            let (client, _) = Client::join(&replica.ws_url(), hello).await;
            claimers.push((format!("claimer-{m}"), client));
        }
    }
    // Every claim is on the wire before any reply is read.
    for (i, (_, client)) in claimers.iter_mut().enumerate() {
        send_with_id(client, claim(&created.id), &format!("claim-{i}")).await;
    }
    let mut winners = Vec::new();
    for (i, (name, client)) in claimers.iter_mut().enumerate() {
        let reply = reply_to(client, &format!("claim-{i}")).await;
        match reply["type"].as_str() {
            Some("task_list") => {
                let list: TaskList = parse(&reply);
                let row = list.tasks.iter().find(|t| t.id == created.id).unwrap();
                assert_eq!(row.status, "claimed");
                assert_eq!(row.claimed_by.as_deref(), Some(name.as_str()));
                winners.push(name.clone());
            }
            Some("error") => {
                assert_eq!(reply["code"], "task_not_claimable", "{reply}");
                assert_eq!(reply["message"], "task is not open or does not exist");
            }
            _ => panic!("unexpected reply {reply}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");

    // Both replicas see the one claim.
    for (_, client) in claimers.iter_mut().take(2) {
        let list: TaskList = parse(&client.request(list_tasks()).await);
        assert_eq!(list.tasks.len(), 1);
        assert_eq!(
            list.tasks[0].claimed_by.as_deref(),
            Some(winners[0].as_str())
        );
    }
    let refused = |m: &str| {
        metric(
            m,
            r#"broker_task_requests_refused_total{reason="not_claimable"}"#,
        )
    };
    assert_eq!(refused(&a.metrics()) + refused(&b.metrics()), 49.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_b_reaches_each_subscriber_on_a_once_in_order_never_the_publisher() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("streams", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let pub_member = member(&a, &mesh, "publisher", json!({}));
    let (mut s1, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut s2, _) = Client::join(&a.ws_url(), bob.hello(&mesh, json!({}))).await;
    // A sibling session of the publisher's member, on the publisher's replica.
    let (mut s3, _) = Client::join(
        &b.ws_url(),
        pub_member.hello(&mesh, json!({"sessionId": "sibling"})),
    )
    .await;
    let (mut p, _) = Client::join(&b.ws_url(), pub_member.hello(&mesh, json!({}))).await;
    let created = p
        .request(StreamFrame::CreateStream {
            name: "ticks".into(),
        })
        .await;
    assert_eq!(created["type"], "stream_created");
    for client in [&mut s1, &mut s2, &mut s3, &mut p] {
        let ok = client.request(subscribe("ticks")).await;
        assert_eq!(ok["type"], "subscribed", "{ok}");
        assert_eq!(ok["stream"], "ticks");
    }
    // The count is cluster-wide, the same from either replica.
    assert_eq!(
        count_of(&s1.request(StreamFrame::ListStreams).await, "ticks"),
        4
    );
    assert_eq!(
        count_of(&p.request(StreamFrame::ListStreams).await, "ticks"),
        4
    );

    for n in 0..20 {
        p.send(publish("ticks", json!({"n": n}))).await;
    }
    for client in [&mut s1, &mut s2, &mut s3] {
        for n in 0..20 {
            let got: StreamData = parse(&client.expect("stream_data").await);
            assert_eq!(got.stream, "ticks");
            assert_eq!(got.data, json!({"n": n}), "in publish order");
            assert_eq!(got.published_by, "publisher");
        }
    }
    // Once each, and never to the publishing presence.
    s1.expect_none(Duration::from_millis(300), is_stream_data)
        .await;
    s3.expect_none(Duration::from_millis(100), is_stream_data)
        .await;
    p.expect_none(Duration::from_millis(100), is_stream_data)
        .await;
    assert_eq!(
        metric(
            &b.metrics(),
            r#"broker_messages_routed_total{priority="stream"}"#
        ),
        20.0
    );

    // After an unsubscribe on A, a publish on B skips that presence.
    s2.send(StreamFrame::Unsubscribe {
        stream: "ticks".into(),
    })
    .await;
    // Frames of one socket are handled in order: once this is answered, so is the unsubscribe.
    s2.request(StreamFrame::ListStreams).await;
    assert_eq!(
        count_of(&p.request(StreamFrame::ListStreams).await, "ticks"),
        3
    );
    p.send(publish("ticks", json!("last"))).await;
    assert_eq!(s1.expect("stream_data").await["data"], "last");
    s2.expect_none(Duration::from_millis(300), is_stream_data)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscriptions_follow_their_presence_to_the_other_replica() {
    let c = Cluster::new(&[("LEASE_GRACE_MS", "30000")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("reattach", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let hello = || bob.hello(&mesh, json!({"sessionId": "bob-daemon"}));
    let (mut p, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut sub, first) = Client::join(&a.ws_url(), hello()).await;
    p.request(StreamFrame::CreateStream {
        name: "logs".into(),
    })
    .await;
    assert_eq!(sub.request(subscribe("logs")).await["type"], "subscribed");

    // The subscriber's socket drops; it comes back on the other replica within grace.
    sub.abort();
    let (mut sub, second) = Client::join(&b.ws_url(), hello()).await;
    assert_eq!(first["presenceId"], second["presenceId"], "same presence");
    p.send(publish("logs", json!({"line": 1}))).await;
    let got = sub.expect("stream_data").await;
    assert_eq!(got["data"], json!({"line": 1}));
    assert_eq!(got["publishedBy"], "alice");
    assert_eq!(
        count_of(&p.request(StreamFrame::ListStreams).await, "logs"),
        1
    );
    sub.expect_none(Duration::from_millis(300), is_stream_data)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscriptions_end_with_their_presence() {
    let c = Cluster::new(&[("LEASE_GRACE_MS", "300")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("ending", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut p, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut sub, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    p.request(StreamFrame::CreateStream {
        name: "logs".into(),
    })
    .await;
    sub.request(subscribe("logs")).await;
    assert_eq!(
        count_of(&p.request(StreamFrame::ListStreams).await, "logs"),
        1
    );
    sub.close().await;
    p.expect_system("peer_left").await;
    // Dropped from the registry when the presence ended (before its peers were told), not
    // merely filtered out when read.
    let client = ::redis::Client::open(c.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for pattern in ["*:spres:*", "*:sstream:*"] {
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(keys.is_empty(), "{keys:?}");
    }
    // The presence ended for good: its subscription is gone from the registry itself (a
    // new presence of the same member starts with none).
    assert_eq!(
        count_of(&p.request(StreamFrame::ListStreams).await, "logs"),
        0
    );
    let (mut again, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    p.send(publish("logs", json!("unseen"))).await;
    again
        .expect_none(Duration::from_millis(300), is_stream_data)
        .await;
}

#[tokio::test]
async fn tasks_in_dev_mode_with_their_rules_and_bounds() {
    let b = Broker::start(&[("MAX_TASKS_PER_MESH", "3"), ("MAX_TASK_TAGS", "2")]);
    let mesh = b.create_mesh("tasks", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let admin = member(&b, &mesh, "admin", json!({"role": "admin"}));
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut cc, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut adm, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;

    let first: TaskCreated = parse(
        &ac.request(TaskFrame::CreateTask(CreateTask {
            title: "first".into(),
            assignee: Some("bob".into()),
            priority: None,
            tags: vec!["a".into()],
        }))
        .await,
    );
    let second: TaskCreated = parse(&ac.request(create_task("second")).await);
    let list: TaskList = parse(&bc.request(list_tasks()).await);
    let titles: Vec<&str> = list.tasks.iter().map(|t| t.title.as_str()).collect();
    assert_eq!(titles, vec!["second", "first"], "newest first");
    assert_eq!(list.tasks[1].priority, "normal");
    assert_eq!(list.tasks[1].created_by.as_deref(), Some("alice"));
    let by_bob: TaskList = parse(
        &bc.request(TaskFrame::ListTasks(ListTasks {
            status: None,
            assignee: Some("bob".into()),
        }))
        .await,
    );
    assert_eq!(by_bob.tasks.len(), 1);
    assert_eq!(by_bob.tasks[0].id, first.id);

    // Claimed once; carol (neither claimer, creator nor admin) cannot complete it.
    let claimed: TaskList = parse(&bc.request(claim(&first.id)).await);
    assert_eq!(claimed.tasks.len(), 2, "the whole mesh's tasks");
    let again = cc.request(claim(&first.id)).await;
    assert_eq!(again["code"], "task_not_claimable");
    let refused = cc.request(complete(&first.id, Some("mine"))).await;
    assert_eq!(refused["code"], "task_not_found");
    assert_eq!(refused["message"], "task not found in this mesh");
    let done: TaskList = parse(&bc.request(complete(&first.id, Some("ok"))).await);
    let row = done.tasks.iter().find(|t| t.id == first.id).unwrap();
    assert_eq!(
        (row.status.as_str(), row.claimed_by.as_deref()),
        ("done", Some("bob"))
    );
    // The creator and an admin may complete an open task.
    let open = parse::<TaskList>(&ac.request(complete(&second.id, None)).await);
    assert!(open.tasks.iter().all(|t| t.status == "done"));
    let third: TaskCreated = parse(&cc.request(create_task("third")).await);
    parse::<TaskList>(&adm.request(complete(&third.id, None)).await);
    let done_only: TaskList = parse(
        &cc.request(TaskFrame::ListTasks(ListTasks {
            status: Some("done".into()),
            assignee: None,
        }))
        .await,
    );
    assert_eq!(done_only.tasks.len(), 3);
    let unknown = cc.request(claim("no-such-task")).await;
    assert_eq!(unknown["code"], "task_not_claimable");

    // Bounds: title, tags, result; at MAX_TASKS_PER_MESH the oldest done task makes room,
    // and with none done the mesh is full.
    let long = ac.request(create_task(&"t".repeat(513))).await;
    assert_eq!(long["code"], "field_too_large", "{long}");
    let tags = ac
        .request(TaskFrame::CreateTask(CreateTask {
            title: "tags".into(),
            tags: vec!["1".into(), "2".into(), "3".into()],
            ..CreateTask::default()
        }))
        .await;
    assert_eq!(tags["code"], "field_too_large");
    for n in 0..3 {
        parse::<TaskCreated>(&ac.request(create_task(&format!("new-{n}"))).await);
    }
    let full = ac.request(create_task("one too many")).await;
    assert_eq!(full["code"], "too_many_tasks", "{full}");
    let after: TaskList = parse(&ac.request(list_tasks()).await);
    let titles: Vec<&str> = after.tasks.iter().map(|t| t.title.as_str()).collect();
    assert_eq!(titles, vec!["new-2", "new-1", "new-0"]);
    let result = bc
        .request(complete(&after.tasks[0].id, Some(&"r".repeat(8193))))
        .await;
    assert_eq!(result["code"], "field_too_large");
    assert_eq!(
        metric(
            &b.metrics(),
            r#"broker_task_requests_refused_total{reason="too_many_tasks"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn streams_in_dev_mode_with_their_bounds() {
    let b = Broker::start(&[
        ("MAX_STREAMS_PER_MESH", "2"),
        ("MAX_STREAM_SUBSCRIPTIONS_PER_PRESENCE", "2"),
        ("MAX_STREAM_NAME_BYTES", "16"),
    ]);
    let mesh = b.create_mesh("streams", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    let create = |name: &str| StreamFrame::CreateStream { name: name.into() };
    let one = ac.request(create("one")).await;
    let again = bc.request(create("one")).await;
    assert_eq!(one["id"], again["id"], "idempotent by name");
    assert_eq!(one["id"].as_str().unwrap().len(), 32);
    bc.request(create("two")).await;
    let full = bc.request(create("three")).await;
    assert_eq!(full["code"], "too_many_streams", "{full}");
    assert_eq!(bc.request(create("two")).await["type"], "stream_created");
    let long = bc.request(create(&"n".repeat(17))).await;
    assert_eq!(long["code"], "name_too_long");

    let list: StreamList = parse(&ac.request(StreamFrame::ListStreams).await);
    let names: Vec<&str> = list.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["one", "two"], "oldest first");
    assert_eq!(list.streams[0].created_by, "alice");

    // A stream need not exist to be subscribed to; the bound is per presence.
    bc.request(subscribe("one")).await;
    bc.request(subscribe("never-created")).await;
    assert_eq!(bc.request(subscribe("one")).await["type"], "subscribed");
    let over = bc.request(subscribe("two")).await;
    assert_eq!(over["code"], "too_many_subscriptions", "{over}");

    ac.send(publish("never-created", json!([1, 2]))).await;
    let got: StreamData = parse(&bc.expect("stream_data").await);
    assert_eq!(
        (got.stream.as_str(), got.data, got.published_by.as_str()),
        ("never-created", json!([1, 2]), "alice")
    );
    // Nobody subscribes to "two": dropped silently.
    ac.send(publish("two", json!(1))).await;
    bc.send(StreamFrame::Unsubscribe {
        stream: "one".into(),
    })
    .await;
    // Frames of one socket are handled in order: once this is answered, so is the unsubscribe.
    bc.request(StreamFrame::ListStreams).await;
    ac.send(publish("one", json!("after unsubscribe"))).await;
    ac.request(StreamFrame::ListStreams).await;
    bc.expect_none(Duration::from_millis(300), is_stream_data)
        .await;
    ac.expect_none(Duration::from_millis(100), is_stream_data)
        .await;
    assert_eq!(
        metric(
            &b.metrics(),
            r#"broker_messages_routed_total{priority="stream"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &b.metrics(),
            r#"broker_stream_requests_refused_total{reason="too_many_subscriptions"}"#
        ),
        1.0
    );
}

/// The frames `claudemesh task …` and `claudemesh stream …` (CLI 1.37) send, byte for byte
/// in their fields, and the reply fields the CLI reads (§0.2).
#[tokio::test]
async fn the_cli_frames_get_the_replies_the_cli_matches_on() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("cli", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    c.send(
        json!({"type": "create_task", "title": "ship it", "assignee": "bob",
                  "priority": "high", "tags": ["release"], "_reqId": "t1"}),
    )
    .await;
    let created = c.expect("task_created").await;
    assert_eq!(created["_reqId"], "t1");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.len() == 32 && id.chars().all(|ch| ch.is_ascii_alphanumeric()));

    c.send(json!({"type": "list_tasks", "_reqId": "t2"})).await;
    let list = c.expect("task_list").await;
    assert_eq!(list["_reqId"], "t2");
    let row = &list["tasks"][0];
    let mut keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "assignee",
            "claimedBy",
            "createdAt",
            "createdBy",
            "id",
            "priority",
            "status",
            "tags",
            "title"
        ]
    );
    assert_eq!(row["claimedBy"], Value::Null);
    assert_eq!(row["status"], "open");
    assert_eq!(row["tags"], json!(["release"]));
    assert!(row["createdAt"].as_str().unwrap().ends_with('Z'));

    // Fire-and-forget claim and complete: no `_reqId`, replies carry none.
    c.send(json!({"type": "claim_task", "taskId": id})).await;
    let claimed = c.expect("task_list").await;
    assert!(claimed.get("_reqId").is_none());
    assert_eq!(claimed["tasks"][0]["claimedBy"], "alice");
    c.send(json!({"type": "complete_task", "taskId": id, "result": "done"}))
        .await;
    assert_eq!(c.expect("task_list").await["tasks"][0]["status"], "done");
    c.send(json!({"type": "claim_task", "taskId": id})).await;
    let err = c.expect("error").await;
    assert_eq!(err["code"], "task_not_claimable");
    assert!(err.get("_reqId").is_none());
    c.send(json!({"type": "complete_task", "taskId": "nope"}))
        .await;
    assert_eq!(c.expect("error").await["code"], "task_not_found");
    c.send(json!({"type": "list_tasks", "status": "open", "_reqId": "t3"}))
        .await;
    assert_eq!(c.expect("task_list").await["tasks"], json!([]));

    c.send(json!({"type": "create_stream", "name": "deploys", "_reqId": "s1"}))
        .await;
    let stream = c.expect("stream_created").await;
    assert_eq!(
        (stream["name"].clone(), stream["_reqId"].clone()),
        (json!("deploys"), json!("s1"))
    );
    c.send(json!({"type": "publish", "stream": "deploys", "data": {"v": 1}}))
        .await;
    c.send(json!({"type": "list_streams", "_reqId": "s2"}))
        .await;
    // The publish answered nothing: the next frame is the list.
    let next = c.next_within(WAIT).await;
    let Some(Event::Frame(list)) = next else {
        panic!("{next:?}")
    };
    assert_eq!(list["type"], "stream_list");
    assert_eq!(list["_reqId"], "s2");
    let row = &list["streams"][0];
    let mut keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["createdAt", "createdBy", "id", "name", "subscriberCount"]
    );
    assert_eq!(row["id"], stream["id"]);
    assert_eq!(row["subscriberCount"], 0);

    // A subscribe without `_reqId` (the MCP server's) is answered without one.
    c.send(json!({"type": "subscribe", "stream": "deploys"}))
        .await;
    let sub = c.expect("subscribed").await;
    assert_eq!(sub, json!({"type": "subscribed", "stream": "deploys"}));
    // A frame of the family with a wrong field type is `malformed`, with its `_reqId`.
    c.send(json!({"type": "create_task", "title": 5, "_reqId": "bad"}))
        .await;
    let bad = c.expect("error").await;
    assert_eq!(
        (bad["code"].clone(), bad["_reqId"].clone()),
        (json!("malformed"), json!("bad"))
    );
}

/// A replica dies with a subscriber on it: the survivor's reaper ends the presence, and its
/// subscriptions with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriptions_of_a_killed_replicas_presences_are_dropped_by_the_reaper() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("reaped", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut p, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut sub, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    p.request(StreamFrame::CreateStream {
        name: "logs".into(),
    })
    .await;
    sub.request(subscribe("logs")).await;
    assert_eq!(
        count_of(&p.request(StreamFrame::ListStreams).await, "logs"),
        1
    );

    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(b.pid().to_string())
        .status()
        .unwrap();
    let left = p.expect_system("peer_left").await;
    assert_eq!(left["eventData"]["name"], "bob");
    let client = ::redis::Client::open(c.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*:spres:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(
        count_of(&p.request(StreamFrame::ListStreams).await, "logs"),
        0
    );
    drop(sub);
}
