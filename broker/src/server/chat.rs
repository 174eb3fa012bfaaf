//! The web chat (`/app`, issue 13 item 5): one server-rendered page, one small hand-written
//! script and one style sheet, embedded in the binary (no framework, no CDN).
//!
//! Routes (all need a signed-in web session, `server/web.rs`):
//!
//! | route | what |
//! |---|---|
//! | `GET /app` | the page (signed out: redirect to `/login?next=/app`) |
//! | `GET /app/chat.js`, `GET /app/crypto.js`, `GET /app/chat.css` | the embedded assets (`crypto.js`: the topic-key crypto, `docs/web-chat.md`) |
//! | `GET /app/meshes` | `{user, meshes:[{meshId, slug, name, memberId, displayName, role, isOwner}]}` |
//! | `POST /app/key` | header `X-CSRF-Token`; body `{meshId}`: mints the REST key the page uses for topics (`rest.md` §7), issued by the person's web-managed member row (created on first use, `service::humans::web_member`): `{secret, keyId, expiresAt, memberId, displayName, pubkey}` |
//! | `GET /app/ws?mesh=&tab=&csrf=` | the tab's WebSocket: the person as a presence of their member (`service::humans`) |
//!
//! The page talks to the REST v1 API (`/api/v1/…`, `rest.md`) with the minted key for
//! topics (history, the SSE stream, posts, members, notifications), and speaks the mesh
//! protocol over its own WebSocket for presence, peers, status, DMs and moderation closes.
//! Every response carries a strict Content-Security-Policy: scripts and styles only from
//! this origin, no inline script, no framing.
//!
//! Cross-site use of the cookie is refused: `POST /app/key` and `/app/ws` need the
//! session's CSRF token (a header or query value a foreign page cannot read), and
//! `/app/ws` also an `Origin` equal to this broker's public origin.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::debug;

use super::cli::{Ctx, percent_decode};
use super::web::{eq_ct, esc, signed_in, to_login};
use super::{HttpResponse, json_response};
use crate::node::Node;
use crate::service::{ServiceCtx, humans};

const SCRIPT: &str = include_str!("chat/chat.js");
const CRYPTO: &str = include_str!("chat/crypto.js");
const STYLE: &str = include_str!("chat/chat.css");

/// The chat's Content-Security-Policy: nothing inline, nothing foreign.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The lifetime of a key minted for the page.
pub const PAGE_KEY_TTL_MS: i64 = 12 * 3600 * 1000;

/// Whether `path` is one of the chat's routes.
pub fn serves(path: &str) -> bool {
    path == "/app" || path.starts_with("/app/")
}

fn secure_headers(resp: &mut HttpResponse, content_type: &'static str) {
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    secure_headers(&mut resp, content_type);
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

fn json(status: StatusCode, body: &Value) -> HttpResponse {
    let mut resp = json_response(status, body);
    secure_headers(&mut resp, "application/json");
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

fn query(ctx: &Ctx, name: &str) -> Option<String> {
    ctx.query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

pub async fn handle(node: Arc<Node>, req: Request<Incoming>) -> HttpResponse {
    let ctx = Ctx::of(&req);
    match (&ctx.method, ctx.path.as_str()) {
        (&Method::GET, "/app/chat.js") => asset(SCRIPT, "text/javascript; charset=utf-8"),
        (&Method::GET, "/app/crypto.js") => asset(CRYPTO, "text/javascript; charset=utf-8"),
        (&Method::GET, "/app/chat.css") => asset(STYLE, "text/css; charset=utf-8"),
        (&Method::GET, "/app" | "/app/") => page(&node, &ctx).await,
        (&Method::GET, "/app/meshes") => meshes(&node, &ctx).await,
        (&Method::POST, "/app/key") => mint_key(&node, &ctx, req).await,
        (&Method::GET, "/app/ws") => websocket(node, &ctx, req).await,
        _ => json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

async fn page(node: &Node, ctx: &Ctx) -> HttpResponse {
    let Some((user, session)) = signed_in(node, ctx).await else {
        return to_login(ctx);
    };
    let name = if user.display_name.is_empty() {
        &user.email
    } else {
        &user.display_name
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\">\
<meta name=\"csrf\" content=\"{csrf}\"><meta name=\"user\" content=\"{name}\">\
<link rel=\"icon\" href=\"data:,\"><title>claudemesh chat</title><link rel=\"stylesheet\" href=\"/app/chat.css\">\
<script src=\"/app/crypto.js\" defer></script><script src=\"/app/chat.js\" defer></script></head><body>\
<header><strong>claudemesh</strong>\
<label>mesh <select id=\"mesh\"></select></label>\
<label>status <select id=\"status\"><option>idle</option><option>working</option><option>dnd</option></select></label>\
<span id=\"conn\" class=\"dot off\" title=\"connection\">offline</span>\
<span id=\"notif\" class=\"badge\" hidden>0</span>\
<span class=\"who\">{name}</span>\
<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Sign out</button></form>\
</header>\
<div id=\"banner\" role=\"alert\" hidden></div>\
<main><nav><h2>Topics</h2><ul id=\"topics\"></ul><p id=\"topics-note\" class=\"note\"></p>\
<h2>Online</h2><ul id=\"peers\"></ul></nav>\
<section><h2 id=\"title\">Pick a topic or a peer</h2><span id=\"stream\" class=\"note\" data-state=\"none\"></span>\
<span id=\"keystate\" class=\"note\" data-state=\"none\"></span><button id=\"encrypt\" type=\"button\" hidden>enable encryption</button>\
<input id=\"search\" type=\"search\" placeholder=\"filter messages\">\
<ol id=\"messages\"></ol>\
<form id=\"composer\"><div id=\"suggest\" hidden></div>\
<input id=\"text\" autocomplete=\"off\" placeholder=\"message, @name to mention\" disabled>\
<button id=\"send\" type=\"submit\" disabled>Send</button></form>\
</section></main></body></html>",
        csrf = esc(&session.csrf),
        name = esc(name),
    );
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    secure_headers(&mut resp, "text/html; charset=utf-8");
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

async fn meshes(node: &Node, ctx: &Ctx) -> HttpResponse {
    let Some((user, _)) = signed_in(node, ctx).await else {
        return json(StatusCode::UNAUTHORIZED, &json!({"error": "not signed in"}));
    };
    let list = match node.store.user_meshes(&user.id).await {
        Ok(l) => l,
        Err(e) => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": format!("store unavailable: {e}")}),
            );
        }
    };
    let meshes: Vec<Value> = list
        .into_iter()
        .filter_map(|m| {
            let member = m.member?;
            Some(json!({
                "meshId": m.mesh.id, "slug": m.mesh.slug, "name": m.mesh.name,
                "memberId": member.id, "memberPubkey": member.pubkey,
                "displayName": member.display_name, "role": member.role.as_str(),
                "isOwner": m.is_owner,
            }))
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({"user": {"id": user.id, "displayName": user.display_name, "email": user.email}, "meshes": meshes}),
    )
}

/// The session's CSRF token must come with a state-changing or socket-opening request.
fn csrf_ok(ctx: &Ctx, expected: &str) -> bool {
    let given = ctx
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query(ctx, "csrf"))
        .unwrap_or_default();
    eq_ct(expected, &given)
}

async fn mint_key(node: &Arc<Node>, ctx: &Ctx, req: Request<Incoming>) -> HttpResponse {
    let Some((user, session)) = signed_in(node, ctx).await else {
        return json(StatusCode::UNAUTHORIZED, &json!({"error": "not signed in"}));
    };
    if !csrf_ok(ctx, &session.csrf) {
        node.metrics.reject_account("csrf");
        return json(StatusCode::FORBIDDEN, &json!({"error": "csrf"}));
    }
    let body = match super::read_json(req, 4096).await {
        Ok(b) => b,
        Err(_) => return json(StatusCode::BAD_REQUEST, &json!({"error": "bad body"})),
    };
    let Some(mesh_id) = body.get("meshId").and_then(Value::as_str) else {
        return json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "meshId required"}),
        );
    };
    // The page's topic identity is the person's web-managed row (its key is the
    // browser's, `POST /api/v1/me/peer-pubkey`).
    let (mesh, member) = match humans::web_member(&ServiceCtx::new(node), &user, mesh_id).await {
        Ok(found) => found,
        Err(e) if e.code == "internal" => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": format!("store unavailable: {}", e.message)}),
            );
        }
        Err(e) => {
            return json(
                StatusCode::FORBIDDEN,
                &json!({"error": "not a member of this mesh", "code": e.code, "message": e.message}),
            );
        }
    };
    page_key(node, &user.id, mesh, member).await
}

/// Mints the page's REST key: `read`+`send`, unscoped (the page lists and switches
/// topics), valid [`PAGE_KEY_TTL_MS`], issued by the person's member, through the API-key
/// service (`rest.md` §7; the same bounds, audit and metrics as `apikey_create`).
async fn page_key(
    node: &Arc<Node>,
    user_id: &str,
    mesh: crate::store::Mesh,
    member: crate::store::Member,
) -> HttpResponse {
    use crate::service::apikeys;
    use crate::service::{Principal, PrincipalKind};
    let now = crate::ids::now_ms();
    let expires = now + PAGE_KEY_TTL_MS;
    let principal = Principal {
        kind: PrincipalKind::ApiKey,
        presence_id: format!("web:{}", member.id),
        routing_key: member.pubkey.clone(),
        display_name: member.display_name.clone(),
        session_key: None,
        peer_role: crate::cluster::presence::PeerRole::Session,
        mesh,
        member,
    };
    let prefix: String = user_id.chars().take(8).collect();
    let who = json!({"memberId": principal.member.id, "displayName": principal.member.display_name,
                     "pubkey": principal.member.pubkey});
    let req = apikeys::CreateKey {
        label: format!("dashboard:{prefix}:chat"),
        capabilities: vec!["read".into(), "send".into()],
        topic_scopes: None,
        expires_at: Some(crate::ids::iso8601_ms(expires)),
    };
    match apikeys::create(&ServiceCtx::new(node), &principal, req).await {
        Ok(m) => json(
            StatusCode::OK,
            &json!({"secret": m.secret, "keyId": m.key.id, "expiresAt": crate::ids::iso8601_ms(expires),
                    "memberId": who["memberId"], "displayName": who["displayName"], "pubkey": who["pubkey"]}),
        ),
        Err(e) => json(
            StatusCode::OK,
            &json!({"secret": null, "error": e.code(), "message": e.message()}),
        ),
    }
}

async fn websocket(node: Arc<Node>, ctx: &Ctx, mut req: Request<Incoming>) -> HttpResponse {
    let Some((user, session)) = signed_in(&node, ctx).await else {
        return json(StatusCode::UNAUTHORIZED, &json!({"error": "not signed in"}));
    };
    if !csrf_ok(ctx, &session.csrf) {
        node.metrics.reject_account("csrf");
        return json(StatusCode::FORBIDDEN, &json!({"error": "csrf"}));
    }
    let origin = ctx
        .headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if origin != ctx.public_http(&node) {
        node.metrics.reject_account("origin");
        return json(StatusCode::FORBIDDEN, &json!({"error": "origin"}));
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return json(
            StatusCode::UPGRADE_REQUIRED,
            &json!({"error": "expected a WebSocket upgrade"}),
        );
    }
    if !node.is_accepting() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "draining"}),
        );
    }
    let mesh_id = query(ctx, "mesh").unwrap_or_default();
    let tab = query(ctx, "tab").unwrap_or_default();
    // Verified before the upgrade: a refusal is a plain HTTP answer the page can show.
    let verified = match humans::verify(&ServiceCtx::new(&node), &user, &mesh_id, &tab).await {
        Ok(v) => v,
        Err(e) => {
            node.metrics.reject_connection(e.code);
            let status = match e.code {
                "revoked" | "unauthorized" => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return json(status, &json!({"error": e.code, "message": e.message}));
        }
    };
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(u) => u,
        Err(e) => return json(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    let tracker = node.tracker.clone();
    tracker.spawn(async move {
        match fut.await {
            Ok(ws) => crate::session::serve_verified(node, ws, verified).await,
            Err(e) => debug!(error = %e, "chat websocket upgrade failed"),
        }
    });
    resp.map(|_| Full::new(Bytes::new()))
}
