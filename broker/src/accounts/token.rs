//! CLI session tokens: JWT-shaped (base64url header, payload and signature), HS256, as
//! the CLI decodes them (`cli-routes.md` §2). The broker stores only their SHA-256 hash and
//! checks, on every use, the hash **and** the signature and `exp`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The HS256 key derived from another secret (the admin token), domain-separated.
pub fn derive_secret(from: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(from).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch is unreachable.
        HmacSha256::new_from_slice(b"unreachable").expect("hmac key")
    });
    mac.update(b"claudemesh broker: cli session token key v1");
    mac.finalize().into_bytes().to_vec()
}

fn mac(secret: &[u8], text: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| HmacSha256::new_from_slice(b"unreachable").expect("hmac key"));
    mac.update(text);
    mac
}

/// Signs `payload` (a JSON object) as an HS256 JWT.
pub fn sign(secret: &[u8], payload: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let signing_input = format!("{header}.{body}");
    let sig = mac(secret, signing_input.as_bytes())
        .finalize()
        .into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Why a JWT was refused; the texts are `/cli-sync`'s (`sync token invalid: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed JWT")]
    Malformed,
    #[error("invalid signature")]
    BadSignature,
    #[error("unsupported algorithm: {0}")]
    Algorithm(String),
    #[error("token expired")]
    Expired,
}

/// Verifies an HS256 JWT in `/cli-sync`'s order (3 parts, signature, `alg`, `exp`) and
/// returns its payload. `now_s`: Unix seconds.
pub fn verify(secret: &[u8], token: &str, now_s: i64) -> Result<Value, JwtError> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, body, sig] = parts.as_slice() else {
        return Err(JwtError::Malformed);
    };
    let sig = URL_SAFE_NO_PAD
        .decode(sig.trim_end_matches('='))
        .map_err(|_| JwtError::BadSignature)?;
    mac(secret, format!("{header}.{body}").as_bytes())
        .verify_slice(&sig)
        .map_err(|_| JwtError::BadSignature)?;
    let decode = |part: &str| -> Result<Value, JwtError> {
        let raw = URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?;
        serde_json::from_slice(&raw).map_err(|_| JwtError::Malformed)
    };
    let header = decode(header)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "HS256" {
        return Err(JwtError::Algorithm(alg.to_string()));
    }
    let payload = decode(body)?;
    if !payload.is_object() {
        return Err(JwtError::Malformed);
    }
    match payload.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now_s => Ok(payload),
        _ => Err(JwtError::Expired),
    }
}

/// The payload of a CLI session token (`cli-routes.md` §2).
pub fn session_payload(
    user_id: &str,
    email: &str,
    name: &str,
    kind: &str,
    jti: &str,
    iat_s: i64,
    exp_s: i64,
) -> Value {
    json!({"sub": user_id, "email": email, "name": name, "type": kind, "jti": jti, "iat": iat_s, "exp": exp_s})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let t = sign(
            secret,
            &session_payload("u1", "a@b", "A", "cli-session", "j", 10, 100),
        );
        assert_eq!(t.split('.').count(), 3);
        assert!(t.len() > 50);
        let p = verify(secret, &t, 50).expect("valid");
        assert_eq!(p["sub"], "u1");
        assert_eq!(verify(secret, &t, 100), Err(JwtError::Expired));
        assert_eq!(verify(b"other", &t, 50), Err(JwtError::BadSignature));
        let mut forged: Vec<&str> = t.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","exp":999}"#);
        forged[1] = &evil;
        assert_eq!(
            verify(secret, &forged.join("."), 50),
            Err(JwtError::BadSignature)
        );
        assert_eq!(verify(secret, "a.b", 50), Err(JwtError::Malformed));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"exp":999}"#)
        );
        assert_eq!(verify(secret, &none, 50), Err(JwtError::BadSignature));
    }
}
