//! The logged-in CLI's HTTP routes (`cli-routes.md`): device-code login, sessions, mesh
//! management for signed-in users, rename, `whoami`'s identity calls, `/cli-sync`, the
//! disabled v2 claim and the legacy shim. Everything is stateless over the store, so any
//! replica answers any call (a code created on one replica is polled on another).

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::warn;

use super::{BodyError, HttpResponse, json_response, read_json};
use crate::accounts::{self, net, token};
use crate::auth::bearer_matches;
use crate::cluster::bus::MeshEvent;
use crate::ids::{self, iso8601_ms, now_ms};
use crate::lifecycle::AfterClose;
use crate::node::Node;
use crate::protocol::codes;
use crate::protocol::signing::{self, InviteFields};
use crate::routing::ALL_CAPS;
use crate::store::accounts::{
    CliSession, Decision, DeviceCode, DeviceStatus, NewUser, Poll, User, UserMesh, UserPatch,
};
use crate::store::{Invite, Mesh, NewMember, Role, StoreError};

/// Longest device field (`hostname`, `platform`, `arch`) kept; longer ones are cut.
const MAX_DEVICE_FIELD: usize = 128;
/// Longest mesh name.
const MAX_MESH_NAME: usize = 128;
/// Most grant entries one `grants` call may carry.
const MAX_GRANT_ENTRIES: usize = 1024;

/// Whether `path` is one of this module's routes.
pub fn serves(path: &str) -> bool {
    path.starts_with("/cli/")
        || path == "/cli-sync"
        || path.starts_with("/api/cli/")
        || path.starts_with("/api/my/")
        || (path.starts_with("/invites/") && path.ends_with("/claim"))
}

/// What a handler needs of the request besides its body.
pub(super) struct Ctx {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub peer: Option<IpAddr>,
}

impl Ctx {
    pub fn of(req: &Request<Incoming>) -> Ctx {
        Ctx {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or("").to_string(),
            headers: req.headers().clone(),
            peer: net::peer(req.extensions()),
        }
    }

    pub fn public_http(&self, node: &Node) -> String {
        net::public_http(
            &node.config.accounts,
            &self.headers,
            self.peer,
            &self.local_host(node),
        )
    }

    pub fn public_ws(&self, node: &Node) -> String {
        net::public_ws(
            &node.config.accounts,
            &self.headers,
            self.peer,
            &self.local_host(node),
        )
    }

    fn local_host(&self, node: &Node) -> String {
        format!("{}:{}", node.config.host, node.config.port)
    }

    pub fn client_ip(&self, node: &Node) -> Option<IpAddr> {
        net::client_ip(&node.config.accounts, &self.headers, self.peer)
    }

    fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// Decodes `%XX` and `+` of a query or form value.
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reply(status: StatusCode, body: Value) -> HttpResponse {
    json_response(status, &body)
}

fn error(status: StatusCode, text: &str) -> HttpResponse {
    reply(status, json!({"error": text}))
}

fn plain_not_found() -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"not found")));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn add_cors(resp: &mut HttpResponse) {
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(
            "Content-Type, Authorization, X-Mesh-Id, X-Member-Id, X-File-Name, X-Tags, X-Persistent, X-Target-Spec",
        ),
    );
}

/// A request body: parsed, not JSON, or over `MAX_MESSAGE_BYTES`.
enum Body {
    Json(Value),
    Invalid,
    TooLarge,
}

async fn body_of(node: &Node, req: Request<Incoming>) -> Body {
    match read_json(req, node.config.max_message_bytes).await {
        Ok(v) => Body::Json(v),
        Err(BodyError::TooLarge) => Body::TooLarge,
        Err(BodyError::Invalid(_)) => Body::Invalid,
    }
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn device_field(v: &Value, name: &str) -> Option<String> {
    str_field(v, name).map(|s| s.chars().take(MAX_DEVICE_FIELD).collect())
}

pub async fn handle(node: &Node, req: Request<Incoming>) -> HttpResponse {
    let mut resp = dispatch(node, req).await;
    add_cors(&mut resp);
    resp
}

async fn dispatch(node: &Node, req: Request<Incoming>) -> HttpResponse {
    let ctx = Ctx::of(&req);
    if ctx.method == Method::OPTIONS {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        return r;
    }
    let path = ctx.path.trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let body = match (&ctx.method, segments.as_slice()) {
        (&Method::GET, _) => Body::Json(Value::Object(Default::default())),
        _ => body_of(node, req).await,
    };
    if matches!(body, Body::TooLarge) {
        node.metrics.reject_account("too_large");
        return if path == "/cli-sync" {
            reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"ok": false, "error": "payload too large"}),
            )
        } else {
            error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
        };
    }
    match (&ctx.method, segments.as_slice()) {
        (&Method::POST, ["cli", "device-code"]) => device_code_new(node, &ctx, body).await,
        (&Method::GET, ["cli", "device-code", code]) => device_code_poll(node, code).await,
        (&Method::POST, ["cli", "device-code", code, "approve"]) => {
            device_code_approve(node, &ctx, code, body).await
        }
        (&Method::POST, ["cli", "session", "revoke"]) => session_revoke(node, body).await,
        (&Method::GET, ["cli", "sessions"]) => sessions(node, &ctx).await,
        (&Method::POST, ["cli", "token"]) => mint_token_route(node, &ctx, body).await,
        (&Method::GET, ["cli", "meshes"]) => {
            let legacy = ctx.query_param("user_id");
            with_caller(node, &ctx, legacy.as_deref(), "meshes", async |c| {
                list_meshes(node, &ctx, &c).await
            })
            .await
        }
        (&Method::POST, ["cli", "mesh", "create"]) => {
            let Body::Json(b) = body else {
                return error(StatusCode::BAD_REQUEST, "Invalid body");
            };
            with_caller(node, &ctx, str_field(&b, "user_id"), "create", async |c| {
                create_mesh(node, &c, &b).await
            })
            .await
        }
        (&Method::POST, ["cli", "mesh", slug, "invite"]) => {
            let Body::Json(b) = body else {
                return error(StatusCode::BAD_REQUEST, "Invalid body");
            };
            with_caller(node, &ctx, str_field(&b, "user_id"), "invite", async |c| {
                invite(node, &ctx, &c, slug, &b).await
            })
            .await
        }
        (&Method::POST, ["cli", "mesh", slug, "grants"]) => {
            let Body::Json(b) = body else {
                return error(StatusCode::BAD_REQUEST, "Invalid body");
            };
            with_caller(node, &ctx, str_field(&b, "user_id"), "grants", async |c| {
                grants(node, &c, slug, &b).await
            })
            .await
        }
        (&Method::DELETE, ["cli", "mesh", slug]) => {
            let b = match body {
                Body::Json(b) => b,
                _ => Value::Null,
            };
            with_caller(node, &ctx, str_field(&b, "user_id"), "delete", async |c| {
                delete_mesh(node, &c, slug).await
            })
            .await
        }
        (&Method::PATCH, ["api", "cli", "meshes", slug]) => rename(node, &ctx, slug, body).await,
        (&Method::GET, ["api", "my", "profile"]) => my_profile(node, &ctx).await,
        (&Method::GET, ["api", "my", "meshes"]) => my_meshes(node, &ctx).await,
        (&Method::POST, ["cli-sync"]) => cli_sync(node, &ctx, body).await,
        (&Method::POST, ["invites", _code, "claim"]) => reply(
            StatusCode::NOT_IMPLEMENTED,
            json!({"error": "invite_v2_disabled", "detail": "v2 claim flow is behind BROKER_INVITE_V2_ENABLED=1 until the ed25519 binding step ships"}),
        ),
        _ => plain_not_found(),
    }
}

// ---------------------------------------------------------------------------------------
// Authentication (`cli-routes.md` §3)

/// Who calls: a user by a verified session token, or (the shim) by a named id.
pub(super) struct Caller {
    pub user_id: String,
    pub legacy: bool,
}

/// Why a bearer token was refused.
pub(super) enum TokenRefusal {
    Invalid,
    StoreFailed,
}

/// Checks a CLI session token: HS256 signature and `exp`, then the stored hash (not
/// revoked, not expired, same user), then the user (exists, not disabled).
pub(super) async fn verify_session_token(
    node: &Node,
    raw: &str,
) -> Result<(User, CliSession), TokenRefusal> {
    let now = now_ms();
    let payload = token::verify(&node.config.accounts.session_secret, raw, now / 1000)
        .map_err(|_| TokenRefusal::Invalid)?;
    let session = node
        .store
        .cli_session_by_hash(&accounts::sha256_hex(raw.trim()))
        .await
        .map_err(|_| TokenRefusal::StoreFailed)?
        .filter(|s| s.is_live(now))
        .ok_or(TokenRefusal::Invalid)?;
    if payload.get("sub").and_then(Value::as_str) != Some(session.user_id.as_str()) {
        return Err(TokenRefusal::Invalid);
    }
    let user = node
        .store
        .user(&session.user_id)
        .await
        .map_err(|_| TokenRefusal::StoreFailed)?
        .filter(|u| !u.disabled)
        .ok_or(TokenRefusal::Invalid)?;
    // Best effort, as the reference.
    let _ = node.store.touch_cli_session(&session.id, now).await;
    Ok((user, session))
}

/// The bearer of `Authorization`: `None` without the `Bearer` scheme, `Some("")` empty.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(AUTHORIZATION)?.to_str().ok()?;
    if h == "Bearer" {
        return Some(String::new());
    }
    h.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

pub(super) async fn authenticate(
    node: &Node,
    ctx: &Ctx,
    legacy_user_id: Option<&str>,
    route: &'static str,
) -> Result<Caller, HttpResponse> {
    match bearer(&ctx.headers) {
        Some(t) if t.is_empty() => {
            node.metrics.reject_account("bearer");
            Err(error(StatusCode::UNAUTHORIZED, "empty_bearer_token"))
        }
        Some(t) => match verify_session_token(node, &t).await {
            Ok((user, _)) => Ok(Caller {
                user_id: user.id,
                legacy: false,
            }),
            Err(TokenRefusal::Invalid) => {
                node.metrics.reject_account("bearer");
                Err(error(StatusCode::UNAUTHORIZED, "invalid_or_revoked_token"))
            }
            Err(TokenRefusal::StoreFailed) => Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "auth_check_failed",
            )),
        },
        None => {
            let from_private = ctx.peer.is_some_and(net::is_private);
            match legacy_user_id.filter(|u| !u.is_empty()) {
                Some(uid) if node.config.accounts.legacy_auth && from_private => {
                    node.metrics.legacy_auth_hits.inc();
                    warn!(route, user_id = uid, "legacy auth accepted");
                    let user = node.store.user(uid).await.ok().flatten();
                    if user.as_ref().is_some_and(|u| u.disabled) {
                        return Err(error(StatusCode::UNAUTHORIZED, "missing_bearer_token"));
                    }
                    Ok(Caller {
                        user_id: uid.to_string(),
                        legacy: true,
                    })
                }
                _ => {
                    node.metrics.reject_account("bearer");
                    Err(error(StatusCode::UNAUTHORIZED, "missing_bearer_token"))
                }
            }
        }
    }
}

/// Runs `f` for the authenticated caller, adding the shim's headers to its answer.
async fn with_caller(
    node: &Node,
    ctx: &Ctx,
    legacy_user_id: Option<&str>,
    route: &'static str,
    f: impl AsyncFnOnce(Caller) -> HttpResponse,
) -> HttpResponse {
    let caller = match authenticate(node, ctx, legacy_user_id, route).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let legacy = caller.legacy;
    let mut resp = f(caller).await;
    if legacy {
        let h = resp.headers_mut();
        h.insert(
            HeaderName::from_static("deprecation"),
            HeaderValue::from_static(r#"version="legacy-body-userid"; sunset="2026-05-15""#),
        );
        h.insert(
            HeaderName::from_static("warning"),
            HeaderValue::from_static(
                r#"299 - "body.user_id auth is deprecated; send Authorization: Bearer <session_token>""#,
            ),
        );
    }
    resp
}

fn is_admin_bearer(node: &Node, headers: &HeaderMap) -> bool {
    let token = node.config.admin_token.as_deref().unwrap_or_default();
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    !token.is_empty() && bearer_matches(header, token)
}

// ---------------------------------------------------------------------------------------
// Device-code login (§5)

/// Takes a token of a cluster-wide bucket; `Err` is the answer when the request stops.
pub(super) async fn rate_limit(
    node: &Node,
    bucket: &str,
    per_min: u32,
    reason: &'static str,
) -> Result<(), HttpResponse> {
    if per_min == 0 {
        return Ok(());
    }
    match node
        .presence
        .take_send_token(
            &format!("acct:{}", accounts::sha256_hex(bucket)),
            per_min,
            per_min,
        )
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => {
            node.metrics.reject_account(reason);
            Err(error(StatusCode::TOO_MANY_REQUESTS, "rate limited"))
        }
        // Fail closed: no free pass while the limiter is down.
        Err(e) => {
            node.metrics.reject_account("unavailable");
            Err(error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))
        }
    }
}

async fn device_code_new(node: &Node, ctx: &Ctx, body: Body) -> HttpResponse {
    let ip = ctx.client_ip(node);
    let bucket = format!(
        "device-code:{}",
        ip.map(|i| i.to_string()).unwrap_or_default()
    );
    if let Err(resp) = rate_limit(
        node,
        &bucket,
        node.config.accounts.device_code_rate_per_min,
        "device_code_rate",
    )
    .await
    {
        return resp;
    }
    // A parse failure counts as `{}`.
    let b = match body {
        Body::Json(v) if v.is_object() => v,
        _ => json!({}),
    };
    let now = now_ms();
    let cfg = &node.config.accounts;
    let code = DeviceCode {
        id: format!("clm_sess_{}", accounts::random_code(32)),
        device_code: accounts::random_code(16),
        user_code: {
            let c = accounts::random_code(8);
            format!("{}-{}", &c[..4], &c[4..])
        },
        status: DeviceStatus::Pending,
        hostname: device_field(&b, "hostname"),
        platform: device_field(&b, "platform"),
        arch: device_field(&b, "arch"),
        client_ip: ip.map(|i| i.to_string()),
        user_id: None,
        expires_at: now + cfg.device_code_ttl_ms,
        created_at: now,
        approved_at: None,
    };
    match node
        .store
        .create_device_code(code.clone(), cfg.max_pending_device_codes)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Invalid(m)) => {
            node.metrics.reject_account("device_code_cap");
            return error(StatusCode::SERVICE_UNAVAILABLE, &m);
        }
        Err(e) => {
            warn!(error = %e, "device code not stored");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Failed to create device code",
            );
        }
    }
    let base = ctx.public_http(node);
    reply(
        StatusCode::OK,
        json!({
            "device_code": code.device_code,
            "user_code": code.user_code,
            "session_id": code.id,
            "expires_at": iso8601_ms(code.expires_at),
            "verification_url": format!("{base}/cli-auth"),
            "token_url": format!("{base}/token"),
        }),
    )
}

fn user_json(u: &User) -> Value {
    let display = if !u.display_name.is_empty() {
        u.display_name.as_str()
    } else if !u.email.is_empty() {
        u.email.as_str()
    } else {
        "User"
    };
    json!({"id": u.id, "display_name": display, "email": u.email})
}

/// Mints a session token for `user` and the session row holding its hash.
pub(super) fn mint(
    node: &Node,
    user: &User,
    kind: &str,
    device: (&Option<String>, &Option<String>, &Option<String>),
    device_code_id: Option<String>,
) -> (String, CliSession) {
    let now = now_ms();
    let ttl = node.config.accounts.cli_session_ttl_ms;
    let jti = uuid_like();
    let payload = token::session_payload(
        &user.id,
        &user.email,
        &user.display_name,
        kind,
        &jti,
        now / 1000,
        (now + ttl) / 1000,
    );
    let raw = token::sign(&node.config.accounts.session_secret, &payload);
    let session = CliSession {
        id: jti,
        user_id: user.id.clone(),
        token_hash: accounts::sha256_hex(&raw),
        device_code_id,
        hostname: device.0.clone(),
        platform: device.1.clone(),
        arch: device.2.clone(),
        created_at: now,
        last_seen_at: None,
        expires_at: now + ttl,
        revoked_at: None,
    };
    (raw, session)
}

/// A random UUID v4 in its text form.
fn uuid_like() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

async fn device_code_poll(node: &Node, device_code: &str) -> HttpResponse {
    let failed = || {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to poll device code",
        )
    };
    let now = now_ms();
    let poll = match node.store.poll_device_code(device_code, now).await {
        Ok(p) => p,
        Err(_) => return failed(),
    };
    let status = match poll {
        Poll::Expired | Poll::Denied => "expired",
        Poll::Pending => "pending",
        Poll::Consumed => "consumed",
        Poll::Approved(dc) => {
            let Some(uid) = dc.user_id.clone() else {
                return failed();
            };
            let user = match node.store.user(&uid).await {
                Ok(Some(u)) if !u.disabled => u,
                Ok(_) => return reply(StatusCode::OK, json!({"status": "expired"})),
                Err(_) => return failed(),
            };
            let (raw, session) = mint(
                node,
                &user,
                "cli-session",
                (&dc.hostname, &dc.platform, &dc.arch),
                Some(dc.id.clone()),
            );
            return match node
                .store
                .consume_device_code(
                    &dc.id,
                    session,
                    node.config.accounts.max_cli_sessions_per_user,
                    now,
                )
                .await
            {
                Ok(true) => reply(
                    StatusCode::OK,
                    json!({"status": "approved", "session_token": raw, "user": user_json(&user)}),
                ),
                Ok(false) => reply(StatusCode::OK, json!({"status": "consumed"})),
                Err(_) => failed(),
            };
        }
    };
    reply(StatusCode::OK, json!({"status": status}))
}

/// Creates the user named by a trusted front end, or updates its email and name.
async fn upsert_user(
    node: &Node,
    id: &str,
    email: &str,
    name: Option<&str>,
) -> Result<User, StoreError> {
    let name = name.filter(|n| !n.trim().is_empty()).unwrap_or(email);
    match node.store.user(id).await? {
        Some(u) => {
            node.store
                .update_user(
                    &u.id,
                    UserPatch {
                        display_name: Some(name.to_string()),
                        email: Some(email.to_string()),
                        ..UserPatch::default()
                    },
                )
                .await
        }
        None => {
            node.store
                .create_user(NewUser {
                    id: Some(id.to_string()),
                    email: email.to_string(),
                    display_name: name.to_string(),
                    password_hash: None,
                    is_admin: false,
                })
                .await
        }
    }
}

/// §5.3, accepted only from a trusted front end holding the admin token: the broker's own
/// approval is the `/cli-auth` page, bound to the signed-in account.
async fn device_code_approve(node: &Node, ctx: &Ctx, code: &str, body: Body) -> HttpResponse {
    if !is_admin_bearer(node, &ctx.headers) {
        node.metrics.reject_account("approve_unauthorized");
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Body::Json(b) = body else {
        return error(StatusCode::BAD_REQUEST, "Invalid body");
    };
    let (Some(uid), Some(email)) = (
        str_field(&b, "user_id").filter(|s| !s.is_empty()),
        str_field(&b, "email").filter(|s| !s.is_empty()),
    ) else {
        return error(StatusCode::BAD_REQUEST, "user_id and email required");
    };
    if uid.len() > 128 || email.len() > 320 {
        return error(StatusCode::BAD_REQUEST, "user_id and email required");
    }
    let failed = || {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to approve device code",
        )
    };
    let user = match upsert_user(node, uid, email, str_field(&b, "name")).await {
        Ok(u) => u,
        Err(_) => return failed(),
    };
    match node
        .store
        .decide_device_code(code, &user.id, true, now_ms())
        .await
    {
        Ok(Decision::Done) => reply(StatusCode::OK, json!({"ok": true})),
        Ok(Decision::NotFound) => error(StatusCode::NOT_FOUND, "Code not found or expired"),
        Ok(Decision::Expired) => error(StatusCode::GONE, "Code expired"),
        Err(_) => failed(),
    }
}

// ---------------------------------------------------------------------------------------
// Sessions (§6, §15)

async fn session_revoke(node: &Node, body: Body) -> HttpResponse {
    let Body::Json(b) = body else {
        return error(StatusCode::BAD_REQUEST, "Invalid body");
    };
    let Some(t) = str_field(&b, "token").filter(|t| !t.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "token required");
    };
    match node
        .store
        .revoke_cli_session_by_hash(&accounts::sha256_hex(t.trim()), now_ms())
        .await
    {
        Ok(found) => reply(StatusCode::OK, json!({"ok": true, "found": found})),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to revoke session",
        ),
    }
}

pub(super) fn session_json(s: &CliSession) -> Value {
    json!({
        "id": s.id, "hostname": s.hostname, "platform": s.platform, "arch": s.arch,
        "last_seen_at": s.last_seen_at.map(iso8601_ms), "created_at": iso8601_ms(s.created_at),
    })
}

async fn sessions(node: &Node, ctx: &Ctx) -> HttpResponse {
    let caller = match authenticate(node, ctx, None, "sessions").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match node.store.cli_sessions(&caller.user_id, now_ms()).await {
        Ok(list) => reply(
            StatusCode::OK,
            json!({"sessions": list.iter().map(session_json).collect::<Vec<_>>()}),
        ),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to list sessions"),
    }
}

/// `POST /cli/token`: a front end holding the admin token mints a token for a user.
async fn mint_token_route(node: &Node, ctx: &Ctx, body: Body) -> HttpResponse {
    if !is_admin_bearer(node, &ctx.headers) {
        node.metrics.reject_account("approve_unauthorized");
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Body::Json(b) = body else {
        return error(StatusCode::BAD_REQUEST, "Invalid body");
    };
    let (Some(uid), Some(email)) = (
        str_field(&b, "user_id").filter(|s| !s.is_empty() && s.len() <= 128),
        str_field(&b, "email").filter(|s| !s.is_empty() && s.len() <= 320),
    ) else {
        return error(StatusCode::BAD_REQUEST, "user_id and email required");
    };
    let failed = || {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to generate token",
        )
    };
    let user = match upsert_user(node, uid, email, str_field(&b, "name")).await {
        Ok(u) => u,
        Err(_) => return failed(),
    };
    let hostname = device_field(&b, "hostname").or_else(|| Some("paste-token".into()));
    let (raw, session) = mint(
        node,
        &user,
        "cli-token",
        (
            &hostname,
            &device_field(&b, "platform"),
            &device_field(&b, "arch"),
        ),
        None,
    );
    match node
        .store
        .insert_cli_session(session, node.config.accounts.max_cli_sessions_per_user)
        .await
    {
        Ok(()) => reply(StatusCode::OK, json!({"token": raw})),
        Err(_) => failed(),
    }
}

// ---------------------------------------------------------------------------------------
// Meshes (§7–§11)

async fn active_peers(node: &Node, mesh_id: &str) -> usize {
    node.presence
        .list(mesh_id)
        .await
        .map(|r| r.len())
        .unwrap_or(0)
}

async fn list_meshes(node: &Node, ctx: &Ctx, c: &Caller) -> HttpResponse {
    let meshes = match node.store.user_meshes(&c.user_id).await {
        Ok(m) => m,
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to list meshes"),
    };
    let broker_url = ctx.public_ws(node);
    let mut out = Vec::with_capacity(meshes.len());
    for um in &meshes {
        let role = um.member.as_ref().map_or("admin", |m| m.role.as_str());
        out.push(json!({
            "id": um.mesh.id, "slug": um.mesh.slug, "name": um.mesh.name, "role": role,
            "is_owner": um.is_owner, "member_count": um.member_count,
            "active_peers": active_peers(node, &um.mesh.id).await,
            "joined_at": iso8601_ms(um.member.as_ref().map_or(now_ms(), |m| m.created_at)),
            "broker_url": broker_url,
        }));
    }
    reply(StatusCode::OK, json!({"meshes": out}))
}

/// The name lower-cased, runs of other than `[a-z0-9]` turned into `-`, trimmed.
fn slugify(name: &str) -> String {
    let lowered: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let slug = lowered
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.chars()
        .take(48)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// The rename rule: `^[a-z0-9][a-z0-9-]{1,31}$`.
fn valid_slug(s: &str) -> bool {
    (2..=32).contains(&s.len())
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

async fn create_mesh(node: &Node, c: &Caller, b: &Value) -> HttpResponse {
    let failed = || error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to create mesh");
    let Some(name) = str_field(b, "name")
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return error(StatusCode::BAD_REQUEST, "name required");
    };
    if name.chars().count() > MAX_MESH_NAME {
        return error(
            StatusCode::BAD_REQUEST,
            "name too long (at most 128 characters)",
        );
    }
    // Ours: everything is validated before anything is written.
    let Some(pubkey) = str_field(b, "pubkey").filter(|k| signing::is_key_hex(k)) else {
        return error(StatusCode::BAD_REQUEST, "pubkey required (64 hex chars)");
    };
    let base = match str_field(b, "slug").filter(|s| !s.is_empty()) {
        Some(s)
            if s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            s.to_string()
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "slug may hold only a-z, 0-9 and '-' (at most 64)",
            );
        }
        None => slugify(name),
    };
    let base = if base.is_empty() {
        "mesh".to_string()
    } else {
        base
    };
    for n in 1..=100u32 {
        let slug = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        match node.store.slug_taken(&slug).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(_) => return failed(),
        }
        let seed = ids::random_seed();
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let mesh = Mesh {
            id: ids::random_id(32),
            slug: slug.clone(),
            name: name.to_string(),
            owner_user_id: Some(c.user_id.clone()),
            owner_seed_hex: hex::encode(seed),
            owner_pubkey: signing::pubkey_hex(&key),
            root_key: URL_SAFE_NO_PAD.encode(ids::random_seed()),
            created_at: now_ms(),
        };
        let owner = NewMember {
            pubkey: pubkey.to_string(),
            display_name: format!("{name}-owner"),
            role: Role::Admin,
            user_id: Some(c.user_id.clone()),
            default_groups: Vec::new(),
            role_tag: None,
        };
        let mesh_id = mesh.id.clone();
        match node.store.create_owned_mesh(mesh, owner).await {
            Ok(member) => {
                return reply(
                    StatusCode::OK,
                    json!({"id": mesh_id, "slug": slug, "name": name, "member_id": member.id}),
                );
            }
            // A racing create took the slug (or, in memory, an archived mesh holds it).
            Err(StoreError::Conflict(_)) => continue,
            Err(_) => return failed(),
        }
    }
    error(StatusCode::CONFLICT, "Too many meshes with this name")
}

async fn find_mesh(node: &Node, c: &Caller, slug: &str) -> Result<UserMesh, HttpResponse> {
    match node.store.user_mesh_by_slug(&c.user_id, slug).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "Mesh not found")),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to find mesh",
        )),
    }
}

async fn invite(node: &Node, ctx: &Ctx, c: &Caller, slug: &str, b: &Value) -> HttpResponse {
    let failed = || error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to create invite");
    let um = match find_mesh(node, c, slug).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if !um.is_owner {
        node.metrics.reject_account("not_owner");
        return error(StatusCode::FORBIDDEN, "Only the owner can invite (for now)");
    }
    let role = if str_field(b, "role") == Some("admin") {
        Role::Admin
    } else {
        Role::Member
    };
    let cfg = &node.config.accounts;
    let lifetime_s = match b.get("expires_in").and_then(Value::as_i64) {
        Some(s) if (60..=365 * 24 * 3600).contains(&s) => s,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "expires_in must be between 60 and 31536000 seconds",
            );
        }
        None => cfg.invite_ttl_ms / 1000,
    };
    let max_uses = match b.get("max_uses").and_then(Value::as_u64) {
        Some(n) if (1..=100_000).contains(&n) => n as u32,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "max_uses must be between 1 and 100000",
            );
        }
        None => cfg.invite_max_uses,
    };
    let mesh = um.mesh;
    let broker_url = ctx.public_ws(node);
    let expires_at = now_ms() / 1000 + lifetime_s;
    let fields = InviteFields {
        v: 1,
        mesh_id: &mesh.id,
        mesh_slug: &mesh.slug,
        broker_url: &broker_url,
        expires_at,
        mesh_root_key: &mesh.root_key,
        role: role.as_str(),
        owner_pubkey: &mesh.owner_pubkey,
    };
    let Ok(key) = signing::signing_key_from_seed_hex(&mesh.owner_seed_hex) else {
        return failed();
    };
    let signature = signing::sign_hex(&key, &signing::invite_text(&fields));
    for _ in 0..3 {
        let code = accounts::random_code(8);
        let payload = json!({
            "code": code, "v": 1, "mesh_id": mesh.id, "mesh_slug": mesh.slug, "broker_url": broker_url,
            "expires_at": expires_at, "mesh_root_key": mesh.root_key, "role": role.as_str(),
            "owner_pubkey": mesh.owner_pubkey, "signature": signature,
        });
        let token = URL_SAFE_NO_PAD.encode(payload.to_string());
        let invite = Invite {
            code: code.clone(),
            token: token.clone(),
            mesh_id: mesh.id.clone(),
            role,
            expires_at,
            max_uses: Some(max_uses),
            uses: 0,
            payload,
        };
        match node.store.create_invite(invite).await {
            Ok(()) => {
                let base = ctx.public_http(node);
                return reply(
                    StatusCode::OK,
                    json!({
                        "url": format!("{base}/join/{token}"), "code": code,
                        "expires_at": iso8601_ms(expires_at * 1000), "emailed": false,
                        "token": token, "link": format!("ic://join/{token}"),
                    }),
                );
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(_) => return failed(),
        }
    }
    failed()
}

async fn grants(node: &Node, c: &Caller, slug: &str, b: &Value) -> HttpResponse {
    let Some(map) = b.get("grants").and_then(Value::as_object) else {
        return error(StatusCode::BAD_REQUEST, "grants required");
    };
    if map.len() > MAX_GRANT_ENTRIES {
        return error(
            StatusCode::BAD_REQUEST,
            "too many grant entries (at most 1024)",
        );
    }
    let mut patch: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
    for (key, caps) in map {
        if !signing::is_key_hex(key) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("grant key {key:?} is not a 64-hex pubkey"),
            );
        }
        let caps = match caps {
            Value::Null => None,
            Value::Array(list) => {
                let mut out = Vec::with_capacity(list.len());
                for cap in list {
                    match cap.as_str() {
                        Some(s) if ALL_CAPS.contains(&s) => {
                            if !out.iter().any(|x: &String| x == s) {
                                out.push(s.to_string());
                            }
                        }
                        _ => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                &format!(
                                    "unknown capability {cap} (known: {})",
                                    ALL_CAPS.join(", ")
                                ),
                            );
                        }
                    }
                }
                Some(out)
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "grants values must be arrays or null",
                );
            }
        };
        patch.insert(key.clone(), caps);
    }
    let um = match find_mesh(node, c, slug).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(member) = um.member else {
        node.metrics.reject_account("not_member");
        return error(StatusCode::FORBIDDEN, "Not a member of this mesh");
    };
    match node
        .store
        .update_grants(&um.mesh.id, &member.id, patch)
        .await
    {
        Ok(merged) => {
            node.members_changed(&um.mesh.id).await;
            reply(StatusCode::OK, json!({"ok": true, "grants": merged}))
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to update grants"),
    }
}

/// Closes every live socket of the mesh, cluster-wide, `1000 disconnected`, for good.
async fn close_mesh_sockets(node: &Node, mesh_id: &str) {
    let conn_ids: Vec<String> = node
        .presence
        .list(mesh_id)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.conn_id)
        .collect();
    if conn_ids.is_empty() {
        return;
    }
    let (code, reason) = codes::DISCONNECTED.pair();
    let event = MeshEvent::Close {
        conn_ids,
        code,
        reason: reason.into(),
        after: AfterClose::End,
    };
    if let Err(e) = node.publish(mesh_id, event).await {
        warn!(error = %e, "archived mesh: close not published");
    }
}

async fn delete_mesh(node: &Node, c: &Caller, slug: &str) -> HttpResponse {
    let um = match find_mesh(node, c, slug).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if !um.is_owner {
        node.metrics.reject_account("not_owner");
        return error(StatusCode::FORBIDDEN, "Only the mesh owner can delete it");
    }
    if node
        .store
        .archive_mesh(&um.mesh.id, now_ms())
        .await
        .is_err()
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to delete mesh");
    }
    node.members_changed(&um.mesh.id).await;
    close_mesh_sockets(node, &um.mesh.id).await;
    reply(StatusCode::OK, json!({"ok": true, "deleted": slug}))
}

// ---------------------------------------------------------------------------------------
// Rename (§12) and the web-app identity calls (§13)

async fn rename(node: &Node, ctx: &Ctx, slug: &str, body: Body) -> HttpResponse {
    let Some(raw) = bearer(&ctx.headers).filter(|t| !t.is_empty()) else {
        return error(StatusCode::UNAUTHORIZED, "missing bearer token");
    };
    let user = match verify_session_token(node, &raw).await {
        Ok((u, _)) => u,
        Err(TokenRefusal::Invalid) => {
            node.metrics.reject_account("bearer");
            return error(StatusCode::UNAUTHORIZED, "invalid or expired token");
        }
        Err(TokenRefusal::StoreFailed) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "auth_check_failed");
        }
    };
    let Body::Json(b) = body else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON body");
    };
    let Some(new) = str_field(&b, "slug")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return error(StatusCode::BAD_REQUEST, "slug is required");
    };
    if !valid_slug(new) {
        return error(
            StatusCode::BAD_REQUEST,
            "slug must be 2-32 chars, lowercase alnum + hyphens, start with alnum",
        );
    }
    let um = match node.store.user_mesh_by_slug(&user.id, slug).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(StatusCode::NOT_FOUND, &format!("mesh \"{slug}\" not found")),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to rename mesh"),
    };
    if !um.is_owner {
        node.metrics.reject_account("not_owner");
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "you are signed in as a different account than the owner of \"{slug}\". Run `claudemesh logout && claudemesh login` and pick the owning account."
            ),
        );
    }
    if new != slug {
        match node.store.rename_mesh(&um.mesh.id, new).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return error(
                    StatusCode::CONFLICT,
                    &format!("slug \"{new}\" is already taken"),
                );
            }
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to rename mesh"),
        }
    }
    reply(StatusCode::OK, json!({"slug": new}))
}

async fn bearer_user(node: &Node, ctx: &Ctx) -> Result<User, HttpResponse> {
    let Some(raw) = bearer(&ctx.headers).filter(|t| !t.is_empty()) else {
        return Err(error(StatusCode::UNAUTHORIZED, "unauthorized"));
    };
    match verify_session_token(node, &raw).await {
        Ok((u, _)) => Ok(u),
        Err(TokenRefusal::Invalid) => {
            node.metrics.reject_account("bearer");
            Err(error(StatusCode::UNAUTHORIZED, "unauthorized"))
        }
        // Never a 401 for a token that may be valid: `whoami` deletes the login on a 401.
        Err(TokenRefusal::StoreFailed) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "auth_check_failed"))
        }
    }
}

async fn my_profile(node: &Node, ctx: &Ctx) -> HttpResponse {
    match bearer_user(node, ctx).await {
        Ok(u) => reply(StatusCode::OK, user_json(&u)),
        Err(r) => r,
    }
}

async fn my_meshes(node: &Node, ctx: &Ctx) -> HttpResponse {
    let user = match bearer_user(node, ctx).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match node.store.user_meshes(&user.id).await {
        Ok(list) => reply(
            StatusCode::OK,
            Value::Array(
                list.iter()
                    .map(|um| {
                        let role = if um.is_owner {
                            "owner"
                        } else {
                            um.member.as_ref().map_or("member", |m| m.role.as_str())
                        };
                        json!({"id": um.mesh.id, "slug": um.mesh.slug, "name": um.mesh.name,
                            "role": role, "member_count": um.member_count})
                    })
                    .collect(),
            ),
        ),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to list meshes"),
    }
}

// ---------------------------------------------------------------------------------------
// `/cli-sync` (§14)

fn sync_refuse(text: impl std::fmt::Display) -> HttpResponse {
    reply(
        StatusCode::BAD_REQUEST,
        json!({"ok": false, "error": text.to_string()}),
    )
}

/// `/cli-sync` with a sync token signed by this broker's session key (`sub` must be a
/// user of this broker). The `jti` set is in the store, so a token is used once
/// cluster-wide; created members get `user_id` = `sub`.
async fn cli_sync(node: &Node, ctx: &Ctx, body: Body) -> HttpResponse {
    let Body::Json(b) = body else {
        return sync_refuse("Invalid body");
    };
    let (Some(sync_token), Some(peer_pubkey), Some(display_name)) = (
        str_field(&b, "sync_token"),
        str_field(&b, "peer_pubkey"),
        str_field(&b, "display_name"),
    ) else {
        return sync_refuse("sync_token, peer_pubkey and display_name required");
    };
    if !signing::is_key_hex(peer_pubkey) {
        return sync_refuse("peer_pubkey must be 64 hex chars (32 bytes)");
    }
    let display_name: String = display_name.trim().chars().take(128).collect();
    let now = now_ms();
    let invalid = |why: &str| sync_refuse(format!("sync token invalid: {why}"));
    let payload = match token::verify(&node.config.accounts.session_secret, sync_token, now / 1000)
    {
        Ok(p) => p,
        Err(e) => return invalid(&e.to_string()),
    };
    if payload
        .get("iat")
        .and_then(Value::as_i64)
        .is_some_and(|iat| iat > now / 1000 + 30)
    {
        return invalid("token issued in the future");
    }
    // A CLI session token is signed with the same key: only sync tokens are accepted.
    if !matches!(str_field(&payload, "action"), Some("sync" | "create")) {
        return invalid("not a sync token");
    }
    let Some(jti) = str_field(&payload, "jti").filter(|j| !j.is_empty() && j.len() <= 128) else {
        return invalid("missing jti");
    };
    let exp = payload.get("exp").and_then(Value::as_i64).unwrap_or(0);
    match node.store.use_sync_jti(jti, exp * 1000, now).await {
        Ok(true) => {}
        Ok(false) => return invalid("token already used"),
        Err(_) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"ok": false, "error": "store unavailable"}),
            );
        }
    }
    let (Some(sub), Some(_email)) = (str_field(&payload, "sub"), str_field(&payload, "email"))
    else {
        return invalid("missing sub or email");
    };
    let Some(meshes) = payload.get("meshes").and_then(Value::as_array) else {
        return invalid("missing meshes array");
    };
    match node.store.user(sub).await {
        Ok(Some(u)) if !u.disabled => {}
        Ok(_) => return invalid("unknown user"),
        Err(_) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"ok": false, "error": "store unavailable"}),
            );
        }
    }
    let broker_url = ctx.public_ws(node);
    let mut out = Vec::new();
    for m in meshes.iter().take(MAX_GRANT_ENTRIES) {
        let Some(mesh_id) = str_field(m, "id") else {
            continue;
        };
        let role = if str_field(m, "role") == Some("admin") {
            Role::Admin
        } else {
            Role::Member
        };
        let Ok(Some(mesh)) = node.store.mesh(mesh_id).await else {
            continue;
        };
        if node.store.mesh_archived(mesh_id).await.unwrap_or(true) {
            continue;
        }
        // Only meshes the user may sync into: its own or those it is a member of.
        let Ok(Some(um)) = node.store.user_mesh_by_slug(sub, &mesh.slug).await else {
            continue;
        };
        let member = match node.store.member_by_pubkey(mesh_id, peer_pubkey).await {
            Ok(Some(existing)) if existing.revoked_at.is_none() => {
                if node
                    .store
                    .link_member(mesh_id, &existing.id, sub)
                    .await
                    .is_err()
                {
                    continue;
                }
                existing
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                let nm = NewMember {
                    pubkey: peer_pubkey.to_string(),
                    display_name: display_name.clone(),
                    role,
                    user_id: Some(sub.to_string()),
                    default_groups: Vec::new(),
                    role_tag: None,
                };
                match node.store.add_member(mesh_id, nm).await {
                    Ok(m) => {
                        node.members_changed(mesh_id).await;
                        m
                    }
                    Err(_) => continue,
                }
            }
            Err(_) => continue,
        };
        out.push(
            json!({"mesh_id": mesh_id, "slug": um.mesh.slug, "broker_url": broker_url,
            "member_id": member.id, "role": member.role.as_str()}),
        );
    }
    if out.is_empty() {
        return sync_refuse("no valid meshes found in sync token");
    }
    reply(
        StatusCode::OK,
        json!({"ok": true, "account_id": sub, "meshes": out}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_reference_rule() {
        assert_eq!(slugify("My Team!! Mesh"), "my-team-mesh");
        assert_eq!(slugify("--x--"), "x");
        assert!(valid_slug("ab"));
        assert!(!valid_slug("-ab"));
        assert!(!valid_slug("a"));
        assert!(!valid_slug("Ab"));
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
    }
}
