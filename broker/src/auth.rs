//! Handshake verification (`hello`, `session_hello`), and the bearer check of the operator
//! API.
//!
//! **Beyond** the protocol's order, nothing that grows with the mesh runs before the
//! handshake is authenticated: the shape checks, the signatures and the replay guard come
//! first, then the member lookup (and, for a `session_hello`, the member's cluster-wide
//! handshake rate limit, before its session key is reserved), and only then the capacity
//! check (one O(1) count of the mesh's live presences) and the per-key lookup of the records
//! `attach` decides by (`Presence::find`: the same session key or `sessionId`; never the
//! whole mesh). Past their signatures, handshakes take one of `HANDSHAKE_CONCURRENCY`
//! slots ([`Admission`]) or are told to come back later (`overloaded`, `retryAfterMs`). The attach enforces the cap again atomically ([`mesh_full`]), so
//! handshakes racing on several replicas cannot overshoot it. A stranger or a
//! bad signature costs the same at a mesh of 1 and at a full one, and never learns whether
//! the mesh is full.

use serde_json::Value;

use crate::cluster::presence::Presence;
use crate::cluster::presence::{PeerRole, PresenceQuery, PresenceRecord};
use crate::metrics::Metrics;
use crate::protocol::signing::{self, SignatureError};
use crate::protocol::{Hello, PeerMeta, SessionHello, codes};
use crate::store::{Member, Mesh, Store};

/// What the handshake checks need: the store, presence, their limits and the refusal
/// counters, not the whole node (`Node::handshake` builds it; `&Node` converts into it).
#[derive(Clone, Copy)]
pub struct Handshake<'a> {
    pub store: &'a dyn Store,
    pub presence: &'a dyn Presence,
    pub limits: Limits,
    pub metrics: &'a Metrics,
}

/// The configured limits a handshake enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `TIMESTAMP_SKEW_MS`: how far a hello's timestamp may be from the broker clock.
    pub timestamp_skew: std::time::Duration,
    /// `MAX_CONNECTIONS_PER_MESH`.
    pub max_connections_per_mesh: usize,
    /// `SESSION_KEY_MEMORY_MS`: how long a proven session key stays reserved.
    pub session_key_memory: std::time::Duration,
    /// `SESSION_HELLO_BURST_PER_MEMBER` (0 disables the limit).
    pub session_hello_burst: u32,
    /// `SESSION_HELLOS_PER_MEMBER_PER_MIN` (0 disables the limit).
    pub session_hellos_per_min: u32,
}

/// Longest attestation lifetime a session key may be vouched for.
const MAX_ATTESTATION_MS: i64 = 24 * 60 * 60 * 1000;

/// A refused handshake: sent as `error{code, message}`, then the socket is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandshakeError {
    pub code: &'static str,
    pub message: String,
}

impl HandshakeError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Close code and reason: `banned` for a revoked member, `try_again_later` for an
    /// overloaded replica, else the handshake close with the code as its reason.
    pub fn close(&self) -> (u16, &'static str) {
        match self.code {
            "revoked" => codes::BANNED.pair(),
            OVERLOADED => codes::TRY_AGAIN_LATER.pair(),
            code => codes::Close::handshake(code),
        }
    }

    /// The refusal of a handshake an overloaded replica cannot take now: the client should
    /// come back after `retry_after` (`error.retryAfterMs`).
    pub fn overloaded(retry_after: std::time::Duration) -> Self {
        Self::new(
            OVERLOADED,
            format!(
                "this broker is taking too many handshakes; {RETRY_IN}{} ms",
                retry_after.as_millis()
            ),
        )
    }

    /// The back-off an `overloaded` refusal asks for, in milliseconds.
    pub fn retry_after_ms(&self) -> Option<u64> {
        if self.code != OVERLOADED {
            return None;
        }
        let (_, rest) = self.message.split_once(RETRY_IN)?;
        rest.split(' ').next()?.parse().ok()
    }

    /// The `error` frame: `{type, code, message, retryAfterMs?, _reqId?}`.
    pub fn frame(&self, req_id: Option<&str>) -> bytes::Bytes {
        match self.retry_after_ms() {
            None => crate::protocol::error_frame(self.code, &self.message, req_id),
            Some(ms) => {
                let mut frame = serde_json::json!({
                    "type": "error",
                    "code": self.code,
                    "message": self.message,
                    "retryAfterMs": ms,
                });
                if let Some(r) = req_id {
                    frame["_reqId"] = r.into();
                }
                bytes::Bytes::from(frame.to_string())
            }
        }
    }
}

/// The handshake error code of an overloaded replica (close 1013 `try_again_later`).
pub const OVERLOADED: &str = "overloaded";
const RETRY_IN: &str = "retry in ";

/// Handshake admission: at most `HANDSHAKE_CONCURRENCY` handshakes verify and attach at
/// once on this replica; the others wait in arrival order (a fair semaphore) for at most
/// `HANDSHAKE_QUEUE_WAIT_MS`, and at most `HANDSHAKE_QUEUE_MAX` of them. A handshake that
/// cannot wait is refused `overloaded` with a `retryAfterMs`, never `internal`: a
/// reconnect storm costs a bounded number of backend calls in flight, so the replica's own
/// calls (heartbeat, reaper, sends) keep their latency and nothing times out.
pub struct Admission {
    slots: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    concurrency: usize,
    waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    queue_max: usize,
    wait: std::time::Duration,
    retry_after: std::time::Duration,
    in_flight_gauge: prometheus_client::metrics::gauge::Gauge,
    waiting_gauge: prometheus_client::metrics::gauge::Gauge,
    shed: prometheus_client::metrics::family::Family<
        crate::metrics::ReasonLabel,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("concurrency", &self.concurrency)
            .field("queue_max", &self.queue_max)
            .finish_non_exhaustive()
    }
}

/// One admitted handshake's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Counts a waiting handshake while it waits (also when its task is dropped meanwhile).
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.waiting_gauge.dec();
    }
}

impl Admission {
    pub fn new(config: &crate::config::Config, metrics: &Metrics) -> Self {
        let concurrency = config.handshake_concurrency;
        Admission {
            slots: (concurrency > 0)
                .then(|| std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency))),
            concurrency,
            waiting: Default::default(),
            queue_max: config.handshake_queue_max,
            wait: config.handshake_queue_wait,
            retry_after: config.handshake_retry_after,
            in_flight_gauge: metrics.handshakes_in_flight.clone(),
            waiting_gauge: metrics.handshakes_waiting.clone(),
            shed: metrics.handshakes_shed.clone(),
        }
    }

    fn shed(&self, reason: &'static str) -> std::time::Duration {
        self.shed
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
        self.retry_after()
    }

    /// `HANDSHAKE_RETRY_AFTER_MS` jittered into [1×, 2×), scaled by how many handshakes
    /// wait per slot (at most 8×), so that refused clients spread out.
    fn retry_after(&self) -> std::time::Duration {
        let per_slot =
            self.waiting.load(std::sync::atomic::Ordering::Relaxed) / self.concurrency.max(1);
        let scale = (1 + per_slot).min(8) as f64;
        let jitter = 1.0 + rand::random::<f64>();
        self.retry_after.mul_f64(scale * jitter)
    }

    /// Before a WebSocket upgrade: `Some(retry_after)` when the handshake queue is full, so
    /// the upgrade is answered 503 with `Retry-After` rather than accepted and refused.
    pub fn shed_before_upgrade(&self) -> Option<std::time::Duration> {
        let slots = self.slots.as_ref()?;
        if slots.available_permits() == 0
            && self.waiting.load(std::sync::atomic::Ordering::SeqCst) >= self.queue_max
        {
            Some(self.shed("upgrade"))
        } else {
            None
        }
    }

    /// A slot for one handshake: at once when one is free, else after the handshakes that
    /// came first, within `HANDSHAKE_QUEUE_WAIT_MS`; refused `overloaded` otherwise.
    pub async fn admit(&self) -> Result<Slot> {
        let Some(slots) = &self.slots else {
            self.in_flight_gauge.inc();
            return Ok(Slot {
                _permit: None,
                gauge: self.in_flight_gauge.clone(),
            });
        };
        let permit = match slots.clone().try_acquire_owned() {
            // Free, and nobody waits before us (the semaphore queues fairly).
            Ok(p) => p,
            Err(_) => {
                let waiting = self
                    .waiting
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.waiting_gauge.inc();
                let guard = Waiting(self);
                if waiting >= self.queue_max {
                    drop(guard);
                    return Err(HandshakeError::overloaded(self.shed("queue_full")));
                }
                match tokio::time::timeout(self.wait, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    // Closed: never (the semaphore is never closed); or timed out.
                    _ => {
                        drop(guard);
                        return Err(HandshakeError::overloaded(self.shed("wait")));
                    }
                }
            }
        };
        self.in_flight_gauge.inc();
        Ok(Slot {
            _permit: Some(permit),
            gauge: self.in_flight_gauge.clone(),
        })
    }
}

/// A handshake that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub mesh: Mesh,
    pub member: Member,
    /// The routing key of a session, when the connection has one.
    pub session_key: Option<String>,
    pub peer_role: PeerRole,
    pub meta: PeerMeta,
    /// The presence records the attach decides by (reattach, replacement), read once the
    /// handshake was authenticated and passed the capacity check: those with the
    /// handshake's session key or `sessionId` (`Presence::find`, not the whole mesh). A
    /// superset (the whole mesh) is fine too.
    pub records: Vec<PresenceRecord>,
}

type Result<T> = std::result::Result<T, HandshakeError>;

fn unavailable(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::new("internal", format!("broker backend unavailable: {e}"))
}

/// An integer number of milliseconds, or `None` for anything else (floats with a
/// fraction, strings, null).
fn integer_ms(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && f.fract() == 0.0)
            .map(|f| f as i64)
    })
}

/// The capacity check, in O(1): the backend keeps a count of the mesh's live presences.
/// Called only after the handshake is authenticated; the lookup `attach` needs follows it.
async fn check_capacity(deps: &Handshake<'_>, mesh_id: &str) -> Result<()> {
    let open = deps
        .presence
        .live_count(mesh_id)
        .await
        .map_err(unavailable)?;
    if open >= deps.limits.max_connections_per_mesh {
        return Err(mesh_full());
    }
    Ok(())
}

/// The records a handshake can concern, from the backend's per-key indexes (never the
/// whole mesh): those with its session key (a reattach), with its `sessionId` (a reattach
/// without session keys, or a replacement) and with the unproven `foreign` key as routing
/// key (another member's live presence using it).
async fn related(
    deps: &Handshake<'_>,
    mesh_id: &str,
    session_key: Option<&str>,
    session_id: Option<&str>,
    foreign: Option<&str>,
) -> Result<Vec<PresenceRecord>> {
    let q = PresenceQuery {
        session_key,
        session_id,
        routing_key: foreign,
        member_id: None,
    };
    if q.is_empty() {
        return Ok(Vec::new());
    }
    deps.presence.find(mesh_id, q).await.map_err(unavailable)
}

/// The refusal of a handshake that found the mesh full: by the O(1) check before the
/// listing, or by the attach itself when concurrent handshakes filled the last slots.
pub fn mesh_full() -> HandshakeError {
    HandshakeError::new("capacity", "mesh connection limit reached")
}

/// The bucket of a member's `session_hello`s: a fixed-length name whatever the ids' sizes
/// (the token bucket's TTL is one refill period).
fn session_hello_bucket(mesh_id: &str, member_id: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(mesh_id.as_bytes());
    h.update([0u8]);
    h.update(member_id.as_bytes());
    format!("shello:{}", hex::encode(&h.finalize()[..16]))
}

/// The cluster-wide `session_hello` rate limit of one member. Called once the signatures
/// verified and the member is known, so a stranger cannot spend a member's budget, and
/// before the session key is reserved, so a refused handshake stores nothing.
async fn check_session_hello_rate(
    deps: &Handshake<'_>,
    mesh_id: &str,
    member_id: &str,
) -> Result<()> {
    let ok = deps
        .presence
        .take_send_token(
            &session_hello_bucket(mesh_id, member_id),
            deps.limits.session_hello_burst,
            deps.limits.session_hellos_per_min,
        )
        .await
        .map_err(unavailable)?;
    if ok {
        Ok(())
    } else {
        Err(HandshakeError::new(
            "rate_limited",
            "too many session handshakes for this member; retry later",
        ))
    }
}

fn captured(deps: &Handshake<'_>, reason: &'static str, message: &str) -> HandshakeError {
    deps.metrics.refuse_session_key(reason);
    HandshakeError::new("bad_session_pubkey", message)
}

/// Skew, shape, signature and replay of a signed hello text.
async fn check_signed(
    deps: &Handshake<'_>,
    timestamp: &Value,
    pubkey: &str,
    text: impl Fn(i64) -> String,
    signature: &str,
    now: i64,
) -> Result<()> {
    let skew = deps.limits.timestamp_skew.as_millis() as i64;
    let ts = match integer_ms(timestamp) {
        Some(ts) if (now - ts).abs() <= skew => ts,
        _ => {
            return Err(HandshakeError::new(
                "timestamp_skew",
                "timestamp is missing or too far from the broker clock",
            ));
        }
    };
    match signing::verify(pubkey, &text(ts), signature) {
        Ok(()) => {}
        Err(SignatureError::Malformed) => {
            return Err(HandshakeError::new(
                "malformed",
                "pubkey must be 64 hex and signature 128 hex",
            ));
        }
        Err(SignatureError::Invalid) => {
            return Err(HandshakeError::new(
                "bad_signature",
                "signature does not verify",
            ));
        }
    }
    // A signature stays acceptable for `skew` on either side of its timestamp.
    let fresh = deps
        .presence
        .remember_signature(
            &signature.to_ascii_lowercase(),
            deps.limits.timestamp_skew * 2,
        )
        .await
        .map_err(unavailable)?;
    if !fresh {
        return Err(HandshakeError::new(
            "replayed",
            "this signature was already used",
        ));
    }
    Ok(())
}

/// The mesh and the non-revoked member owning `pubkey`.
async fn find_member(deps: &Handshake<'_>, mesh_id: &str, pubkey: &str) -> Result<(Mesh, Member)> {
    let (mesh, member, archived) = tokio::join!(
        deps.store.mesh(mesh_id),
        deps.store.member_by_pubkey(mesh_id, pubkey),
        deps.store.mesh_archived(mesh_id),
    );
    let (mesh, member) = (mesh.map_err(unavailable)?, member.map_err(unavailable)?);
    // A deleted (archived) mesh refuses new handshakes (cli-routes §11, Ours).
    if archived.map_err(unavailable)? {
        return Err(HandshakeError::new("unauthorized", "this mesh was deleted"));
    }
    match (mesh, member) {
        (Some(mesh), Some(member)) if member.revoked_at.is_none() => Ok((mesh, member)),
        (Some(mesh), Some(_)) => Err(HandshakeError::new(
            "revoked",
            format!(
                "You've been removed from \"{}\". Contact the mesh owner to rejoin.",
                mesh.name
            ),
        )),
        _ => Err(HandshakeError::new(
            "unauthorized",
            "no member of this mesh has this key",
        )),
    }
}

pub async fn verify_hello<'a>(
    deps: impl Into<Handshake<'a>>,
    h: &Hello,
    now: i64,
) -> Result<Verified> {
    let deps = &deps.into();
    if let Some(sk) = &h.session_pubkey
        && !signing::is_key_hex(sk)
    {
        return Err(HandshakeError::new(
            "bad_session_pubkey",
            "sessionPubkey must be 64 lowercase hex",
        ));
    }
    let text = |ts| signing::hello_text(&h.mesh_id, &h.member_id, &h.pubkey, ts);
    check_signed(deps, &h.timestamp, &h.pubkey, text, &h.signature, now).await?;
    let (mesh, member) = find_member(deps, &h.mesh_id, &h.pubkey).await?;
    // An unproven session key may not be another member's key: not its member key, not a
    // session key it proved (even after that session ended), not its live routing key.
    let foreign_key = h.session_pubkey.as_ref().filter(|sk| **sk != member.pubkey);
    if let Some(sk) = foreign_key {
        if deps
            .store
            .member_by_pubkey(&mesh.id, sk)
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Err(captured(
                deps,
                "member_key",
                "sessionPubkey is another member's key",
            ));
        }
        let prover = deps
            .presence
            .session_key_prover(&mesh.id, sk)
            .await
            .map_err(unavailable)?;
        if prover.is_some_and(|p| p != member.id) {
            return Err(captured(
                deps,
                "proven_session_key",
                "sessionPubkey is a session key another member proved",
            ));
        }
    }
    check_capacity(deps, &mesh.id).await?;
    let records = related(
        deps,
        &mesh.id,
        h.session_pubkey.as_deref(),
        h.meta.session_id.as_deref(),
        foreign_key.map(String::as_str),
    )
    .await?;
    if let Some(sk) = foreign_key
        && records
            .iter()
            .any(|r| r.is_live() && r.member_id != member.id && r.routing_key() == sk.as_str())
    {
        return Err(captured(
            deps,
            "live_routing_key",
            "sessionPubkey is the routing key of another member's presence",
        ));
    }
    Ok(Verified {
        mesh,
        member,
        session_key: h.session_pubkey.clone(),
        peer_role: PeerRole::ControlPlane,
        meta: h.meta.clone(),
        records,
    })
}

pub async fn verify_session_hello<'a>(
    deps: impl Into<Handshake<'a>>,
    h: &SessionHello,
    now: i64,
) -> Result<Verified> {
    let deps = &deps.into();
    if !signing::is_key_hex(&h.session_pubkey) {
        return Err(HandshakeError::new(
            "bad_session_pubkey",
            "sessionPubkey must be 64 lowercase hex",
        ));
    }
    if !signing::is_key_hex(&h.parent_member_pubkey) {
        return Err(HandshakeError::new(
            "bad_parent_pubkey",
            "parentMemberPubkey must be 64 lowercase hex",
        ));
    }
    let att = h.parent_attestation.clone().unwrap_or_default();
    if h.parent_attestation.is_some()
        && (att.session_pubkey != h.session_pubkey
            || att.parent_member_pubkey != h.parent_member_pubkey)
    {
        return Err(HandshakeError::new(
            "attestation_mismatch",
            "attestation keys differ from the hello's keys",
        ));
    }
    let Some(expires_at) = integer_ms(&att.expires_at) else {
        return Err(HandshakeError::new(
            "malformed",
            "parentAttestation with an integer expiresAt is required",
        ));
    };
    if expires_at <= now {
        return Err(HandshakeError::new(
            "expired",
            "the session attestation has expired",
        ));
    }
    if expires_at > now + MAX_ATTESTATION_MS {
        return Err(HandshakeError::new(
            "ttl_too_long",
            "a session attestation may last at most 24 h",
        ));
    }
    let att_text =
        signing::attestation_text(&h.parent_member_pubkey, &h.session_pubkey, expires_at);
    match signing::verify(&h.parent_member_pubkey, &att_text, &att.signature) {
        Ok(()) => {}
        Err(SignatureError::Malformed) => {
            return Err(HandshakeError::new(
                "malformed",
                "attestation signature must be 128 hex",
            ));
        }
        Err(SignatureError::Invalid) => {
            return Err(HandshakeError::new(
                "bad_signature",
                "attestation signature does not verify",
            ));
        }
    }
    let text = |ts| {
        signing::session_hello_text(&h.mesh_id, &h.parent_member_pubkey, &h.session_pubkey, ts)
    };
    check_signed(
        deps,
        &h.timestamp,
        &h.session_pubkey,
        text,
        &h.signature,
        now,
    )
    .await?;
    let (mesh, member) = find_member(deps, &h.mesh_id, &h.parent_member_pubkey).await?;
    if let Some(id) = &h.parent_member_id
        && *id != member.id
    {
        return Err(HandshakeError::new(
            "parent_member_id_mismatch",
            "parentMemberId is not the member of parentMemberPubkey",
        ));
    }
    check_session_hello_rate(deps, &mesh.id, &member.id).await?;
    // The attestation signed this key: it stays reserved for this member at least as long
    // as the attestation lasts, so no other member's `hello` can announce it meanwhile.
    let memory = deps
        .limits
        .session_key_memory
        .max(std::time::Duration::from_millis((expires_at - now) as u64));
    deps.presence
        .remember_session_key(&mesh.id, &h.session_pubkey, &member.id, memory)
        .await
        .map_err(unavailable)?;
    check_capacity(deps, &mesh.id).await?;
    let records = related(
        deps,
        &mesh.id,
        Some(&h.session_pubkey),
        h.meta.session_id.as_deref(),
        None,
    )
    .await?;
    Ok(Verified {
        mesh,
        member,
        session_key: Some(h.session_pubkey.clone()),
        peer_role: PeerRole::Session,
        meta: h.meta.clone(),
        records,
    })
}

/// Constant-time comparison of a presented bearer token with the configured one.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (presented.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_compare_exactly() {
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(!bearer_matches(Some("Bearer abd"), "abc"));
        assert!(!bearer_matches(Some("Bearer ab"), "abc"));
        assert!(!bearer_matches(Some("abc"), "abc"));
        assert!(!bearer_matches(None, "abc"));
    }

    #[test]
    fn only_integer_timestamps_count() {
        assert_eq!(integer_ms(&serde_json::json!(5)), Some(5));
        assert_eq!(integer_ms(&serde_json::json!(5.0)), Some(5));
        assert_eq!(integer_ms(&serde_json::json!(5.5)), None);
        assert_eq!(integer_ms(&serde_json::json!("5")), None);
        assert_eq!(integer_ms(&Value::Null), None);
    }

    #[test]
    fn overloaded_asks_to_retry_later_with_its_delay() {
        let e = HandshakeError::overloaded(std::time::Duration::from_millis(1234));
        assert_eq!(e.close(), codes::TRY_AGAIN_LATER.pair());
        assert_eq!(e.retry_after_ms(), Some(1234));
        let frame: Value = serde_json::from_slice(&e.frame(Some("r1"))).expect("json");
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["code"], "overloaded");
        assert_eq!(frame["retryAfterMs"], 1234);
        assert_eq!(frame["_reqId"], "r1");
        let other: Value = serde_json::from_slice(&mesh_full().frame(None)).expect("json");
        assert!(other.get("retryAfterMs").is_none());
    }

    #[tokio::test]
    async fn admission_bounds_handshakes_and_sheds_the_rest() {
        let mut config = crate::config::Config::from_source(&std::collections::BTreeMap::from([
            ("HANDSHAKE_CONCURRENCY".to_string(), "1".to_string()),
            ("HANDSHAKE_QUEUE_MAX".to_string(), "1".to_string()),
            ("HANDSHAKE_QUEUE_WAIT_MS".to_string(), "50".to_string()),
        ]))
        .expect("config");
        config.handshake_retry_after = std::time::Duration::from_millis(100);
        let metrics = Metrics::new();
        let admission = Admission::new(&config, &metrics);
        let first = admission.admit().await.expect("a free slot");
        assert_eq!(metrics.handshakes_in_flight.get(), 1);
        // The second waits; a third finds the queue full at once.
        let second = admission.admit();
        tokio::pin!(second);
        assert!(futures_util::poll!(&mut second).is_pending());
        assert!(admission.shed_before_upgrade().is_some());
        let third = admission.admit().await.expect_err("queue full");
        assert_eq!(third.code, OVERLOADED);
        assert!(
            third
                .retry_after_ms()
                .is_some_and(|ms| (100..=1600).contains(&ms))
        );
        // The slot freed goes to the one waiting.
        drop(first);
        let second = second.await.expect("admitted in turn");
        assert_eq!(metrics.handshakes_waiting.get(), 0);
        // Nobody frees it now: the next one times out waiting.
        let late = admission.admit().await.expect_err("waited too long");
        assert_eq!(late.code, OVERLOADED);
        drop(second);
        assert_eq!(metrics.handshakes_in_flight.get(), 0);
        admission.admit().await.expect("free again");
    }

    #[test]
    fn revoked_closes_banned_and_others_with_their_code() {
        assert_eq!(
            HandshakeError::new("revoked", "").close(),
            codes::BANNED.pair()
        );
        assert_eq!(
            HandshakeError::new("capacity", "").close(),
            (codes::HANDSHAKE.code, "capacity")
        );
    }
}
