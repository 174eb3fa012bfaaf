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
use crate::Ctx;
use crate::cli::Churn;
use crate::client;
use crate::ledger::Micros;
use crate::proc_stats::Sample;
use crate::report::{Report, max_ms, quantile_ms, round3};
use crate::series::{self, Series};

#[derive(Debug)]
struct Tally {
    handshake_us: Histogram<u64>,
    ok: u64,
    failed: BTreeMap<String, u64>,
    /// Attempts refused `overloaded`, retried after the delay they asked for.
    overloaded: crate::peer::Overloaded,
    series: Option<Series>,
}

/// The tally, and the clock its series runs on.
#[derive(Debug)]
struct Shared {
    tally: Mutex<Tally>,
    start: Instant,
}

impl Shared {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl series::Source for Shared {
    fn with_series<R>(&self, f: impl FnOnce(&mut Series) -> R) -> Option<R> {
        self.tally().series.as_mut().map(f)
    }

    fn now_us(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }
}

pub async fn run(x: &Ctx, a: &Churn) -> Result<Report> {
    let c = &x.common;
    let run = super::run_id();
    let schedule = super::schedule(a.stages.as_ref(), a.rate, a.duration)?;
    let peers = enrol(x, &run, a.peers.max(1), a.peers.max(1)).await?;
    let peers = Arc::new(peers);
    let dials = x.dials.clone();
    let mut series = c.series.is_some().then(Series::new);
    if let Some(s) = series.as_mut() {
        s.start(0);
    }
    let sh = Arc::new(Shared {
        tally: Mutex::new(Tally {
            handshake_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
            ok: 0,
            failed: BTreeMap::new(),
            overloaded: Default::default(),
            series,
        }),
        start: Instant::now(),
    });
    let writer = match &c.series {
        Some(path) => Some(series::Writer::spawn(
            path,
            sh.clone(),
            Some(schedule.clone()),
        )?),
        None => None,
    };
    let cycles = schedule.count();
    note(&format!(
        "{cycles} connect+hello+close cycles over {} s over {} members",
        schedule.duration(),
        peers.len()
    ));
    let before = Sample::take(&c.broker_pids);
    let pb = bar(cycles, "handshakes");
    let start = sh.start;
    let max_retry_after = c.max_retry_after();
    let mut tasks = JoinSet::new();
    for k in 0..cycles {
        let at = schedule.due(k).unwrap_or(0.0);
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        let i = (k % peers.len() as u64) as usize;
        let which = (k % dials.len() as u64) as usize;
        let dial = dials[which].clone();
        let (peers, sh, pb) = (peers.clone(), sh.clone(), pb.clone());
        let session = if a.fresh_sessions {
            format!("{}-{k}", peers[i].session_id)
        } else {
            peers[i].session_id.clone()
        };
        tasks.spawn(async move {
            let p = &peers[i];
            // An `overloaded` refusal is tried again after the delay it asks for; the
            // latency is the accepted attempt's.
            let (res, took) = loop {
                let t0 = Instant::now();
                let res = async {
                    let mut ws = client::connect(&dial, None).await?;
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
                let wait = match &res {
                    Err(e) => sh.tally().overloaded.record(e, max_retry_after),
                    Ok(_) => None,
                };
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break (res, took),
                }
            };
            {
                let now = series::Source::now_us(&*sh);
                let mut t = sh.tally();
                let us = (took.as_micros() as u64).max(1);
                match &res {
                    Ok(_) => {
                        t.ok += 1;
                        t.handshake_us.saturating_record(us);
                    }
                    Err(e) => *t.failed.entry(e.label()).or_default() += 1,
                }
                if let Some(b) = t.series.as_mut().and_then(|s| s.at(now)) {
                    match &res {
                        Ok(_) => {
                            b.handshakes += 1;
                            b.handshake_us.saturating_record(us);
                        }
                        Err(_) => b.errors += 1,
                    }
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

    let unfinished = tasks.len() as u64;
    tasks.abort_all();
    let rows = match writer {
        Some(w) => Some(w.finish().await?),
        None => None,
    };
    let t = sh.tally();
    let mut r = Report::new("churn");
    r.peers = u64::from(a.peers);
    if let Some(rows) = rows {
        r.set("series_rows", rows);
    }
    // Cycles still running at the end never completed: the run did not settle.
    r.settled = unfinished == 0;
    r.set("unfinished_cycles", unfinished);
    r.gated_p99_ms = quantile_ms(&t.handshake_us, 0.99);
    match &a.stages {
        Some(s) => r.set("stages", s.to_string()),
        None => r.set("rate", a.rate),
    }
    r.set("duration_s", schedule.duration());
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
    super::overloaded_fields(&mut r, &t.overloaded);
    let failed: u64 = t.failed.values().sum();
    let refused: u64 = t
        .failed
        .iter()
        .filter(|(k, _)| k.starts_with("refused"))
        .map(|(_, v)| *v)
        .sum();
    r.refused = refused;
    if refused > 0 {
        r.set(
            "refused_handshakes",
            json!(
                t.failed
                    .iter()
                    .filter(|(k, _)| k.starts_with("refused"))
                    .collect::<BTreeMap<_, _>>()
            ),
        );
    }
    // Refused handshakes fail through the refusal check (--allow-refused); the rest here.
    if failed > refused {
        r.fail(format!(
            "{} of {cycles} handshakes failed: {:?}",
            failed - refused,
            t.failed
        ));
    }
    Ok(r)
}
