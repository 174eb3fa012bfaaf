//! A stateless broker for the claudemesh peer-mesh protocol.
//!
//! The binary is thin: it reads [`config::Config`], starts logging, binds, and calls
//! [`run`], which is also what the tests call. See `ARCHITECTURE.md` for the map.

pub mod accounts;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod ids;
pub mod lifecycle;
pub mod metrics;
pub mod node;
pub mod objects;
pub mod outbound;
pub mod protocol;
pub mod rest;
pub mod routing;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod workers;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use crate::cluster::bus::{Bus, BusSink, MemoryBus};
use crate::cluster::presence::{MemoryPresence, Presence};
use crate::cluster::redis_bus::RedisBus;
use crate::cluster::redis_presence::RedisPresence;
use crate::config::Config;
use crate::hub::Control;
use crate::lifecycle::AfterClose;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::memory::MemoryStore;
use crate::store::postgres::{PgStore, SCHEMA_VERSION, StoreMetrics};
use crate::store::{Store, StoreBackend};
use crate::workers::{Restart, Workers};
use tokio_util::sync::CancellationToken;

/// Why the broker could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration asks for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// PostgreSQL is unreachable or its schema is not the one this broker needs.
    #[error("{0}")]
    Database(String),
}

/// Opens the configured store; with PostgreSQL, waits for it and checks the schema.
async fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, RunError> {
    let Some(url) = &config.database_url else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let pg = PgStore::new(url, config.database_pool_size)
        .map_err(|e| RunError::Unsupported(e.to_string()))?
        .with_metrics(StoreMetrics {
            batch_rows: metrics.store_batch_rows.clone(),
            pool_wait_seconds: metrics.store_pool_wait_seconds.clone(),
        });
    let deadline = tokio::time::Instant::now() + config.database_connect_timeout;
    loop {
        match pg.schema_version().await {
            Ok(Some(v)) if v >= SCHEMA_VERSION => return Ok(Arc::new(pg)),
            Ok(v) => {
                return Err(RunError::Database(format!(
                    "the database schema is at migration {} but this broker needs {SCHEMA_VERSION}: \
                     run the migrator (`migrator run` with the same DATABASE_URL) before starting the broker",
                    v.unwrap_or(0)
                )));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(RunError::Database(format!(
                    "PostgreSQL is unreachable: {e}"
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for PostgreSQL");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then shuts down in phases: readiness 503,
/// listener closed, sockets closed `going_away` spread over `SHUTDOWN_DRAIN_MS`, in-flight work
/// awaited, and everything dropped at `SHUTDOWN_DEADLINE_MS` at the latest.
///
/// `listeners` is the public listener alone (a `tokio::net::TcpListener`), or with the
/// internal one (`BROKER_INTERNAL_PORT`) as a [`server::Listeners`].
pub async fn run(
    config: Config,
    listeners: impl Into<server::Listeners>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let listeners = listeners.into();
    config.accounts.log_startup(config.redis_url.is_some());
    let metrics = Metrics::new();
    let store = open_store(&config, &metrics).await?;
    let (sink, events) = mpsc::unbounded_channel();
    // Stops the Redis loops when this replica is done.
    let cluster_stop = CancellationToken::new();
    let _stop_guard = cluster_stop.clone().drop_guard();
    let (presence, bus) = open_cluster(&config, &metrics, sink, cluster_stop).await?;
    let clustered = config.redis_url.is_some();
    let stream_subscriptions = open_stream_subscriptions(&config).await?;
    let mcp_registry = open_mcp_registry(&config).await?;
    let node = Arc::new(
        Node::new(config, store, presence, bus, metrics)
            .with_stream_subscriptions(stream_subscriptions)
            .with_mcp_registry(mcp_registry),
    );
    let workers = Workers::new(node.tracker.clone(), &node.metrics);

    // Bus events reach local sockets through one dispatcher, which keeps publish order.
    // It runs until the node is killed, so the drain does not wait for it.
    let events: workers::dispatcher::Events = Arc::new(tokio::sync::Mutex::new(events));
    {
        let node = node.clone();
        workers.spawn_untracked("dispatcher", Restart::OnFailure, move || {
            workers::dispatcher::run(node.clone(), events.clone())
        });
    }
    {
        let node = node.clone();
        workers.spawn("sweep", Restart::OnFailure, move || {
            workers::sweep::run(node.clone())
        });
    }
    {
        let node = node.clone();
        workers.spawn("health", Restart::OnFailure, move || {
            workers::health::run(node.clone())
        });
    }
    // Scheduled messages (extensions §5) and simulation clocks (§6): every replica polls;
    // the store's claims and leases make each fire and each tick happen once.
    {
        let node = node.clone();
        workers.spawn("scheduler", Restart::OnFailure, move || {
            workers::scheduler::run(node.clone())
        });
    }
    {
        let node = node.clone();
        workers.spawn("clock_authority", Restart::OnFailure, move || {
            workers::clock_authority::run(node.clone())
        });
    }
    // URL watches (extensions §17): every replica polls; the store's leases make each check
    // happen on one replica at a time.
    {
        let node = node.clone();
        workers.spawn("watcher", Restart::OnFailure, move || {
            workers::watcher::run(node.clone())
        });
    }
    // Orphaned file objects (extensions §19.1), with an object store only.
    if node.config.files_s3.is_some() {
        let node = node.clone();
        workers.spawn("file_objects", Restart::OnFailure, move || {
            objects::run_sweep(node.clone())
        });
    }
    if clustered {
        let n = node.clone();
        workers.spawn("housekeeping", Restart::OnFailure, move || {
            workers::housekeeping::run(n.clone())
        });
        let n = node.clone();
        workers.spawn("resync", Restart::OnFailure, move || {
            workers::resync::run(n.clone())
        });
    }
    listeners.spawn(&node);

    shutdown.await;
    drain(&node).await;
    if clustered && let Err(e) = node.presence.leave(&node.config.instance_id).await {
        tracing::warn!(error = %e, "could not remove this replica's heartbeat");
    }
    // Everything watches `kill`, cancelled by the drain: what is left is stopped at once.
    workers.stop(WORKER_STOP_DEADLINE).await;
    Ok(())
}

/// How long the workers get, after the drain, to notice the node was killed.
const WORKER_STOP_DEADLINE: Duration = Duration::from_secs(1);

type ClusterBackends = (Arc<dyn Presence>, Arc<dyn Bus>);

/// Memory presence and bus in dev mode and with PostgreSQL alone; Redis with `REDIS_URL`.
async fn open_cluster(
    config: &Config,
    metrics: &Metrics,
    sink: BusSink,
    stop: CancellationToken,
) -> Result<ClusterBackends, RunError> {
    let Some(url) = &config.redis_url else {
        return Ok((
            Arc::new(MemoryPresence::new()),
            Arc::new(MemoryBus::new(sink)),
        ));
    };
    if config.redis_cluster {
        return open_redis_cluster(config, metrics, sink, stop).await;
    }
    // Pub/sub needs RESP3 pushes for automatic resubscription after a reconnect.
    let url = if url.contains("protocol=") {
        url.clone()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    };
    let client = redis_client(&url)?;
    let manager_config = redis_manager_config();
    let deadline = tokio::time::Instant::now() + config.database_connect_timeout;
    let conn = loop {
        match redis::aio::ConnectionManager::new_with_config(client.clone(), manager_config.clone())
            .await
        {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(RunError::Database(format!("Redis is unreachable: {e}")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for Redis");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let prefix = &config.redis_prefix;
    // Publishes (and the probe) get a connection of their own: on the presence connection
    // they would queue behind large presence replies, and a slow probe would look like an
    // outage.
    let publisher = redis_connection(&client).await?;
    let bus = RedisBus::connect(client, publisher, prefix, &config.instance_id, sink, stop)
        .await
        .map_err(|e| RunError::Database(format!("Redis pub/sub: {e}")))?;
    let presence = RedisPresence::new(conn, prefix)
        .with_replay_cache(
            config.replay_cache_max,
            metrics.replay_cache_evictions.clone(),
        )
        // Every ping tick updates a live record, which refreshes its hook index entry.
        .with_process_ttl(config.ping_interval * 4);
    Ok((Arc::new(presence), Arc::new(bus)))
}

/// [`open_cluster`] on Redis Cluster (`REDIS_MODE=cluster`): the same backends on
/// cluster connections (routed by slot), sharded pub/sub, hash-tagged keys.
async fn open_redis_cluster(
    config: &Config,
    metrics: &Metrics,
    sink: BusSink,
    stop: CancellationToken,
) -> Result<ClusterBackends, RunError> {
    let nodes = redis_cluster_nodes(config)?;
    let deadline = tokio::time::Instant::now() + config.database_connect_timeout;
    let conn = loop {
        match redis_cluster_connection(&nodes).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "waiting for Redis Cluster");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let prefix = &config.redis_prefix;
    let publisher = redis_cluster_connection(&nodes).await?;
    let bus = RedisBus::connect_cluster(&nodes, publisher, prefix, &config.instance_id, sink, stop)
        .await
        .map_err(|e| RunError::Database(format!("Redis Cluster pub/sub: {e}")))?;
    let presence = RedisPresence::new(conn, prefix)
        .with_replay_cache(
            config.replay_cache_max,
            metrics.replay_cache_evictions.clone(),
        )
        .with_process_ttl(config.ping_interval * 4);
    Ok((Arc::new(presence), Arc::new(bus)))
}

/// The seed nodes of `REDIS_URL` with `REDIS_MODE=cluster` (comma-separated URLs).
fn redis_cluster_nodes(config: &Config) -> Result<Vec<String>, RunError> {
    let nodes: Vec<String> = config
        .redis_url
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if nodes.is_empty() {
        return Err(RunError::Unsupported(
            "REDIS_URL: no Redis Cluster seed node".into(),
        ));
    }
    Ok(nodes)
}

/// One connection to a Redis Cluster (one multiplexed connection per shard, routed by
/// slot), with the timeouts of [`redis_manager_config`].
async fn redis_cluster_connection(
    nodes: &[String],
) -> Result<redis::cluster_async::ClusterConnection, RunError> {
    redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        // A MOVED or ASK redirect (a shard restarted, slots moved) takes a retry.
        .retries(3)
        .build()
        .map_err(|e| RunError::Unsupported(format!("REDIS_URL: {e}")))?
        .get_async_connection()
        .await
        .map_err(|e| RunError::Database(format!("Redis Cluster is unreachable: {e}")))
}

/// A connection of this replica's own to `REDIS_URL`, one Redis or Redis Cluster.
async fn redis_any_connection(
    config: &Config,
    url: &str,
) -> Result<cluster::redis_conn::RedisConn, RunError> {
    if config.redis_cluster {
        Ok(redis_cluster_connection(&redis_cluster_nodes(config)?)
            .await?
            .into())
    } else {
        Ok(redis_connection(&redis_client(url)?).await?.into())
    }
}

/// How every Redis connection of a replica behaves: fail fast while Redis is down (callers
/// degrade, see docs/statelessness.md) and reconnect on the next command.
fn redis_manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(1)
}

fn redis_client(url: &str) -> Result<redis::Client, RunError> {
    redis::Client::open(url).map_err(|e| RunError::Unsupported(format!("REDIS_URL: {e}")))
}

/// One more connection of this replica's own (see [`redis_manager_config`]).
async fn redis_connection(
    client: &redis::Client,
) -> Result<redis::aio::ConnectionManager, RunError> {
    redis::aio::ConnectionManager::new_with_config(client.clone(), redis_manager_config())
        .await
        .map_err(|e| RunError::Database(format!("Redis is unreachable: {e}")))
}

/// Stream subscriptions (extensions §4): in this process's memory, or with `REDIS_URL` in
/// Redis on a connection of their own, so that every replica sees them.
async fn open_stream_subscriptions(
    config: &Config,
) -> Result<Arc<dyn cluster::subscriptions::StreamSubscriptions>, RunError> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(
            cluster::subscriptions::MemoryStreamSubscriptions::new(),
        ));
    };
    let conn = redis_any_connection(config, url).await?;
    Ok(Arc::new(
        cluster::subscriptions::RedisStreamSubscriptions::new(conn, &config.redis_prefix),
    ))
}

/// The peer MCP registry and pending peer requests (extensions §13, §14): in this
/// process's memory, or with `REDIS_URL` in Redis on a connection of their own, so that
/// every replica sees them.
async fn open_mcp_registry(
    config: &Config,
) -> Result<Arc<dyn cluster::mcp_registry::McpRegistry>, RunError> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(cluster::mcp_registry::MemoryMcpRegistry::new()));
    };
    let conn = redis_any_connection(config, url).await?;
    Ok(Arc::new(cluster::mcp_registry::RedisMcpRegistry::new(
        conn,
        &config.redis_prefix,
    )))
}

async fn drain(node: &Arc<Node>) {
    let start = tokio::time::Instant::now();
    let deadline = start + node.config.shutdown_deadline;
    node.accepting.store(false, Ordering::Relaxed);
    node.stopping.cancel();
    let handles = node.hub.all();
    info!(sockets = handles.len(), "shutting down: closing sockets");
    let window = node
        .config
        .shutdown_drain
        .min(node.config.shutdown_deadline);
    let n = handles.len().max(1) as u32;
    let spread = async {
        for (i, h) in handles.iter().enumerate() {
            tokio::time::sleep_until(start + window * i as u32 / n).await;
            let _ = h.control.send(Control::Close {
                code: protocol::codes::GOING_AWAY.code,
                reason: protocol::codes::GOING_AWAY.reason.into(),
                after: AfterClose::Grace,
            });
        }
    };
    node.tracker.close();
    let all_done = async {
        spread.await;
        node.tracker.wait().await;
        // The sessions are done: write out the audit events they left in the buffer.
        node.auditor.flush().await;
    };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        info!("shutdown deadline reached: dropping what is left");
    }
    node.kill.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        node.tracker.wait().await;
        node.auditor.flush().await;
    })
    .await;
}
