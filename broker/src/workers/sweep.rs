//! The queue sweep: deletes undelivered direct messages (and delivery status records)
//! older than `QUEUE_TTL_MS` and refreshes `broker_queue_depth`.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::WorkerResult;
use crate::ids;
use crate::node::Node;

/// How often undelivered messages past the queue TTL are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

pub async fn run(node: Arc<Node>) -> WorkerResult {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            _ = tick.tick() => {
                let before = ids::now_ms() - node.config.queue_ttl.as_millis() as i64;
                match node.store.sweep_expired(before).await {
                    Ok(0) => {}
                    Ok(n) => info!(swept = n, "expired queued messages removed"),
                    Err(e) => tracing::warn!(error = %e, "queue sweep failed"),
                }
                // Delivery status records (extensions §7) live as long as a queued message.
                match node.store.sweep_message_status(before).await {
                    Ok(0) => {}
                    Ok(n) => info!(swept = n, "expired delivery status records removed"),
                    Err(e) => tracing::warn!(error = %e, "delivery status sweep failed"),
                }
                if let Ok(depth) = node.store.queue_depth().await {
                    node.metrics.queue_depth.set(depth as i64);
                }
            }
        }
    }
    Ok(())
}
