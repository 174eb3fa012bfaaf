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
use tokio::net::TcpStream;

/// `host:port` of a broker URL: `ws://h:p/ws`, `http://h:p`, or a bare `h:p`.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The WebSocket URL of a `--url` value (`ws://host:port/ws` when only `host:port` or an
/// `http://` URL is given).
pub fn ws_url(url: &str) -> String {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        url.to_string()
    } else {
        format!("ws://{}/ws", authority(url))
    }
}

/// One keep-alive connection to the operator API.
pub struct ApiConn {
    host: String,
    token: String,
    sender: SendRequest<Full<Bytes>>,
}

impl ApiConn {
    pub async fn connect(url: &str, token: &str) -> Result<ApiConn> {
        let host = authority(url).to_string();
        let stream = TcpStream::connect(&host)
            .await
            .with_context(|| format!("connecting to the operator API at {host}"))?;
        let _ = stream.set_nodelay(true);
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

/// Enrols `members` (`(mesh id, pubkey, display name)`) over `parallel` connections;
/// returns the member ids in the same order.
pub async fn enrol_all(
    url: &str,
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
        let mut conn = ApiConn::connect(url, token).await?;
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
    fn urls_of_every_shape_give_the_same_authority() {
        assert_eq!(authority("ws://127.0.0.1:7900/ws"), "127.0.0.1:7900");
        assert_eq!(authority("http://h:1"), "h:1");
        assert_eq!(authority("h:2"), "h:2");
        assert_eq!(ws_url("h:2"), "ws://h:2/ws");
        assert_eq!(ws_url("http://h:3/"), "ws://h:3/ws");
        assert_eq!(ws_url("ws://h:4/ws"), "ws://h:4/ws");
    }
}
