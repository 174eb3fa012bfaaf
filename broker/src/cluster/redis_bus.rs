//! [`Bus`] on Redis pub/sub (RESP3 push, automatic resubscription).
//!
//! A publish is handed to this replica's hub at once and published on the mesh channel
//! for the others; a replica ignores its own echoes. Each replica also listens on its node
//! channel, where a probe loop proves pub/sub end to end (readiness) and notices
//! reconnects, after which [`Bus::reconnects`] ticks and the replica re-syncs: it
//! resubscribes, re-registers its presences and re-drains every session from the store.
//!
//! Wire format of a message: [`wire`] (one JSON header line, `\n`, then the raw frame bytes).
//!
//! With Redis Cluster ([`RedisBus::connect_cluster`]) the channels are sharded channels
//! (`SPUBLISH`/`SSUBSCRIBE`): a mesh's channel `{P:m:{mesh}}:mesh` hashes to the slot of the
//! mesh's keys, so each mesh's fan-out runs on one shard and the shards share the load. The
//! cluster client resubscribes a shard's channels when it reconnects to it (a restart, a
//! failover), and its disconnection ticks [`Bus::reconnects`] as with one Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::PushKind;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::bus::{Bus, BusError, BusSink, MeshEvent, wire};
use super::redis_conn::RedisConn;

/// The connection holding the subscriptions: classic pub/sub on one Redis, sharded pub/sub
/// on Redis Cluster.
enum Subscriber {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Subscriber {
    async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(c) => c.subscribe(channel).await,
            Subscriber::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(c) => c.unsubscribe(channel).await,
            Subscriber::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// Makes the connection notice a drop (it reconnects when used).
    async fn ping(&mut self) {
        let ping = redis::cmd("PING");
        let _ = match self {
            Subscriber::Single(c) => ping.query_async::<redis::Value>(c).await,
            Subscriber::Cluster(c) => ping.query_async::<redis::Value>(c).await,
        };
    }
}

/// The channel names of one mode.
#[derive(Clone)]
struct Channels {
    prefix: String,
    cluster: bool,
}

impl Channels {
    fn mesh(&self, mesh_id: &str) -> String {
        if self.cluster {
            format!("{{{}:m:{mesh_id}}}:mesh", self.prefix)
        } else {
            format!("{}:mesh:{mesh_id}", self.prefix)
        }
    }

    /// The mesh of a mesh channel.
    fn mesh_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        if self.cluster {
            channel
                .strip_prefix('{')?
                .strip_prefix(self.prefix.as_str())?
                .strip_prefix(":m:")?
                .strip_suffix("}:mesh")
        } else {
            channel
                .strip_prefix(self.prefix.as_str())?
                .strip_prefix(":mesh:")
        }
    }

    fn node(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.prefix)
    }

    fn publish(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
    }
}

/// How often the probe checks pub/sub end to end.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a probe may take before pub/sub counts as broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Slow probes in a row before pub/sub counts as broken (a busy replica is not a broken one).
const SLOW_PROBES_TOLERATED: u32 = 3;

pub struct RedisBus {
    node_id: String,
    channels: Channels,
    publisher: RedisConn,
    /// The connection holding the subscriptions (RESP3 pushes arrive through it).
    subscriber: Arc<Mutex<Subscriber>>,
    sink: BusSink,
    healthy: Arc<AtomicBool>,
    reconnects: watch::Receiver<u64>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects, subscribes the node channel and starts the receive and probe loops,
    /// which run until `stop` is cancelled.
    pub async fn connect(
        client: redis::Client,
        publisher: ConnectionManager,
        prefix: &str,
        node_id: &str,
        sink: BusSink,
        stop: CancellationToken,
    ) -> Result<RedisBus, BusError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(1))
            // Fail fast while Redis is down: callers degrade (see docs/statelessness.md) and
            // the next command reconnects.
            .set_number_of_retries(1);
        let subscriber = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| BusError(e.to_string()))?;
        let channels = Channels {
            prefix: prefix.to_string(),
            cluster: false,
        };
        Self::start(
            channels,
            Subscriber::Single(subscriber),
            publisher.into(),
            push_rx,
            node_id,
            sink,
            stop,
        )
        .await
    }

    /// [`RedisBus::connect`] on Redis Cluster: `nodes` are the seed URLs; sharded
    /// channels, and the cluster client's own resubscription after a shard reconnects.
    pub async fn connect_cluster(
        nodes: &[String],
        publisher: ClusterConnection,
        prefix: &str,
        node_id: &str,
        sink: BusSink,
        stop: CancellationToken,
    ) -> Result<RedisBus, BusError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .retries(3)
            .build()
            .map_err(|e| BusError(e.to_string()))?;
        let subscriber = client
            .get_async_connection()
            .await
            .map_err(|e| BusError(e.to_string()))?;
        let channels = Channels {
            prefix: prefix.to_string(),
            cluster: true,
        };
        Self::start(
            channels,
            Subscriber::Cluster(subscriber),
            publisher.into(),
            push_rx,
            node_id,
            sink,
            stop,
        )
        .await
    }

    async fn start(
        channels: Channels,
        mut subscriber: Subscriber,
        publisher: RedisConn,
        push_rx: mpsc::UnboundedReceiver<redis::PushInfo>,
        node_id: &str,
        sink: BusSink,
        stop: CancellationToken,
    ) -> Result<RedisBus, BusError> {
        let node_channel = channels.node(node_id);
        subscriber
            .subscribe(&node_channel)
            .await
            .map_err(|e| BusError(e.to_string()))?;
        let subscriber = Arc::new(Mutex::new(subscriber));

        let healthy = Arc::new(AtomicBool::new(true));
        let (reconnect_tx, reconnects) = watch::channel(0u64);

        let state = LoopState {
            node_channel,
            probes_seen: Arc::new(AtomicU64::new(0)),
            disconnected: Arc::new(AtomicBool::new(false)),
            stop,
        };
        tokio::spawn(receive_loop(
            state.clone(),
            push_rx,
            sink.clone(),
            node_id.to_string(),
            channels.clone(),
        ));
        tokio::spawn(probe_loop(
            state,
            channels.publish(),
            publisher.clone(),
            subscriber.clone(),
            healthy.clone(),
            reconnect_tx,
        ));

        Ok(RedisBus {
            node_id: node_id.to_string(),
            channels,
            publisher,
            subscriber,
            sink,
            healthy,
            reconnects,
        })
    }

    fn channel(&self, mesh_id: &str) -> String {
        self.channels.mesh(mesh_id)
    }
}

/// What the receive and probe loops of one [`RedisBus`] share.
#[derive(Clone)]
struct LoopState {
    /// This replica's own channel, where its probes travel.
    node_channel: String,
    /// The highest probe number the receive loop has seen.
    probes_seen: Arc<AtomicU64>,
    /// Set by the receive loop when the subscriber connection dropped.
    disconnected: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// Receive loop: pushes from Redis to the hub (and probes to the probe loop).
async fn receive_loop(
    state: LoopState,
    mut push_rx: mpsc::UnboundedReceiver<redis::PushInfo>,
    sink: BusSink,
    node_id: String,
    channels: Channels,
) {
    loop {
        let push = tokio::select! {
            _ = state.stop.cancelled() => break,
            push = push_rx.recv() => match push { Some(p) => p, None => break },
        };
        match push.kind {
            PushKind::Disconnection => {
                debug!("redis pub/sub connection lost");
                state.disconnected.store(true, Ordering::Relaxed);
            }
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                    continue;
                };
                let (Ok(channel), Ok(payload)) = (
                    redis::from_redis_value::<String>(channel),
                    redis::from_redis_value::<Vec<u8>>(payload),
                ) else {
                    continue;
                };
                if channel == state.node_channel {
                    if let Ok(n) = std::str::from_utf8(&payload).unwrap_or("").parse::<u64>() {
                        state.probes_seen.fetch_max(n, Ordering::Relaxed);
                    }
                    continue;
                }
                let Some(mesh_id) = channels.mesh_of(&channel) else {
                    continue;
                };
                let payload_len = payload.len();
                match wire::decode(Bytes::from(payload)) {
                    Some(env) if env.origin == node_id => {}
                    Some(wire::Envelope {
                        trace, mut event, ..
                    }) => {
                        // Continues the publisher's trace on this replica.
                        let span = if crate::telemetry::on() {
                            tracing::info_span!(
                                "bus.receive",
                                otel.kind = "consumer",
                                mesh_id,
                                mesh.id = mesh_id,
                                kind = event.kind(),
                                messaging.system = "redis",
                                messaging.operation.type = "receive",
                                messaging.operation.name = "message",
                                messaging.destination.name = channel.as_str(),
                                messaging.message.body.size = payload_len,
                            )
                        } else {
                            tracing::info_span!("bus.receive", mesh_id, kind = event.kind())
                        };
                        crate::telemetry::follow(&span, trace.as_deref());
                        if trace.is_some() {
                            // The receivers' push spans continue from this one.
                            event.set_trace(crate::telemetry::traceparent(&span));
                        }
                        span.in_scope(|| {
                            let _ = sink.send((mesh_id.to_string(), event));
                        });
                    }
                    None => warn!(channel, "undecodable bus message"),
                }
            }
            _ => {}
        }
    }
}

/// Probe loop: proves pub/sub end to end and notices recoveries.
async fn probe_loop(
    state: LoopState,
    publish: &'static str,
    mut publisher: RedisConn,
    subscriber: Arc<Mutex<Subscriber>>,
    healthy: Arc<AtomicBool>,
    reconnect_tx: watch::Sender<u64>,
) {
    let mut n: u64 = 0;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    // Consecutive probes that were published but did not come back in time.
    let mut slow = 0u32;
    // Set when events may have been lost (a dropped connection, a failed
    // publish); cleared by the re-sync once pub/sub works again. A probe that is
    // merely slow under load loses nothing and re-syncs nothing.
    let mut needs_resync = false;
    loop {
        tokio::select! {
            _ = state.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let sent = redis::cmd(publish)
            .arg(&state.node_channel)
            .arg(n.to_string())
            .query_async::<i64>(&mut publisher)
            .await
            .is_ok();
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        let mut ok = false;
        while sent && tokio::time::Instant::now() < deadline {
            if state.probes_seen.load(Ordering::Relaxed) >= n {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !ok {
            // The subscriber connection reconnects (and resubscribes) only when
            // it is used: nudge it.
            subscriber.lock().await.ping().await;
        }
        if !sent || state.disconnected.swap(false, Ordering::Relaxed) {
            needs_resync = true;
        }
        slow = if ok { 0 } else { slow + 1 };
        let healthy_now = ok || (sent && slow < SLOW_PROBES_TOLERATED);
        let was = healthy.swap(healthy_now, Ordering::Relaxed);
        if ok && needs_resync {
            needs_resync = false;
            info!("redis pub/sub is back: re-syncing this replica");
            reconnect_tx.send_modify(|v| *v += 1);
        } else if !healthy_now && was {
            warn!("redis pub/sub probe failed");
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, mesh_id: &str, mut event: MeshEvent) -> Result<(), BusError> {
        // A PRODUCER span inside an operation's trace (a send, a moderation verb); its
        // context travels in the envelope, so the receivers' spans are its children.
        let channel = self.channel(mesh_id);
        let span = if crate::telemetry::in_operation() {
            tracing::info_span!(
                "bus.publish",
                otel.kind = "producer",
                mesh.id = mesh_id,
                kind = event.kind(),
                messaging.system = "redis",
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.destination.name = channel.as_str(),
                messaging.message.body.size = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        // Outside an operation (directly under a connection span) nothing is propagated,
        // so a connection's trace does not grow with every event it publishes.
        let trace = crate::telemetry::traceparent(&span);
        let payload = wire::encode(&self.node_id, &event, trace.as_deref());
        span.record("messaging.message.body.size", payload.len());
        event.set_trace(trace);
        // Local sockets get it now, whatever happens to Redis.
        let _ = self.sink.send((mesh_id.to_string(), event));
        let mut c = self.publisher.clone();
        let mut cmd = redis::cmd(self.channels.publish());
        cmd.arg(channel).arg(payload);
        tracing::Instrument::instrument(cmd.query_async::<i64>(&mut c), span)
            .await
            .map(|_| ())
            .map_err(|e| BusError(format!("{e} (delivered on this replica only)")))
    }

    async fn subscribe(&self, mesh_id: &str) -> Result<(), BusError> {
        let mut c = self.subscriber.lock().await;
        c.subscribe(&self.channel(mesh_id))
            .await
            .map_err(|e| BusError(e.to_string()))
    }

    async fn unsubscribe(&self, mesh_id: &str) -> Result<(), BusError> {
        let mut c = self.subscriber.lock().await;
        c.unsubscribe(&self.channel(mesh_id))
            .await
            .map_err(|e| BusError(e.to_string()))
    }

    async fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::bus::AfterClose;
    use crate::protocol::Priority;

    fn decode(payload: Vec<u8>) -> Option<(String, Option<String>, MeshEvent)> {
        wire::decode(Bytes::from(payload)).map(|e| (e.origin, e.trace, e.event))
    }

    fn encode(origin: &str, event: &MeshEvent, trace: Option<&str>) -> Vec<u8> {
        wire::encode(origin, event, trace)
    }

    #[test]
    fn events_survive_the_wire_format() {
        let frame = Bytes::from_static(br#"{"type":"push","ciphertext":"a\nb"}"#);
        let e = MeshEvent::Deliver {
            presence_ids: vec!["p1".to_string(), "p2".to_string()].into(),
            priority: Some(Priority::Low),
            frame: frame.clone(),
            trace: None,
        };
        let (origin, _, back) = decode(encode("n1", &e, None)).expect("decodes");
        assert_eq!(origin, "n1");
        match back {
            MeshEvent::Deliver {
                presence_ids,
                priority,
                frame: f,
                ..
            } => {
                assert_eq!(&presence_ids[..], ["p1", "p2"]);
                assert_eq!(priority, Some(Priority::Low));
                assert_eq!(f, frame);
            }
            other => panic!("{other:?}"),
        }
        let e = MeshEvent::Close {
            conn_ids: vec!["n/1".into()],
            code: crate::protocol::codes::KICKED.code,
            reason: crate::protocol::codes::KICKED.reason.into(),
            after: AfterClose::End,
        };
        assert!(matches!(
            decode(encode("n1", &e, None)),
            Some((
                _,
                _,
                MeshEvent::Close {
                    code,
                    after: AfterClose::End,
                    ..
                }
            )) if code == crate::protocol::codes::KICKED.code
        ));
        let e = MeshEvent::Doorbell {
            member_id: "m".into(),
        };
        assert!(
            matches!(decode(encode("n1", &e, None)), Some((_, _, MeshEvent::Doorbell { member_id })) if member_id == "m")
        );
        assert!(decode(b"garbage".to_vec()).is_none());
    }
}
