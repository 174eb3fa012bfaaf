//! Handshakes against the real binary: every `hello`/`session_hello` outcome of spec §3.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use broker::protocol::signing;
use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Sends `hello` on a fresh socket and returns the error code and the close.
async fn refused(b: &Broker, hello: Value) -> (String, (u16, String)) {
    let mut c = Client::connect(&b.ws_url()).await;
    c.send(hello).await;
    let err = c.expect("error").await;
    let close = c.expect_close().await;
    (err["code"].as_str().unwrap_or_default().to_string(), close)
}

fn assert_refused(got: (String, (u16, String)), code: &str) {
    assert_eq!(got.0, code);
    assert_eq!(got.1, handshake_close(code));
}

#[tokio::test]
async fn golden_vector_signature_verifies_and_a_flipped_one_is_refused() {
    // The broker verifies the spec's golden hello when its mesh and member exist. The
    // vector's timestamp is in the past, so it is checked through the pure verifier here and
    // through freshly signed hellos with the vector's keys against the binary below.
    let v: Value = serde_json::from_str(include_str!("data/vectors.json")).unwrap();
    let h = &v["hello"];
    let text = h["signed_text"].as_str().unwrap();
    assert!(
        signing::verify(
            h["pubkey"].as_str().unwrap(),
            text,
            h["signature"].as_str().unwrap()
        )
        .is_ok()
    );
    let flipped = v["hello_bad_signature"]["signature"].as_str().unwrap();
    assert!(signing::verify(h["pubkey"].as_str().unwrap(), text, flipped).is_err());

    let b = Broker::start(&[]);
    let mesh = b.create_mesh("vectors", None);
    let seed: [u8; 32] = hex::decode(v["keys"]["member"]["seed"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let id = Identity::from_seed(seed);
    assert_eq!(id.pubkey, v["keys"]["member"]["pubkey"].as_str().unwrap());
    let member_id = b.add_member(&mesh, &id, "vec", json!({}));
    let (_c, ack) = Client::join(&b.ws_url(), hello(&mesh, &member_id, &id, json!({}))).await;
    assert!(ack["presenceId"].is_string());
    assert_eq!(ack["memberDisplayName"], "vec");

    // Same hello with one signature byte flipped.
    let mut bad = hello(&mesh, &member_id, &id, json!({}));
    let sig = bad["signature"].as_str().unwrap().to_string();
    let last = if sig.ends_with('0') { "1" } else { "0" };
    bad["signature"] = json!(format!("{}{last}", &sig[..127]));
    assert_refused(refused(&b, bad).await, "bad_signature");
}

#[tokio::test]
async fn every_hello_rejection_code() {
    let b = Broker::start(&[("MAX_CONNECTIONS_PER_MESH", "2")]);
    let mesh = b.create_mesh("codes", None);
    let alice = member(&b, &mesh, "alice", json!({}));

    let mut h = alice.hello(&mesh, json!({"sessionPubkey": "XYZ"}));
    assert_refused(refused(&b, h.clone()).await, "bad_session_pubkey");

    h = alice.hello(&mesh, json!({}));
    h["timestamp"] = json!(now_ms() - 120_000);
    assert_refused(refused(&b, h).await, "timestamp_skew");
    h = alice.hello(&mesh, json!({}));
    h["timestamp"] = json!("soon");
    assert_refused(refused(&b, h).await, "timestamp_skew");

    h = alice.hello(&mesh, json!({}));
    h["signature"] = json!("abcd");
    assert_refused(refused(&b, h).await, "malformed");
    h = alice.hello(&mesh, json!({}));
    h["pubkey"] = json!("zz");
    assert_refused(refused(&b, h).await, "malformed");

    // Signed by someone else.
    let mallory = Identity::random();
    h = alice.hello(&mesh, json!({}));
    let ts = h["timestamp"].as_i64().unwrap();
    h["signature"] = json!(mallory.sign(&signing::hello_text(
        &mesh,
        &alice.id,
        &alice.identity.pubkey,
        ts
    )));
    assert_refused(refused(&b, h).await, "bad_signature");

    // A well-signed hello by a key that is no member.
    let stranger = Identity::random();
    assert_refused(
        refused(&b, hello(&mesh, "nobody", &stranger, json!({}))).await,
        "unauthorized",
    );
    // An unknown mesh.
    assert_refused(
        refused(
            &b,
            hello("no-such-mesh", &alice.id, &alice.identity, json!({})),
        )
        .await,
        "unauthorized",
    );

    // Replay: the same signed hello twice.
    let h = alice.hello(&mesh, json!({}));
    let (c1, _) = Client::join(&b.ws_url(), h.clone()).await;
    assert_refused(refused(&b, h).await, "replayed");

    // Capacity: two open sockets is the cap; a third is refused.
    let (c2, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    assert_refused(refused(&b, alice.hello(&mesh, json!({}))).await, "capacity");
    // Presences in grace do not count: closing one socket frees a slot.
    c2.close().await;
    let (_c3, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    drop(c1);

    let metrics = b.metrics();
    for code in [
        "bad_session_pubkey",
        "timestamp_skew",
        "malformed",
        "bad_signature",
        "unauthorized",
        "replayed",
        "capacity",
    ] {
        assert!(
            metrics.contains(&format!(
                "broker_connections_rejected_total{{reason=\"{code}\"}}"
            )),
            "{code} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn revoked_member_gets_revoked_and_4002() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("Team Rocket", Some("owner-user"));
    let owner = member(&b, &mesh, "owner", json!({"userId": "owner-user"}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut admin, _) = Client::join(&b.ws_url(), owner.hello(&mesh, json!({}))).await;
    let ack = admin.request(ClientFrame::Ban(ban_request("bob"))).await;
    assert_eq!(ack["type"], "ban_ack");

    let mut c = Client::connect(&b.ws_url()).await;
    c.send(bob.hello(&mesh, json!({}))).await;
    let err = c.expect("error").await;
    assert_eq!(err["code"], "revoked");
    assert_eq!(
        err["message"],
        "You've been removed from \"Team Rocket\". Contact the mesh owner to rejoin."
    );
    assert_eq!(c.expect_close().await, close_of(codes::BANNED));
}

#[tokio::test]
async fn session_hello_accepts_a_vouched_session_and_refuses_every_fault() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("sessions", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let session = Identity::random();

    let (_ok, ack) = Client::join(
        &b.ws_url(),
        session_hello(
            &mesh,
            &alice.identity,
            &session,
            json!({"parentMemberId": alice.id}),
        ),
    )
    .await;
    assert!(ack["presenceId"].is_string());

    let fresh = || Identity::random();
    let mut h = session_hello(
        &mesh,
        &alice.identity,
        &fresh(),
        json!({"sessionPubkey": "nope"}),
    );
    assert_refused(refused(&b, h).await, "bad_session_pubkey");
    h = session_hello(
        &mesh,
        &alice.identity,
        &fresh(),
        json!({"parentMemberPubkey": "nope"}),
    );
    assert_refused(refused(&b, h).await, "bad_parent_pubkey");
    h = session_hello(&mesh, &alice.identity, &fresh(), json!({}));
    h["parentAttestation"]["sessionPubkey"] = json!(fresh().pubkey);
    assert_refused(refused(&b, h).await, "attestation_mismatch");

    // Attestation lifetimes, re-signed so only the lifetime is wrong.
    let s = fresh();
    for (expires, code) in [
        (now_ms() - 1000, "expired"),
        (now_ms() + 25 * 3_600_000, "ttl_too_long"),
    ] {
        h = session_hello(&mesh, &alice.identity, &s, json!({}));
        h["parentAttestation"]["expiresAt"] = json!(expires);
        h["parentAttestation"]["signature"] = json!(alice.identity.sign(
            &signing::attestation_text(&alice.identity.pubkey, &s.pubkey, expires)
        ));
        assert_refused(refused(&b, h).await, code);
    }
    h = session_hello(&mesh, &alice.identity, &fresh(), json!({}));
    h["parentAttestation"]["signature"] = json!("12");
    assert_refused(refused(&b, h).await, "malformed");
    h = session_hello(&mesh, &alice.identity, &fresh(), json!({}));
    h["parentAttestation"]["signature"] = json!(fresh().sign("not the attestation"));
    assert_refused(refused(&b, h).await, "bad_signature");
    // Session signature made by the member key instead of the session key.
    let s = fresh();
    h = session_hello(&mesh, &alice.identity, &s, json!({}));
    let ts = h["timestamp"].as_i64().unwrap();
    h["signature"] = json!(alice.identity.sign(&signing::session_hello_text(
        &mesh,
        &alice.identity.pubkey,
        &s.pubkey,
        ts
    )));
    assert_refused(refused(&b, h).await, "bad_signature");
    h = session_hello(&mesh, &alice.identity, &fresh(), json!({}));
    h["timestamp"] = json!(now_ms() + 300_000);
    assert_refused(refused(&b, h).await, "timestamp_skew");
    h = session_hello(
        &mesh,
        &alice.identity,
        &fresh(),
        json!({"parentMemberId": "someone-else"}),
    );
    assert_refused(refused(&b, h).await, "parent_member_id_mismatch");
    let outsider = Identity::random();
    h = session_hello(&mesh, &outsider, &fresh(), json!({}));
    assert_refused(refused(&b, h).await, "unauthorized");
    h = session_hello(&mesh, &alice.identity, &fresh(), json!({}));
    let (_c, _) = Client::join(&b.ws_url(), h.clone()).await;
    assert_refused(refused(&b, h).await, "replayed");
}

#[tokio::test]
async fn frames_before_hello_get_no_hello_and_the_socket_stays_open() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("nohello", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let mut c = Client::connect(&b.ws_url()).await;
    c.send(Envelope {
        req_id: Some("r1".into()),
        frame: ClientFrame::ListPeers,
    })
    .await;
    let err = c.expect("error").await;
    assert_eq!(err["code"], "no_hello");
    assert_eq!(err["_reqId"], "r1");
    c.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(c.expect("error").await["code"], "malformed");
    c.send(alice.hello(&mesh, json!({"_reqId": "h1"}))).await;
    let ack = c.expect("hello_ack").await;
    assert_eq!(ack["_reqId"], "h1");
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_hello_timeout() {
    let b = Broker::start(&[("HELLO_TIMEOUT_MS", "300")]);
    let mut c = Client::connect(&b.ws_url()).await;
    assert_eq!(c.expect_close().await, handshake_close("hello_timeout"));
}

#[tokio::test]
async fn upgrade_only_on_ws_path() {
    let b = Broker::start(&[]);
    let err = tokio_tungstenite::connect_async(format!("ws://{}/other", b.addr)).await;
    assert!(err.is_err(), "an upgrade on another path must fail");
    let (status, _) = b.try_http("GET", "/other", None, None).unwrap();
    assert_eq!(status, 404);
}
