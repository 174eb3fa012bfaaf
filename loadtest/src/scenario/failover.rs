//! `failover`: steady direct traffic over two or more replicas; one replica is killed
//! with SIGKILL mid-run. Reports how long until every peer is connected again and how
//! many acknowledged messages were never delivered (must be 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;

use super::{SharedSpec, bar, broker_fields, conn_fields, enrol, integrity, note, pace_then_drain};
use crate::Ctx;
use crate::cli::Failover;
use crate::peer::Cmd;
use crate::proc_stats::Sample;
use crate::report::{Report, round3};

pub async fn run(x: &Ctx, a: &Failover) -> Result<Report> {
    let c = &x.common;
    if c.urls.len() < 2 {
        bail!("failover needs two or more --url (one per replica)");
    }
    if a.peers < 2 {
        bail!("failover needs at least 2 peers");
    }
    let run = super::run_id();
    let timeout = Duration::from_secs(c.timeout);
    let per_mesh = a.per_mesh.max(2);
    let schedule = super::schedule(a.stages.as_ref(), a.rate, a.duration)?;
    let peers = enrol(x, &run, a.peers, per_mesh).await?;
    let sh = super::shared(
        x,
        SharedSpec {
            run,
            peers,
            payload: super::payload(&a.payload),
            priority: super::priority(&a.payload.priority)?,
            verify: !a.payload.no_verify,
            sources: None,
            per_mesh,
        },
    )
    .await?;
    let (txs, plans) = super::paced_plans(a.peers);
    let tasks = super::start_peers(&sh, plans, c.connect_parallel, timeout).await?;
    let sends = schedule.count();
    note(&format!(
        "{} peers connected over {} replicas; {sends} direct messages over {} s, SIGKILL {} after {} s",
        a.peers,
        sh.dials.len(),
        schedule.duration(),
        a.kill_pid,
        a.kill_after
    ));
    // The survivors' pids: every --broker-pid but the victim.
    let survivors: Vec<u32> = c
        .broker_pids
        .iter()
        .copied()
        .filter(|p| *p != a.kill_pid)
        .collect();
    let before = Sample::take(&survivors);
    let pb = bar(sends, "delivered");
    sh.start_series();
    let series = super::series_writer(x, &sh, Some(schedule.clone()))?;
    sh.go.cancel();
    let go_at = sh.now_us();
    let killed_at = AtomicU64::new(u64::MAX);
    let killer = async {
        tokio::time::sleep(Duration::from_secs_f64(a.kill_after)).await;
        killed_at.store(sh.now_us(), Ordering::Relaxed);
        let status = tokio::process::Command::new("kill")
            .arg("-KILL")
            .arg(a.kill_pid.to_string())
            .status()
            .await;
        pb.println(format!("loadtest: SIGKILL {} → {status:?}", a.kill_pid));
    };
    // Also wait until every peer is back before judging.
    let run = pace_then_drain(
        &sh,
        &txs,
        &pb,
        &schedule,
        |due| Cmd::Direct { due },
        timeout,
        c.max_run.map(Duration::from_secs),
        || sh.connected.load(Ordering::Relaxed) == a.peers as usize,
    );
    let ((), settled) = tokio::join!(killer, run);
    pb.finish_and_clear();
    let after = Sample::take(&survivors);
    let killed_at = killed_at.load(Ordering::Relaxed);
    let conn = {
        let c = sh.conn_stats();
        (c.outages.clone(), c.open_outages().len(), c.closes.clone())
    };
    super::stop_peers(&sh, tasks).await;

    let mut r = {
        let l = sh.ledger();
        let first = l.first_send_at.unwrap_or(go_at);
        let end = l.last_delivery_at.unwrap_or_else(|| sh.now_us()).max(first);
        Report::from_ledger(
            "failover",
            u64::from(a.peers),
            &l,
            (end - first) as f64 / 1e6,
        )
    };
    let (outages, still_down, _) = conn;
    // Outages that began with the kill (allow for the first socket noticing a bit early).
    let after_kill: Vec<_> = outages
        .iter()
        .filter(|o| o.down_at + 1_000 >= killed_at)
        .collect();
    let mut dropped: Vec<u32> = after_kill.iter().map(|o| o.peer).collect();
    dropped.sort_unstable();
    dropped.dedup();
    let back_ms: Vec<f64> = dropped
        .iter()
        .filter_map(|p| {
            after_kill
                .iter()
                .filter(|o| o.peer == *p)
                .map(|o| o.up_at)
                .max()
        })
        .map(|up| (up.saturating_sub(killed_at)) as f64 / 1000.0)
        .collect();
    let all_back_ms = back_ms.iter().copied().fold(0.0, f64::max);
    let within_10s = back_ms.iter().filter(|ms| **ms <= 10_000.0).count();
    r.planned = sends;
    r.unsent = sends.saturating_sub(r.messages);
    r.settled = settled;
    match &a.stages {
        Some(s) => r.set("stages", s.to_string()),
        None => r.set("rate", a.rate),
    }
    r.set("per_mesh", per_mesh);
    r.set("duration_s", schedule.duration());
    r.set("urls", sh.dials.len());
    r.set("killed_pid", a.kill_pid);
    r.set(
        "killed_at_s",
        round3(killed_at.saturating_sub(go_at) as f64 / 1e6),
    );
    r.set("peers_dropped", dropped.len());
    r.set("peers_still_down", still_down);
    r.set("all_reconnected_ms", round3(all_back_ms));
    r.set(
        "reconnected_within_10s",
        if dropped.is_empty() {
            1.0
        } else {
            round3(within_10s as f64 / dropped.len() as f64)
        },
    );
    r.set("outages", after_kill.len());
    conn_fields(&mut r, &sh.conn_stats());
    super::stop_fields(&mut r, &sh);
    super::finish_series(&mut r, series).await?;
    let delivered = r.delivered;
    broker_fields(&mut r, &survivors, &before, &after, delivered, "delivered");
    r.set("surviving_pids", json!(survivors));
    integrity(&mut r, &sh);
    if r.lost_acked > 0 {
        let n = r.lost_acked;
        r.fail(format!("{n} acknowledged messages were never delivered"));
    }
    if still_down > 0 {
        r.fail(format!(
            "{still_down} peers were not connected again by the end"
        ));
    }
    if dropped.is_empty() {
        r.fail("no peer lost its connection: was the pid one of the replicas?");
    }
    Ok(r)
}
