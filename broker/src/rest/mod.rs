//! The REST v1 API for humans and bots (`rest.md`): JSON over HTTP under `/api/v1/`,
//! authenticated with API keys (extensions §10), beside the operator API.
//!
//! Placement (`rest.md` §1): the operator API owns `/api/v1`, `/api/v1/meshes…` and
//! `/api/v1/users…` (admin bearer token, internal listener when there is one); every other
//! `/api/v1/*` path is REST v1 and is served on the **public** port only
//! ([`is_operator_path`], [`serves`]).
//!
//! One route table ([`routes::ROUTES`]) drives both the dispatch here and the OpenAPI 3.1
//! document served at `/api/v1/openapi.json` ([`openapi::document`]). Every request goes:
//! CORS preflight → route lookup → key verification (a store read, no cache: revocation
//! and bans hold on every replica at once) → capability → topic scope → issuer → handler.
//! The handlers ([`handlers`]) call the same service layer as the WebSocket session.

pub mod handlers;
pub mod openapi;
pub mod routes;
pub mod sse;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::cluster::presence::PeerRole;
use crate::node::Node;
use crate::service::apikeys::{self, Verified, VerifyError};
use crate::service::{Principal, PrincipalKind, ServiceCtx};
use routes::{Issuer, Route};

/// The first path segments under `/api/v1/` that belong to the operator API.
pub const OPERATOR_ROOTS: &[&str] = &["meshes", "users"];

/// Whether `path` is the operator API's (`protocol.md` §9): `/api/v1`, `/api/v1/`, and
/// `/api/v1/<root>…` for a root in [`OPERATOR_ROOTS`].
pub fn is_operator_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1") else {
        return false;
    };
    if rest.is_empty() || rest == "/" {
        return true;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return false;
    };
    let first = rest.split('/').next().unwrap_or_default();
    OPERATOR_ROOTS.contains(&first)
}

/// Whether `path` is REST v1 (every `/api/v1/*` path that is not the operator API's).
pub fn serves(path: &str) -> bool {
    path.starts_with("/api/v1/") && !is_operator_path(path)
}

/// The body of every HTTP response: whole, or an SSE stream.
pub enum Body {
    Full(Full<Bytes>),
    Stream(sse::SseBody),
    /// A file download (extensions §19.1, `server/files.rs`), read chunk by chunk.
    File(crate::server::files::Chunks),
}

impl From<Full<Bytes>> for Body {
    fn from(b: Full<Bytes>) -> Self {
        Body::Full(b)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Pin::new(b).poll_frame(cx),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
            Body::File(f) => Pin::new(f).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_end_stream(),
            Body::Stream(_) => false,
            Body::File(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(b) => b.size_hint(),
            Body::Stream(_) => hyper::body::SizeHint::default(),
            Body::File(f) => f.size_hint(),
        }
    }
}

/// A refused REST request.
#[derive(Debug, Clone, PartialEq)]
pub enum RestError {
    /// The key layer and validation: `{code, message, status, timestamp, path}`.
    Framework {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// A route-level refusal: `{error:"<code>", …}` (the whole body).
    Route { status: StatusCode, body: Value },
}

impl RestError {
    pub fn route(status: StatusCode, error: &str) -> Self {
        RestError::Route {
            status,
            body: json!({ "error": error }),
        }
    }

    pub fn route_with(status: StatusCode, body: Value) -> Self {
        RestError::Route { status, body }
    }

    /// A 422 of the validator: `code` names the issue, `message` the field.
    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        RestError::Framework {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: code.into(),
            message: message.into(),
        }
    }

    fn key(status: StatusCode, code: &str) -> Self {
        RestError::Framework {
            status,
            code: code.into(),
            message: code.into(),
        }
    }

    /// A backend failed.
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        RestError::route_with(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable", "detail": e.to_string()}),
        )
    }

    fn into_response(self, path: &str) -> Response<Body> {
        match self {
            RestError::Framework {
                status,
                code,
                message,
            } => json_reply(
                status,
                &json!({
                    "code": code,
                    "message": message,
                    "status": status.as_u16(),
                    "timestamp": crate::ids::iso8601_ms(crate::ids::now_ms()),
                    "path": path,
                }),
            ),
            RestError::Route { status, body } => json_reply(status, &body),
        }
    }
}

pub type RestResult = Result<Value, RestError>;

/// A JSON response.
pub fn json_reply(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::Full(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One authenticated call of a route.
pub struct Call {
    pub node: Arc<Node>,
    pub svc: ServiceCtx,
    pub key: Verified,
    /// The issuer acting, when the key has one (a principal of kind `ApiKey`).
    pub principal: Option<Principal>,
    /// The path parameters, in order (URL-decoded).
    pub params: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Call {
    /// The first value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The issuer's principal, or 400 `api_key_has_no_issuer`.
    pub fn issuer(&self) -> Result<&Principal, RestError> {
        self.principal
            .as_ref()
            .ok_or_else(|| RestError::route(StatusCode::BAD_REQUEST, "api_key_has_no_issuer"))
    }
}

/// The principal a key's issuer acts as.
pub fn principal_of(v: &Verified) -> Option<Principal> {
    let member = v.issuer.clone()?;
    Some(Principal {
        kind: PrincipalKind::ApiKey,
        mesh: v.mesh.clone(),
        presence_id: format!("rest:{}", v.key.id),
        routing_key: member.pubkey.clone(),
        display_name: member.display_name.clone(),
        session_key: None,
        peer_role: PeerRole::Session,
        member,
    })
}

fn with_cors(mut resp: Response<Body>, origin: Option<HeaderValue>) -> Response<Body> {
    let h = resp.headers_mut();
    // Any origin, with credentials: the origin is echoed (a `*` would not allow them).
    h.insert(
        "access-control-allow-origin",
        origin.unwrap_or_else(|| HeaderValue::from_static("*")),
    );
    h.insert(
        "access-control-allow-credentials",
        HeaderValue::from_static("true"),
    );
    h.insert("vary", HeaderValue::from_static("Origin"));
    resp
}

fn preflight() -> Response<Body> {
    let mut resp = Response::new(Body::Full(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, PATCH, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Content-Type, Authorization"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("3600"));
    resp
}

/// The secret of `Authorization: Bearer <secret>` (case-sensitive `Bearer`, one or more
/// spaces, the value trimmed); `None` without one.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let rest = v.strip_prefix("Bearer")?;
    if !rest.starts_with(' ') {
        return None;
    }
    let secret = rest.trim();
    (!secret.is_empty()).then(|| secret.to_string())
}

/// Percent-decodes one path segment or query component (`+` is a space in queries).
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn parse_query(q: Option<&str>) -> Result<Vec<(String, String)>, RestError> {
    let Some(q) = q else {
        return Ok(Vec::new());
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (percent_decode(k, true), percent_decode(v, true)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(RestError::invalid(
                    "invalid_string",
                    "query is not valid UTF-8",
                )),
            }
        })
        .collect()
}

async fn read_body(node: &Node, req: Request<Incoming>) -> Result<Value, RestError> {
    let limit = node.config.max_rest_body_bytes;
    let bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(RestError::route(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
            ));
        }
        Err(e) => {
            return Err(RestError::invalid(
                "invalid_json",
                format!("could not read body: {e}"),
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| RestError::invalid("invalid_json", format!("body is not valid JSON: {e}")))
}

/// Counts a refusal of the key layer.
fn refused(node: &Node, reason: &'static str, e: RestError) -> RestError {
    node.metrics.refuse_rest(reason);
    e
}

/// Serves one REST v1 request (`serves(path)` holds).
pub async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let origin = req.headers().get("origin").cloned();
    let path = req.uri().path().to_string();
    if req.method() == Method::OPTIONS {
        return with_cors(preflight(), origin);
    }
    let resp = match dispatch(&node, req, &path).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(&path),
    };
    with_cors(resp, origin)
}

async fn authenticate(
    node: &Arc<Node>,
    svc: &ServiceCtx,
    req: &Request<Incoming>,
) -> Result<Verified, RestError> {
    let Some(secret) = bearer(req.headers()) else {
        return Err(refused(
            node,
            "key_missing",
            RestError::key(StatusCode::UNAUTHORIZED, "error.api_key_missing"),
        ));
    };
    match apikeys::verify(svc, &secret, true).await {
        Ok(v) => Ok(v),
        Err(VerifyError::Invalid) => {
            let ip = crate::accounts::net::client_ip(
                &node.config.accounts,
                req.headers(),
                crate::accounts::net::peer(req.extensions()),
            );
            let per_min = node.config.rest_auth_failures_per_min;
            let source = format!(
                "rest-auth:{}",
                ip.map(|i| i.to_string()).unwrap_or_default()
            );
            let within = per_min == 0
                || node
                    .presence
                    .take_send_token(&source, per_min, per_min)
                    .await
                    .unwrap_or(true);
            if within {
                Err(refused(
                    node,
                    "key_invalid",
                    RestError::key(StatusCode::UNAUTHORIZED, "error.api_key_invalid"),
                ))
            } else {
                Err(refused(
                    node,
                    "rate_limited",
                    RestError::route(StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                ))
            }
        }
        Err(VerifyError::Unavailable(e)) => {
            node.metrics.refuse_rest("store");
            Err(RestError::unavailable(e))
        }
    }
}

async fn dispatch(
    node: &Arc<Node>,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, RestError> {
    let found = routes::find(req.method(), path);
    if let Some((route, _)) = &found
        && !route.auth
    {
        return Ok(handlers::unauthenticated(route.op));
    }
    let svc = ServiceCtx::new(node);
    // The key layer wraps every path: an unknown path without a valid key is 401 first.
    let key = authenticate(node, &svc, &req).await?;
    let Some((route, params)) = found else {
        return Err(RestError::route(StatusCode::NOT_FOUND, "not_found"));
    };
    authorize(node, route, &key, &params)?;
    let principal = principal_of(&key);
    match route.issuer {
        Issuer::Required | Issuer::User if principal.is_none() => {
            return Err(RestError::route(
                StatusCode::BAD_REQUEST,
                "api_key_has_no_issuer",
            ));
        }
        Issuer::User
            if principal
                .as_ref()
                .is_some_and(|p| p.member.user_id.is_none()) =>
        {
            return Err(RestError::route(
                StatusCode::BAD_REQUEST,
                "issuer_member_has_no_user",
            ));
        }
        _ => {}
    }
    let query = parse_query(req.uri().query())?;
    let headers = req.headers().clone();
    let body = if route.body.is_some() {
        read_body(node, req).await?
    } else {
        Value::Null
    };
    let call = Call {
        node: node.clone(),
        svc,
        key,
        principal,
        params,
        query,
        body,
        headers,
    };
    handlers::run(route.op, call).await
}

/// Capability and topic scope (`rest.md` §2), before the route runs.
fn authorize(
    node: &Node,
    route: &Route,
    key: &Verified,
    params: &[String],
) -> Result<(), RestError> {
    if let Some(cap) = route.cap
        && !key.can(cap)
    {
        return Err(refused(
            node,
            "missing_capability",
            RestError::key(StatusCode::FORBIDDEN, "error.api_key_missing_capability"),
        ));
    }
    let out_of_scope = match route.scope {
        routes::Scope::None | routes::Scope::Filters | routes::Scope::Body => false,
        routes::Scope::Path => params.first().is_some_and(|t| !key.admits(t)),
        // `/me/*`: only unscoped keys (**Ours**).
        routes::Scope::Unscoped => key.key.topic_scopes.is_some(),
    };
    if out_of_scope {
        return Err(refused(
            node,
            "topic_out_of_scope",
            RestError::key(StatusCode::FORBIDDEN, "error.api_key_topic_out_of_scope"),
        ));
    }
    Ok(())
}

/// A topic named in a body is outside the key's scope: 403.
pub fn out_of_scope(node: &Node) -> RestError {
    refused(
        node,
        "topic_out_of_scope",
        RestError::key(StatusCode::FORBIDDEN, "error.api_key_topic_out_of_scope"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_paths_are_told_apart_from_rest_paths() {
        for p in [
            "/api/v1",
            "/api/v1/",
            "/api/v1/meshes",
            "/api/v1/meshes/x/members",
            "/api/v1/users",
            "/api/v1/users/u1",
        ] {
            assert!(is_operator_path(p), "{p}");
            assert!(!serves(p), "{p}");
        }
        for p in [
            "/api/v1/messages",
            "/api/v1/topics/general/stream",
            "/api/v1/me/workspace",
            "/api/v1/meshesx",
            "/api/v1/openapi.json",
            "/api/v1/nope",
        ] {
            assert!(!is_operator_path(p), "{p}");
            assert!(serves(p), "{p}");
        }
        assert!(!serves("/api/v2/messages"));
    }

    #[test]
    fn the_bearer_header_is_parsed_as_the_reference_does() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (v, want) in [
            ("Bearer cm_abc", Some("cm_abc")),
            ("Bearer    cm_abc  ", Some("cm_abc")),
            ("bearer cm_abc", None),
            ("Bearercm_abc", None),
            ("Bearer ", None),
        ] {
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            assert_eq!(bearer(&h).as_deref(), want, "{v:?}");
        }
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b", false).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", false), None);
    }
}
