//! `churn`: open a connection, complete a signed `hello`, close it, R times a second.
//! Each cycle is its own task started on schedule, so a slow handshake does not lower
//! the offered rate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{bar, broker_fields, enrol, note};
use crate::cli::{Churn, Common};
use crate::client;
use crate::proc_stats::Sample;
use crate::report::{Report, max_ms, quantile_ms, round3};

#[derive(Debug)]
struct Tally {
    handshake_us: Histogram<u64>,
    ok: u64,
    failed: BTreeMap<String, u64>,
}

pub async fn run(c: &Common, a: &Churn) -> Result<Report> {
    let run = super::run_id();
    let peers = enrol(c, &run, a.peers.max(1), a.peers.max(1)).await?;
    let peers = Arc::new(peers);
    let (urls, addrs) = super::resolve(&c.urls).await?;
    let tally = Arc::new(Mutex::new(Tally {
        handshake_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        ok: 0,
        failed: BTreeMap::new(),
    }));
    let cycles = (a.rate * a.duration).round() as u64;
    note(&format!(
        "{cycles} connect+hello+close cycles at {}/s over {} members",
        a.rate,
        peers.len()
    ));
    let before = Sample::take(&c.broker_pids);
    let pb = bar(cycles, "handshakes");
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(1e-3));
    for k in 0..cycles {
        tokio::time::sleep_until((start + interval.mul_f64(k as f64)).into()).await;
        let i = (k % peers.len() as u64) as usize;
        let which = (k % urls.len() as u64) as usize;
        let (url, addr) = (urls[which].clone(), addrs[which]);
        let (peers, tally, pb) = (peers.clone(), tally.clone(), pb.clone());
        let session = if a.fresh_sessions {
            format!("{}-{k}", peers[i].session_id)
        } else {
            peers[i].session_id.clone()
        };
        tasks.spawn(async move {
            let t0 = Instant::now();
            let p = &peers[i];
            let res = async {
                let mut ws = client::connect(&url, addr, None).await?;
                let hello = client::hello_frame(
                    &p.mesh_id,
                    &p.member_id,
                    &p.identity,
                    &session,
                    broker::ids::now_ms(),
                );
                client::handshake(&mut ws, hello, Duration::from_secs(10)).await?;
                Ok::<_, client::ConnectError>(ws)
            }
            .await;
            let took = t0.elapsed();
            {
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match &res {
                    Ok(_) => {
                        t.ok += 1;
                        t.handshake_us
                            .saturating_record((took.as_micros() as u64).max(1));
                    }
                    Err(e) => *t.failed.entry(e.label()).or_default() += 1,
                }
            }
            pb.inc(1);
            if let Ok(mut ws) = res {
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "churn".into(),
                    })))
                    .await;
                // Read the echo so the close completes, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    use futures_util::StreamExt;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
        });
        // Reap finished cycles as we go.
        while tasks.try_join_next().is_some() {}
    }
    let offered_s = start.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(Duration::from_secs(c.timeout), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    pb.finish_and_clear();
    let after = Sample::take(&c.broker_pids);

    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = Report::new("churn");
    r.peers = u64::from(a.peers);
    r.gated_p99_ms = quantile_ms(&t.handshake_us, 0.99);
    r.set("rate", a.rate);
    r.set("duration_s", a.duration);
    r.set("cycles", cycles);
    r.set("handshakes_ok", t.ok);
    r.set("handshakes_failed", json!(t.failed));
    r.set(
        "handshakes_per_sec",
        round3(t.ok as f64 / offered_s.max(1e-9)),
    );
    r.set("handshake_p50_ms", quantile_ms(&t.handshake_us, 0.5));
    r.set("handshake_p99_ms", quantile_ms(&t.handshake_us, 0.99));
    r.set("handshake_max_ms", max_ms(&t.handshake_us));
    r.set("fresh_sessions", a.fresh_sessions);
    broker_fields(&mut r, &c.broker_pids, &before, &after, t.ok, "handshake");
    let failed: u64 = t.failed.values().sum();
    if failed > 0 {
        r.fail(format!(
            "{failed} of {cycles} handshakes failed: {:?}",
            t.failed
        ));
    }
    Ok(r)
}
