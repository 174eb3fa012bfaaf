//! Identities and the `crypto_box` sealing real clients apply to direct messages.
//!
//! Real claudemesh clients have one ed25519 member key and derive its X25519 twin for
//! `crypto_box` the libsodium way (`crypto_sign_ed25519_pk_to_curve25519` and
//! `crypto_sign_ed25519_sk_to_curve25519`): the public key is the Montgomery form of the
//! Edwards point, the secret key the first half of SHA-512 of the seed (clamped by
//! X25519). The harness does the same, so a recipient's box key comes from its member
//! key alone and no key map is needed beyond the member keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::protocol::signing;
use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use ed25519_dalek::SigningKey;

/// Bytes of a `crypto_box` nonce.
pub const NONCE_BYTES: usize = 24;
/// Bytes `crypto_box` adds to a plaintext (the Poly1305 tag).
pub const TAG_BYTES: usize = 16;

/// One simulated peer's keys.
pub struct Identity {
    pub key: SigningKey,
    /// The member key, 64 lowercase hex.
    pub pubkey: String,
    pub box_secret: SecretKey,
    pub box_public: PublicKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("pubkey", &self.pubkey)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn random() -> Identity {
        Identity::from_seed(broker::ids::random_seed())
    }

    pub fn from_seed(seed: [u8; 32]) -> Identity {
        let key = SigningKey::from_bytes(&seed);
        let pubkey = signing::pubkey_hex(&key);
        let box_secret = SecretKey::from(key.to_scalar_bytes());
        let box_public = PublicKey::from(key.verifying_key().to_montgomery().to_bytes());
        Identity {
            key,
            pubkey,
            box_secret,
            box_public,
        }
    }

    /// The precomputed box between this identity and `other`; the same shared key seals in
    /// both directions, so one box per pair serves sending and opening.
    pub fn box_with(&self, other: &Identity) -> SalsaBox {
        SalsaBox::new(&other.box_public, &self.box_secret)
    }
}

/// Seals `plaintext` with `nonce`; returns `(nonce, ciphertext)` in standard base64.
pub fn seal(b: &SalsaBox, nonce: &[u8; NONCE_BYTES], plaintext: &[u8]) -> (String, String) {
    let ciphertext = b
        .encrypt(nonce.into(), plaintext)
        .unwrap_or_else(|_| Vec::new());
    (STANDARD.encode(nonce), STANDARD.encode(ciphertext))
}

/// Opens a base64 `(nonce, ciphertext)`; `None` when it does not authenticate.
pub fn open(b: &SalsaBox, nonce_b64: &str, ciphertext_b64: &str) -> Option<Vec<u8>> {
    let nonce = STANDARD.decode(nonce_b64).ok()?;
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().ok()?;
    let ciphertext = STANDARD.decode(ciphertext_b64).ok()?;
    b.decrypt((&nonce).into(), ciphertext.as_slice()).ok()
}

/// The plaintext of a load-test message: its client id, padded with `.` to `size` bytes.
pub fn plaintext(client_id: &str, size: usize) -> Vec<u8> {
    let mut p = client_id.as_bytes().to_vec();
    if p.len() < size {
        p.resize(size, b'.');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_sealed_to_a_peer_opens_with_the_peers_key_only() {
        let a = Identity::random();
        let b = Identity::random();
        let c = Identity::random();
        let nonce = [7u8; NONCE_BYTES];
        let (n, ct) = seal(&a.box_with(&b), &nonce, b"hello bob");
        assert_eq!(
            open(&b.box_with(&a), &n, &ct).as_deref(),
            Some(&b"hello bob"[..])
        );
        assert_eq!(open(&c.box_with(&a), &n, &ct), None);
        assert_eq!(STANDARD.decode(&ct).expect("base64").len(), 9 + TAG_BYTES);
    }

    #[test]
    fn box_keys_are_the_libsodium_conversion_of_the_member_key() {
        // RFC 8032 test vector 1 and its libsodium crypto_sign_ed25519_pk_to_curve25519 /
        // sk_to_curve25519 images.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .expect("hex")
                .try_into()
                .expect("32 bytes");
        let id = Identity::from_seed(seed);
        assert_eq!(
            id.pubkey,
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex::encode(id.box_public.as_bytes()),
            "d85e07ec22b0ad881537c2f44d662d1a143cf830c57aca4305d85c7a90f6b62e"
        );
        // The secret key must agree with the public key: X25519(sk, basepoint) == pk.
        assert_eq!(id.box_secret.public_key(), id.box_public);
    }

    #[test]
    fn plaintext_is_padded_not_truncated() {
        assert_eq!(plaintext("ab", 4), b"ab..");
        assert_eq!(plaintext("abcdef", 4), b"abcdef");
    }
}
