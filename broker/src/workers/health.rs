//! Keeps `broker_db_healthy`, `broker_schema_version` and `broker_pubsub_healthy` current
//! for alerting, whether or not anyone calls the health routes.

use std::sync::Arc;
use std::time::Duration;

use super::WorkerResult;
use crate::node::Node;

/// How often the backend health gauges are refreshed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(node: Arc<Node>) -> WorkerResult {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            _ = tick.tick() => {}
        }
        node.metrics
            .db_healthy
            .set(i64::from(node.store.healthy().await));
        if let Ok(v) = node.store.schema_version().await {
            node.metrics.schema_version.set(v.unwrap_or(0));
        }
        let pubsub = node.bus.healthy().await && node.presence.healthy().await;
        node.metrics.pubsub_healthy.set(i64::from(pubsub));
    }
    Ok(())
}
