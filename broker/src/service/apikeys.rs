//! The operations of API keys (extensions §10, `rest.md` §2): `apikey_create`,
//! `apikey_list`, `apikey_revoke`, and the verification of a presented secret for the
//! REST API, without a transport.
//!
//! A secret is `cm_` + base64url (no padding) of 32 random bytes (46 chars), shown once;
//! the store keeps its first 11 chars (`prefix`) and the SHA-256 hex of the whole secret,
//! compared in constant time. Nothing is cached: every verification reads the key row and
//! its issuer's member row from the store, so a revocation or a ban is in force on every
//! replica at the next request.
//!
//! **Ours:** members mint keys without `admin`; the `admin` capability only admins (mesh
//! owner or role admin); non-admins list and revoke only keys they issued (others' ids
//! answer `not_found`); a revoke prefix needs ≥ 6 chars (`%`/`_` literal); keys of a
//! banned issuer are refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::{Principal, ServiceCtx};
use crate::ids::{self, now_ms};
use crate::protocol::ext::apikeys::ApiKeyListing;
use crate::store::apikeys::{ApiKey, RevokeOutcome};
use crate::store::{Member, Mesh, Role, StoreError};

/// Every capability a key may hold.
pub const CAPABILITIES: &[&str] = &["send", "read", "state_write", "admin"];
/// The length of a secret's stored prefix (`cm_` + 8).
pub const PREFIX_LEN: usize = 11;
/// What every secret starts with.
pub const SECRET_PREFIX: &str = "cm_";
/// The shortest id prefix `apikey_revoke` matches by prefix (a shorter one only as a full
/// id).
pub const MIN_REVOKE_PREFIX: usize = 6;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Most topic scopes of one key, and the longest scope (a topic name, extensions §9).
pub const MAX_TOPIC_SCOPES: usize = 64;
pub const MAX_TOPIC_NAME_CHARS: usize = 64;
/// Revoked or expired keys are listed (and counted against the bound) this long, then
/// purged at the issuer's next `apikey_create`.
pub const KEEP_DEAD_KEYS_MS: i64 = 24 * 3600 * 1000;
/// `last_used_at` is written at most this often per key (`rest.md` §6: within seconds).
pub const TOUCH_EVERY_MS: i64 = 5_000;

/// Why an `apikey_*` request was refused: `error{code, message, _reqId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyError {
    /// A field missing or malformed (`invalid_args`).
    Invalid(String),
    /// The `admin` capability asked for by a non-admin (`forbidden`).
    Forbidden,
    /// The issuer holds `MAX_API_KEYS_PER_MEMBER` keys (`too_many_keys`).
    TooManyKeys { max: usize },
    /// The caller's member row is revoked or gone (`forbidden`).
    Revoked { mesh_name: String },
    /// A backend failed (`internal`).
    Unavailable(String),
}

impl ApiKeyError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiKeyError::Invalid(_) => "invalid",
            ApiKeyError::Forbidden => "forbidden",
            ApiKeyError::TooManyKeys { .. } => "too_many_keys",
            ApiKeyError::Revoked { .. } => "revoked",
            ApiKeyError::Unavailable(_) => "store",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiKeyError::Invalid(_) => "invalid_args",
            ApiKeyError::Forbidden | ApiKeyError::Revoked { .. } => "forbidden",
            ApiKeyError::TooManyKeys { .. } => "too_many_keys",
            ApiKeyError::Unavailable(_) => "internal",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            ApiKeyError::Invalid(why) => why.clone(),
            ApiKeyError::Forbidden => {
                "only owner or admin can mint a key with the admin capability".into()
            }
            ApiKeyError::TooManyKeys { max } => format!(
                "you already hold {max} API keys in this mesh (MAX_API_KEYS_PER_MEMBER); revoke one first"
            ),
            ApiKeyError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            ApiKeyError::Unavailable(e) => format!("api keys unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for ApiKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ApiKeyError {}

fn unavailable(e: StoreError) -> ApiKeyError {
    ApiKeyError::Unavailable(e.to_string())
}

fn counted<T>(ctx: &ServiceCtx, result: Result<T, ApiKeyError>) -> Result<T, ApiKeyError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_apikey(e.metric_label());
    }
    result
}

/// A fresh secret: `cm_` + base64url (no padding) of 32 random bytes.
pub fn generate_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(ids::random_seed())
    )
}

/// SHA-256 hex of the whole secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses an ISO 8601 / RFC 3339 time (`2026-12-01T10:00:00Z`, optional fraction, `Z`
/// or `±HH:MM`; a bare date is midnight UTC) to epoch milliseconds.
pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        ms = digits.parse().ok()?;
    }
    let offset_min = match s.get(i..)? {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if b[i + 3] != b':' {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Howard Hinnant's `days_from_civil`: a proleptic Gregorian date to days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A key as `apikey_list` shows it.
pub fn listing(k: &ApiKey) -> ApiKeyListing {
    ApiKeyListing {
        id: k.id.clone(),
        label: k.label.clone(),
        prefix: k.prefix.clone(),
        capabilities: k.capabilities.clone(),
        topic_scopes: k.topic_scopes.clone(),
        created_at: ids::iso8601_ms(k.created_at),
        last_used_at: k.last_used_at.map(ids::iso8601_ms),
        revoked_at: k.revoked_at.map(ids::iso8601_ms),
        expires_at: k.expires_at.map(ids::iso8601_ms),
    }
}

/// Whether `m` is an admin of `mesh` (role admin, or the owner's user).
pub fn is_admin(mesh: &Mesh, m: &Member) -> bool {
    m.role == Role::Admin || (mesh.owner_user_id.is_some() && m.user_id == mesh.owner_user_id)
}

/// The caller's member row as the store has it now; refused when revoked or gone.
async fn current_member(ctx: &ServiceCtx, p: &Principal) -> Result<Member, ApiKeyError> {
    ctx.store()
        .member(&p.mesh.id, &p.member.id)
        .await
        .map_err(unavailable)?
        .filter(|m| m.revoked_at.is_none())
        .ok_or_else(|| ApiKeyError::Revoked {
            mesh_name: p.mesh.name.clone(),
        })
}

/// An `apikey_create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateKey {
    pub label: String,
    pub capabilities: Vec<String>,
    pub topic_scopes: Option<Vec<String>>,
    pub expires_at: Option<String>,
}

/// A minted key: its row and the secret, shown this once.
#[derive(Debug, Clone)]
pub struct Minted {
    pub key: ApiKey,
    pub secret: String,
}

fn check_create(req: &CreateKey, now: i64) -> Result<CreateKey, ApiKeyError> {
    let label = req.label.trim();
    if label.is_empty() || req.capabilities.is_empty() {
        return Err(ApiKeyError::Invalid(
            "label and at least one capability required".into(),
        ));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(ApiKeyError::Invalid(format!(
            "label is over {MAX_LABEL_BYTES} bytes"
        )));
    }
    let mut capabilities: Vec<String> = Vec::new();
    for c in &req.capabilities {
        if !CAPABILITIES.contains(&c.as_str()) {
            return Err(ApiKeyError::Invalid(format!(
                "unknown capability {c:?} (send, read, state_write, admin)"
            )));
        }
        if !capabilities.contains(c) {
            capabilities.push(c.clone());
        }
    }
    let topic_scopes = match &req.topic_scopes {
        None => None,
        Some(scopes) => {
            if scopes.len() > MAX_TOPIC_SCOPES {
                return Err(ApiKeyError::Invalid(format!(
                    "at most {MAX_TOPIC_SCOPES} topic scopes"
                )));
            }
            let mut out: Vec<String> = Vec::new();
            for s in scopes {
                let name = s.strip_prefix('#').unwrap_or(s);
                if name.is_empty() || name.chars().count() > MAX_TOPIC_NAME_CHARS {
                    return Err(ApiKeyError::Invalid(format!(
                        "a topic scope is a topic name of 1–{MAX_TOPIC_NAME_CHARS} chars"
                    )));
                }
                if !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
            }
            Some(out)
        }
    };
    if let Some(at) = &req.expires_at {
        match parse_iso_ms(at) {
            None => {
                return Err(ApiKeyError::Invalid(
                    "expiresAt must be an ISO 8601 time".into(),
                ));
            }
            Some(t) if t <= now => {
                return Err(ApiKeyError::Invalid("expiresAt is in the past".into()));
            }
            Some(_) => {}
        }
    }
    Ok(CreateKey {
        label: label.to_string(),
        capabilities,
        topic_scopes,
        expires_at: req.expires_at.clone(),
    })
}

/// `apikey_create`: mints a key of the caller's mesh, issued by the caller.
pub async fn create(
    ctx: &ServiceCtx,
    p: &Principal,
    req: CreateKey,
) -> Result<Minted, ApiKeyError> {
    let result = async {
        let now = now_ms();
        let req = check_create(&req, now)?;
        let me = current_member(ctx, p).await?;
        if req.capabilities.iter().any(|c| c == "admin") && !is_admin(&p.mesh, &me) {
            return Err(ApiKeyError::Forbidden);
        }
        let secret = generate_secret();
        let key = ApiKey {
            id: ids::random_id(32),
            mesh_id: p.mesh.id.clone(),
            label: req.label,
            prefix: secret[..PREFIX_LEN].to_string(),
            secret_hash: hash_secret(&secret),
            capabilities: req.capabilities,
            topic_scopes: req.topic_scopes,
            issued_by_member_id: Some(me.id.clone()),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            expires_at: req.expires_at.as_deref().and_then(parse_iso_ms),
        };
        let max = ctx.config().max_api_keys_per_member;
        let stored = ctx
            .store()
            .create_api_key(key.clone(), max, now - KEEP_DEAD_KEYS_MS)
            .await
            .map_err(unavailable)?;
        if !stored {
            return Err(ApiKeyError::TooManyKeys { max });
        }
        ctx.audit(
            &p.mesh.id,
            "apikey_created",
            Some(&me.id),
            serde_json::json!({"keyId": key.id, "label": key.label, "capabilities": key.capabilities}),
        );
        Ok(Minted { key, secret })
    }
    .await;
    counted(ctx, result)
}

/// `apikey_list`: the mesh's keys for admins, the caller's own otherwise; newest first.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<ApiKey>, ApiKeyError> {
    let result = async {
        let me = current_member(ctx, p).await?;
        let issuer = (!is_admin(&p.mesh, &me)).then_some(me.id.as_str());
        ctx.store()
            .api_keys(&p.mesh.id, issuer)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

/// `apikey_revoke`: by full id or a prefix of ≥ `MIN_REVOKE_PREFIX` chars.
pub async fn revoke(
    ctx: &ServiceCtx,
    p: &Principal,
    id: &str,
) -> Result<RevokeOutcome, ApiKeyError> {
    let result = async {
        let id = id.trim();
        if id.is_empty() {
            return Err(ApiKeyError::Invalid("id required".into()));
        }
        let me = current_member(ctx, p).await?;
        let issuer = (!is_admin(&p.mesh, &me)).then_some(me.id.as_str());
        let outcome = ctx
            .store()
            .revoke_api_key(&p.mesh.id, id, issuer, MIN_REVOKE_PREFIX, now_ms())
            .await
            .map_err(unavailable)?;
        if let RevokeOutcome::Revoked(key_id) = &outcome {
            // Every replica re-reads the keys of its open SSE streams of the mesh now
            // (requests need nothing: they read the key from the store each time).
            ctx.members_changed(&p.mesh.id).await;
            ctx.audit(
                &p.mesh.id,
                "apikey_revoked",
                Some(&me.id),
                serde_json::json!({"keyId": key_id}),
            );
        }
        Ok(outcome)
    }
    .await;
    counted(ctx, result)
}

/// A key that verified: its row, its mesh and its issuer (when it has one).
#[derive(Debug, Clone)]
pub struct Verified {
    pub key: ApiKey,
    pub mesh: Mesh,
    pub issuer: Option<Member>,
}

impl Verified {
    /// Whether the key holds `cap` (or `admin`).
    pub fn can(&self, cap: &str) -> bool {
        self.key
            .capabilities
            .iter()
            .any(|c| c == cap || c == "admin")
    }

    /// Whether the key's topic scope admits `topic` (a name).
    pub fn admits(&self, topic: &str) -> bool {
        self.key
            .topic_scopes
            .as_ref()
            .is_none_or(|s| s.iter().any(|t| t == topic))
    }
}

/// Why a presented secret was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Unknown, revoked or expired, not starting with `cm_`, of a gone mesh, or of a
    /// banned (or deleted) issuer.
    Invalid,
    /// A backend failed.
    Unavailable(String),
}

/// Verifies a presented secret against the store (no cache). With `touch`, records the
/// use (`last_used_at`, at most every `TOUCH_EVERY_MS`).
pub async fn verify(ctx: &ServiceCtx, secret: &str, touch: bool) -> Result<Verified, VerifyError> {
    let now = now_ms();
    if !secret.starts_with(SECRET_PREFIX) || secret.len() < PREFIX_LEN || !secret.is_ascii() {
        return Err(VerifyError::Invalid);
    }
    let store = ctx.store();
    let err = |e: StoreError| VerifyError::Unavailable(e.to_string());
    let hash = hash_secret(secret);
    let candidates = store
        .api_keys_by_prefix(&secret[..PREFIX_LEN])
        .await
        .map_err(err)?;
    let key = candidates
        .into_iter()
        .find(|k| constant_time_eq(k.secret_hash.as_bytes(), hash.as_bytes()))
        .ok_or(VerifyError::Invalid)?;
    if key.revoked_at.is_some() || key.expires_at.is_some_and(|e| e <= now) {
        return Err(VerifyError::Invalid);
    }
    let verified = still_valid(ctx, key).await?;
    if touch
        && verified
            .key
            .last_used_at
            .is_none_or(|t| t + TOUCH_EVERY_MS <= now)
    {
        // Best effort: a failed touch only delays the key's `via:"rest"` listing.
        if let Err(e) = store.touch_api_key(&verified.key.id, now).await {
            tracing::debug!(error = %e, "api key use not recorded");
        }
    }
    Ok(verified)
}

/// The mesh and issuer of a key row that is not revoked; refused when the mesh is gone or
/// archived, or the issuer is banned or deleted. Expiry is not checked here (an open stream outlives
/// its key's expiry, `rest.md` §4.4).
async fn still_valid(ctx: &ServiceCtx, key: ApiKey) -> Result<Verified, VerifyError> {
    let store = ctx.store();
    let err = |e: StoreError| VerifyError::Unavailable(e.to_string());
    let mesh = store
        .mesh(&key.mesh_id)
        .await
        .map_err(err)?
        .ok_or(VerifyError::Invalid)?;
    // **Ours:** the keys of an archived mesh are refused too (`rest.md` §2).
    if store.mesh_archived(&key.mesh_id).await.map_err(err)? {
        return Err(VerifyError::Invalid);
    }
    let issuer = match &key.issued_by_member_id {
        None => None,
        Some(member_id) => {
            let m = store
                .member(&key.mesh_id, member_id)
                .await
                .map_err(err)?
                .ok_or(VerifyError::Invalid)?;
            if m.revoked_at.is_some() {
                return Err(VerifyError::Invalid);
            }
            Some(m)
        }
    };
    Ok(Verified { key, mesh, issuer })
}

/// Re-reads a verified key: `Invalid` once it is revoked or its issuer banned (an open SSE
/// stream ends then), expiry ignored.
pub async fn recheck(ctx: &ServiceCtx, key_id: &str) -> Result<Verified, VerifyError> {
    let key = ctx
        .store()
        .api_key(key_id)
        .await
        .map_err(|e| VerifyError::Unavailable(e.to_string()))?
        .filter(|k| k.revoked_at.is_none())
        .ok_or(VerifyError::Invalid)?;
    still_valid(ctx, key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_reference_shape() {
        let s = generate_secret();
        assert_eq!(s.len(), 46);
        assert!(s.starts_with("cm_"));
        assert!(
            s[3..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(hash_secret(&s).len(), 64);
    }

    #[test]
    fn iso_times_parse_like_the_formatter_writes_them() {
        for t in [0, 1_764_300_000_000, 951_782_400_123, 1_800_000_000_999] {
            assert_eq!(parse_iso_ms(&ids::iso8601_ms(t)), Some(t));
        }
        assert_eq!(
            parse_iso_ms("2025-11-28T05:20:00+02:00"),
            Some(1_764_300_000_000)
        );
        assert_eq!(parse_iso_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_iso_ms("1970-01-01T00:00:00.5Z"), Some(500));
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-11-28T05:20:00",
            "2025-11-28T25:00:00Z",
        ] {
            assert_eq!(parse_iso_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn create_requests_are_checked() {
        let ok = CreateKey {
            label: "bot".into(),
            capabilities: vec!["read".into(), "read".into(), "send".into()],
            topic_scopes: Some(vec!["#general".into()]),
            expires_at: None,
        };
        let c = check_create(&ok, 0).unwrap_or_default();
        assert_eq!(c.capabilities, ["read", "send"]);
        assert_eq!(c.topic_scopes, Some(vec!["general".to_string()]));
        let missing = CreateKey {
            label: String::new(),
            ..ok.clone()
        };
        assert_eq!(
            check_create(&missing, 0).err().map(|e| e.message()),
            Some("label and at least one capability required".to_string())
        );
        let unknown = CreateKey {
            capabilities: vec!["root".into()],
            ..ok.clone()
        };
        assert!(check_create(&unknown, 0).is_err());
        let past = CreateKey {
            expires_at: Some("2000-01-01T00:00:00Z".into()),
            ..ok
        };
        assert!(check_create(&past, now_ms()).is_err());
    }
}
