//! `dm`: N peers each send M direct messages to random other peers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};

use super::{
    SharedSpec, bar, broker_fields, conn_fields, drain, enrol, integrity, note, pace_then_drain,
};
use crate::Ctx;
use crate::cli::Dm;
use crate::peer::{Cmd, Plan};
use crate::proc_stats::Sample;
use crate::report::Report;

pub async fn run(x: &Ctx, a: &Dm) -> Result<Report> {
    let c = &x.common;
    if a.peers < 2 {
        bail!("dm needs at least 2 peers");
    }
    let run = super::run_id();
    let timeout = Duration::from_secs(c.timeout);
    // Direct messages stay within a mesh: all peers share one unless --per-mesh.
    let per_mesh = a.per_mesh.unwrap_or(a.peers).max(2);
    // Paced: --stages, or --rate until peers × messages are sent.
    let schedule = match (&a.stages, a.rate) {
        (Some(s), _) => Some(super::schedule(Some(s), 0.0, 0.0)?),
        (None, Some(rate)) => Some(super::schedule(
            None,
            rate,
            f64::from(a.peers) * f64::from(a.messages) / rate.max(1e-9),
        )?),
        (None, None) => None,
    };
    let total = match &schedule {
        Some(s) => s.count(),
        None => u64::from(a.peers) * u64::from(a.messages),
    };
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
    let (txs, plans) = match schedule {
        Some(_) => super::paced_plans(a.peers),
        None => {
            let plan = || Plan::Window {
                total: a.messages,
                window: a.window,
            };
            (Vec::new(), (0..a.peers).map(|_| plan()).collect())
        }
    };
    let tasks = super::start_peers(&sh, plans, c.connect_parallel, timeout).await?;
    note(&format!(
        "{} peers connected over {} URL(s); sending {total} direct messages",
        a.peers,
        sh.dials.len(),
    ));

    let before = Sample::take(&c.broker_pids);
    let pb = bar(total, "delivered");
    let go_at = sh.now_us();
    sh.start_series();
    let series = super::series_writer(x, &sh, schedule.clone())?;
    sh.go.cancel();
    let settled = match &schedule {
        Some(schedule) => {
            pace_then_drain(
                &sh,
                &txs,
                &pb,
                schedule,
                |due| Cmd::Direct { due },
                timeout,
                c.max_run.map(Duration::from_secs),
                || true,
            )
            .await
        }
        None => {
            drain(
                &sh,
                &pb,
                timeout,
                c.max_run.map(Duration::from_secs),
                || sh.senders_done.load(Ordering::Relaxed) == a.peers as usize,
            )
            .await
        }
    };
    pb.finish_and_clear();
    let after = Sample::take(&c.broker_pids);
    super::stop_peers(&sh, tasks).await;

    let mut r = {
        let l = sh.ledger();
        let first = l.first_send_at.unwrap_or(go_at);
        let end = l.last_delivery_at.unwrap_or_else(|| sh.now_us()).max(first);
        Report::from_ledger("dm", u64::from(a.peers), &l, (end - first) as f64 / 1e6)
    };
    r.planned = total;
    r.unsent = total.saturating_sub(r.messages);
    r.settled = settled;
    if a.stages.is_none() {
        r.set("messages_per_peer", a.messages);
    }
    r.set("per_mesh", per_mesh);
    r.set("urls", sh.dials.len());
    r.set(
        "mode",
        match (&a.stages, a.rate) {
            (Some(_), _) => "staged",
            (None, Some(_)) => "paced",
            (None, None) if a.window == 0 => "burst",
            (None, None) => "closed-loop",
        },
    );
    if let Some(s) = &a.stages {
        r.set("stages", s.to_string());
    } else if let Some(rate) = a.rate {
        r.set("rate", rate);
    } else {
        r.set("window", a.window);
    }
    r.set(
        "payload",
        if a.payload.random_payload {
            "random"
        } else {
            "crypto_box"
        },
    );
    r.set("plaintext_bytes", a.payload.size);
    r.set("priority", a.payload.priority.clone());
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
        "delivered",
    );
    integrity(&mut r, &sh);
    Ok(r)
}
