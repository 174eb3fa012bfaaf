//! `broadcast`: the peers take turns sending `*` at a fixed rate; each broadcast should
//! reach every other peer. Broadcasts carry random bytes (real clients seal them with a
//! mesh key the broker never sees, so the size is what matters).

use std::time::Duration;

use anyhow::{Result, bail};

use super::{SharedSpec, bar, broker_fields, conn_fields, enrol, integrity, note, pace_then_drain};
use crate::Ctx;
use crate::cli::Broadcast;
use crate::peer::{Cmd, Payload};
use crate::proc_stats::Sample;
use crate::report::Report;

pub async fn run(x: &Ctx, a: &Broadcast) -> Result<Report> {
    let c = &x.common;
    if a.peers < 2 {
        bail!("broadcast needs at least 2 peers");
    }
    let run = super::run_id();
    let timeout = Duration::from_secs(c.timeout);
    let schedule = super::schedule(a.stages.as_ref(), a.rate, a.duration)?;
    let peers = enrol(x, &run, a.peers, a.peers).await?;
    let sh = super::shared(
        x,
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
    let sends = schedule.count();
    note(&format!(
        "{} peers connected; {sends} broadcasts over {} s, {} deliveries expected",
        a.peers,
        schedule.duration(),
        sends * u64::from(a.peers - 1)
    ));

    let before = Sample::take(&c.broker_pids);
    let pb = bar(sends * u64::from(a.peers - 1), "delivered");
    sh.start_series();
    let series = super::series_writer(x, &sh, Some(schedule.clone()))?;
    sh.go.cancel();
    let settled = pace_then_drain(
        &sh,
        &txs,
        &pb,
        &schedule,
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
    r.planned = sends;
    r.unsent = sends.saturating_sub(r.messages);
    r.settled = settled;
    match &a.stages {
        Some(s) => r.set("stages", s.to_string()),
        None => r.set("rate", a.rate),
    }
    r.set("duration_s", schedule.duration());
    r.set("fanout", a.peers - 1);
    r.set("urls", sh.dials.len());
    conn_fields(&mut r, &sh.conn_stats());
    super::stop_fields(&mut r, &sh);
    super::finish_series(&mut r, series).await?;
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
