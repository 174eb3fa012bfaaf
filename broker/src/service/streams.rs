//! The operations of streams (extensions §4): `create_stream`, `subscribe`, `unsubscribe`,
//! `publish`, `list_streams`, without a transport.
//!
//! Stream names are durable (the store, idempotent per mesh and name); subscriptions are
//! live state keyed by presence in the registry ([`crate::cluster::subscriptions`]), so
//! they survive a reattach on another replica and are dropped when the presence ends
//! ([`presence_ended`]). A publish is fanned out once, on the publisher's replica, as one
//! `Deliver` on the mesh bus naming the subscribed presences (never the publisher's own),
//! so subscribers on every replica get it once, in the publisher's order. Nothing
//! published is stored.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;
use tracing::warn;

use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::cluster::presence::PresenceRecord;
use crate::cluster::subscriptions::{StreamSubscriptions, Subscribe};
use crate::ids::{self, now_ms};
use crate::metrics::{PriorityLabel, ReasonLabel};
use crate::protocol;
use crate::protocol::ext::streams::StreamData;
use crate::store::streams::{CreateStream, Stream};

/// Why a stream request was refused. [`StreamError::code`] and [`StreamError::message`]
/// are the `error` frame's exact `code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// A stream name over `MAX_STREAM_NAME_BYTES`.
    NameTooLong { len: usize, max: usize },
    /// A new name in a mesh holding `MAX_STREAMS_PER_MESH` streams.
    TooManyStreams { max: usize },
    /// A presence holding `MAX_STREAM_SUBSCRIPTIONS_PER_PRESENCE` subscriptions.
    TooManySubscriptions { max: usize },
    /// The store, the registry or the bus failed.
    Unavailable(String),
}

impl StreamError {
    pub fn code(&self) -> &'static str {
        match self {
            StreamError::NameTooLong { .. } => "name_too_long",
            StreamError::TooManyStreams { .. } => "too_many_streams",
            StreamError::TooManySubscriptions { .. } => "too_many_subscriptions",
            StreamError::Unavailable(_) => "internal",
        }
    }

    /// The `reason` of `broker_stream_requests_refused_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StreamError::NameTooLong { .. } => "name_too_long",
            StreamError::TooManyStreams { .. } => "too_many_streams",
            StreamError::TooManySubscriptions { .. } => "too_many_subscriptions",
            StreamError::Unavailable(_) => "unavailable",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            StreamError::NameTooLong { len, max } => {
                format!("stream name is {len} bytes, more than {max}")
            }
            StreamError::TooManyStreams { max } => {
                format!("this mesh has {max} streams, the most it may have")
            }
            StreamError::TooManySubscriptions { max } => {
                format!("this presence subscribes to {max} streams, the most it may")
            }
            StreamError::Unavailable(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for StreamError {}

fn unavailable(e: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable(e.to_string())
}

fn refused(ctx: &ServiceCtx, e: StreamError) -> StreamError {
    ctx.metrics()
        .stream_requests_refused
        .get_or_create(&ReasonLabel {
            reason: e.metric_label(),
        })
        .inc();
    e
}

fn check_name(ctx: &ServiceCtx, name: &str) -> Result<(), StreamError> {
    let max = ctx.config().max_stream_name_bytes;
    if name.len() > max {
        return Err(refused(
            ctx,
            StreamError::NameTooLong {
                len: name.len(),
                max,
            },
        ));
    }
    Ok(())
}

/// `create_stream`: the stream of that name, new or existing.
pub async fn create(ctx: &ServiceCtx, p: &Principal, name: &str) -> Result<Stream, StreamError> {
    check_name(ctx, name)?;
    let stream = Stream {
        id: ids::random_id(32),
        mesh_id: p.mesh.id.clone(),
        name: name.to_string(),
        created_by: p.display_name.clone(),
        created_at: now_ms(),
    };
    let max = ctx.config().max_streams_per_mesh;
    match ctx.store().create_stream(stream, max).await {
        Ok(CreateStream::Stream(s)) => Ok(s),
        Ok(CreateStream::Full) => Err(refused(ctx, StreamError::TooManyStreams { max })),
        Err(e) => Err(refused(ctx, unavailable(e))),
    }
}

/// `subscribe`: the caller's presence subscribes (the stream need not exist).
pub async fn subscribe(ctx: &ServiceCtx, p: &Principal, stream: &str) -> Result<(), StreamError> {
    check_name(ctx, stream)?;
    let max = ctx.config().max_stream_subscriptions_per_presence;
    match ctx
        .stream_subscriptions()
        .subscribe(&p.mesh.id, &p.presence_id, stream, max)
        .await
    {
        Ok(Subscribe::Added | Subscribe::Already) => Ok(()),
        Ok(Subscribe::Full) => Err(refused(ctx, StreamError::TooManySubscriptions { max })),
        Err(e) => Err(refused(ctx, unavailable(e))),
    }
}

/// `unsubscribe`: the caller's presence stops receiving the stream.
pub async fn unsubscribe(ctx: &ServiceCtx, p: &Principal, stream: &str) -> Result<(), StreamError> {
    check_name(ctx, stream)?;
    ctx.stream_subscriptions()
        .unsubscribe(&p.mesh.id, &p.presence_id, stream)
        .await
        .map(drop)
        .map_err(|e| refused(ctx, unavailable(e)))
}

/// The subscribers of each of `streams` that still exist in the registry; entries of
/// presences that are gone (ended without their subscriptions being dropped) are pruned.
async fn live_subscribers(
    ctx: &ServiceCtx,
    mesh_id: &str,
    streams: &[&str],
) -> Result<Vec<Vec<String>>, StreamError> {
    // Subscribers first, presences second: a presence that subscribed after attaching is
    // in the presence list read after its subscription, so it is never taken for stale.
    let subscribers = ctx
        .stream_subscriptions()
        .subscribers(mesh_id, streams)
        .await
        .map_err(unavailable)?;
    if subscribers.iter().all(Vec::is_empty) {
        return Ok(subscribers);
    }
    let records = ctx.presence().list(mesh_id).await.map_err(unavailable)?;
    let existing: HashSet<&str> = records.iter().map(|r| r.presence_id.as_str()).collect();
    let mut stale: Vec<String> = Vec::new();
    let live = subscribers
        .into_iter()
        .map(|ids| {
            ids.into_iter()
                .filter(|id| {
                    let keep = existing.contains(id.as_str());
                    if !keep && !stale.contains(id) {
                        stale.push(id.clone());
                    }
                    keep
                })
                .collect()
        })
        .collect();
    if !stale.is_empty()
        && let Err(e) = ctx.stream_subscriptions().prune(mesh_id, &stale).await
    {
        warn!(error = %e, "stale stream subscriptions not pruned");
    }
    Ok(live)
}

/// `publish`: `stream_data` to every subscribed presence but the publisher's; returns how
/// many presences it was addressed to (none: dropped silently, as the spec says).
pub async fn publish(
    ctx: &ServiceCtx,
    p: &Principal,
    stream: &str,
    data: Value,
) -> Result<usize, StreamError> {
    check_name(ctx, stream)?;
    let subscribers = live_subscribers(ctx, &p.mesh.id, &[stream])
        .await
        .map_err(|e| refused(ctx, e))?;
    ctx.metrics()
        .messages_routed
        .get_or_create(&PriorityLabel { priority: "stream" })
        .inc();
    let presence_ids: Vec<String> = subscribers
        .into_iter()
        .flatten()
        .filter(|id| *id != p.presence_id)
        .collect();
    if presence_ids.is_empty() {
        return Ok(0);
    }
    let frame = protocol::encode(&StreamData {
        stream: stream.to_string(),
        data,
        published_by: p.member.display_name.clone(),
    });
    let n = presence_ids.len();
    let event = MeshEvent::Deliver {
        presence_ids: presence_ids.into(),
        priority: None,
        frame,
        trace: None,
    };
    ctx.publish(&p.mesh.id, event)
        .await
        .map_err(|e| refused(ctx, unavailable(e)))?;
    Ok(n)
}

/// `list_streams`: the mesh's streams, oldest first, each with its cluster-wide count of
/// subscribed presences.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<(Stream, usize)>, StreamError> {
    let streams = ctx
        .store()
        .list_streams(&p.mesh.id)
        .await
        .map_err(|e| refused(ctx, unavailable(e)))?;
    let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    let counts = live_subscribers(ctx, &p.mesh.id, &names)
        .await
        .map_err(|e| refused(ctx, e))?;
    Ok(streams
        .into_iter()
        .zip(counts.iter().map(Vec::len).chain(std::iter::repeat(0)))
        .collect())
}

/// A presence ended for good (grace expired, kick, ban, replacement, reaped): its
/// subscriptions end with it. A failure leaves entries behind that the next publish to
/// those streams prunes.
pub async fn presence_ended(subscriptions: &Arc<dyn StreamSubscriptions>, record: &PresenceRecord) {
    if let Err(e) = subscriptions
        .remove_presence(&record.mesh_id, &record.presence_id)
        .await
    {
        warn!(error = %e, "stream subscriptions of an ended presence not dropped");
    }
}
