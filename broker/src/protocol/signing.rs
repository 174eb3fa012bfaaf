//! The signed texts of the protocol and their strict ed25519 verification.
//!
//! Every signature is an RFC 8032 detached signature in lowercase hex over the UTF-8 bytes
//! of a `|`-joined text. Verification is strict (`verify_strict`): non-canonical signatures
//! and small-order keys are refused, as libsodium refuses them.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Why a key or signature was refused. The handshake maps these to its error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("key or signature is not well-formed hex of the right length")]
    Malformed,
    #[error("signature does not verify")]
    Invalid,
}

/// `meshId|memberId|pubkey|timestamp`: what a `hello` signs with the member key.
pub fn hello_text(mesh_id: &str, member_id: &str, pubkey: &str, timestamp: i64) -> String {
    format!("{mesh_id}|{member_id}|{pubkey}|{timestamp}")
}

/// What a member key signs to vouch for a session key.
pub fn attestation_text(parent_pubkey: &str, session_pubkey: &str, expires_at: i64) -> String {
    format!("claudemesh-session-attest|{parent_pubkey}|{session_pubkey}|{expires_at}")
}

/// What a `session_hello` signs with the session key.
pub fn session_hello_text(
    mesh_id: &str,
    parent_pubkey: &str,
    session_pubkey: &str,
    timestamp: i64,
) -> String {
    format!("claudemesh-session-hello|{mesh_id}|{parent_pubkey}|{session_pubkey}|{timestamp}")
}

/// The fields of a v1 invite payload, in signing order.
#[derive(Debug, Clone, Copy)]
pub struct InviteFields<'a> {
    pub v: i64,
    pub mesh_id: &'a str,
    pub mesh_slug: &'a str,
    pub broker_url: &'a str,
    pub expires_at: i64,
    pub mesh_root_key: &'a str,
    pub role: &'a str,
    pub owner_pubkey: &'a str,
}

/// `v|mesh_id|mesh_slug|broker_url|expires_at|mesh_root_key|role|owner_pubkey`.
pub fn invite_text(f: &InviteFields<'_>) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{}",
        f.v,
        f.mesh_id,
        f.mesh_slug,
        f.broker_url,
        f.expires_at,
        f.mesh_root_key,
        f.role,
        f.owner_pubkey
    )
}

/// True for exactly 64 lowercase hex characters (the shape of every public key).
pub fn is_key_hex(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// True for exactly 128 lowercase-or-uppercase hex characters (the shape of a signature).
pub fn is_signature_hex(s: &str) -> bool {
    s.len() == 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a 64-hex public key; small-order and non-canonical points are refused later by
/// `verify_strict`.
pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, SignatureError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| SignatureError::Malformed)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::Invalid)
}

/// Verifies `signature_hex` by `pubkey_hex` over `text`.
pub fn verify(pubkey_hex: &str, text: &str, signature_hex: &str) -> Result<(), SignatureError> {
    if !is_key_hex(pubkey_hex) || !is_signature_hex(signature_hex) {
        return Err(SignatureError::Malformed);
    }
    let key = parse_key(pubkey_hex)?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut sig).map_err(|_| SignatureError::Malformed)?;
    key.verify_strict(text.as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::Invalid)
}

/// A signing key from a 32-byte seed in hex (how the broker keeps mesh owner keys).
pub fn signing_key_from_seed_hex(seed_hex: &str) -> Result<SigningKey, SignatureError> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(seed_hex, &mut seed).map_err(|_| SignatureError::Malformed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs `text`, returning lowercase hex.
pub fn sign_hex(key: &SigningKey, text: &str) -> String {
    hex::encode(key.sign(text.as_bytes()).to_bytes())
}

/// The lowercase-hex public key of a signing key.
pub fn pubkey_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../tests/data/vectors.json")).expect("vectors parse")
    }

    fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
        path.iter()
            .fold(v, |v, k| &v[*k])
            .as_str()
            .unwrap_or_else(|| panic!("{path:?} is a string"))
    }

    #[test]
    fn hello_vector_verifies_and_a_flipped_byte_does_not() {
        let v = vectors();
        let h = &v["hello"];
        let text = hello_text(
            s(h, &["meshId"]),
            s(h, &["memberId"]),
            s(h, &["pubkey"]),
            h["timestamp"].as_i64().unwrap_or(0),
        );
        assert_eq!(text, s(h, &["signed_text"]));
        assert_eq!(
            verify(s(h, &["pubkey"]), &text, s(h, &["signature"])),
            Ok(())
        );
        let bad = s(&v, &["hello_bad_signature", "signature"]);
        assert_eq!(
            verify(s(h, &["pubkey"]), &text, bad),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn signing_with_the_vector_seed_reproduces_the_vector() {
        let v = vectors();
        let key = signing_key_from_seed_hex(s(&v, &["keys", "member", "seed"])).expect("seed");
        assert_eq!(pubkey_hex(&key), s(&v, &["keys", "member", "pubkey"]));
        assert_eq!(
            sign_hex(&key, s(&v, &["hello", "signed_text"])),
            s(&v, &["hello", "signature"])
        );
    }

    #[test]
    fn session_vectors_verify() {
        let v = vectors();
        let a = &v["session_attestation"];
        let text = attestation_text(
            s(a, &["parentMemberPubkey"]),
            s(a, &["sessionPubkey"]),
            a["expiresAt"].as_i64().unwrap_or(0),
        );
        assert_eq!(text, s(a, &["signed_text"]));
        assert_eq!(
            verify(s(a, &["parentMemberPubkey"]), &text, s(a, &["signature"])),
            Ok(())
        );
        let h = &v["session_hello"];
        let text = session_hello_text(
            s(h, &["meshId"]),
            s(h, &["parentMemberPubkey"]),
            s(h, &["sessionPubkey"]),
            h["timestamp"].as_i64().unwrap_or(0),
        );
        assert_eq!(text, s(h, &["signed_text"]));
        assert_eq!(
            verify(s(h, &["sessionPubkey"]), &text, s(h, &["signature"])),
            Ok(())
        );
        // The attestation signature is not a valid session-hello signature.
        assert_eq!(
            verify(s(h, &["sessionPubkey"]), &text, s(a, &["signature"])),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn invite_vector_verifies() {
        let v = vectors();
        let p = &v["invite_v1"]["payload"];
        let text = invite_text(&InviteFields {
            v: p["v"].as_i64().unwrap_or(0),
            mesh_id: s(p, &["mesh_id"]),
            mesh_slug: s(p, &["mesh_slug"]),
            broker_url: s(p, &["broker_url"]),
            expires_at: p["expires_at"].as_i64().unwrap_or(0),
            mesh_root_key: s(p, &["mesh_root_key"]),
            role: s(p, &["role"]),
            owner_pubkey: s(p, &["owner_pubkey"]),
        });
        assert_eq!(text, s(&v, &["invite_v1", "signed_text"]));
        assert_eq!(
            verify(s(p, &["owner_pubkey"]), &text, s(p, &["signature"])),
            Ok(())
        );
    }

    #[test]
    fn shapes_are_checked_before_cryptography() {
        assert_eq!(
            verify("abc", "x", &"0".repeat(128)),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&"A".repeat(64), "x", &"0".repeat(128)),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&"a".repeat(64), "x", "00"),
            Err(SignatureError::Malformed)
        );
        // The identity point is small-order: strict verification refuses it.
        let identity = format!("01{}", "0".repeat(62));
        assert!(verify(&identity, "x", &"0".repeat(128)).is_err());
    }
}
