//! `idle`: hold K handshaked connections that send nothing, and report how much the
//! broker's resident memory grew per connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{SharedSpec, conn_fields, enrol, note};
use crate::Ctx;
use crate::cli::Idle;
use crate::peer::{self, Payload, Plan, Shared, SourceAddrs};
use crate::proc_stats::{self, Sample};
use crate::report::{Report, round3};
use crate::stages::Schedule;

/// Ports left to everything else on a source address.
const PORT_MARGIN: usize = 2_000;

/// Ephemeral ports per source address, from `ip_local_port_range`.
fn ports_per_address() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<usize>().ok());
            Some(it.next()??..=it.next()??)
        })
        .map_or(20_000, |r| r.count().saturating_sub(PORT_MARGIN).max(1_000))
}

pub async fn run(x: &Ctx, a: &Idle) -> Result<Report> {
    let c = &x.common;
    if c.broker_pids.is_empty() {
        bail!("idle needs --broker-pid (repeatable) to read the broker's VmRSS");
    }
    let schedule = a.stages.as_ref().map(Schedule::from_stages);
    let connections = match &schedule {
        Some(s) => (s.peak() + 1e-9).floor() as u32,
        None => a.connections,
    };
    if connections == 0 {
        bail!("idle needs at least one connection");
    }
    let run = super::run_id();
    let timeout = Duration::from_secs(c.timeout);
    let peers = enrol(x, &run, connections, a.per_mesh).await?;
    let loopback = x
        .dials
        .iter()
        .all(|d| d.addr.ip().is_loopback() && d.addr.ip().is_ipv4());
    let per_address = a.per_address.unwrap_or_else(ports_per_address);
    let sources = (loopback && connections as usize > per_address).then_some(SourceAddrs {
        per_address: per_address * x.dials.len(),
    });
    let sh = super::shared(
        x,
        SharedSpec {
            run,
            peers,
            payload: Payload::Random(0),
            priority: Default::default(),
            verify: false,
            sources,
            per_mesh: a.per_mesh,
        },
    )
    .await?;
    // Let the broker settle after enrolment before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Sample::take(&c.broker_pids);
    let mut r = Report::new("idle");
    let (after, connected_at_end, expected_at_end, series, tasks) = match &schedule {
        None => {
            sh.start_series();
            let series = super::series_writer(x, &sh, None)?;
            let plans = (0..connections).map(|_| Plan::Idle).collect();
            let tasks = super::start_peers(&sh, plans, c.connect_parallel, timeout).await?;
            note(&format!(
                "{connections} connections up over {} meshes; holding {} s",
                connections.div_ceil(a.per_mesh.max(1)),
                a.hold
            ));
            // System pushes (peer_joined) of the last connections settle first.
            tokio::time::sleep(Duration::from_secs_f64(a.hold.max(1.0))).await;
            let after = Sample::take(&c.broker_pids);
            let up = sh.connected.load(Ordering::Relaxed) as u64;
            (after, up, u64::from(connections), series, tasks)
        }
        Some(schedule) => {
            let (after, up, want, series, tasks, stages) =
                staged(x, &sh, schedule, connections).await?;
            r.set("stages", a.stages.as_ref().map(|s| s.to_string()));
            r.set("stage_results", json!(stages));
            (after, up, want, series, tasks)
        }
    };
    let self_rss = proc_stats::rss_kib(std::process::id());
    super::stop_peers(&sh, tasks).await;

    r.peers = u64::from(connections);
    let k = u64::from(connections).max(1);
    let grown = after.total_rss_kib().saturating_sub(before.total_rss_kib());
    r.set("connections", connections);
    r.set("connected_at_end", connected_at_end);
    r.set("per_mesh", a.per_mesh);
    r.set("meshes", connections.div_ceil(a.per_mesh.max(1)));
    r.set(
        "source_addresses",
        match sources {
            None => 1,
            Some(s) => (connections as usize).div_ceil(s.per_address),
        },
    );
    r.set("broker_pids", serde_json::json!(c.broker_pids));
    r.set("broker_rss_kib_before", before.total_rss_kib());
    r.set("broker_rss_kib_after", after.total_rss_kib());
    r.set(
        "rss_per_connection_bytes",
        round3(grown as f64 * 1024.0 / k as f64),
    );
    r.set("broker_cpu_ms", round3(before.cpu_ms_until(&after)));
    if let Some(s) = self_rss {
        r.set("loadtest_rss_kib", s);
    }
    conn_fields(&mut r, &sh.conn_stats());
    // A connection that is gone at the end was lost even if no close was seen.
    r.dropped = r
        .dropped
        .max(expected_at_end.saturating_sub(connected_at_end));
    if let Some(last) = sources.and_then(|s| s.pick(connections.saturating_sub(1) as usize)) {
        r.set("last_source_address", last.to_string());
    }
    super::finish_series(&mut r, series).await?;
    Ok(r)
}

/// Connections following `schedule` (opened in order, closed newest first); returns the
/// sample at the end of the first stage that reaches the peak, the connected and wanted
/// counts at the end, the series writer, the peer tasks and one record per stage.
async fn staged(
    x: &Ctx,
    sh: &Arc<Shared>,
    schedule: &Schedule,
    n: u32,
) -> Result<(
    Sample,
    u64,
    u64,
    Option<crate::series::Writer>,
    JoinSet<()>,
    Vec<Value>,
)> {
    let c = &x.common;
    let stages = stage_ends(schedule);
    note(&format!(
        "{n} connections at the peak, over {} s of stages",
        schedule.duration()
    ));
    sh.start_series();
    let series = super::series_writer(x, sh, Some(schedule.clone()))?;
    let mut tasks = JoinSet::new();
    let begin = Instant::now();
    let mut up: u32 = 0;
    let mut ever: u32 = 0;
    let mut next_stage = 0;
    let mut peak: Option<Sample> = None;
    let mut records = Vec::new();
    let peak_value = schedule.peak();
    loop {
        let t = begin.elapsed().as_secs_f64();
        // Stages that ended since the last turn, as the last turn left them.
        while let Some((end, target)) = stages.get(next_stage).copied()
            && t >= end
        {
            let sample = Sample::take(&c.broker_pids);
            let connected = sh.connected.load(Ordering::Relaxed);
            records.push(json!({
                "end_s": round3(end),
                "target": target,
                "connected": connected,
                "broker_rss_kib": sample.total_rss_kib(),
            }));
            if peak.is_none() && target >= peak_value {
                peak = Some(sample);
            }
            next_stage += 1;
        }
        let want = ((schedule.value_at(t.min(schedule.duration())) + 1e-9).floor() as u32).min(n);
        while up < want {
            let in_flight = up as usize - sh.connected.load(Ordering::Relaxed).min(up as usize);
            if in_flight >= c.connect_parallel.max(1) {
                break;
            }
            if up < ever {
                sh.renew_peer_stop(up);
            }
            tasks.spawn(peer::run_peer(sh.clone(), up, Plan::Idle));
            up += 1;
            ever = ever.max(up);
        }
        while up > want {
            up -= 1;
            sh.peer_stop(up).cancel();
        }
        if t >= schedule.duration() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = sh.connected.load(Ordering::Relaxed) as u64;
    let after = peak.unwrap_or_else(|| Sample::take(&c.broker_pids));
    Ok((after, connected, u64::from(up), series, tasks, records))
}

/// `(end, target)` of each stage, from the schedule's points.
fn stage_ends(schedule: &Schedule) -> Vec<(f64, f64)> {
    schedule.points().iter().skip(1).copied().collect()
}
