//! The broker's operator API (`/api/v1/…`, bearer token) over keep-alive HTTP/1.1, used to
//! create the run's meshes and enrol its members.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::client::Dial;

/// One `--url` (or `--api-url`) taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `wss://` or `https://`: TLS, always.
    pub tls: bool,
    /// The host alone (no port, no brackets): the TLS server name.
    pub host: String,
    /// `host:port` (the scheme's port when the URL names none).
    pub authority: String,
    /// The WebSocket URL (`ws[s]://host:port/ws` unless a `ws[s]://` URL gave a path).
    pub ws_url: String,
}

impl Endpoint {
    /// Parses `ws://h:p/ws`, `wss://h/ws`, `http://h:p`, `https://h` or a bare `h:p`
    /// (plaintext). Any other scheme is refused rather than guessed.
    pub fn parse(url: &str) -> Result<Endpoint> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("http".to_string(), url),
        };
        let (tls, ws_scheme) = match scheme.as_str() {
            "ws" | "http" => (false, "ws"),
            "wss" | "https" => (true, "wss"),
            other => bail!("{url:?}: the scheme must be ws, wss, http or https, not {other:?}"),
        };
        let (auth, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if auth.is_empty() {
            bail!("{url:?} names no host");
        }
        let (host, port) = if let Some(v6) = auth.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .with_context(|| format!("{url:?}: unclosed [ in the host"))?;
            (h.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match auth.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.to_string())),
                None => (auth.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .with_context(|| format!("{url:?}: {p:?} is not a port"))?,
            None if tls => 443,
            None => 80,
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let ws_path = if (scheme == "ws" || scheme == "wss") && !path.is_empty() {
            path.to_string()
        } else {
            "/ws".to_string()
        };
        Ok(Endpoint {
            tls,
            ws_url: format!("{ws_scheme}://{authority}{ws_path}"),
            host,
            authority,
        })
    }
}

/// One keep-alive connection to the operator API.
pub struct ApiConn {
    host: String,
    token: String,
    sender: SendRequest<Full<Bytes>>,
}

impl ApiConn {
    pub async fn connect(dial: &Dial, token: &str) -> Result<ApiConn> {
        let host = dial.authority.clone();
        let what = if dial.tls.is_some() { "https" } else { "http" };
        let stream = dial
            .open(None)
            .await
            .map_err(|e| anyhow!("connecting to the operator API at {what}://{host}: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(ApiConn {
            host,
            token: token.to_string(),
            sender,
        })
    }

    /// One call; returns the status and the JSON body (`Null` when empty or not JSON).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        self.sender.ready().await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Creates a mesh; returns its id.
    pub async fn create_mesh(&mut self, name: &str) -> Result<String> {
        let (status, v) = self
            .call(Method::POST, "/api/v1/meshes", Some(json!({"name": name})))
            .await?;
        if status == 401 {
            bail!(
                "the operator API refused the token (401): pass the broker's BROKER_ADMIN_TOKEN with --token"
            );
        }
        if status == 404 {
            bail!(
                "creating a mesh answered 404 at {}: no operator API on this port (a broker with BROKER_INTERNAL_PORT serves it there: pass --api-url http://HOST:INTERNAL_PORT)",
                self.host
            );
        }
        if status != 201 {
            bail!("creating a mesh answered {status}: {v}");
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("mesh answer without id: {v}"))
    }

    /// Enrols `pubkey` as a member of `mesh`; returns the member id.
    pub async fn add_member(&mut self, mesh: &str, pubkey: &str, name: &str) -> Result<String> {
        let (status, v) = self
            .call(
                Method::POST,
                &format!("/api/v1/meshes/{mesh}/members"),
                Some(json!({"pubkey": pubkey, "displayName": name})),
            )
            .await?;
        if status != 201 {
            bail!("enrolling a member answered {status}: {v}");
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("member answer without id: {v}"))
    }
}

/// How a `DELETE` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// 200 or 204.
    Yes,
    /// 404 or 405: gone already, or a broker without the route.
    Missing(u16),
}

impl ApiConn {
    /// `DELETE path`: `Yes` on 2xx, `Missing` on 404/405, an error on anything else.
    pub async fn delete(&mut self, path: &str) -> Result<Deleted> {
        let (status, v) = self.call(Method::DELETE, path, None).await?;
        match status {
            200..=299 => Ok(Deleted::Yes),
            404 | 405 => Ok(Deleted::Missing(status)),
            _ => bail!("DELETE {path} answered {status}: {v}"),
        }
    }
}

/// Enrols `members` (`(mesh id, pubkey, display name)`) over `parallel` connections;
/// returns the member ids in the same order.
pub async fn enrol_all(
    api: &Dial,
    token: &str,
    members: Vec<(String, String, String)>,
    parallel: usize,
    on_done: impl Fn() + Send + Sync + 'static,
) -> Result<Vec<String>> {
    let members = Arc::new(members);
    let next = Arc::new(AtomicUsize::new(0));
    let on_done = Arc::new(on_done);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1).min(members.len().max(1)) {
        let mut conn = ApiConn::connect(api, token).await?;
        let members = members.clone();
        let next = next.clone();
        let on_done = on_done.clone();
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((mesh, pubkey, name)) = members.get(i) else {
                    break;
                };
                let id = conn.add_member(mesh, pubkey, name).await?;
                on_done();
                done.push((i, id));
            }
            anyhow::Ok(done)
        });
    }
    let mut ids = vec![String::new(); members.len()];
    while let Some(res) = tasks.join_next().await {
        for (i, id) in res?? {
            ids[i] = id;
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_shape_give_an_endpoint() {
        let e = Endpoint::parse("ws://127.0.0.1:7900/ws").expect("parses");
        assert_eq!((e.tls, e.authority.as_str()), (false, "127.0.0.1:7900"));
        assert_eq!(e.ws_url, "ws://127.0.0.1:7900/ws");
        let e = Endpoint::parse("h:2").expect("parses");
        assert_eq!((e.tls, e.ws_url.as_str()), (false, "ws://h:2/ws"));
        let e = Endpoint::parse("http://h:3/").expect("parses");
        assert_eq!(e.ws_url, "ws://h:3/ws");
        let e = Endpoint::parse("https://broker.example").expect("parses");
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.authority.as_str()),
            ("broker.example", "broker.example:443")
        );
        assert_eq!(e.ws_url, "wss://broker.example:443/ws");
        let e = Endpoint::parse("WSS://[::1]:8443/mesh/ws").expect("parses");
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.authority.as_str()),
            ("::1", "[::1]:8443")
        );
        assert_eq!(e.ws_url, "wss://[::1]:8443/mesh/ws");
        assert_eq!(
            Endpoint::parse("ws://h/x").expect("parses").authority,
            "h:80"
        );
        for bad in ["ftp://h:1", "ws://", "h:port", "ws://[::1:1/ws"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
