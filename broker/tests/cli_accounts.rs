//! Accounts and the logged-in CLI flows (issue #12, `cli-routes.md`), against real broker
//! processes: a test client makes the CLI's calls exactly as the spec describes (headers,
//! bodies, the unverified JWT decoding the CLI does) and a test browser posts the web UI's
//! real forms with its cookies and CSRF tokens.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// One HTTP answer with its headers.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_cookies(&self) -> Vec<(String, String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| {
                let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
                let (n, val) = pair.split_once('=')?;
                Some((n.to_string(), val.to_string(), attrs.to_string()))
            })
            .collect()
    }
}

/// A raw HTTP/1.1 request (one per connection) with arbitrary headers.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The CLI: JSON bodies, `Authorization: Bearer <session_token>` once logged in.
struct Cli {
    addr: SocketAddr,
    token: Option<String>,
}

impl Cli {
    fn new(b: &Broker) -> Cli {
        Cli {
            addr: b.addr,
            token: None,
        }
    }

    fn on(&self, b: &Broker) -> Cli {
        Cli {
            addr: b.addr,
            token: self.token.clone(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let body = body.map(|b| b.to_string());
        request(self.addr, method, path, &headers, body.as_deref())
    }
}

/// What the CLI does with a token: decode the middle segment without verifying it.
fn decode_jwt(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert!(token.len() > 50);
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

/// A browser: keeps cookies, follows nothing by itself.
struct Browser {
    addr: SocketAddr,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(b: &Broker) -> Browser {
        Browser {
            addr: b.addr,
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, r: &Resp) {
        for (name, value, attrs) in r.set_cookies() {
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(&name);
            } else {
                self.cookies.insert(name, value);
            }
        }
    }

    fn get(&mut self, path: &str) -> Resp {
        let c = self.cookie_header();
        let r = request(self.addr, "GET", path, &[("Cookie", c.as_str())], None);
        self.keep(&r);
        r
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let c = self.cookie_header();
        let r = request(
            self.addr,
            "POST",
            path,
            &[
                ("Cookie", c.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(&body),
        );
        self.keep(&r);
        r
    }

    /// Signs in through the real form; panics unless it worked.
    fn sign_in(&mut self, email: &str, password: &str) {
        let r = self.try_sign_in(email, password, "/sessions");
        assert_eq!(r.status, 303, "{}", r.body);
        assert!(self.cookies.contains_key("cm_session"));
    }

    fn try_sign_in(&mut self, email: &str, password: &str, next: &str) -> Resp {
        let page = self.get(&format!("/login?next={}", enc(next)));
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = hidden(&page.body, "csrf");
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("next", next),
                ("email", email),
                ("password", password),
            ],
        )
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of a hidden form field.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    html[start..][..html[start..].find('"').unwrap()].to_string()
}

const PASSWORD: &str = "correct horse battery staple";

/// Creates a user with a password through the operator API; returns its id.
fn create_user(b: &Broker, email: &str, name: &str) -> String {
    let (status, v) = b.api(
        "POST",
        "/api/v1/users",
        Some(json!({"email": email, "displayName": name, "password": PASSWORD})),
    );
    assert_eq!(status, 201, "{v}");
    assert!(v.get("password").is_none() && v.get("passwordHash").is_none());
    v["id"].as_str().unwrap().to_string()
}

/// A CLI token for `user_id` from the front-end route (admin token).
fn front_end_token(b: &Broker, user_id: &str, email: &str) -> String {
    let (status, v) = b.api(
        "POST",
        "/cli/token",
        Some(json!({"user_id": user_id, "email": email, "name": "Front"})),
    );
    assert_eq!(status, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// `claudemesh login` up to the code: `POST /cli/device-code`.
fn start_login(cli: &Cli) -> Value {
    let r = cli.call(
        "POST",
        "/cli/device-code",
        Some(json!({"hostname": "laptop", "platform": "linux", "arch": "x64"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn poll(cli: &Cli, code: &Value) -> Value {
    let r = cli.call(
        "GET",
        &format!("/cli/device-code/{}", code["device_code"].as_str().unwrap()),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Approves a code on `/cli-auth` in a signed-in browser.
fn approve_in_browser(browser: &mut Browser, code: &Value) -> Resp {
    let sid = code["session_id"].as_str().unwrap();
    let page = browser.get(&format!("/cli-auth?session={sid}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(code["user_code"].as_str().unwrap()));
    let csrf = hidden(&page.body, "csrf");
    browser.post(
        "/cli-auth",
        &[("csrf", &csrf), ("code", sid), ("action", "approve")],
    )
}

#[tokio::test]
async fn the_whole_cli_journey_across_two_replicas() {
    let c = Cluster::new(&[("BROKER_SEND_BURST", "0")]).await;
    let a = c.replica("a");
    let b = c.replica("b");
    let alice_id = create_user(&a, "alice@example.com", "Alice");

    // `claudemesh login` on replica A.
    let mut cli = Cli::new(&a);
    let code = start_login(&cli);
    assert_eq!(code["device_code"].as_str().unwrap().len(), 16);
    let user_code = code["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert_eq!(&user_code[4..5], "-");
    let sid = code["session_id"].as_str().unwrap();
    assert!(sid.starts_with("clm_sess_") && sid.len() == 9 + 32, "{sid}");
    assert!(
        code["verification_url"]
            .as_str()
            .unwrap()
            .ends_with("/cli-auth")
    );
    assert!(code["token_url"].as_str().unwrap().ends_with("/token"));
    assert_eq!(poll(&cli, &code)["status"], "pending");

    // The browser opens `<verification_url>?session=<session_id>` on replica B: sign in
    // first, then approve with the form's CSRF token and the session cookie.
    let mut browser = Browser::new(&b);
    let first = browser.get(&format!("/cli-auth?session={sid}"));
    assert_eq!(first.status, 303);
    let next = first.header("location").unwrap().to_string();
    assert!(next.starts_with("/login?next="), "{next}");
    let login_page = browser.get(&next);
    let csrf = hidden(&login_page.body, "csrf");
    let signed = browser.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("next", &hidden(&login_page.body, "next")),
            ("email", "alice@example.com"),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(signed.status, 303, "{}", signed.body);
    assert_eq!(
        signed.header("location"),
        Some(format!("/cli-auth?session={sid}").as_str())
    );
    let (_, _, attrs) = signed
        .set_cookies()
        .into_iter()
        .find(|(n, _, _)| n == "cm_session")
        .unwrap();
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax"),
        "{attrs}"
    );
    let page = browser.get(&format!("/cli-auth?session={sid}"));
    assert!(page.body.contains("laptop"), "{}", page.body);
    let approved = approve_in_browser(&mut browser, &code);
    assert_eq!(approved.status, 200, "{}", approved.body);

    // The poll on replica A gets the token, once.
    let done = poll(&cli, &code);
    assert_eq!(done["status"], "approved", "{done}");
    assert_eq!(done["user"]["id"], alice_id.as_str());
    assert_eq!(done["user"]["display_name"], "Alice");
    assert_eq!(done["user"]["email"], "alice@example.com");
    let token = done["session_token"].as_str().unwrap().to_string();
    let claims = decode_jwt(&token);
    assert_eq!(claims["sub"], alice_id.as_str());
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice");
    assert!(claims["exp"].as_i64().unwrap() > now_ms() / 1000 + 29 * 86_400);
    assert_eq!(
        poll(&cli, &code)["status"],
        "consumed",
        "a code is consumed once"
    );
    cli.token = Some(token.clone());

    // `claudemesh whoami` and the "synced N meshes" call after login.
    let me = cli.call("GET", "/api/my/profile", None);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        me.json(),
        json!({"id": alice_id, "display_name": "Alice", "email": "alice@example.com"})
    );

    // `claudemesh create`: the CLI makes the keypair and sends the public key.
    let owner = Identity::random();
    let r = cli.call(
        "POST",
        "/cli/mesh/create",
        Some(json!({"name": "Team Mesh", "pubkey": owner.pubkey})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let created = r.json();
    assert_eq!(created["slug"], "team-mesh");
    assert_eq!(created["name"], "Team Mesh");
    let mesh_id = created["id"].as_str().unwrap().to_string();
    let owner_member = created["member_id"].as_str().unwrap().to_string();
    // The same name again gets the next free slug.
    let again = cli.call(
        "POST",
        "/cli/mesh/create",
        Some(json!({"name": "Team Mesh", "pubkey": Identity::random().pubkey})),
    );
    assert_eq!(again.json()["slug"], "team-mesh-2", "{}", again.body);

    // `claudemesh list` on replica B.
    let list = cli.on(&b).call("GET", "/cli/meshes", None);
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.header("access-control-allow-origin"), Some("*"));
    let meshes = list.json()["meshes"].as_array().unwrap().clone();
    let team = meshes.iter().find(|m| m["slug"] == "team-mesh").unwrap();
    assert_eq!(team["is_owner"], true);
    assert_eq!(team["role"], "admin");
    assert_eq!(team["member_count"], 1);
    assert_eq!(team["active_peers"], 0);
    assert_eq!(team["broker_url"], format!("ws://{}/ws", b.addr));

    // `claudemesh invite`: a v1 link `claudemesh join` accepts.
    let r = cli.call("POST", "/cli/mesh/team-mesh/invite", Some(json!({})));
    assert_eq!(r.status, 200, "{}", r.body);
    let inv = r.json();
    let url = inv["url"].as_str().unwrap();
    let invite_token = url.split("/join/").nth(1).unwrap().to_string();
    assert_eq!(inv["token"], invite_token.as_str());
    assert_eq!(inv["emailed"], false);
    assert_eq!(inv["link"], format!("ic://join/{invite_token}"));
    // The CLI's v1 parser: the payload, then `POST /join` on its broker URL's host.
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&invite_token).unwrap()).unwrap();
    assert_eq!(payload["mesh_id"], mesh_id.as_str());
    let joiner = Identity::random();
    let (status, joined) = b.api(
        "POST",
        "/join",
        Some(
            json!({"invite_token": invite_token, "invite_payload": payload,
            "peer_pubkey": joiner.pubkey, "display_name": "bob"}),
        ),
    );
    assert_eq!(status, 200, "{joined}");
    let joiner_member = joined["memberId"].as_str().unwrap().to_string();

    // Both connect with signed hellos, on different replicas; a DM goes through.
    let (mut oc, _) = Client::join(
        &a.ws_url(),
        hello(&mesh_id, &owner_member, &owner, json!({})),
    )
    .await;
    let (mut jc, _) = Client::join(
        &b.ws_url(),
        hello(&mesh_id, &joiner_member, &joiner, json!({})),
    )
    .await;
    let ack = jc.send_msg(&owner.pubkey, "now", "hi owner").await;
    assert_eq!(ack["queued"], true, "{ack}");
    assert_eq!(
        oc.expect_where("push", is_push).await["ciphertext"],
        "hi owner"
    );

    // `claudemesh block bob`: grants sync, then bob's DMs are refused.
    let r = cli.call(
        "POST",
        "/cli/mesh/team-mesh/grants",
        Some(json!({"grants": {joiner.pubkey.clone(): []}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["grants"][joiner.pubkey.as_str()], json!([]));
    let blocked = eventually("the grant to reach the send path", async || {
        let ack = jc.send_msg(&owner.pubkey, "now", "blocked?").await;
        (ack["queued"] == false).then_some(ack)
    })
    .await;
    assert_eq!(
        blocked["error"],
        "blocked by recipient grants (sender lacks dm capability)"
    );

    // `claudemesh rename` (API_BASE), then `list` shows the new slug.
    let r = cli.call(
        "PATCH",
        "/api/cli/meshes/team-mesh",
        Some(json!({"slug": "renamed-mesh"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"slug": "renamed-mesh"}));
    let list = cli.on(&a).call("GET", "/cli/meshes", None).json();
    let slugs: Vec<&str> = list["meshes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert!(
        slugs.contains(&"renamed-mesh") && !slugs.contains(&"team-mesh"),
        "{slugs:?}"
    );
    let mine = cli.call("GET", "/api/my/meshes", None).json();
    let renamed = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["slug"] == "renamed-mesh")
        .unwrap();
    assert_eq!(renamed["role"], "owner");
    assert_eq!(renamed["member_count"], 2);

    // The session is listed, then `claudemesh logout` revokes it: the next call is 401.
    let sessions = cli.call("GET", "/cli/sessions", None).json();
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["hostname"] == "laptop")
    );
    let r = cli
        .on(&b)
        .call("POST", "/cli/session/revoke", Some(json!({"token": token})));
    assert_eq!(r.json(), json!({"ok": true, "found": true}));
    let r = cli.call("GET", "/cli/meshes", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "invalid_or_revoked_token"}));
    let r = cli.call("GET", "/api/my/profile", None);
    assert_eq!(r.status, 401);

    // A fresh token from the paste-token page, then `claudemesh delete`.
    let page = browser.get("/token");
    let csrf = hidden(&page.body, "csrf");
    let minted = browser.post("/token", &[("csrf", &csrf), ("hostname", "server")]);
    assert_eq!(minted.status, 200, "{}", minted.body);
    let start = minted.body.find("<pre>").unwrap() + 5;
    let pasted = minted.body[start..][..minted.body[start..].find("</pre>").unwrap()].to_string();
    assert_eq!(decode_jwt(&pasted)["sub"], alice_id.as_str());
    cli.token = Some(pasted);
    let r = cli.call("DELETE", "/cli/mesh/renamed-mesh", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"ok": true, "deleted": "renamed-mesh"}));
    // Its live sockets are closed, on both replicas.
    assert_eq!(oc.expect_close().await, (1000, "disconnected".to_string()));
    assert_eq!(jc.expect_close().await, (1000, "disconnected".to_string()));
    let list = cli.call("GET", "/cli/meshes", None).json();
    assert!(
        !list["meshes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == mesh_id.as_str())
    );
    // The slug is free again for a live mesh.
    let r = cli.call(
        "POST",
        "/cli/mesh/create",
        Some(json!({"name": "x", "slug": "renamed-mesh", "pubkey": Identity::random().pubkey})),
    );
    assert_eq!(r.json()["slug"], "renamed-mesh", "{}", r.body);
}

#[tokio::test]
async fn approving_needs_a_signed_in_session_and_its_own_csrf_token() {
    let b = Broker::start(&[]);
    create_user(&b, "carol@example.com", "Carol");
    create_user(&b, "dave@example.com", "Dave");
    let cli = Cli::new(&b);
    let code = start_login(&cli);
    let sid = code["session_id"].as_str().unwrap();

    // No session: the form post is refused, and so is the broker route without the
    // front end's admin token (the reference trusted any body).
    let mut stranger = Browser::new(&b);
    let r = stranger.post(
        "/cli-auth",
        &[("csrf", "x"), ("code", sid), ("action", "approve")],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = cli.call(
        "POST",
        &format!("/cli/device-code/{sid}/approve"),
        Some(json!({"user_id": "victim", "email": "victim@example.com"})),
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // Carol's cookie with Dave's CSRF token: refused.
    let mut carol = Browser::new(&b);
    carol.sign_in("carol@example.com", PASSWORD);
    let mut dave = Browser::new(&b);
    dave.sign_in("dave@example.com", PASSWORD);
    let daves = hidden(&dave.get(&format!("/cli-auth?session={sid}")).body, "csrf");
    let r = carol.post(
        "/cli-auth",
        &[("csrf", &daves), ("code", sid), ("action", "approve")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // A sign-in form without its pre-session cookie's token: refused.
    let mut forger = Browser::new(&b);
    let r = forger.post(
        "/login",
        &[
            ("csrf", "guess"),
            ("email", "carol@example.com"),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(poll(&cli, &code)["status"], "pending");

    // Dave denies: the code ends, and the CLI stops polling.
    let r = dave.post(
        "/cli-auth",
        &[("csrf", &daves), ("code", sid), ("action", "deny")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(poll(&cli, &code)["status"], "expired");
    // A decided code cannot be approved afterwards.
    let r = approve_in_browser_raw(&mut carol, sid);
    assert_eq!(r.status, 404, "{}", r.body);

    // The front end holding the admin token may approve (it names the user).
    let code = start_login(&cli);
    let (status, v) = b.api(
        "POST",
        &format!(
            "/cli/device-code/{}/approve",
            code["user_code"].as_str().unwrap()
        ),
        Some(json!({"user_id": "front-user", "email": "front@example.com", "name": "Front"})),
    );
    assert_eq!((status, v), (200, json!({"ok": true})));
    let done = poll(&cli, &code);
    assert_eq!(done["user"]["id"], "front-user");

    let m = b.metrics();
    assert!(
        metric(
            &m,
            r#"broker_account_requests_rejected_total{reason="csrf"}"#
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"broker_account_requests_rejected_total{reason="no_session"}"#
        ) >= 1.0
    );
}

/// Posts an approval for `sid` with the browser's own fresh CSRF token.
fn approve_in_browser_raw(browser: &mut Browser, sid: &str) -> Resp {
    let csrf = hidden(&browser.get("/cli-auth").body, "csrf");
    browser.post(
        "/cli-auth",
        &[("csrf", &csrf), ("code", sid), ("action", "approve")],
    )
}

#[tokio::test]
async fn expired_codes_and_expired_forged_or_revoked_tokens_are_refused() {
    let b = Broker::start(&[
        ("DEVICE_CODE_TTL_MS", "400"),
        ("CLI_SESSION_TTL_MS", "1500"),
    ]);
    let uid = create_user(&b, "erin@example.com", "Erin");
    let cli = Cli::new(&b);
    let code = start_login(&cli);
    let sid = code["session_id"].as_str().unwrap().to_string();
    eventually("the code to expire", async || {
        (poll(&cli, &code)["status"] == "expired").then_some(())
    })
    .await;
    let mut browser = Browser::new(&b);
    browser.sign_in("erin@example.com", PASSWORD);
    let r = approve_in_browser_raw(&mut browser, &sid);
    assert_ne!(r.status, 200, "an expired code is not approved: {}", r.body);

    // Forged: the payload changed, or signed with another key.
    let token = front_end_token(&b, &uid, "erin@example.com");
    let parts: Vec<&str> = token.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(
        json!({"sub": "someone-else", "email": "x", "name": "x", "exp": now_ms() / 1000 + 3600})
            .to_string(),
    );
    let forged = format!("{}.{evil}.{}", parts[0], parts[2]);
    for bad in [forged.as_str(), "a.b.c", "not-a-jwt"] {
        let r = Cli {
            addr: b.addr,
            token: Some(bad.to_string()),
        }
        .call("GET", "/cli/meshes", None);
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.json()["error"], "invalid_or_revoked_token");
    }
    // Empty and missing bearers.
    let r = request(
        b.addr,
        "GET",
        "/cli/meshes",
        &[("Authorization", "Bearer ")],
        None,
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("empty_bearer_token"))
    );
    let r = request(b.addr, "GET", "/cli/meshes", &[], None);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("missing_bearer_token"))
    );

    // Valid until its `exp` (1.5 s here), then refused although not revoked.
    let short = Cli {
        addr: b.addr,
        token: Some(token),
    };
    assert_eq!(short.call("GET", "/cli/meshes", None).status, 200);
    eventually("the token to expire", async || {
        (short.call("GET", "/cli/meshes", None).status == 401).then_some(())
    })
    .await;
    let r = short.call("PATCH", "/api/cli/meshes/x", Some(json!({"slug": "yy"})));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid or expired token"))
    );

    // Revoked from the web UI's session list.
    let fresh = Cli {
        addr: b.addr,
        token: Some(front_end_token(&b, &uid, "erin@example.com")),
    };
    assert_eq!(fresh.call("GET", "/cli/meshes", None).status, 200);
    let list = browser.get("/sessions");
    let csrf = hidden(&list.body, "csrf");
    let id = hidden(&list.body, "id");
    let r = browser.post("/sessions/revoke", &[("csrf", &csrf), ("id", &id)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(fresh.call("GET", "/cli/meshes", None).status, 401);
    let r = fresh.call(
        "POST",
        "/cli/session/revoke",
        Some(json!({"token": "unknown"})),
    );
    assert_eq!(r.json(), json!({"ok": true, "found": false}));
}

#[tokio::test]
async fn only_the_owner_invites_deletes_or_renames_and_members_are_checked() {
    let b = Broker::start(&[]);
    let owner_id = create_user(&b, "olga@example.com", "Olga");
    let member_id = create_user(&b, "max@example.com", "Max");
    let stranger_id = create_user(&b, "sam@example.com", "Sam");
    let owner = Cli {
        addr: b.addr,
        token: Some(front_end_token(&b, &owner_id, "olga@example.com")),
    };
    let member = Cli {
        addr: b.addr,
        token: Some(front_end_token(&b, &member_id, "max@example.com")),
    };
    let stranger = Cli {
        addr: b.addr,
        token: Some(front_end_token(&b, &stranger_id, "sam@example.com")),
    };
    // Validation comes before any write: a bad key leaves no mesh behind.
    let r = owner.call(
        "POST",
        "/cli/mesh/create",
        Some(json!({"name": "ops", "pubkey": "zz"})),
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("pubkey required (64 hex chars)"))
    );
    assert_eq!(
        owner.call("GET", "/cli/meshes", None).json()["meshes"],
        json!([])
    );
    let r = owner.call(
        "POST",
        "/cli/mesh/create",
        Some(json!({"pubkey": Identity::random().pubkey})),
    );
    assert_eq!(r.json()["error"], "name required");

    let created = owner
        .call(
            "POST",
            "/cli/mesh/create",
            Some(json!({"name": "ops", "pubkey": Identity::random().pubkey})),
        )
        .json();
    let mesh_id = created["id"].as_str().unwrap();
    // Max is a member with his account linked (operator API); Sam is not a member.
    b.add_member(
        mesh_id,
        &Identity::random(),
        "max",
        json!({"userId": member_id}),
    );

    let r = member.call("POST", "/cli/mesh/ops/invite", Some(json!({})));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("Only the owner can invite (for now)"))
    );
    let r = member.call("DELETE", "/cli/mesh/ops", None);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("Only the mesh owner can delete it"))
    );
    let r = member.call(
        "PATCH",
        "/api/cli/meshes/ops",
        Some(json!({"slug": "mine"})),
    );
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("different account")
    );
    let listed = member.call("GET", "/cli/meshes", None).json();
    assert_eq!(listed["meshes"][0]["is_owner"], false);
    assert_eq!(listed["meshes"][0]["role"], "member");
    // A member syncs his own grants; validation names bad keys and capabilities.
    let r = member.call(
        "POST",
        "/cli/mesh/ops/grants",
        Some(json!({"grants": {Identity::random().pubkey: ["dm"]}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = member.call(
        "POST",
        "/cli/mesh/ops/grants",
        Some(json!({"grants": {"nothex": ["dm"]}})),
    );
    assert_eq!(r.status, 400);
    let r = member.call(
        "POST",
        "/cli/mesh/ops/grants",
        Some(json!({"grants": {Identity::random().pubkey: ["fly"]}})),
    );
    assert_eq!(r.status, 400);
    let r = member.call("POST", "/cli/mesh/ops/grants", Some(json!({})));
    assert_eq!(r.json()["error"], "grants required");

    for (method, path, body) in [
        ("POST", "/cli/mesh/ops/invite", Some(json!({}))),
        ("POST", "/cli/mesh/ops/grants", Some(json!({"grants": {}}))),
        ("DELETE", "/cli/mesh/ops", None),
    ] {
        let r = stranger.call(method, path, body);
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (404, json!("Mesh not found")),
            "{path}"
        );
    }
    let r = owner.call(
        "PATCH",
        "/api/cli/meshes/ops",
        Some(json!({"slug": "-bad"})),
    );
    assert_eq!(r.status, 400);
    let r = owner.call("DELETE", "/cli/mesh/ops", None);
    assert_eq!(r.json(), json!({"ok": true, "deleted": "ops"}));
    let r = owner.call("DELETE", "/cli/mesh/ops", None);
    assert_eq!(r.status, 404, "an archived mesh is gone");
    // The v2 claim route stays disabled, exactly as the reference answers.
    let r = owner.call("POST", "/invites/ABCDEFGH/claim", Some(json!({})));
    assert_eq!(r.status, 501);
    assert_eq!(r.json()["error"], "invite_v2_disabled");
}

#[tokio::test]
async fn the_legacy_shim_is_off_by_default_and_exact_when_on() {
    let off = Broker::start(&[]);
    let uid = create_user(&off, "lee@example.com", "Lee");
    let r = request(
        off.addr,
        "GET",
        &format!("/cli/meshes?user_id={uid}"),
        &[],
        None,
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("missing_bearer_token"))
    );
    assert!(r.header("deprecation").is_none());
    assert_eq!(metric(&off.metrics(), "broker_legacy_auth_hits_total"), 0.0);

    let on = Broker::start(&[("BROKER_LEGACY_AUTH", "1")]);
    assert!(
        on.log_text().contains("legacy shim is ON"),
        "{}",
        on.log_text()
    );
    assert!(on.metrics().contains("broker_legacy_auth_hits_total 0"));
    let uid = create_user(&on, "lee@example.com", "Lee");
    let r = request(
        on.addr,
        "GET",
        &format!("/cli/meshes?user_id={uid}"),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("deprecation"),
        Some(r#"version="legacy-body-userid"; sunset="2026-05-15""#)
    );
    assert_eq!(
        r.header("warning"),
        Some(
            r#"299 - "body.user_id auth is deprecated; send Authorization: Bearer <session_token>""#
        )
    );
    // `claudemesh test`: create with a body user_id, then delete with one.
    let body =
        json!({"user_id": uid, "name": "shimmed", "pubkey": Identity::random().pubkey}).to_string();
    let r = request(
        on.addr,
        "POST",
        "/cli/mesh/create",
        &[("Content-Type", "application/json")],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = json!({"user_id": uid}).to_string();
    let r = request(
        on.addr,
        "DELETE",
        "/cli/mesh/shimmed",
        &[("Content-Type", "application/json")],
        Some(&body),
    );
    assert_eq!(r.json(), json!({"ok": true, "deleted": "shimmed"}));
    assert_eq!(metric(&on.metrics(), "broker_legacy_auth_hits_total"), 3.0);
    // A bearer wins over the body, and routes outside the list never take the shim.
    let r = request(
        on.addr,
        "GET",
        &format!("/cli/sessions?user_id={uid}"),
        &[],
        None,
    );
    assert_eq!(r.status, 401);
    let r = request(
        on.addr,
        "GET",
        &format!("/cli/meshes?user_id={uid}"),
        &[("Authorization", "Bearer forged.token.here")],
        None,
    );
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn repeated_failures_lock_an_account_until_the_operator_resets_it() {
    // In cluster mode: the failure count and the lock are PostgreSQL's, for every replica.
    let c = Cluster::new(&[("LOGIN_LOCKOUT_FAILURES", "3"), ("LOGIN_RATE_PER_MIN", "0")]).await;
    let b = c.replica("a");
    let uid = create_user(&b, "lock@example.com", "Lock");
    let mut browser = Browser::new(&b);
    for _ in 0..3 {
        let r = browser.try_sign_in("lock@example.com", "wrong password!", "/sessions");
        assert_eq!(r.status, 401, "{}", r.body);
    }
    // Now even the right password is refused.
    let r = browser.try_sign_in("lock@example.com", PASSWORD, "/sessions");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("locked"));
    let (_, v) = b.api("GET", &format!("/api/v1/users/{uid}"), None);
    assert!(v["lockedUntil"].is_string(), "{v}");
    // The operator resets the password, which unlocks.
    let (status, v) = b.api(
        "POST",
        &format!("/api/v1/users/{uid}/password"),
        Some(json!({"password": "a brand new secret"})),
    );
    assert_eq!(status, 200, "{v}");
    let r = browser.try_sign_in("lock@example.com", "a brand new secret", "/sessions");
    assert_eq!(r.status, 303, "{}", r.body);
    // Disabling ends the web session and refuses new sign-ins and tokens.
    let token = front_end_token(&b, &uid, "lock@example.com");
    let (status, _) = b.api(
        "PATCH",
        &format!("/api/v1/users/{uid}"),
        Some(json!({"disabled": true})),
    );
    assert_eq!(status, 200);
    assert_eq!(browser.get("/sessions").status, 303);
    let r = Cli {
        addr: b.addr,
        token: Some(token),
    }
    .call("GET", "/cli/meshes", None);
    assert_eq!(r.status, 401);
    let (_, users) = b.api("GET", "/api/v1/users", None);
    assert_eq!(users["users"][0]["disabled"], true);
    let m = b.metrics();
    assert!(
        metric(
            &m,
            r#"broker_account_requests_rejected_total{reason="login_locked"}"#
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn sign_in_and_device_codes_are_rate_limited_cluster_wide() {
    let c = Cluster::new(&[
        ("LOGIN_RATE_PER_MIN", "2"),
        ("DEVICE_CODE_RATE_PER_MIN", "2"),
    ])
    .await;
    let a = c.replica("a");
    let b = c.replica("b");
    create_user(&a, "rate@example.com", "Rate");
    let mut on_a = Browser::new(&a);
    let mut on_b = Browser::new(&b);
    assert_eq!(
        on_a.try_sign_in("rate@example.com", "wrong", "/").status,
        401
    );
    assert_eq!(
        on_b.try_sign_in("rate@example.com", "wrong", "/").status,
        401
    );
    // The third attempt, on either replica, is over the shared bucket.
    assert_eq!(
        on_a.try_sign_in("rate@example.com", PASSWORD, "/").status,
        429
    );
    let (ca, cb) = (Cli::new(&a), Cli::new(&b));
    assert_eq!(ca.call("POST", "/cli/device-code", None).status, 200);
    assert_eq!(cb.call("POST", "/cli/device-code", None).status, 200);
    let r = ca.call("POST", "/cli/device-code", None);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(
        metric(
            &a.metrics(),
            r#"broker_account_requests_rejected_total{reason="login_rate"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn the_public_url_drives_links_and_only_trusted_proxies_are_believed() {
    let b = Broker::start(&[("BROKER_PUBLIC_URL", "https://mesh.example.com")]);
    let uid = create_user(&b, "pat@example.com", "Pat");
    let cli = Cli::new(&b);
    let code = start_login(&cli);
    assert_eq!(
        code["verification_url"],
        "https://mesh.example.com/cli-auth"
    );
    assert_eq!(code["token_url"], "https://mesh.example.com/token");
    let owner = Cli {
        addr: b.addr,
        token: Some(front_end_token(&b, &uid, "pat@example.com")),
    };
    owner.call(
        "POST",
        "/cli/mesh/create",
        Some(json!({"name": "pub", "pubkey": Identity::random().pubkey})),
    );
    let inv = owner
        .call(
            "POST",
            "/cli/mesh/pub/invite",
            Some(json!({"role": "admin"})),
        )
        .json();
    let url = inv["url"].as_str().unwrap();
    assert!(url.starts_with("https://mesh.example.com/join/"), "{url}");
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(inv["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["broker_url"], "wss://mesh.example.com/ws");
    assert_eq!(payload["role"], "admin");
    let list = owner.call("GET", "/cli/meshes", None).json();
    assert_eq!(list["meshes"][0]["broker_url"], "wss://mesh.example.com/ws");
    // Behind https the session cookie is Secure.
    let mut browser = Browser::new(&b);
    let r = browser.try_sign_in("pat@example.com", PASSWORD, "/sessions");
    let (_, _, attrs) = r
        .set_cookies()
        .into_iter()
        .find(|(n, _, _)| n == "cm_session")
        .unwrap();
    assert!(attrs.contains("Secure"), "{attrs}");

    // Without a public URL: the Host header, and the forwarded scheme only from a trusted
    // proxy.
    let plain = Broker::start(&[]);
    let forwarded = [("X-Forwarded-Proto", "https")];
    let r = request(plain.addr, "POST", "/cli/device-code", &forwarded, None);
    assert_eq!(
        r.json()["verification_url"],
        format!("http://{}/cli-auth", plain.addr)
    );
    let proxied = Broker::start(&[("BROKER_TRUSTED_PROXIES", "127.0.0.1/32")]);
    let r = request(proxied.addr, "POST", "/cli/device-code", &forwarded, None);
    assert_eq!(
        r.json()["verification_url"],
        format!("https://{}/cli-auth", proxied.addr)
    );
}

#[tokio::test]
async fn what_a_caller_can_make_the_broker_hold_is_bounded() {
    let b = Broker::start(&[
        ("MAX_PENDING_DEVICE_CODES", "2"),
        ("MAX_CLI_SESSIONS_PER_USER", "2"),
        ("MAX_MESSAGE_BYTES", "1024"),
    ]);
    let cli = Cli::new(&b);
    start_login(&cli);
    start_login(&cli);
    let r = cli.call("POST", "/cli/device-code", None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        metric(
            &b.metrics(),
            r#"broker_account_requests_rejected_total{reason="device_code_cap"}"#
        ) >= 1.0
    );
    // Bodies over MAX_MESSAGE_BYTES: 413.
    let big = json!({"name": "x".repeat(2000), "pubkey": Identity::random().pubkey});
    let r = cli.call("POST", "/cli/mesh/create", Some(big));
    assert_eq!(r.status, 413);
    // A third session revokes the oldest.
    let uid = create_user(&b, "cap@example.com", "Cap");
    let first = Cli {
        addr: b.addr,
        token: Some(front_end_token(&b, &uid, "cap@example.com")),
    };
    front_end_token(&b, &uid, "cap@example.com");
    assert_eq!(first.call("GET", "/cli/meshes", None).status, 200);
    front_end_token(&b, &uid, "cap@example.com");
    assert_eq!(first.call("GET", "/cli/meshes", None).status, 401);
    // Unknown routes under /cli/ answer the reference's plain 404; OPTIONS is 204.
    let r = cli.call("GET", "/cli/mesh/x/permissions", None);
    assert_eq!((r.status, r.body.as_str()), (404, "not found"));
    let r = request(b.addr, "OPTIONS", "/cli/meshes", &[], None);
    assert_eq!(r.status, 204);
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("Authorization")
    );
}

#[tokio::test]
async fn a_sync_token_is_used_once_across_replicas() {
    const SECRET: &str = "a session secret of at least thirty-two chars";
    let c = Cluster::new(&[("BROKER_SESSION_SECRET", SECRET)]).await;
    let a = c.replica("a");
    let b = c.replica("b");
    let uid = create_user(&a, "syd@example.com", "Syd");
    let owner = Cli {
        addr: a.addr,
        token: Some(front_end_token(&a, &uid, "syd@example.com")),
    };
    let mesh = owner
        .call(
            "POST",
            "/cli/mesh/create",
            Some(json!({"name": "synced", "pubkey": Identity::random().pubkey})),
        )
        .json();
    let now = now_ms() / 1000;
    let sign = |payload: Value| broker::accounts::token::sign(SECRET.as_bytes(), &payload);
    let sync = sign(
        json!({"sub": uid, "email": "syd@example.com", "action": "sync",
        "meshes": [{"id": mesh["id"], "slug": "synced", "role": "member"}],
        "jti": "jti-1", "iat": now, "exp": now + 900}),
    );
    let laptop = Identity::random();
    let body = json!({"sync_token": sync, "peer_pubkey": laptop.pubkey, "display_name": "laptop"});
    let r = Cli::new(&a).call("POST", "/cli-sync", Some(body.clone()));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["account_id"], uid.as_str());
    let member_id = v["meshes"][0]["member_id"].as_str().unwrap().to_string();
    // The new member is linked to the account, so grants sync works for it.
    let (_, members) = a.api(
        "GET",
        &format!("/api/v1/meshes/{}/members", mesh["id"].as_str().unwrap()),
        None,
    );
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == member_id.as_str())
    );
    // Replayed on the other replica: refused.
    let r = Cli::new(&b).call("POST", "/cli-sync", Some(body));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "sync token invalid: token already used");
    // A CLI session token is not a sync token; a bad signature is named.
    let r = Cli::new(&b).call(
        "POST",
        "/cli-sync",
        Some(json!({"sync_token": owner.token, "peer_pubkey": laptop.pubkey, "display_name": "x"})),
    );
    assert_eq!(r.json()["error"], "sync token invalid: not a sync token");
    let forged = broker::accounts::token::sign(
        b"another secret entirely, 32+ bytes",
        &json!({"exp": now + 60}),
    );
    let r = Cli::new(&b).call(
        "POST",
        "/cli-sync",
        Some(json!({"sync_token": forged, "peer_pubkey": laptop.pubkey, "display_name": "x"})),
    );
    assert_eq!(r.json()["error"], "sync token invalid: invalid signature");
}
