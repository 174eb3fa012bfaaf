//! Files (extensions §19.1): an upload through one replica is downloadable through
//! another and survives a restart of every replica; the bearer and the membership are
//! checked; sizes are bounded per file and per mesh (dev mode: the memory store with the
//! same bounds); the exact frames the CLI sends get the replies it matches; with file
//! storage off the routes answer 501 and the frames are refused as §0.3 says.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;

use broker::protocol::ext::files::{FileList, FileStatusResult, FileUrl, GrantFileAccessOk};
use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};

/// One HTTP answer: status, headers (lower-case names) and the raw body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a request body is sent.
enum Body<'a> {
    None,
    Length(&'a [u8]),
    Chunked(&'a [u8]),
    /// Only a `Content-Length` header claiming this many bytes, and no body.
    Claim(u64),
}

fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: Body) -> Resp {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &body {
        Body::None => head.push_str("Content-Length: 0\r\n"),
        Body::Length(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        Body::Claim(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    match body {
        Body::Length(b) => s.write_all(b).unwrap(),
        Body::Chunked(b) => {
            for part in b.chunks(50_000) {
                s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                    .unwrap();
                s.write_all(part).unwrap();
                s.write_all(b"\r\n").unwrap();
            }
            s.write_all(b"0\r\n\r\n").unwrap();
        }
        Body::None | Body::Claim(_) => {}
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A CLI session token for a user (the front end's `POST /cli/token`).
fn cli_token(b: &Broker, user_id: &str) -> String {
    let body = json!({"user_id": user_id, "email": format!("{user_id}@example.com")}).to_string();
    let (status, text) = http(b.addr, "POST", "/cli/token", Some(TOKEN), Some(&body)).unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// The upload headers of `member` in `mesh` with `extra` headers.
fn upload_headers(
    token: &str,
    mesh: &str,
    member: &Member,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        bearer(token),
        ("X-Mesh-Id", mesh.to_string()),
        ("X-Member-Id", member.id.clone()),
        ("X-File-Name", "report%20final.pdf".to_string()),
        ("X-Tags", r#"["q3","ops"]"#.to_string()),
    ];
    // An extra header replaces a default one of the same name.
    h.retain(|(k, _)| !extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(k)));
    h.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    h
}

fn upload(
    b: &Broker,
    token: &str,
    mesh: &str,
    member: &Member,
    extra: &[(&'static str, &str)],
    body: &[u8],
) -> Resp {
    raw(
        b.addr,
        "POST",
        "/upload",
        &upload_headers(token, mesh, member, extra),
        Body::Length(body),
    )
}

/// Uploads and returns the file id.
fn upload_ok(
    b: &Broker,
    token: &str,
    mesh: &str,
    member: &Member,
    extra: &[(&'static str, &str)],
    body: &[u8],
) -> String {
    let r = upload(b, token, mesh, member, extra, body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["ok"], true, "{v}");
    v["fileId"].as_str().unwrap().to_string()
}

/// A body of `n` bytes that is not one repeated byte (so a misplaced chunk shows).
fn body_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The path and query of a download URL (the host is this replica's listen address).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_string()
}

fn download(b: &Broker, path: &str, token: Option<&str>) -> Resp {
    let headers: Vec<(&str, String)> = token.map(bearer).into_iter().collect();
    raw(b.addr, "GET", path, &headers, Body::None)
}

fn error_of(v: &Value) -> (String, String) {
    assert_eq!(v["type"], "error", "{v}");
    (
        v["code"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap().to_string(),
    )
}

fn pair(code: &str, message: &str) -> (String, String) {
    (code.to_string(), message.to_string())
}

// ---------------------------------------------------------------------------------------
// Across replicas, and after a restart of every replica
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upload_through_a_is_downloadable_through_b_and_after_a_restart_of_every_replica() {
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("files", None);
    let alice = member(&a, &mesh, "alice", json!({"userId": "u-alice"}));
    let bob = member(&a, &mesh, "bob", json!({"userId": "u-bob"}));
    let (ta, tb) = (cli_token(&a, "u-alice"), cli_token(&b, "u-bob"));

    // Several chunks (256 KiB each) and a partial last one.
    let body = body_of(3 * 256 * 1024 + 1234);
    let id = upload_ok(&a, &ta, &mesh, &alice, &[], &body);
    assert_eq!(id.len(), 32);

    // Bob, on b, lists it and fetches it through the signed URL, on b.
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let list: FileList = parse(&bo.request(json!({"type": "list_files"})).await);
    assert_eq!(list.files.len(), 1);
    let f = &list.files[0];
    assert_eq!(
        (
            f.id.as_str(),
            f.name.as_str(),
            f.size,
            f.uploaded_by.as_str()
        ),
        (id.as_str(), "report final.pdf", body.len() as i64, "alice")
    );
    assert_eq!(f.tags, ["q3", "ops"]);
    assert!(f.persistent && !f.encrypted);
    let info = bo.request(json!({"type": "mesh_info"})).await;
    assert_eq!(info["fileCount"], 1, "{info}");
    let url: FileUrl = parse(&bo.request(json!({"type": "get_file", "fileId": id})).await);
    assert_eq!(url.name, "report final.pdf");
    assert!(
        url.url
            .contains(&format!("/download/{id}?mesh={mesh}&token="))
    );
    let signed = path_of(&url.url);
    let got = download(&b, &signed, None);
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(
        got.body == body,
        "the body read back through b is the one uploaded through a"
    );
    // The same URL on a: the token is valid on every replica.
    assert!(download(&a, &signed, None).body == body);
    // A bearer download (bob's session) through b.
    let by_bearer = download(&b, &format!("/download/{id}?mesh={mesh}"), Some(&tb));
    assert_eq!(by_bearer.status, 200);
    assert!(by_bearer.body == body);

    // Alice, on a, sees both accesses of bob in the log.
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let status: FileStatusResult = parse(
        &al.request(json!({"type": "file_status", "fileId": id}))
            .await,
    );
    assert_eq!(
        status
            .accesses
            .iter()
            .map(|x| x.peer_name.as_str())
            .collect::<Vec<_>>(),
        ["bob", "bob"]
    );
    assert!(
        metric(&b.metrics(), "broker_file_bytes_downloaded_total")
            >= 3.0 * body.len() as f64 - body.len() as f64
    );
    al.close().await;
    bo.close().await;

    // Every replica restarts: the files are in PostgreSQL.
    drop((a, b));
    let (a2, b2) = (c.replica("a2"), c.replica("b2"));
    let again = download(&b2, &format!("/download/{id}?mesh={mesh}"), Some(&tb));
    assert_eq!(again.status, 200);
    assert!(again.body == body, "intact after the restart");
    assert!(
        download(&a2, &signed, None).body == body,
        "a URL minted before the restart still works within its lifetime"
    );
    let (mut al, _) = Client::join(&a2.ws_url(), alice.hello(&mesh, json!({}))).await;
    let list: FileList = parse(&al.request(json!({"type": "list_files"})).await);
    assert_eq!(list.files.len(), 1);
    // A second upload after the restart, through the other replica.
    let second = upload_ok(&b2, &ta, &mesh, &alice, &[], b"second");
    assert_eq!(
        download(&a2, &format!("/download/{second}?mesh={mesh}"), Some(&ta)).body,
        b"second"
    );
}

/// The per-mesh bound holds across replicas: uploads through a and b share one budget.
#[tokio::test]
async fn the_mesh_budget_is_shared_by_every_replica() {
    let c = Cluster::new(&[("MAX_MESH_FILE_BYTES", "1000000")]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("budget", None);
    let alice = member(&a, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&a, "u-alice");
    let first = upload_ok(&a, &t, &mesh, &alice, &[], &body_of(600_000));
    let over = upload(&b, &t, &mesh, &alice, &[], &body_of(600_000));
    assert_eq!(over.status, 413);
    assert_eq!(
        over.json(),
        json!({"ok": false, "error": "mesh file storage is full (max 1MB)"})
    );
    assert!(
        metric(
            &b.metrics(),
            "broker_file_requests_refused_total{reason=\"mesh_full\"}"
        ) >= 1.0
    );
    // Deleting through b releases the bytes for an upload through a.
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack = al
        .request(json!({"type": "delete_file", "fileId": first}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    upload_ok(&a, &t, &mesh, &alice, &[], &body_of(600_000));
}

/// An upload cut by its replica's death (SIGKILL mid-body) is never visible, and its
/// bytes are released for the mesh by a later upload through another replica.
#[tokio::test]
async fn an_upload_cut_by_a_killed_replica_is_invisible_and_its_bytes_come_back() {
    let c = Cluster::new(&[
        ("MAX_MESH_FILE_BYTES", "1000000"),
        ("FILE_UPLOAD_TIMEOUT_MS", "2000"),
    ])
    .await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("killed", None);
    let alice = member(&a, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&a, "u-alice");

    // 600 000 of a declared 900 000 bytes reach a, which stores two chunks, then dies.
    let mut s = std::net::TcpStream::connect(a.addr).unwrap();
    let mut head = format!("POST /upload HTTP/1.1\r\nHost: {}\r\n", a.addr);
    for (k, v) in upload_headers(&t, &mesh, &alice, &[]) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Content-Length: 900000\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body_of(600_000)).unwrap();
    eventually("a stored two chunks", async || {
        (metric(&a.metrics(), "broker_file_bytes_uploaded_total") >= 524_288.0).then_some(())
    })
    .await;
    drop(a);
    drop(s);

    // Nothing of it is visible through b.
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let list: FileList = parse(&al.request(json!({"type": "list_files"})).await);
    assert!(list.files.is_empty());
    // Its bytes count until it is stale (twice FILE_UPLOAD_TIMEOUT_MS), then the next
    // upload drops it and fits.
    let id = eventually("the stale upload's bytes are released", async || {
        let r = upload(&b, &t, &mesh, &alice, &[], &body_of(600_000));
        (r.status == 200).then(|| r.json()["fileId"].as_str().unwrap().to_string())
    })
    .await;
    assert!(
        metric(
            &b.metrics(),
            "broker_file_requests_refused_total{reason=\"mesh_full\"}"
        ) >= 1.0
    );
    let got = download(&b, &format!("/download/{id}?mesh={mesh}"), Some(&t));
    assert!(got.body == body_of(600_000));
}

// ---------------------------------------------------------------------------------------
// Authorisation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn uploads_need_the_bearer_of_the_members_user_and_downloads_a_member() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("auth", None);
    let other_mesh = b.create_mesh("other", None);
    let alice = member(&b, &mesh, "alice", json!({"userId": "u-alice"}));
    let bob = member(&b, &mesh, "bob", json!({"userId": "u-bob"}));
    let stranger = member(&b, &other_mesh, "stranger", json!({"userId": "u-stranger"}));
    let (ta, tb, ts) = (
        cli_token(&b, "u-alice"),
        cli_token(&b, "u-bob"),
        cli_token(&b, "u-stranger"),
    );
    let head = |extra: Option<(&'static str, String)>| {
        let mut h: Vec<(&str, String)> = vec![
            ("X-Mesh-Id", mesh.clone()),
            ("X-Member-Id", alice.id.clone()),
        ];
        h.extend(extra);
        h
    };

    // The bearer check of the CLI routes (cli-routes §3), exactly.
    for (auth, status, error) in [
        (None, 401, "missing_bearer_token"),
        (
            Some(("Authorization", "Bearer ".to_string())),
            401,
            "empty_bearer_token",
        ),
        (Some(bearer("not-a-token")), 401, "invalid_or_revoked_token"),
    ] {
        let r = raw(b.addr, "POST", "/upload", &head(auth), Body::Length(b"x"));
        assert_eq!((r.status, r.json()), (status, json!({"error": error})));
    }
    // The bearer's user must own X-Member-Id, a member of X-Mesh-Id.
    for (token, member_id, mesh_id) in [
        (&tb, &alice.id, &mesh),
        (&ts, &stranger.id, &mesh),
        (&ta, &alice.id, &other_mesh),
    ] {
        let h = vec![
            bearer(token),
            ("X-Mesh-Id", mesh_id.clone()),
            ("X-Member-Id", member_id.clone()),
        ];
        let r = raw(b.addr, "POST", "/upload", &h, Body::Length(b"x"));
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["ok"], false);
    }
    let r = raw(
        b.addr,
        "POST",
        "/upload",
        &[bearer(&ta)],
        Body::Length(b"x"),
    );
    assert_eq!(r.status, 400);
    let bad_tags = upload(&b, &ta, &mesh, &alice, &[("X-Tags", "not json")], b"x");
    assert_eq!(bad_tags.status, 400);

    // Downloads: a bearer of a member of the mesh, or a valid signed token.
    let id = upload_ok(&b, &ta, &mesh, &alice, &[], b"payload");
    let plain = format!("/download/{id}?mesh={mesh}");
    assert_eq!(download(&b, &plain, Some(&tb)).body, b"payload");
    let r = download(&b, &plain, None);
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "missing_bearer_token"}))
    );
    let r = download(&b, &plain, Some(&ts));
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            json!({"ok": false, "error": "not a member of this mesh"})
        )
    );
    let r = download(&b, &format!("/download/{id}?mesh={other_mesh}"), Some(&ts));
    assert_eq!(r.status, 404, "a file of another mesh is not found");
    let r = download(&b, &format!("{plain}&token=forged.token.here"), None);
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            json!({"ok": false, "error": "download link invalid or expired"})
        )
    );
    let r = download(&b, &format!("/download/nope?mesh={mesh}"), Some(&tb));
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"ok": false, "error": "file not found"}))
    );

    // A signed URL names its file: it opens no other.
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let other = upload_ok(&b, &ta, &mesh, &alice, &[], b"other");
    let url: FileUrl = parse(&bo.request(json!({"type": "get_file", "fileId": id})).await);
    let token = url.url.split("token=").nth(1).unwrap().to_string();
    let r = download(
        &b,
        &format!("/download/{other}?mesh={mesh}&token={token}"),
        None,
    );
    assert_eq!(r.status, 403);

    // A file targeted at bob: carol is refused, bob is not.
    let carol = member(&b, &mesh, "carol", json!({"userId": "u-carol"}));
    let tc = cli_token(&b, "u-carol");
    let (mut ca, _) = Client::join(&b.ws_url(), carol.hello(&mesh, json!({}))).await;
    let for_bob = upload_ok(
        &b,
        &ta,
        &mesh,
        &alice,
        &[("X-Target-Spec", &bob.identity.pubkey)],
        b"for bob",
    );
    let v = ca
        .request(json!({"type": "get_file", "fileId": for_bob}))
        .await;
    assert_eq!(error_of(&v), pair("forbidden", "file not targeted at you"));
    let r = download(&b, &format!("/download/{for_bob}?mesh={mesh}"), Some(&tc));
    assert_eq!(r.status, 403);
    let url: FileUrl = parse(
        &bo.request(json!({"type": "get_file", "fileId": for_bob}))
            .await,
    );
    assert_eq!(download(&b, &path_of(&url.url), None).body, b"for bob");
    assert!(
        al.request(json!({"type": "get_file", "fileId": for_bob}))
            .await["type"]
            == "file_url"
    );

    // An encrypted file: only holders of a sealed key get a URL; the owner grants more.
    let keys = json!({alice.identity.pubkey.clone(): "a2V5LWFsaWNl",
                      bob.identity.pubkey.clone(): "a2V5LWJvYg=="})
    .to_string();
    let secret = upload_ok(
        &b,
        &ta,
        &mesh,
        &alice,
        &[
            ("X-Encrypted", "true"),
            ("X-Owner-Pubkey", &alice.identity.pubkey),
            ("X-File-Keys", &keys),
        ],
        b"ciphertext",
    );
    let url: FileUrl = parse(
        &bo.request(json!({"type": "get_file", "fileId": secret}))
            .await,
    );
    assert!(url.encrypted);
    assert_eq!(url.sealed_key.as_deref(), Some("a2V5LWJvYg=="));
    let url: FileUrl = parse(
        &al.request(json!({"type": "get_file", "fileId": secret}))
            .await,
    );
    assert_eq!(url.sealed_key.as_deref(), Some("a2V5LWFsaWNl"));
    let v = ca
        .request(json!({"type": "get_file", "fileId": secret}))
        .await;
    assert_eq!(
        error_of(&v),
        pair("forbidden", "no decryption key for this file")
    );
    let grant = json!({"type": "grant_file_access", "fileId": secret,
                       "peerPubkey": carol.identity.pubkey, "sealedKey": "a2V5LWNhcm9s"});
    let v = bo.request(grant.clone()).await;
    assert_eq!(
        error_of(&v),
        pair("forbidden", "only the file owner can grant access")
    );
    let ok: GrantFileAccessOk = parse(&al.request(grant).await);
    assert_eq!(ok.peer_pubkey, carol.identity.pubkey);
    let url: FileUrl = parse(
        &ca.request(json!({"type": "get_file", "fileId": secret}))
            .await,
    );
    assert_eq!(url.sealed_key.as_deref(), Some("a2V5LWNhcm9s"));

    // The access log and deletes: the uploader or an admin only.
    let v = bo
        .request(json!({"type": "file_status", "fileId": id}))
        .await;
    assert_eq!(error_of(&v).0, "forbidden");
    let v = bo
        .request(json!({"type": "delete_file", "fileId": id}))
        .await;
    assert_eq!(error_of(&v).0, "forbidden");
    let ack = al
        .request(json!({"type": "delete_file", "fileId": id}))
        .await;
    assert_eq!(
        (ack["type"].clone(), ack["queued"].clone()),
        (json!("ack"), json!(false))
    );
    let v = bo.request(json!({"type": "get_file", "fileId": id})).await;
    assert_eq!(error_of(&v), pair("not_found", "file not found"));
    assert_eq!(
        download(&b, &plain, Some(&tb)).status,
        404,
        "a deleted file is gone"
    );
    let list: FileList = parse(&bo.request(json!({"type": "list_files"})).await);
    assert!(list.files.iter().all(|f| f.id != id));
    assert!(
        metric(
            &b.metrics(),
            "broker_file_requests_refused_total{reason=\"unauthorized\"}"
        ) >= 3.0
    );
}

// ---------------------------------------------------------------------------------------
// Bounds (dev mode: the memory store, the same bounds)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn dev_mode_bounds_files_per_file_and_per_mesh() {
    // The default per-file bound, refused from the Content-Length before any body byte.
    let d = Broker::start(&[]);
    let mesh = d.create_mesh("default", None);
    let alice = member(&d, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&d, "u-alice");
    let r = raw(
        d.addr,
        "POST",
        "/upload",
        &upload_headers(&t, &mesh, &alice, &[]),
        Body::Claim(50 * 1024 * 1024 + 1),
    );
    assert_eq!(
        (r.status, r.json()),
        (
            413,
            json!({"ok": false, "error": "file too large (max 50MB)"})
        )
    );
    drop(d);

    let b = Broker::start(&[
        ("MAX_FILE_BYTES", "300000"),
        ("MAX_MESH_FILE_BYTES", "700000"),
        ("MAX_FILES_PER_MESH", "3"),
    ]);
    let mesh = b.create_mesh("bounds", None);
    let alice = member(&b, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&b, "u-alice");
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;

    // Exactly the bound is accepted; one byte more is refused, streamed without a length too.
    let full = upload_ok(&b, &t, &mesh, &alice, &[], &body_of(300_000));
    let r = upload(&b, &t, &mesh, &alice, &[], &body_of(300_001));
    assert_eq!(r.status, 413);
    assert_eq!(
        r.json(),
        json!({"ok": false, "error": "file too large (max 1MB)"})
    );
    let r = raw(
        b.addr,
        "POST",
        "/upload",
        &upload_headers(&t, &mesh, &alice, &[]),
        Body::Chunked(&body_of(300_001)),
    );
    assert_eq!(r.status, 413);
    let list: FileList = parse(&al.request(json!({"type": "list_files"})).await);
    assert_eq!(list.files.len(), 1, "nothing of a refused upload stays");
    let chunked = raw(
        b.addr,
        "POST",
        "/upload",
        &upload_headers(&t, &mesh, &alice, &[]),
        Body::Chunked(&body_of(290_000)),
    );
    assert_eq!(chunked.status, 200);
    let chunked_id = chunked.json()["fileId"].as_str().unwrap().to_string();
    let got = download(&b, &format!("/download/{chunked_id}?mesh={mesh}"), Some(&t));
    assert!(got.body == body_of(290_000));

    // The mesh budget (590 000 of 700 000 used).
    let r = upload(&b, &t, &mesh, &alice, &[], &body_of(200_000));
    assert_eq!(
        (r.status, r.json()),
        (
            413,
            json!({"ok": false, "error": "mesh file storage is full (max 1MB)"})
        )
    );
    upload_ok(&b, &t, &mesh, &alice, &[], &body_of(100_000));
    // The file-count bound.
    let r = upload(&b, &t, &mesh, &alice, &[], b"x");
    assert_eq!(r.status, 413);
    assert_eq!(
        r.json()["error"],
        "this mesh already holds 3 files (MAX_FILES_PER_MESH)"
    );
    // A delete releases both.
    let ack = al
        .request(json!({"type": "delete_file", "fileId": full}))
        .await;
    assert_eq!(ack["type"], "ack");
    upload_ok(&b, &t, &mesh, &alice, &[], &body_of(200_000));

    // Header bounds.
    let long = "n".repeat(256);
    assert_eq!(
        upload(&b, &t, &mesh, &alice, &[("X-File-Name", &long)], b"x").status,
        400
    );
    let tags = serde_json::to_string(&vec!["t"; 33]).unwrap();
    assert_eq!(
        upload(&b, &t, &mesh, &alice, &[("X-Tags", &tags)], b"x").status,
        400
    );

    let m = b.metrics();
    assert!(
        metric(
            &m,
            "broker_file_requests_refused_total{reason=\"too_large\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            "broker_file_requests_refused_total{reason=\"mesh_full\"}"
        ) >= 2.0
    );
    assert!(metric(&m, "broker_file_bytes_uploaded_total") >= 890_000.0);
}

// ---------------------------------------------------------------------------------------
// What the CLI sends (§0.2)
// ---------------------------------------------------------------------------------------

/// The frames as the CLI sends them (no `_reqId`: tolerant matching by type) get the reply
/// types and the fields the CLI reads; with `_reqId` it is echoed.
#[tokio::test]
async fn the_cli_frames_get_the_replies_the_cli_matches() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("cli", None);
    let alice = member(&b, &mesh, "alice", json!({"userId": "u-alice"}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let t = cli_token(&b, "u-alice");
    let id = upload_ok(
        &b,
        &t,
        &mesh,
        &alice,
        &[("X-Persistent", "false")],
        b"hello",
    );
    upload_ok(&b, &t, &mesh, &alice, &[("X-File-Name", "notes.txt")], b"n");
    // CORS as the CLI routes answer it (a browser front end may upload).
    let pre = raw(b.addr, "OPTIONS", "/upload", &[], Body::None);
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("X-File-Keys")
    );
    let up = upload(&b, &t, &mesh, &alice, &[], b"cors");
    assert_eq!(up.header("access-control-allow-origin"), Some("*"));
    let cors_id = up.json()["fileId"].as_str().unwrap().to_string();
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack = c
        .request(json!({"type": "delete_file", "fileId": cors_id}))
        .await;
    assert_eq!(ack["type"], "ack");

    c.send(json!({"type": "list_files", "query": "REPORT", "from": "alice"}))
        .await;
    let v = c.expect("file_list").await;
    assert!(v.get("_reqId").is_none());
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    for field in [
        "id",
        "name",
        "size",
        "tags",
        "uploadedBy",
        "uploadedAt",
        "persistent",
        "encrypted",
    ] {
        assert!(files[0].get(field).is_some(), "{field} in {v}");
    }
    assert_eq!(files[0]["persistent"], false);
    assert!(files[0]["uploadedAt"].as_str().unwrap().ends_with('Z'));

    c.send(json!({"type": "get_file", "fileId": id})).await;
    let v = c.expect("file_url").await;
    assert_eq!(v["fileId"], id.as_str());
    assert_eq!(v["encrypted"], false);
    assert!(v.get("sealedKey").is_none());
    assert!(v["url"].as_str().unwrap().starts_with("http://"));
    assert_eq!(v["name"], "report final.pdf");

    c.send(json!({"type": "file_status", "fileId": id})).await;
    let v = c.expect("file_status_result").await;
    assert_eq!(v["fileId"], id.as_str());
    assert_eq!(v["accesses"][0]["peerName"], "alice");
    assert!(v["accesses"][0]["accessedAt"].is_string());

    c.send(json!({"type": "grant_file_access", "fileId": id,
                  "peerPubkey": bob.identity.pubkey, "sealedKey": "c2VhbGVk"}))
        .await;
    let v = c.expect("grant_file_access_ok").await;
    assert_eq!(
        v,
        json!({"type": "grant_file_access_ok", "fileId": id, "peerPubkey": bob.identity.pubkey})
    );

    let v = c
        .request(json!({"type": "get_file", "fileId": "doesnotexist"}))
        .await;
    assert_eq!(error_of(&v), pair("not_found", "file not found"));
    let v = c.request(json!({"type": "list_files"})).await;
    assert_eq!(v["type"], "file_list");
    assert_eq!(
        v["files"].as_array().unwrap().len(),
        2,
        "newest first, both"
    );
    let at = |i: usize| v["files"][i]["uploadedAt"].as_str().unwrap().to_string();
    assert!(at(0) >= at(1), "newest first: {v}");

    c.send(json!({"type": "delete_file", "fileId": id})).await;
    let v = c.expect("ack").await;
    assert_eq!(
        v,
        json!({"type": "ack", "id": id, "messageId": id, "queued": false})
    );
    let v = c
        .request(json!({"type": "delete_file", "fileId": id}))
        .await;
    assert_eq!(error_of(&v), pair("not_found", "file not found"));
    let v = c.request(json!({"type": "get_file"})).await;
    assert_eq!(
        error_of(&v).0,
        "not_found",
        "a frame without fileId is not malformed"
    );
}

/// With `FILES_ENABLED=false` the routes answer the spec's 501 and the frames are refused
/// as §0.3 says (a typed empty `file_list`, `unsupported` for the others).
#[tokio::test]
async fn with_file_storage_off_the_routes_answer_501_and_the_frames_are_refused() {
    let b = Broker::start(&[("FILES_ENABLED", "false")]);
    let mesh = b.create_mesh("off", None);
    let alice = member(&b, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&b, "u-alice");
    let off = json!({"ok": false, "error": "file storage is not available on this broker"});
    let r = upload(&b, &t, &mesh, &alice, &[], b"x");
    assert_eq!((r.status, r.json()), (501, off.clone()));
    let r = raw(b.addr, "POST", "/upload", &[], Body::Length(b"x"));
    assert_eq!((r.status, r.json()), (501, off.clone()));
    let r = download(&b, &format!("/download/x?mesh={mesh}"), None);
    assert_eq!((r.status, r.json()), (501, off));

    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let v = c.request(json!({"type": "list_files"})).await;
    assert_eq!(v["type"], "file_list");
    assert_eq!(v["files"], json!([]));
    let v = c.request(json!({"type": "get_file", "fileId": "f1"})).await;
    assert_eq!(
        error_of(&v),
        pair(
            "unsupported",
            "get_file: file sharing is not available on this broker (needs file storage: FILES_ENABLED)"
        )
    );
}

/// A `get_file` URL stops working after `FILE_URL_TTL_MS`; the bearer route still works.
#[tokio::test]
async fn a_download_url_expires_after_its_lifetime() {
    let b = Broker::start(&[("FILE_URL_TTL_MS", "1000")]);
    let mesh = b.create_mesh("ttl", None);
    let alice = member(&b, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&b, "u-alice");
    let id = upload_ok(&b, &t, &mesh, &alice, &[], b"short-lived");
    let (mut al, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let url: FileUrl = parse(&al.request(json!({"type": "get_file", "fileId": id})).await);
    let signed = path_of(&url.url);
    assert_eq!(download(&b, &signed, None).body, b"short-lived");
    eventually("the URL expires", async || {
        (download(&b, &signed, None).status == 403).then_some(())
    })
    .await;
    assert_eq!(
        download(&b, &format!("/download/{id}?mesh={mesh}"), Some(&t)).body,
        b"short-lived"
    );
}

/// A banned member's download URL and bearer stop working at once.
#[tokio::test]
async fn a_banned_member_downloads_nothing() {
    let b = Broker::start(&[]);
    let mesh = b.create_mesh("ban", Some("u-owner"));
    let owner = member(&b, &mesh, "owner", json!({"userId": "u-owner"}));
    let bob = member(&b, &mesh, "bob", json!({"userId": "u-bob"}));
    let (to, tb) = (cli_token(&b, "u-owner"), cli_token(&b, "u-bob"));
    let id = upload_ok(&b, &to, &mesh, &owner, &[], b"members only");
    let (mut co, _) = Client::join(&b.ws_url(), owner.hello(&mesh, json!({}))).await;
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let url: FileUrl = parse(&bo.request(json!({"type": "get_file", "fileId": id})).await);
    let signed = path_of(&url.url);
    let plain = format!("/download/{id}?mesh={mesh}");
    assert_eq!(download(&b, &signed, None).status, 200);
    let ack = co
        .request(ClientFrame::Ban(ban_request(&bob.identity.pubkey)))
        .await;
    assert_ne!(ack["type"], "error", "{ack}");
    eventually("bob's URL is refused", async || {
        (download(&b, &signed, None).status == 403).then_some(())
    })
    .await;
    let r = download(&b, &plain, Some(&tb));
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            json!({"ok": false, "error": "not a member of this mesh"})
        )
    );
    let r = upload(&b, &tb, &mesh, &bob, &[], b"x");
    assert_eq!(r.status, 403);
    assert_eq!(download(&b, &plain, Some(&to)).body, b"members only");
}

// ---------------------------------------------------------------------------------------
// An S3-compatible object store for the bodies (FILES_S3_*), against moto's S3 server
// ---------------------------------------------------------------------------------------

use common::s3::Moto;

/// A cluster whose replicas keep file bodies in `moto` (with `extra` settings).
async fn s3_cluster(moto: &Moto, extra: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new(extra).await;
    c.extra.extend(moto.env());
    c
}

/// The body of `key` read straight from the store (a signed GET); `None` on its 404.
async fn object(moto: &Moto, key: &str) -> Option<Vec<u8>> {
    use http_body_util::BodyExt;
    let resp = moto.objects().get(key).await.unwrap()?;
    Some(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

/// A GET of an absolute `http://127.0.0.1:<port>/…` URL (a presigned one).
fn get_url(url: &str) -> Resp {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, _) = rest.split_once('/').unwrap();
    raw(host.parse().unwrap(), "GET", &path_of(url), &[], Body::None)
}

#[tokio::test]
async fn s3_bodies_upload_through_a_download_through_b_proxied_and_presigned_and_survive_restarts()
{
    let moto = Moto::start().await;
    let mut c = s3_cluster(&moto, &[]).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("s3files", None);
    let alice = member(&a, &mesh, "alice", json!({"userId": "u-alice"}));
    let bob = member(&a, &mesh, "bob", json!({"userId": "u-bob"}));
    let (ta, tb) = (cli_token(&a, "u-alice"), cli_token(&b, "u-bob"));

    // Past one part (5 MiB): a multipart upload of three parts; and a one-PUT small file.
    let big = body_of(2 * 5 * 1024 * 1024 + 4321);
    let id = upload_ok(&a, &ta, &mesh, &alice, &[], &big);
    let small = upload_ok(&a, &ta, &mesh, &alice, &[], b"small body");
    let chunked = {
        let r = raw(
            a.addr,
            "POST",
            "/upload",
            &upload_headers(&ta, &mesh, &alice, &[]),
            Body::Chunked(&big[..6 * 1024 * 1024]),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["fileId"].as_str().unwrap().to_string()
    };

    // The bodies are objects of the bucket, not rows.
    assert!(object(&moto, &format!("files/{mesh}/{id}")).await.unwrap() == big);
    assert_eq!(
        object(&moto, &format!("files/{mesh}/{small}"))
            .await
            .unwrap(),
        b"small body"
    );
    let mut keys = moto.keys().await;
    keys.sort();
    let mut want = vec![
        format!("files/{mesh}/{id}"),
        format!("files/{mesh}/{small}"),
        format!("files/{mesh}/{chunked}"),
    ];
    want.sort();
    assert_eq!(keys, want);

    // Proxied through b: by bearer, and by the signed URL of a get_file on b.
    let by_bearer = download(&b, &format!("/download/{id}?mesh={mesh}"), Some(&tb));
    assert_eq!(by_bearer.status, 200);
    assert_eq!(
        by_bearer.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    assert!(
        by_bearer.body == big,
        "the bytes read through b are the ones uploaded through a"
    );
    let (mut bo, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let url: FileUrl = parse(&bo.request(json!({"type": "get_file", "fileId": id})).await);
    assert!(
        url.url
            .contains(&format!("/download/{id}?mesh={mesh}&token="))
    );
    assert!(download(&b, &path_of(&url.url), None).body == big);
    assert!(
        download(&b, &format!("/download/{chunked}?mesh={mesh}"), Some(&tb)).body
            == big[..6 * 1024 * 1024]
    );
    bo.close().await;

    // A replica with FILES_S3_PRESIGN: get_file hands out a presigned GET of the object,
    // and the download route redirects to one; both read the same bytes from the store.
    c.extra.push(("FILES_S3_PRESIGN".into(), "true".into()));
    let p = c.replica("p");
    let (mut bo, _) = Client::join(&p.ws_url(), bob.hello(&mesh, json!({}))).await;
    let url: FileUrl = parse(&bo.request(json!({"type": "get_file", "fileId": id})).await);
    assert!(
        url.url.starts_with(&format!(
            "{}/{}/files/{mesh}/{id}?",
            moto.endpoint(),
            common::s3::BUCKET
        )),
        "{}",
        url.url
    );
    assert!(url.url.contains("X-Amz-Signature="), "{}", url.url);
    assert!(!url.url.contains(common::s3::SECRET_KEY));
    let direct = get_url(&url.url);
    assert_eq!(direct.status, 200);
    assert!(direct.body == big, "the presigned URL reads the object");
    let redirect = download(&p, &format!("/download/{small}?mesh={mesh}"), Some(&tb));
    assert_eq!(redirect.status, 302);
    let location = redirect.header("location").unwrap().to_string();
    assert!(location.starts_with(&moto.endpoint()), "{location}");
    assert_eq!(get_url(&location).body, b"small body");
    bo.close().await;
    drop(p);
    c.extra.pop();
    assert!(
        !a.log_text().contains(common::s3::SECRET_KEY)
            && !b.log_text().contains(common::s3::SECRET_KEY),
        "the secret is never logged"
    );

    // Every replica restarts: metadata in PostgreSQL, bodies in the bucket.
    drop((a, b));
    let (a2, b2) = (c.replica("a2"), c.replica("b2"));
    let again = download(&b2, &format!("/download/{id}?mesh={mesh}"), Some(&tb));
    assert_eq!(again.status, 200);
    assert!(again.body == big, "intact after the restart");

    // A delete through b2 removes the object (a signed GET of it is a 404).
    let (mut al, _) = Client::join(&b2.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack = al
        .request(json!({"type": "delete_file", "fileId": id}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(
        object(&moto, &format!("files/{mesh}/{id}")).await.is_none(),
        "the deleted file's object is gone"
    );
    assert_eq!(
        download(&a2, &format!("/download/{id}?mesh={mesh}"), Some(&ta)).status,
        404
    );
    let list: FileList = parse(&al.request(json!({"type": "list_files"})).await);
    assert_eq!(list.files.len(), 2);
    al.close().await;
}

#[tokio::test]
async fn s3_the_file_limit_holds_and_an_unreachable_store_leaves_nothing_half_stored() {
    let mut moto = Moto::start().await;
    // Over one part, under two: the limit is passed during the multipart upload.
    let c = s3_cluster(
        &moto,
        &[
            ("MAX_FILE_BYTES", "6000000"),
            ("MAX_MESH_FILE_BYTES", "20000000"),
        ],
    )
    .await;
    let a = c.replica("a");
    let mesh = a.create_mesh("s3limits", None);
    let alice = member(&a, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&a, "u-alice");

    // Declared too large: refused before the body; streamed too large (chunked): refused
    // after the first part went up, and that part's upload aborted.
    let r = raw(
        a.addr,
        "POST",
        "/upload",
        &upload_headers(&t, &mesh, &alice, &[]),
        Body::Claim(6_000_001),
    );
    assert_eq!(r.status, 413);
    assert_eq!(
        r.json(),
        json!({"ok": false, "error": "file too large (max 6MB)"})
    );
    let r = raw(
        a.addr,
        "POST",
        "/upload",
        &upload_headers(&t, &mesh, &alice, &[]),
        Body::Chunked(&body_of(6_000_001)),
    );
    assert_eq!(r.status, 413);
    assert!(
        moto.keys().await.is_empty(),
        "no object of a refused upload"
    );

    // The store stops: an upload answers 503 with a clear error, and nothing stays.
    moto.stop();
    let r = upload(&a, &t, &mesh, &alice, &[], &body_of(100_000));
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        json!({"ok": false, "error": "file object store unavailable"})
    );
    let r = upload(&a, &t, &mesh, &alice, &[], &body_of(5_500_000));
    assert_eq!(r.status, 503);
    assert!(
        metric(
            &a.metrics(),
            "broker_file_requests_refused_total{reason=\"object_store\"}"
        ) >= 2.0
    );
    let (mut al, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let list: FileList = parse(&al.request(json!({"type": "list_files"})).await);
    assert!(list.files.is_empty(), "a failed upload is never listed");

    // Back (moto restarts empty): the budget was released, so 3 × 5.5 MB of the 20 MB fit.
    moto.restart().await;
    moto.objects().create_bucket().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(upload_ok(&a, &t, &mesh, &alice, &[], &body_of(5_500_000)));
    }
    let over = upload(&a, &t, &mesh, &alice, &[], &body_of(5_500_000));
    assert_eq!(over.status, 413, "the mesh budget counts object bytes too");
    assert_eq!(moto.keys().await.len(), 3);

    // A download while the store is down: 503, not a wrong or empty 200.
    moto.stop();
    let r = download(&a, &format!("/download/{}?mesh={mesh}", ids[0]), Some(&t));
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        json!({"ok": false, "error": "file object store unavailable"})
    );
    al.close().await;
}

#[tokio::test]
async fn s3_orphaned_objects_are_swept_and_live_ones_kept() {
    let moto = Moto::start().await;
    let c = s3_cluster(
        &moto,
        &[
            ("FILE_UPLOAD_TIMEOUT_MS", "500"),
            ("FILES_S3_SWEEP_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let a = c.replica("a");
    let mesh = a.create_mesh("s3sweep", None);
    let alice = member(&a, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&a, "u-alice");
    let live = upload_ok(&a, &t, &mesh, &alice, &[], b"live");
    // What a crash between an object and its row leaves: an object without a visible row.
    let orphan = format!("files/{mesh}/orphan0000000000000000000000000000");
    moto.objects()
        .put(&orphan, bytes::Bytes::from_static(b"orphan"))
        .await
        .unwrap();
    let outside = "elsewhere/not-ours".to_string();
    moto.objects()
        .put(&outside, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + 3 * WAIT;
    while object(&moto, &orphan).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was never swept; log:\n{}",
            a.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(metric(&a.metrics(), "broker_file_objects_swept_total") >= 1.0);
    assert_eq!(
        object(&moto, &format!("files/{mesh}/{live}"))
            .await
            .unwrap(),
        b"live",
        "a visible file's object stays"
    );
    assert!(
        object(&moto, &outside).await.is_some(),
        "keys outside the prefix are not ours"
    );
    assert_eq!(
        download(&a, &format!("/download/{live}?mesh={mesh}"), Some(&t)).body,
        b"live"
    );
}

/// Dev mode (the memory store) with an object store: the same budget, the same bodies.
#[tokio::test]
async fn s3_in_dev_mode_bodies_are_objects_and_the_mesh_budget_counts_them() {
    let moto = Moto::start().await;
    let mut env = moto.env();
    env.push(("MAX_MESH_FILE_BYTES".into(), "8000000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Broker::start(&env);
    let mesh = d.create_mesh("devs3", None);
    let alice = member(&d, &mesh, "alice", json!({"userId": "u-alice"}));
    let t = cli_token(&d, "u-alice");
    let body = body_of(6 * 1024 * 1024);
    let id = upload_ok(&d, &t, &mesh, &alice, &[], &body);
    assert!(object(&moto, &format!("files/{mesh}/{id}")).await.unwrap() == body);
    assert!(download(&d, &format!("/download/{id}?mesh={mesh}"), Some(&t)).body == body);
    // 6 MiB of 8 MB held: another 6 MiB does not fit, and leaves no object.
    let over = upload(&d, &t, &mesh, &alice, &[], &body);
    assert_eq!(over.status, 413);
    assert_eq!(moto.keys().await, [format!("files/{mesh}/{id}")]);
    // The delete removes the object and releases the bytes.
    let (mut al, _) = Client::join(&d.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack = al
        .request(json!({"type": "delete_file", "fileId": id}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(
        object(&moto, &format!("files/{mesh}/{id}")).await.is_none(),
        "the deleted file's object is gone"
    );
    let again = upload_ok(&d, &t, &mesh, &alice, &[], &body);
    assert_eq!(moto.keys().await, [format!("files/{mesh}/{again}")]);
    al.close().await;
}
