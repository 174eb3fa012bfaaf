//! The optional S3-compatible object store of file bodies (extensions §19.1; issue #15):
//! with `FILES_S3_ENDPOINT` set, the body of a new upload is one object
//! `<FILES_S3_PREFIX><meshId>/<fileId>` of `FILES_S3_BUCKET`, while its metadata, keys,
//! grants, access log and the mesh's byte budget stay in the store (PostgreSQL). Unset, the
//! bodies are PostgreSQL chunks as before.
//!
//! The crate is `rusty-s3`: it only builds SigV4-signed (presigned) URLs and parses the XML
//! answers, and this module sends them over the `hyper` client already in the tree (one
//! connection per request, TLS through `rustls` with the system's CAs for `https`). Every
//! request is signed in its query string (`X-Amz-SignedHeaders=host`,
//! `UNSIGNED-PAYLOAD`), the same way as the presigned download URLs handed to clients.
//! `object_store` (feature `aws`) would bring `reqwest`, its own TLS stack and a dozen more
//! crates for the six calls used here.
//!
//! Consistency: an object is written before its file row is completed, and a file row is
//! deleted before its object, so a visible file always has its object. What a crash leaves
//! behind (an object whose row never completed or was deleted) is invisible to users and
//! removed by [`run_sweep`] once older than twice `FILE_UPLOAD_TIMEOUT_MS`. Multipart
//! uploads a crash abandons are the bucket's business: a lifecycle rule
//! `AbortIncompleteMultipartUpload` (docs/protocol.md, files).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle, actions};
use url::Url;

use crate::node::Node;
use crate::service::watches::{Io, tls};
use crate::store::Store;
use crate::workers::WorkerResult;

/// Smallest `FILES_S3_PART_BYTES`: S3's smallest part of a multipart upload (but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;
/// Validity of the URLs the broker signs for its own requests (sent at once).
const SIGN_TTL: Duration = Duration::from_secs(300);
/// Largest XML answer read (a listing page of 1000 keys is about 300 KiB).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The `FILES_S3_*` settings. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct S3Config {
    pub endpoint: Url,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: zeroize::Zeroizing<String>,
    /// `https://host/bucket/key` rather than `https://bucket.host/key`.
    pub path_style: bool,
    /// Downloads answer a presigned GET of the object (302, and `get_file` URLs) rather
    /// than the broker proxying the bytes.
    pub presign: bool,
    /// Key prefix of every object (`files/`).
    pub prefix: String,
    /// Bytes of one part of a multipart upload: an upload holds at most this in memory.
    pub part_bytes: usize,
    /// Longest wait for one request's answer headers (connect included).
    pub timeout: Duration,
    /// How often each replica looks for orphaned objects.
    pub sweep_interval: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("presign", &self.presign)
            .field("prefix", &self.prefix)
            .field("part_bytes", &self.part_bytes)
            .field("timeout", &self.timeout)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

/// Why an object-store request failed. Its text never holds a URL (they carry
/// signatures).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("object store unreachable: {0}")]
    Unreachable(String),
    #[error("object store did not answer within FILES_S3_TIMEOUT_MS")]
    Timeout,
    #[error("object store answered {status} to {op}")]
    Status { op: &'static str, status: u16 },
    #[error("object store answer to {0} not understood")]
    Malformed(&'static str),
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    /// Unix ms (0 when the store did not say).
    pub last_modified: i64,
}

/// A client of the bucket (cheap to build: no connection is kept).
pub struct Objects {
    bucket: Bucket,
    creds: Credentials,
    prefix: String,
    timeout: Duration,
    pub part_bytes: usize,
    pub presign: bool,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("bucket", &self.bucket.name())
            .finish_non_exhaustive()
    }
}

fn unreachable(e: impl std::fmt::Display) -> ObjectError {
    ObjectError::Unreachable(e.to_string())
}

impl Objects {
    /// The client of `c`; an error when the endpoint and bucket cannot make a bucket URL
    /// (checked at start-up by `Config`).
    pub fn new(c: &S3Config) -> Result<Self, String> {
        let style = if c.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            c.endpoint.clone(),
            style,
            c.bucket.clone(),
            c.region.clone(),
        )
        .map_err(|e| format!("{e:?}"))?;
        Ok(Self {
            bucket,
            creds: Credentials::new(c.access_key_id.clone(), c.secret_access_key.as_str()),
            prefix: c.prefix.clone(),
            timeout: c.timeout,
            part_bytes: c.part_bytes.max(MIN_PART_BYTES),
            presign: c.presign,
        })
    }

    /// The client of this replica's configuration, when it has an object store.
    pub fn of(config: &crate::config::Config) -> Option<Self> {
        let c = config.files_s3.as_ref()?;
        match Self::new(c) {
            Ok(o) => Some(o),
            Err(e) => {
                // `Config` checked it at start-up: not reached.
                tracing::error!(error = %e, "FILES_S3_* unusable");
                None
            }
        }
    }

    /// The key of a file's body.
    pub fn key(&self, mesh_id: &str, file_id: &str) -> String {
        format!("{}{mesh_id}/{file_id}", self.prefix)
    }

    /// The mesh and file of a key of ours.
    pub fn parse_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let (mesh, file) = rest.split_once('/')?;
        (!mesh.is_empty() && !file.is_empty() && !file.contains('/')).then_some((mesh, file))
    }

    /// A presigned GET of `key` valid for `ttl`; with `filename`, S3 answers it as an
    /// attachment of that name.
    pub fn presigned_get(&self, key: &str, ttl: Duration, disposition: Option<&str>) -> String {
        let mut a = actions::GetObject::new(&self.bucket, Some(&self.creds), key);
        if let Some(d) = disposition {
            a.query_mut()
                .insert("response-content-disposition", d.to_string());
        }
        a.sign(ttl).to_string()
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Bytes,
    ) -> Result<Response<Incoming>, ObjectError> {
        let work = async {
            let host = url
                .host_str()
                .ok_or_else(|| unreachable("no host"))?
                .to_string();
            let port = url.port_or_known_default().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect(format!("{host}:{port}"))
                .await
                .map_err(unreachable)?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if url.scheme() == "https" {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                )
                .map_err(unreachable)?;
                Box::new(
                    tls()
                        .map_err(unreachable)?
                        .connect(name, tcp)
                        .await
                        .map_err(unreachable)?,
                )
            } else {
                Box::new(tcp)
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(unreachable)?;
            // Ends when the answer's body is read or dropped (the sender is gone by then).
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let authority = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            let req = Request::builder()
                .method(method)
                .uri(&url[url::Position::BeforePath..])
                .header(HOST, authority)
                .header(CONTENT_LENGTH, body.len())
                .body(Full::new(body))
                .map_err(unreachable)?;
            sender.send_request(req).await.map_err(unreachable)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ObjectError::Timeout)?
    }

    /// The whole (bounded) body of an answer, within the timeout.
    async fn text(
        &self,
        resp: Response<Incoming>,
        op: &'static str,
    ) -> Result<String, ObjectError> {
        let read = async {
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(unreachable)?;
                if let Some(d) = frame.data_ref() {
                    if buf.len() + d.len() > MAX_ANSWER_BYTES {
                        return Err(ObjectError::Malformed(op));
                    }
                    buf.extend_from_slice(d);
                }
            }
            String::from_utf8(buf).map_err(|_| ObjectError::Malformed(op))
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| ObjectError::Timeout)?
    }

    fn expect(
        resp: &Response<Incoming>,
        op: &'static str,
        ok: &[StatusCode],
    ) -> Result<(), ObjectError> {
        if ok.contains(&resp.status()) {
            Ok(())
        } else {
            Err(ObjectError::Status {
                op,
                status: resp.status().as_u16(),
            })
        }
    }

    /// Creates the bucket (tests and first setups; an existing bucket of ours is fine).
    pub async fn create_bucket(&self) -> Result<(), ObjectError> {
        let a = actions::CreateBucket::new(&self.bucket, &self.creds);
        let body = a.body();
        let resp = self
            .send(Method::PUT, a.sign(SIGN_TTL), Bytes::from(body))
            .await?;
        Self::expect(
            &resp,
            "CreateBucket",
            &[StatusCode::OK, StatusCode::CONFLICT],
        )
    }

    /// One PUT of a whole (small) object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        let url = actions::PutObject::new(&self.bucket, Some(&self.creds), key).sign(SIGN_TTL);
        let resp = self.send(Method::PUT, url, data).await?;
        Self::expect(&resp, "PutObject", &[StatusCode::OK])
    }

    /// Begins a multipart upload: its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, ObjectError> {
        let url = actions::CreateMultipartUpload::new(&self.bucket, Some(&self.creds), key)
            .sign(SIGN_TTL);
        let resp = self.send(Method::POST, url, Bytes::new()).await?;
        Self::expect(&resp, "CreateMultipartUpload", &[StatusCode::OK])?;
        let text = self.text(resp, "CreateMultipartUpload").await?;
        let parsed = actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|_| ObjectError::Malformed("CreateMultipartUpload"))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Uploads part `n` (1, 2, …): its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u16,
        data: Bytes,
    ) -> Result<String, ObjectError> {
        let url = actions::UploadPart::new(&self.bucket, Some(&self.creds), key, n, upload_id)
            .sign(SIGN_TTL);
        let resp = self.send(Method::PUT, url, data).await?;
        Self::expect(&resp, "UploadPart", &[StatusCode::OK])?;
        resp.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or(ObjectError::Malformed("UploadPart"))
    }

    /// Completes a multipart upload of the parts whose ETags are `etags`, in order.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), ObjectError> {
        let a = actions::CompleteMultipartUpload::new(
            &self.bucket,
            Some(&self.creds),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = a.sign(SIGN_TTL);
        let body = a.body();
        let resp = self.send(Method::POST, url, Bytes::from(body)).await?;
        Self::expect(&resp, "CompleteMultipartUpload", &[StatusCode::OK])?;
        // S3 may answer 200 with an error document.
        let text = self.text(resp, "CompleteMultipartUpload").await?;
        actions::CompleteMultipartUploadResponse::parse(&text)
            .map(|_| ())
            .map_err(|_| ObjectError::Malformed("CompleteMultipartUpload"))
    }

    /// Aborts a multipart upload (its parts are dropped).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        let url =
            actions::AbortMultipartUpload::new(&self.bucket, Some(&self.creds), key, upload_id)
                .sign(SIGN_TTL);
        let resp = self.send(Method::DELETE, url, Bytes::new()).await?;
        Self::expect(
            &resp,
            "AbortMultipartUpload",
            &[
                StatusCode::NO_CONTENT,
                StatusCode::OK,
                StatusCode::NOT_FOUND,
            ],
        )
    }

    /// The object's answer, its body not read yet; `None` when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Response<Incoming>>, ObjectError> {
        let url = actions::GetObject::new(&self.bucket, Some(&self.creds), key).sign(SIGN_TTL);
        let resp = self.send(Method::GET, url, Bytes::new()).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::expect(&resp, "GetObject", &[StatusCode::OK])?;
        Ok(Some(resp))
    }

    /// Deletes the object (none is fine).
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let url = actions::DeleteObject::new(&self.bucket, Some(&self.creds), key).sign(SIGN_TTL);
        let resp = self.send(Method::DELETE, url, Bytes::new()).await?;
        Self::expect(
            &resp,
            "DeleteObject",
            &[
                StatusCode::NO_CONTENT,
                StatusCode::OK,
                StatusCode::NOT_FOUND,
            ],
        )
    }

    /// One page of the keys under our prefix, and the token of the next page.
    pub async fn list(
        &self,
        continuation: Option<&str>,
    ) -> Result<(Vec<Listed>, Option<String>), ObjectError> {
        let mut a = self.bucket.list_objects_v2(Some(&self.creds));
        a.with_prefix(self.prefix.as_str());
        if let Some(t) = continuation {
            a.with_continuation_token(t.to_string());
        }
        let resp = self
            .send(Method::GET, a.sign(SIGN_TTL), Bytes::new())
            .await?;
        Self::expect(&resp, "ListObjectsV2", &[StatusCode::OK])?;
        let text = self.text(resp, "ListObjectsV2").await?;
        let page = actions::ListObjectsV2::parse_response(&text)
            .map_err(|_| ObjectError::Malformed("ListObjectsV2"))?;
        let listed = page
            .contents
            .into_iter()
            .map(|c| Listed {
                last_modified: c
                    .last_modified
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or(0, |t| t.as_millisecond()),
                key: c.key,
            })
            .collect();
        Ok((listed, page.next_continuation_token))
    }
}

/// Deletes the objects under our prefix, last modified before `before` (Unix ms), whose
/// file is not complete and visible (never completed, or deleted). Stops at the first
/// store error: an object is deleted only when its row is known to be gone. The count.
pub async fn sweep_orphans(
    store: &dyn Store,
    objects: &Objects,
    before: i64,
) -> Result<u64, String> {
    let mut token: Option<String> = None;
    let mut swept = 0;
    loop {
        let (page, next) = objects
            .list(token.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        for o in page {
            if o.last_modified >= before {
                continue;
            }
            let Some((mesh, file)) = objects.parse_key(&o.key) else {
                continue;
            };
            let live = store.file(mesh, file).await.map_err(|e| e.to_string())?;
            if live.is_none() {
                objects.delete(&o.key).await.map_err(|e| e.to_string())?;
                swept += 1;
            }
        }
        match next {
            Some(t) => token = Some(t),
            None => return Ok(swept),
        }
    }
}

/// The `file_objects` worker: every `FILES_S3_SWEEP_INTERVAL_MS` (first at start-up),
/// [`sweep_orphans`] of objects older than twice `FILE_UPLOAD_TIMEOUT_MS` (an upload in
/// progress completes its object and then its row well within that).
pub async fn run_sweep(node: Arc<Node>) -> WorkerResult {
    let Some(objects) = Objects::of(&node.config) else {
        return Ok(());
    };
    let Some(interval) = node.config.files_s3.as_ref().map(|c| c.sweep_interval) else {
        return Ok(());
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let age = 2 * node.config.file_upload_timeout.as_millis() as i64;
                let before = crate::ids::now_ms().saturating_sub(age);
                match sweep_orphans(node.store.as_ref(), &objects, before).await {
                    Ok(0) => {}
                    Ok(n) => {
                        node.metrics.file_objects_swept.inc_by(n);
                        tracing::info!(swept = n, "orphaned file objects deleted");
                    }
                    Err(e) => tracing::warn!(error = %e, "file object sweep failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "s3cr3t-value-of-the-test";

    fn with(extra: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        let mut env = vec![
            ("FILES_S3_ENDPOINT", "http://127.0.0.1:9"),
            ("FILES_S3_BUCKET", "bucket"),
            ("FILES_S3_ACCESS_KEY_ID", "AKID"),
            ("FILES_S3_SECRET_ACCESS_KEY", SECRET),
        ];
        env.extend_from_slice(extra);
        Config::for_tests(&env)
    }

    #[test]
    fn the_settings_need_a_bucket_and_keys_and_never_show_the_secret() {
        assert!(Config::for_tests(&[]).unwrap().files_s3.is_none());
        assert!(Config::for_tests(&[("FILES_S3_ENDPOINT", "http://127.0.0.1:9")]).is_err());
        assert!(with(&[("FILES_S3_ENDPOINT", "ftp://host")]).is_err());
        assert!(with(&[("FILES_S3_PART_BYTES", "1000")]).is_err());
        let c = with(&[]).unwrap();
        let s3 = c.files_s3.as_ref().unwrap();
        assert_eq!(
            (s3.part_bytes, s3.path_style, s3.presign, s3.prefix.as_str()),
            (8 * 1024 * 1024, true, false, "files/")
        );
        assert!(!format!("{s3:?}").contains(SECRET));
        let o = Objects::new(s3).unwrap();
        assert!(!format!("{o:?}").contains(SECRET));
        assert_eq!(o.key("m1", "f1"), "files/m1/f1");
        assert_eq!(o.parse_key("files/m1/f1"), Some(("m1", "f1")));
        assert_eq!(o.parse_key("files/m1/f1/x"), None);
        assert_eq!(o.parse_key("other/m1/f1"), None);
        let url = o.presigned_get("files/m1/f1", Duration::from_secs(60), None);
        assert!(
            url.starts_with("http://127.0.0.1:9/bucket/files/m1/f1?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=60") && url.contains("X-Amz-Signature="));
        assert!(!url.contains(SECRET));
    }
}
