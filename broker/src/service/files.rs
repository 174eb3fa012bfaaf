//! The operations of files (extensions §19.1): `get_file`, `list_files`, `file_status`,
//! `grant_file_access`, `delete_file`, and the checks of `POST /upload` and
//! `GET /download/<id>` (`server/files.rs` is their HTTP adapter), without a transport.
//!
//! Storage is the store (PostgreSQL, or memory in dev mode): bodies in chunks of
//! [`CHUNK_BYTES`], bounded per file (`MAX_FILE_BYTES`) and per mesh
//! (`MAX_MESH_FILE_BYTES`, `MAX_FILES_PER_MESH`). With `FILES_S3_*` the bodies of new
//! uploads are objects of an S3-compatible store instead (`crate::objects`); the metadata,
//! keys, access log and byte budget stay in the store, and bodies stored as chunks before
//! stay readable ([`object_body`]).
//!
//! **Ours:** by default the reference's presigned object-store URL is replaced by a
//! broker-proxied `…/download/<id>?mesh=<mesh>&token=<t>`: `t` is an HS256 token (the
//! broker's session secret, domain-separated) naming the file, the mesh and the member,
//! valid for `FILE_URL_TTL_MS`, and accepted by every replica sharing the secret. With
//! `FILES_S3_PRESIGN=true`, `get_file` answers the reference's presigned GET of the object
//! (valid `FILE_URL_TTL_MS`) and that download route redirects to one.
//!
//! Authorisation: a file is fetched (`get_file`, a bearer download) only by its uploader
//! or a member its `X-Target-Spec` names (none, `*`, `@all`: everyone; a 64-hex key: that
//! member or session key; `@group`: presences in that group; else a display name); an
//! encrypted one only by a holder of a sealed key for its member or session key. Only
//! the uploader grants keys; the uploader or an admin reads the access log
//! (`file_status`) and deletes. Every refusal has its wire code and text
//! ([`FileError`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Principal, ServiceCtx};
use crate::accounts::token;
use crate::ids::{self, now_ms};
use crate::protocol::ext::files::{FileAccessEntry, FileEntry};
use crate::store::files::{FileAccess, FileKey, FileRecord};
use crate::store::{Member, Role, StoreError};

/// Bytes of one stored chunk of a body (one `bytea` row).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Most files one `list_files` returns (the reference's bound).
pub const MAX_FILES_LISTED: usize = 100;

/// Why a file operation was refused; [`FileError::metric_label`] is the `reason` of
/// `broker_file_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// No complete, undeleted file of that id in the caller's mesh.
    NotFound,
    /// The file's target spec does not name the caller.
    NotTargeted,
    /// An encrypted file without a sealed key for the caller.
    NoKey,
    /// A grant by someone other than the uploader.
    NotOwnerGrant,
    /// `file_status` or `delete_file` by neither the uploader nor an admin.
    NotOwnerOrAdmin(&'static str),
    /// A field missing or malformed.
    Invalid(String),
    /// A grant past `MAX_FILE_KEYS`.
    TooManyKeys { max: usize },
    /// The caller's member row is revoked or gone.
    Revoked,
    /// `FILES_ENABLED=false`.
    Disabled,
    /// A backend failed.
    Unavailable(String),
}

impl FileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            FileError::NotFound => "not_found",
            FileError::NotTargeted | FileError::NoKey => "not_targeted",
            FileError::NotOwnerGrant | FileError::NotOwnerOrAdmin(_) => "forbidden",
            FileError::Invalid(_) => "invalid",
            FileError::TooManyKeys { .. } => "too_many_keys",
            FileError::Revoked => "revoked",
            FileError::Disabled => "disabled",
            FileError::Unavailable(_) => "store",
        }
    }

    /// The `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            FileError::NotFound => "not_found",
            FileError::NotTargeted
            | FileError::NoKey
            | FileError::NotOwnerGrant
            | FileError::NotOwnerOrAdmin(_)
            | FileError::Revoked => "forbidden",
            FileError::Invalid(_) | FileError::TooManyKeys { .. } => "invalid",
            FileError::Disabled => "unsupported",
            FileError::Unavailable(_) => "internal",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            FileError::NotFound => "file not found".into(),
            FileError::NotTargeted => "file not targeted at you".into(),
            FileError::NoKey => "no decryption key for this file".into(),
            FileError::NotOwnerGrant => "only the file owner can grant access".into(),
            FileError::NotOwnerOrAdmin(what) => {
                format!("only the file owner or an admin can {what}")
            }
            FileError::Invalid(why) => why.clone(),
            FileError::TooManyKeys { max } => {
                format!("this file already has {max} sealed keys (MAX_FILE_KEYS)")
            }
            FileError::Revoked => "your membership of this mesh is revoked".into(),
            FileError::Disabled => "file sharing is not available on this broker \
                                    (needs file storage: FILES_ENABLED)"
                .into(),
            FileError::Unavailable(e) => format!("file storage unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for FileError {}

fn unavailable(e: StoreError) -> FileError {
    FileError::Unavailable(e.to_string())
}

fn counted<T>(ctx: &ServiceCtx, result: Result<T, FileError>) -> Result<T, FileError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_file(e.metric_label());
    }
    result
}

/// The `unsupported` text of a frame when file storage is off (extensions §0.3).
pub fn disabled_message(kind: &str) -> String {
    format!(
        "{kind}: file sharing is not available on this broker (needs file storage: FILES_ENABLED)"
    )
}

/// A stored file as `list_files` shows it.
pub fn entry(f: &FileRecord) -> FileEntry {
    FileEntry {
        id: f.id.clone(),
        name: f.name.clone(),
        size: f.size,
        tags: f.tags.clone(),
        uploaded_by: f.uploader_name.clone(),
        uploaded_at: ids::iso8601_ms(f.uploaded_at),
        persistent: f.persistent,
        encrypted: f.encrypted,
    }
}

/// Whether `m` is an admin of the principal's mesh (owner or `role=admin`).
fn is_admin(p: &Principal, m: &Member) -> bool {
    m.role == Role::Admin || (p.mesh.owner_user_id.is_some() && m.user_id == p.mesh.owner_user_id)
}

/// The caller's member row as the member cache has it.
async fn current_member(ctx: &ServiceCtx, p: &Principal) -> Result<Member, FileError> {
    let members = ctx.members(&p.mesh.id).await.map_err(unavailable)?;
    members
        .iter()
        .find(|m| m.id == p.member.id && m.revoked_at.is_none())
        .cloned()
        .ok_or(FileError::Revoked)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

async fn visible_file(ctx: &ServiceCtx, mesh_id: &str, id: &str) -> Result<FileRecord, FileError> {
    if !valid_id(id) {
        return Err(FileError::NotFound);
    }
    ctx.store()
        .file(mesh_id, id)
        .await
        .map_err(unavailable)?
        .ok_or(FileError::NotFound)
}

/// Who asks for a file: a member, possibly through a session key and a presence.
pub struct Fetcher<'a> {
    pub member: &'a Member,
    pub session_key: Option<&'a str>,
    pub presence_id: Option<&'a str>,
}

fn is_hex_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether the file's target spec names `who` (the uploader always may).
pub async fn targets(ctx: &ServiceCtx, f: &FileRecord, who: &Fetcher<'_>) -> bool {
    if who.member.id == f.uploader_member_id {
        return true;
    }
    let spec = f.target_spec.as_deref().map(str::trim).unwrap_or("");
    if spec.is_empty() || spec == "*" || spec == "@all" {
        return true;
    }
    if is_hex_key(spec) {
        return spec.eq_ignore_ascii_case(&who.member.pubkey)
            || who
                .session_key
                .is_some_and(|k| spec.eq_ignore_ascii_case(k));
    }
    if let Some(group) = spec.strip_prefix('@') {
        if who.member.default_groups.iter().any(|g| g.name == group) {
            return true;
        }
        let Some(pid) = who.presence_id else {
            return false;
        };
        return ctx
            .presence()
            .list(&f.mesh_id)
            .await
            .map(|rs| {
                rs.iter()
                    .any(|r| r.presence_id == pid && r.groups.iter().any(|g| g.name == group))
            })
            .unwrap_or(false);
    }
    spec == who.member.display_name
}

/// The sealed key of an encrypted file for `who`: its member key's, its session key's, or
/// (the uploader) the owner key's.
async fn sealed_key_for(
    ctx: &ServiceCtx,
    f: &FileRecord,
    who: &Fetcher<'_>,
) -> Result<Option<String>, FileError> {
    // Keys are stored lower-case (`X-File-Keys`, `grant_file_access`).
    let mut keys: Vec<String> = vec![who.member.pubkey.to_ascii_lowercase()];
    if let Some(k) = who.session_key {
        keys.push(k.to_ascii_lowercase());
    }
    if who.member.id == f.uploader_member_id
        && let Some(o) = f.owner_pubkey.as_deref()
    {
        keys.push(o.to_ascii_lowercase());
    }
    for k in keys {
        if let Some(s) = ctx.store().file_key(&f.id, &k).await.map_err(unavailable)? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Whether a file's body is an object of the object store rather than chunks of the store:
/// it has bytes and no chunk (bodies stored before `FILES_S3_*` was set stay chunks).
pub async fn object_body(
    store: &dyn crate::store::Store,
    f: &FileRecord,
) -> Result<bool, StoreError> {
    if f.size <= 0 {
        return Ok(false);
    }
    Ok(store.file_chunk(&f.id, 0).await?.is_none())
}

/// Records an access (best effort: a failed log does not refuse the fetch).
pub async fn log_access(ctx: &ServiceCtx, file_id: &str, peer_name: &str) {
    let access = FileAccess {
        peer_name: peer_name.to_string(),
        accessed_at: now_ms(),
    };
    let max = ctx.config().max_file_accesses;
    if let Err(e) = ctx.store().file_log_access(file_id, access, max).await {
        tracing::warn!(file_id, error = %e, "file access not logged");
    }
}

// ---------------------------------------------------------------------------------------
// Download tokens

type HmacSha256 = Hmac<Sha256>;

/// The download-token key: the session secret, domain-separated from the CLI tokens.
fn token_key(ctx: &ServiceCtx) -> Vec<u8> {
    let secret = &ctx.config().accounts.session_secret;
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| HmacSha256::new_from_slice(b"unreachable").expect("hmac key"));
    mac.update(b"claudemesh broker: file download token v1");
    mac.finalize().into_bytes().to_vec()
}

/// A download token for `file_id` of `mesh_id`, for `member_id`, expiring after
/// `FILE_URL_TTL_MS`.
pub fn download_token(ctx: &ServiceCtx, mesh_id: &str, file_id: &str, member_id: &str) -> String {
    let ttl_s = i64::try_from(ctx.config().file_url_ttl.as_secs().max(1)).unwrap_or(60);
    let payload = json!({
        "typ": "file_download",
        "fid": file_id,
        "mesh": mesh_id,
        "sub": member_id,
        "exp": now_ms() / 1000 + ttl_s,
    });
    token::sign(&token_key(ctx), &payload)
}

/// The member id a valid download token for (`mesh_id`, `file_id`) names.
pub fn verify_download_token(
    ctx: &ServiceCtx,
    raw: &str,
    mesh_id: &str,
    file_id: &str,
) -> Option<String> {
    let payload = token::verify(&token_key(ctx), raw, now_ms() / 1000).ok()?;
    let field = |k: &str| payload.get(k).and_then(Value::as_str);
    // `exp` is checked by `token::verify` when present; it is always present here.
    (payload.get("exp").is_some()
        && field("typ") == Some("file_download")
        && field("fid") == Some(file_id)
        && field("mesh") == Some(mesh_id))
    .then(|| field("sub").map(str::to_string))
    .flatten()
}

/// The broker's public HTTP base for download URLs: `BROKER_PUBLIC_URL`, else this
/// replica's listen address.
pub fn public_base(ctx: &ServiceCtx) -> String {
    let c = ctx.config();
    match &c.accounts.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("http://{}", std::net::SocketAddr::new(c.host, c.port)),
    }
}

/// A file name safe in a quoted `filename`: ASCII printable, no quotes or backslashes.
pub fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `%`-encodes everything but unreserved characters (query values).
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The frames

/// What `get_file` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUrl {
    pub file: FileRecord,
    pub url: String,
    pub sealed_key: Option<String>,
}

fn enabled(ctx: &ServiceCtx) -> Result<(), FileError> {
    if ctx.config().files_enabled {
        Ok(())
    } else {
        Err(FileError::Disabled)
    }
}

/// `get_file`: checks the target and the key, logs the access and returns a signed URL.
pub async fn get_file(
    ctx: &ServiceCtx,
    p: &Principal,
    file_id: &str,
) -> Result<FileUrl, FileError> {
    let result = async {
        enabled(ctx)?;
        let member = current_member(ctx, p).await?;
        let f = visible_file(ctx, &p.mesh.id, file_id).await?;
        let who = Fetcher {
            member: &member,
            session_key: p.session_key.as_deref(),
            presence_id: Some(&p.presence_id),
        };
        if !targets(ctx, &f, &who).await {
            return Err(FileError::NotTargeted);
        }
        let sealed_key = if f.encrypted {
            Some(
                sealed_key_for(ctx, &f, &who)
                    .await?
                    .ok_or(FileError::NoKey)?,
            )
        } else {
            None
        };
        if let Some(objects) = crate::objects::Objects::of(ctx.config())
            && objects.presign
            && object_body(ctx.store(), &f).await.map_err(unavailable)?
        {
            log_access(ctx, &f.id, &p.display_name).await;
            let disposition = format!("attachment; filename=\"{}\"", safe_name(&f.name));
            let url = objects.presigned_get(
                &objects.key(&f.mesh_id, &f.id),
                ctx.config().file_url_ttl,
                Some(&disposition),
            );
            return Ok(FileUrl {
                file: f,
                url,
                sealed_key,
            });
        }
        log_access(ctx, &f.id, &p.display_name).await;
        let token = download_token(ctx, &p.mesh.id, &f.id, &member.id);
        let url = format!(
            "{}/download/{}?mesh={}&token={}",
            public_base(ctx),
            f.id,
            encode_component(&p.mesh.id),
            encode_component(&token)
        );
        Ok(FileUrl {
            file: f,
            url,
            sealed_key,
        })
    }
    .await;
    counted(ctx, result)
}

/// `list_files`: the mesh's files, newest first (`query`: name substring, `from`:
/// uploader name), at most [`MAX_FILES_LISTED`]. Empty when file storage is off.
pub async fn list_files(
    ctx: &ServiceCtx,
    p: &Principal,
    query: Option<&str>,
    from: Option<&str>,
) -> Result<Vec<FileRecord>, FileError> {
    if !ctx.config().files_enabled {
        return Ok(Vec::new());
    }
    let result = async {
        current_member(ctx, p).await?;
        let bound = ctx.config().max_file_name_bytes;
        let query = query.filter(|q| !q.is_empty());
        let from = from.filter(|f| !f.is_empty());
        if query.is_some_and(|q| q.len() > bound) || from.is_some_and(|f| f.len() > bound) {
            return Err(FileError::Invalid(format!(
                "query and from are at most {bound} bytes (MAX_FILE_NAME_BYTES)"
            )));
        }
        ctx.store()
            .file_list(&p.mesh.id, query, from, MAX_FILES_LISTED)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

/// `file_status`: the access log (newest first), for the uploader or an admin.
pub async fn file_status(
    ctx: &ServiceCtx,
    p: &Principal,
    file_id: &str,
) -> Result<Vec<FileAccessEntry>, FileError> {
    let result = async {
        enabled(ctx)?;
        let member = current_member(ctx, p).await?;
        let f = visible_file(ctx, &p.mesh.id, file_id).await?;
        if member.id != f.uploader_member_id && !is_admin(p, &member) {
            return Err(FileError::NotOwnerOrAdmin("see its accesses"));
        }
        let accesses = ctx
            .store()
            .file_accesses(&f.id, ctx.config().max_file_accesses)
            .await
            .map_err(unavailable)?;
        Ok(accesses
            .into_iter()
            .map(|a| FileAccessEntry {
                peer_name: a.peer_name,
                accessed_at: ids::iso8601_ms(a.accessed_at),
            })
            .collect())
    }
    .await;
    counted(ctx, result)
}

/// Checks a sealed key's shape: standard base64 of at most 1 KiB.
pub fn check_sealed_key(sealed_key: &str) -> Result<(), FileError> {
    if sealed_key.is_empty() || sealed_key.len() > 1024 {
        return Err(FileError::Invalid(
            "sealedKey must be 1-1024 characters of base64".into(),
        ));
    }
    let ok = base64::engine::general_purpose::STANDARD
        .decode(sealed_key)
        .is_ok()
        || URL_SAFE_NO_PAD.decode(sealed_key).is_ok();
    if !ok {
        return Err(FileError::Invalid("sealedKey must be base64".into()));
    }
    Ok(())
}

/// Checks a peer key: 64 hex characters (an ed25519 member or session key).
pub fn check_pubkey(pubkey: &str) -> Result<(), FileError> {
    if is_hex_key(pubkey) {
        Ok(())
    } else {
        Err(FileError::Invalid(
            "peerPubkey must be 64 hex characters".into(),
        ))
    }
}

/// `grant_file_access`: the uploader adds (or replaces) a peer's sealed key.
pub async fn grant(
    ctx: &ServiceCtx,
    p: &Principal,
    file_id: &str,
    peer_pubkey: &str,
    sealed_key: &str,
) -> Result<(), FileError> {
    let result = async {
        enabled(ctx)?;
        let member = current_member(ctx, p).await?;
        let f = visible_file(ctx, &p.mesh.id, file_id).await?;
        if member.id != f.uploader_member_id {
            return Err(FileError::NotOwnerGrant);
        }
        check_pubkey(peer_pubkey)?;
        check_sealed_key(sealed_key)?;
        let max = ctx.config().max_file_keys;
        let key = FileKey {
            pubkey: peer_pubkey.to_ascii_lowercase(),
            sealed_key: sealed_key.to_string(),
        };
        if ctx
            .store()
            .file_grant(&f.id, key, max)
            .await
            .map_err(unavailable)?
        {
            Ok(())
        } else {
            Err(FileError::TooManyKeys { max })
        }
    }
    .await;
    counted(ctx, result)
}

/// `delete_file`: soft delete by the uploader or an admin (the bytes are released).
pub async fn delete(ctx: &ServiceCtx, p: &Principal, file_id: &str) -> Result<(), FileError> {
    let result = async {
        enabled(ctx)?;
        let member = current_member(ctx, p).await?;
        let f = visible_file(ctx, &p.mesh.id, file_id).await?;
        if member.id != f.uploader_member_id && !is_admin(p, &member) {
            return Err(FileError::NotOwnerOrAdmin("delete it"));
        }
        if ctx
            .store()
            .file_delete(&p.mesh.id, &f.id, now_ms())
            .await
            .map_err(unavailable)?
        {
            // The row first, then the object: a failure leaves an invisible orphan for
            // the sweep (`objects::run_sweep`), never a listed file without a body.
            if let Some(objects) = crate::objects::Objects::of(ctx.config())
                && let Err(e) = objects.delete(&objects.key(&f.mesh_id, &f.id)).await
            {
                tracing::warn!(file_id = %f.id, error = %e, "object of a deleted file not deleted");
            }
            Ok(())
        } else {
            Err(FileError::NotFound)
        }
    }
    .await;
    counted(ctx, result)
}
