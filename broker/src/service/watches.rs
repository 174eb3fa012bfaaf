//! The operations of URL watches (extensions §17): `watch`, `unwatch`, `watch_list`, and
//! the checks the watcher worker runs, without a transport.
//!
//! - **Bound to the member (Ours):** a watch belongs to (mesh, member), is stored, and is
//!   listed and cancelled by any presence of that member; a foreign id answers like an
//!   unknown one. A change goes to one live presence of the member, wherever it is
//!   connected: its control-plane (daemon) presence if it has one, else its newest. With
//!   no live presence the change is not delivered (counted `undelivered`); the value
//!   still advances. The watches of a revoked (banned) member are removed at their next
//!   check, without a fetch.
//! - **One checker at a time:** every replica's watcher claims due watches through the
//!   store's lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL) for `WATCH_LEASE_MS`, which is
//!   longer than a check may last (`WATCH_FETCH_TIMEOUT_MS`); only the lease holder's
//!   result is recorded, and the notification is published only after it was recorded.
//!   A replica that dies mid-check delays that watch by at most the lease.
//! - **SSRF (Ours):** http and https only, no user info; every address the host resolves
//!   to (at `watch` and again at every check, the connection then goes to the checked
//!   address) must be public: loopback, private, shared (CGNAT), link-local (the cloud
//!   metadata address 169.254.169.254 is one), unspecified, multicast, broadcast and
//!   reserved addresses, and their IPv4-mapped, NAT64 and 6to4 forms, are refused unless
//!   `WATCH_ALLOWED_NETS` names them. Redirects are not followed (a 3xx is the observed
//!   response). At most `WATCH_MAX_RESPONSE_BYTES` of a body are read.
//! - **Bounds:** `MAX_WATCHES_PER_MEMBER`, `MAX_WATCHES_PER_MESH`, the interval between
//!   `WATCH_MIN_INTERVAL_SECS` and `WATCH_MAX_INTERVAL_SECS`, `MAX_WATCH_URL_BYTES`,
//!   `MAX_WATCH_FIELD_BYTES`, `MAX_WATCH_HEADERS`.
//!
//! The observed value: `status` → the HTTP status as text; `json` with `extract` → the dot
//! path (after an optional `$.`) as text (`"null"` when missing, the first 200 characters
//! of the body when it is not JSON); otherwise the first 16 hex of SHA-256(body).
//! `notify_on`: `change` (or the CLI's `changed`), `always` (every check after the
//! baseline), `match:<v>`, `not_match:<v>`; anything else never fires. CSS extraction
//! (the CLI's `--extract <css>` in `hash` mode) is not supported: `extract` is only read
//! in `json` mode.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use super::{Principal, ServiceCtx};
use crate::accounts::Cidr;
use crate::cluster::bus::MeshEvent;
use crate::cluster::presence::PeerRole;
use crate::config::Config;
use crate::ids;
use crate::protocol::ext::watches::{WatchListing, WatchPush, WatchTriggered};
use crate::store::StoreError;
use crate::store::watches::{Watch, WatchCreated};

/// The interval when `watch` names none (seconds).
pub const DEFAULT_INTERVAL_SECS: u32 = 30;
/// Characters of a non-JSON body a `json` watch observes.
pub const NON_JSON_PREFIX_CHARS: usize = 200;
/// Request headers a watch may not set (they would change the target or the framing).
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "keep-alive",
];
/// Most watches one claim takes; a full batch is followed by another claim at once.
pub const CLAIM_BATCH: usize = 16;

/// Why a `watch` was refused: `error{code:"invalid_args"}` (a backend failure:
/// `internal`); [`WatchError::metric_label`] is the `reason` of
/// `broker_watch_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchError {
    Invalid(String),
    /// The SSRF rules refuse the URL's target.
    Target(String),
    TooMany(String),
    Unavailable(String),
}

impl WatchError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            WatchError::Invalid(_) => "invalid",
            WatchError::Target(_) => "target",
            WatchError::TooMany(_) => "too_many",
            WatchError::Unavailable(_) => "store",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            WatchError::Unavailable(_) => "internal",
            _ => "invalid_args",
        }
    }

    pub fn message(&self) -> String {
        match self {
            WatchError::Invalid(m) | WatchError::Target(m) | WatchError::TooMany(m) => m.clone(),
            WatchError::Unavailable(e) => format!("watches unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for WatchError {}

fn unavailable(e: StoreError) -> WatchError {
    WatchError::Unavailable(e.to_string())
}

/// A `watch` request as the frame carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchRequest {
    pub url: String,
    pub mode: Option<String>,
    pub extract: Option<String>,
    pub interval: Option<f64>,
    pub notify_on: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub label: Option<String>,
}

/// A stored watch as `watch_list` shows it.
pub fn listing(w: &Watch) -> WatchListing {
    WatchListing {
        id: w.id.clone(),
        url: w.url.clone(),
        mode: w.mode.clone(),
        label: w.label.clone(),
        interval: w.interval_secs,
        last_hash: w.last_value.clone(),
        last_value: w.last_value.clone(),
        last_check: w.last_check.map(ids::iso8601_ms),
        created_at: ids::iso8601_ms(w.created_at),
    }
}

// ---------------------------------------------------------------------------------------
// The target rules (SSRF).

/// Whether an address is one a watch may never fetch by default.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || o[0] == 0
        // Shared address space (CGNAT; also some clouds' metadata, e.g. 100.100.100.200).
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // IETF protocol assignments, benchmarking, reserved (240/4).
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || o[0] >= 240
}

fn internal_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() {
        return true;
    }
    // Unique local (fc00::/7, e.g. AWS's fd00:ec2::254), link-local (fe80::/10), site-local.
    if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        return true;
    }
    // NAT64 (64:ff9b::/96) and IPv4-compatible forms embed an IPv4 address in the low bits.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]) || s[0..6] == [0; 6] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return internal_v4(Ipv4Addr::new(a, b, c, d));
    }
    // 6to4 (2002::/16) embeds one in bits 16..48.
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return internal_v4(Ipv4Addr::new(a, b, c, d));
    }
    false
}

/// Whether a watch may fetch `ip`: public, or named by `WATCH_ALLOWED_NETS`.
pub fn address_allowed(ip: IpAddr, allowed: &[Cidr]) -> bool {
    let ip = ip.to_canonical();
    allowed.iter().any(|c| c.contains(ip)) || !is_internal(ip)
}

/// A URL a watch may fetch, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without brackets for an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// The `Host` header (`host[:port]` as written).
    pub authority: String,
    pub path_and_query: String,
}

/// Parses and checks the URL's shape (not its addresses).
pub fn parse_target(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a valid URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("only http and https URLs can be watched".into()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .as_str()
        .to_string();
    if authority.contains('@') {
        return Err("URLs with user info cannot be watched".into());
    }
    let host = uri.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        https,
        host,
        port,
        authority,
        path_and_query,
    })
}

/// Resolves the target and checks every address; the address to connect to.
pub async fn resolve(target: &Target, allowed: &[Cidr]) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("{} does not resolve: {e}", target.host))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{} does not resolve", target.host));
    }
    // Every address must pass: a name with one public and one internal address is refused.
    if let Some(bad) = addrs.iter().find(|a| !address_allowed(a.ip(), allowed)) {
        return Err(format!(
            "{} resolves to {}, an internal address: watches fetch public addresses only",
            target.host,
            bad.ip()
        ));
    }
    Ok(addrs[0])
}

// ---------------------------------------------------------------------------------------
// `watch`, `unwatch`, `watch_list`.

fn check_field(ctx: &ServiceCtx, what: &str, v: &str) -> Result<(), WatchError> {
    let max = ctx.config().max_watch_field_bytes;
    if v.len() > max {
        return Err(WatchError::Invalid(format!(
            "{what} is over {max} bytes (MAX_WATCH_FIELD_BYTES)"
        )));
    }
    Ok(())
}

/// `watch`: validates, checks the target, and stores the watch (first check due now).
pub async fn watch(
    ctx: &ServiceCtx,
    p: &Principal,
    req: WatchRequest,
) -> Result<Watch, WatchError> {
    let result = async {
        let c = ctx.config();
        let url = req.url.trim().to_string();
        if url.is_empty() {
            return Err(WatchError::Invalid("url is required".into()));
        }
        if url.len() > c.max_watch_url_bytes {
            return Err(WatchError::Invalid(format!(
                "url is over {} bytes (MAX_WATCH_URL_BYTES)",
                c.max_watch_url_bytes
            )));
        }
        let target = parse_target(&url).map_err(WatchError::Invalid)?;
        let mode = req.mode.as_deref().filter(|m| !m.is_empty()).unwrap_or("hash");
        if !["hash", "json", "status"].contains(&mode) {
            return Err(WatchError::Invalid(format!(
                "mode must be hash, json or status (got {mode:?})"
            )));
        }
        let extract = req.extract.filter(|e| !e.is_empty());
        if let Some(e) = &extract {
            check_field(ctx, "extract", e)?;
        }
        let label = req.label.filter(|l| !l.is_empty());
        if let Some(l) = &label {
            check_field(ctx, "label", l)?;
        }
        let notify_on = match req.notify_on.as_deref().filter(|n| !n.is_empty()) {
            None | Some("change") | Some("changed") => "change".to_string(),
            Some(other) => other.to_string(),
        };
        check_field(ctx, "notify_on", &notify_on)?;
        let headers = req.headers.unwrap_or_default();
        if headers.len() > c.max_watch_headers {
            return Err(WatchError::Invalid(format!(
                "at most {} headers (MAX_WATCH_HEADERS)",
                c.max_watch_headers
            )));
        }
        for (k, v) in &headers {
            check_field(ctx, "a header name", k)?;
            check_field(ctx, "a header value", v)?;
            if HeaderName::from_bytes(k.as_bytes()).is_err() || HeaderValue::from_str(v).is_err()
            {
                return Err(WatchError::Invalid(format!("header {k:?} is not valid")));
            }
            // The target and the framing are the broker's: no header may change them.
            if RESERVED_HEADERS.iter().any(|r| k.eq_ignore_ascii_case(r)) {
                return Err(WatchError::Invalid(format!("the {k} header cannot be set")));
            }
        }
        let interval = match req.interval {
            Some(i) if i.is_finite() && i > 0.0 => i.min(f64::from(u32::MAX)) as u32,
            _ => DEFAULT_INTERVAL_SECS,
        }
        .clamp(c.watch_min_interval_secs, c.watch_max_interval_secs.max(c.watch_min_interval_secs));
        // Bounded like a check: a slow resolver must not hold the session's frames long.
        match tokio::time::timeout(
            c.watch_fetch_timeout,
            resolve(&target, &c.watch_allowed_nets),
        )
        .await
        {
            Ok(resolved) => resolved.map_err(WatchError::Target)?,
            Err(_) => {
                return Err(WatchError::Target(format!(
                    "{} did not resolve in time",
                    target.host
                )));
            }
        };
        let mut id_bytes = [0u8; 4];
        rand::fill(&mut id_bytes[..]);
        let now = ids::now_ms();
        let w = Watch {
            id: format!("w_{}", hex::encode(id_bytes)),
            mesh_id: p.mesh.id.clone(),
            member_id: p.member.id.clone(),
            url,
            mode: mode.to_string(),
            extract,
            interval_secs: interval,
            notify_on,
            headers,
            label,
            last_value: None,
            last_check: None,
            created_at: now,
            next_check_at: now,
        };
        let (per_member, per_mesh) = (c.max_watches_per_member, c.max_watches_per_mesh);
        match ctx
            .store()
            .watch_create(w.clone(), per_member, per_mesh)
            .await
            .map_err(unavailable)?
        {
            WatchCreated::Created => Ok(w),
            WatchCreated::TooManyForMember => Err(WatchError::TooMany(format!(
                "you already have {per_member} watches in this mesh (MAX_WATCHES_PER_MEMBER); remove one first"
            ))),
            WatchCreated::TooManyForMesh => Err(WatchError::TooMany(format!(
                "this mesh already has {per_mesh} watches (MAX_WATCHES_PER_MESH)"
            ))),
        }
    }
    .await;
    if let Err(e) = &result {
        ctx.metrics().refuse_watch(e.metric_label());
    }
    result
}

/// `unwatch`: deletes the caller's member's watch; `None` for an unknown or foreign id.
pub async fn unwatch(
    ctx: &ServiceCtx,
    p: &Principal,
    id: &str,
) -> Result<Option<Watch>, WatchError> {
    if id.is_empty() || id.len() > 64 {
        return Ok(None);
    }
    ctx.store()
        .watch_delete(&p.mesh.id, &p.member.id, id)
        .await
        .map_err(unavailable)
}

/// `watch_list`: the caller's member's watches, oldest first.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<Watch>, WatchError> {
    ctx.store()
        .watch_list(&p.mesh.id, &p.member.id)
        .await
        .map_err(unavailable)
}

// ---------------------------------------------------------------------------------------
// Checks.

/// The value a check observed.
pub fn observe(mode: &str, extract: Option<&str>, status: u16, body: &[u8]) -> String {
    match (mode, extract) {
        ("status", _) => status.to_string(),
        ("json", Some(path)) => match serde_json::from_slice::<Value>(body) {
            Ok(v) => extract_path(&v, path),
            Err(_) => String::from_utf8_lossy(body)
                .chars()
                .take(NON_JSON_PREFIX_CHARS)
                .collect(),
        },
        _ => hex::encode(sha2::Sha256::digest(body))[..16].to_string(),
    }
}

/// The value at a dot path (`$.a.b.0` or `a.b.0`) as text: a string as is, anything else
/// as JSON, `"null"` when missing.
pub fn extract_path(v: &Value, path: &str) -> String {
    let path = path.strip_prefix("$.").unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut cur = v;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let next = match cur {
            Value::Object(m) => m.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return "null".into(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether a change from `old` to `new` fires under `notify_on`.
pub fn fires(notify_on: &str, old: &str, new: &str) -> bool {
    if notify_on == "change" || notify_on == "changed" {
        old != new
    } else if notify_on == "always" {
        true
    } else if let Some(v) = notify_on.strip_prefix("match:") {
        new == v && old != v
    } else if let Some(v) = notify_on.strip_prefix("not_match:") {
        old == v && new != v
    } else {
        false
    }
}

/// Why a fetch produced no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The SSRF rules refused the target (now).
    Refused(String),
    Failed(String),
}

/// A byte stream an outbound HTTP/1 request runs over (plain TCP or TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The TLS client configuration of the broker's outbound HTTPS (watches and the files
/// object store): the system's CA certificates, built once.
pub(crate) fn tls() -> Result<tokio_rustls::TlsConnector, String> {
    static TLS: OnceLock<Result<tokio_rustls::TlsConnector, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err("no system CA certificates".to_string());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    })
    .clone()
}

/// One GET of a watch's URL: the status and at most `WATCH_MAX_RESPONSE_BYTES` of the body.
pub async fn fetch(
    config: &Config,
    url: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(u16, Bytes), FetchError> {
    let target = parse_target(url).map_err(FetchError::Refused)?;
    let work = async {
        let addr = resolve(&target, &config.watch_allowed_nets)
            .await
            .map_err(FetchError::Refused)?;
        let failed = |e: &dyn std::fmt::Display| FetchError::Failed(e.to_string());
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| failed(&e))?;
        let io: Box<dyn Io> = if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| failed(&e))?;
            let tls = tls()
                .map_err(|e| failed(&e))?
                .connect(name, tcp)
                .await
                .map_err(|e| failed(&e))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| failed(&e))?;
        let mut req = Request::get(target.path_and_query.as_str())
            .header(HOST, target.authority.as_str())
            .header(USER_AGENT, "claudemesh-broker-watch");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| failed(&e))?;
        let max = config.watch_max_response_bytes;
        let exchange = async {
            let resp = sender.send_request(req).await.map_err(|e| failed(&e))?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while buf.len() < max {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = max - buf.len();
                            buf.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    Some(Err(e)) => return Err(failed(&e)),
                    None => break,
                }
            }
            Ok((status, Bytes::from(buf)))
        };
        tokio::pin!(exchange);
        tokio::pin!(conn);
        tokio::select! {
            r = &mut exchange => r,
            c = &mut conn => match c {
                Err(e) => Err(failed(&e)),
                // The connection ended after the response: its body is buffered.
                Ok(()) => exchange.await,
            },
        }
    };
    match tokio::time::timeout(config.watch_fetch_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Failed(format!(
            "no answer within {:?} (WATCH_FETCH_TIMEOUT_MS)",
            config.watch_fetch_timeout
        ))),
    }
}

/// The member's presence a change goes to: its live control-plane presence, else its newest
/// live one.
async fn recipient(ctx: &ServiceCtx, w: &Watch) -> Option<String> {
    let records = match ctx.presence().list(&w.mesh_id).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, watch = %w.id, "watch recipient not looked up");
            return None;
        }
    };
    records
        .into_iter()
        .filter(|r| r.member_id == w.member_id && r.grace_until.is_none())
        .max_by_key(|r| (r.peer_role == PeerRole::ControlPlane, r.connected_at))
        .map(|r| r.presence_id)
}

/// Checks one claimed watch (`owner` holds its lease): fetch, record, and notify.
pub async fn check(ctx: &ServiceCtx, owner: &str, w: Watch) {
    let now = ids::now_ms();
    let next = now.saturating_add(i64::from(w.interval_secs) * 1000);
    // A banned (revoked) member's watches stop: nothing is fetched for it any more.
    match ctx.store().member(&w.mesh_id, &w.member_id).await {
        Ok(Some(m)) if m.revoked_at.is_none() => {}
        Ok(_) => {
            debug!(watch = %w.id, "watch of a revoked or deleted member removed");
            ctx.metrics().watch_checked("revoked");
            if let Err(e) = ctx
                .store()
                .watch_delete(&w.mesh_id, &w.member_id, &w.id)
                .await
            {
                warn!(error = %e, watch = %w.id, "watch of a revoked member not removed");
            }
            return;
        }
        Err(e) => {
            warn!(error = %e, watch = %w.id, "watch owner not looked up; check skipped");
            if let Err(e) = ctx.store().watch_record(&w.id, owner, None, next).await {
                warn!(error = %e, watch = %w.id, "watch check not recorded");
            }
            return;
        }
    }
    let observed = match fetch(ctx.config(), &w.url, &w.headers).await {
        Ok((status, body)) => observe(&w.mode, w.extract.as_deref(), status, &body),
        Err(e) => {
            let (label, why) = match &e {
                FetchError::Refused(m) => ("refused", m),
                FetchError::Failed(m) => ("failed", m),
            };
            debug!(watch = %w.id, reason = label, error = %why, "watch check skipped");
            ctx.metrics().watch_checked(label);
            if let Err(e) = ctx.store().watch_record(&w.id, owner, None, next).await {
                warn!(error = %e, watch = %w.id, "watch check not recorded");
            }
            return;
        }
    };
    let recorded = match ctx
        .store()
        .watch_record(&w.id, owner, Some((observed.clone(), now)), next)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, watch = %w.id, "watch check not recorded");
            return;
        }
    };
    if !recorded {
        // Deleted meanwhile, or the lease was lost: another check owns the outcome.
        return;
    }
    let Some(old) = w.last_value.clone() else {
        ctx.metrics().watch_checked("baseline");
        return;
    };
    if old != observed {
        ctx.metrics().watch_checked("changed");
    } else {
        ctx.metrics().watch_checked("unchanged");
    }
    if !fires(&w.notify_on, &old, &observed) {
        return;
    }
    let Some(presence_id) = recipient(ctx, &w).await else {
        ctx.metrics().watch_checked("undelivered");
        return;
    };
    let push = WatchPush {
        kind: "push".into(),
        subtype: "system".into(),
        event: "watch_triggered".into(),
        event_data: WatchTriggered {
            watch_id: w.id.clone(),
            url: w.url.clone(),
            label: w.label.clone(),
            mode: w.mode.clone(),
            old_value: Some(old),
            new_value: observed,
        },
        message_id: ids::random_id(24),
        mesh_id: w.mesh_id.clone(),
        sender_pubkey: "system".into(),
        priority: "now".into(),
        nonce: String::new(),
        ciphertext: String::new(),
        created_at: ids::iso8601_ms(now),
    };
    let event = MeshEvent::Deliver {
        presence_ids: vec![presence_id].into(),
        priority: None,
        frame: crate::protocol::encode(&push),
        trace: None,
    };
    match ctx.publish(&w.mesh_id, event).await {
        Ok(()) => ctx.metrics().watch_checked("notified"),
        Err(e) => {
            warn!(error = %e, watch = %w.id, "watch_triggered not published");
            ctx.metrics().watch_checked("undelivered");
        }
    }
}

/// Claims due watches for `owner` (at most [`CLAIM_BATCH`]); they are checked by the
/// caller (the watcher worker, concurrently).
pub async fn claim_due(ctx: &ServiceCtx, owner: &str) -> Result<Vec<Watch>, StoreError> {
    let now = ids::now_ms();
    let lease = ctx.config().watch_lease.as_millis().min(i64::MAX as u128) as i64;
    ctx.store()
        .watch_claim_due(now, now.saturating_add(lease), owner, CLAIM_BATCH)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn internal_addresses_are_refused_in_every_form() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
        let allow = [Cidr::parse("127.0.0.1/32").unwrap()];
        assert!(address_allowed("127.0.0.1".parse().unwrap(), &allow));
        assert!(!address_allowed("127.0.0.2".parse().unwrap(), &allow));
    }

    #[test]
    fn urls_are_parsed_strictly() {
        let t = parse_target("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str(), t.https),
            ("127.0.0.1", 8080, "/a?b=1", false)
        );
        assert_eq!(parse_target("https://[::1]/").unwrap().host, "::1");
        assert_eq!(parse_target("https://example.com").unwrap().port, 443);
        assert!(parse_target("ftp://example.com/").is_err());
        assert!(parse_target("file:///etc/passwd").is_err());
        assert!(parse_target("http://user:pw@example.com/").is_err());
        assert!(parse_target("example.com").is_err());
    }

    #[test]
    fn values_and_triggers_follow_the_spec() {
        assert_eq!(observe("status", None, 404, b""), "404");
        let body = br#"{"a": {"b": [1, "x"]}, "s": "up"}"#;
        assert_eq!(observe("json", Some("$.a.b.1"), 200, body), "x");
        assert_eq!(observe("json", Some("a.b"), 200, body), "[1,\"x\"]");
        assert_eq!(observe("json", Some("$.missing"), 200, body), "null");
        assert_eq!(observe("json", Some("s"), 200, b"not json"), "not json");
        assert_eq!(observe("hash", None, 200, b"x").len(), 16);
        assert_eq!(
            observe("json", None, 200, b"x"),
            observe("hash", None, 200, b"x")
        );
        assert_eq!(extract_path(&json!({"n": null}), "n"), "null");
        assert!(fires("change", "a", "b") && !fires("change", "a", "a"));
        assert!(fires("always", "a", "a"));
        assert!(fires("match:up", "down", "up") && !fires("match:up", "up", "up"));
        assert!(fires("not_match:up", "up", "down") && !fires("not_match:up", "x", "down"));
        assert!(!fires("whenever", "a", "b"));
    }
}
