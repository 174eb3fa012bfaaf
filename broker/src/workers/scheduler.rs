//! The scheduler: fires due scheduled messages (extensions §5). Every replica runs one;
//! they split the due rows through the store's claims (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), so each fire happens on one replica, and an entry claimed by a replica that
//! dies is due again for the others with the same fire number (see
//! [`crate::service::schedule`]).

use std::sync::Arc;

use tracing::warn;

use super::WorkerResult;
use crate::node::Node;
use crate::service::{ServiceCtx, schedule};

/// Most entries one claim takes; a full batch is followed by another claim at once.
pub const CLAIM_BATCH: usize = 32;

pub async fn run(node: Arc<Node>) -> WorkerResult {
    let ctx = ServiceCtx::new(&node);
    let mut tick = tokio::time::interval(node.config.schedule_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            _ = tick.tick() => {
                loop {
                    match schedule::run_due(&ctx, CLAIM_BATCH).await {
                        Ok(n) if n == CLAIM_BATCH && !node.stopping.is_cancelled() => continue,
                        Ok(_) => break,
                        Err(e) => {
                            warn!(error = %e, "scheduled messages not claimed");
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
