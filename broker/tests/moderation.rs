//! Moderation over real sockets (spec §4.6): `disconnect`, `kick`, `ban`, `unban`, `list_bans`.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A mesh with an admin member connected over a control-plane `hello`.
async fn mesh_with_admin(b: &Broker, name: &str) -> (String, Member, Client) {
    let mesh = b.create_mesh(name, None);
    let admin = member(b, &mesh, "admin", json!({"role": "admin"}));
    let (c, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;
    (mesh, admin, c)
}

/// Connects a session presence (`session_hello`) of `m`; returns the socket and its session key.
async fn session_of(b: &Broker, mesh: &str, m: &Member) -> (Client, Identity) {
    let key = Identity::random();
    let (c, _) = Client::join(
        &b.ws_url(),
        session_hello(mesh, &m.identity, &key, json!({})),
    )
    .await;
    (c, key)
}

/// Connects a control-plane presence (`hello`) of `m`.
async fn control_plane_of(b: &Broker, mesh: &str, m: &Member) -> Client {
    Client::join(&b.ws_url(), m.hello(mesh, json!({}))).await.0
}

/// Waits for the system push saying the presence routed by `pubkey` left.
async fn expect_left(c: &mut Client, name: &str, pubkey: &str) {
    let push = c
        .expect_where("push", |v| {
            v["subtype"] == "system"
                && v["event"] == "peer_left"
                && v["eventData"]["pubkey"] == pubkey
        })
        .await;
    assert_eq!(push["eventData"]["name"], name, "{push}");
    assert_eq!(push["senderPubkey"], "system", "{push}");
}

/// The string items of `v[key]`, sorted.
fn names(v: &Value, key: &str) -> Vec<String> {
    let ack: ModerationAck = parse(v);
    let mut out = match key {
        "kicked" => ack.kicked,
        "affected" => ack.affected,
        "skipped_control_plane" => ack
            .skipped_control_plane
            .unwrap_or_else(|| panic!("{key} is not a list in {v}")),
        _ => panic!("a moderation ack has no list {key}"),
    };
    out.sort();
    out
}

/// Asserts the socket still works: it answers a `list_peers`.
async fn still_connected(c: &mut Client) {
    let reply = c.request(ClientFrame::ListPeers).await;
    assert_eq!(reply["type"], "peers_list", "{reply}");
}

/// Sends `hello` on a fresh socket and returns the error frame and the close.
async fn refused(b: &Broker, hello: Value) -> (Value, (u16, String)) {
    let mut c = Client::connect(&b.ws_url()).await;
    c.send(hello).await;
    let err = c.expect("error").await;
    let close = c.expect_close().await;
    (err, close)
}

#[tokio::test]
async fn disconnect_closes_the_target_1000_and_keeps_its_presence() {
    let b = Broker::start(&[]);
    let (mesh, _admin, mut admin_c) = mesh_with_admin(&b, "disconnect").await;
    let bob = member(&b, &mesh, "bob", json!({}));
    let bob_hello = bob.hello(&mesh, json!({}));
    let session_id = bob_hello["sessionId"].clone();
    let (mut bob_c, bob_ack) = Client::join(&b.ws_url(), bob_hello).await;

    admin_c
        .send(Envelope {
            req_id: Some("d-1".into()),
            frame: ClientFrame::Disconnect(select("bob")),
        })
        .await;
    let ack = admin_c.expect("disconnect_ack").await;
    assert_eq!(ack["_reqId"], "d-1", "{ack}");
    // `disconnect` skips nobody: a control-plane presence is affected too.
    assert_eq!(names(&ack, "affected"), ["bob"]);
    assert_eq!(names(&ack, "kicked"), ["bob"]);
    assert_eq!(bob_c.expect_close().await, close_of(codes::DISCONNECTED));

    // No state change: the presence waits in grace, nobody hears it left, and the client
    // reconnecting by itself gets its presence back.
    admin_c
        .expect_none(Duration::from_millis(300), |v| v["event"] == "peer_left")
        .await;
    let (_bob_again, ack) = Client::join(
        &b.ws_url(),
        bob.hello(&mesh, json!({"sessionId": session_id})),
    )
    .await;
    assert_eq!(ack["presenceId"], bob_ack["presenceId"], "{ack}");
}

#[tokio::test]
async fn kick_closes_sessions_4001_and_skips_control_plane_presences() {
    let b = Broker::start(&[]);
    let (mesh, _admin, mut admin_c) = mesh_with_admin(&b, "kick").await;
    let carol = member(&b, &mesh, "carol", json!({}));
    let mut carol_cp = control_plane_of(&b, &mesh, &carol).await;
    let (mut carol_s, carol_key) = session_of(&b, &mesh, &carol).await;

    let ack = admin_c.request(ClientFrame::Kick(select("carol"))).await;
    assert_eq!(ack["type"], "kick_ack", "{ack}");
    assert!(ack["_reqId"].is_string(), "{ack}");
    assert_eq!(names(&ack, "kicked"), ["carol"]);
    assert_eq!(names(&ack, "affected"), ["carol"]);
    assert_eq!(names(&ack, "skipped_control_plane"), ["carol"]);

    assert_eq!(carol_s.expect_close().await, close_of(codes::KICKED));
    expect_left(&mut admin_c, "carol", &carol_key.pubkey).await;
    // The control-plane socket was skipped and still works.
    still_connected(&mut carol_cp).await;
}

#[tokio::test]
async fn kick_selects_by_display_name_full_pubkey_and_pubkey_prefix() {
    let b = Broker::start(&[]);
    let (mesh, _admin, mut admin_c) = mesh_with_admin(&b, "selectors").await;
    let xavier = member(&b, &mesh, "xavier", json!({}));
    let yusuf = member(&b, &mesh, "yusuf", json!({}));
    let zoe = member(&b, &mesh, "zoe", json!({}));
    let (mut x, x_key) = session_of(&b, &mesh, &xavier).await;
    let (mut y, y_key) = session_of(&b, &mesh, &yusuf).await;
    let (mut z, z_key) = session_of(&b, &mesh, &zoe).await;

    let by_key = admin_c
        .request(ClientFrame::Kick(select(&xavier.identity.pubkey)))
        .await;
    assert_eq!(names(&by_key, "kicked"), ["xavier"], "{by_key}");
    assert_eq!(x.expect_close().await, close_of(codes::KICKED));
    expect_left(&mut admin_c, "xavier", &x_key.pubkey).await;

    let prefix = &yusuf.identity.pubkey[..12];
    let by_prefix = admin_c.request(ClientFrame::Kick(select(prefix))).await;
    assert_eq!(names(&by_prefix, "kicked"), ["yusuf"], "{by_prefix}");
    assert_eq!(y.expect_close().await, close_of(codes::KICKED));
    expect_left(&mut admin_c, "yusuf", &y_key.pubkey).await;

    // Zoe was never named so far: her socket is untouched.
    still_connected(&mut z).await;
    let by_name = admin_c.request(ClientFrame::Kick(select("zoe"))).await;
    assert_eq!(names(&by_name, "kicked"), ["zoe"], "{by_name}");
    assert_eq!(z.expect_close().await, close_of(codes::KICKED));
    expect_left(&mut admin_c, "zoe", &z_key.pubkey).await;
}

#[tokio::test]
async fn kick_all_ends_everyone_but_the_callers_member() {
    let b = Broker::start(&[]);
    let (mesh, admin, mut admin_c) = mesh_with_admin(&b, "kick-all").await;
    let (mut admin_s, _) = session_of(&b, &mesh, &admin).await;
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let dave = member(&b, &mesh, "dave", json!({}));
    let (mut bob_s, bob_key) = session_of(&b, &mesh, &bob).await;
    let (mut carol_s, carol_key) = session_of(&b, &mesh, &carol).await;
    let mut dave_cp = control_plane_of(&b, &mesh, &dave).await;

    let ack = admin_c
        .request(ClientFrame::Kick(Selection {
            all: Some(true),
            ..Selection::default()
        }))
        .await;
    assert_eq!(ack["type"], "kick_ack", "{ack}");
    assert_eq!(names(&ack, "kicked"), ["bob", "carol"]);
    assert_eq!(names(&ack, "affected"), ["bob", "carol"]);
    assert_eq!(names(&ack, "skipped_control_plane"), ["dave"]);

    assert_eq!(bob_s.expect_close().await, close_of(codes::KICKED));
    assert_eq!(carol_s.expect_close().await, close_of(codes::KICKED));
    expect_left(&mut admin_c, "bob", &bob_key.pubkey).await;
    expect_left(&mut admin_c, "carol", &carol_key.pubkey).await;
    // The caller's own session and the skipped control-plane presence stay.
    still_connected(&mut admin_s).await;
    still_connected(&mut dave_cp).await;
}

/// Keeps reading `c` in the background, so it answers the broker's pings, until it closes.
fn keep_reading(mut c: Client) -> tokio::task::JoinHandle<Option<(u16, String)>> {
    tokio::spawn(async move {
        loop {
            match c.next_within(Duration::from_secs(3600)).await {
                Some(Event::Frame(_)) => continue,
                Some(Event::Closed(close)) => return close,
                None => return None,
            }
        }
    })
}

#[tokio::test]
async fn kick_stale_selects_only_presences_without_a_recent_pong() {
    // Pings every 200 ms record fresh pongs of every socket that reads; a socket that never
    // reads never answers, so its last pong stays at its connect time.
    let b = Broker::start(&[("PING_INTERVAL_MS", "200")]);
    let (mesh, _admin, mut admin_c) = mesh_with_admin(&b, "stale").await;
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let (bob_s, _) = session_of(&b, &mesh, &bob).await;
    let bob_reader = keep_reading(bob_s);
    let (mut carol_s, carol_key) = session_of(&b, &mesh, &carol).await;

    // An hour: nobody is that stale.
    let none = admin_c
        .request(ClientFrame::Kick(Selection {
            stale: Some(3_600_000),
            ..Selection::default()
        }))
        .await;
    assert_eq!(none["type"], "kick_ack", "{none}");
    assert!(names(&none, "kicked").is_empty(), "{none}");
    assert!(names(&none, "affected").is_empty(), "{none}");

    // Two seconds: carol (silent) becomes stale; bob (answering pings) never does.
    let ack = eventually("carol to become stale", async || {
        let ack = admin_c
            .request(ClientFrame::Kick(Selection {
                stale: Some(2000),
                ..Selection::default()
            }))
            .await;
        (!names(&ack, "kicked").is_empty()).then_some(ack)
    })
    .await;
    assert_eq!(names(&ack, "kicked"), ["carol"], "{ack}");
    assert_eq!(carol_s.expect_close().await, close_of(codes::KICKED));
    expect_left(&mut admin_c, "carol", &carol_key.pubkey).await;
    assert!(!bob_reader.is_finished(), "bob's socket must stay open");
    let peers = admin_c.request(ClientFrame::ListPeers).await;
    assert!(
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["displayName"] == "bob"),
        "{peers}"
    );
    bob_reader.abort();
}

#[tokio::test]
async fn ban_closes_every_socket_4002_and_holds_until_unban() {
    let b = Broker::start(&[]);
    let (mesh, _admin, mut admin_c) = mesh_with_admin(&b, "ban").await;
    let bob = member(&b, &mesh, "bob", json!({}));
    let mut bob_cp = control_plane_of(&b, &mesh, &bob).await;
    let (mut bob_s, bob_key) = session_of(&b, &mesh, &bob).await;

    let ack = admin_c
        .request(ClientFrame::Ban(BanRequest {
            target: "bob".into(),
            reason: Some("spam".into()),
        }))
        .await;
    let ack: BanAck = parse(&ack);
    assert_eq!(ack.banned, "bob", "{ack:?}");
    assert!(ack.req_id.is_some(), "{ack:?}");
    assert_eq!(bob_cp.expect_close().await, close_of(codes::BANNED));
    assert_eq!(bob_s.expect_close().await, close_of(codes::BANNED));
    expect_left(&mut admin_c, "bob", &bob.identity.pubkey).await;
    expect_left(&mut admin_c, "bob", &bob_key.pubkey).await;

    // Every later handshake is refused: `hello` and `session_hello` alike.
    let (err, close) = refused(&b, bob.hello(&mesh, json!({}))).await;
    assert_eq!(err["code"], "revoked", "{err}");
    assert_eq!(close, close_of(codes::BANNED));
    let (err, close) = refused(
        &b,
        session_hello(&mesh, &bob.identity, &Identity::random(), json!({})),
    )
    .await;
    assert_eq!(err["code"], "revoked", "{err}");
    assert_eq!(close, close_of(codes::BANNED));

    let list: ListBansResult = parse(&admin_c.request(ClientFrame::ListBans).await);
    let [ban] = &list.bans[..] else {
        panic!("one ban: {list:?}")
    };
    assert_eq!(ban.name, "bob");
    assert_eq!(ban.pubkey, bob.identity.pubkey);
    let revoked_at = &ban.revoked_at;
    assert!(
        revoked_at.ends_with('Z') && revoked_at.contains('T'),
        "revokedAt is ISO 8601 UTC: {revoked_at}"
    );

    let ack = admin_c
        .request(ClientFrame::Unban(ban_request("bob")))
        .await;
    let ack: UnbanAck = parse(&ack);
    assert_eq!(ack.unbanned, "bob", "{ack:?}");
    let list: ListBansResult = parse(&admin_c.request(ClientFrame::ListBans).await);
    assert_eq!(list.bans, [], "{list:?}");
    let (_bob_back, ack) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    assert!(ack["presenceId"].is_string(), "{ack}");
}

#[tokio::test]
async fn ban_by_pubkey_of_an_offline_member_refuses_its_next_hello() {
    let b = Broker::start(&[]);
    let (mesh, _admin, mut admin_c) = mesh_with_admin(&b, "ban-offline").await;
    let eve = member(&b, &mesh, "eve", json!({}));
    let ack = admin_c
        .request(ClientFrame::Ban(ban_request(&eve.identity.pubkey)))
        .await;
    assert_eq!(ack["type"], "ban_ack", "{ack}");
    assert_eq!(ack["banned"], "eve", "{ack}");
    let (err, close) = refused(&b, eve.hello(&mesh, json!({}))).await;
    assert_eq!(err["code"], "revoked", "{err}");
    assert_eq!(close, close_of(codes::BANNED));
}

#[tokio::test]
async fn ban_refuses_the_caller_itself_and_unknown_targets() {
    let b = Broker::start(&[]);
    let (mesh, admin, mut admin_c) = mesh_with_admin(&b, "ban-errors").await;

    admin_c
        .send(Envelope {
            req_id: Some("self".into()),
            frame: ClientFrame::Ban(ban_request("admin")),
        })
        .await;
    let err = admin_c.expect("error").await;
    assert_eq!(err["code"], "invalid", "{err}");
    assert_eq!(err["_reqId"], "self", "{err}");
    let err = admin_c
        .request(ClientFrame::Ban(ban_request(&admin.identity.pubkey)))
        .await;
    assert_eq!(err["code"], "invalid", "{err}");

    let err = admin_c
        .request(ClientFrame::Ban(ban_request("nobody-by-that-name")))
        .await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "not_found", "{err}");

    // The caller was not banned by its own attempt: it still works and nothing is listed.
    let list = admin_c.request(ClientFrame::ListBans).await;
    assert_eq!(list["bans"], json!([]), "{list}");
    let (_again, _) = Client::join(&b.ws_url(), admin.hello(&mesh, json!({}))).await;
}

#[tokio::test]
async fn plain_members_are_forbidden_for_every_verb() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("forbidden", Some("u-owner"));
    let bob = member(&b, &mesh, "bob", json!({"userId": "u-someone"}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let (mut bob_c, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let (mut carol_s, _) = session_of(&b, &mesh, &carol).await;

    for (verb, frame) in [
        ("disconnect", ClientFrame::Disconnect(select("carol"))),
        ("kick", ClientFrame::Kick(select("carol"))),
        (
            "kick",
            ClientFrame::Kick(Selection {
                all: Some(true),
                ..Selection::default()
            }),
        ),
        ("ban", ClientFrame::Ban(ban_request("carol"))),
        ("unban", ClientFrame::Unban(ban_request("carol"))),
        ("list_bans", ClientFrame::ListBans),
    ] {
        let req_id = format!("r-{verb}");
        let frame = to_json(&Envelope {
            req_id: Some(req_id.clone()),
            frame,
        });
        bob_c.send(&frame).await;
        let err = bob_c.expect("error").await;
        assert_eq!(err["code"], "forbidden", "{frame} → {err}");
        assert_eq!(
            err["message"],
            format!("only owner or admin can {verb}"),
            "{frame} → {err}"
        );
        assert_eq!(err["_reqId"], req_id.as_str(), "{frame} → {err}");
    }
    // Nothing happened to carol.
    still_connected(&mut carol_s).await;
    let (_carol_again, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
}

#[tokio::test]
async fn the_mesh_owner_may_moderate_without_the_admin_role() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("owned", Some("u1"));
    let owner = member(&b, &mesh, "owner", json!({"userId": "u1"}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let carol = member(&b, &mesh, "carol", json!({}));
    let (mut owner_c, _) = Client::join(&b.ws_url(), owner.hello(&mesh, json!({}))).await;
    let (mut bob_s, bob_key) = session_of(&b, &mesh, &bob).await;
    let mut carol_cp = control_plane_of(&b, &mesh, &carol).await;

    let ack = owner_c.request(ClientFrame::Kick(select("bob"))).await;
    assert_eq!(ack["type"], "kick_ack", "{ack}");
    assert_eq!(names(&ack, "kicked"), ["bob"]);
    assert_eq!(bob_s.expect_close().await, close_of(codes::KICKED));
    expect_left(&mut owner_c, "bob", &bob_key.pubkey).await;

    let ack = owner_c
        .request(ClientFrame::Disconnect(select("carol")))
        .await;
    assert_eq!(ack["type"], "disconnect_ack", "{ack}");
    assert_eq!(carol_cp.expect_close().await, close_of(codes::DISCONNECTED));

    let ack = owner_c
        .request(ClientFrame::Ban(ban_request("carol")))
        .await;
    assert_eq!(ack["banned"], "carol", "{ack}");
    let list = owner_c.request(ClientFrame::ListBans).await;
    assert_eq!(list["type"], "list_bans_result", "{list}");
    assert_eq!(list["bans"][0]["name"], "carol", "{list}");
    let ack = owner_c
        .request(ClientFrame::Unban(ban_request("carol")))
        .await;
    assert_eq!(ack["unbanned"], "carol", "{ack}");
}
