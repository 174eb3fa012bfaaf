//! The SSE stream of a topic (`GET /api/v1/topics/:name/stream`, `rest.md` §4.4).
//!
//! **Pushed from the bus, read from the store.** A stream keeps a cursor (the id of the
//! last message it sent) and reads the topic's history after it, oldest first, so two
//! messages of one millisecond are never lost and a message posted on any replica, over WS
//! or REST, is seen. It reads when woken: by a post stored on this replica ([`wake`]), or
//! by the mesh bus — while a stream of a mesh is open its replica stays subscribed to the
//! mesh ([`has_mesh`], `Node::sync_subscription`), and the dispatcher hands every `Deliver`
//! to [`delivered`], which wakes the streams of the frame's `topicId` (a post no live
//! presence receives publishes a recipient-less `Deliver` of a `topic_posted` frame,
//! [`crate::protocol::ext::topics::TopicPosted`]). A lost bus
//! event only delays a message: every `REST_STREAM_POLL_MS` the stream reads anyway.
//! `Last-Event-ID` (a message id of the topic) resumes after that message (at most
//! [`MAX_REPLAY`] messages are replayed).
//!
//! Every `REST_STREAM_HEARTBEAT_MS` it sends a `heartbeat` event and re-reads its key, and
//! so it does at once when the mesh's `MembersChanged` arrives ([`recheck`]: a ban, or a
//! key revocation, publish it): a revoked key or a banned issuer ends the stream (an
//! `error` event, then the end); an expired key does not (`topic tail` streams on a
//! 5-minute key). Streams are bounded per
//! key and per replica (`REST_MAX_STREAMS_PER_KEY`, `REST_MAX_STREAMS_PER_REPLICA`,
//! gauge `broker_rest_streams_open`); shutdown ends them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::node::Node;
use crate::service::ServiceCtx;
use crate::store::topics::{Topic, TopicMessage};

/// Events buffered per stream before its producer waits for the client.
const STREAM_BUFFER: usize = 64;
/// Messages read per store page.
const PAGE: usize = 100;
/// Most messages a resume (`Last-Event-ID`) or one read replays; beyond it the stream
/// jumps to the newest message (the client backfills with the history route).
pub const MAX_REPLAY: usize = 1000;

/// The body of an SSE response: the events its producer task sends.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|event| event.map(|b| Ok(Frame::data(b))))
    }
}

/// The open streams of this replica: per key (the bound), per mesh (the bus
/// subscription) and in all.
#[derive(Debug, Default)]
struct Open {
    per_key: HashMap<String, usize>,
    per_mesh: HashMap<String, usize>,
    total: usize,
}

/// This replica's open streams (process state: gone with the process, like its sockets).
static OPEN: LazyLock<Mutex<Open>> = LazyLock::new(Default::default);

/// Topic posts seen by this replica (stored here, or announced on the bus), by topic id:
/// wakes the topic's streams at once.
static WAKE: LazyLock<broadcast::Sender<String>> = LazyLock::new(|| broadcast::channel(1024).0);

/// A post to `topic_id` was stored (by this replica, or announced by the bus): its streams
/// here read the store now.
pub fn wake(topic_id: &str) {
    let _ = WAKE.send(topic_id.to_string());
}

/// What `WAKE` carries to re-read the keys of a mesh's streams.
fn recheck_signal(mesh_id: &str) -> String {
    format!("recheck:{mesh_id}")
}

/// The mesh's members or keys changed (a ban, a revocation: `MeshEvent::MembersChanged`):
/// its streams here re-read their key at once, and end if it no longer holds.
pub fn recheck(mesh_id: &str) {
    if has_mesh(mesh_id) {
        let _ = WAKE.send(recheck_signal(mesh_id));
    }
}

fn open_streams() -> std::sync::MutexGuard<'static, Open> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether streams of the mesh are open here (the replica then stays subscribed to it).
pub fn has_mesh(mesh_id: &str) -> bool {
    open_streams().per_mesh.contains_key(mesh_id)
}

/// The meshes with open streams here.
pub fn mesh_ids() -> Vec<String> {
    open_streams().per_mesh.keys().cloned().collect()
}

/// The topic id of a pushed topic frame (`push` with `topicId`, or the `topic_posted`
/// wake-up a post with no live recipient publishes).
#[derive(serde::Deserialize)]
struct TopicOf {
    #[serde(rename = "topicId")]
    topic_id: Option<String>,
}

/// A bus `Deliver` of the mesh reached this replica: a topic post wakes its streams.
pub fn delivered(mesh_id: &str, frame: &[u8]) {
    if !has_mesh(mesh_id) {
        return;
    }
    if let Ok(TopicOf {
        topic_id: Some(topic_id),
    }) = serde_json::from_slice(frame)
    {
        wake(&topic_id);
    }
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PerKey,
    PerReplica,
}

/// One stream's place in the bounds and the mesh subscription; released when dropped.
struct Slot {
    node: std::sync::Arc<Node>,
    key_id: String,
    mesh_id: String,
}

impl Slot {
    fn take(node: &std::sync::Arc<Node>, key_id: &str, mesh_id: &str) -> Result<Slot, Refused> {
        let mut open = open_streams();
        if open.total >= node.config.rest_max_streams_per_replica {
            return Err(Refused::PerReplica);
        }
        let mine = open.per_key.entry(key_id.to_string()).or_default();
        if *mine >= node.config.rest_max_streams_per_key {
            return Err(Refused::PerKey);
        }
        *mine += 1;
        *open.per_mesh.entry(mesh_id.to_string()).or_default() += 1;
        open.total += 1;
        node.metrics.rest_streams_open.inc();
        Ok(Slot {
            node: node.clone(),
            key_id: key_id.to_string(),
            mesh_id: mesh_id.to_string(),
        })
    }
}

fn release(map: &mut HashMap<String, usize>, k: &str) {
    if let Some(n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let last_of_mesh = {
            let mut open = open_streams();
            release(&mut open.per_key, &self.key_id);
            release(&mut open.per_mesh, &self.mesh_id);
            open.total = open.total.saturating_sub(1);
            !open.per_mesh.contains_key(&self.mesh_id)
        };
        self.node.metrics.rest_streams_open.dec();
        if last_of_mesh {
            let (node, mesh_id) = (self.node.clone(), self.mesh_id.clone());
            self.node
                .tracker
                .spawn(async move { node.sync_subscription(&mesh_id).await });
        }
    }
}

fn event(name: &str, id: Option<&str>, data: &str) -> Bytes {
    let mut out = format!("event: {name}\n");
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str(&format!("data: {data}\n\n"));
    Bytes::from(out)
}

/// Messages of the topic after `cursor` (none: from the start), oldest first, at most
/// [`MAX_REPLAY`]; `None` when the cursor is no longer within reach (the caller jumps to
/// the newest message).
async fn after(
    svc: &ServiceCtx,
    topic_id: &str,
    cursor: Option<&str>,
) -> crate::store::StoreResult<Option<Vec<TopicMessage>>> {
    let mut newer: Vec<TopicMessage> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = svc
            .store()
            .topic_history(topic_id, before.as_deref(), PAGE)
            .await?;
        let full = page.len() == PAGE;
        for m in page {
            if Some(m.id.as_str()) == cursor {
                newer.reverse();
                return Ok(Some(newer));
            }
            before = Some(m.id.clone());
            newer.push(m);
        }
        if !full {
            // The start of the topic: everything is newer (cursor `None`), or the cursor
            // is gone.
            if cursor.is_none() {
                newer.reverse();
                return Ok(Some(newer));
            }
            return Ok(None);
        }
        if newer.len() >= MAX_REPLAY {
            return Ok(None);
        }
    }
}

/// The newest message id of the topic (the connect-time watermark).
async fn newest(svc: &ServiceCtx, topic_id: &str) -> crate::store::StoreResult<Option<String>> {
    Ok(svc
        .store()
        .topic_history(topic_id, None, 1)
        .await?
        .into_iter()
        .next()
        .map(|m| m.id))
}

/// Opens a stream of `topic` for the key `key_id`: the body, or why not.
pub async fn open(
    node: &std::sync::Arc<Node>,
    svc: ServiceCtx,
    key_id: String,
    topic: Topic,
    last_event_id: Option<String>,
    render: fn(&TopicMessage) -> Value,
) -> Result<SseBody, Refused> {
    let slot = Slot::take(node, &key_id, &topic.mesh_id)?;
    // Subscribed to the mesh before the watermark is read: no post after it is missed.
    node.sync_subscription(&topic.mesh_id).await;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let node2 = node.clone();
    node.tracker.spawn(async move {
        let _slot = slot;
        run(node2, svc, key_id, topic, last_event_id, render, tx).await;
    });
    Ok(SseBody { rx })
}

/// Re-reads the stream's key; `false` (after an `error` event) once it is revoked or its
/// issuer banned. A backend hiccup is not a revocation: the stream continues.
async fn key_holds(svc: &ServiceCtx, key_id: &str, tx: &mpsc::Sender<Bytes>) -> bool {
    match crate::service::apikeys::recheck(svc, key_id).await {
        Err(crate::service::apikeys::VerifyError::Invalid) => {
            let e = json!({"error": "api key revoked"}).to_string();
            let _ = tx.send(event("error", None, &e)).await;
            false
        }
        Err(crate::service::apikeys::VerifyError::Unavailable(_)) | Ok(_) => true,
    }
}

async fn run(
    node: std::sync::Arc<Node>,
    svc: ServiceCtx,
    key_id: String,
    topic: Topic,
    last_event_id: Option<String>,
    render: fn(&TopicMessage) -> Value,
    tx: mpsc::Sender<Bytes>,
) {
    let mut wake = WAKE.subscribe();
    let recheck_of = recheck_signal(&topic.mesh_id);
    // The cursor, set before `ready` so that nothing posted after `ready` is missed:
    // `Some(None)` = the topic was empty (every message is new); `None` = not read yet.
    let mut cursor: Option<Option<String>> = None;
    if let Some(id) = last_event_id
        && let Ok(Some(_)) = after(&svc, &topic.id, Some(&id)).await
    {
        cursor = Some(Some(id));
    }
    if cursor.is_none()
        && let Ok(n) = newest(&svc, &topic.id).await
    {
        cursor = Some(n);
    }
    let ready = json!({"topic": topic.name, "topicId": topic.id,
                       "connectedAt": crate::ids::iso8601_ms(crate::ids::now_ms())});
    if tx
        .send(event("ready", None, &ready.to_string()))
        .await
        .is_err()
    {
        return;
    }
    let heartbeat = node.config.rest_stream_heartbeat;
    let poll = node.config.rest_stream_poll;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let read = tokio::select! {
            _ = node.stopping.cancelled() => return,
            _ = tx.closed() => return,
            _ = beat.tick() => {
                let now = crate::ids::now_ms().to_string();
                if tx.send(event("heartbeat", None, &now)).await.is_err() {
                    return;
                }
                if !key_holds(&svc, &key_id, &tx).await {
                    return;
                }
                false
            }
            woke = wake.recv() => match woke {
                Ok(t) if t == recheck_of => {
                    if !key_holds(&svc, &key_id, &tx).await {
                        return;
                    }
                    false
                }
                Ok(t) => t == topic.id,
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => false,
            },
            _ = tick.tick() => true,
        };
        if !read {
            continue;
        }
        let result = match &cursor {
            None => newest(&svc, &topic.id).await.map(|n| {
                cursor = Some(n);
                Vec::new()
            }),
            Some(c) => match after(&svc, &topic.id, c.as_deref()).await {
                Ok(Some(msgs)) => Ok(msgs),
                Ok(None) => newest(&svc, &topic.id).await.map(|n| {
                    cursor = Some(n);
                    Vec::new()
                }),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(msgs) => {
                for m in msgs {
                    let data = render(&m).to_string();
                    if tx.send(event("message", Some(&m.id), &data)).await.is_err() {
                        return;
                    }
                    cursor = Some(Some(m.id));
                }
            }
            Err(e) => {
                let data = json!({"error": e.to_string()}).to_string();
                if tx.send(event("error", None, &data)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
