//! One contract suite per capability of the `Store` seam (`MeshStore`, `InviteStore`,
//! `QueueStore`, `AuditStore`, `PeerStateStore`), each run against every backend: the memory
//! store and PostgreSQL (a fresh, migrated database per test). A new capability trait adds
//! its suite here with one `contract!` line.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use broker::protocol::{Group, Priority};
use broker::store::memory::MemoryStore;
use broker::store::postgres::PgStore;
use broker::store::{
    AuditStore, Claim, Invite, InviteStore, Mesh, MeshStore, MessageRef, NewMember, PeerState,
    PeerStateStore, QueueStore, QueuedMessage, Role, Store, StoreBackend, StoreError, verify_audit,
};
use common::pg;
use serde_json::json;

fn mesh(id: &str) -> Mesh {
    Mesh {
        id: id.into(),
        slug: format!("slug-{id}"),
        name: format!("Mesh {id}"),
        owner_user_id: Some("owner".into()),
        owner_seed_hex: "00".repeat(32),
        owner_pubkey: "ab".repeat(32),
        root_key: "root".into(),
        created_at: 1_700_000_000_000,
    }
}

fn new_member(key_byte: &str, name: &str) -> NewMember {
    NewMember {
        pubkey: key_byte.repeat(32),
        display_name: name.into(),
        role: Role::Member,
        user_id: None,
        default_groups: vec![Group {
            name: "ops".into(),
            role: Some("lead".into()),
        }],
        role_tag: Some("dev".into()),
    }
}

fn message(
    id: &str,
    mesh_id: &str,
    to: &str,
    priority: Priority,
    session: Option<&str>,
    created_at: i64,
) -> QueuedMessage {
    QueuedMessage {
        id: id.into(),
        mesh_id: mesh_id.into(),
        sender_member_id: "sender".into(),
        sender_pubkey: "sp".into(),
        sender_member_pubkey: "smp".into(),
        sender_name: "alice".into(),
        target_member_id: to.into(),
        target_session_key: session.map(str::to_string),
        priority,
        nonce: "n".into(),
        ciphertext: format!("ct-{id}"),
        client_message_id: Some(format!("c-{id}")),
        created_at,
        subtype: None,
        // Every queue check also proves that the trace context survives the store.
        trace: Some(format!("traceparent-of-{id}")),
    }
}

fn claim<'a>(mesh_id: &'a str, member: &'a str, now: i64) -> Claim<'a> {
    Claim {
        mesh_id,
        member_id: member,
        session_key: None,
        all_priorities: true,
        steal: false,
        lease_ms: 1000,
        now_ms: now,
        limit: 100,
    }
}

fn ids(v: &[QueuedMessage]) -> Vec<&str> {
    v.iter().map(|m| m.id.as_str()).collect()
}

async fn meshes_and_members(s: &dyn MeshStore) {
    s.create_mesh(mesh("m1")).await.unwrap();
    assert!(
        matches!(
            s.create_mesh(Mesh {
                id: "m2".into(),
                ..mesh("m1")
            })
            .await,
            Err(StoreError::Conflict(_))
        ),
        "slug is unique"
    );
    let got = s.mesh("m1").await.unwrap().unwrap();
    assert_eq!(
        (got.name.as_str(), got.owner_user_id.as_deref()),
        ("Mesh m1", Some("owner"))
    );
    assert!(s.mesh("nope").await.unwrap().is_none());

    let a = s.add_member("m1", new_member("a1", "alice")).await.unwrap();
    assert!(matches!(
        s.add_member("m1", new_member("a1", "again")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.add_member("nope", new_member("b1", "bob"))
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
    let b = s.add_member("m1", new_member("b1", "bob")).await.unwrap();
    assert_eq!(
        a.default_groups,
        vec![Group {
            name: "ops".into(),
            role: Some("lead".into())
        }]
    );
    assert_eq!(a.role_tag.as_deref(), Some("dev"));
    let by_key = s
        .member_by_pubkey("m1", &"a1".repeat(32))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_key.id, a.id);
    assert_eq!(
        s.member("m1", &b.id).await.unwrap().unwrap().display_name,
        "bob"
    );
    assert_eq!(s.members("m1").await.unwrap().len(), 2);

    s.set_revoked("m1", &b.id, Some(42)).await.unwrap();
    assert_eq!(
        s.member("m1", &b.id).await.unwrap().unwrap().revoked_at,
        Some(42)
    );
    s.set_revoked("m1", &b.id, None).await.unwrap();
    assert_eq!(
        s.member("m1", &b.id).await.unwrap().unwrap().revoked_at,
        None
    );
    assert_eq!(
        s.set_revoked("m1", "ghost", None).await.unwrap_err(),
        StoreError::NotFound
    );

    let mut patch = BTreeMap::new();
    patch.insert("k1".to_string(), Some(vec!["dm".to_string()]));
    patch.insert("k2".to_string(), Some(vec![]));
    let merged = s.update_grants("m1", &a.id, patch).await.unwrap();
    assert_eq!(merged.len(), 2);
    let mut patch = BTreeMap::new();
    patch.insert("k2".to_string(), None);
    patch.insert("k3".to_string(), Some(vec!["read".to_string()]));
    let merged = s.update_grants("m1", &a.id, patch).await.unwrap();
    assert_eq!(merged.keys().collect::<Vec<_>>(), vec!["k1", "k3"]);
    assert_eq!(
        s.member("m1", &a.id).await.unwrap().unwrap().peer_grants,
        merged
    );
    assert_eq!(
        s.update_grants("m1", "ghost", BTreeMap::new())
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
}

/// Invites belong to a mesh, so the suite creates one through `MeshStore` first.
async fn invites<S: MeshStore + InviteStore>(s: &S) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let invite = Invite {
        code: "code1".into(),
        token: "token1".into(),
        mesh_id: "m1".into(),
        role: Role::Admin,
        expires_at: 2_000_000_000,
        max_uses: Some(1),
        uses: 0,
        payload: json!({"v": 1}),
    };
    s.create_invite(invite).await.unwrap();
    assert_eq!(
        s.invite_by_token("token1").await.unwrap().unwrap().code,
        "code1"
    );
    assert_eq!(
        s.invite_by_token("code1").await.unwrap().unwrap().role,
        Role::Admin
    );
    assert!(s.invite_by_token("nope").await.unwrap().is_none());

    let e = s
        .redeem_invite("code1", new_member("c1", "carol"), 1_900_000_000)
        .await
        .unwrap();
    assert!(!e.already_member);
    assert_eq!(e.member.display_name, "carol");
    let again = s
        .redeem_invite("code1", new_member("c1", "carol"), 1_900_000_000)
        .await
        .unwrap();
    assert!(
        again.already_member,
        "an existing member does not use the invite"
    );
    assert_eq!(again.member.id, e.member.id);
    assert!(
        matches!(
            s.redeem_invite("code1", new_member("d1", "dave"), 1_900_000_000)
                .await,
            Err(StoreError::Invalid(_))
        ),
        "max uses"
    );
    s.create_invite(Invite {
        code: "code2".into(),
        token: "token2".into(),
        max_uses: None,
        ..s.invite_by_token("code1").await.unwrap().unwrap()
    })
    .await
    .unwrap();
    assert!(
        matches!(
            s.redeem_invite("code2", new_member("d1", "dave"), 2_100_000_000)
                .await,
            Err(StoreError::Invalid(_))
        ),
        "expired"
    );
    assert_eq!(
        s.redeem_invite("nope", new_member("d1", "dave"), 0)
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
}

async fn queue(s: &dyn QueueStore) {
    let t = 1_000_000;
    s.enqueue(message("q1", "m1", "bob", Priority::Next, None, t))
        .await
        .unwrap();
    s.enqueue(message(
        "q2",
        "m1",
        "bob",
        Priority::Now,
        Some("sess-b"),
        t + 1,
    ))
    .await
    .unwrap();
    s.enqueue(message("q3", "m1", "bob", Priority::Low, None, t + 2))
        .await
        .unwrap();
    s.enqueue(message("q4", "m1", "carol", Priority::Now, None, t + 3))
        .await
        .unwrap();
    s.enqueue(message("q5", "m2", "bob", Priority::Now, None, t + 4))
        .await
        .unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 5);

    // Busy presence: only `now`, and only its own session's messages.
    let busy = Claim {
        all_priorities: false,
        session_key: Some("sess-b"),
        ..claim("m1", "bob", t)
    };
    let got = s.claim(busy).await.unwrap();
    assert_eq!(ids(&got), vec!["q2"]);
    assert_eq!(
        got[0],
        message("q2", "m1", "bob", Priority::Now, Some("sess-b"), t + 1),
        "rows come back whole"
    );
    // Another session of bob: not q2 (another session's), in order.
    let got = s
        .claim(Claim {
            session_key: Some("sess-x"),
            ..claim("m1", "bob", t)
        })
        .await
        .unwrap();
    assert_eq!(ids(&got), vec!["q1", "q3"]);
    // Leased: nothing until the lease ends, unless stolen.
    assert!(
        s.claim(claim("m1", "bob", t + 500))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&s
            .claim(Claim {
                steal: true,
                ..claim("m1", "bob", t + 500)
            })
            .await
            .unwrap()),
        vec!["q1", "q3"]
    );
    assert_eq!(
        ids(&s.claim(claim("m1", "bob", t + 5000)).await.unwrap()),
        vec!["q1", "q3"]
    );
    // Limits hold.
    assert_eq!(
        ids(&s
            .claim(Claim {
                limit: 1,
                steal: true,
                ..claim("m1", "bob", t)
            })
            .await
            .unwrap()),
        vec!["q1"]
    );

    // Delivered by broker id or client id, only by the recipient.
    assert!(
        !s.mark_delivered("m1", "carol", MessageRef::Broker("q1"))
            .await
            .unwrap(),
        "not carol's"
    );
    assert!(
        s.mark_delivered("m1", "bob", MessageRef::Broker("q1"))
            .await
            .unwrap()
    );
    assert!(
        !s.mark_delivered("m1", "bob", MessageRef::Broker("q1"))
            .await
            .unwrap(),
        "already delivered"
    );
    assert!(
        s.mark_delivered("m1", "bob", MessageRef::Client("c-q3"))
            .await
            .unwrap()
    );
    let left = s
        .claim(Claim {
            steal: true,
            session_key: Some("sess-b"),
            ..claim("m1", "bob", t + 9000)
        })
        .await
        .unwrap();
    assert_eq!(ids(&left), vec!["q2"]);
    assert_eq!(s.queue_depth().await.unwrap(), 3);

    // The sweep removes what is older than the cut-off.
    assert_eq!(s.sweep_expired(t + 4).await.unwrap(), 2, "q2 and q4");
    assert_eq!(s.queue_depth().await.unwrap(), 1);
}

async fn peer_state(s: &dyn PeerStateStore) {
    assert!(s.peer_state("m1", "bob").await.unwrap().is_none());
    let mut profile = serde_json::Map::new();
    profile.insert("title".into(), json!("Dr"));
    let state = PeerState {
        groups: vec![Group {
            name: "ops".into(),
            role: None,
        }],
        summary: Some("busy".into()),
        profile,
        stats: Some(json!({"toolCalls": 3})),
        last_seen_at: 77,
    };
    s.save_peer_state("m1", "bob", state.clone()).await.unwrap();
    assert_eq!(
        s.peer_state("m1", "bob").await.unwrap(),
        Some(state.clone())
    );
    let newer = PeerState {
        summary: None,
        last_seen_at: 78,
        ..state
    };
    s.save_peer_state("m1", "bob", newer.clone()).await.unwrap();
    assert_eq!(s.peer_state("m1", "bob").await.unwrap(), Some(newer));
}

async fn audit(s: &dyn AuditStore) {
    s.append_audit(
        "m1",
        "peer_joined",
        Some("bob"),
        json!({"pubkey": "k", "groups": [{"name": "ops"}]}),
        1000,
    )
    .await
    .unwrap();
    s.append_audit(
        "m1",
        "message_sent",
        Some("bob"),
        json!({"targetSpec": "*", "priority": "now"}),
        1001,
    )
    .await
    .unwrap();
    s.append_audit(
        "m1",
        "member_banned",
        None,
        json!({"note": "ünïcode ✓"}),
        1002,
    )
    .await
    .unwrap();
    s.append_audit("m2", "peer_joined", None, json!({}), 1003)
        .await
        .unwrap();
    let chain = s.audit_entries("m1").await.unwrap();
    assert_eq!(
        chain.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(chain[0].prev_hash, "genesis");
    assert_eq!(chain[1].prev_hash, chain[0].hash);
    let verdict = verify_audit(&chain);
    assert!(
        verdict.valid && verdict.entries == 3 && verdict.broken_at.is_none(),
        "{verdict:?}"
    );
    // A changed payload breaks the chain at that entry.
    let mut tampered = chain.clone();
    tampered[1].payload = json!({"targetSpec": "@ops", "priority": "now"});
    assert_eq!(verify_audit(&tampered).broken_at, Some(2));
    assert_eq!(s.audit_entries("m2").await.unwrap().len(), 1);
}

async fn pg_store() -> PgStore {
    PgStore::new(&pg::fresh_db().await, 4).unwrap()
}

/// `contract!(suite: test, …)`: a module `suite` with every test run on each backend, as
/// `suite::memory::test` and `suite::postgres::test`.
macro_rules! contract {
    ($suite:ident: $($name:ident),* $(,)?) => {
        mod $suite {
            mod memory {
                $(#[tokio::test] async fn $name() {
                    crate::$name(&crate::MemoryStore::new()).await;
                })*
            }
            mod postgres {
                $(#[tokio::test] async fn $name() {
                    crate::$name(&crate::pg_store().await).await;
                })*
            }
        }
    };
}

/// Sends are idempotent per (sender member, client_message_id), delivered or not, until the
/// TTL sweep; concurrent duplicates answer one id and queue one row.
async fn idempotent_enqueue(s: &dyn QueueStore) {
    let t = 2_000_000;
    let with = |id: &str, sender: &str, cid: Option<&str>| QueuedMessage {
        sender_member_id: sender.into(),
        client_message_id: cid.map(str::to_string),
        ..message(id, "m1", "bob", Priority::Now, None, t)
    };
    assert_eq!(
        s.enqueue(with("a1", "alice", Some("x"))).await.unwrap(),
        "a1"
    );
    assert_eq!(
        s.enqueue(with("a2", "alice", Some("x"))).await.unwrap(),
        "a1",
        "a retry answers the original id"
    );
    assert_eq!(
        s.enqueue(with("c1", "carol", Some("x"))).await.unwrap(),
        "c1"
    );
    assert_eq!(s.enqueue(with("n1", "alice", None)).await.unwrap(), "n1");
    assert_eq!(s.enqueue(with("n2", "alice", None)).await.unwrap(), "n2");
    assert_eq!(
        s.queue_depth().await.unwrap(),
        4,
        "the retry queued nothing"
    );
    let got = s.claim(claim("m1", "bob", t)).await.unwrap();
    assert_eq!(ids(&got), vec!["a1", "c1", "n1", "n2"]);
    assert!(
        s.mark_delivered("m1", "bob", MessageRef::Broker("a1"))
            .await
            .unwrap()
    );
    assert_eq!(
        s.enqueue(with("a3", "alice", Some("x"))).await.unwrap(),
        "a1",
        "still idempotent after delivery"
    );
    assert_eq!(s.queue_depth().await.unwrap(), 3);

    // Concurrent duplicates (one batch or several): one id, one row.
    let dupes = (0..16).map(|i| s.enqueue(with(&format!("d{i}"), "dave", Some("y"))));
    let answers = futures_util::future::join_all(dupes).await;
    let first = answers[0].clone().unwrap();
    assert!(
        answers.iter().all(|a| a.as_ref() == Ok(&first)),
        "{answers:?}"
    );
    assert_eq!(s.queue_depth().await.unwrap(), 4);

    // The TTL sweep ends the window.
    s.sweep_expired(t + 1).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 0);
    assert_eq!(
        s.enqueue(with("a4", "alice", Some("x"))).await.unwrap(),
        "a4"
    );
}

contract!(mesh_store: meshes_and_members);
contract!(invite_store: invites);
contract!(queue_store: queue, idempotent_enqueue);
contract!(audit_store: audit);
contract!(peer_state_store: peer_state);

#[tokio::test]
async fn postgres_reports_its_schema_version() {
    let store = pg_store().await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        Some(broker::store::postgres::SCHEMA_VERSION)
    );
    assert!(store.healthy().await);
    let empty = PgStore::new(&pg::create_db(&pg::admin_url()).await, 2).unwrap();
    assert_eq!(empty.schema_version().await.unwrap(), Some(0));
    assert_eq!(MemoryStore::new().schema_version().await.unwrap(), None);
}

#[tokio::test]
async fn postgres_group_commit_keeps_submission_order() {
    let store = pg_store().await;
    // Many concurrent sends from one task each, in one pair: the order of acknowledgement
    // (each send awaited before the next) is the order of claim.
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let id = format!("s{s}-{i:02}");
                    store
                        .enqueue(message(
                            &id,
                            "m1",
                            &format!("to{s}"),
                            Priority::Now,
                            None,
                            1,
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    for s in 0..8 {
        let to = format!("to{s}");
        let got = store.claim(claim("m1", &to, 10)).await.unwrap();
        let want: Vec<String> = (0..25).map(|i| format!("s{s}-{i:02}")).collect();
        assert_eq!(
            ids(&got),
            want.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}

/// What the broker holds (`Arc<dyn Store>`) carries every capability, and narrows to each
/// one, so a module can take only the handle it uses.
#[tokio::test]
async fn a_store_narrows_to_each_capability() {
    let backends: [Arc<dyn Store>; 2] = [Arc::new(MemoryStore::new()), Arc::new(pg_store().await)];
    for store in backends {
        let backend: Arc<dyn StoreBackend> = store.clone();
        assert!(backend.healthy().await, "{}", backend.kind());
        let meshes: Arc<dyn MeshStore> = store.clone();
        meshes.create_mesh(mesh("m1")).await.unwrap();
        assert!(store.mesh("m1").await.unwrap().is_some());
        let invites: Arc<dyn InviteStore> = store.clone();
        assert!(invites.invite_by_token("nope").await.unwrap().is_none());
        let queue: Arc<dyn QueueStore> = store.clone();
        queue
            .enqueue(message("q1", "m1", "bob", Priority::Now, None, 1))
            .await
            .unwrap();
        assert_eq!(store.queue_depth().await.unwrap(), 1);
        let audit: Arc<dyn AuditStore> = store.clone();
        audit
            .append_audit("m1", "peer_joined", None, json!({}), 1)
            .await
            .unwrap();
        assert_eq!(store.audit_entries("m1").await.unwrap().len(), 1);
        let peers: Arc<dyn PeerStateStore> = store.clone();
        assert!(peers.peer_state("m1", "bob").await.unwrap().is_none());
    }
}

/// Every capability of `Store` has its suite here (`contract!(snake_case_name: …)`, run on
/// both backends), and every capability trait of `store/mod.rs` is part of `Store`: a new
/// family cannot land as an untested trait or as one the broker's handle does not carry.
#[test]
fn every_capability_has_a_contract_suite() {
    let store_rs = include_str!("../src/store/mod.rs");
    let this = include_str!("store_contract.rs");
    let bounds = store_rs
        .split_once("pub trait Store:")
        .and_then(|(_, rest)| rest.split_once('{'))
        .map(|(bounds, _)| bounds)
        .expect("store/mod.rs declares `pub trait Store: A + B + …`");
    // A bound may name its family's module (`state::StateStore`): the trait is the last part.
    let parts: Vec<&str> = bounds
        .split('+')
        .map(|b| b.trim().rsplit("::").next().unwrap_or_default())
        .collect();
    // Capability traits live in `store/mod.rs` or in a family's own `store/<family>.rs`.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store");
    let family_files: Vec<String> = std::fs::read_dir(dir)
        .expect("src/store exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    let declared: Vec<&str> = family_files
        .iter()
        .flat_map(|f| f.lines())
        .filter_map(|l| l.strip_prefix("pub trait "))
        .filter_map(|l| l.split([':', ' ', '<']).next())
        .filter(|name| *name != "Store")
        .collect();
    assert!(declared.len() >= 5, "{declared:?}");
    for name in &declared {
        assert!(parts.contains(name), "{name} is not a bound of `Store`");
    }
    for name in parts.iter().filter(|n| **n != "StoreBackend") {
        let mut suite = String::new();
        for (i, c) in name.char_indices() {
            if c.is_uppercase() && i > 0 {
                suite.push('_');
            }
            suite.push(c.to_ascii_lowercase());
        }
        assert!(
            this.contains(&format!("contract!({suite}:")),
            "{name} has no `contract!({suite}: …)` suite"
        );
    }
}

/// Paged listing, and deletion of a member and of a mesh with everything they own; what
/// belongs to others stays.
async fn listing_and_deleting<S: Store>(s: &S) {
    for id in ["m3", "m1", "m2"] {
        s.create_mesh(mesh(id)).await.unwrap();
    }
    let page = |after: Option<&'static str>, limit| async move {
        let got = s.list_meshes(after, limit).await.unwrap();
        got.into_iter().map(|m| m.id).collect::<Vec<_>>()
    };
    assert_eq!(page(None, 2).await, vec!["m1", "m2"], "id order");
    assert_eq!(page(Some("m2"), 10).await, vec!["m3"]);
    assert!(page(Some("m3"), 10).await.is_empty());
    assert_eq!(s.list_meshes(None, 10).await.unwrap()[0].slug, "slug-m1");

    let alice = s.add_member("m1", new_member("aa", "alice")).await.unwrap();
    let bob = s.add_member("m1", new_member("bb", "bob")).await.unwrap();
    let other = s
        .add_member("m2", new_member("aa", "alice elsewhere"))
        .await
        .unwrap();
    let grant = BTreeMap::from([(alice.pubkey.clone(), Some(vec!["dm".to_string()]))]);
    s.update_grants("m1", &bob.id, grant.clone()).await.unwrap();
    s.update_grants("m2", &other.id, grant).await.unwrap();
    let from = |who: &broker::store::Member, id: &str, to: &str, mesh_id: &str| QueuedMessage {
        sender_member_id: who.id.clone(),
        ..message(id, mesh_id, to, Priority::Now, None, 1)
    };
    s.enqueue(from(&bob, "to-alice", &alice.id, "m1"))
        .await
        .unwrap();
    s.enqueue(from(&alice, "to-bob", &bob.id, "m1"))
        .await
        .unwrap();
    s.enqueue(from(&bob, "to-other", &other.id, "m2"))
        .await
        .unwrap();
    for (mesh_id, who) in [("m1", &alice.id), ("m1", &bob.id), ("m2", &other.id)] {
        s.save_peer_state(mesh_id, who, PeerState::default())
            .await
            .unwrap();
    }
    for mesh_id in ["m1", "m2"] {
        s.append_audit(mesh_id, "peer_joined", Some(&alice.id), json!({}), 5)
            .await
            .unwrap();
    }
    s.create_invite(Invite {
        code: "inv-m1".into(),
        token: "token-m1".into(),
        mesh_id: "m1".into(),
        role: Role::Member,
        expires_at: i64::MAX / 2,
        max_uses: None,
        uses: 0,
        payload: json!({}),
    })
    .await
    .unwrap();

    // A member delete: its row, its queue, its peer state, its key in others' grants.
    assert!(s.delete_member("m1", &alice.id).await.unwrap());
    assert!(
        !s.delete_member("m1", &alice.id).await.unwrap(),
        "already gone"
    );
    assert!(!s.delete_member("nope", &bob.id).await.unwrap());
    assert!(s.member("m1", &alice.id).await.unwrap().is_none());
    assert!(
        s.member_by_pubkey("m1", &alice.pubkey)
            .await
            .unwrap()
            .is_none()
    );
    let bob_now = s.member("m1", &bob.id).await.unwrap().unwrap();
    assert!(bob_now.peer_grants.is_empty(), "{:?}", bob_now.peer_grants);
    assert!(
        s.claim(claim("m1", &alice.id, 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&s.claim(claim("m1", &bob.id, 10)).await.unwrap()),
        vec!["to-bob"],
        "what she sent others stays queued"
    );
    assert!(s.peer_state("m1", &alice.id).await.unwrap().is_none());
    assert!(s.peer_state("m1", &bob.id).await.unwrap().is_some());
    assert_eq!(
        s.audit_entries("m1").await.unwrap().len(),
        1,
        "the chain is kept"
    );
    // Her idempotency keys went with her: the same client id queues anew.
    let again = QueuedMessage {
        client_message_id: Some("c-to-bob".into()),
        ..from(&alice, "to-bob-2", &bob.id, "m1")
    };
    let again = s.enqueue(again).await.unwrap();
    assert_eq!(again, "to-bob-2");
    // The same key in another mesh is another member, untouched.
    let o = s.member("m2", &other.id).await.unwrap().unwrap();
    assert_eq!(o.peer_grants.len(), 1);

    // A mesh delete: everything under its id.
    assert!(s.delete_mesh("m1").await.unwrap());
    assert!(s.mesh("m1").await.unwrap().is_none());
    assert!(s.members("m1").await.unwrap().is_empty());
    assert!(
        s.claim(claim("m1", &bob.id, 10_000))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.peer_state("m1", &bob.id).await.unwrap().is_none());
    assert!(s.audit_entries("m1").await.unwrap().is_empty());
    assert!(s.invite_by_token("token-m1").await.unwrap().is_none());
    assert_eq!(page(None, 10).await, vec!["m2", "m3"]);
    assert!(!s.delete_mesh("m1").await.unwrap(), "already gone");
    // Nothing of m2 was touched.
    assert_eq!(s.members("m2").await.unwrap().len(), 1);
    assert_eq!(
        ids(&s.claim(claim("m2", &other.id, 10)).await.unwrap()),
        vec!["to-other"]
    );
    assert!(s.peer_state("m2", &other.id).await.unwrap().is_some());
    assert_eq!(s.audit_entries("m2").await.unwrap().len(), 1);
    // A mesh created again under the same slug starts empty.
    s.create_mesh(mesh("m1")).await.unwrap();
    assert!(s.members("m1").await.unwrap().is_empty());
    assert!(s.audit_entries("m1").await.unwrap().is_empty());
}

contract!(mesh_store_deletion: listing_and_deleting);

/// On PostgreSQL a member delete also drops the member's scheduled messages (they would
/// fire as a member that no longer exists) and keeps what it gave the mesh (memories); a
/// mesh delete purges every table with a `mesh_id` column, the extension families' too.
#[tokio::test]
async fn postgres_deletes_reach_the_extension_families_tables() {
    use broker::store::memories::{MemoriesStore, Memory};
    use broker::store::schedule::{ScheduleStore, ScheduledEntry};
    let url = pg::fresh_db().await;
    let s = PgStore::new(&url, 4).unwrap();
    s.create_mesh(mesh("m1")).await.unwrap();
    let alice = s.add_member("m1", new_member("aa", "alice")).await.unwrap();
    let entry = |id: &str| ScheduledEntry {
        id: id.into(),
        mesh_id: "m1".into(),
        presence_id: "p".into(),
        member_id: alice.id.clone(),
        to: "*".into(),
        message: "later".into(),
        deliver_at: i64::MAX / 4,
        cron: None,
        subtype: None,
        fired_count: 0,
        cancelled: false,
        fired_at: None,
        created_at: 1,
    };
    s.create_scheduled(entry("s1"), 10).await.unwrap();
    let memory = Memory {
        id: "mem1".into(),
        mesh_id: "m1".into(),
        content: "the deploy key rotates on fridays".into(),
        tags: vec![],
        member_id: alice.id.clone(),
        member_name: "alice".into(),
        created_at: 1,
    };
    assert!(s.remember(memory, 100).await.unwrap());
    assert!(s.delete_member("m1", &alice.id).await.unwrap());
    assert!(s.list_scheduled("m1", &alice.id).await.unwrap().is_empty());
    assert_eq!(
        s.recall("m1", "deploy", 10).await.unwrap().len(),
        1,
        "memories stay"
    );

    let bob = s.add_member("m1", new_member("bb", "bob")).await.unwrap();
    s.create_scheduled(
        ScheduledEntry {
            member_id: bob.id.clone(),
            ..entry("s2")
        },
        10,
    )
    .await
    .unwrap();
    assert!(s.delete_mesh("m1").await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND column_name = 'mesh_id'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 8, "{tables:?}");
    for table in tables {
        let sql = format!("SELECT count(*) FROM \"{table}\" WHERE mesh_id = 'm1'");
        let n: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "{table} kept rows of the deleted mesh");
    }
}

fn task_actor(member: &str) -> broker::store::tasks::TaskActor {
    broker::store::tasks::TaskActor {
        member_id: member.into(),
        presence_id: format!("p-{member}"),
        name: format!("name-{member}"),
    }
}

fn task(id: &str, mesh_id: &str, creator: &str, at: i64) -> broker::store::tasks::Task {
    broker::store::tasks::Task::new(
        id.into(),
        mesh_id,
        format!("title {id}"),
        Some(task_actor(creator)),
        at,
    )
}

/// Tasks: newest first with exact filters, claimed once, completed by claimer, creator or
/// admin only, per mesh; at the bound the oldest done task makes room.
async fn tasks_lifecycle<S: MeshStore + broker::store::tasks::TaskStore>(s: &S) {
    use broker::store::tasks::{CreateTask, TaskFilter, TaskStatus};
    for id in ["m1", "m2"] {
        s.create_mesh(mesh(id)).await.unwrap();
    }
    let all = TaskFilter::default();
    let mut t1 = task("t1", "m1", "alice", 10);
    t1.assignee = Some("bob".into());
    t1.priority = "high".into();
    t1.tags = vec!["x".into(), "y".into()];
    assert_eq!(
        s.create_task(t1.clone(), 0).await.unwrap(),
        CreateTask::Created
    );
    s.create_task(task("t2", "m1", "alice", 20), 0)
        .await
        .unwrap();
    s.create_task(task("t3", "m2", "alice", 30), 0)
        .await
        .unwrap();
    let ids = |v: Vec<broker::store::tasks::Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_tasks("m1", &all, 100).await.unwrap()),
        vec!["t2", "t1"]
    );
    assert_eq!(ids(s.list_tasks("m1", &all, 1).await.unwrap()), vec!["t2"]);
    let got = s.list_tasks("m1", &all, 100).await.unwrap().pop().unwrap();
    assert_eq!(got, t1, "every field round-trips");
    let bobs = TaskFilter {
        assignee: Some("bob".into()),
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(s.list_tasks("m1", &bobs, 100).await.unwrap()),
        vec!["t1"]
    );

    assert!(
        !s.claim_task("m2", "t1", &task_actor("bob"), 40)
            .await
            .unwrap(),
        "other mesh"
    );
    assert!(
        s.claim_task("m1", "t1", &task_actor("bob"), 40)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_task("m1", "t1", &task_actor("carol"), 41)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_task("m1", "nope", &task_actor("carol"), 41)
            .await
            .unwrap()
    );
    let claimed = TaskFilter {
        status: Some(TaskStatus::Claimed),
        ..TaskFilter::default()
    };
    let c = s.list_tasks("m1", &claimed, 100).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].claimed_by, Some(task_actor("bob")));
    assert_eq!(c[0].claimed_at, Some(40));

    // Carol neither claimed nor created t1; bob claimed it; alice created t2; an admin may.
    assert!(
        !s.complete_task("m1", "t1", "carol", false, Some("r"), 50)
            .await
            .unwrap()
    );
    assert!(
        s.complete_task("m1", "t1", "bob", false, Some("r"), 50)
            .await
            .unwrap()
    );
    assert!(
        s.complete_task("m1", "t2", "alice", false, None, 51)
            .await
            .unwrap()
    );
    assert!(
        !s.complete_task("m1", "t3", "alice", true, None, 52)
            .await
            .unwrap(),
        "other mesh"
    );
    assert!(
        s.complete_task("m2", "t3", "zed", true, None, 52)
            .await
            .unwrap()
    );
    let done = TaskFilter {
        status: Some(TaskStatus::Done),
        ..TaskFilter::default()
    };
    let d = s.list_tasks("m1", &done, 100).await.unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[1].result.as_deref(), d[1].completed_at),
        (Some("r"), Some(50))
    );
    assert!(
        !s.claim_task("m1", "t1", &task_actor("bob"), 60)
            .await
            .unwrap(),
        "done"
    );
    // t1 and t2 done in m1, t3 done in m2.
    assert_eq!(
        s.task_tally("m1").await.unwrap(),
        broker::store::tasks::TaskTally {
            open: 0,
            claimed: 0,
            done: 2
        }
    );
    assert_eq!(s.task_tally("m3").await.unwrap().done, 0);

    // Bound 3 in m1 (two done): a new task replaces the oldest done one, then the other,
    // then the mesh is full.
    s.create_task(task("t4", "m1", "alice", 70), 3)
        .await
        .unwrap();
    assert_eq!(
        s.create_task(task("t5", "m1", "alice", 80), 3)
            .await
            .unwrap(),
        CreateTask::Created
    );
    assert_eq!(
        ids(s.list_tasks("m1", &all, 100).await.unwrap()),
        vec!["t5", "t4", "t2"]
    );
    s.create_task(task("t6", "m1", "alice", 90), 3)
        .await
        .unwrap();
    assert_eq!(
        s.create_task(task("t7", "m1", "alice", 95), 3)
            .await
            .unwrap(),
        CreateTask::Full
    );
    assert_eq!(
        ids(s.list_tasks("m1", &all, 100).await.unwrap()),
        vec!["t6", "t5", "t4"]
    );
}

/// 50 concurrent claims of one task: exactly one wins.
async fn tasks_concurrent_claims<S: MeshStore + broker::store::tasks::TaskStore>(s: &S) {
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_task(task("race", "m1", "alice", 1), 0)
        .await
        .unwrap();
    let claims = (0..50).map(|i| {
        let by = task_actor(&format!("c{i}"));
        async move { s.claim_task("m1", "race", &by, 2).await.unwrap() }
    });
    let won = futures_util::future::join_all(claims).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
}

fn stream(id: &str, mesh_id: &str, name: &str, at: i64) -> broker::store::streams::Stream {
    broker::store::streams::Stream {
        id: id.into(),
        mesh_id: mesh_id.into(),
        name: name.into(),
        created_by: "alice".into(),
        created_at: at,
    }
}

/// Stream names: idempotent per (mesh, name), also concurrently; oldest first; bounded per
/// mesh for new names only.
async fn stream_names<S: MeshStore + broker::store::streams::StreamStore>(s: &S) {
    use broker::store::streams::CreateStream;
    for id in ["m1", "m2", "m3"] {
        s.create_mesh(mesh(id)).await.unwrap();
    }
    let first = stream("s1", "m1", "logs", 10);
    assert_eq!(
        s.create_stream(first.clone(), 2).await.unwrap(),
        CreateStream::Stream(first.clone())
    );
    assert_eq!(
        s.create_stream(stream("other-id", "m1", "logs", 11), 2)
            .await
            .unwrap(),
        CreateStream::Stream(first.clone()),
        "the existing stream answers"
    );
    s.create_stream(stream("s2", "m2", "logs", 12), 2)
        .await
        .unwrap();
    s.create_stream(stream("s3", "m1", "metrics", 13), 2)
        .await
        .unwrap();
    assert_eq!(
        s.create_stream(stream("s4", "m1", "third", 14), 2)
            .await
            .unwrap(),
        CreateStream::Full
    );
    assert_eq!(
        s.create_stream(stream("s5", "m1", "logs", 15), 2)
            .await
            .unwrap(),
        CreateStream::Stream(first.clone()),
        "an existing name is answered at the bound"
    );
    let names: Vec<String> = s
        .list_streams("m1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["logs", "metrics"]);
    assert_eq!(s.list_streams("m2").await.unwrap().len(), 1);
    assert!(s.list_streams("m3").await.unwrap().is_empty());

    let racing = (0..16).map(|i| s.create_stream(stream(&format!("r{i}"), "m3", "race", 20), 0));
    let answers = futures_util::future::join_all(racing).await;
    let ids: std::collections::HashSet<String> = answers
        .into_iter()
        .map(|a| match a.unwrap() {
            CreateStream::Stream(s) => s.id,
            CreateStream::Full => panic!("unbounded"),
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

contract!(task_store: tasks_lifecycle, tasks_concurrent_claims);
contract!(stream_store: stream_names);

fn state_write<'a>(
    mesh_id: &'a str,
    key: &'a str,
    value: &'a serde_json::Value,
    by: &'a str,
    at: i64,
    max_keys: usize,
) -> broker::store::state::StateWrite<'a> {
    broker::store::state::StateWrite {
        mesh_id,
        key,
        value,
        member_id: by,
        member_name: by,
        now_ms: at,
        max_keys,
    }
}

fn written(r: broker::store::state::SetState) -> broker::store::state::StateEntry {
    match r {
        broker::store::state::SetState::Written(e) => e,
        other => panic!("not written: {other:?}"),
    }
}

/// Shared state: last write wins per (mesh, key) with versions 1, 2, …; listed by key
/// (bytewise); a new key beyond the mesh's bound is refused, an existing one still changes.
async fn state_keys(s: &dyn Store) {
    use broker::store::state::SetState;
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let v1 = json!({"nested": {"a": [1, 2]}, "s": "x"});
    let first = written(
        s.set_state(state_write("m1", "k", &v1, "alice", 10, 0))
            .await
            .unwrap(),
    );
    assert_eq!((first.version, first.value.clone()), (1, v1.clone()));
    assert_eq!(s.state("m1", "k").await.unwrap(), Some(first));
    let v2 = json!(42);
    let second = written(
        s.set_state(state_write("m1", "k", &v2, "bob", 20, 0))
            .await
            .unwrap(),
    );
    assert_eq!(
        (
            second.version,
            &second.value,
            second.updated_by_name.as_str(),
            second.updated_at
        ),
        (2, &v2, "bob", 20)
    );
    assert_eq!(second.updated_by_member_id, "bob");
    assert!(
        s.state("m2", "k").await.unwrap().is_none(),
        "meshes are separate"
    );
    assert!(s.state("m1", "nope").await.unwrap().is_none());

    for key in ["b", "a", "B", "é", "a0"] {
        s.set_state(state_write("m1", key, &v2, "alice", 30, 0))
            .await
            .unwrap();
    }
    let keys =
        |v: Vec<broker::store::state::StateEntry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.list_state("m1", 100).await.unwrap()),
        vec!["B", "a", "a0", "b", "k", "é"]
    );
    assert_eq!(keys(s.list_state("m1", 2).await.unwrap()), vec!["B", "a"]);
    assert!(s.list_state("m3", 100).await.unwrap().is_empty());

    // Bound 2 in m2.
    for key in ["x", "y"] {
        written(
            s.set_state(state_write("m2", key, &v2, "alice", 40, 2))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        s.set_state(state_write("m2", "z", &v2, "alice", 41, 2))
            .await
            .unwrap(),
        SetState::TooManyKeys
    );
    let again = written(
        s.set_state(state_write("m2", "x", &v1, "alice", 42, 2))
            .await
            .unwrap(),
    );
    assert_eq!(again.version, 2, "an existing key changes at the bound");
    assert_eq!(keys(s.list_state("m2", 100).await.unwrap()), vec!["x", "y"]);
}

/// Concurrent writers of one key get distinct versions in commit order (the highest is the
/// stored value), and concurrent new keys never pass the bound.
async fn state_concurrent_writes(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let values: Vec<serde_json::Value> = (0..16).map(|i| json!(i)).collect();
    let writes = values
        .iter()
        .map(|v| s.set_state(state_write("m1", "race", v, "w", 1, 0)));
    let entries: Vec<_> = futures_util::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| written(r.unwrap()))
        .collect();
    let mut versions: Vec<i64> = entries.iter().map(|e| e.version).collect();
    versions.sort();
    assert_eq!(versions, (1..=16).collect::<Vec<i64>>());
    let last = entries.iter().max_by_key(|e| e.version).unwrap();
    let stored = s.state("m1", "race").await.unwrap().unwrap();
    assert_eq!((stored.value, stored.version), (last.value.clone(), 16));

    let keys: Vec<String> = (0..10).map(|i| format!("new{i}")).collect();
    let v = json!(true);
    let news = keys
        .iter()
        .map(|k| s.set_state(state_write("m1", k, &v, "w", 2, 5)));
    let answers = futures_util::future::join_all(news).await;
    let stored = answers
        .into_iter()
        .filter(|r| matches!(r, Ok(broker::store::state::SetState::Written(_))))
        .count();
    assert_eq!(stored, 4, "the bound of 5 keys had room for 4 more");
}

contract!(state_store: state_keys, state_concurrent_writes);

fn memory(
    id: &str,
    mesh_id: &str,
    by: &str,
    content: &str,
    at: i64,
) -> broker::store::memories::Memory {
    broker::store::memories::Memory {
        id: id.into(),
        mesh_id: mesh_id.into(),
        content: content.into(),
        tags: vec!["tag-one".into(), "infra".into()],
        member_id: by.into(),
        member_name: format!("name-{by}"),
        created_at: at,
    }
}

/// Memories: every term of the query must match (case-insensitively), best first; tags
/// and forgotten memories are not found; stop words alone find nothing; forget only as
/// allowed; the per-mesh bound counts memories not forgotten.
async fn memories_search(s: &dyn Store) {
    use broker::store::memories::Forgetter;
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let once = memory("once", "m1", "alice", "We restart redis on Mondays", 10);
    let thrice = memory(
        "thrice",
        "m1",
        "bob",
        "redis redis redis: the cache is Redis",
        20,
    );
    assert!(s.remember(once.clone(), 0).await.unwrap());
    assert!(s.remember(thrice.clone(), 0).await.unwrap());
    assert!(
        s.remember(
            memory("pg", "m1", "alice", "Postgres holds the queue", 30),
            0
        )
        .await
        .unwrap()
    );
    assert!(
        s.remember(memory("m2", "m2", "alice", "redis in another mesh", 40), 0)
            .await
            .unwrap()
    );
    assert_eq!(s.memory_count("m1").await.unwrap(), 3);
    assert_eq!(s.memory_count("m2").await.unwrap(), 1);
    assert_eq!(s.memory_count("nowhere").await.unwrap(), 0);

    let ids =
        |v: Vec<broker::store::memories::Memory>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.recall("m1", "REDIS", 20).await.unwrap()),
        vec!["thrice", "once"]
    );
    assert_eq!(
        s.recall("m1", "redis mondays", 20).await.unwrap(),
        vec![once.clone()],
        "every field round-trips"
    );
    assert_eq!(
        ids(s.recall("m1", "redis", 1).await.unwrap()),
        vec!["thrice"]
    );
    assert!(
        s.recall("m1", "infra", 20).await.unwrap().is_empty(),
        "tags are not searched"
    );
    assert!(
        s.recall("m1", "the is on", 20).await.unwrap().is_empty(),
        "stop words only"
    );
    assert!(s.recall("m1", "mysql", 20).await.unwrap().is_empty());
    assert!(s.recall("m3", "redis", 20).await.unwrap().is_empty());

    assert!(
        !s.forget("m1", "once", Forgetter::Author("bob"), 50)
            .await
            .unwrap(),
        "not bob's"
    );
    assert!(
        !s.forget("m2", "once", Forgetter::Anyone, 50).await.unwrap(),
        "other mesh"
    );
    assert!(
        s.forget("m1", "once", Forgetter::Author("alice"), 50)
            .await
            .unwrap()
    );
    assert!(
        !s.forget("m1", "once", Forgetter::Anyone, 51).await.unwrap(),
        "already forgotten"
    );
    assert!(!s.forget("m1", "nope", Forgetter::Anyone, 51).await.unwrap());
    assert!(
        s.forget("m1", "thrice", Forgetter::Anyone, 52)
            .await
            .unwrap(),
        "an admin"
    );
    assert!(s.recall("m1", "redis", 20).await.unwrap().is_empty());
    assert_eq!(
        s.memory_count("m1").await.unwrap(),
        1,
        "forgotten ones are not counted"
    );

    // Bound 2 in m1: one memory is left ("pg"), so one more fits; forgetting makes room.
    assert!(
        s.remember(memory("x", "m1", "alice", "x", 60), 2)
            .await
            .unwrap()
    );
    assert!(
        !s.remember(memory("y", "m1", "alice", "y", 61), 2)
            .await
            .unwrap()
    );
    assert!(s.forget("m1", "x", Forgetter::Anyone, 62).await.unwrap());
    assert!(
        s.remember(memory("z", "m1", "alice", "zebra", 63), 2)
            .await
            .unwrap()
    );
    assert_eq!(ids(s.recall("m1", "zebra", 20).await.unwrap()), vec!["z"]);
}

/// Concurrent `remember`s never pass the per-mesh bound.
async fn memories_concurrent_bound(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let writes = (0..10).map(|i| s.remember(memory(&format!("c{i}"), "m1", "w", "note", i), 3));
    let stored = futures_util::future::join_all(writes)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(stored, 3);
    assert_eq!(s.recall("m1", "note", 20).await.unwrap().len(), 3);
}

contract!(memories_store: memories_search, memories_concurrent_bound);

fn scheduled(
    id: &str,
    member: &str,
    deliver_at: i64,
    cron: Option<&str>,
) -> broker::store::schedule::ScheduledEntry {
    broker::store::schedule::ScheduledEntry {
        id: id.into(),
        mesh_id: "m1".into(),
        presence_id: format!("p-{member}"),
        member_id: member.into(),
        to: "*".into(),
        message: format!("text of {id}"),
        deliver_at,
        cron: cron.map(str::to_string),
        subtype: Some("reminder".into()),
        fired_count: 0,
        cancelled: false,
        fired_at: None,
        created_at: deliver_at - 1_000,
    }
}

/// Scheduled messages: the per-member limit, listing and cancelling by member, claims by
/// due time that hide held entries from other claims, and outcomes recorded only by a
/// commit (a dropped claim leaves the entry due with the same fire count).
async fn schedule_entries(s: &dyn Store) {
    use broker::store::schedule::FireOutcome;
    let t = 1_800_000_000_000;
    let one = scheduled("s1", "alice", t, None);
    s.create_scheduled(one.clone(), 3).await.unwrap();
    s.create_scheduled(scheduled("s2", "alice", t + 10, Some("* * * * *")), 3)
        .await
        .unwrap();
    s.create_scheduled(scheduled("s3", "alice", t + 60_000, None), 3)
        .await
        .unwrap();
    assert!(matches!(
        s.create_scheduled(scheduled("s4", "alice", t, None), 3)
            .await,
        Err(StoreError::Conflict(_))
    ));
    s.create_scheduled(scheduled("b1", "bob", t, None), 3)
        .await
        .unwrap();
    let listed = s.list_scheduled("m1", "alice").await.unwrap();
    assert_eq!(listed.first(), Some(&one), "every field round-trips");
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2", "s3"]
    );
    assert!(s.list_scheduled("m2", "alice").await.unwrap().is_empty());

    assert!(
        !s.cancel_scheduled("m1", "bob", "s3").await.unwrap(),
        "not bob's"
    );
    assert!(s.cancel_scheduled("m1", "alice", "s3").await.unwrap());
    assert!(
        !s.cancel_scheduled("m1", "alice", "s3").await.unwrap(),
        "already cancelled"
    );
    assert!(!s.cancel_scheduled("m1", "alice", "nope").await.unwrap());
    s.create_scheduled(scheduled("s4", "alice", t + 120_000, None), 3)
        .await
        .unwrap();

    // Due at t + 10: s1, b1 and s2 (earliest first), not s4.
    let first = s.claim_due(t + 10, 2).await.unwrap();
    let held: Vec<String> = first.entries().iter().map(|e| e.id.clone()).collect();
    assert_eq!(held.len(), 2);
    let second = s.claim_due(t + 10, 10).await.unwrap();
    let other: Vec<String> = second.entries().iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        other.len(),
        1,
        "held entries are not claimed twice: {held:?} {other:?}"
    );
    assert!(!held.contains(&other[0]));
    let mut all: Vec<String> = held.iter().chain(&other).cloned().collect();
    all.sort();
    assert_eq!(all, ["b1", "s1", "s2"]);
    // The second claimer dies: nothing is recorded.
    drop(second);
    let again = s.claim_due(t + 10, 10).await.unwrap();
    assert_eq!(again.entries().len(), 1);
    assert_eq!(again.entries()[0].fired_count, 0);
    again.commit(vec![]).await.unwrap();

    let outcome = |id: &str| match id {
        "s2" => FireOutcome::Fired {
            at: t + 10,
            next: Some(t + 60_010),
        },
        "b1" => FireOutcome::Retry {
            retry_at: t + 5_000,
        },
        _ => FireOutcome::Fired {
            at: t + 10,
            next: None,
        },
    };
    first
        .commit(held.iter().map(|id| (id.clone(), outcome(id))).collect())
        .await
        .unwrap();
    let rest = s.claim_due(t + 10, 10).await.unwrap();
    let rest_ids: Vec<String> = rest.entries().iter().map(|e| e.id.clone()).collect();
    rest.commit(
        rest_ids
            .iter()
            .map(|id| (id.clone(), outcome(id)))
            .collect(),
    )
    .await
    .unwrap();

    let listed = s.list_scheduled("m1", "alice").await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["s2", "s4"],
        "s1 fired"
    );
    assert_eq!(
        (listed[0].deliver_at, listed[0].fired_count),
        (t + 60_010, 1),
        "the cron advanced"
    );
    assert!(
        s.claim_due(t + 4_999, 10)
            .await
            .unwrap()
            .entries()
            .is_empty(),
        "b1 waits for its retry"
    );
    let retried = s.claim_due(t + 5_000, 10).await.unwrap();
    assert_eq!(retried.entries().len(), 1);
    assert_eq!(
        (
            retried.entries()[0].id.as_str(),
            retried.entries()[0].fired_count,
            retried.entries()[0].deliver_at
        ),
        ("b1", 0, t),
        "a retry keeps its fire count and due time"
    );
    retried.commit(vec![]).await.unwrap();
    assert_eq!(s.list_scheduled("m1", "bob").await.unwrap().len(), 1);
}

/// Concurrent claimers split the due entries: each is handed to exactly one of them.
async fn schedule_concurrent_claims(s: &dyn Store) {
    let t = 1_800_000_000_000;
    for i in 0..20 {
        s.create_scheduled(scheduled(&format!("c{i:02}"), "alice", t + i, None), 100)
            .await
            .unwrap();
    }
    let (a, b) = futures_util::join!(s.claim_due(t + 100, 12), s.claim_due(t + 100, 12));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut ids: Vec<String> = a
        .entries()
        .iter()
        .chain(b.entries())
        .map(|e| e.id.clone())
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "no entry in two claims");
    assert_eq!(n, 20);
}

/// Concurrent creations never pass the per-member limit.
async fn schedule_concurrent_limit(s: &dyn Store) {
    let t = 1_800_000_000_000;
    let creations =
        (0..10).map(|i| s.create_scheduled(scheduled(&format!("l{i}"), "alice", t, None), 4));
    let stored = futures_util::future::join_all(creations)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(stored, 4);
    assert_eq!(s.list_scheduled("m1", "alice").await.unwrap().len(), 4);
}

contract!(schedule_store: schedule_entries, schedule_concurrent_claims, schedule_concurrent_limit);

/// Clocks: creation and speed changes, pause and resume, the authority lease (renewed,
/// taken when lapsed or released, bounded per holder) and the tick compare-and-set that
/// needs a live lease and the expected tick.
async fn clocks(s: &dyn Store) {
    use broker::store::clocks::TICK_SIM_MS;
    let t = 1_800_000_000_000;
    assert_eq!(s.clock("m1").await.unwrap(), None);
    assert_eq!(s.set_clock_paused("m1", true, t).await.unwrap(), None);
    let c = s.set_clock("m1", 10.0, t).await.unwrap();
    assert_eq!(
        (c.tick, c.sim_time, c.started_at, c.paused, c.speed),
        (0, t, t, false, 10.0)
    );
    assert_eq!(c.next_tick_at(), t + 6_000);
    let c = s.set_clock("m1", 2.5, t + 1).await.unwrap();
    assert_eq!(
        (c.speed, c.started_at, c.sim_time),
        (2.5, t, t),
        "a set only changes the speed"
    );
    assert_eq!(s.clock("m1").await.unwrap(), Some(c.clone()));

    let held = s.lease_clocks("A", t, 1_000, 10).await.unwrap();
    assert_eq!(held, vec![c.clone()]);
    assert!(
        s.lease_clocks("B", t + 10, 1_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "A holds it"
    );
    assert_eq!(
        s.advance_clock("m1", "B", 0, t + 10).await.unwrap(),
        None,
        "B holds no lease"
    );
    let ticked = s
        .advance_clock("m1", "A", 0, t + 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ticked.tick, ticked.sim_time, ticked.last_tick_at),
        (1, t + TICK_SIM_MS, t + 20)
    );
    assert_eq!(
        s.advance_clock("m1", "A", 0, t + 21).await.unwrap(),
        None,
        "tick 1 exists"
    );
    // A renews; then its lease lapses and B takes over from the stored tick.
    assert_eq!(
        s.lease_clocks("A", t + 500, 1_000, 10).await.unwrap().len(),
        1
    );
    assert!(
        s.lease_clocks("B", t + 1_400, 1_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "renewed"
    );
    let taken = s.lease_clocks("B", t + 1_600, 1_000, 10).await.unwrap();
    assert_eq!(taken.iter().map(|c| c.tick).collect::<Vec<_>>(), [1]);
    assert_eq!(
        s.advance_clock("m1", "A", 1, t + 1_600).await.unwrap(),
        None,
        "A lost its lease"
    );
    assert_eq!(
        s.advance_clock("m1", "B", 1, t + 1_700)
            .await
            .unwrap()
            .unwrap()
            .tick,
        2
    );

    // Paused clocks are not leased or ticked; set_clock keeps them paused; resume restarts
    // the interval.
    let p = s
        .set_clock_paused("m1", true, t + 1_800)
        .await
        .unwrap()
        .unwrap();
    assert!(p.paused);
    assert_eq!(
        s.advance_clock("m1", "B", 2, t + 1_900).await.unwrap(),
        None
    );
    assert!(
        s.lease_clocks("B", t + 1_900, 1_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.set_clock("m1", 50.0, t + 1_950).await.unwrap().paused);
    let r = s
        .set_clock_paused("m1", false, t + 2_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.paused, r.last_tick_at, r.tick, r.speed),
        (false, t + 2_000, 2, 50.0)
    );
    let again = s
        .set_clock_paused("m1", false, t + 2_500)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.last_tick_at,
        t + 2_000,
        "resuming a running clock changes nothing"
    );

    // The per-holder bound, release and auto-pause.
    s.set_clock("m2", 1.0, t).await.unwrap();
    s.release_clock("m1", "B").await.unwrap();
    let one = s.lease_clocks("C", t + 3_000, 1_000, 1).await.unwrap();
    assert_eq!(one.len(), 1, "at most the limit");
    let both = s.lease_clocks("C", t + 3_000, 1_000, 2).await.unwrap();
    assert_eq!(both.len(), 2);
    assert!(
        !s.auto_pause_clock("m2", "B").await.unwrap(),
        "only the holder"
    );
    assert!(s.auto_pause_clock("m2", "C").await.unwrap());
    assert!(s.clock("m2").await.unwrap().unwrap().paused);
    assert_eq!(
        s.lease_clocks("C", t + 3_100, 1_000, 2)
            .await
            .unwrap()
            .len(),
        1
    );
    s.release_clock("m1", "C").await.unwrap();
    assert_eq!(
        s.lease_clocks("D", t + 3_200, 1_000, 2)
            .await
            .unwrap()
            .len(),
        1,
        "released: taken at once"
    );
}

contract!(clock_store: clocks);

// ---------------------------------------------------------------------------------------
// Delivery status (extensions §7) and audit pages (extensions §8)
// ---------------------------------------------------------------------------------------

/// A waiting direct message is found from the queue; once confirmed, from its status
/// record (with its delivery time); fan-outs from theirs. Prefixes match within one mesh
/// only, the limit holds, and the sweep removes old records.
async fn message_status_records(s: &dyn Store) {
    use broker::store::msg_status::{SentMessage, SentTarget};
    let t = 3_000_000;
    s.enqueue(message("StatusAaa1", "m1", "bob", Priority::Now, None, t))
        .await
        .unwrap();
    s.enqueue(message(
        "StatusAaa2",
        "m1",
        "bob",
        Priority::Now,
        Some("sk"),
        t,
    ))
    .await
    .unwrap();
    s.enqueue(message("StatusAaa3", "m2", "bob", Priority::Now, None, t))
        .await
        .unwrap();
    let waiting = s.find_sent("m1", "StatusAaa1", 16).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        waiting[0],
        SentMessage {
            id: "StatusAaa1".into(),
            mesh_id: "m1".into(),
            sender_member_id: "sender".into(),
            target: SentTarget::Direct {
                member_id: "bob".into(),
                session_key: None,
            },
            created_at: t,
            delivered_at: None,
        }
    );
    let mut both = s.find_sent("m1", "StatusAa", 16).await.unwrap();
    both.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        both.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["StatusAaa1", "StatusAaa2"],
        "a prefix matches within the mesh only"
    );
    assert_eq!(s.find_sent("m1", "StatusAa", 1).await.unwrap().len(), 1);

    // Confirmed (by id, and by client id): the status outlives the queue row.
    assert!(
        s.mark_delivered("m1", "bob", MessageRef::Broker("StatusAaa1"))
            .await
            .unwrap()
    );
    assert!(
        s.mark_delivered("m1", "bob", MessageRef::Client("c-StatusAaa2"))
            .await
            .unwrap()
    );
    let done = s.find_sent("m1", "StatusAaa1", 16).await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].delivered_at.is_some_and(|at| at > 0));
    let by_client = s.find_sent("m1", "StatusAaa2", 16).await.unwrap();
    assert_eq!(
        by_client[0].target,
        SentTarget::Direct {
            member_id: "bob".into(),
            session_key: Some("sk".into())
        }
    );
    assert!(by_client[0].delivered_at.is_some());

    // Fan-outs.
    let fanout = SentMessage {
        id: "StatusBbb1".into(),
        mesh_id: "m1".into(),
        sender_member_id: "alice".into(),
        target: SentTarget::Fanout {
            spec: "@ops".into(),
        },
        created_at: t + 5,
        delivered_at: Some(t + 5),
    };
    s.record_fanout(fanout.clone()).await.unwrap();
    s.record_fanout(fanout.clone()).await.unwrap();
    assert_eq!(
        s.find_sent("m1", "StatusBbb1", 16).await.unwrap(),
        vec![fanout],
        "recorded once"
    );
    assert!(
        s.find_sent("m2", "StatusBbb1", 16)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.find_sent("m1", "StatusC", 16).await.unwrap().is_empty());

    // The sweep.
    assert_eq!(s.sweep_message_status(t + 1).await.unwrap(), 2);
    assert!(
        s.find_sent("m1", "StatusAaa1", 16)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.find_sent("m1", "StatusBbb1", 16).await.unwrap().len(), 1);
}

/// Pages are newest first, filter by event type, and count every match.
async fn audit_pages(s: &dyn Store) {
    for i in 0..7 {
        let kind = if i % 2 == 0 {
            "peer_joined"
        } else {
            "message_sent"
        };
        s.append_audit("m1", kind, Some("alice"), json!({"i": i}), 4_000_000 + i)
            .await
            .unwrap();
    }
    s.append_audit("m2", "peer_joined", None, json!({}), 4_000_000)
        .await
        .unwrap();
    let page = s.audit_page("m1", None, 3, 0).await.unwrap();
    assert_eq!(page.total, 7);
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [7, 6, 5]
    );
    let next = s.audit_page("m1", None, 3, 6).await.unwrap();
    assert_eq!(next.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    let joined = s
        .audit_page("m1", Some("peer_joined"), 10, 1)
        .await
        .unwrap();
    assert_eq!(joined.total, 4);
    assert_eq!(
        joined.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [5, 3, 1]
    );
    assert_eq!(joined.entries[0].payload, json!({"i": 4}));
    let all = s.audit_entries("m1").await.unwrap();
    assert_eq!(
        joined.entries[0], all[4],
        "the same entry as the chain holds"
    );
    let none = s.audit_page("m1", Some("nothing"), 10, 0).await.unwrap();
    assert_eq!((none.total, none.entries.len()), (0, 0));
    let past = s.audit_page("m1", None, 10, 50).await.unwrap();
    assert_eq!((past.total, past.entries.len()), (7, 0));
}

contract!(message_status_store: message_status_records, audit_pages);

// ---------------------------------------------------------------------------------------
// AccountStore (issue #12): users, device codes, CLI and web sessions, sync token ids and
// the meshes of signed-in users.

fn cli_session(
    id: &str,
    user: &str,
    hash: &str,
    created_at: i64,
) -> broker::store::accounts::CliSession {
    broker::store::accounts::CliSession {
        id: id.into(),
        user_id: user.into(),
        token_hash: hash.into(),
        device_code_id: None,
        hostname: Some("host".into()),
        platform: None,
        arch: None,
        created_at,
        last_seen_at: None,
        expires_at: created_at + 1_000_000,
        revoked_at: None,
    }
}

fn device_code(id: &str, now: i64) -> broker::store::accounts::DeviceCode {
    broker::store::accounts::DeviceCode {
        id: format!("clm_sess_{id}"),
        device_code: format!("dc-{id}"),
        user_code: format!("UC-{id}"),
        status: broker::store::accounts::DeviceStatus::Pending,
        hostname: Some("laptop".into()),
        platform: Some("linux".into()),
        arch: None,
        client_ip: Some("127.0.0.1".into()),
        user_id: None,
        expires_at: now + 60_000,
        created_at: now,
        approved_at: None,
    }
}

async fn accounts(s: &dyn Store) {
    use broker::store::accounts::{Decision, NewUser, Poll, UserPatch, WebSession};
    let now = broker::ids::now_ms();
    let new = |id: &str, email: &str| NewUser {
        id: Some(id.into()),
        email: email.into(),
        display_name: id.to_uppercase(),
        password_hash: Some("$argon2id$x".into()),
        is_admin: false,
    };
    let u = s.create_user(new("u1", "One@Example.com")).await.unwrap();
    assert_eq!(u.email, "One@Example.com");
    assert!(
        matches!(
            s.create_user(new("u2", "one@example.com")).await,
            Err(StoreError::Conflict(_))
        ),
        "emails are unique, case-insensitively"
    );
    s.create_user(new("u2", "two@example.com")).await.unwrap();
    assert_eq!(
        s.user_by_email("ONE@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        "u1"
    );
    assert_eq!(s.users(10).await.unwrap().len(), 2);
    assert_eq!(s.users(1).await.unwrap().len(), 1);
    assert!(s.user("nobody").await.unwrap().is_none());
    // Lockout: the third failure locks, and an unlock clears it.
    assert_eq!(
        s.record_login_failure("u1", now, 3, 1000).await.unwrap(),
        None
    );
    assert_eq!(
        s.record_login_failure("u1", now, 3, 1000).await.unwrap(),
        None
    );
    assert_eq!(
        s.record_login_failure("u1", now, 3, 1000).await.unwrap(),
        Some(now + 1000)
    );
    let u = s
        .update_user(
            "u1",
            UserPatch {
                unlock: true,
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(u.disabled && u.locked_until.is_none() && u.failed_logins == 0);
    assert_eq!(
        s.update_user("nobody", UserPatch::default()).await,
        Err(StoreError::NotFound)
    );

    // Device codes: pending → approved → consumed exactly once, with its session.
    s.create_device_code(device_code("a", now), 2)
        .await
        .unwrap();
    s.create_device_code(device_code("b", now), 2)
        .await
        .unwrap();
    assert!(
        matches!(
            s.create_device_code(device_code("c", now), 2).await,
            Err(StoreError::Invalid(_))
        ),
        "the pending cap"
    );
    assert_eq!(
        s.poll_device_code("dc-a", now).await.unwrap(),
        Poll::Pending
    );
    assert_eq!(
        s.poll_device_code("dc-unknown", now).await.unwrap(),
        Poll::Expired
    );
    let found = s
        .device_code_by_session_or_user_code("UC-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "clm_sess_a");
    assert_eq!(
        s.decide_device_code("UC-a", "u2", true, now).await.unwrap(),
        Decision::Done
    );
    assert_eq!(
        s.decide_device_code("UC-a", "u1", true, now).await.unwrap(),
        Decision::NotFound,
        "decided once"
    );
    let Poll::Approved(dc) = s.poll_device_code("dc-a", now).await.unwrap() else {
        panic!("approved")
    };
    assert_eq!(dc.user_id.as_deref(), Some("u2"));
    assert!(
        s.consume_device_code(&dc.id, cli_session("j1", "u2", "h1", now), 10, now)
            .await
            .unwrap()
    );
    assert!(
        !s.consume_device_code(&dc.id, cli_session("j2", "u2", "h2", now), 10, now)
            .await
            .unwrap()
    );
    assert!(
        s.cli_session_by_hash("h2").await.unwrap().is_none(),
        "the loser stores nothing"
    );
    assert_eq!(
        s.poll_device_code("dc-a", now).await.unwrap(),
        Poll::Consumed
    );
    // An expired pending code is marked so by the decision and by a poll.
    assert_eq!(
        s.decide_device_code("clm_sess_b", "u2", true, now + 60_000)
            .await
            .unwrap(),
        Decision::Expired
    );
    assert_eq!(
        s.poll_device_code("dc-b", now).await.unwrap(),
        Poll::Expired
    );

    // CLI sessions: by hash, touched, revoked by hash or by id, the oldest beyond the cap.
    let got = s.cli_session_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(
        (got.user_id.as_str(), got.hostname.as_deref()),
        ("u2", Some("host"))
    );
    s.touch_cli_session("j1", now + 5).await.unwrap();
    assert_eq!(
        s.cli_session_by_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        Some(now + 5)
    );
    s.insert_cli_session(cli_session("j3", "u2", "h3", now + 1), 2)
        .await
        .unwrap();
    s.insert_cli_session(cli_session("j4", "u2", "h4", now + 2), 2)
        .await
        .unwrap();
    let live: Vec<String> = s
        .cli_sessions("u2", now + 3)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(
        live,
        vec!["j4".to_string(), "j3".to_string()],
        "newest first, the oldest revoked"
    );
    assert!(s.revoke_cli_session_by_hash("h3", now).await.unwrap());
    assert!(!s.revoke_cli_session_by_hash("h3", now).await.unwrap());
    assert!(
        !s.revoke_cli_session("u1", "j4", now).await.unwrap(),
        "only the owner's own"
    );
    assert!(s.revoke_cli_session("u2", "j4", now).await.unwrap());
    assert!(s.cli_sessions("u2", now + 3).await.unwrap().is_empty());

    // Web sessions.
    let ws = WebSession {
        id_hash: "w1".into(),
        user_id: "u2".into(),
        csrf: "c".into(),
        created_at: now,
        expires_at: now + 100,
    };
    s.create_web_session(ws.clone()).await.unwrap();
    assert_eq!(s.web_session("w1", now).await.unwrap(), Some(ws));
    assert_eq!(
        s.web_session("w1", now + 100).await.unwrap(),
        None,
        "expired"
    );
    s.delete_web_sessions_of("u2").await.unwrap();
    assert_eq!(s.web_session("w1", now).await.unwrap(), None);

    // Sync token ids are used once until their expiry.
    assert!(s.use_sync_jti("j", now + 100, now).await.unwrap());
    assert!(!s.use_sync_jti("j", now + 100, now + 50).await.unwrap());
    assert!(
        s.use_sync_jti("j", now + 300, now + 200).await.unwrap(),
        "forgotten after expiry"
    );

    // Meshes of signed-in users.
    let mut m = mesh("acc1");
    m.slug = "team".into();
    m.owner_user_id = Some("u2".into());
    let mut owner = new_member("aa", "team-owner");
    owner.user_id = Some("u2".into());
    let member = s.create_owned_mesh(m.clone(), owner).await.unwrap();
    assert_eq!(member.user_id.as_deref(), Some("u2"));
    assert!(s.slug_taken("team").await.unwrap());
    let mut dup = mesh("acc2");
    dup.slug = "team".into();
    assert!(matches!(
        s.create_owned_mesh(dup, new_member("bb", "x")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        s.mesh("acc2").await.unwrap().is_none(),
        "nothing of a refused create is written"
    );
    let mine = s.user_meshes("u2").await.unwrap();
    assert_eq!(mine.len(), 1);
    assert!(mine[0].is_owner && mine[0].member_count == 1);
    assert_eq!(mine[0].member.as_ref().unwrap().id, member.id);
    assert!(s.user_meshes("u1").await.unwrap().is_empty());
    // A member linked to another user sees the mesh, not as owner.
    let other = s
        .add_member("acc1", new_member("cc", "other"))
        .await
        .unwrap();
    s.link_member("acc1", &other.id, "u1").await.unwrap();
    let theirs = s.user_mesh_by_slug("u1", "team").await.unwrap().unwrap();
    assert!(!theirs.is_owner && theirs.member.unwrap().id == other.id && theirs.member_count == 2);
    s.rename_mesh("acc1", "renamed").await.unwrap();
    assert!(s.user_mesh_by_slug("u2", "team").await.unwrap().is_none());
    assert_eq!(
        s.user_mesh_by_slug("u2", "renamed")
            .await
            .unwrap()
            .unwrap()
            .mesh
            .name,
        "renamed"
    );
    assert!(!s.mesh_archived("acc1").await.unwrap());
    s.archive_mesh("acc1", now).await.unwrap();
    assert!(s.mesh_archived("acc1").await.unwrap());
    assert!(s.user_meshes("u2").await.unwrap().is_empty());
    assert!(
        !s.slug_taken("renamed").await.unwrap(),
        "an archived mesh frees its slug"
    );
}

/// Racing polls of one approved code: exactly one consumes it.
async fn device_code_consumed_once(s: &dyn Store) {
    use broker::store::accounts::NewUser;
    let now = broker::ids::now_ms();
    s.create_user(NewUser {
        id: Some("r".into()),
        email: "r@x".into(),
        display_name: "R".into(),
        password_hash: None,
        is_admin: false,
    })
    .await
    .unwrap();
    s.create_device_code(device_code("race", now), 10)
        .await
        .unwrap();
    s.decide_device_code("UC-race", "r", true, now)
        .await
        .unwrap();
    let polls = (0..8).map(|i| {
        s.consume_device_code(
            "clm_sess_race",
            cli_session(&format!("race{i}"), "r", &format!("hr{i}"), now),
            100,
            now,
        )
    });
    let won = futures_util::future::join_all(polls)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(won, 1);
    assert_eq!(s.cli_sessions("r", now).await.unwrap().len(), 1);
}

contract!(account_store: accounts, device_code_consumed_once);

fn context(
    id: &str,
    mesh_id: &str,
    member: &str,
    summary: &str,
    tags: &[&str],
    at: i64,
) -> broker::store::contexts::Context {
    broker::store::contexts::Context {
        id: id.into(),
        mesh_id: mesh_id.into(),
        member_id: member.into(),
        member_name: format!("name-{member}"),
        summary: summary.into(),
        files_read: vec!["a.rs".into(), "b.rs".into()],
        key_findings: vec!["k".into()],
        tags: tags.iter().map(|t| t.to_string()).collect(),
        updated_at: at,
    }
}

/// Contexts: one record per member (a share keeps the id and replaces the rest); newest
/// first; search by case-insensitive substring of the summary or an exact tag; meshes apart.
async fn contexts_records(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let first = context("c1", "m1", "alice", "Tuning the Redis cache", &["ops"], 10);
    assert_eq!(s.share_context(first.clone()).await.unwrap(), "c1");
    assert_eq!(
        s.share_context(context("c2", "m1", "bob", "Writing docs", &["docs"], 20))
            .await
            .unwrap(),
        "c2"
    );
    s.share_context(context(
        "c3",
        "m2",
        "alice",
        "redis elsewhere",
        &["ops"],
        30,
    ))
    .await
    .unwrap();
    let ids =
        |v: Vec<broker::store::contexts::Context>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_contexts("m1", 10).await.unwrap()),
        vec!["c2", "c1"]
    );
    assert_eq!(ids(s.list_contexts("m1", 1).await.unwrap()), vec!["c2"]);
    assert_eq!(
        s.find_contexts("m1", "REDIS", 20).await.unwrap(),
        vec![first.clone()],
        "every field round-trips"
    );
    assert_eq!(
        ids(s.find_contexts("m1", "docs", 20).await.unwrap()),
        vec!["c2"],
        "a tag"
    );
    assert_eq!(
        ids(s.find_contexts("m1", "ITING do", 20).await.unwrap()),
        vec!["c2"],
        "a summary substring"
    );
    assert!(
        s.find_contexts("m1", "op", 20).await.unwrap().is_empty(),
        "a partial tag"
    );
    assert!(s.find_contexts("m3", "redis", 20).await.unwrap().is_empty());

    // A later share by alice keeps c1 and moves it first.
    let again = context("ignored", "m1", "alice", "Done with Redis", &[], 40);
    assert_eq!(s.share_context(again).await.unwrap(), "c1");
    let all = s.list_contexts("m1", 10).await.unwrap();
    assert_eq!(ids(all.clone()), vec!["c1", "c2"]);
    assert_eq!(all[0].summary, "Done with Redis");
    assert!(all[0].tags.is_empty());
    assert_eq!(all[0].updated_at, 40);
}

fn skill(mesh_id: &str, name: &str, by: &str, at: i64) -> broker::store::skills::Skill {
    broker::store::skills::Skill {
        mesh_id: mesh_id.into(),
        name: name.into(),
        description: format!("About {name}"),
        instructions: format!("Do {name}"),
        tags: vec!["Ops".into()],
        manifest: Some(r#"{"z": 1, "a":[1.50, 1e400]}"#.into()),
        author_member_id: by.into(),
        author_name: format!("name-{by}"),
        created_at: at,
        updated_at: at,
    }
}

/// Skills: upsert by name only by the author or an admin (keeping `created_at`); the
/// manifest byte for byte; lists by name, filtered; removal as allowed; the bound.
async fn skills_records(s: &dyn Store) {
    use broker::store::skills::{ShareSkill, SkillActor};
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let deploy = skill("m1", "deploy", "alice", 10);
    assert_eq!(
        s.share_skill(deploy.clone(), SkillActor::Member("alice"), 0)
            .await
            .unwrap(),
        ShareSkill::Shared
    );
    assert_eq!(
        s.skill("m1", "deploy").await.unwrap(),
        Some(deploy.clone()),
        "every field, the manifest byte for byte"
    );
    assert_eq!(s.skill("m2", "deploy").await.unwrap(), None);
    let by_bob = broker::store::skills::Skill {
        instructions: "hijack".into(),
        ..skill("m1", "deploy", "bob", 20)
    };
    assert_eq!(
        s.share_skill(by_bob.clone(), SkillActor::Member("bob"), 0)
            .await
            .unwrap(),
        ShareSkill::Forbidden
    );
    assert_eq!(
        s.skill("m1", "deploy").await.unwrap().unwrap().instructions,
        "Do deploy"
    );
    assert_eq!(
        s.share_skill(by_bob, SkillActor::Admin, 0).await.unwrap(),
        ShareSkill::Shared,
        "an admin replaces anyone's"
    );
    let now = s.skill("m1", "deploy").await.unwrap().unwrap();
    assert_eq!(
        (
            now.instructions.as_str(),
            now.author_member_id.as_str(),
            now.created_at,
            now.updated_at
        ),
        ("hijack", "bob", 10, 20)
    );

    s.share_skill(
        skill("m1", "backup", "carol", 30),
        SkillActor::Member("carol"),
        0,
    )
    .await
    .unwrap();
    let names =
        |v: Vec<broker::store::skills::Skill>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.list_skills("m1", None, 10).await.unwrap()),
        vec!["backup", "deploy"]
    );
    assert_eq!(
        names(s.list_skills("m1", None, 1).await.unwrap()),
        vec!["backup"]
    );
    assert_eq!(
        names(s.list_skills("m1", Some("DEPL"), 10).await.unwrap()),
        vec!["deploy"],
        "name"
    );
    assert_eq!(
        names(s.list_skills("m1", Some("about back"), 10).await.unwrap()),
        vec!["backup"],
        "description"
    );
    assert_eq!(
        names(s.list_skills("m1", Some("op"), 10).await.unwrap()),
        vec!["backup", "deploy"],
        "a tag's substring"
    );
    assert!(
        s.list_skills("m1", Some("nothing"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The bound counts names in the mesh; replacing an existing name is not refused.
    assert_eq!(
        s.share_skill(
            skill("m1", "third", "carol", 40),
            SkillActor::Member("carol"),
            2
        )
        .await
        .unwrap(),
        ShareSkill::TooManySkills
    );
    assert_eq!(
        s.share_skill(
            skill("m1", "backup", "carol", 41),
            SkillActor::Member("carol"),
            2
        )
        .await
        .unwrap(),
        ShareSkill::Shared
    );

    assert!(
        !s.remove_skill("m1", "backup", SkillActor::Member("alice"))
            .await
            .unwrap(),
        "not alice's"
    );
    assert!(
        !s.remove_skill("m2", "backup", SkillActor::Admin)
            .await
            .unwrap(),
        "another mesh"
    );
    assert!(
        s.remove_skill("m1", "backup", SkillActor::Member("carol"))
            .await
            .unwrap()
    );
    assert!(
        !s.remove_skill("m1", "backup", SkillActor::Admin)
            .await
            .unwrap(),
        "gone"
    );
    assert!(
        s.remove_skill("m1", "deploy", SkillActor::Admin)
            .await
            .unwrap()
    );
    assert!(s.list_skills("m1", None, 10).await.unwrap().is_empty());
}

/// Concurrent shares of new names never pass the per-mesh bound.
async fn skills_concurrent_bound(s: &dyn Store) {
    use broker::store::skills::{ShareSkill, SkillActor};
    s.create_mesh(mesh("m1")).await.unwrap();
    let writes = (0..10).map(|i| {
        s.share_skill(
            skill("m1", &format!("s{i}"), "w", i),
            SkillActor::Member("w"),
            3,
        )
    });
    let shared = futures_util::future::join_all(writes)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap() == ShareSkill::Shared)
        .count();
    assert_eq!(shared, 3);
    assert_eq!(s.list_skills("m1", None, 20).await.unwrap().len(), 3);
}

fn vault_entry(
    mesh_id: &str,
    member: &str,
    key: &str,
    at: i64,
) -> broker::store::vault::VaultEntry {
    broker::store::vault::VaultEntry {
        mesh_id: mesh_id.into(),
        member_id: member.into(),
        key: key.into(),
        ciphertext: format!("ct-{key}-{at}"),
        nonce: "nonce".into(),
        sealed_key: "sealed".into(),
        entry_type: "file".into(),
        mount_path: Some("/etc/x".into()),
        description: None,
        updated_at: at,
    }
}

/// The vault: entries per (mesh, member, key), upserted; reads and lists only the
/// member's own, ordered by key; deletes only its own; the per-member bound.
async fn vault_entries(s: &dyn Store) {
    use broker::store::vault::VaultMeta;
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let b = vault_entry("m1", "alice", "B", 10);
    assert!(s.vault_set(b.clone(), 0).await.unwrap());
    assert!(
        s.vault_set(vault_entry("m1", "alice", "A", 11), 0)
            .await
            .unwrap()
    );
    assert!(
        s.vault_set(vault_entry("m1", "bob", "A", 12), 0)
            .await
            .unwrap()
    );
    assert!(
        s.vault_set(vault_entry("m2", "alice", "A", 13), 0)
            .await
            .unwrap()
    );
    let keys = |v: &[broker::store::vault::VaultEntry]| {
        v.iter().map(|e| e.key.clone()).collect::<Vec<_>>()
    };
    let got = s
        .vault_get("m1", "alice", &["B".into(), "A".into(), "Z".into()])
        .await
        .unwrap();
    assert_eq!(keys(&got), vec!["A", "B"]);
    assert_eq!(got[1], b, "every field round-trips");
    assert_eq!(got[0].ciphertext, "ct-A-11");
    assert_eq!(
        s.vault_get("m1", "bob", &["A".into()]).await.unwrap()[0].ciphertext,
        "ct-A-12"
    );
    assert!(
        s.vault_get("m1", "carol", &["A".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.vault_list("m1", "alice", 10).await.unwrap(),
        vec![
            VaultMeta::from(&vault_entry("m1", "alice", "A", 11)),
            VaultMeta::from(&b)
        ]
    );
    assert_eq!(s.vault_list("m1", "alice", 1).await.unwrap().len(), 1);

    // Upsert; the bound is per member and does not refuse an existing key.
    let newer = broker::store::vault::VaultEntry {
        description: Some("d".into()),
        mount_path: None,
        ..vault_entry("m1", "alice", "B", 20)
    };
    assert!(s.vault_set(newer.clone(), 2).await.unwrap());
    assert_eq!(
        s.vault_get("m1", "alice", &["B".into()]).await.unwrap(),
        vec![newer]
    );
    assert!(
        !s.vault_set(vault_entry("m1", "alice", "C", 21), 2)
            .await
            .unwrap()
    );
    assert!(
        s.vault_set(vault_entry("m1", "bob", "C", 21), 2)
            .await
            .unwrap()
    );

    assert!(
        !s.vault_delete("m1", "bob", "B").await.unwrap(),
        "not bob's"
    );
    assert!(s.vault_delete("m1", "alice", "B").await.unwrap());
    assert!(!s.vault_delete("m1", "alice", "B").await.unwrap());
    assert_eq!(s.vault_list("m1", "alice", 10).await.unwrap().len(), 1);
    assert_eq!(s.vault_list("m2", "alice", 10).await.unwrap().len(), 1);
}

/// Concurrent new keys of one member never pass the bound.
async fn vault_concurrent_bound(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let writes = (0..10).map(|i| s.vault_set(vault_entry("m1", "alice", &format!("k{i}"), i), 3));
    let stored = futures_util::future::join_all(writes)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(stored, 3);
    assert_eq!(s.vault_list("m1", "alice", 20).await.unwrap().len(), 3);
}

contract!(context_store: contexts_records);
contract!(skill_store: skills_records, skills_concurrent_bound);
contract!(vault_store: vault_entries, vault_concurrent_bound);

/// Deletes reach every family, on both backends: a member delete takes what only the
/// member had (its scheduled messages, its user link) and keeps what it gave the mesh; a
/// mesh delete takes every family's data (a mesh created again under the same id starts
/// empty in each family, and its clock is no longer leased, so it stops); other meshes keep
/// theirs. A family added later adds its write and its empty read here.
async fn deleting_reaches_every_family(s: &dyn Store) {
    use broker::store::memories::Memory;
    use broker::store::msg_status::{SentMessage, SentTarget};
    use broker::store::schedule::ScheduledEntry;
    use broker::store::skills::SkillActor;
    use broker::store::tasks::TaskFilter;

    let value = json!({"v": 1});
    for mesh_id in ["m1", "m2"] {
        s.create_mesh(mesh(mesh_id)).await.unwrap();
    }
    let mut members = Vec::new();
    for mesh_id in ["m1", "m2"] {
        let alice = s
            .add_member(mesh_id, new_member("aa", "alice"))
            .await
            .unwrap();
        let bob = s
            .add_member(mesh_id, new_member("bb", "bob"))
            .await
            .unwrap();
        let a = alice.id.as_str();
        written(
            s.set_state(state_write(mesh_id, "k", &value, a, 10, 0))
                .await
                .unwrap(),
        );
        let memory = Memory {
            id: format!("mem-{mesh_id}"),
            mesh_id: mesh_id.into(),
            content: "the deploy key rotates on fridays".into(),
            tags: vec![],
            member_id: a.into(),
            member_name: "alice".into(),
            created_at: 1,
        };
        assert!(s.remember(memory, 0).await.unwrap());
        s.create_task(task(&format!("t-{mesh_id}"), mesh_id, a, 1), 0)
            .await
            .unwrap();
        s.create_stream(stream(&format!("st-{mesh_id}"), mesh_id, "logs", 1), 0)
            .await
            .unwrap();
        for (id, who) in [("s-alice", a), ("s-bob", bob.id.as_str())] {
            let entry = ScheduledEntry {
                id: format!("{id}-{mesh_id}"),
                mesh_id: mesh_id.into(),
                presence_id: "p".into(),
                member_id: who.into(),
                to: "*".into(),
                message: "later".into(),
                deliver_at: i64::MAX / 4,
                cron: None,
                subtype: None,
                fired_count: 0,
                cancelled: false,
                fired_at: None,
                created_at: 1,
            };
            s.create_scheduled(entry, 10).await.unwrap();
        }
        s.set_clock(mesh_id, 10.0, 1).await.unwrap();
        s.record_fanout(SentMessage {
            id: format!("Status{mesh_id}"),
            mesh_id: mesh_id.into(),
            sender_member_id: a.into(),
            target: SentTarget::Fanout { spec: "*".into() },
            created_at: broker::ids::now_ms(),
            delivered_at: None,
        })
        .await
        .unwrap();
        s.share_context(context(
            &format!("c-{mesh_id}"),
            mesh_id,
            a,
            "summary",
            &[],
            1,
        ))
        .await
        .unwrap();
        s.share_skill(skill(mesh_id, "deploy", a, 1), SkillActor::Member(a), 0)
            .await
            .unwrap();
        assert!(
            s.vault_set(vault_entry(mesh_id, a, "key", 1), 0)
                .await
                .unwrap()
        );
        assert_eq!(
            s.webhook_create(webhook(mesh_id, "ci", a, 1), 0)
                .await
                .unwrap(),
            broker::store::webhooks::WebhookCreated::Created
        );
        for (id, who) in [("w-alice", a), ("w-bob", bob.id.as_str())] {
            s.watch_create(url_watch(&format!("{id}-{mesh_id}"), mesh_id, who, 1), 0, 0)
                .await
                .unwrap();
        }
        s.archive_mesh(mesh_id, 1).await.unwrap();
        members.push((alice, bob));
    }
    let (alice, bob) = members.swap_remove(0);

    // A member delete: its scheduled messages go (they would fire as nobody); what it gave
    // the mesh stays.
    assert!(s.delete_member("m1", &bob.id).await.unwrap());
    assert!(s.list_scheduled("m1", &bob.id).await.unwrap().is_empty());
    assert_eq!(s.list_scheduled("m1", &alice.id).await.unwrap().len(), 1);
    assert_eq!(s.memory_count("m1").await.unwrap(), 1);
    // Its URL watches go too (they are only the member's); its webhooks were the mesh's.
    assert!(s.watch_list("m1", &bob.id).await.unwrap().is_empty());
    assert_eq!(s.watch_list("m1", &alice.id).await.unwrap().len(), 1);

    // A mesh delete, then a mesh under the same id: every family starts empty.
    assert!(s.delete_mesh("m1").await.unwrap());
    s.create_mesh(mesh("m1")).await.unwrap();
    let reads = |mesh_id: &'static str, member: String| async move {
        let m = member.as_str();
        [
            ("state", s.list_state(mesh_id, 100).await.unwrap().len()),
            ("memories", s.memory_count(mesh_id).await.unwrap() as usize),
            (
                "recall",
                s.recall(mesh_id, "deploy", 10).await.unwrap().len(),
            ),
            (
                "tasks",
                s.list_tasks(mesh_id, &TaskFilter::default(), 100)
                    .await
                    .unwrap()
                    .len(),
            ),
            ("streams", s.list_streams(mesh_id).await.unwrap().len()),
            (
                "schedule",
                s.list_scheduled(mesh_id, m).await.unwrap().len(),
            ),
            (
                "clock",
                usize::from(s.clock(mesh_id).await.unwrap().is_some()),
            ),
            (
                "msg_status",
                s.find_sent(mesh_id, "Status", 10).await.unwrap().len(),
            ),
            (
                "contexts",
                s.list_contexts(mesh_id, 10).await.unwrap().len(),
            ),
            (
                "skills",
                s.list_skills(mesh_id, None, 10).await.unwrap().len(),
            ),
            ("vault", s.vault_list(mesh_id, m, 10).await.unwrap().len()),
            ("webhooks", s.webhook_list(mesh_id, 10).await.unwrap().len()),
            ("watches", s.watch_list(mesh_id, m).await.unwrap().len()),
            (
                "archived",
                usize::from(s.mesh_archived(mesh_id).await.unwrap()),
            ),
        ]
    };
    for (family, n) in reads("m1", alice.id.clone()).await {
        assert_eq!(n, 0, "{family} kept data of the deleted mesh");
    }
    // The deleted mesh's clock is no longer leased by anyone: it stops.
    let leased = s.lease_clocks("holder", 10, 60_000, 10).await.unwrap();
    assert_eq!(
        leased
            .iter()
            .map(|c| c.mesh_id.as_str())
            .collect::<Vec<_>>(),
        vec!["m2"],
        "only the surviving mesh's clock runs"
    );
    // The other mesh kept everything.
    let (other_alice, _) = &members[0];
    for (family, n) in reads("m2", other_alice.id.clone()).await {
        assert_eq!(n, 1, "{family} of the other mesh");
    }
}

contract!(family_deletion: deleting_reaches_every_family);

// ---------------------------------------------------------------------------------------
// Files (extensions §19.1)

fn file_record(
    mesh_id: &str,
    id: &str,
    name: &str,
    by: &str,
    at: i64,
) -> broker::store::files::FileRecord {
    broker::store::files::FileRecord {
        id: id.into(),
        mesh_id: mesh_id.into(),
        uploader_member_id: format!("member-{by}"),
        uploader_name: by.into(),
        name: name.into(),
        tags: vec!["t1".into()],
        persistent: true,
        encrypted: false,
        owner_pubkey: None,
        target_spec: None,
        size: 0,
        uploaded_at: at,
    }
}

/// Uploads `body` as one file in chunks of `chunk` bytes; completes it.
async fn upload_file(
    s: &dyn Store,
    f: broker::store::files::FileRecord,
    body: &[u8],
    chunk: usize,
) {
    use broker::store::files::Begin;
    let (mesh_id, id) = (f.mesh_id.clone(), f.id.clone());
    assert_eq!(s.file_begin(f, vec![], 0, 0).await.unwrap(), Begin::Started);
    for (seq, part) in body.chunks(chunk).enumerate() {
        assert!(
            s.file_append(&mesh_id, &id, seq as i32, part, u64::MAX >> 1)
                .await
                .unwrap()
        );
    }
    s.file_complete(&mesh_id, &id, body.len() as i64)
        .await
        .unwrap();
}

async fn files_lifecycle(s: &dyn Store) {
    use broker::store::files::{Begin, FileAccess, FileKey};
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();

    // An upload is invisible until complete; its chunks read back in order.
    let key = FileKey {
        pubkey: "ab".repeat(32),
        sealed_key: "sealed-a".into(),
    };
    let f = file_record("m1", "F1", "Report.PDF", "alice", 10);
    assert_eq!(
        s.file_begin(f.clone(), vec![key.clone()], 0, 0)
            .await
            .unwrap(),
        Begin::Started
    );
    assert!(s.file_append("m1", "F1", 0, b"hello ", 1000).await.unwrap());
    assert_eq!(s.file("m1", "F1").await.unwrap(), None);
    assert!(s.file_list("m1", None, None, 10).await.unwrap().is_empty());
    assert!(s.file_append("m1", "F1", 1, b"world", 1000).await.unwrap());
    s.file_complete("m1", "F1", 11).await.unwrap();
    let got = s.file("m1", "F1").await.unwrap().unwrap();
    assert_eq!(
        got,
        broker::store::files::FileRecord {
            size: 11,
            ..f.clone()
        }
    );
    assert_eq!(
        s.file("m2", "F1").await.unwrap(),
        None,
        "another mesh sees nothing"
    );
    assert_eq!(s.file_chunk("F1", 0).await.unwrap().unwrap(), b"hello ");
    assert_eq!(s.file_chunk("F1", 1).await.unwrap().unwrap(), b"world");
    assert_eq!(s.file_chunk("F1", 2).await.unwrap(), None);
    assert_eq!(s.mesh_file_bytes("m1").await.unwrap(), 11);
    assert!(
        s.file_append("m1", "F1", 2, b"x", 1000).await.is_err(),
        "a complete file takes no more chunks"
    );

    // Keys: given at upload, granted later, bounded.
    assert_eq!(
        s.file_key("F1", &key.pubkey).await.unwrap().as_deref(),
        Some("sealed-a")
    );
    let bob = FileKey {
        pubkey: "cd".repeat(32),
        sealed_key: "sealed-b".into(),
    };
    assert!(
        !s.file_grant("F1", bob.clone(), 1).await.unwrap(),
        "over MAX_FILE_KEYS"
    );
    assert!(s.file_grant("F1", bob.clone(), 2).await.unwrap());
    assert!(
        s.file_grant(
            "F1",
            FileKey {
                sealed_key: "b2".into(),
                ..bob.clone()
            },
            2
        )
        .await
        .unwrap(),
        "replacing a key is not a new one"
    );
    assert_eq!(
        s.file_key("F1", &bob.pubkey).await.unwrap().as_deref(),
        Some("b2")
    );

    // Listing: newest first, name substring (any case), exact uploader.
    upload_file(s, file_record("m1", "F2", "notes.txt", "bob", 20), b"n", 4).await;
    upload_file(
        s,
        file_record("m1", "F3", "report-2.pdf", "bob", 30),
        b"r",
        4,
    )
    .await;
    upload_file(s, file_record("m2", "G1", "report.pdf", "bob", 40), b"g", 4).await;
    let names =
        |v: Vec<broker::store::files::FileRecord>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
    assert_eq!(
        names(s.file_list("m1", None, None, 10).await.unwrap()),
        ["F3", "F2", "F1"]
    );
    assert_eq!(
        names(s.file_list("m1", None, None, 2).await.unwrap()),
        ["F3", "F2"]
    );
    assert_eq!(
        names(s.file_list("m1", Some("REPORT"), None, 10).await.unwrap()),
        ["F3", "F1"]
    );
    assert_eq!(
        names(
            s.file_list("m1", Some("report"), Some("bob"), 10)
                .await
                .unwrap()
        ),
        ["F3"]
    );
    assert_eq!(
        names(s.file_list("m1", None, Some("bo"), 10).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(s.file_count("m1").await.unwrap(), 3);

    // The access log keeps the newest entries.
    for i in 0..5 {
        let a = FileAccess {
            peer_name: format!("p{i}"),
            accessed_at: 100 + i,
        };
        s.file_log_access("F1", a, 3).await.unwrap();
    }
    let log = s.file_accesses("F1", 10).await.unwrap();
    assert_eq!(
        log.iter().map(|a| a.peer_name.as_str()).collect::<Vec<_>>(),
        ["p4", "p3", "p2"]
    );

    // Soft delete: hidden, chunks gone, bytes released; a second delete finds nothing.
    assert!(s.file_delete("m1", "F1", 200).await.unwrap());
    assert_eq!(s.file("m1", "F1").await.unwrap(), None);
    assert_eq!(s.file_chunk("F1", 0).await.unwrap(), None);
    assert!(!s.file_delete("m1", "F1", 201).await.unwrap());
    assert!(
        !s.file_delete("m2", "F2", 201).await.unwrap(),
        "not across meshes"
    );
    assert_eq!(s.mesh_file_bytes("m1").await.unwrap(), 2);
    assert_eq!(s.file_count("m1").await.unwrap(), 2);

    // The mesh budget: a chunk that would pass it is refused and nothing is stored.
    let f4 = file_record("m1", "F4", "big", "alice", 50);
    assert_eq!(
        s.file_begin(f4, vec![], 0, 0).await.unwrap(),
        Begin::Started
    );
    assert!(s.file_append("m1", "F4", 0, &[1u8; 6], 10).await.unwrap());
    assert!(!s.file_append("m1", "F4", 1, &[1u8; 3], 10).await.unwrap());
    assert_eq!(s.mesh_file_bytes("m1").await.unwrap(), 8);
    // An abort releases what the upload held.
    s.file_abort("m1", "F4").await.unwrap();
    assert_eq!(s.mesh_file_bytes("m1").await.unwrap(), 2);
    assert_eq!(s.file("m1", "F4").await.unwrap(), None);

    // The file-count bound counts incomplete uploads; a stale one (its replica died) is
    // dropped by the next upload of the mesh, with its bytes.
    let stale = file_record("m2", "S1", "stale", "alice", 60);
    assert_eq!(
        s.file_begin(stale, vec![], 0, 0).await.unwrap(),
        Begin::Started
    );
    assert!(s.file_append("m2", "S1", 0, b"abc", 100).await.unwrap());
    assert_eq!(s.mesh_file_bytes("m2").await.unwrap(), 4);
    assert_eq!(
        s.file_begin(file_record("m2", "S2", "x", "alice", 70), vec![], 2, 0)
            .await
            .unwrap(),
        Begin::TooManyFiles
    );
    assert_eq!(
        s.file_begin(file_record("m2", "S2", "x", "alice", 70), vec![], 2, 61)
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        s.mesh_file_bytes("m2").await.unwrap(),
        1,
        "the stale upload's bytes went"
    );
    assert!(s.file_append("m2", "S1", 1, b"d", 100).await.is_err());
}

/// Concurrent uploads of one mesh never pass its byte budget together.
async fn files_concurrent_budget(s: &dyn Store) {
    use broker::store::files::Begin;
    s.create_mesh(mesh("m1")).await.unwrap();
    for i in 0..8 {
        let f = file_record("m1", &format!("C{i}"), "c", "alice", i);
        assert_eq!(s.file_begin(f, vec![], 0, 0).await.unwrap(), Begin::Started);
    }
    let appends = (0..8).flat_map(|i| {
        (0..4).map(move |seq| async move {
            s.file_append("m1", &format!("C{i}"), seq, &[7u8; 10], 100)
                .await
                .unwrap()
        })
    });
    let stored = futures_util::future::join_all(appends)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    assert_eq!(stored, 10, "exactly the budget's worth of chunks");
    assert_eq!(s.mesh_file_bytes("m1").await.unwrap(), 100);
}

contract!(file_store: files_lifecycle, files_concurrent_budget);
fn topic(
    id: &str,
    mesh_id: &str,
    name: &str,
    creator: &str,
    at: i64,
) -> broker::store::topics::Topic {
    broker::store::topics::Topic {
        id: id.into(),
        mesh_id: mesh_id.into(),
        name: name.into(),
        description: None,
        visibility: "public".into(),
        created_by_member_id: Some(creator.into()),
        encrypted_key_pubkey: None,
        created_at: at,
        archived_at: None,
    }
}

fn topic_message(
    id: &str,
    topic_id: &str,
    sender: &str,
    at: i64,
) -> broker::store::topics::TopicMessage {
    broker::store::topics::TopicMessage {
        id: id.into(),
        topic_id: topic_id.into(),
        mesh_id: "m1".into(),
        sender_member_id: sender.into(),
        sender_member_pubkey: "ab".repeat(32),
        sender_session_pubkey: None,
        sender_name: sender.into(),
        nonce: String::new(),
        ciphertext: format!("body-{id}"),
        body_version: 1,
        reply_to_id: None,
        queue_id: format!("q-{id}"),
        created_at: at,
    }
}

fn sealed(topic_id: &str, member: &str, blob: &str) -> broker::store::topics::SealedKey {
    broker::store::topics::SealedKey {
        topic_id: topic_id.into(),
        member_id: member.into(),
        encrypted_key: blob.into(),
        nonce: "n".into(),
        sealed_at: 1,
    }
}

/// Topics: one live name per mesh, members within their bound, history pages on
/// (time, insertion) without losing messages of one millisecond, replies kept in their
/// topic, unread counts, keys claimed once, seals, notifications.
async fn topics_lifecycle(s: &dyn Store) {
    use broker::store::topics::{Created, Joined, MarkWhich, Notification, Sealed};
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let t1 = topic("t1", "m1", "general", "alice", 10);
    assert_eq!(
        s.topic_create(t1.clone(), Some(sealed("t1", "alice", "k")), 2)
            .await
            .unwrap(),
        Created::New(t1.clone())
    );
    assert_eq!(
        s.topic_create(topic("t9", "m1", "general", "bob", 11), None, 2)
            .await
            .unwrap(),
        Created::Existing(t1.clone()),
        "one live name per mesh"
    );
    s.topic_create(topic("t2", "m1", "ops", "bob", 12), None, 2)
        .await
        .unwrap();
    assert_eq!(
        s.topic_create(topic("t3", "m1", "third", "bob", 13), None, 2)
            .await
            .unwrap(),
        Created::TooMany
    );
    s.topic_create(topic("t4", "m2", "general", "eve", 14), None, 2)
        .await
        .unwrap();
    let list = s.topic_list("m1", 10).await.unwrap();
    assert_eq!(
        list.iter()
            .map(|l| (l.topic.name.as_str(), l.member_count))
            .collect::<Vec<_>>(),
        [("general", 1), ("ops", 1)]
    );
    assert_eq!(
        s.topic_by_id("m2", "t1").await.unwrap(),
        None,
        "ids stay in their mesh"
    );
    assert_eq!(
        s.topic_by_name("m1", "ops").await.unwrap().unwrap().id,
        "t2"
    );
    assert_eq!(
        s.topic_member("t1", "alice").await.unwrap().unwrap().role,
        "lead"
    );

    // Members within the bound; an existing membership is unchanged.
    assert_eq!(
        s.topic_join("t1", "bob", "observer", 20, 2).await.unwrap(),
        Joined::New
    );
    assert_eq!(
        s.topic_join("t1", "bob", "lead", 21, 2).await.unwrap(),
        Joined::Already
    );
    assert_eq!(
        s.topic_join("t1", "carol", "member", 22, 2).await.unwrap(),
        Joined::Full
    );
    let members = s.topic_members("t1").await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| (m.member_id.as_str(), m.role.as_str()))
            .collect::<Vec<_>>(),
        [("alice", "lead"), ("bob", "observer")]
    );

    // History: three messages of one millisecond, paged by two, none lost.
    for (id, at) in [("a", 100), ("b", 100), ("c", 100), ("d", 101)] {
        s.topic_post(topic_message(id, "t1", "alice", at), vec![])
            .await
            .unwrap();
    }
    let mut reply = topic_message("e", "t1", "bob", 102);
    reply.reply_to_id = Some("a".into());
    assert_eq!(
        s.topic_post(reply, vec![])
            .await
            .unwrap()
            .reply_to_id
            .as_deref(),
        Some("a")
    );
    s.topic_post(topic_message("x", "t2", "bob", 50), vec![])
        .await
        .unwrap();
    let mut stray = topic_message("f", "t1", "bob", 103);
    stray.reply_to_id = Some("x".into());
    assert_eq!(
        s.topic_post(stray, vec![]).await.unwrap().reply_to_id,
        None,
        "a reply to another topic's message is dropped"
    );
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = s.topic_history("t1", before.as_deref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|m| m.id.clone());
        seen.extend(page.into_iter().map(|m| m.id));
    }
    assert_eq!(seen, ["f", "e", "d", "c", "b", "a"]);
    assert_eq!(
        s.topic_history("t1", Some("unknown"), 1).await.unwrap()[0].id,
        "f",
        "an unknown cursor is the latest page"
    );
    // Streams resume after a message, oldest first; without a known id, after a time.
    let ids_of = |v: Vec<broker::store::topics::TopicMessage>| {
        v.into_iter().map(|m| m.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids_of(
            s.topic_messages_after("t1", Some("b"), 0, 10)
                .await
                .unwrap()
        ),
        ["c", "d", "e", "f"]
    );
    assert_eq!(
        ids_of(s.topic_messages_after("t1", Some("a"), 0, 2).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(
        ids_of(s.topic_messages_after("t1", None, 101, 10).await.unwrap()),
        ["e", "f"]
    );
    assert_eq!(
        ids_of(
            s.topic_messages_after("t1", Some("zz"), 102, 10)
                .await
                .unwrap()
        ),
        ["f"]
    );
    let stored = &s.topic_history("t1", None, 1).await.unwrap()[0];
    assert_eq!(stored, &topic_message("f", "t1", "bob", 103));

    // Unread: others' messages after the read mark (all without one).
    let unread = s.topic_unread_counts("m1", "bob").await.unwrap();
    assert_eq!(unread.get("t1"), Some(&4), "alice's four");
    assert!(s.topic_mark_read("t1", "bob", 101, false, 0).await.unwrap());
    assert_eq!(
        s.topic_unread_counts("m1", "bob").await.unwrap().get("t1"),
        None
    );
    assert!(
        !s.topic_mark_read("t2", "carol", 1, false, 0).await.unwrap(),
        "no member"
    );
    assert!(
        s.topic_mark_read("t2", "carol", 1, true, 0).await.unwrap(),
        "joins"
    );
    assert_eq!(
        s.topic_member("t2", "carol")
            .await
            .unwrap()
            .unwrap()
            .last_read_at,
        Some(1)
    );

    // Keys: claimed once; seals upserted only with overwrite; pending = no copy.
    assert_eq!(
        s.topic_key("t1", "alice")
            .await
            .unwrap()
            .unwrap()
            .encrypted_key,
        "k"
    );
    assert!(
        s.topic_claim_key(&"c".repeat(64), sealed("t2", "bob", "kb"))
            .await
            .unwrap()
    );
    assert!(
        !s.topic_claim_key(&"d".repeat(64), sealed("t2", "carol", "kc"))
            .await
            .unwrap()
    );
    assert_eq!(
        s.topic_by_id("m1", "t2")
            .await
            .unwrap()
            .unwrap()
            .encrypted_key_pubkey,
        Some("c".repeat(64))
    );
    assert_eq!(
        s.topic_unsealed_members("t2", 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.member_id.as_str())
            .collect::<Vec<_>>(),
        ["carol"]
    );
    assert_eq!(
        s.topic_seal(sealed("t2", "carol", "c1"), false)
            .await
            .unwrap(),
        Sealed::Stored
    );
    assert_eq!(
        s.topic_seal(sealed("t2", "carol", "c2"), false)
            .await
            .unwrap(),
        Sealed::AlreadySealed
    );
    assert_eq!(
        s.topic_key("t2", "carol")
            .await
            .unwrap()
            .unwrap()
            .encrypted_key,
        "c1"
    );
    s.topic_seal(sealed("t2", "carol", "c3"), true)
        .await
        .unwrap();
    assert_eq!(
        s.topic_key("t2", "carol")
            .await
            .unwrap()
            .unwrap()
            .encrypted_key,
        "c3"
    );
    assert!(s.topic_leave("t2", "carol").await.unwrap());
    assert_eq!(
        s.topic_key("t2", "carol").await.unwrap(),
        None,
        "leaving drops the copy"
    );

    // Notifications: newest message first, unread filter, marks by id and all.
    let note = |id: &str, message: &str, at: i64| Notification {
        id: id.into(),
        mesh_id: "m1".into(),
        topic_id: "t1".into(),
        message_id: message.into(),
        recipient_member_id: "bob".into(),
        sender_member_id: "alice".into(),
        kind: "mention".into(),
        read_at: None,
        created_at: at,
    };
    s.topic_post(
        topic_message("g", "t1", "alice", 200),
        vec![note("n1", "g", 200)],
    )
    .await
    .unwrap();
    s.topic_post(
        topic_message("h", "t1", "alice", 200),
        vec![note("n2", "h", 200)],
    )
    .await
    .unwrap();
    let n = s.notifications("m1", "bob", 0, true, 10).await.unwrap();
    assert_eq!(
        n.iter()
            .map(|v| v.notification.id.as_str())
            .collect::<Vec<_>>(),
        ["n2", "n1"]
    );
    assert_eq!(n[0].topic_name, "general");
    assert_eq!(n[0].message.id, "h");
    assert!(
        s.notifications("m1", "bob", 200, false, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.notifications("m2", "bob", 0, false, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.notifications_mark_read("m1", "bob", MarkWhich::Ids(vec!["g".into()]), 300)
            .await
            .unwrap(),
        1,
        "by message id"
    );
    assert_eq!(
        s.notifications_mark_read("m1", "bob", MarkWhich::All { before: None }, 300)
            .await
            .unwrap(),
        1
    );
    assert!(
        s.notifications("m1", "bob", 0, true, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.notifications("m1", "bob", 0, false, 10).await.unwrap()[1]
            .notification
            .read_at,
        Some(300)
    );
}

/// Concurrent creates of distinct names never exceed the per-mesh bound, and concurrent
/// joins never exceed the per-topic one.
async fn topics_concurrent_bounds(s: &dyn Store) {
    use broker::store::topics::{Created, Joined};
    s.create_mesh(mesh("m1")).await.unwrap();
    let creates = (0..8).map(|i| {
        s.topic_create(
            topic(&format!("t{i}"), "m1", &format!("n{i}"), "alice", i),
            None,
            3,
        )
    });
    let created = futures_util::future::join_all(creates).await;
    assert_eq!(
        created
            .iter()
            .filter(|r| matches!(r, Ok(Created::New(_))))
            .count(),
        3
    );
    let id = s.topic_list("m1", 10).await.unwrap()[0].topic.id.clone();
    let names: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    let joins = names
        .iter()
        .zip(0..)
        .map(|(m, i)| s.topic_join(&id, m, "member", i, 4));
    let joined = futures_util::future::join_all(joins).await;
    assert_eq!(
        joined
            .iter()
            .filter(|r| matches!(r, Ok(Joined::New)))
            .count(),
        3,
        "alice (the creator) and three more"
    );
    assert_eq!(s.topic_members(&id).await.unwrap().len(), 4);
}

contract!(topic_store: topics_lifecycle, topics_concurrent_bounds);

// ---------------------------------------------------------------------------------------
// Webhooks (extensions §15) and URL watches (§17)

fn webhook(mesh_id: &str, name: &str, by: &str, at: i64) -> broker::store::webhooks::Webhook {
    broker::store::webhooks::Webhook {
        id: format!("{mesh_id}-{name}-{at}"),
        mesh_id: mesh_id.into(),
        name: name.into(),
        secret_hash: format!("hash-{mesh_id}-{name}-{at}"),
        creator_member_id: by.into(),
        created_at: at,
    }
}

fn url_watch(id: &str, mesh_id: &str, member_id: &str, at: i64) -> broker::store::watches::Watch {
    broker::store::watches::Watch {
        id: id.into(),
        mesh_id: mesh_id.into(),
        member_id: member_id.into(),
        url: "http://127.0.0.1:9/".into(),
        mode: "json".into(),
        extract: Some("$.a".into()),
        interval_secs: 5,
        notify_on: "match:up".into(),
        headers: [("X-Token".to_string(), "t".to_string())].into(),
        label: Some("l".into()),
        last_value: None,
        last_check: None,
        created_at: at,
        next_check_at: at,
    }
}

/// Webhooks: unique names per mesh (a delete frees the name), lookup by (mesh, secret
/// hash) only, lists oldest first, the per-mesh bound.
async fn webhooks_records(s: &dyn Store) {
    use broker::store::webhooks::WebhookCreated;
    for m in ["m1", "m2"] {
        s.create_mesh(mesh(m)).await.unwrap();
    }
    let ci = webhook("m1", "ci", "alice", 2);
    assert_eq!(
        s.webhook_create(ci.clone(), 2).await.unwrap(),
        WebhookCreated::Created
    );
    assert_eq!(
        s.webhook_create(webhook("m1", "ci", "bob", 3), 2)
            .await
            .unwrap(),
        WebhookCreated::Exists
    );
    let deploy = webhook("m1", "deploy", "bob", 1);
    assert_eq!(
        s.webhook_create(deploy.clone(), 2).await.unwrap(),
        WebhookCreated::Created
    );
    assert_eq!(
        s.webhook_create(webhook("m1", "third", "bob", 4), 2)
            .await
            .unwrap(),
        WebhookCreated::TooMany
    );
    assert_eq!(
        s.webhook_create(webhook("m2", "ci", "carol", 5), 2)
            .await
            .unwrap(),
        WebhookCreated::Created,
        "names are per mesh"
    );
    assert_eq!(
        s.webhook_list("m1", 10).await.unwrap(),
        vec![deploy.clone(), ci.clone()]
    );
    assert_eq!(s.webhook_list("m1", 1).await.unwrap().len(), 1);
    assert_eq!(s.webhook_get("m1", "ci").await.unwrap(), Some(ci.clone()));
    assert_eq!(
        s.webhook_by_secret("m1", &ci.secret_hash).await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(
        s.webhook_by_secret("m2", &ci.secret_hash).await.unwrap(),
        None
    );
    assert!(s.webhook_delete("m1", "ci").await.unwrap());
    assert!(!s.webhook_delete("m1", "ci").await.unwrap());
    assert_eq!(
        s.webhook_by_secret("m1", &ci.secret_hash).await.unwrap(),
        None
    );
    assert_eq!(
        s.webhook_create(webhook("m1", "ci", "bob", 6), 2)
            .await
            .unwrap(),
        WebhookCreated::Created,
        "a delete frees the name"
    );
}

/// Concurrent creates in one mesh never pass the bound, and one name is created once.
async fn webhooks_concurrent_bound(s: &dyn Store) {
    use broker::store::webhooks::WebhookCreated;
    s.create_mesh(mesh("m1")).await.unwrap();
    let creates =
        (0..10).map(|i| s.webhook_create(webhook("m1", &format!("h{}", i % 5), "a", i), 3));
    let created = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap() == WebhookCreated::Created)
        .count();
    assert_eq!(created, 3);
    assert_eq!(s.webhook_list("m1", 20).await.unwrap().len(), 3);
}

/// Watches: per member, bounded per member and per mesh; a claim leases due watches to one
/// owner until the lease runs out; only the lease holder records.
async fn watches_leases(s: &dyn Store) {
    use broker::store::watches::WatchCreated;
    for m in ["m1", "m2"] {
        s.create_mesh(mesh(m)).await.unwrap();
    }
    let w1 = url_watch("w_1", "m1", "alice", 100);
    assert_eq!(
        s.watch_create(w1.clone(), 2, 3).await.unwrap(),
        WatchCreated::Created
    );
    s.watch_create(url_watch("w_2", "m1", "alice", 200), 2, 3)
        .await
        .unwrap();
    assert_eq!(
        s.watch_create(url_watch("w_3", "m1", "alice", 300), 2, 3)
            .await
            .unwrap(),
        WatchCreated::TooManyForMember
    );
    s.watch_create(url_watch("w_4", "m1", "bob", 400), 2, 3)
        .await
        .unwrap();
    assert_eq!(
        s.watch_create(url_watch("w_5", "m1", "carol", 500), 2, 3)
            .await
            .unwrap(),
        WatchCreated::TooManyForMesh
    );
    s.watch_create(url_watch("w_6", "m2", "alice", 600), 2, 3)
        .await
        .unwrap();
    let ids =
        |ws: &[broker::store::watches::Watch]| ws.iter().map(|w| w.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&s.watch_list("m1", "alice").await.unwrap()),
        vec!["w_1", "w_2"]
    );
    assert_eq!(
        s.watch_list("m1", "alice").await.unwrap()[0],
        w1,
        "stored as given"
    );

    // Due at 250: w_1 and w_2 (not w_4, due at 400), most overdue first, to one owner.
    let got = s.watch_claim_due(250, 1_250, "r1", 10).await.unwrap();
    assert_eq!(ids(&got), vec!["w_1", "w_2"]);
    assert!(
        s.watch_claim_due(300, 1_300, "r2", 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // The lease holder records; another owner cannot.
    assert!(
        !s.watch_record("w_1", "r2", Some(("x".into(), 300)), 5_000)
            .await
            .unwrap()
    );
    assert!(
        s.watch_record("w_1", "r1", Some(("v1".into(), 300)), 5_000)
            .await
            .unwrap()
    );
    assert!(
        !s.watch_record("w_1", "r1", Some(("v2".into(), 301)), 5_000)
            .await
            .unwrap(),
        "released"
    );
    let w = &s.watch_list("m1", "alice").await.unwrap()[0];
    assert_eq!(
        (w.last_value.as_deref(), w.last_check, w.next_check_at),
        (Some("v1"), Some(300), 5_000)
    );
    // w_2's holder died: once its lease runs out, another owner takes it (with the watches
    // due meanwhile).
    let taken = s.watch_claim_due(1_250, 2_250, "r2", 10).await.unwrap();
    assert_eq!(ids(&taken), vec!["w_2", "w_4", "w_6"]);
    assert!(
        !s.watch_record("w_2", "r1", Some(("late".into(), 1_300)), 9_000)
            .await
            .unwrap()
    );
    for id in ["w_2", "w_4", "w_6"] {
        assert!(
            s.watch_record(id, "r2", Some(("v".into(), 1_300)), 9_000)
                .await
                .unwrap()
        );
    }
    // A failed check (nothing observed) keeps the value and moves the due time.
    let again = s.watch_claim_due(5_000, 6_000, "r1", 10).await.unwrap();
    assert_eq!(ids(&again), vec!["w_1"]);
    assert!(s.watch_record("w_1", "r1", None, 9_000).await.unwrap());
    let w = &s.watch_list("m1", "alice").await.unwrap()[0];
    assert_eq!(
        (w.last_value.as_deref(), w.next_check_at),
        (Some("v1"), 9_000)
    );

    // Deletes only the member's own; a foreign id answers like an unknown one.
    assert_eq!(s.watch_delete("m1", "bob", "w_1").await.unwrap(), None);
    assert_eq!(s.watch_delete("m2", "alice", "w_1").await.unwrap(), None);
    assert_eq!(
        s.watch_delete("m1", "alice", "w_1")
            .await
            .unwrap()
            .map(|w| w.id),
        Some("w_1".into())
    );
    assert_eq!(s.watch_delete("m1", "alice", "w_1").await.unwrap(), None);
    assert!(!s.watch_record("w_1", "r1", None, 1).await.unwrap(), "gone");
    assert_eq!(
        s.watch_claim_due(i64::MAX / 2, i64::MAX / 2, "r3", 1)
            .await
            .unwrap()
            .len(),
        1,
        "the limit"
    );
}

/// Concurrent claimers never take the same watch; concurrent creates never pass the bound.
async fn watches_concurrent(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let creates =
        (0..10).map(|i| s.watch_create(url_watch(&format!("w_{i}"), "m1", "alice", i), 4, 0));
    let created = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap() == broker::store::watches::WatchCreated::Created)
        .count();
    assert_eq!(created, 4);
    let owners: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    let claims = owners.iter().map(|o| s.watch_claim_due(100, 10_000, o, 2));
    let mut claimed: Vec<String> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap().into_iter().map(|w| w.id))
        .collect();
    claimed.sort();
    let before = claimed.len();
    claimed.dedup();
    assert_eq!(
        (before, claimed.len()),
        (4, 4),
        "every watch claimed exactly once"
    );
}

contract!(webhook_store: webhooks_records, webhooks_concurrent_bound);
contract!(watch_store: watches_leases, watches_concurrent);

fn api_key(
    id: &str,
    mesh_id: &str,
    issuer: &str,
    prefix: &str,
    created_at: i64,
) -> broker::store::apikeys::ApiKey {
    broker::store::apikeys::ApiKey {
        id: id.into(),
        mesh_id: mesh_id.into(),
        label: format!("label {id}"),
        prefix: prefix.into(),
        secret_hash: format!("hash-{id}"),
        capabilities: vec!["read".into(), "send".into()],
        topic_scopes: Some(vec!["general".into()]),
        issued_by_member_id: Some(issuer.into()),
        created_at,
        last_used_at: None,
        revoked_at: None,
        expires_at: None,
    }
}

/// API keys: stored as given (no secret), found by prefix, listed newest first per mesh and
/// issuer, revoked by id or a long enough prefix (literally, idempotently), touched, and
/// their recent issuers listed.
async fn api_keys_records(s: &dyn Store) {
    use broker::store::apikeys::RevokeOutcome;
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let k1 = api_key("key_aaaa_1", "m1", "alice", "cm_prefix1", 1_000);
    assert!(s.create_api_key(k1.clone(), 10, 0).await.unwrap());
    assert!(
        s.create_api_key(
            api_key("key_aaaa_2", "m1", "bob", "cm_prefix2", 2_000),
            10,
            0
        )
        .await
        .unwrap()
    );
    assert!(
        s.create_api_key(
            api_key("key_bbbb_3", "m2", "carol", "cm_prefix3", 3_000),
            10,
            0
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.api_keys_by_prefix("cm_prefix1").await.unwrap(),
        vec![k1.clone()]
    );
    assert_eq!(s.api_key("key_aaaa_1").await.unwrap(), Some(k1.clone()));
    assert_eq!(s.api_key("nope").await.unwrap(), None);
    // Newest first, and among keys of one millisecond the later created first (ids that
    // sort the other way, so the order cannot come from them).
    s.create_mesh(mesh("m3")).await.unwrap();
    for id in ["key_zzzz_1", "key_aaaa_9"] {
        let k = api_key(id, "m3", "dave", &format!("cm_{}", &id[4..]), 5_000);
        assert!(s.create_api_key(k, 10, 0).await.unwrap());
    }
    let listed: Vec<String> = s
        .api_keys("m3", None)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed, ["key_aaaa_9", "key_zzzz_1"]);
    let ids =
        |v: Vec<broker::store::apikeys::ApiKey>| v.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.api_keys("m1", None).await.unwrap()),
        ["key_aaaa_2", "key_aaaa_1"]
    );
    assert_eq!(
        ids(s.api_keys("m1", Some("alice")).await.unwrap()),
        ["key_aaaa_1"]
    );

    // Revocation: a prefix shorter than the minimum matches only a full id; `%`/`_` are literal.
    assert_eq!(
        s.revoke_api_key("m1", "key", None, 6, 10).await.unwrap(),
        RevokeOutcome::NotFound
    );
    assert_eq!(
        s.revoke_api_key("m1", "key_%", None, 4, 10).await.unwrap(),
        RevokeOutcome::NotFound
    );
    match s
        .revoke_api_key("m1", "key_aaaa", None, 6, 10)
        .await
        .unwrap()
    {
        RevokeOutcome::NotUnique(m) => assert_eq!(m.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.revoke_api_key("m1", "key_aaaa", Some("bob"), 6, 10)
            .await
            .unwrap(),
        RevokeOutcome::Revoked("key_aaaa_2".into()),
        "only bob's own"
    );
    assert_eq!(
        s.revoke_api_key("m2", "key_aaaa_1", None, 6, 10)
            .await
            .unwrap(),
        RevokeOutcome::NotFound,
        "another mesh"
    );
    assert_eq!(
        s.revoke_api_key("m1", "key_aaaa_1", None, 6, 20)
            .await
            .unwrap(),
        RevokeOutcome::Revoked("key_aaaa_1".into())
    );
    assert_eq!(
        s.revoke_api_key("m1", "key_aaaa_1", None, 6, 30)
            .await
            .unwrap(),
        RevokeOutcome::Revoked("key_aaaa_1".into()),
        "idempotent"
    );
    assert_eq!(
        s.api_key("key_aaaa_1").await.unwrap().unwrap().revoked_at,
        Some(20),
        "the first revocation stays"
    );

    // Touches and the recent issuers (non-revoked keys only).
    s.touch_api_key("key_bbbb_3", 5_000).await.unwrap();
    s.touch_api_key("key_aaaa_1", 5_000).await.unwrap();
    assert_eq!(
        s.api_key("key_bbbb_3").await.unwrap().unwrap().last_used_at,
        Some(5_000)
    );
    assert_eq!(s.recent_key_issuers("m2", 4_000).await.unwrap(), ["carol"]);
    assert!(s.recent_key_issuers("m2", 6_000).await.unwrap().is_empty());
    assert!(
        s.recent_key_issuers("m1", 0).await.unwrap().is_empty(),
        "revoked keys do not count"
    );

    // The bound counts the issuer's rows; dead rows older than the purge time go first.
    let mut dead = api_key("key_dead_1", "m2", "dave", "cm_prefix4", 100);
    dead.expires_at = Some(200);
    assert!(s.create_api_key(dead, 1, 0).await.unwrap());
    assert!(
        !s.create_api_key(
            api_key("key_dave_2", "m2", "dave", "cm_prefix5", 300),
            1,
            150
        )
        .await
        .unwrap()
    );
    assert!(
        s.create_api_key(
            api_key("key_dave_2", "m2", "dave", "cm_prefix5", 300),
            1,
            250
        )
        .await
        .unwrap()
    );
    assert_eq!(
        ids(s.api_keys("m2", Some("dave")).await.unwrap()),
        ["key_dave_2"]
    );
}

/// Concurrent creates never pass the per-issuer bound.
async fn api_keys_concurrent_bound(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let creates = (0..10).map(|i| {
        s.create_api_key(
            api_key(&format!("key_{i}"), "m1", "alice", &format!("cm_p{i}"), i),
            3,
            0,
        )
    });
    let stored = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(stored, 3);
}

contract!(api_key_store: api_keys_records, api_keys_concurrent_bound);

fn stored_mcp_server(mesh: &str, name: &str, member: &str, t: i64) -> StoredMcpServer {
    StoredMcpServer {
        mesh_id: mesh.into(),
        server_name: name.into(),
        host_member_id: member.into(),
        registration: format!(r#"{{"server_name":"{name}","tools":[],"x":{t}}}"#),
        updated_at: t,
    }
}

/// Persistent MCP registrations: upserted per (mesh, name), listed by name (bytewise) within
/// the limit, per mesh, deleted by name, by mesh and with their host member.
async fn mcp_servers(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    s.save_mcp_server(stored_mcp_server("m1", "b", "alice", 1))
        .await
        .unwrap();
    s.save_mcp_server(stored_mcp_server("m1", "B", "bob", 2))
        .await
        .unwrap();
    s.save_mcp_server(stored_mcp_server("m1", "a", "alice", 3))
        .await
        .unwrap();
    s.save_mcp_server(stored_mcp_server("m2", "a", "carol", 4))
        .await
        .unwrap();
    let names =
        |v: Vec<StoredMcpServer>| -> Vec<String> { v.into_iter().map(|s| s.server_name).collect() };
    assert_eq!(
        names(s.mcp_servers("m1", 10).await.unwrap()),
        ["B", "a", "b"]
    );
    assert_eq!(names(s.mcp_servers("m1", 2).await.unwrap()), ["B", "a"]);
    // An upsert replaces the whole entry, byte for byte.
    let replaced = stored_mcp_server("m1", "a", "alice", 9);
    s.save_mcp_server(replaced.clone()).await.unwrap();
    let all = s.mcp_servers("m1", 10).await.unwrap();
    assert_eq!(all[1], replaced);
    assert!(s.delete_mcp_server("m1", "b").await.unwrap());
    assert!(!s.delete_mcp_server("m1", "b").await.unwrap());
    assert_eq!(names(s.mcp_servers("m1", 10).await.unwrap()), ["B", "a"]);
    assert_eq!(
        names(s.mcp_servers("m2", 10).await.unwrap()),
        ["a"],
        "per mesh"
    );
    assert!(s.mcp_servers("none", 10).await.unwrap().is_empty());
}

/// A deleted member loses the entries it hosts; a deleted mesh loses all of its entries.
async fn mcp_servers_go_with_their_member_and_mesh(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let alice = s.add_member("m1", new_member("a1", "alice")).await.unwrap();
    s.save_mcp_server(stored_mcp_server("m1", "mine", &alice.id, 1))
        .await
        .unwrap();
    s.save_mcp_server(stored_mcp_server("m1", "other", "someone", 2))
        .await
        .unwrap();
    assert!(s.delete_member("m1", &alice.id).await.unwrap());
    let left: Vec<String> = s
        .mcp_servers("m1", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.server_name)
        .collect();
    assert_eq!(left, ["other"]);
    assert!(s.delete_mesh("m1").await.unwrap());
    assert!(s.mcp_servers("m1", 10).await.unwrap().is_empty());
}

use broker::store::mcp_registry::StoredMcpServer;

contract!(mcp_server_store: mcp_servers, mcp_servers_go_with_their_member_and_mesh);

/// Web-managed members (`store/web_members.rs`): one per (mesh, user), created once; only
/// they may change key, which drops their sealed topic-key copies (and only theirs).
async fn web_members(s: &dyn Store) {
    use broker::store::web_members::KeyChange;
    s.create_mesh(mesh("m1")).await.unwrap();
    s.create_mesh(mesh("m2")).await.unwrap();
    let cli = s.add_member("m1", new_member("aa", "alice")).await.unwrap();
    let other = s.add_member("m1", new_member("bb", "bob")).await.unwrap();
    assert!(s.web_member("m1", "u1").await.unwrap().is_none());
    let mut web = new_member("cc", "alice-web");
    web.user_id = Some("u1".into());
    let (row, created) = s.create_web_member("m1", "u1", web.clone()).await.unwrap();
    assert!(created);
    assert_eq!(
        (row.display_name.as_str(), row.user_id.as_deref()),
        ("alice-web", Some("u1"))
    );
    // Once per (mesh, user): the second call returns the first row and ignores its input.
    let (again, created) = s
        .create_web_member("m1", "u1", new_member("dd", "ignored"))
        .await
        .unwrap();
    assert_eq!((again.id.as_str(), created), (row.id.as_str(), false));
    assert_eq!(s.members("m1").await.unwrap().len(), 3);
    assert_eq!(s.web_member("m1", "u1").await.unwrap().unwrap().id, row.id);
    assert!(
        s.web_member("m2", "u1").await.unwrap().is_none(),
        "per mesh"
    );
    assert!(s.is_web_member("m1", &row.id).await.unwrap());
    assert!(!s.is_web_member("m1", &cli.id).await.unwrap());
    assert!(!s.is_web_member("m2", &row.id).await.unwrap());

    // Sealed copies of two topics for the web row, one for bob.
    for t in ["t1", "t2"] {
        s.topic_create(topic(t, "m1", t, &other.id, 10), None, 0)
            .await
            .unwrap();
        for m in [&row.id, &other.id] {
            s.topic_join(t, m, "member", 11, 0).await.unwrap();
            s.topic_seal(sealed(t, m, "k"), true).await.unwrap();
        }
    }
    // CLI rows and unknown rows keep their keys.
    let key = "ee".repeat(32);
    assert!(matches!(
        s.set_web_member_pubkey("m1", &cli.id, &key).await.unwrap(),
        KeyChange::NotWebManaged
    ));
    assert!(matches!(
        s.set_web_member_pubkey("m1", "nobody", &key).await.unwrap(),
        KeyChange::NotFound
    ));
    assert!(matches!(
        s.set_web_member_pubkey("m2", &row.id, &key).await.unwrap(),
        KeyChange::NotFound
    ));
    // Another member's key is refused.
    assert!(matches!(
        s.set_web_member_pubkey("m1", &row.id, &other.pubkey).await,
        Err(StoreError::Conflict(_))
    ));
    // The same key: nothing changes, the copies stay.
    match s
        .set_web_member_pubkey("m1", &row.id, &row.pubkey)
        .await
        .unwrap()
    {
        KeyChange::Set { changed, .. } => assert!(!changed),
        other => panic!("{other:?}"),
    }
    assert!(s.topic_key("t1", &row.id).await.unwrap().is_some());
    // A new key: stored, the row's copies are gone, bob's stay.
    match s.set_web_member_pubkey("m1", &row.id, &key).await.unwrap() {
        KeyChange::Set { member, changed } => {
            assert!(changed);
            assert_eq!(member.pubkey, key);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.member("m1", &row.id).await.unwrap().unwrap().pubkey, key);
    assert_eq!(
        s.member_by_pubkey("m1", &key).await.unwrap().unwrap().id,
        row.id
    );
    for t in ["t1", "t2"] {
        assert!(s.topic_key(t, &row.id).await.unwrap().is_none());
        assert!(s.topic_key(t, &other.id).await.unwrap().is_some());
        let pending = s.topic_unsealed_members(t, 10).await.unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|m| m.member_id.as_str())
                .collect::<Vec<_>>(),
            [row.id.as_str()]
        );
    }
    assert!(matches!(
        s.set_web_member_pubkey("m1", &cli.id, &"ff".repeat(32))
            .await
            .unwrap(),
        KeyChange::NotWebManaged
    ));
    assert_eq!(
        s.member("m1", &cli.id).await.unwrap().unwrap().pubkey,
        cli.pubkey
    );
}

/// Concurrent first opens of the chat make one web-managed row.
async fn web_members_concurrent_create(s: &dyn Store) {
    s.create_mesh(mesh("m1")).await.unwrap();
    let calls = (0..8).map(|i| {
        let mut m = new_member(&format!("{:02x}", 0x10 + i), &format!("w{i}"));
        m.user_id = Some("u1".into());
        s.create_web_member("m1", "u1", m)
    });
    let results = futures_util::future::join_all(calls).await;
    let ids: std::collections::BTreeSet<String> =
        results.into_iter().map(|r| r.unwrap().0.id).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(s.members("m1").await.unwrap().len(), 1);
}

contract!(web_member_store: web_members, web_members_concurrent_create);
