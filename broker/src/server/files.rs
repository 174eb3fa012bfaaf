//! The HTTP side of files (extensions §19.1): `POST /upload` and `GET /download/<fileId>`.
//!
//! Uploads stream: the body is read frame by frame into one buffer of at most
//! [`CHUNK_BYTES`] and each full buffer is stored as one chunk (counted against the mesh's
//! budget at once), so a replica holds at most one chunk per upload, never the file.
//! Downloads stream the same way back: [`Chunks`] fetches one chunk per
//! frame, only when hyper asks for it. Any replica serves any file: the body, its metadata
//! and the download tokens' key are shared (the store and the session secret).
//!
//! Authentication reuses the CLI's bearer check (`cli-routes.md` §3, `cli::authenticate`;
//! the legacy shim never applies: there is no body to name a user). Upload: the bearer's
//! user must own `X-Member-Id`, a member of `X-Mesh-Id` that is not revoked. Download:
//! either the signed `token` of a `get_file` URL (its member still not revoked), or a
//! bearer whose user has a member of `?mesh=` the file is targeted at.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};

use super::{HttpResponse, cli, json_response};
use crate::ids::{self, now_ms};
use crate::node::Node;
use crate::objects::Objects;
use crate::rest::Body;
use crate::service::ServiceCtx;
use crate::service::files::{self as svc_files, CHUNK_BYTES, Fetcher};
use crate::store::files::{Begin, FileKey, FileRecord};
use crate::store::{Member, Store, StoreResult};

type ChunkFuture = Pin<Box<dyn Future<Output = StoreResult<Option<Vec<u8>>>> + Send>>;

/// A file body read from the store one chunk per frame, or passed through from the object
/// store's answer (`FILES_S3_*`, proxied downloads) frame by frame (a variant of
/// [`crate::rest::Body`], the body of every HTTP answer). A chunk that cannot be read ends
/// the body early: hyper then cuts the connection (fewer bytes than its `Content-Length`),
/// so the client sees a short body rather than a wrong one.
pub struct Chunks {
    downloaded: Counter,
    file_id: String,
    remaining: u64,
    source: Source,
}

enum Source {
    Store {
        store: Arc<dyn Store>,
        seq: i32,
        pending: Option<ChunkFuture>,
    },
    Object(Incoming),
}

impl Chunks {
    fn cut(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        tracing::warn!(file_id = %self.file_id, "file download cut short");
        self.remaining = 0;
        Poll::Ready(None)
    }

    fn sent(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.remaining -= data.len() as u64;
        self.downloaded.inc_by(data.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        match &mut this.source {
            Source::Store {
                store,
                seq,
                pending,
            } => {
                let fut = pending.get_or_insert_with(|| {
                    let (store, id, seq) = (store.clone(), this.file_id.clone(), *seq);
                    Box::pin(async move { store.file_chunk(&id, seq).await })
                });
                let got = std::task::ready!(fut.as_mut().poll(cx));
                *pending = None;
                match got {
                    Ok(Some(data)) if !data.is_empty() && data.len() as u64 <= this.remaining => {
                        *seq += 1;
                        this.sent(Bytes::from(data))
                    }
                    // Deleted while being read, or a store failure.
                    Ok(_) | Err(_) => this.cut(),
                }
            }
            Source::Object(body) => loop {
                match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if data.is_empty() => {}
                        Ok(data) if data.len() as u64 <= this.remaining => return this.sent(data),
                        // More than the file's size: not our object.
                        Ok(_) => return this.cut(),
                        Err(_) => {}
                    },
                    // The store failed mid-body, or ended it short.
                    Some(Err(_)) | None => return this.cut(),
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn refuse(node: &Node, status: StatusCode, reason: &'static str, error: &str) -> HttpResponse {
    node.metrics.refuse_file(reason);
    json_response(status, &json!({"ok": false, "error": error}))
}

/// The CORS headers of every answer of these routes (as the CLI routes', `cli-routes.md`
/// "Common behaviour", with the upload headers the spec adds).
fn cors(h: &mut HeaderMap) {
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(
            "Content-Type, Authorization, X-Mesh-Id, X-Member-Id, X-File-Name, X-Tags, \
             X-Persistent, X-Target-Spec, X-Encrypted, X-Owner-Pubkey, X-File-Keys",
        ),
    );
}

/// `OPTIONS /upload`, `OPTIONS /download/…`: 204 with the CORS headers.
pub fn preflight() -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    cors(resp.headers_mut());
    resp
}

/// The answer of both routes with file storage off (extensions §19.1).
pub fn disabled() -> HttpResponse {
    json_response(
        StatusCode::NOT_IMPLEMENTED,
        &json!({"ok": false, "error": "file storage is not available on this broker"}),
    )
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn flag(h: &HeaderMap, name: &str, default: bool) -> bool {
    match header(h, name) {
        Some(v) => matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        None => default,
    }
}

/// Decodes `%XX` escapes (as `encodeURIComponent` makes them); `+` stays.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The upload's metadata headers, checked.
struct UploadMeta {
    name: String,
    tags: Vec<String>,
    persistent: bool,
    encrypted: bool,
    owner_pubkey: Option<String>,
    target_spec: Option<String>,
    keys: Vec<FileKey>,
}

fn parse_keys(raw: &str) -> Result<Vec<FileKey>, String> {
    let v: Value = serde_json::from_str(raw).map_err(|_| "X-File-Keys must be JSON".to_string())?;
    let pairs: Vec<(String, String)> = match v {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let get = |names: &[&str]| {
                    names
                        .iter()
                        .find_map(|n| i.get(*n).and_then(Value::as_str))
                        .unwrap_or_default()
                        .to_string()
                };
                (
                    get(&["peerPubkey", "pubkey", "peer_pubkey"]),
                    get(&["sealedKey", "sealed_key", "key"]),
                )
            })
            .collect(),
        _ => return Err("X-File-Keys must be an object or an array".into()),
    };
    pairs
        .into_iter()
        .map(|(pubkey, sealed_key)| {
            svc_files::check_pubkey(&pubkey).map_err(|e| format!("X-File-Keys: {e}"))?;
            svc_files::check_sealed_key(&sealed_key).map_err(|e| format!("X-File-Keys: {e}"))?;
            Ok(FileKey {
                pubkey: pubkey.to_ascii_lowercase(),
                sealed_key,
            })
        })
        .collect()
}

fn upload_meta(node: &Node, h: &HeaderMap) -> Result<UploadMeta, String> {
    let c = &node.config;
    let name = header(h, "x-file-name")
        .map(percent_decode)
        .unwrap_or_else(|| "file".into());
    if name.len() > c.max_file_name_bytes || name.chars().any(char::is_control) {
        return Err(format!(
            "X-File-Name must be at most {} bytes without control characters (MAX_FILE_NAME_BYTES)",
            c.max_file_name_bytes
        ));
    }
    let tags = match header(h, "x-tags") {
        None => Vec::new(),
        Some(raw) => {
            let tags: Vec<String> = serde_json::from_str(raw)
                .map_err(|_| "X-Tags must be a JSON array of strings".to_string())?;
            if tags.len() > c.max_file_tags || tags.iter().any(|t| t.len() > c.max_file_name_bytes)
            {
                return Err(format!(
                    "X-Tags: at most {} tags of at most {} bytes (MAX_FILE_TAGS)",
                    c.max_file_tags, c.max_file_name_bytes
                ));
            }
            tags
        }
    };
    let target_spec = header(h, "x-target-spec").map(str::to_string);
    if target_spec
        .as_ref()
        .is_some_and(|t| t.len() > c.max_file_name_bytes)
    {
        return Err("X-Target-Spec is too long (MAX_FILE_NAME_BYTES)".into());
    }
    let owner_pubkey = header(h, "x-owner-pubkey").map(str::to_ascii_lowercase);
    if let Some(o) = &owner_pubkey {
        svc_files::check_pubkey(o).map_err(|_| "X-Owner-Pubkey must be 64 hex characters")?;
    }
    let keys = match header(h, "x-file-keys") {
        Some(raw) => parse_keys(raw)?,
        None => Vec::new(),
    };
    if c.max_file_keys > 0 && keys.len() > c.max_file_keys {
        return Err(format!(
            "X-File-Keys: at most {} keys (MAX_FILE_KEYS)",
            c.max_file_keys
        ));
    }
    Ok(UploadMeta {
        name,
        tags,
        persistent: flag(h, "x-persistent", true),
        encrypted: flag(h, "x-encrypted", false),
        owner_pubkey,
        target_spec,
        keys,
    })
}

fn mb(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

fn too_large(node: &Node) -> HttpResponse {
    refuse(
        node,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!("file too large (max {}MB)", mb(node.config.max_file_bytes)),
    )
}

fn mesh_full(node: &Node) -> HttpResponse {
    refuse(
        node,
        StatusCode::PAYLOAD_TOO_LARGE,
        "mesh_full",
        &format!(
            "mesh file storage is full (max {}MB)",
            mb(node.config.max_mesh_file_bytes)
        ),
    )
}

fn store_failed(node: &Node) -> HttpResponse {
    refuse(
        node,
        StatusCode::INTERNAL_SERVER_ERROR,
        "store",
        "file storage unavailable",
    )
}

/// The answer when the object store (`FILES_S3_*`) fails or does not answer.
fn object_unavailable(node: &Node) -> HttpResponse {
    refuse(
        node,
        StatusCode::SERVICE_UNAVAILABLE,
        "object_store",
        "file object store unavailable",
    )
}

/// How a streamed upload ended, when not stored.
enum Fail {
    TooLarge,
    MeshFull,
    Store,
    Body,
    Object,
}

fn object_fail(e: crate::objects::ObjectError) -> Fail {
    tracing::warn!(error = %e, "file upload to the object store failed");
    Fail::Object
}

/// Counts `n` bytes of an object-store upload against the mesh's budget.
async fn reserve(node: &Node, mesh_id: &str, file_id: &str, n: usize) -> Result<(), Fail> {
    match node
        .store
        .file_reserve(mesh_id, file_id, n as u64, node.config.max_mesh_file_bytes)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(Fail::MeshFull),
        Err(_) => Err(Fail::Store),
    }
}

/// A multipart upload in progress: its id and the ETags of its parts.
type Multipart = Option<(String, Vec<String>)>;

/// Counts and uploads one part (beginning the multipart upload with the first).
async fn send_part(
    node: &Node,
    objects: &Objects,
    key: &str,
    (mesh_id, file_id): (&str, &str),
    multipart: &mut Multipart,
    data: Bytes,
) -> Result<(), Fail> {
    reserve(node, mesh_id, file_id, data.len()).await?;
    let (upload_id, etags) = match multipart {
        Some(m) => m,
        None => multipart.insert((
            objects.create_multipart(key).await.map_err(object_fail)?,
            Vec::new(),
        )),
    };
    // S3 allows 10 000 parts: FILES_S3_PART_BYTES bounds the file at 10 000 parts.
    let n = u16::try_from(etags.len() + 1)
        .ok()
        .filter(|n| *n <= 10_000)
        .ok_or(Fail::TooLarge)?;
    let len = data.len() as u64;
    let etag = objects
        .upload_part(key, upload_id, n, data)
        .await
        .map_err(object_fail)?;
    etags.push(etag);
    node.metrics.file_bytes_uploaded.inc_by(len);
    Ok(())
}

/// Streams the body into the object store (`FILES_S3_*`): one PUT when it fits in one
/// part of `FILES_S3_PART_BYTES`, else a multipart upload of such parts (aborted on any
/// failure), holding at most one part in memory. Each part's bytes are counted against
/// the mesh's budget before it is sent. The byte count on success (0: no object).
async fn stream_to_object(
    node: &Node,
    objects: &Objects,
    body: &mut Incoming,
    (mesh_id, file_id): (&str, &str),
    declared: Option<u64>,
) -> Result<u64, Fail> {
    let max_file = node.config.max_file_bytes;
    let part = objects.part_bytes;
    let key = objects.key(mesh_id, file_id);
    let cap = declared
        .and_then(|d| usize::try_from(d).ok())
        .map_or(part, |d| d.min(part));
    let mut buf = BytesMut::with_capacity(cap);
    let mut total: u64 = 0;
    let mut multipart: Multipart = None;
    let ids = (mesh_id, file_id);
    let result = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| Fail::Body)?.into_data() else {
                continue;
            };
            total += data.len() as u64;
            if total > max_file {
                return Err(Fail::TooLarge);
            }
            buf.extend_from_slice(&data);
            while buf.len() >= part {
                let chunk = buf.split_to(part).freeze();
                send_part(node, objects, &key, ids, &mut multipart, chunk).await?;
            }
        }
        if multipart.is_none() {
            if !buf.is_empty() {
                reserve(node, mesh_id, file_id, buf.len()).await?;
                let len = buf.len() as u64;
                objects
                    .put(&key, buf.split().freeze())
                    .await
                    .map_err(object_fail)?;
                node.metrics.file_bytes_uploaded.inc_by(len);
            }
        } else {
            if !buf.is_empty() {
                send_part(
                    node,
                    objects,
                    &key,
                    ids,
                    &mut multipart,
                    buf.split().freeze(),
                )
                .await?;
            }
            if let Some((upload_id, etags)) = &multipart {
                objects
                    .complete_multipart(&key, upload_id, etags)
                    .await
                    .map_err(object_fail)?;
            }
        }
        Ok(total)
    }
    .await;
    if result.is_err()
        && let Some((upload_id, _)) = &multipart
        && let Err(e) = objects.abort_multipart(&key, upload_id).await
    {
        tracing::warn!(error = %e, "multipart upload not aborted (left to the bucket's lifecycle)");
    }
    result
}

/// Streams the body into chunks; the byte count on success.
async fn stream_body(
    node: &Node,
    body: &mut Incoming,
    mesh_id: &str,
    file_id: &str,
) -> Result<u64, Fail> {
    let max_file = node.config.max_file_bytes;
    let max_mesh = node.config.max_mesh_file_bytes;
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
    let mut total: u64 = 0;
    let mut seq: i32 = 0;
    let store = &node.store;
    let put = async |data: &[u8], seq: &mut i32| -> Result<(), Fail> {
        match store
            .file_append(mesh_id, file_id, *seq, data, max_mesh)
            .await
        {
            Ok(true) => {
                *seq += 1;
                node.metrics.file_bytes_uploaded.inc_by(data.len() as u64);
                Ok(())
            }
            Ok(false) => Err(Fail::MeshFull),
            Err(_) => Err(Fail::Store),
        }
    };
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| Fail::Body)?.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max_file {
            return Err(Fail::TooLarge);
        }
        let mut data = &data[..];
        while !data.is_empty() {
            let room = CHUNK_BYTES - buf.len();
            let take = room.min(data.len());
            buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if buf.len() == CHUNK_BYTES {
                put(&buf, &mut seq).await?;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        put(&buf, &mut seq).await?;
    }
    Ok(total)
}

/// The bearer's user as the CLI routes check it; the refusal answer otherwise.
async fn bearer_user(
    node: &Node,
    req: &Request<Incoming>,
    route: &'static str,
) -> Result<String, HttpResponse> {
    let ctx = cli::Ctx::of(req);
    match cli::authenticate(node, &ctx, None, route).await {
        Ok(c) => Ok(c.user_id),
        Err(resp) => {
            node.metrics.refuse_file("unauthorized");
            Err(resp)
        }
    }
}

/// `POST /upload` (extensions §19.1).
pub async fn upload(node: &Arc<Node>, mut req: Request<Incoming>) -> HttpResponse {
    let resp = upload_inner(node, &mut req).await;
    let declared =
        header(req.headers(), CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if resp.status() != StatusCode::OK && declared.is_none_or(|n| n <= node.config.max_file_bytes) {
        drain(req.body_mut()).await;
    }
    let mut resp = resp;
    cors(resp.headers_mut());
    resp
}

/// Most bytes of a refused upload's body read (and discarded) before the answer.
const DRAIN_BYTES: usize = 4 * CHUNK_BYTES;
/// Longest wait for them.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and discards what is left of a refused upload's body, within [`DRAIN_BYTES`] and
/// [`DRAIN_WAIT`]: closing a connection with unread bytes resets it, and the client would
/// lose the answer.
async fn drain(body: &mut Incoming) {
    let _ = tokio::time::timeout(DRAIN_WAIT, async {
        let mut n = 0;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, Bytes::len);
            if n > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

async fn upload_inner(node: &Arc<Node>, req: &mut Request<Incoming>) -> HttpResponse {
    if !node.config.files_enabled {
        return disabled();
    }
    let user_id = match bearer_user(node, req, "upload").await {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let h = req.headers();
    let (Some(mesh_id), Some(member_id)) = (header(h, "x-mesh-id"), header(h, "x-member-id"))
    else {
        return refuse(
            node,
            StatusCode::BAD_REQUEST,
            "invalid",
            "X-Mesh-Id and X-Member-Id are required",
        );
    };
    let (mesh_id, member_id) = (mesh_id.to_string(), member_id.to_string());
    let declared = header(h, CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > node.config.max_file_bytes) {
        return too_large(node);
    }
    let meta = match upload_meta(node, h) {
        Ok(m) => m,
        Err(why) => return refuse(node, StatusCode::BAD_REQUEST, "invalid", &why),
    };
    let ctx = ServiceCtx::new(node);
    let member = match ctx.members(&mesh_id).await {
        Ok(ms) => ms.iter().find(|m| m.id == member_id).cloned(),
        Err(_) => return store_failed(node),
    };
    let Some(member) =
        member.filter(|m| m.revoked_at.is_none() && m.user_id.as_deref() == Some(user_id.as_str()))
    else {
        return refuse(
            node,
            StatusCode::FORBIDDEN,
            "forbidden",
            "X-Member-Id is not a member of X-Mesh-Id belonging to this session's user",
        );
    };
    let now = now_ms();
    let file = FileRecord {
        id: ids::random_id(32),
        mesh_id: mesh_id.clone(),
        uploader_member_id: member.id.clone(),
        uploader_name: member.display_name.clone(),
        name: meta.name,
        tags: meta.tags,
        persistent: meta.persistent,
        encrypted: meta.encrypted,
        owner_pubkey: meta.owner_pubkey,
        target_spec: meta.target_spec,
        size: 0,
        uploaded_at: now,
    };
    let file_id = file.id.clone();
    let timeout = node.config.file_upload_timeout;
    let stale_before = now.saturating_sub(2 * timeout.as_millis() as i64);
    match node
        .store
        .file_begin(
            file,
            meta.keys,
            node.config.max_files_per_mesh,
            stale_before,
        )
        .await
    {
        Ok(Begin::Started) => {}
        Ok(Begin::TooManyFiles) => {
            return refuse(
                node,
                StatusCode::PAYLOAD_TOO_LARGE,
                "mesh_full",
                &format!(
                    "this mesh already holds {} files (MAX_FILES_PER_MESH)",
                    node.config.max_files_per_mesh
                ),
            );
        }
        Err(_) => return store_failed(node),
    }
    let objects = Objects::of(&node.config);
    let streamed = tokio::time::timeout(timeout, async {
        match &objects {
            Some(o) => {
                let ids = (mesh_id.as_str(), file_id.as_str());
                stream_to_object(node, o, req.body_mut(), ids, declared).await
            }
            None => stream_body(node, req.body_mut(), &mesh_id, &file_id).await,
        }
    })
    .await;
    let failed = match streamed {
        Ok(Ok(size)) => {
            match node
                .store
                .file_complete(&mesh_id, &file_id, size as i64)
                .await
            {
                Ok(()) => {
                    return json_response(StatusCode::OK, &json!({"ok": true, "fileId": file_id}));
                }
                Err(_) => {
                    // The row never became visible: its object goes too (else the sweep's).
                    if let Some(o) = &objects
                        && size > 0
                        && let Err(e) = o.delete(&o.key(&mesh_id, &file_id)).await
                    {
                        tracing::warn!(error = %e, "object of a failed upload not deleted");
                    }
                    store_failed(node)
                }
            }
        }
        Ok(Err(Fail::TooLarge)) => too_large(node),
        Ok(Err(Fail::MeshFull)) => mesh_full(node),
        Ok(Err(Fail::Store)) => store_failed(node),
        Ok(Err(Fail::Object)) => object_unavailable(node),
        Ok(Err(Fail::Body)) => refuse(
            node,
            StatusCode::BAD_REQUEST,
            "invalid",
            "the request body could not be read",
        ),
        Err(_) => refuse(
            node,
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "upload took longer than FILE_UPLOAD_TIMEOUT_MS",
        ),
    };
    // Nothing of a failed upload stays (a replica that dies here leaves it to the next
    // upload of the mesh: `file_begin`'s stale sweep).
    let _ = node.store.file_abort(&mesh_id, &file_id).await;
    failed
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| cli::percent_decode(v))
    })
}

fn full(resp: HttpResponse) -> Response<Body> {
    resp.map(Body::Full)
}

/// A quoted `filename` safe in a header: ASCII printable, no quotes or backslashes.
fn disposition(name: &str) -> HeaderValue {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `GET /download/<fileId>?mesh=<meshId>[&token=<t>]` (extensions §19.1).
pub async fn download(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let mut resp = download_inner(node, req).await;
    cors(resp.headers_mut());
    resp
}

async fn download_inner(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    if !node.config.files_enabled {
        return full(disabled());
    }
    let file_id = req
        .uri()
        .path()
        .strip_prefix("/download/")
        .unwrap_or("")
        .to_string();
    let query = req.uri().query().unwrap_or("");
    let Some(mesh_id) = query_param(query, "mesh").filter(|m| !m.is_empty()) else {
        return full(refuse(
            node,
            StatusCode::BAD_REQUEST,
            "invalid",
            "?mesh=<meshId> is required",
        ));
    };
    let ctx = ServiceCtx::new(node);
    let members = match ctx.members(&mesh_id).await {
        Ok(ms) => ms,
        Err(_) => return full(store_failed(node)),
    };
    let not_found = || {
        full(refuse(
            node,
            StatusCode::NOT_FOUND,
            "not_found",
            "file not found",
        ))
    };
    let file = match node.store.file(&mesh_id, &file_id).await {
        Ok(Some(f)) => f,
        Ok(None) => return not_found(),
        Err(_) => return full(store_failed(node)),
    };
    let token = query_param(query, "token").filter(|t| !t.is_empty());
    if let Some(token) = token {
        // The URL of a `get_file`: its checks were made then (and the access logged).
        let member =
            svc_files::verify_download_token(&ctx, &token, &mesh_id, &file_id).and_then(|id| {
                members
                    .iter()
                    .find(|m| m.id == id && m.revoked_at.is_none())
            });
        if member.is_none() {
            return full(refuse(
                node,
                StatusCode::FORBIDDEN,
                "forbidden",
                "download link invalid or expired",
            ));
        }
    } else {
        let user_id = match bearer_user(node, &req, "download").await {
            Ok(u) => u,
            Err(resp) => return full(resp),
        };
        let mine: Vec<&Member> = members
            .iter()
            .filter(|m| m.revoked_at.is_none() && m.user_id.as_deref() == Some(user_id.as_str()))
            .collect();
        if mine.is_empty() {
            return full(refuse(
                node,
                StatusCode::FORBIDDEN,
                "forbidden",
                "not a member of this mesh",
            ));
        }
        let mut allowed = None;
        for m in mine {
            let who = Fetcher {
                member: m,
                session_key: None,
                presence_id: None,
            };
            if svc_files::targets(&ctx, &file, &who).await {
                allowed = Some(m);
                break;
            }
        }
        let Some(m) = allowed else {
            return full(refuse(
                node,
                StatusCode::FORBIDDEN,
                "not_targeted",
                "file not targeted at you",
            ));
        };
        svc_files::log_access(&ctx, &file.id, &m.display_name).await;
    }
    respond(node, &file).await
}

/// The body of an authorised download: from the store, or (`FILES_S3_*`) the object,
/// proxied or as a 302 to a presigned GET.
async fn respond(node: &Node, file: &FileRecord) -> Response<Body> {
    let Some(objects) = Objects::of(&node.config) else {
        return stream(node, file, None);
    };
    match svc_files::object_body(node.store.as_ref(), file).await {
        Ok(true) => {}
        Ok(false) => return stream(node, file, None),
        Err(_) => return full(store_failed(node)),
    }
    let key = objects.key(&file.mesh_id, &file.id);
    if objects.presign {
        let d = disposition(&file.name);
        let url = objects.presigned_get(&key, node.config.file_url_ttl, d.to_str().ok());
        let mut resp = Response::new(Body::Full(Full::new(Bytes::new())));
        *resp.status_mut() = StatusCode::FOUND;
        match HeaderValue::from_str(&url) {
            Ok(v) => resp.headers_mut().insert(hyper::header::LOCATION, v),
            Err(_) => return full(object_unavailable(node)),
        };
        resp.headers_mut()
            .insert("cache-control", HeaderValue::from_static("no-store"));
        return resp;
    }
    match objects.get(&key).await {
        Ok(Some(answer)) => stream(node, file, Some(answer.into_body())),
        Ok(None) => {
            tracing::error!(file_id = %file.id, "a visible file has no object");
            full(object_unavailable(node))
        }
        Err(e) => {
            tracing::warn!(error = %e, "file download from the object store failed");
            full(object_unavailable(node))
        }
    }
}

fn stream(node: &Node, file: &FileRecord, object: Option<Incoming>) -> Response<Body> {
    let size = u64::try_from(file.size).unwrap_or(0);
    let source = match object {
        Some(body) => Source::Object(body),
        None => Source::Store {
            store: node.store.clone(),
            seq: 0,
            pending: None,
        },
    };
    let mut resp = Response::new(Body::File(Chunks {
        downloaded: node.metrics.file_bytes_downloaded.clone(),
        file_id: file.id.clone(),
        remaining: size,
        source,
    }));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(size));
    h.insert("content-disposition", disposition(&file.name));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    if file.encrypted {
        h.insert("x-encrypted", HeaderValue::from_static("true"));
    }
    resp
}
