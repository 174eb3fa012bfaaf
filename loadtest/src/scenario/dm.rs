//! `dm`: N peers each send M direct messages to random other peers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};

use super::{
    SharedSpec, bar, broker_fields, conn_fields, drain, enrol, integrity, note, pace_then_drain,
};
use crate::cli::{Common, Dm};
use crate::peer::{Cmd, Plan};
use crate::proc_stats::Sample;
use crate::report::Report;

pub async fn run(c: &Common, a: &Dm) -> Result<Report> {
    if a.peers < 2 {
        bail!("dm needs at least 2 peers");
    }
    let run = super::run_id();
    let timeout = Duration::from_secs(c.timeout);
    // Direct messages stay within a mesh: all peers share one unless --per-mesh.
    let per_mesh = a.per_mesh.unwrap_or(a.peers).max(2);
    let peers = enrol(c, &run, a.peers, per_mesh).await?;
    let sh = super::shared(
        c,
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
    let (txs, plans) = match a.rate {
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
        "{} peers connected over {} URL(s); sending {} direct messages",
        a.peers,
        sh.urls.len(),
        u64::from(a.peers) * u64::from(a.messages)
    ));

    let before = Sample::take(&c.broker_pids);
    let total = u64::from(a.peers) * u64::from(a.messages);
    let pb = bar(total, "delivered");
    let go_at = sh.now_us();
    sh.go.cancel();
    let settled = match a.rate {
        Some(rate) => {
            pace_then_drain(
                &sh,
                &txs,
                &pb,
                rate,
                Some(total),
                None,
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
    r.set("messages_per_peer", a.messages);
    r.set("per_mesh", per_mesh);
    r.set("urls", sh.urls.len());
    r.set(
        "mode",
        match a.rate {
            Some(_) => "paced",
            None if a.window == 0 => "burst",
            None => "closed-loop",
        },
    );
    if let Some(rate) = a.rate {
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
    r.set("settled", settled);
    conn_fields(&mut r, &sh.conn_stats());
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
