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
