//! The operations of the vault (extensions §16): `vault_set`, `vault_get`, `vault_list`,
//! `vault_delete`, without a transport. Entries live in the store only (no bus).
//!
//! The broker only stores opaque client-encrypted blobs: the CLI seals a random key to
//! the member's own x25519 key, so only the member can open an entry; the broker holds no
//! key for them. **Ours:** it checks their *shape* so that plaintext is not stored by
//! mistake: `ciphertext`, `nonce` and `sealed_key` must be standard base64, the nonce 24
//! bytes (`crypto_secretbox`), the sealed key 80 bytes (`crypto_box_seal` of a 32-byte
//! key) and the ciphertext at least its 16-byte MAC.
//!
//! Authorisation: a member sees and changes only its own entries (every store call names
//! the caller's member); a revoked member is refused. Every refusal is
//! `error{code:"vault_error", message, _reqId}`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Principal, ServiceCtx};
use crate::ids;
use crate::ids::now_ms;
use crate::protocol::ext;
use crate::store::vault::{VaultEntry, VaultMeta};
use crate::store::{Member, StoreError};

/// The nonce size of `crypto_secretbox` (xsalsa20poly1305).
pub const NONCE_BYTES: usize = 24;
/// The size of a `crypto_box_seal` of a 32-byte key (32 + `crypto_box_SEALBYTES` 48).
pub const SEALED_KEY_BYTES: usize = 80;
/// The MAC every `crypto_secretbox` output carries.
pub const MAC_BYTES: usize = 16;

/// Why a vault operation was refused: always `error{code:"vault_error"}`, with
/// [`VaultError::message`]; [`VaultError::metric_label`] is the `reason` of
/// `broker_vault_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultError {
    /// A field missing or not of the expected shape.
    Invalid(String),
    /// A field over its bound.
    TooLarge { what: &'static str, max: usize },
    /// A new key for a member holding `MAX_VAULT_ENTRIES_PER_MEMBER` entries.
    TooManyEntries { max: usize },
    /// The caller's member row is revoked (banned) or gone.
    Revoked { mesh_name: String },
    /// A backend failed; nothing was done.
    Unavailable(String),
}

impl VaultError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            VaultError::Invalid(_) => "invalid",
            VaultError::TooLarge { .. } => "too_large",
            VaultError::TooManyEntries { .. } => "too_many_entries",
            VaultError::Revoked { .. } => "revoked",
            VaultError::Unavailable(_) => "store",
        }
    }

    /// The `error.code` (the spec's one code for the family).
    pub fn code(&self) -> &'static str {
        "vault_error"
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            VaultError::Invalid(why) => why.clone(),
            VaultError::TooLarge { what, max } => format!("{what} is over {max}"),
            VaultError::TooManyEntries { max } => {
                format!("your vault in this mesh already holds {max} entries; delete one first")
            }
            VaultError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            VaultError::Unavailable(e) => format!("vault unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for VaultError {}

fn unavailable(e: StoreError) -> VaultError {
    VaultError::Unavailable(e.to_string())
}

/// Counts a refusal.
fn counted<T>(ctx: &ServiceCtx, result: Result<T, VaultError>) -> Result<T, VaultError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_vault(e.metric_label());
    }
    result
}

/// A `vault_set`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaultSet {
    pub key: String,
    pub ciphertext: String,
    pub nonce: String,
    pub sealed_key: String,
    pub entry_type: String,
    pub mount_path: Option<String>,
    pub description: Option<String>,
}

/// A stored entry as `vault_get` returns it.
pub fn secret(e: &VaultEntry) -> ext::vault::VaultSecret {
    ext::vault::VaultSecret {
        key: e.key.clone(),
        ciphertext: e.ciphertext.clone(),
        nonce: e.nonce.clone(),
        sealed_key: e.sealed_key.clone(),
        entry_type: e.entry_type.clone(),
        mount_path: e.mount_path.clone(),
    }
}

/// A stored entry as `vault_list` shows it.
pub fn listing(m: &VaultMeta) -> ext::vault::VaultListing {
    ext::vault::VaultListing {
        key: m.key.clone(),
        entry_type: m.entry_type.clone(),
        mount_path: m.mount_path.clone(),
        description: m.description.clone(),
        updated_at: ids::iso8601_ms(m.updated_at),
    }
}

/// The caller's member row as the member cache has it (dropped cluster-wide on a ban).
async fn current_member(ctx: &ServiceCtx, p: &Principal) -> Result<Member, VaultError> {
    let members = ctx.members(&p.mesh.id).await.map_err(unavailable)?;
    members
        .iter()
        .find(|m| m.id == p.member.id && m.revoked_at.is_none())
        .cloned()
        .ok_or_else(|| VaultError::Revoked {
            mesh_name: p.mesh.name.clone(),
        })
}

/// The decoded length of a base64 field, or why it is refused.
fn base64_len(field: &str, value: &str) -> Result<usize, VaultError> {
    if value.is_empty() {
        return Err(VaultError::Invalid(format!("vault_set needs {field}")));
    }
    STANDARD
        .decode(value)
        .map(|b| b.len())
        .map_err(|_| VaultError::Invalid(format!("{field} must be standard base64")))
}

fn check(ctx: &ServiceCtx, req: &VaultSet) -> Result<(), VaultError> {
    let c = ctx.config();
    if req.key.is_empty() {
        return Err(VaultError::Invalid("vault_set needs a key".into()));
    }
    if req.key.len() > c.max_vault_key_bytes {
        return Err(VaultError::TooLarge {
            what: "the key's length in bytes (MAX_VAULT_KEY_BYTES)",
            max: c.max_vault_key_bytes,
        });
    }
    if req.entry_type != "env" && req.entry_type != "file" {
        return Err(VaultError::Invalid(
            "entry_type must be \"env\" or \"file\"".into(),
        ));
    }
    if req.ciphertext.len() > c.max_vault_blob_bytes {
        return Err(VaultError::TooLarge {
            what: "the ciphertext's length in bytes (MAX_VAULT_BLOB_BYTES)",
            max: c.max_vault_blob_bytes,
        });
    }
    for (what, field) in [
        ("mount_path", &req.mount_path),
        ("description", &req.description),
    ] {
        if field
            .as_ref()
            .is_some_and(|f| f.len() > c.max_vault_field_bytes)
        {
            return Err(VaultError::TooLarge {
                what: if what == "mount_path" {
                    "mount_path's length in bytes (MAX_VAULT_FIELD_BYTES)"
                } else {
                    "description's length in bytes (MAX_VAULT_FIELD_BYTES)"
                },
                max: c.max_vault_field_bytes,
            });
        }
    }
    if base64_len("ciphertext", &req.ciphertext)? < MAC_BYTES {
        return Err(VaultError::Invalid(format!(
            "ciphertext must be a crypto_secretbox output (at least {MAC_BYTES} bytes)"
        )));
    }
    if base64_len("nonce", &req.nonce)? != NONCE_BYTES {
        return Err(VaultError::Invalid(format!(
            "nonce must be {NONCE_BYTES} bytes (crypto_secretbox)"
        )));
    }
    if base64_len("sealed_key", &req.sealed_key)? != SEALED_KEY_BYTES {
        return Err(VaultError::Invalid(format!(
            "sealed_key must be {SEALED_KEY_BYTES} bytes (crypto_box_seal of a 32-byte key)"
        )));
    }
    Ok(())
}

/// `vault_set`: validates the shape and upserts the caller's entry.
pub async fn set(ctx: &ServiceCtx, p: &Principal, req: VaultSet) -> Result<(), VaultError> {
    let result = async {
        check(ctx, &req)?;
        let member = current_member(ctx, p).await?;
        let max = ctx.config().max_vault_entries_per_member;
        let entry = VaultEntry {
            mesh_id: p.mesh.id.clone(),
            member_id: member.id,
            key: req.key,
            ciphertext: req.ciphertext,
            nonce: req.nonce,
            sealed_key: req.sealed_key,
            entry_type: req.entry_type,
            mount_path: req.mount_path.filter(|m| !m.is_empty()),
            description: req.description,
            updated_at: now_ms(),
        };
        if ctx
            .store()
            .vault_set(entry, max)
            .await
            .map_err(unavailable)?
        {
            Ok(())
        } else {
            Err(VaultError::TooManyEntries { max })
        }
    }
    .await;
    counted(ctx, result)
}

/// `vault_get`: the caller's entries among `keys` (unknown keys skipped), ordered by key.
/// At most `MAX_VAULT_ENTRIES_PER_MEMBER` keys per request.
pub async fn get(
    ctx: &ServiceCtx,
    p: &Principal,
    keys: Vec<String>,
) -> Result<Vec<VaultEntry>, VaultError> {
    let result = async {
        let c = ctx.config();
        let max = c.max_vault_entries_per_member;
        if max > 0 && keys.len() > max {
            return Err(VaultError::TooLarge {
                what: "the number of keys of one vault_get (MAX_VAULT_ENTRIES_PER_MEMBER)",
                max,
            });
        }
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| !k.is_empty() && k.len() <= c.max_vault_key_bytes)
            .collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let member = current_member(ctx, p).await?;
        ctx.store()
            .vault_get(&p.mesh.id, &member.id, &keys)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

/// `vault_list`: the caller's entries without blobs, ordered by key.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<VaultMeta>, VaultError> {
    let result = async {
        let member = current_member(ctx, p).await?;
        let limit = match ctx.config().max_vault_entries_per_member {
            0 => usize::MAX,
            n => n,
        };
        ctx.store()
            .vault_list(&p.mesh.id, &member.id, limit)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

/// `vault_delete`: deletes the caller's entry; whether it existed.
pub async fn delete(ctx: &ServiceCtx, p: &Principal, key: &str) -> Result<bool, VaultError> {
    if key.is_empty() || key.len() > ctx.config().max_vault_key_bytes {
        return Ok(false);
    }
    let result = async {
        let member = current_member(ctx, p).await?;
        ctx.store()
            .vault_delete(&p.mesh.id, &member.id, key)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}
