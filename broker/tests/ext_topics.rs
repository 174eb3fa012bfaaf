//! Topics (extensions §9): a post reaches every live presence of every other topic member on
//! every replica (the reference reaches at most one), history pages the same from any
//! replica, the bounds in dev mode, the exact frames the CLI sends, and the service functions
//! the REST layer calls (keys sealed for the creator, claims, seals, mentions, read marks),
//! called in-process with a principal that has no presence.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::protocol::ext::topics::{
    TopicCreated, TopicHistoryResponse, TopicListResponse, TopicMembersResponse, TopicPush,
};
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

/// Waits until `topic` has `n` members (joins are fire-and-forget).
async fn members(c: &mut Client, topic: &str, n: usize) -> TopicMembersResponse {
    eventually("the joins are stored", async || {
        let r: TopicMembersResponse = parse(
            &c.request(json!({"type": "topic_members", "topic": topic}))
                .await,
        );
        (r.members.len() == n).then_some(r)
    })
    .await
}

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

async fn create(c: &mut Client, name: &str) -> TopicCreated {
    parse(
        &c.request(json!({"type": "topic_create", "name": name}))
            .await,
    )
}

fn post(topic_id: &str, text: &str) -> Value {
    json!({"type": "send", "targetSpec": format!("#{topic_id}"), "priority": "next",
           "nonce": "", "ciphertext": b64(text)})
}

#[tokio::test]
async fn a_post_on_a_reaches_every_presence_of_every_other_member_on_both_replicas() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("topics", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let carol = member(&a, &mesh, "carol", json!({}));
    let dave = member(&a, &mesh, "dave", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut al_b, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &alice.identity, &Identity::random(), json!({})),
    )
    .await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    // Bob's second presence, on the other replica.
    let (mut bo_a, _) = Client::join(
        &a.ws_url(),
        session_hello(&mesh, &bob.identity, &Identity::random(), json!({})),
    )
    .await;
    let (mut ca, _) = Client::join(&a.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut da, _) = Client::join(&b.ws_url(), dave.hello(&mesh, json!({}))).await;
    // Gus's grants deny alice `broadcast`: a topic member who gets none of her posts.
    let gus = member(&a, &mesh, "gus", json!({}));
    let (status, v) = a.api(
        "PUT",
        &format!("/api/v1/meshes/{mesh}/members/{}/grants", gus.id),
        Some(json!({"grants": {alice.identity.pubkey.clone(): ["read"]}})),
    );
    assert_eq!(status, 200, "{v}");
    let (mut gu, _) = Client::join(&b.ws_url(), gus.hello(&mesh, json!({}))).await;

    let created = create(&mut al, "dev").await;
    assert!(created.created);
    let id = created.topic.id.clone();
    bo.send(json!({"type": "topic_join", "topic": "dev"})).await;
    ca.send(json!({"type": "topic_join", "topic": id})).await;
    gu.send(json!({"type": "topic_join", "topic": "dev"})).await;
    members(&mut al, "dev", 4).await;
    // Every presence, the asking one's session included.
    peers(&mut al, 7).await;

    let ack = al.request(post(&id, "hello @bob")).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["queued"], true, "{ack}");
    let queue_id = ack["messageId"].as_str().unwrap().to_string();
    assert_eq!(queue_id.len(), 32);

    let mut message_id = None;
    for (who, client) in [
        ("bob on b", &mut bo),
        ("bob's session on a", &mut bo_a),
        ("carol on a", &mut ca),
    ] {
        let push: TopicPush = parse(&client.expect_where("push", |v| v["topic"] == "dev").await);
        assert_eq!(push.topic_id, id, "{who}");
        assert_eq!(push.sender_member_id, alice.id, "{who}");
        assert_eq!(push.sender_member_pubkey, alice.identity.pubkey, "{who}");
        assert_eq!(push.sender_name, "alice", "{who}");
        assert_eq!(push.ciphertext, b64("hello @bob"), "{who}");
        assert_eq!(push.body_version, 1);
        assert_ne!(push.message_id, queue_id, "{who}: the topic-message id");
        message_id.get_or_insert(push.message_id.clone());
        assert_eq!(Some(&push.message_id), message_id.as_ref(), "{who}");
    }
    // Not a member; blocked by grants; the sender member's own presences neither.
    for client in [&mut da, &mut gu, &mut al, &mut al_b] {
        client
            .expect_none(Duration::from_millis(300), |v| v["topic"] == "dev")
            .await;
    }
    // The delivery record is marked delivered.
    eventually("the delivery record is stored", async || {
        let r = al
            .request(json!({"type": "message_status", "messageId": queue_id}))
            .await;
        (r["type"] == "message_status_result" && r["delivered"] == true).then_some(())
    })
    .await;

    // History: the same from both replicas.
    let on_a: TopicHistoryResponse = parse(
        &al.request(json!({"type": "topic_history", "topic": "dev"}))
            .await,
    );
    let on_b: TopicHistoryResponse = parse(
        &bo.request(json!({"type": "topic_history", "topic": id}))
            .await,
    );
    assert_eq!(on_a.messages, on_b.messages);
    assert_eq!(on_a.messages.len(), 1);
    assert_eq!(Some(&on_a.messages[0].id), message_id.as_ref());

    // Unknown topic, and a topic of another mesh.
    let other = a.create_mesh("other", None);
    let eve = member(&a, &other, "eve", json!({}));
    let (mut ev, _) = Client::join(&b.ws_url(), eve.hello(&other, json!({}))).await;
    let foreign = create(&mut ev, "secret").await.topic.id;
    for target in [foreign.as_str(), "nosuchtopicid00000000000"] {
        let ack = al.request(post(target, "x")).await;
        assert_eq!(ack["queued"], false, "{ack}");
        assert_eq!(ack["error"], "topic not found");
    }
    let h: TopicHistoryResponse = parse(
        &ev.request(json!({"type": "topic_history", "topic": "secret"}))
            .await,
    );
    assert!(h.messages.is_empty(), "nothing crossed meshes");
}

#[tokio::test]
async fn history_pages_the_same_from_both_replicas_and_leaving_stops_the_pushes() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("paging", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let id = create(&mut al, "log").await.topic.id;
    bo.send(json!({"type": "topic_join", "topic": "log"})).await;
    members(&mut bo, "log", 2).await;
    for i in 0..7 {
        let ack = al.request(post(&id, &format!("m{i}"))).await;
        assert_eq!(ack["queued"], true);
    }
    for i in 0..7 {
        let text = b64(&format!("m{i}"));
        bo.expect_where("push", |v| v["topic"] == "log" && v["ciphertext"] == text)
            .await;
    }
    let mut pages: Vec<Vec<String>> = Vec::new();
    for client in [&mut al, &mut bo] {
        let mut seen = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut req = json!({"type": "topic_history", "topic": "log", "limit": 3});
            if let Some(b) = &before {
                req["beforeId"] = json!(b);
            }
            let page: TopicHistoryResponse = parse(&client.request(req).await);
            if page.messages.is_empty() {
                break;
            }
            assert!(page.messages.len() <= 3);
            before = page.messages.last().map(|m| m.id.clone());
            seen.extend(
                page.messages
                    .iter()
                    .map(|m| String::from_utf8(STANDARD.decode(&m.ciphertext).unwrap()).unwrap()),
            );
        }
        pages.push(seen);
    }
    let newest_first: Vec<String> = (0..7).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(pages[0], newest_first, "every message once, newest first");
    assert_eq!(pages[1], newest_first, "the same from the other replica");

    // Ours: a new member, enrolled through any path, joins `#general`.
    create(&mut al, "general").await;
    let frank = member(&b, &mesh, "frank", json!({}));
    let general = members(&mut bo, "general", 2).await;
    assert_eq!(general.members[1].member_id, frank.id);
    assert_eq!(general.members[1].role, "member");

    // Bob leaves: the next post is stored but not pushed to him.
    bo.send(json!({"type": "topic_leave", "topic": "log"}))
        .await;
    members(&mut al, "log", 1).await;
    al.request(post(&id, "after")).await;
    bo.expect_none(Duration::from_millis(300), |v| v["topic"] == "log")
        .await;
}

#[tokio::test]
async fn posts_outlive_a_sigkilled_replica_and_are_stored_while_redis_is_down() {
    let mut c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("faults", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let id = create(&mut al, "ops").await.topic.id;
    bo.send(json!({"type": "topic_join", "topic": "ops"})).await;
    members(&mut bo, "ops", 2).await;
    assert_eq!(al.request(post(&id, "before")).await["queued"], true);
    bo.expect_where("push", |v| v["ciphertext"] == b64("before"))
        .await;

    // Replica a dies: what it acknowledged is in the store; alice goes on from b.
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(a.pid().to_string())
        .status()
        .unwrap();
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    assert_eq!(al.request(post(&id, "after")).await["queued"], true);
    bo.expect_where("push", |v| v["ciphertext"] == b64("after"))
        .await;

    // Redis stops: a post is still stored (and acknowledged); members catch up by history.
    c.redis.stop();
    let during = al.request(post(&id, "during")).await;
    assert_eq!(during["queued"], true, "{during}");
    let h: TopicHistoryResponse = parse(
        &bo.request(json!({"type": "topic_history", "topic": "ops"}))
            .await,
    );
    let texts: Vec<String> = h
        .messages
        .iter()
        .map(|m| String::from_utf8(STANDARD.decode(&m.ciphertext).unwrap()).unwrap())
        .collect();
    assert_eq!(texts, ["during", "after", "before"]);
    c.redis.restart();
}

#[tokio::test]
async fn dev_mode_keeps_the_bounds_and_the_cli_frames_get_what_the_cli_matches() {
    let b = Broker::start(&[
        ("MAX_TOPICS_PER_MESH", "2"),
        ("MAX_TOPIC_MEMBERS", "2"),
        ("TOPIC_HISTORY_MAX_LIMIT", "3"),
    ]);
    let mesh = b.create_mesh("dev", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let admin = member(&b, &mesh, "root", json!({"role": "admin"}));
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut ca, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut ad, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;

    // topic create, as `claudemesh topic create` sends it.
    let r = al
        .request(
            json!({"type": "topic_create", "name": "general", "description": "all",
                        "visibility": "public"}),
        )
        .await;
    assert_eq!(r["type"], "topic_created");
    assert_eq!(r["created"], true);
    for f in ["id", "name", "visibility"] {
        assert!(r["topic"][f].is_string(), "{f} in {r}");
    }
    let general = r["topic"]["id"].as_str().unwrap().to_string();
    // The same name again: the existing id, `created:false`, the *requested* visibility.
    let again: TopicCreated = parse(
        &bo.request(json!({"type": "topic_create", "name": "general", "visibility": "private"}))
            .await,
    );
    assert_eq!(
        (again.topic.id.as_str(), again.created),
        (general.as_str(), false)
    );
    assert_eq!(again.topic.visibility, "private");
    // …and bob, who asked, is its lead now (a later join does not change that).
    // Validation and the per-mesh bound.
    for bad in [json!(""), json!("#x"), json!("x".repeat(65))] {
        let e = al
            .request(json!({"type": "topic_create", "name": bad}))
            .await;
        assert_eq!(e["code"], "invalid_args", "{e}");
    }
    let private: TopicCreated = parse(
        &al.request(json!({"type": "topic_create", "name": "ops", "visibility": "private"}))
            .await,
    );
    let e = al
        .request(json!({"type": "topic_create", "name": "third"}))
        .await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "too_many_topics");
    assert!(
        metric(
            &b.metrics(),
            "broker_topic_requests_refused_total{reason=\"too_many_topics\"}"
        ) >= 1.0
    );

    // topic list without `_reqId` (tolerant matching): the reply carries none.
    al.send(json!({"type": "topic_list"})).await;
    let list = al.expect("topic_list_response").await;
    assert!(list.get("_reqId").is_none());
    let list: TopicListResponse = parse(&list);
    let names: Vec<&str> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["general", "ops"]);
    assert_eq!(list.topics[0].description.as_deref(), Some("all"));
    assert_eq!(list.topics[0].member_count, 2);

    // Fire-and-forget frames are silent, also when they fail (an error would release
    // another pending request of the CLI).
    bo.send(json!({"type": "topic_join", "topic": "general", "role": "member"}))
        .await;
    bo.send(json!({"type": "topic_join", "topic": "nope"}))
        .await;
    bo.send(json!({"type": "topic_mark_read", "topic": "general"}))
        .await;
    // A private topic is not joined by a non-admin (silently); the admin joins it.
    ca.send(json!({"type": "topic_join", "topic": "ops"})).await;
    ad.send(json!({"type": "topic_join", "topic": private.topic.id}))
        .await;
    bo.expect_none(Duration::from_millis(300), |v| v["type"] == "error")
        .await;
    ca.expect_none(Duration::from_millis(100), |v| v["type"] == "error")
        .await;
    let m = members(&mut al, "general", 2).await;
    assert_eq!(
        m.members
            .iter()
            .map(|m| (m.display_name.as_str(), m.role.as_str()))
            .collect::<Vec<_>>(),
        [("alice", "lead"), ("bob", "lead")]
    );
    assert!(m.members[1].last_read_at.is_some(), "bob marked it read");
    assert_eq!(m.members[1].pubkey, bob.identity.pubkey);
    let ops = members(&mut al, "ops", 2).await;
    assert!(ops.members.iter().all(|m| m.display_name != "carol"));
    // The member bound, told to a join that asked with `_reqId`.
    let e = ca
        .request(json!({"type": "topic_join", "topic": "general"}))
        .await;
    assert_eq!(e["code"], "topic_full", "{e}");
    // Carol is no member of the private topic: its members and history are not hers.
    let e = ca
        .request(json!({"type": "topic_members", "topic": "ops"}))
        .await;
    assert_eq!(e["code"], "forbidden");
    // Unknown topic with `_reqId`: the error echoes it (the reference puts it into `id`).
    let e = al
        .request(json!({"type": "topic_history", "topic": "nope"}))
        .await;
    assert_eq!(e["code"], "topic_not_found");
    assert_eq!(e["message"], "topic \"nope\" not found");

    // A post as the CLI sends it, with the topic fields of `send`.
    let ack = al
        .request(
            json!({"type": "send", "targetSpec": format!("#{general}"), "priority": "now",
                        "nonce": "", "ciphertext": b64("first"), "mentions": ["bob"],
                        "bodyVersion": 1}),
        )
        .await;
    assert_eq!(ack["queued"], true, "{ack}");
    let push = bo.expect_where("push", |v| v["topic"] == "general").await;
    let first = push["messageId"].as_str().unwrap().to_string();
    for f in [
        "messageId",
        "topic",
        "senderMemberPubkey",
        "senderMemberId",
        "senderName",
    ] {
        assert!(push[f].is_string(), "{f} in {push}");
    }
    assert!(push.get("replyToId").is_none());
    // A reply to it keeps `replyToId`; one to a message of no topic of ours loses it.
    al.request(
        json!({"type": "send", "targetSpec": format!("#{general}"), "nonce": "",
                      "ciphertext": b64("second"), "replyToId": first}),
    )
    .await;
    let push = bo
        .expect_where("push", |v| v["ciphertext"] == b64("second"))
        .await;
    assert_eq!(push["replyToId"], first.as_str());
    al.request(
        json!({"type": "send", "targetSpec": format!("#{general}"), "nonce": "",
                      "ciphertext": b64("third"), "replyToId": "bogus"}),
    )
    .await;
    let push = bo
        .expect_where("push", |v| v["ciphertext"] == b64("third"))
        .await;
    assert!(push.get("replyToId").is_none(), "{push}");
    let e = al
        .request(
            json!({"type": "send", "targetSpec": format!("#{general}"), "nonce": "",
                        "ciphertext": b64("x"), "bodyVersion": 7}),
        )
        .await;
    assert_eq!(e["queued"], false);

    // History as `topic tail` asks for it: the limit clamped to TOPIC_HISTORY_MAX_LIMIT.
    al.send(json!({"type": "topic_history", "topic": "general", "limit": 1000}))
        .await;
    let h = al.expect("topic_history_response").await;
    assert!(h.get("_reqId").is_none());
    assert_eq!(h["topic"], "general", "the topic as sent");
    let h: TopicHistoryResponse = parse(&h);
    assert_eq!(h.messages.len(), 3);
    let texts: Vec<String> = h
        .messages
        .iter()
        .map(|m| String::from_utf8(STANDARD.decode(&m.ciphertext).unwrap()).unwrap())
        .collect();
    assert_eq!(texts, ["third", "second", "first"]);
    assert_eq!(h.messages[0].sender_pubkey, alice.identity.pubkey);
    assert_eq!(h.messages[1].reply_to_id.as_deref(), Some(first.as_str()));
    assert!(metric(&b.metrics(), "broker_topic_history_clamped_total") >= 1.0);
    assert!(metric(&b.metrics(), "broker_topic_posts_total") >= 3.0);
    assert!(metric(&b.metrics(), "broker_topic_notifications_total") >= 1.0);
    // Members of a private topic post; others do not.
    let e = ca
        .request(
            json!({"type": "send", "targetSpec": format!("#{}", private.topic.id),
                        "nonce": "", "ciphertext": b64("hi")}),
        )
        .await;
    assert_eq!(e["queued"], false);
    assert_eq!(e["error"], "not a member of this private topic");

    // Ours: a new member joins `#general` (in dev mode too).
    let dora = member(&b, &mesh, "dora", json!({}));
    let general = members(&mut al, "general", 3).await;
    assert!(general.members.iter().any(|m| m.member_id == dora.id));
}

mod service {
    //! The functions REST calls, on the memory backends, with a principal that has no
    //! presence (as an API key's).

    use broker::cluster::bus::MemoryBus;
    use broker::cluster::presence::{MemoryPresence, PeerRole};
    use broker::config::Config;
    use broker::metrics::Metrics;
    use broker::node::Node;
    use broker::protocol::Priority;
    use broker::service::topics::{self, CreateTopic, PostRequest, SealedCopy, TopicError};
    use broker::service::{Principal, PrincipalKind, ServiceCtx};
    use broker::store::memory::MemoryStore;
    use broker::store::topics::MarkWhich;
    use broker::store::{Member, Mesh, MeshStore, NewMember, Role};
    use crypto_box::aead::Aead;

    use super::*;

    struct Fixture {
        ctx: ServiceCtx,
        store: Arc<MemoryStore>,
        mesh: Mesh,
        /// The bus's events (kept so that publishing succeeds).
        _events: tokio::sync::mpsc::UnboundedReceiver<(String, broker::cluster::bus::MeshEvent)>,
    }

    async fn fixture() -> Fixture {
        let (sink, events) = tokio::sync::mpsc::unbounded_channel();
        let store = Arc::new(MemoryStore::new());
        let node = Arc::new(Node::new(
            Config::from_source(&BTreeMap::<String, String>::new()).unwrap(),
            store.clone(),
            Arc::new(MemoryPresence::new()),
            Arc::new(MemoryBus::new(sink)),
            Metrics::new(),
        ));
        let mesh = store
            .create_mesh(Mesh {
                id: "mesh-1".into(),
                slug: "team".into(),
                name: "Team".into(),
                owner_user_id: None,
                owner_seed_hex: String::new(),
                owner_pubkey: String::new(),
                root_key: String::new(),
                created_at: 0,
            })
            .await
            .unwrap();
        Fixture {
            ctx: ServiceCtx::new(&node),
            store,
            mesh,
            _events: events,
        }
    }

    impl Fixture {
        async fn member(&self, name: &str, id: &Identity, role: Role) -> Member {
            self.store
                .add_member(
                    &self.mesh.id,
                    NewMember {
                        pubkey: id.pubkey.clone(),
                        display_name: name.into(),
                        role,
                        user_id: None,
                        default_groups: vec![],
                        role_tag: None,
                    },
                )
                .await
                .unwrap()
        }

        /// A principal without a presence (an API key's).
        fn principal(&self, m: &Member) -> Principal {
            Principal {
                kind: PrincipalKind::Member,
                mesh: self.mesh.clone(),
                member: m.clone(),
                presence_id: String::new(),
                routing_key: m.pubkey.clone(),
                display_name: m.display_name.clone(),
                session_key: None,
                peer_role: PeerRole::Session,
            }
        }
    }

    /// Opens a sealed copy (base64 of sender x25519 ‖ box, nonce) with the member's secret.
    fn open(id: &Identity, encrypted_key: &str, nonce: &str) -> Vec<u8> {
        let blob = STANDARD.decode(encrypted_key).unwrap();
        let sender = crypto_box::PublicKey::from_slice(&blob[..32]).unwrap();
        let mine = crypto_box::SecretKey::from_bytes(id.key.to_scalar_bytes());
        let nonce: [u8; 24] = STANDARD.decode(nonce).unwrap().try_into().unwrap();
        crypto_box::SalsaBox::new(&sender, &mine)
            .decrypt(&crypto_box::Nonce::from(nonce), &blob[32..])
            .expect("the member's secret opens its copy")
    }

    #[tokio::test]
    async fn a_new_topic_has_a_key_sealed_for_its_creator_that_its_secret_opens() {
        let f = fixture().await;
        let (ai, bi) = (Identity::random(), Identity::random());
        let alice = f.member("alice", &ai, Role::Member).await;
        let bob = f.member("Bob", &bi, Role::Member).await;
        let (pa, pb) = (f.principal(&alice), f.principal(&bob));
        let t = topics::create(
            &f.ctx,
            &pa,
            CreateTopic {
                name: "keys".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .topic;
        let k = topics::key(&f.ctx, &pa, &t).await.unwrap();
        assert_eq!(Some(&k.sender_pubkey), t.encrypted_key_pubkey.as_ref());
        let blob = STANDARD.decode(&k.sealed.encrypted_key).unwrap();
        assert_eq!(hex::encode(&blob[..32]), k.sender_pubkey);
        let key = open(&ai, &k.sealed.encrypted_key, &k.sealed.nonce);
        assert_eq!(key.len(), 32);

        // Bob joins: not sealed yet, pending; alice re-seals for him; he opens the same key.
        assert!(matches!(
            topics::key(&f.ctx, &pb, &t).await,
            Err(TopicError::NotSealed { .. })
        ));
        assert_eq!(
            topics::seal(
                &f.ctx,
                &pa,
                &t,
                &bob.id,
                SealedCopy {
                    encrypted_key: "x".into(),
                    nonce: "y".into()
                }
            )
            .await,
            Err(TopicError::RecipientNotInTopic)
        );
        topics::join(&f.ctx, &pb, &t, None).await.unwrap();
        let pending = topics::pending_seals(&f.ctx, &pa, &t).await.unwrap();
        assert_eq!(
            pending.pending.iter().map(|m| &m.id).collect::<Vec<_>>(),
            [&bob.id]
        );
        // A copy for bob, sealed as a client would (a fresh x25519 key ‖ box).
        let eph = crypto_box::SecretKey::from_bytes(rand_bytes());
        let bob_x = crypto_box::PublicKey::from(
            ed25519_dalek::VerifyingKey::from_bytes(&bi.key.verifying_key().to_bytes())
                .unwrap()
                .to_montgomery(),
        );
        let nonce: [u8; 24] = rand_bytes24();
        let boxed = crypto_box::SalsaBox::new(&bob_x, &eph)
            .encrypt(&crypto_box::Nonce::from(nonce), key.as_slice())
            .unwrap();
        let mut blob = eph.public_key().as_bytes().to_vec();
        blob.extend(boxed);
        let copy = SealedCopy {
            encrypted_key: STANDARD.encode(&blob),
            nonce: STANDARD.encode(nonce),
        };
        topics::seal(&f.ctx, &pa, &t, &bob.id, copy.clone())
            .await
            .unwrap();
        // Ours: alice may not overwrite bob's copy (she is neither bob nor an admin).
        assert_eq!(
            topics::seal(&f.ctx, &pa, &t, &bob.id, copy).await,
            Err(TopicError::AlreadySealed)
        );
        let mine = topics::key(&f.ctx, &pb, &t).await.unwrap();
        assert_eq!(
            open(&bi, &mine.sealed.encrypted_key, &mine.sealed.nonce),
            key
        );
        assert!(
            topics::pending_seals(&f.ctx, &pa, &t)
                .await
                .unwrap()
                .pending
                .is_empty()
        );
        // A keyed topic is not claimed again.
        assert!(matches!(
            topics::claim_key(
                &f.ctx,
                &pb,
                &t,
                &"a".repeat(64),
                SealedCopy {
                    encrypted_key: "k".into(),
                    nonce: "n".into()
                }
            )
            .await,
            Err(TopicError::AlreadyEncrypted { .. })
        ));
    }

    fn rand_bytes() -> [u8; 32] {
        broker::ids::random_seed()
    }

    fn rand_bytes24() -> [u8; 24] {
        let s = broker::ids::random_seed();
        s[..24].try_into().unwrap()
    }

    #[tokio::test]
    async fn rest_posts_record_mentions_unread_counts_and_read_marks() {
        let f = fixture().await;
        let alice = f.member("alice", &Identity::random(), Role::Member).await;
        let bob = f.member("Bob", &Identity::random(), Role::Member).await;
        let admin = f.member("root", &Identity::random(), Role::Admin).await;
        let (pa, pb, pr) = (f.principal(&alice), f.principal(&bob), f.principal(&admin));
        let t = topics::create(
            &f.ctx,
            &pa,
            CreateTopic {
                name: "chat".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .topic;
        assert_eq!(
            topics::resolve_name(&f.ctx, &pb, "chat").await.unwrap().id,
            t.id
        );
        assert!(matches!(
            topics::resolve_name(&f.ctx, &pb, &t.id).await,
            Err(TopicError::NotFound { .. })
        ));
        let out = topics::post(
            &f.ctx,
            &pa,
            PostRequest {
                topic_id: t.id.clone(),
                ciphertext: b64("ping @bob and @root"),
                priority: Priority::Next,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(out.notifications, 2, "bob and root, case-insensitively");
        assert_eq!(out.message.queue_id.len(), 32);
        assert_ne!(out.message.id, out.message.queue_id);
        let explicit = topics::post(
            &f.ctx,
            &pa,
            PostRequest {
                topic_id: t.id.clone(),
                ciphertext: b64("no tokens"),
                mentions: Some(vec!["@BOB".into(), "alice".into()]),
                reply_to_id: Some(out.message.id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(explicit.notifications, 1, "the sender is excluded");
        assert_eq!(explicit.message.reply_to_id, Some(out.message.id.clone()));

        let list = topics::list(&f.ctx, &pb).await.unwrap();
        assert_eq!(list[0].unread, 2, "bob never read");
        assert_eq!(
            topics::list(&f.ctx, &pa).await.unwrap()[0].unread,
            0,
            "own posts"
        );
        let n = topics::notifications(&f.ctx, &pb, None, true)
            .await
            .unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].message.id, explicit.message.id, "newest first");
        assert_eq!(n[0].topic_name, "chat");
        // REST's read mark joins the topic.
        assert!(
            topics::mark_read(&f.ctx, &pb, &t, false)
                .await
                .unwrap()
                .is_none()
        );
        let at = topics::mark_read(&f.ctx, &pb, &t, true).await.unwrap();
        assert!(at.is_some());
        assert_eq!(topics::list(&f.ctx, &pb).await.unwrap()[0].unread, 0);
        let (marked, _) = topics::mark_notifications_read(
            &f.ctx,
            &pb,
            MarkWhich::Ids(vec![n[1].notification.id.clone()]),
        )
        .await
        .unwrap();
        assert_eq!(marked, 1);
        let (marked, _) =
            topics::mark_notifications_read(&f.ctx, &pb, MarkWhich::All { before: None })
                .await
                .unwrap();
        assert_eq!(marked, 1);
        assert!(
            topics::notifications(&f.ctx, &pb, None, true)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            topics::notifications(&f.ctx, &pr, None, false)
                .await
                .unwrap()
                .len(),
            1
        );

        // Ours: a private topic is entered by being added by a member (or an admin).
        let private = topics::create(
            &f.ctx,
            &pa,
            CreateTopic {
                name: "inner".into(),
                visibility: Some("private".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .topic;
        assert_eq!(
            topics::join(&f.ctx, &pb, &private, None).await.unwrap(),
            topics::JoinOutcome::Ignored
        );
        assert_eq!(
            topics::add_member(&f.ctx, &pb, &private, &bob.id, None).await,
            Err(TopicError::NotMember)
        );
        assert_eq!(
            topics::add_member(&f.ctx, &pa, &private, &bob.id, None)
                .await
                .unwrap(),
            topics::JoinOutcome::Joined
        );
        assert_eq!(
            topics::members(&f.ctx, &pb, &private).await.unwrap().len(),
            2
        );

        // History pages from REST the same way.
        let page = topics::history(&f.ctx, &pb, &t, Some(1), None)
            .await
            .unwrap();
        assert_eq!(page[0].id, explicit.message.id);
        let older = topics::history(&f.ctx, &pb, &t, Some(50), Some(&page[0].id))
            .await
            .unwrap();
        assert_eq!(
            older.iter().map(|m| &m.id).collect::<Vec<_>>(),
            [&out.message.id]
        );
    }
}
