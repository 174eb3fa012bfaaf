//! `idle`: hold K handshaked connections that send nothing, and report how much the
//! broker's resident memory grew per connection.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{SharedSpec, conn_fields, enrol, note};
use crate::cli::{Common, Idle};
use crate::peer::{Payload, Plan, SourceAddrs};
use crate::proc_stats::{self, Sample};
use crate::report::{Report, round3};

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

pub async fn run(c: &Common, a: &Idle) -> Result<Report> {
    if c.broker_pids.is_empty() {
        bail!("idle needs --broker-pid (repeatable) to read the broker's VmRSS");
    }
    let run = super::run_id();
    let timeout = Duration::from_secs(c.timeout);
    let peers = enrol(c, &run, a.connections, a.per_mesh).await?;
    let (_, addrs) = super::resolve(&c.urls).await?;
    let loopback = addrs
        .iter()
        .all(|a| a.ip().is_loopback() && a.ip().is_ipv4());
    let per_address = a.per_address.unwrap_or_else(ports_per_address);
    let sources = (loopback && a.connections as usize > per_address).then_some(SourceAddrs {
        per_address: per_address * addrs.len(),
    });
    let sh = super::shared(
        c,
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
    let plans = (0..a.connections).map(|_| Plan::Idle).collect();
    let tasks = super::start_peers(&sh, plans, c.connect_parallel, timeout).await?;
    note(&format!(
        "{} connections up over {} meshes; holding {} s",
        a.connections,
        a.connections.div_ceil(a.per_mesh.max(1)),
        a.hold
    ));
    // System pushes (peer_joined) of the last connections settle first.
    tokio::time::sleep(Duration::from_secs_f64(a.hold.max(1.0))).await;
    let after = Sample::take(&c.broker_pids);
    let self_rss = proc_stats::rss_kib(std::process::id());
    super::stop_peers(&sh, tasks).await;

    let mut r = Report::new("idle");
    r.peers = u64::from(a.connections);
    let k = u64::from(a.connections).max(1);
    let grown = after.total_rss_kib().saturating_sub(before.total_rss_kib());
    r.set("connections", a.connections);
    r.set("per_mesh", a.per_mesh);
    r.set("meshes", a.connections.div_ceil(a.per_mesh.max(1)));
    r.set(
        "source_addresses",
        match sources {
            None => 1,
            Some(s) => (a.connections as usize).div_ceil(s.per_address),
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
    if let Some(last) = sources.and_then(|s| s.pick(a.connections.saturating_sub(1) as usize)) {
        r.set("last_source_address", last.to_string());
    }
    Ok(r)
}
