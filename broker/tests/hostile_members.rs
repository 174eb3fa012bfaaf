//! Hostile members against the real binary: an authenticated member opening
//! `session_hello`s as fast as it can (each reserves a session key in Redis) is rate-limited
//! cluster-wide, and concurrent handshakes on several replicas never push a mesh past
//! `MAX_CONNECTIONS_PER_MESH`.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// Peers in a `list_peers` reply; 0 for an error reply.
fn peer_count(list: &Value) -> usize {
    list["peers"].as_array().map_or(0, Vec::len)
}

/// `broker_connections_rejected_total{reason}` of one replica.
fn rejected(b: &Broker, reason: &str) -> u64 {
    let line = format!("broker_connections_rejected_total{{reason=\"{reason}\"}} ");
    b.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Sockets in the replica's hub (`/health`'s `connections`).
fn hub_size(b: &Broker) -> usize {
    let (status, body) = b.try_http("GET", "/health", None, None).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["connections"].as_u64().unwrap() as usize
}

// ---------------------------------------------------------------------------------------
// Handshakes per member
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_member_opening_session_hellos_in_a_loop_is_rate_limited_cluster_wide() {
    let c = Cluster::new(&[
        ("SESSION_HELLO_BURST_PER_MEMBER", "4"),
        ("SESSION_HELLOS_PER_MEMBER_PER_MIN", "1"),
    ])
    .await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("loop", None);
    let mallory = member(&a, &mesh, "mallory", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));

    // Strangers and bad signatures cannot burn mallory's budget: they never reach it.
    for _ in 0..6 {
        let s = Identity::random();
        let mut sh = session_hello(&mesh, &mallory.identity, &s, json!({}));
        sh["signature"] = json!(Identity::random().sign("not the session hello"));
        assert_refused(&a.ws_url(), sh, "bad_signature").await;
    }

    // The burst, spread over both replicas: one bucket for the whole cluster.
    let mut open = Vec::new();
    for i in 0..4 {
        let url = if i % 2 == 0 { a.ws_url() } else { b.ws_url() };
        let s = Identity::random();
        let (cl, _) =
            Client::join(&url, session_hello(&mesh, &mallory.identity, &s, json!({}))).await;
        open.push(cl);
    }
    for r in [&a, &b] {
        let s = Identity::random();
        assert_refused(
            &r.ws_url(),
            session_hello(&mesh, &mallory.identity, &s, json!({})),
            "rate_limited",
        )
        .await;
    }
    assert_eq!(
        rejected(&a, "rate_limited") + rejected(&b, "rate_limited"),
        2
    );
    // Refused before the key was reserved: announcing it in a `hello` of another member
    // is not a capture of a proven key (it was never proven).
    let s = Identity::random();
    assert_refused(
        &a.ws_url(),
        session_hello(&mesh, &mallory.identity, &s, json!({})),
        "rate_limited",
    )
    .await;
    let (_bc, _) = Client::join(
        &a.ws_url(),
        bob.hello(&mesh, json!({"sessionPubkey": s.pubkey})),
    )
    .await;
    // Another member's budget is its own.
    let s = Identity::random();
    let (_bs, _) = Client::join(
        &b.ws_url(),
        session_hello(&mesh, &bob.identity, &s, json!({})),
    )
    .await;
    // Mallory's open sessions are untouched by the refusals.
    let list = open[0].request(ClientFrame::ListPeers).await;
    assert_eq!(peer_count(&list), 6, "{list}");
}

#[tokio::test]
async fn zero_disables_the_session_hello_rate_limit() {
    let b = Broker::start(&[
        ("SESSION_HELLO_BURST_PER_MEMBER", "0"),
        ("SESSION_HELLOS_PER_MEMBER_PER_MIN", "0"),
    ]);
    let mesh = b.create_mesh("free", None);
    let m = member(&b, &mesh, "m", json!({}));
    for _ in 0..30 {
        let s = Identity::random();
        let (c, _) = Client::join(
            &b.ws_url(),
            session_hello(&mesh, &m.identity, &s, json!({})),
        )
        .await;
        c.close().await;
    }
    assert_eq!(rejected(&b, "rate_limited"), 0);
}

// ---------------------------------------------------------------------------------------
// The mesh cap under concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_handshakes_on_two_replicas_never_overshoot_the_mesh_cap() {
    const N: usize = 3;
    const ROUNDS: usize = 4;
    let c = Cluster::new(&[("MAX_CONNECTIONS_PER_MESH", "3")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mut keep = Vec::new();
    for round in 0..ROUNDS {
        let mesh = a.create_mesh(&format!("race-{round}"), None);
        let members: Vec<Member> = (0..3 * N)
            .map(|i| member(&a, &mesh, &format!("m{i}"), json!({})))
            .collect();
        // Every socket is open before any hello is sent, so the handshakes overlap.
        let mut sockets = Vec::new();
        for i in 0..3 * N {
            let url = if i % 2 == 0 { a.ws_url() } else { b.ws_url() };
            sockets.push(Client::connect(&url).await);
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3 * N));
        let tasks: Vec<_> = sockets
            .into_iter()
            .zip(members.iter().map(|m| m.hello(&mesh, json!({}))))
            .map(|(mut s, h)| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.send(h).await;
                    match s.next_within(WAIT).await {
                        Some(Event::Frame(f)) if f["type"] == "hello_ack" => Ok(s),
                        Some(Event::Frame(f)) if f["type"] == "error" => {
                            let code = f["code"].as_str().unwrap().to_string();
                            Err((code, s.expect_close().await))
                        }
                        other => panic!("unexpected answer to a hello: {other:?}"),
                    }
                })
            })
            .collect();
        let mut joined = Vec::new();
        let mut refusals = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(s) => joined.push(s),
                Err(r) => refusals.push(r),
            }
        }
        assert_eq!(joined.len(), N, "round {round}: {refusals:?}");
        for r in &refusals {
            assert_eq!(*r, ("capacity".to_string(), handshake_close("capacity")));
        }
        let list = joined[0].request(ClientFrame::ListPeers).await;
        assert_eq!(peer_count(&list), N, "round {round}: {list}");
        // The refused handshakes left no socket in either replica's hub.
        eventually("only the joined sockets are held", async || {
            (hub_size(&a) + hub_size(&b) == (round + 1) * N).then_some(())
        })
        .await;
        // Nothing of a refused handshake stayed behind: a slot freed is usable at once.
        let gone = joined.pop().unwrap();
        gone.close().await;
        let late = member(&a, &mesh, "late", json!({}));
        let (mut l, _) = eventually("the freed slot is usable", async || {
            let mut t = Client::connect(&b.ws_url()).await;
            t.send(late.hello(&mesh, json!({}))).await;
            match t.next_within(WAIT).await {
                Some(Event::Frame(f)) if f["type"] == "hello_ack" => Some((t, f)),
                _ => None,
            }
        })
        .await;
        assert_eq!(peer_count(&l.request(ClientFrame::ListPeers).await), N);
        assert_refused(&a.ws_url(), members[0].hello(&mesh, json!({})), "capacity").await;
        keep.extend(joined);
        keep.push(l);
    }
}
