//! Load generator for the claudemesh broker.
//!
//! It plays real clients: ed25519 member keys enrolled through the operator API, signed
//! `hello`s built with the broker crate's own [`broker::protocol::signing`], direct
//! messages sealed with `crypto_box` to the recipient's key, a `client_ack` for every
//! push, and reconnects with jittered exponential backoff. Bookkeeping lives in the pure
//! [`ledger`]; results in [`report`].

pub mod cli;
pub mod client;
pub mod ledger;
pub mod operator;
pub mod peer;
pub mod proc_stats;
pub mod report;
pub mod scenario;
pub mod seal;

use cli::{Cli, Scenario};
use report::{Report, Thresholds};

/// Runs the scenario `cli` names and applies the threshold flags.
pub async fn run(cli: &Cli) -> anyhow::Result<Report> {
    let c = &cli.common;
    let mut report = match &cli.scenario {
        Scenario::Dm(a) => scenario::dm::run(c, a).await?,
        Scenario::Broadcast(a) => scenario::broadcast::run(c, a).await?,
        Scenario::Idle(a) => scenario::idle::run(c, a).await?,
        Scenario::Failover(a) => scenario::failover::run(c, a).await?,
        Scenario::Churn(a) => scenario::churn::run(c, a).await?,
    };
    Thresholds {
        min_delivered: c.min_delivered,
        max_p99_ms: c.max_p99_ms,
    }
    .apply(&mut report);
    Ok(report)
}
