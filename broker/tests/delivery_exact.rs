//! Exact delivery outcomes and fail-closed paths against the real binary: revocation on
//! the send path, idempotent retries by `client_message_id`, re-drain after a failed
//! claim, and `client_ack` by client id scoped to this connection's pushes.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use common::pg;
use common::*;
use serde_json::json;

const NO_RATE_LIMIT: (&str, &str) = ("BROKER_SEND_BURST", "0");

fn send_frame(
    target: &str,
    priority: Priority,
    ciphertext: &str,
    client_id: Option<&str>,
) -> ClientFrame {
    ClientFrame::Send(Box::new(broker::protocol::Send {
        client_message_id: client_id.map(str::to_string),
        ..send_body(target, priority, ciphertext)
    }))
}

/// A ban written straight into PostgreSQL (no bus event, no close) still stops the
/// member's next send on its open socket once the member cache has expired: the send is
/// refused with `revoked`, the socket is closed 4002, and nothing is delivered.
#[tokio::test]
async fn a_member_revoked_behind_the_brokers_back_cannot_send_on_its_open_socket() {
    let url = pg::fresh_db().await;
    let b = Broker::start(&[("DATABASE_URL", url.as_str()), NO_RATE_LIMIT]);
    let mesh = b.create_mesh("revoked-send", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    // A first send fills this replica's member cache with alice unrevoked.
    let ack = a.send_msg(&bob.identity.pubkey, "now", "before").await;
    assert_eq!(ack["queued"], true, "{ack}");
    bc.expect_where("push", is_push).await;

    let db = pg::connect(&url).await;
    let n = db
        .execute(
            "UPDATE members SET revoked_at = $2 WHERE id = $1",
            &[&alice.id, &now_ms()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Until the cached member rows expire a send may still pass; the first refused one
    // must be `revoked`, and the socket must then close 4002.
    let mut i = 0;
    let refused = eventually("a send refused as revoked", async || {
        i += 1;
        let reply = a
            .request(send_frame(
                &bob.identity.pubkey,
                Priority::Now,
                &format!("m{i}"),
                None,
            ))
            .await;
        if reply["type"] == "ack" && reply["queued"] == true {
            return None;
        }
        Some((reply, format!("m{i}")))
    })
    .await;
    let (reply, ciphertext) = refused;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "revoked", "{reply}");
    assert_eq!(a.expect_close().await, close_of(codes::BANNED));
    bc.expect_none(Duration::from_millis(500), |v| {
        is_push(v) && v["ciphertext"] == ciphertext.as_str()
    })
    .await;
}

async fn retried_send_is_queued_once(b: &Broker) {
    let mesh = b.create_mesh("idempotent", None);
    let alice = member(b, &mesh, "alice", json!({}));
    let bob = member(b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let first = a
        .request(send_frame(
            &bob.identity.pubkey,
            Priority::Next,
            "once",
            Some("cm-1"),
        ))
        .await;
    assert_eq!(first["queued"], true, "{first}");
    let retry = a
        .request(send_frame(
            &bob.identity.pubkey,
            Priority::Next,
            "once",
            Some("cm-1"),
        ))
        .await;
    assert_eq!(retry["queued"], true, "{retry}");
    assert_eq!(
        retry["messageId"], first["messageId"],
        "a retry answers with the original messageId"
    );
    // Another client id is another message.
    let other = a
        .request(send_frame(
            &bob.identity.pubkey,
            Priority::Next,
            "twice",
            Some("cm-2"),
        ))
        .await;
    assert_ne!(other["messageId"], first["messageId"]);

    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], first["messageId"]);
    bc.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], other["messageId"]);
    bc.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;
    bc.expect_none(Duration::from_millis(400), is_push).await;

    // Still idempotent after the original was delivered and confirmed.
    let late = a
        .request(send_frame(
            &bob.identity.pubkey,
            Priority::Next,
            "once",
            Some("cm-1"),
        ))
        .await;
    assert_eq!(late["messageId"], first["messageId"], "{late}");
    bc.expect_none(Duration::from_millis(400), is_push).await;
}

#[tokio::test]
async fn a_retried_send_with_the_same_client_message_id_is_queued_once_in_memory() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    retried_send_is_queued_once(&b).await;
}

#[tokio::test]
async fn a_retried_send_with_the_same_client_message_id_is_queued_once_in_postgres() {
    let url = pg::fresh_db().await;
    let b = Broker::start(&[("DATABASE_URL", url.as_str()), NO_RATE_LIMIT]);
    retried_send_is_queued_once(&b).await;
}

/// A database whose `message_queue` updates (the claims) fail for the broker's
/// connections while `fail_claims` has a row.
async fn db_with_claim_switch() -> (String, tokio_postgres::Client) {
    let url = pg::fresh_db().await;
    let db = pg::connect(&url).await;
    db.batch_execute(
        "CREATE TABLE fail_claims (on_ boolean);
         CREATE FUNCTION fail_claim() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF current_setting('application_name') = 'mesh-broker' AND EXISTS (SELECT 1 FROM fail_claims) THEN
             RAISE EXCEPTION 'claims refused by the test';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fail_claim BEFORE UPDATE ON message_queue FOR EACH ROW EXECUTE FUNCTION fail_claim();",
    )
    .await
    .unwrap();
    (url, db)
}

/// A claim that fails (here: PostgreSQL refuses the broker's claim UPDATE) schedules a
/// re-drain: the connected recipient gets the message once the database accepts claims
/// again, without any other trigger (no send, no status change, no reconnect).
#[tokio::test]
async fn a_failed_claim_is_retried_without_another_trigger() {
    let (url, db) = db_with_claim_switch().await;
    let b = Broker::start(&[("DATABASE_URL", url.as_str()), NO_RATE_LIMIT]);
    let mesh = b.create_mesh("claim-retry", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    db.execute("INSERT INTO fail_claims VALUES (true)", &[])
        .await
        .unwrap();
    let ack = a.send_msg(&bob.identity.pubkey, "now", "late").await;
    assert_eq!(ack["queued"], true, "{ack}");
    // Offline at the send, so the message comes by claim (the drain of bob's connection),
    // not by doorbell.
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    eventually("the broker's claim fails", async || {
        b.log_text().contains("queue drain failed").then_some(())
    })
    .await;
    bc.expect_none(Duration::from_millis(200), is_push).await;
    db.execute("DELETE FROM fail_claims", &[]).await.unwrap();

    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], ack["messageId"]);
}

/// A claim that committed but whose reply was lost leaves its row leased (hidden) with
/// no push: the broker re-drains when that lease ends. Simulated by failing the broker's
/// claim and leasing the row from the test as the lost claim would have.
#[tokio::test]
async fn a_claim_whose_reply_was_lost_is_redrained_when_its_lease_ends() {
    let (url, db) = db_with_claim_switch().await;
    let b = Broker::start(&[
        ("DATABASE_URL", url.as_str()),
        ("CLAIM_LEASE_MS", "4000"),
        NO_RATE_LIMIT,
    ]);
    let mesh = b.create_mesh("lost-claim", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    db.execute("INSERT INTO fail_claims VALUES (true)", &[])
        .await
        .unwrap();
    let ack = a.send_msg(&bob.identity.pubkey, "now", "lost").await;
    assert_eq!(ack["queued"], true, "{ack}");
    // Offline at the send, so the message comes by claim, not by doorbell.
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    eventually("the broker's claim fails", async || {
        b.log_text().contains("queue drain failed").then_some(())
    })
    .await;
    // The lost claim's lease: ends before the broker's own lease of that claim would, and
    // after its quick retry (1-2 s), which therefore finds the row hidden.
    let leased = db
        .execute(
            "UPDATE message_queue SET claimed_until = $1",
            &[&(now_ms() + 3000)],
        )
        .await
        .unwrap();
    assert_eq!(leased, 1);
    db.execute("DELETE FROM fail_claims", &[]).await.unwrap();

    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], ack["messageId"]);
}

/// `client_ack` by `clientMessageId` confirms only the messages pushed to this
/// connection: another sender's message that reuses the client id, still held back by
/// priority gating, is delivered later.
#[tokio::test]
async fn client_ack_by_client_id_confirms_only_what_this_connection_was_pushed() {
    let b = Broker::start(&[NO_RATE_LIMIT]);
    let mesh = b.create_mesh("ack-scope", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut c, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    bc.send(ClientFrame::SetStatus {
        status: Status::Working,
    })
    .await;
    bc.request(ClientFrame::ListPeers).await;

    // Carol's `next` message waits while bob is working; alice's `now` one is pushed.
    let held = c
        .request(send_frame(
            &bob.identity.pubkey,
            Priority::Next,
            "carol",
            Some("same"),
        ))
        .await;
    assert_eq!(held["queued"], true, "{held}");
    let pushed = a
        .request(send_frame(
            &bob.identity.pubkey,
            Priority::Now,
            "alice",
            Some("same"),
        ))
        .await;
    assert_eq!(pushed["queued"], true, "{pushed}");
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], pushed["messageId"]);
    bc.expect_none(Duration::from_millis(200), is_push).await;

    bc.send(client_ack_by_client_id("same")).await;
    bc.send(ClientFrame::SetStatus {
        status: Status::Idle,
    })
    .await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], held["messageId"], "{push}");
    assert_eq!(push["ciphertext"], "carol");
    bc.send(client_ack_by_client_id("same")).await;
    bc.request(ClientFrame::ListPeers).await;
    // Both confirmed: a reconnect gets nothing.
    bc.close().await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    bc.expect_none(Duration::from_millis(400), is_push).await;
}

/// `expiresInSeconds` of an invite is range-checked: a lifetime that would wrap the
/// expiry (or put it beyond what a JSON client reads exactly) is refused with 400.
#[tokio::test]
async fn an_invite_lifetime_that_would_wrap_is_refused() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("invite-range", None);
    let path = format!("/api/v1/meshes/{mesh}/invites");
    for lifetime in [i64::MAX, 1_i64 << 60] {
        let (status, body) = b.api("POST", &path, Some(json!({"expiresInSeconds": lifetime})));
        assert_eq!(status, 400, "{lifetime}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("expiresInSeconds")),
            "{body}"
        );
    }
    let (status, body) = b.api("POST", &path, Some(json!({"expiresInSeconds": 3600})));
    assert_eq!(status, 201, "{body}");
    let expires_at = body["payload"]["expires_at"].as_i64().unwrap();
    assert!(expires_at > now_ms() / 1000, "{body}");
}

/// With the presence backend (Redis) down, moderation does not mistake "unreadable" for
/// "nobody is connected": a kick answers `internal` instead of an empty `kick_ack`, and a
/// ban (written to PostgreSQL) says its sockets could not be closed; the banned member's
/// next send is refused `revoked` all the same.
#[tokio::test]
async fn moderation_fails_closed_while_presence_is_unreadable() {
    use common::redis::RedisServer;
    let url = pg::fresh_db().await;
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let redis_url = redis.url();
    let b = Broker::start(&[
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        NO_RATE_LIMIT,
    ]);
    let mesh = b.create_mesh("fail-closed", None);
    let admin = member(&b, &mesh, "admin", json!({"role": "admin"}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;

    redis.stop();
    eventually("readiness turns 503 without Redis", async || {
        matches!(b.try_http("GET", "/health/ready", None, None), Ok((503, _))).then_some(())
    })
    .await;
    let kick = ac.request(ClientFrame::Kick(select("bob"))).await;
    assert_eq!(kick["type"], "error", "{kick}");
    assert_eq!(kick["code"], "internal", "{kick}");

    let ban = ac.request(ClientFrame::Ban(ban_request("bob"))).await;
    assert_eq!(ban["type"], "error", "{ban}");
    assert_eq!(ban["code"], "internal", "{ban}");
    assert!(
        ban["message"].as_str().unwrap().contains("is banned"),
        "{ban}"
    );
    let send = bc
        .request(send_frame(
            &admin.identity.pubkey,
            Priority::Now,
            "after-ban",
            None,
        ))
        .await;
    assert_eq!(send["code"], "revoked", "{send}");
    assert_eq!(bc.expect_close().await, close_of(codes::BANNED));
}

/// Grants that cannot be read are never read as "no grants" (the permissive defaults): a
/// recipient whose `peer_grants` is not a map of capability lists gets nothing, and the
/// sender is told the store failed.
#[tokio::test]
async fn unreadable_grants_refuse_the_send_instead_of_granting_the_defaults() {
    let url = pg::fresh_db().await;
    let b = Broker::start(&[("DATABASE_URL", url.as_str()), NO_RATE_LIMIT]);
    let mesh = b.create_mesh("bad-grants", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let db = pg::connect(&url).await;
    db.execute(
        "UPDATE members SET peer_grants = $2 WHERE id = $1",
        &[&bob.id, &json!({ alice.identity.pubkey.clone(): "dm" })],
    )
    .await
    .unwrap();
    let (mut a, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack = a.send_msg(&bob.identity.pubkey, "now", "leak").await;
    assert_eq!(ack["queued"], false, "{ack}");
    assert!(
        ack["error"].as_str().unwrap().contains("peer_grants"),
        "{ack}"
    );
    let depth: i64 = db
        .query_one("SELECT count(*) FROM message_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(depth, 0, "nothing was queued for bob");
}
