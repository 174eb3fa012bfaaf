//! The clock authority: runs the timers of the simulation clocks (extensions §6) whose
//! lease this replica holds. One lease per clock, in the clock's row (see
//! [`crate::store::clocks`]): this worker renews its leases and takes free or lapsed ones
//! (at most `CLOCK_MAX_PER_REPLICA`) at every look, at least every
//! [`clocks::AUTHORITY_POLL`], and emits each clock's due tick ([`clocks::tick`]). On
//! shutdown it gives its leases up so another replica takes over at once; when it dies,
//! they lapse after `CLOCK_LEASE_MS` and a survivor continues from the stored tick.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::WorkerResult;
use crate::ids;
use crate::node::Node;
use crate::service::{ServiceCtx, clocks};

pub async fn run(node: Arc<Node>) -> WorkerResult {
    let ctx = ServiceCtx::new(&node);
    let holder = node.config.instance_id.clone();
    let lease_ms = node.config.clock_lease.as_millis() as i64;
    let max = node.config.clock_max_per_replica;
    let poll = clocks::AUTHORITY_POLL.as_millis() as i64;
    let mut held_ids: Vec<String> = Vec::new();
    loop {
        let now = ids::now_ms();
        let mut wake = now + poll;
        match node.store.lease_clocks(&holder, now, lease_ms, max).await {
            Ok(held) => {
                node.metrics.clocks_held.set(held.len() as i64);
                held_ids = held.iter().map(|c| c.mesh_id.clone()).collect();
                for clock in &held {
                    let due = clock.next_tick_at();
                    if due <= now {
                        clocks::tick(&ctx, &holder, clock, now).await;
                        let mut after = clock.clone();
                        after.last_tick_at = now;
                        wake = wake.min(after.next_tick_at());
                    } else {
                        wake = wake.min(due);
                    }
                }
            }
            Err(e) => warn!(error = %e, "clock leases not renewed"),
        }
        let sleep = Duration::from_millis((wake - ids::now_ms()).clamp(5, poll) as u64);
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    for mesh_id in held_ids {
        if let Err(e) = node.store.release_clock(&mesh_id, &holder).await {
            warn!(error = %e, "clock lease not released; it lapses");
        }
    }
    node.metrics.clocks_held.set(0);
    Ok(())
}
