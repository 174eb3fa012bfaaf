//! The watcher: checks due URL watches (extensions §17). Every replica runs one; they
//! split the due watches through the store's leases (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), so each check is made by one replica, and a watch whose checker died is
//! due again for the others once its lease (`WATCH_LEASE_MS`) runs out (see
//! [`crate::service::watches`]). The checks of one claim run concurrently, each bounded by
//! `WATCH_FETCH_TIMEOUT_MS`; a claim is at most [`watches::CLAIM_BATCH`] watches.

use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::warn;

use super::WorkerResult;
use crate::node::Node;
use crate::service::{ServiceCtx, watches};

pub async fn run(node: Arc<Node>) -> WorkerResult {
    let ctx = ServiceCtx::new(&node);
    // The lease owner: this process (a restarted replica holds no lease of its past life).
    let owner = node.config.instance_id.clone();
    let mut tick = tokio::time::interval(node.config.watch_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            _ = tick.tick() => {
                loop {
                    let claimed = match watches::claim_due(&ctx, &owner).await {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "due watches not claimed");
                            break;
                        }
                    };
                    let full = claimed.len() == watches::CLAIM_BATCH;
                    let mut checks = JoinSet::new();
                    for w in claimed {
                        let (ctx, owner) = (ctx.clone(), owner.clone());
                        checks.spawn(async move { watches::check(&ctx, &owner, w).await });
                    }
                    tokio::select! {
                        // Shutdown drops the set, which aborts checks in flight: their leases
                        // run out and another replica checks them.
                        _ = node.stopping.cancelled() => return Ok(()),
                        _ = async { while checks.join_next().await.is_some() {} } => {}
                    }
                    if !full {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}
