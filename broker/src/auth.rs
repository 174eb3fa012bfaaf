//! Handshake verification (`hello`, `session_hello`), and the bearer check of the operator
//! API.
//!
//! **Beyond** the protocol's order, nothing that grows with the mesh runs before the
//! handshake is authenticated: the shape checks, the signatures and the replay guard come
//! first, then the member lookup, and only then the capacity check (one O(1) count of the
//! mesh's live presences) and the listing of the mesh that `attach` uses. A stranger or a
//! bad signature costs the same at a mesh of 1 and at a full one, and never learns whether
//! the mesh is full.

use serde_json::Value;

use crate::cluster::presence::{PeerRole, PresenceRecord};
use crate::node::Node;
use crate::protocol::signing::{self, SignatureError};
use crate::protocol::{Hello, PeerMeta, SessionHello};
use crate::store::{Member, Mesh};

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

    /// Close code and reason: 4002 `banned` for a revoked member, else 1008 with the code.
    pub fn close(&self) -> (u16, &'static str) {
        if self.code == "revoked" {
            (4002, "banned")
        } else {
            (1008, self.code)
        }
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
    /// The mesh's presence records, listed once the handshake was authenticated and passed
    /// the capacity check, so the attach that follows does not read them again.
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
/// Called only after the handshake is authenticated; the listing `attach` needs follows it.
async fn check_capacity(node: &Node, mesh_id: &str) -> Result<Vec<PresenceRecord>> {
    let open = node
        .presence
        .live_count(mesh_id)
        .await
        .map_err(unavailable)?;
    if open >= node.config.max_connections_per_mesh {
        return Err(HandshakeError::new(
            "capacity",
            "mesh connection limit reached",
        ));
    }
    node.presence.list(mesh_id).await.map_err(unavailable)
}

fn captured(node: &Node, reason: &'static str, message: &str) -> HandshakeError {
    node.metrics.refuse_session_key(reason);
    HandshakeError::new("bad_session_pubkey", message)
}

/// Skew, shape, signature and replay of a signed hello text.
async fn check_signed(
    node: &Node,
    timestamp: &Value,
    pubkey: &str,
    text: impl Fn(i64) -> String,
    signature: &str,
    now: i64,
) -> Result<()> {
    let skew = node.config.timestamp_skew.as_millis() as i64;
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
    let fresh = node
        .presence
        .remember_signature(
            &signature.to_ascii_lowercase(),
            node.config.timestamp_skew * 2,
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
async fn find_member(node: &Node, mesh_id: &str, pubkey: &str) -> Result<(Mesh, Member)> {
    let mesh = node.store.mesh(mesh_id).await.map_err(unavailable)?;
    let member = node
        .store
        .member_by_pubkey(mesh_id, pubkey)
        .await
        .map_err(unavailable)?;
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

pub async fn verify_hello(node: &Node, h: &Hello, now: i64) -> Result<Verified> {
    if let Some(sk) = &h.session_pubkey
        && !signing::is_key_hex(sk)
    {
        return Err(HandshakeError::new(
            "bad_session_pubkey",
            "sessionPubkey must be 64 lowercase hex",
        ));
    }
    let text = |ts| signing::hello_text(&h.mesh_id, &h.member_id, &h.pubkey, ts);
    check_signed(node, &h.timestamp, &h.pubkey, text, &h.signature, now).await?;
    let (mesh, member) = find_member(node, &h.mesh_id, &h.pubkey).await?;
    // An unproven session key may not be another member's key: not its member key, not a
    // session key it proved (even after that session ended), not its live routing key.
    let foreign_key = h.session_pubkey.as_ref().filter(|sk| **sk != member.pubkey);
    if let Some(sk) = foreign_key {
        if node
            .store
            .member_by_pubkey(&mesh.id, sk)
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Err(captured(
                node,
                "member_key",
                "sessionPubkey is another member's key",
            ));
        }
        let prover = node
            .presence
            .session_key_prover(&mesh.id, sk)
            .await
            .map_err(unavailable)?;
        if prover.is_some_and(|p| p != member.id) {
            return Err(captured(
                node,
                "proven_session_key",
                "sessionPubkey is a session key another member proved",
            ));
        }
    }
    let records = check_capacity(node, &mesh.id).await?;
    if let Some(sk) = foreign_key
        && records
            .iter()
            .any(|r| r.is_live() && r.member_id != member.id && r.routing_key() == sk.as_str())
    {
        return Err(captured(
            node,
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

pub async fn verify_session_hello(node: &Node, h: &SessionHello, now: i64) -> Result<Verified> {
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
        node,
        &h.timestamp,
        &h.session_pubkey,
        text,
        &h.signature,
        now,
    )
    .await?;
    let (mesh, member) = find_member(node, &h.mesh_id, &h.parent_member_pubkey).await?;
    if let Some(id) = &h.parent_member_id
        && *id != member.id
    {
        return Err(HandshakeError::new(
            "parent_member_id_mismatch",
            "parentMemberId is not the member of parentMemberPubkey",
        ));
    }
    // The attestation signed this key: it stays reserved for this member at least as long
    // as the attestation lasts, so no other member's `hello` can announce it meanwhile.
    let memory = node
        .config
        .session_key_memory
        .max(std::time::Duration::from_millis((expires_at - now) as u64));
    node.presence
        .remember_session_key(&mesh.id, &h.session_pubkey, &member.id, memory)
        .await
        .map_err(unavailable)?;
    let records = check_capacity(node, &mesh.id).await?;
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
    fn revoked_closes_4002_and_others_1008() {
        assert_eq!(HandshakeError::new("revoked", "").close(), (4002, "banned"));
        assert_eq!(
            HandshakeError::new("capacity", "").close(),
            (1008, "capacity")
        );
    }
}
