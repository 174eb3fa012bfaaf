//! Scheduled messages and reminders (extensions §5) and simulation clocks (§6): the frames
//! as the CLI sends them, the fixes of the reference's defects, and the cluster guarantees
//! (each due message fires exactly once on three replicas, also when the accepting replica
//! is SIGKILLed or a replica dies mid-fire; cron keeps firing across restarts; a cancel on
//! one replica stops a schedule made on another; one clock authority per mesh whose death
//! neither repeats nor skips a tick).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::protocol::ext::clocks::ClockStatus;
use broker::protocol::ext::schedule::{CancelScheduledAck, ScheduledAck, ScheduledList};
use broker::service::schedule::fire_message_id;
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

fn schedule(to: &str, message: &str, deliver_at: i64) -> Value {
    json!({"type": "schedule", "to": to, "message": message, "deliverAt": deliver_at})
}

fn reminder(to: &str, message: &str, deliver_at: i64) -> Value {
    json!({"type": "schedule", "to": to, "message": message, "deliverAt": deliver_at, "subtype": "reminder"})
}

fn cron(to: &str, message: &str, expr: &str) -> Value {
    json!({"type": "schedule", "to": to, "message": message, "deliverAt": 0, "cron": expr, "recurring": true})
}

async fn scheduled(c: &mut Client, frame: Value) -> ScheduledAck {
    let reply = c.request(frame).await;
    assert_eq!(reply["type"], "scheduled_ack", "{reply}");
    parse(&reply)
}

async fn list(c: &mut Client) -> ScheduledList {
    parse(&c.request(json!({"type": "list_scheduled"})).await)
}

async fn cancel(c: &mut Client, id: &str) -> bool {
    let ack: CancelScheduledAck = parse(
        &c.request(json!({"type": "cancel_scheduled", "scheduledId": id}))
            .await,
    );
    assert_eq!(ack.scheduled_id, id);
    ack.ok
}

async fn clock(c: &mut Client, frame: Value) -> ClockStatus {
    let reply = c.request(frame).await;
    assert_eq!(reply["type"], "clock_status", "{reply}");
    parse(&reply)
}

/// The next message push (not a system event), confirmed.
async fn next_message(c: &mut Client) -> Value {
    let push = c.expect_where("push", is_push).await;
    c.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;
    push
}

fn is_tick(v: &Value) -> bool {
    v["type"] == "push" && v["subtype"] == "system" && v["event"] == "tick"
}

async fn next_tick(c: &mut Client) -> Value {
    c.expect_where("push", is_tick).await
}

fn fires(b: &Broker, reason: &str) -> f64 {
    metric_value(
        &b.metrics(),
        &format!("broker_scheduled_fires_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn dev_mode_schedule_list_cancel_fire_and_refusals() {
    let b = Broker::start(&[
        ("SCHEDULE_POLL_INTERVAL_MS", "50"),
        ("SCHEDULE_MAX_PER_MEMBER", "3"),
    ]);
    let mesh = b.create_mesh("sched", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let bob_key = bob.identity.pubkey.clone();

    // A one-shot in the near future: acked, listed, fired once as alice, then gone.
    let at = now_ms() + 300;
    let ack = scheduled(&mut ac, schedule(&bob_key, "hello later", at)).await;
    assert_eq!(ack.deliver_at, at);
    assert_eq!(
        (
            ack.scheduled_id.len(),
            ack.scheduled_id.matches('-').count()
        ),
        (36, 4),
        "a UUID"
    );
    let listed = list(&mut ac).await;
    assert_eq!(listed.messages.len(), 1);
    let row = &listed.messages[0];
    assert_eq!(
        (
            row.id.as_str(),
            row.to.as_str(),
            row.message.as_str(),
            row.deliver_at
        ),
        (
            ack.scheduled_id.as_str(),
            bob_key.as_str(),
            "hello later",
            at
        )
    );
    assert_eq!((row.cron.as_ref(), row.fired_count), (None, None));
    let push = next_message(&mut bc).await;
    assert_eq!(push["ciphertext"], b64("hello later"));
    assert_eq!(push["nonce"], "");
    assert_eq!(push["priority"], "now");
    assert_eq!(push["senderPubkey"], alice.identity.pubkey);
    assert_eq!(push["senderMemberPubkey"], alice.identity.pubkey);
    assert_eq!(push["senderName"], "alice");
    assert_eq!(push["messageId"], fire_message_id(&ack.scheduled_id, 1));
    assert!(push.get("subtype").is_none(), "no subtype asked: none sent");
    // A fired one-shot is done (its fire commits right after the push).
    eventually("the one-shot is done", async || {
        list(&mut ac).await.messages.is_empty().then_some(())
    })
    .await;
    // The scheduling socket gets no unsolicited ack at fire time.
    ac.expect_none(Duration::from_millis(200), |v| v["type"] == "ack")
        .await;

    // deliverAt in the past fires at once; a reminder carries its subtype.
    let ack = scheduled(&mut ac, reminder(&bob_key, "overdue", 1_000)).await;
    let push = next_message(&mut bc).await;
    assert_eq!(
        (push["ciphertext"].as_str(), push["subtype"].as_str()),
        (Some(b64("overdue").as_str()), Some("reminder"))
    );
    assert_eq!(push["messageId"], fire_message_id(&ack.scheduled_id, 1));
    // Its fire commits right after the push: wait until it is done before listing again.
    eventually("the overdue one-shot is done", async || {
        let listed = list(&mut ac).await.messages;
        (!listed.iter().any(|m| m.id == ack.scheduled_id)).then_some(())
    })
    .await;

    // Cancel: ok once, then false; unknown ids and other members' entries are false.
    let far = now_ms() + 3_600_000;
    let keep = scheduled(&mut ac, schedule("*", "later", far)).await;
    let gone = scheduled(&mut ac, schedule("*", "never", far)).await;
    assert!(!cancel(&mut bc, &gone.scheduled_id).await, "not bob's");
    assert!(cancel(&mut ac, &gone.scheduled_id).await);
    assert!(!cancel(&mut ac, &gone.scheduled_id).await);
    assert!(!cancel(&mut ac, "00000000-0000-4000-8000-000000000000").await);
    let ids: Vec<String> = list(&mut ac)
        .await
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![keep.scheduled_id.clone()]);
    assert!(
        list(&mut bc).await.messages.is_empty(),
        "each member sees its own"
    );

    // Refusals: invalid cron (with the reference's text), the per-member limit, a forged
    // subtype, a bad target.
    for expr in ["61 * * * *", "* * * *", "0 0 31 2 *"] {
        let e = ac.request(cron("*", "x", expr)).await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "invalid_cron");
        assert_eq!(e["message"], format!("Invalid cron expression: {expr}"));
    }
    scheduled(&mut ac, schedule("*", "two", far)).await;
    scheduled(&mut ac, schedule("*", "three", far)).await;
    let e = ac.request(schedule("*", "four", far)).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("too_many_scheduled")),
        "{e}"
    );
    assert!(cancel(&mut ac, &keep.scheduled_id).await);
    let e = ac
        .request(json!({"type": "schedule", "to": "*", "message": "x", "deliverAt": far, "subtype": "system"}))
        .await;
    assert_eq!(e["code"], "invalid_schedule", "{e}");
    let e = ac.request(schedule("bob", "x", far)).await;
    assert_eq!(e["code"], "invalid_schedule", "{e}");
    let e = ac.request(json!({"type": "schedule", "to": 5})).await;
    assert_eq!(e["code"], "malformed", "{e}");
    let m = b.metrics();
    assert_eq!(
        metric(
            &m,
            r#"broker_scheduled_rejected_total{reason="invalid_cron"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(&m, r#"broker_scheduled_rejected_total{reason="limit"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"broker_scheduled_fires_total{reason="sent"}"#),
        2.0
    );
}

#[tokio::test]
async fn dev_mode_clock_ticks_pauses_resumes_clamps_and_auto_pauses() {
    let b = Broker::start(&[("LEASE_GRACE_MS", "200")]);
    // Both workers run under the supervisor on every replica, dev mode included.
    eventually("the scheduler and clock workers run", async || {
        let m = b.metrics();
        (metric(&m, r#"broker_workers_running{worker="scheduler"}"#) == 1.0
            && metric(&m, r#"broker_workers_running{worker="clock_authority"}"#) == 1.0)
            .then_some(())
    })
    .await;
    let mesh = b.create_mesh("clock", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    // No clock yet.
    let none = clock(&mut ac, json!({"type": "get_clock"})).await;
    assert_eq!((none.speed, none.paused, none.tick), (0.0, true, 0));
    assert_eq!(none.sim_time.len(), 24);
    for verb in ["pause_clock", "resume_clock"] {
        let e = ac.request(json!({"type": verb})).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("no_clock"))
        );
        assert_eq!(e["message"], "No clock running for this mesh");
    }

    let set = clock(&mut ac, json!({"type": "set_clock", "speed": 1000})).await;
    assert_eq!(
        (set.speed, set.paused, set.tick),
        (100.0, false, 0),
        "clamped to 100"
    );
    assert_eq!(set.sim_time, set.started_at);
    // Every presence gets the ticks, in order, each adding one simulated minute.
    let t1 = next_tick(&mut bc).await;
    assert_eq!(t1["eventData"]["tick"], 1);
    assert_eq!(t1["eventData"]["speed"], 100.0);
    assert_eq!(
        (
            t1["senderPubkey"].as_str(),
            t1["priority"].as_str(),
            t1["nonce"].as_str()
        ),
        (Some("system"), Some("low"), Some(""))
    );
    assert_eq!(next_tick(&mut ac).await["eventData"]["tick"], 1);
    let t2 = next_tick(&mut bc).await;
    assert_eq!(t2["eventData"]["tick"], 2);
    let sim = |v: &Value| v["eventData"]["simTime"].as_str().unwrap().to_string();
    assert!(sim(&t2) > sim(&t1));

    let paused = clock(&mut bc, json!({"type": "pause_clock"})).await;
    assert!(paused.paused);
    // Speed 0 and garbage clamp to 1; a paused clock stays paused.
    let slow = clock(&mut ac, json!({"type": "set_clock", "speed": 0})).await;
    assert_eq!((slow.speed, slow.paused), (1.0, true));
    let slow = clock(&mut ac, json!({"type": "set_clock", "speed": "fast"})).await;
    assert_eq!(slow.speed, 1.0);
    let still = clock(&mut ac, json!({"type": "get_clock"})).await;
    assert_eq!((still.tick, still.paused), (paused.tick, true));
    let fast = clock(&mut ac, json!({"type": "set_clock", "speed": 100})).await;
    assert!(fast.paused);
    let resumed = clock(&mut ac, json!({"type": "resume_clock"})).await;
    assert!(!resumed.paused);
    let after = eventually("a tick after the resume", async || {
        let t = next_tick(&mut bc).await;
        (t["eventData"]["tick"].as_i64().unwrap() > paused.tick).then_some(t)
    })
    .await;
    assert_eq!(
        after["eventData"]["tick"],
        paused.tick + 1,
        "no tick skipped across a pause"
    );

    // The mesh empties (grace included): the clock pauses itself, keeping its tick.
    ac.close().await;
    bc.close().await;
    eventually("the clock is no longer held", async || {
        (metric(&b.metrics(), "broker_clocks_held") == 0.0).then_some(())
    })
    .await;
    let (mut cc, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let parked = clock(&mut cc, json!({"type": "get_clock"})).await;
    assert!(parked.paused, "auto-paused");
    assert!(parked.tick > paused.tick);
    cc.expect_none(Duration::from_millis(800), is_tick).await;
}

/// The exact frames `claudemesh remind` and `claudemesh clock` send, without `_reqId`
/// (the cold path matches these reply types by type): the reply types and fields the CLI
/// reads, the session key rewritten to the member key, and the reminder reaching the
/// member's other session after the command's own session is gone.
#[tokio::test]
async fn cli_frames_remind_and_clock() {
    let b = Broker::start(&[("SCHEDULE_POLL_INTERVAL_MS", "50")]);
    let mesh = b.create_mesh("cli", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (mut daemon, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let session = Identity::random();
    let (mut cli, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &alice.identity, &session, json!({})),
    )
    .await;

    cli.send(json!({"type": "schedule", "to": session.pubkey, "message": "stand up", "deliverAt": now_ms() + 400})).await;
    let ack = cli.expect("scheduled_ack").await;
    assert!(ack.get("_reqId").is_none());
    let id = ack["scheduledId"].as_str().unwrap().to_string();
    assert!(ack["deliverAt"].is_i64());
    cli.send(json!({"type": "schedule", "to": session.pubkey, "message": "every 5", "deliverAt": 0, "cron": "*/5 * * * *", "recurring": true})).await;
    let cron_ack = cli.expect("scheduled_ack").await;
    assert_eq!(cron_ack["cron"], "*/5 * * * *");
    assert_eq!(
        cron_ack["deliverAt"].as_i64().unwrap() % 300_000,
        0,
        "the next multiple of five minutes (UTC)"
    );
    cli.send(json!({"type": "list_scheduled"})).await;
    let listed = cli.expect("scheduled_list").await;
    let rows = listed["messages"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(
            r["to"], alice.identity.pubkey,
            "a session key of the caller is rewritten to its member key"
        );
        assert!(r["createdAt"].is_i64());
    }
    let cron_row = rows.iter().find(|r| r["cron"] == "*/5 * * * *").unwrap();
    assert_eq!(cron_row["firedCount"], 0);
    let once_row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert!(once_row.get("firedCount").is_none() && once_row.get("cron").is_none());
    // The command's session ends (the CLI exits); the reminder reaches the member's daemon.
    cli.close().await;
    let push = next_message(&mut daemon).await;
    assert_eq!(push["ciphertext"], b64("stand up"));
    assert_eq!(push["messageId"], fire_message_id(&id, 1));
    assert_eq!(push["senderPubkey"], alice.identity.pubkey);
    assert_eq!(push["senderName"], "alice");

    daemon
        .send(json!({"type": "cancel_scheduled", "scheduledId": cron_ack["scheduledId"]}))
        .await;
    let c = daemon.expect("cancel_scheduled_ack").await;
    assert_eq!((c["ok"].as_bool(), c.get("_reqId")), (Some(true), None));

    daemon.send(json!({"type": "set_clock", "speed": 2})).await;
    let st = daemon.expect("clock_status").await;
    for field in ["speed", "paused", "tick", "simTime", "startedAt"] {
        assert!(st.get(field).is_some(), "clock_status.{field}: {st}");
    }
    assert!(st.get("_reqId").is_none());
    daemon
        .send(json!({"type": "get_clock", "_reqId": "r-9"}))
        .await;
    assert_eq!(daemon.expect("clock_status").await["_reqId"], "r-9");
}

/// Three replicas: every due message fires exactly once, although the replica that
/// accepted them is SIGKILLed before they are due, and a replica SIGKILLed while it fires
/// a batch leaves no fire lost and none doubled (the queue's idempotent enqueue and the
/// derived ids).
#[tokio::test]
async fn each_due_message_fires_exactly_once_on_three_replicas_despite_sigkills() {
    let c = Cluster::new(&[
        ("BROKER_SEND_BURST", "0"),
        ("BROKER_SEND_PER_MIN", "0"),
        ("SCHEDULE_POLL_INTERVAL_MS", "20"),
    ])
    .await;
    let (a, b, cc) = (c.replica("a"), c.replica("b"), c.replica("c"));
    let mesh = a.create_mesh("once", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let (mut alice_a, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bob_c, _) = Client::join(&cc.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut carol_c, _) = Client::join(&cc.ws_url(), carol.hello(&mesh, json!({}))).await;

    // Accepted by a, due after a is gone: 20 direct messages and 5 reminder broadcasts.
    let due = now_ms() + 1_500;
    for i in 0..20 {
        scheduled(
            &mut alice_a,
            schedule(&bob.identity.pubkey, &format!("direct-{i}"), due),
        )
        .await;
    }
    for i in 0..5 {
        scheduled(&mut alice_a, reminder("*", &format!("all-{i}"), due)).await;
    }
    drop(alice_a);
    drop(a); // SIGKILL

    let mut direct = BTreeMap::new();
    let mut bob_broadcasts = BTreeSet::new();
    while direct.len() < 20 || bob_broadcasts.len() < 5 {
        let p = next_message(&mut bob_c).await;
        if p["subtype"] == "reminder" {
            let id = p["messageId"].as_str().unwrap().to_string();
            assert!(bob_broadcasts.insert(id), "fired twice");
            continue;
        }
        let text =
            String::from_utf8(STANDARD.decode(p["ciphertext"].as_str().unwrap()).unwrap()).unwrap();
        assert!(
            direct.insert(text, p["messageId"].clone()).is_none(),
            "fired twice"
        );
    }
    let mut broadcast = BTreeSet::new();
    while broadcast.len() < 5 {
        let p = next_message(&mut carol_c).await;
        assert_eq!(
            p["subtype"], "reminder",
            "the subtype on a fan-out push: {p}"
        );
        assert!(
            broadcast.insert(p["messageId"].as_str().unwrap().to_string()),
            "fired twice"
        );
    }
    bob_c
        .expect_none(Duration::from_millis(1_000), is_push)
        .await;
    carol_c
        .expect_none(Duration::from_millis(300), is_push)
        .await;
    assert_eq!(
        fires(&b, "sent") + fires(&cc, "sent"),
        25.0,
        "each fired once, by the survivors"
    );

    // A replica dies while it fires: 60 messages due at once, b killed as soon as the
    // first arrives. The survivors fire what b had claimed, with the same ids.
    let d = c.replica("d");
    let (mut alice_d, _) = Client::join(&d.ws_url(), alice.hello(&mesh, json!({}))).await;
    let due = now_ms() + 1_000;
    let mut ids = BTreeMap::new();
    for i in 0..60 {
        let ack = scheduled(
            &mut alice_d,
            schedule(&bob.identity.pubkey, &format!("burst-{i}"), due),
        )
        .await;
        ids.insert(format!("burst-{i}"), fire_message_id(&ack.scheduled_id, 1));
    }
    let first = next_message(&mut bob_c).await;
    drop(b); // SIGKILL, possibly between a delivery and its commit
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let record = |seen: &mut BTreeMap<String, BTreeSet<String>>, p: &Value| {
        let text =
            String::from_utf8(STANDARD.decode(p["ciphertext"].as_str().unwrap()).unwrap()).unwrap();
        seen.entry(text)
            .or_default()
            .insert(p["messageId"].as_str().unwrap().to_string());
    };
    record(&mut seen, &first);
    while seen.len() < 60 {
        let p = next_message(&mut bob_c).await;
        record(&mut seen, &p);
    }
    bob_c
        .expect_none(Duration::from_millis(1_000), |p| {
            is_push(p) && !ids.values().any(|id| p["messageId"] == *id)
        })
        .await;
    for (text, got) in &seen {
        assert_eq!(got.len(), 1, "{text} fired under two ids: {got:?}");
        assert_eq!(got.iter().next(), ids.get(text), "{text}: the derived id");
    }
}

/// A cron keeps firing across replicas that die and start (each fire exactly once, with
/// the same attribution), and a cancel on another replica stops it. The replicas that
/// fire run their scheduler clock ahead (`SCHEDULE_NOW_OFFSET_MS`) so the next minute is
/// reached at once; the production minimum period stays one minute.
#[tokio::test]
async fn cron_keeps_firing_across_replicas_and_a_cancel_on_b_stops_it() {
    let c = Cluster::new(&[("SCHEDULE_POLL_INTERVAL_MS", "50")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("cron", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut alice_a, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bob_b, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let ack = scheduled(
        &mut alice_a,
        cron(&bob.identity.pubkey, "tick tock", "* * * * *"),
    )
    .await;
    let first_at = ack.deliver_at;
    assert_eq!(first_at % 60_000, 0);
    assert!(first_at > now_ms() && first_at <= now_ms() + 60_000);

    // A replica whose scheduler is just past the first fire time fires fire 1 ...
    let ahead = |fire_at: i64| {
        let offset = (fire_at - now_ms() + 500).to_string();
        let mut env = vec![
            ("DATABASE_URL".to_string(), c.db.clone()),
            ("REDIS_URL".to_string(), c.redis.url()),
            ("SCHEDULE_POLL_INTERVAL_MS".to_string(), "50".to_string()),
            ("SCHEDULE_NOW_OFFSET_MS".to_string(), offset),
            ("HEARTBEAT_INTERVAL_MS".to_string(), "250".to_string()),
            ("NODE_DEAD_AFTER_MS".to_string(), "2000".to_string()),
        ];
        env.push(("BROKER_NODE_ID".to_string(), format!("ahead-{fire_at}")));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Broker::start(&env)
    };
    let r1 = ahead(first_at);
    let p1 = next_message(&mut bob_b).await;
    assert_eq!(p1["messageId"], fire_message_id(&ack.scheduled_id, 1));
    assert_eq!(
        (p1["senderPubkey"].as_str(), p1["senderName"].as_str()),
        (Some(alice.identity.pubkey.as_str()), Some("alice"))
    );
    // The push goes out inside the fire's transaction; its commit follows.
    let row = eventually("the fire is committed", async || {
        let row = list(&mut alice_a).await.messages.remove(0);
        (row.fired_count == Some(1)).then_some(row)
    })
    .await;
    assert_eq!(row.deliver_at, first_at + 60_000, "advanced by one minute");
    drop(r1); // SIGKILL

    // ... and after its death, one a minute further on fires fire 2 (a recovered cron
    // keeps firing, as its member).
    let r2 = ahead(first_at + 60_000);
    let p2 = next_message(&mut bob_b).await;
    assert_eq!(p2["messageId"], fire_message_id(&ack.scheduled_id, 2));
    assert_eq!(p2["senderPubkey"], alice.identity.pubkey);
    assert_eq!(p2["ciphertext"], b64("tick tock"));
    bob_b.expect_none(Duration::from_millis(500), is_push).await;

    // Alice cancels on b; a replica another minute ahead fires nothing.
    let (mut alice_b, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    assert!(cancel(&mut alice_b, &ack.scheduled_id).await);
    assert!(list(&mut alice_a).await.messages.is_empty());
    let r3 = ahead(first_at + 120_000);
    bob_b
        .expect_none(Duration::from_millis(1_000), is_push)
        .await;
    assert_eq!(fires(&r2, "sent"), 1.0);
    assert_eq!(fires(&r3, "sent"), 0.0);
}

/// A reminder to oneself from a throwaway session reaches the member's other session on
/// another replica, or, with none connected, is queued durably and pushed (with its
/// subtype) when the member connects.
#[tokio::test]
async fn a_reminder_to_self_reaches_the_other_session_or_is_queued() {
    let c = Cluster::new(&[("SCHEDULE_POLL_INTERVAL_MS", "50")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("self", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let (mut daemon_b, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let session = Identity::random();
    let (mut cli_a, _) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &alice.identity, &session, json!({})),
    )
    .await;
    scheduled(
        &mut cli_a,
        reminder(&session.pubkey, "live", now_ms() + 300),
    )
    .await;
    cli_a.close().await;
    let p = next_message(&mut daemon_b).await;
    assert_eq!(
        (p["ciphertext"].as_str(), p["subtype"].as_str()),
        (Some(b64("live").as_str()), Some("reminder"))
    );
    daemon_b.close().await;

    // Nobody of alice's is connected when it fires: queued, then pushed on connect.
    let (mut cli_a, _) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &alice.identity, &session, json!({})),
    )
    .await;
    scheduled(
        &mut cli_a,
        reminder(&session.pubkey, "queued", now_ms() + 300),
    )
    .await;
    cli_a.close().await;
    eventually("the reminder fired", async || {
        (fires(&a, "sent") + fires(&b, "sent") >= 2.0).then_some(())
    })
    .await;
    let (mut daemon_b, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let p = next_message(&mut daemon_b).await;
    assert_eq!(
        (p["ciphertext"].as_str(), p["subtype"].as_str()),
        (Some(b64("queued").as_str()), Some("reminder")),
        "{p}"
    );
    assert_eq!(p["senderMemberPubkey"], alice.identity.pubkey);
}

/// One clock authority per mesh: every replica answers the same time, and when the
/// authority is SIGKILLed another takes over from the stored tick, no tick pushed twice
/// under two ids and none skipped.
#[tokio::test]
async fn clocks_agree_everywhere_and_survive_the_authoritys_death() {
    let c = Cluster::new(&[("CLOCK_LEASE_MS", "1000"), ("LEASE_GRACE_MS", "300")]).await;
    let mut replicas = vec![
        Some(c.replica("a")),
        Some(c.replica("b")),
        Some(c.replica("c")),
    ];
    let url = |i: usize, r: &Vec<Option<Broker>>| r[i].as_ref().unwrap().ws_url();
    let mesh = replicas[0].as_ref().unwrap().create_mesh("clocks", None);
    let mut clients = Vec::new();
    for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let m = member(replicas[0].as_ref().unwrap(), &mesh, name, json!({}));
        clients.push(
            Client::join(&url(i, &replicas), m.hello(&mesh, json!({})))
                .await
                .0,
        );
    }
    let set = clock(&mut clients[0], json!({"type": "set_clock", "speed": 100})).await;
    assert_eq!(set.tick, 0);
    for cl in clients.iter_mut() {
        assert_eq!(next_tick(cl).await["eventData"]["tick"], 1);
    }

    // Paused, every replica answers the same state.
    let paused = clock(&mut clients[1], json!({"type": "pause_clock"})).await;
    let mut answers = Vec::new();
    for cl in clients.iter_mut() {
        let mut s = clock(cl, json!({"type": "get_clock"})).await;
        s.req_id = None;
        answers.push(s);
    }
    assert!(answers.iter().all(|s| *s == answers[0]), "{answers:?}");
    assert_eq!((answers[0].tick, answers[0].paused), (paused.tick, true));
    clock(&mut clients[2], json!({"type": "resume_clock"})).await;

    // Kill the authority; watch the ticks from a client of a survivor.
    let authority = eventually("one replica holds the clock", async || {
        let held: Vec<f64> = replicas
            .iter()
            .map(|r| metric(&r.as_ref().unwrap().metrics(), "broker_clocks_held"))
            .collect();
        (held.iter().sum::<f64>() == 1.0).then(|| held.iter().position(|h| *h == 1.0).unwrap())
    })
    .await;
    let watcher = (authority + 1) % 3;
    let mut ticks: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let take = |ticks: &mut BTreeMap<i64, BTreeSet<String>>, t: &Value| {
        ticks
            .entry(t["eventData"]["tick"].as_i64().unwrap())
            .or_default()
            .insert(t["messageId"].as_str().unwrap().to_string());
    };
    let before = next_tick(&mut clients[watcher]).await;
    take(&mut ticks, &before);
    replicas[authority] = None; // SIGKILL
    let last_before = before["eventData"]["tick"].as_i64().unwrap();
    loop {
        let t = next_tick(&mut clients[watcher]).await;
        take(&mut ticks, &t);
        if t["eventData"]["tick"].as_i64().unwrap() >= last_before + 6 {
            break;
        }
    }
    let numbers: Vec<i64> = ticks.keys().copied().collect();
    let expected: Vec<i64> = (numbers[0]..=*numbers.last().unwrap()).collect();
    assert_eq!(numbers, expected, "no tick skipped");
    for (n, ids) in &ticks {
        assert_eq!(ids.len(), 1, "tick {n} pushed under two ids: {ids:?}");
    }
    let survivor = replicas
        .iter()
        .flatten()
        .map(|r| metric(&r.metrics(), "broker_clocks_held"))
        .sum::<f64>();
    assert_eq!(survivor, 1.0, "one authority again");
    // A tick is pushed before it is committed: the store catches up right after.
    let w = &mut clients[watcher];
    eventually("get_clock reaches the last pushed tick", async || {
        let status = clock(w, json!({"type": "get_clock"})).await;
        (status.tick >= last_before + 6).then_some(())
    })
    .await;

    // Every presence leaves (the killed replica's are reaped, the others' graces end): the
    // clock pauses itself cluster-wide, keeping its tick.
    let last = clock(&mut clients[watcher], json!({"type": "get_clock"})).await;
    for (i, cl) in clients.into_iter().enumerate() {
        if i != authority {
            cl.close().await;
        }
    }
    eventually("the clock paused itself", async || {
        let held: f64 = replicas
            .iter()
            .flatten()
            .map(|r| metric(&r.metrics(), "broker_clocks_held"))
            .sum();
        (held == 0.0).then_some(())
    })
    .await;
    let alive = replicas.iter().flatten().next().unwrap();
    let late = member(alive, &mesh, "dave", json!({}));
    let (mut dc, _) = Client::join(&alive.ws_url(), late.hello(&mesh, json!({}))).await;
    let parked = clock(&mut dc, json!({"type": "get_clock"})).await;
    assert!(parked.paused, "auto-paused");
    assert!(parked.tick >= last.tick);
}
