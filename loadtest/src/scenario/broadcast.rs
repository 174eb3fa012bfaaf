//! `broadcast`: the peers take turns sending `*` at a fixed rate; each broadcast should
//! reach every other peer. Broadcasts carry random bytes (real clients seal them with a
//! mesh key the broker never sees, so the size is what matters).

use std::time::Duration;

use anyhow::{Result, bail};

use super::{SharedSpec, bar, broker_fields, conn_fields, enrol, integrity, note, pace_then_drain};
use crate::cli::{Broadcast, Common};
use crate::peer::{Cmd, Payload};
use crate::proc_stats::Sample;
use crate::report::Report;

pub async fn run(c: &Common, a: &Broadcast) -> Result<Report> {
    if a.peers < 2 {
        bail!("broadcast needs at least 2 peers");
    }
    let run = super::run_id();
    let timeout = Duration::from_secs(c.timeout);
    let peers = enrol(c, &run, a.peers, a.peers).await?;
    let sh = super::shared(
        c,
        SharedSpec {
            run,
            peers,
            payload: Payload::Random(a.payload.size),
            priority: super::priority(&a.payload.priority)?,
            verify: false,
            sources: None,
            per_mesh: a.peers,
        },
    )
    .await?;
    let (txs, plans) = super::paced_plans(a.peers);
    let tasks = super::start_peers(&sh, plans, c.connect_parallel, timeout).await?;
    // Let the peer_joined storm of the connection phase pass before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sends = (a.rate * a.duration).round() as u64;
    note(&format!(
        "{} peers connected; {sends} broadcasts at {}/s, {} deliveries expected",
        a.peers,
        a.rate,
        sends * u64::from(a.peers - 1)
    ));

    let before = Sample::take(&c.broker_pids);
    let pb = bar(sends * u64::from(a.peers - 1), "delivered");
    sh.go.cancel();
    let settled = pace_then_drain(
        &sh,
        &txs,
        &pb,
        a.rate,
        Some(sends),
        Some(Duration::from_secs_f64(a.duration)),
        |due| Cmd::Broadcast { due },
        timeout,
        c.max_run.map(Duration::from_secs),
        || true,
    )
    .await;
    pb.finish_and_clear();
    let after = Sample::take(&c.broker_pids);
    super::stop_peers(&sh, tasks).await;

    let mut r = {
        let l = sh.ledger();
        let first = l.first_send_at.unwrap_or(0);
        let end = l.last_delivery_at.unwrap_or_else(|| sh.now_us()).max(first);
        Report::from_ledger(
            "broadcast",
            u64::from(a.peers),
            &l,
            (end - first) as f64 / 1e6,
        )
    };
    r.set("rate", a.rate);
    r.set("duration_s", a.duration);
    r.set("fanout", a.peers - 1);
    r.set("urls", sh.urls.len());
    r.set("settled", settled);
    conn_fields(&mut r, &sh.conn_stats());
    let delivered = r.delivered;
    broker_fields(
        &mut r,
        &c.broker_pids,
        &before,
        &after,
        delivered,
        "delivery",
    );
    integrity(&mut r, &sh);
    Ok(r)
}
