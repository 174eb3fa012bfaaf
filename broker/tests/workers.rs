//! Background work runs in supervised workers (`broker/src/workers/`): each one started by
//! `run`, visible in the metrics while it runs, and stopped with the replica.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::pg;
use common::redis::RedisServer;
use common::*;

/// `broker_workers_running{worker="<name>"}` as exported, if it is.
fn running(metrics: &str, worker: &str) -> Option<i64> {
    let prefix = format!("broker_workers_running{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

fn restarts(metrics: &str, worker: &str) -> Option<i64> {
    let prefix = format!("broker_worker_restarts_total{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

async fn all_running(b: &Broker, workers: &[&str]) {
    eventually("every worker to report running", async || {
        let m = b.metrics();
        workers
            .iter()
            .all(|w| running(&m, w) == Some(1))
            .then_some(())
    })
    .await;
    let m = b.metrics();
    for w in workers {
        assert_eq!(restarts(&m, w), Some(0), "{w} was restarted:\n{m}");
    }
}

#[tokio::test]
async fn a_single_node_runs_its_workers_under_supervision() {
    let b = Broker::start(&[]);
    all_running(&b, &["dispatcher", "sweep", "health"]).await;
    let m = b.metrics();
    assert_eq!(
        running(&m, "housekeeping"),
        None,
        "no housekeeping without Redis"
    );
    assert_eq!(running(&m, "resync"), None);
}

#[tokio::test]
async fn a_replica_runs_housekeeping_and_resync_under_supervision() {
    let db = pg::fresh_db().await;
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let b = Broker::start(&[
        ("DATABASE_URL", &db),
        ("REDIS_URL", &url),
        ("BROKER_NODE_ID", "w1"),
        ("HEARTBEAT_INTERVAL_MS", "250"),
        ("NODE_DEAD_AFTER_MS", "2000"),
    ]);
    all_running(
        &b,
        &["dispatcher", "sweep", "health", "housekeeping", "resync"],
    )
    .await;
}
