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
    let parts: Vec<&str> = bounds.split('+').map(str::trim).collect();
    let declared: Vec<&str> = store_rs
        .lines()
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
