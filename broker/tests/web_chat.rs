//! The web chat's server side (`server/chat.rs`, `service/humans.rs`): a signed-in person
//! is a peer. Two replicas: the person's chat socket on one, CLI peers on the other.
//! The page itself, in a real Chromium, is `web_chat.py` (`./scripts/check-web`).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;

use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const PASSWORD: &str = "correct horse battery staple";

/// One raw HTTP/1.1 exchange: status, headers (lowercased names) and body.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A signed-in browser: its session cookie and the page's CSRF token.
struct Web {
    addr: SocketAddr,
    cookie: String,
    csrf: String,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Signs in through the real `/login` form (double-submit pre-session cookie) and reads
/// the CSRF token from `/app`.
fn sign_in(b: &Broker, email: &str) -> Web {
    let pre = "prepreprepreprepreprepre";
    let form = format!(
        "csrf={pre}&next={}&email={}&password={}",
        enc("/app"),
        enc(email),
        enc(PASSWORD)
    );
    let (status, h, body) = raw(
        b.addr,
        "POST",
        "/login",
        &[
            ("Cookie", &format!("cm_pre={pre}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &form,
    );
    assert_eq!(status, 303, "{body}");
    assert_eq!(header(&h, "location"), Some("/app"));
    let session = h
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix("cm_session="))
        .map(|v| v.split(';').next().unwrap().to_string())
        .expect("a session cookie");
    let cookie = format!("cm_session={session}");
    let (status, h, page) = raw(b.addr, "GET", "/app", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200, "{page}");
    let csp = header(&h, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(!page.contains("<script>"), "no inline script: {page}");
    let csrf = page
        .split("<meta name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    Web {
        addr: b.addr,
        cookie,
        csrf,
    }
}

impl Web {
    fn on(&self, b: &Broker) -> Web {
        Web {
            addr: b.addr,
            cookie: self.cookie.clone(),
            csrf: self.csrf.clone(),
        }
    }

    /// Opens the tab's chat socket; `Err` carries the refused upgrade's answer.
    async fn open(
        &self,
        mesh: &str,
        tab: &str,
        csrf: &str,
        origin: &str,
    ) -> Result<Client, String> {
        let url = format!(
            "ws://{}/app/ws?mesh={mesh}&tab={tab}&csrf={}",
            self.addr,
            enc(csrf)
        );
        let mut req = url.into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert("cookie", HeaderValue::from_str(&self.cookie).unwrap());
        h.insert("origin", HeaderValue::from_str(origin).unwrap());
        Client::connect_request(req).await.map(|(c, _)| c)
    }

    async fn join(&self, mesh: &str, tab: &str) -> (Client, Value) {
        let origin = format!("http://{}", self.addr);
        let mut c = self
            .open(mesh, tab, &self.csrf, &origin)
            .await
            .expect("the chat socket opens");
        let ack = c.expect("hello_ack").await;
        (c, ack)
    }
}

struct Setup {
    mesh: String,
    email: String,
    alice_key: Identity,
    bob: Member,
}

/// A person with a password who owns a mesh made the way the CLI makes one
/// (`/cli/mesh/create`: their member row is `<mesh name>-owner`), and bob, an admin peer.
fn setup(b: &Broker) -> Setup {
    let email = format!(
        "alice-{}@example.test",
        broker::ids::random_id(6).to_lowercase()
    );
    let (status, user) = b.api(
        "POST",
        "/api/v1/users",
        Some(json!({"email": email, "displayName": "Alice", "password": PASSWORD})),
    );
    assert_eq!(status, 201, "{user}");
    let uid = user["id"].as_str().unwrap();
    let (status, token) = b.api(
        "POST",
        "/cli/token",
        Some(json!({"user_id": uid, "email": email, "name": "Alice"})),
    );
    assert_eq!(status, 200, "{token}");
    let token = token["token"].as_str().unwrap();
    let alice_key = Identity::random();
    let body = json!({"name": "alice", "pubkey": alice_key.pubkey}).to_string();
    let (status, created) =
        http(b.addr, "POST", "/cli/mesh/create", Some(token), Some(&body)).unwrap();
    assert_eq!(status, 200, "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    let mesh = created["id"].as_str().unwrap().to_string();
    let bob = member(b, &mesh, "bob", json!({"role": "admin"}));
    Setup {
        mesh,
        email,
        alice_key,
        bob,
    }
}

/// The person's member name (`/cli/mesh/create` names the owner's row so).
const ALICE: &str = "alice-owner";

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_person_is_a_human_peer_on_every_replica_and_moderation_reaches_them() {
    let c = Cluster::new(&[]).await;
    let a = c.replica("a");
    let b = c.replica("b");
    let s = setup(&a);
    let web = sign_in(&a, &s.email);

    // The person's tab on A; bob, a CLI peer, on B.
    let (mut bob, _) = Client::join(&b.ws_url(), s.bob.hello(&s.mesh, json!({}))).await;
    let (mut tab, ack) = web.join(&s.mesh, "tab-1").await;
    assert_eq!(ack["memberDisplayName"], ALICE, "{ack}");
    bob.expect_system("peer_joined").await;

    // Listed as a human peer in bob's list_peers (a session presence: kick reaches it).
    let peers: PeersList = parse(&bob.request(json!({"type": "list_peers"})).await);
    let human = peers
        .peers
        .iter()
        .find(|p| p.display_name == ALICE)
        .expect("alice is listed");
    let human = to_json(human);
    assert_eq!(human["peerType"], "human", "{human}");
    assert_eq!(human["memberPubkey"], s.alice_key.pubkey.as_str());
    assert_eq!(human["peerRole"], "session");
    assert_eq!(human["channel"], "web");

    // bob DMs the person's member key: pushed to the tab across replicas.
    let ack = bob
        .send_msg(&s.alice_key.pubkey, "now", &b64("hi alice"))
        .await;
    assert_eq!(ack["queued"], true, "{ack}");
    let push = tab.expect_where("push", is_push).await;
    assert_eq!(push["ciphertext"], b64("hi alice").as_str());
    assert_eq!(push["senderName"], "bob");
    tab.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;

    // The tab DMs bob back.
    let ack = tab
        .send_msg(&s.bob.identity.pubkey, "now", &b64("hi bob"))
        .await;
    assert_eq!(ack["queued"], true, "{ack}");
    let push = bob.expect_where("push", is_push).await;
    assert_eq!(push["ciphertext"], b64("hi bob").as_str());
    assert_eq!(push["senderName"], ALICE);

    // A kick by the admin (on B) closes the tab (on A) with 4001.
    let kicked = bob.request(json!({"type": "kick", "target": ALICE})).await;
    assert_eq!(kicked["kicked"], json!([ALICE]), "{kicked}");
    assert_eq!(tab.expect_close().await, close_of(codes::KICKED));

    // Kicked is not banned: the person opens the chat again, now on B.
    let (mut tab, _) = web.on(&b).join(&s.mesh, "tab-1").await;
    bob.expect_system("peer_returned").await;

    // A ban ends the tab with 4002 and every later chat socket of the person is refused.
    let banned = bob.request(json!({"type": "ban", "target": ALICE})).await;
    assert_eq!(banned["type"], "ban_ack", "{banned}");
    assert_eq!(tab.expect_close().await, close_of(codes::BANNED));
    let origin = format!("http://{}", a.addr);
    let refused = web
        .open(&s.mesh, "tab-2", &web.csrf, &origin)
        .await
        .err()
        .expect("a banned person's chat socket is refused");
    assert!(refused.contains("403"), "{refused}");
}

#[tokio::test]
async fn the_chat_needs_a_session_its_csrf_token_the_origin_and_a_membership() {
    let b = Broker::start(&[]);
    let s = setup(&b);

    // Signed out: the page sends the person to sign in; the data routes answer 401.
    let (status, h, _) = raw(b.addr, "GET", "/app", &[], "");
    assert_eq!(status, 303);
    assert_eq!(header(&h, "location"), Some("/login?next=%2Fapp"));
    let (status, _, _) = raw(b.addr, "GET", "/app/meshes", &[], "");
    assert_eq!(status, 401);
    let (status, h, js) = raw(b.addr, "GET", "/app/chat.js", &[], "");
    assert_eq!(status, 200);
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.contains("/app/ws"));

    let web = sign_in(&b, &s.email);
    let (status, _, meshes) = raw(b.addr, "GET", "/app/meshes", &[("Cookie", &web.cookie)], "");
    assert_eq!(status, 200);
    let meshes: Value = serde_json::from_str(&meshes).unwrap();
    assert_eq!(meshes["meshes"][0]["meshId"], s.mesh.as_str(), "{meshes}");
    assert_eq!(meshes["meshes"][0]["displayName"], ALICE);

    let origin = format!("http://{}", b.addr);
    // A wrong CSRF token, a foreign origin, a mesh the person is not in, a bad tab id.
    for (mesh, tab, csrf, origin) in [
        (s.mesh.as_str(), "t", "wrong", origin.as_str()),
        (
            s.mesh.as_str(),
            "t",
            web.csrf.as_str(),
            "http://evil.example",
        ),
        ("nosuchmesh", "t", web.csrf.as_str(), origin.as_str()),
        (s.mesh.as_str(), "a%20b", web.csrf.as_str(), origin.as_str()),
    ] {
        let r = web.open(mesh, tab, csrf, origin).await;
        let err = r.err().expect("refused");
        assert!(err.contains("403"), "{mesh} {tab} {csrf} {origin}: {err}");
    }
    // No session cookie at all.
    let anon = Web {
        addr: b.addr,
        cookie: "cm_session=nope".into(),
        csrf: web.csrf.clone(),
    };
    let err = anon
        .open(&s.mesh, "t", &web.csrf, &origin)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("401"), "{err}");

    // The same tab id reattaches after a reload instead of leaving a second presence.
    let (mut bob, _) = Client::join(&b.ws_url(), s.bob.hello(&s.mesh, json!({}))).await;
    let (tab, _) = web.join(&s.mesh, "same-tab").await;
    let first = tab_presence(&mut bob).await;
    tab.abort();
    let (_tab, _) = web.join(&s.mesh, "same-tab").await;
    let again = eventually("the reloaded tab is listed once", async || {
        let p = tab_presence(&mut bob).await;
        (p.len() == 1).then_some(p)
    })
    .await;
    assert_eq!(first, again, "the reload reattached to the same presence");
}

/// The session ids of the person's presences as bob sees them.
async fn tab_presence(bob: &mut Client) -> Vec<String> {
    let peers: PeersList = parse(&bob.request(json!({"type": "list_peers"})).await);
    peers
        .peers
        .iter()
        .filter(|p| p.display_name == ALICE)
        .map(|p| {
            to_json(p)["sessionId"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Deterministic bytes for the vectors: SHA-256 of a label, repeated to `len`.
fn vector_bytes(label: &str, len: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{label}/{i}").as_bytes()));
        i += 1;
    }
    out.truncate(len);
    out
}

fn arr32(v: &[u8]) -> [u8; 32] {
    v.try_into().unwrap()
}

fn clamped(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// The browser's crypto (`server/chat/crypto.js`) is checked against these values,
/// computed here with `crypto_secretbox`, `crypto_box` and `ed25519-dalek`: this test
/// writes them to `target/web-crypto-vectors.json`, and `web_chat.py` (run by
/// `./scripts/check-web`, which runs this test first) evaluates the JS functions on the
/// inputs in Chromium and compares. The test itself checks what Rust can: every sealed
/// copy and body opens again with the recipient's key.
#[test]
fn web_crypto_vectors_are_computed_by_rust() {
    use crypto_box::aead::{Aead, KeyInit};
    use ed25519_dalek::SigningKey;
    let hex = |b: &[u8]| hex::encode(b);
    let mut secretbox = Vec::new();
    for (i, len) in [0usize, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200]
        .into_iter()
        .enumerate()
    {
        let key = vector_bytes(&format!("sb-key-{i}"), 32);
        let nonce = vector_bytes(&format!("sb-nonce-{i}"), 24);
        let msg = vector_bytes(&format!("sb-msg-{i}"), len);
        let cipher = crypto_secretbox::XSalsa20Poly1305::new(key.as_slice().into());
        let boxed = cipher
            .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), msg.as_slice())
            .unwrap();
        assert_eq!(boxed.len(), len + 16);
        secretbox.push(
            json!({"key": hex(&key), "nonce": hex(&nonce), "msg": hex(&msg), "boxed": hex(&boxed)}),
        );
    }
    let mut x25519 = Vec::new();
    let mut edx = Vec::new();
    let mut boxes = Vec::new();
    let mut seals = Vec::new();
    for i in 0..6 {
        let seed = arr32(&vector_bytes(&format!("ed-seed-{i}"), 32));
        let member = SigningKey::from_bytes(&seed);
        let ed_public = member.verifying_key().to_bytes();
        let x_public = member.verifying_key().to_montgomery().to_bytes();
        let x_secret = clamped(member.to_scalar_bytes());
        edx.push(json!({"seed": hex(&seed), "edPublic": hex(&ed_public), "xPublic": hex(&x_public), "xSecret": hex(&x_secret)}));
        // X25519 of a fresh secret with the member's public key, and its public key.
        let eph = arr32(&vector_bytes(&format!("x-secret-{i}"), 32));
        let shared = member
            .verifying_key()
            .to_montgomery()
            .mul_clamped(eph)
            .to_bytes();
        let eph_key = crypto_box::SecretKey::from_bytes(eph);
        let eph_public = *eph_key.public_key().as_bytes();
        x25519.push(json!({"secret": hex(&eph), "public": hex(&x_public), "shared": hex(&shared), "secretPublic": hex(&eph_public)}));
        // crypto_box_easy from the fresh key to the member.
        let nonce = vector_bytes(&format!("box-nonce-{i}"), 24);
        let msg = vector_bytes(&format!("box-msg-{i}"), 20 + 13 * i);
        let member_x = crypto_box::PublicKey::from(x_public);
        let boxed = crypto_box::SalsaBox::new(&member_x, &eph_key)
            .encrypt(crypto_box::Nonce::from_slice(&nonce), msg.as_slice())
            .unwrap();
        boxes.push(json!({"msg": hex(&msg), "nonce": hex(&nonce), "theirPublic": hex(&x_public), "mySecret": hex(&eph), "boxed": hex(&boxed)}));
        // A sealed topic key as extensions §9 has it: base64(eph public ‖ box), nonce.
        let topic_key = vector_bytes(&format!("topic-key-{i}"), 32);
        let mut blob = eph_public.to_vec();
        blob.extend_from_slice(
            &crypto_box::SalsaBox::new(&member_x, &eph_key)
                .encrypt(crypto_box::Nonce::from_slice(&nonce), topic_key.as_slice())
                .unwrap(),
        );
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        // The member opens it with its own secret (as the CLI does).
        let mine = crypto_box::SecretKey::from_bytes(member.to_scalar_bytes());
        let sender = crypto_box::PublicKey::from_slice(&blob[..32]).unwrap();
        let opened = crypto_box::SalsaBox::new(&sender, &mine)
            .decrypt(crypto_box::Nonce::from_slice(&nonce), &blob[32..])
            .unwrap();
        assert_eq!(opened, topic_key);
        // A v2 body under the topic key.
        let text = format!("hello #{i} from rust, ünïcödé ✓");
        let body_nonce = vector_bytes(&format!("body-nonce-{i}"), 24);
        let body = crypto_secretbox::XSalsa20Poly1305::new(topic_key.as_slice().into())
            .encrypt(
                crypto_secretbox::Nonce::from_slice(&body_nonce),
                text.as_bytes(),
            )
            .unwrap();
        seals.push(json!({
            "topicKey": hex(&topic_key), "memberEdPublic": hex(&ed_public), "memberSeed": hex(&seed),
            "eph": hex(&eph), "nonce": hex(&nonce),
            "encryptedKey": b64(&blob), "nonceB64": b64(&nonce),
            "text": text, "bodyNonce": hex(&body_nonce), "ciphertext": b64(&body),
        }));
    }
    let vectors = json!({"secretbox": secretbox, "x25519": x25519, "edToX": edx, "box": boxes, "seal": seals});
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-crypto-vectors.json");
    std::fs::write(&path, serde_json::to_string_pretty(&vectors).unwrap()).unwrap();
}

/// The page's REST key (`POST /app/key`) and who issues it.
fn page_key(web: &Web, mesh: &str) -> Value {
    let (status, _, body) = raw(
        web.addr,
        "POST",
        "/app/key",
        &[
            ("Cookie", &web.cookie),
            ("X-CSRF-Token", &web.csrf),
            ("Content-Type", "application/json"),
        ],
        &json!({"meshId": mesh}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["secret"].is_string(), "{v}");
    v
}

fn rest(b: &Broker, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = http(b.addr, method, path, Some(key), body.as_deref()).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A sealed copy of `key` for the member with ed25519 key `member_pubkey` (extensions §9).
fn seal_copy(key: &[u8; 32], member_pubkey: &str) -> Value {
    use base64::Engine;
    use crypto_box::aead::Aead;
    let ed = ed25519_dalek::VerifyingKey::from_bytes(&arr32(&hex::decode(member_pubkey).unwrap()))
        .unwrap();
    let member_x = crypto_box::PublicKey::from(ed.to_montgomery().to_bytes());
    let eph = crypto_box::SecretKey::from_bytes(broker::ids::random_seed());
    let nonce: [u8; 24] = vector_bytes(&broker::ids::random_id(8), 24)
        .try_into()
        .unwrap();
    let mut blob = eph.public_key().as_bytes().to_vec();
    blob.extend(
        crypto_box::SalsaBox::new(&member_x, &eph)
            .encrypt(&crypto_box::Nonce::from(nonce), key.as_slice())
            .unwrap(),
    );
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    json!({"encryptedKey": b64(&blob), "nonce": b64(&nonce)})
}

/// rest.md §4.10 with its **Ours:**: the chat's topic identity is a web-managed member row
/// (made on the first `/app/key`, the same one afterwards, on any replica); its key is
/// replaced by `POST /me/peer-pubkey` (lowercased), which deletes its sealed topic-key
/// copies (it is pending again) and closes its live sockets; a CLI member gets 409
/// `not_web_member`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_key_is_a_web_managed_member_whose_browser_key_replaces_its_own() {
    let c = Cluster::new(&[]).await;
    let a = c.replica("a");
    let b = c.replica("b");
    let s = setup(&a);
    let web = sign_in(&a, &s.email);
    let (mut bob, _) = Client::join(&b.ws_url(), s.bob.hello(&s.mesh, json!({}))).await;
    // A keyed topic bob creates (the broker seals its key for him), before the web row exists.
    let created = bob
        .request(json!({"type": "topic_create", "name": "secret"}))
        .await;
    assert_eq!(created["created"], true, "{created}");

    let first = page_key(&web, &s.mesh);
    let row = first["memberId"].as_str().unwrap().to_string();
    assert_eq!(first["displayName"], format!("{ALICE}-web"), "{first}");
    assert_ne!(first["pubkey"], s.alice_key.pubkey.as_str());
    // The same row on the next call, from the other replica too.
    let again = page_key(&web.on(&b), &s.mesh);
    assert_eq!(again["memberId"], row.as_str(), "{again}");
    let key = first["secret"].as_str().unwrap();

    // A CLI member may not replace its key.
    let minted = bob
        .request(json!({"type": "apikey_create", "label": "bob", "capabilities": ["read", "send"]}))
        .await;
    let bob_key = minted["secret"].as_str().unwrap().to_string();
    let browser = Identity::random();
    let (status, body) = rest(
        &a,
        "POST",
        "/api/v1/me/peer-pubkey",
        &bob_key,
        Some(json!({"pubkey": browser.pubkey})),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_web_member")),
        "{body}"
    );

    // The web row registers the browser's key (sent uppercase, stored lowercased).
    let (status, body) = rest(
        &a,
        "POST",
        "/api/v1/me/peer-pubkey",
        key,
        Some(json!({"pubkey": browser.pubkey.to_uppercase()})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"memberId": row, "pubkey": browser.pubkey, "changed": true})
    );
    let (status, body) = rest(
        &b,
        "POST",
        "/api/v1/me/peer-pubkey",
        key,
        Some(json!({"pubkey": browser.pubkey})),
    );
    assert_eq!((status, &body["changed"]), (200, &json!(false)), "{body}");

    // It joins the topic (a read mark), is pending, gets a copy, holds it.
    let (status, body) = rest(&a, "PATCH", "/api/v1/topics/secret/read", key, None);
    assert_eq!(status, 200, "{body}");
    let pending = |b: &Broker| {
        let (status, body) = rest(
            b,
            "GET",
            "/api/v1/topics/secret/pending-seals",
            &bob_key,
            None,
        );
        assert_eq!(status, 200, "{body}");
        body["pending"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["memberId"].as_str().unwrap().to_string(),
                    p["pubkey"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(pending(&a), vec![(row.clone(), browser.pubkey.clone())]);
    let topic_key = broker::ids::random_seed();
    let mut copy = seal_copy(&topic_key, &browser.pubkey);
    copy["memberId"] = json!(row);
    let (status, body) = rest(
        &b,
        "POST",
        "/api/v1/topics/secret/seal",
        &bob_key,
        Some(copy),
    );
    assert_eq!(status, 200, "{body}");
    assert!(pending(&a).is_empty());
    let (status, body) = rest(&a, "GET", "/api/v1/topics/secret/key", key, None);
    assert_eq!(status, 200, "{body}");

    // A socket of the web row with a hello signed by the browser's key.
    let member = Member {
        id: row.clone(),
        identity: browser,
        name: format!("{ALICE}-web"),
    };
    let (mut sock, _) = Client::join(&a.ws_url(), member.hello(&s.mesh, json!({}))).await;

    // A new browser key: the copy is gone (pending again, 404), the socket is closed.
    let next = Identity::random();
    let (status, body) = rest(
        &b,
        "POST",
        "/api/v1/me/peer-pubkey",
        key,
        Some(json!({"pubkey": next.pubkey})),
    );
    assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
    assert_eq!(sock.expect_close().await, close_of(codes::SESSION_REPLACED));
    let (status, body) = rest(&a, "GET", "/api/v1/topics/secret/key", key, None);
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("key_not_sealed_for_member")),
        "{body}"
    );
    assert_eq!(pending(&b), vec![(row.clone(), next.pubkey.clone())]);
    drop(bob);
}
