//! Password hashing: argon2id (RustCrypto `argon2`, default parameters: 19 MiB, 2
//! iterations), PHC strings with a random salt.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Longest password accepted (argon2 hashes any length; this bounds the work per request).
pub const MAX_PASSWORD_BYTES: usize = 256;
/// Shortest password the operator API sets.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// The argon2id PHC string of `password`.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt[..]);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `phc`.
pub fn verify(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash of a random password, verified against when an email is unknown so that an
/// unknown account costs the same time as a wrong password.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(&crate::ids::random_id(24)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn argon2id_hashes_verify_only_their_password() {
        let h = super::hash("correct horse battery").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse battery", &h));
        assert!(!super::verify("wrong", &h));
        assert!(!super::verify("x", "not a phc string"));
    }
}
