//! The scenarios and what they share: enrolment, spawning peers, pacing, waiting.

pub mod broadcast;
pub mod churn;
pub mod dm;
pub mod failover;
pub mod idle;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use broker::protocol::Priority;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::Ctx;
use crate::cli::{self, Common};
use crate::ledger::{Ledger, Micros};
use crate::operator::{self, ApiConn};
use crate::peer::{self, Cmd, ConnStats, Payload, PeerInfo, Plan, Shared, SourceAddrs};
use crate::proc_stats::Sample;
use crate::report::{Report, quantile_ms, round3};
use crate::seal::Identity;
use crate::series::{self, Series};
use crate::stages::{Schedule, Stages};

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// A status line on stderr (not on stdout, which `--json` keeps clean).
pub fn note(msg: &str) {
    eprintln!("loadtest: {msg}");
}

/// The operator token: `--token`, else `BROKER_ADMIN_TOKEN`.
pub fn token(c: &Common) -> Result<String> {
    c.token
        .clone()
        .or_else(|| std::env::var("BROKER_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .context("no operator token: pass --token (the broker's BROKER_ADMIN_TOKEN)")
}

/// A short random id naming this run's meshes and client message ids.
pub fn run_id() -> String {
    broker::ids::random_id(8)
}

pub fn priority(name: &str) -> Result<Priority> {
    serde_json::from_value(Value::String(name.to_string()))
        .with_context(|| format!("--priority must be now, next or low, not {name:?}"))
}

pub fn payload(p: &cli::Payload) -> Payload {
    if p.random_payload {
        Payload::Random(p.size)
    } else {
        Payload::Sealed(p.size)
    }
}

/// Creates `ceil(n / per_mesh)` meshes and `n` members with fresh ed25519 keys, through
/// the first operator API URL; records them in `x.created` for the clean-up.
pub async fn enrol(x: &Ctx, run: &str, n: u32, per_mesh: u32) -> Result<Vec<PeerInfo>> {
    let c = &x.common;
    let token = token(c)?;
    let api_dial = &x.api[0];
    let mut api = ApiConn::connect(api_dial, &token).await?;
    let per_mesh = per_mesh.max(1);
    let meshes = n.div_ceil(per_mesh).max(1);
    let mut mesh_ids = Vec::new();
    for m in 0..meshes {
        let id = api.create_mesh(&format!("loadtest {run} {m}")).await?;
        x.created.mesh(&id);
        mesh_ids.push(id);
    }
    let identities: Vec<Identity> = (0..n).map(|_| Identity::random()).collect();
    let rows: Vec<(String, String, String)> = identities
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                mesh_ids[i / per_mesh as usize].clone(),
                id.pubkey.clone(),
                format!("lt-{i}"),
            )
        })
        .collect();
    let pb = bar(u64::from(n), "enrolling");
    let counter = pb.clone();
    let member_ids =
        operator::enrol_all(api_dial, &token, rows.clone(), 8, move || counter.inc(1)).await?;
    pb.finish_and_clear();
    for ((mesh, _, _), id) in rows.iter().zip(&member_ids) {
        x.created.member(mesh, id);
    }
    Ok(identities
        .into_iter()
        .zip(rows)
        .zip(member_ids)
        .enumerate()
        .map(|(i, ((identity, (mesh_id, _, _)), member_id))| PeerInfo {
            identity,
            mesh_id,
            member_id,
            session_id: format!("lt-{run}-{i}"),
        })
        .collect())
}

/// The profile of a paced workload: `--stages`, else `rate` for `secs` seconds.
pub fn schedule(stages: Option<&Stages>, rate: f64, secs: f64) -> Result<Schedule> {
    match stages {
        Some(s) => Ok(Schedule::from_stages(s)),
        None => {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be above 0");
            }
            Ok(Schedule::constant(rate, secs))
        }
    }
}

/// Everything but the peers and the payload settings.
pub struct SharedSpec {
    pub run: String,
    pub peers: Vec<PeerInfo>,
    pub payload: Payload,
    pub priority: Priority,
    pub verify: bool,
    pub sources: Option<SourceAddrs>,
    pub per_mesh: u32,
}

pub async fn shared(x: &Ctx, spec: SharedSpec) -> Result<Arc<Shared>> {
    let mut ledger = Ledger::new();
    if x.common.series.is_some() {
        ledger.series = Some(Series::new());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let peer_stops = (0..spec.peers.len()).map(|_| stop.child_token()).collect();
    Ok(Arc::new(Shared {
        run: spec.run,
        dials: x.dials.clone(),
        peers: spec.peers,
        series_on: x.common.series.is_some(),
        ledger: std::sync::Mutex::new(ledger),
        conn: Default::default(),
        start: Instant::now(),
        stop,
        peer_stops: std::sync::Mutex::new(peer_stops),
        go: Default::default(),
        connected: Default::default(),
        senders_done: Default::default(),
        stopped_by: Default::default(),
        payload: spec.payload,
        priority: spec.priority,
        verify: spec.verify,
        open_failures: Default::default(),
        system_pushes: Default::default(),
        sources: spec.sources,
        per_mesh: spec.per_mesh,
        max_retry_after: x.common.max_retry_after(),
    }))
}

/// Spawns one task per plan, a few at a time so the broker's accept queue is not flooded,
/// and waits until all are connected (or `timeout`).
pub async fn start_peers(
    sh: &Arc<Shared>,
    plans: Vec<Plan>,
    parallel: usize,
    timeout: Duration,
) -> Result<JoinSet<()>> {
    let n = plans.len();
    let pb = bar(n as u64, "connecting");
    let mut tasks = JoinSet::new();
    let deadline = Instant::now() + timeout;
    let mut last_progress = (0, Instant::now());
    for (i, plan) in plans.into_iter().enumerate() {
        // At most `parallel` connections still on their way up.
        while i >= sh.connected.load(Ordering::Relaxed) + parallel.max(1) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            pb.set_position(sh.connected.load(Ordering::Relaxed) as u64);
            check_stall(sh, &mut last_progress, timeout)?;
        }
        tasks.spawn(peer::run_peer(sh.clone(), i as u32, plan));
    }
    while sh.connected.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            check_stall(sh, &mut last_progress, Duration::ZERO)?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        pb.set_position(sh.connected.load(Ordering::Relaxed) as u64);
        check_stall(sh, &mut last_progress, timeout)?;
    }
    pb.finish_and_clear();
    Ok(tasks)
}

fn check_stall(sh: &Shared, last: &mut (usize, Instant), timeout: Duration) -> Result<()> {
    let now = sh.connected.load(Ordering::Relaxed);
    if now != last.0 {
        *last = (now, Instant::now());
        return Ok(());
    }
    if last.1.elapsed() >= timeout {
        let (failures, overloaded) = {
            let c = sh.conn_stats();
            (c.connect_failures.clone(), c.overloaded.by.clone())
        };
        sh.stop.cancel();
        bail!(
            "only {now} of the peers connected, with no progress for {:?}; connect failures: {failures:?}, overloaded refusals: {overloaded:?}",
            last.1.elapsed()
        );
    }
    Ok(())
}

/// Sends the commands `schedule` makes due (see [`Schedule::due`]) to the peers in turn;
/// returns how many were sent.
pub async fn pace(
    sh: &Shared,
    txs: &[mpsc::UnboundedSender<Cmd>],
    schedule: &Schedule,
    make: impl Fn(Micros) -> Cmd,
) -> u64 {
    let begin = sh.now_us();
    let mut k: u64 = 0;
    loop {
        if sh.stop.is_cancelled() {
            break;
        }
        let Some(at) = schedule.due(k) else { break };
        let due = begin + (at * 1e6) as u64;
        let now = sh.now_us();
        if due > now {
            tokio::time::sleep(Duration::from_micros(due - now)).await;
        }
        let _ = txs[(k % txs.len() as u64) as usize].send(make(due));
        k += 1;
    }
    k
}

/// Waits until `sending_done()` and then until the ledger settles, at most `timeout`
/// after sending ends and never longer than `timeout` without progress. The bar follows
/// `delivered`. Returns whether everything settled.
/// `n` peers driven by a pacer: the senders the pacer feeds, and the plans to start.
pub fn paced_plans(n: u32) -> (Vec<mpsc::UnboundedSender<Cmd>>, Vec<Plan>) {
    (0..n)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Plan::Paced(rx))
        })
        .unzip()
}

/// Paces `total` commands (for at most `duration`) and, at the same time, waits for the
/// run to settle (see [`drain`]) once pacing is over and `also` holds; returns whether it
/// settled.
#[allow(
    clippy::too_many_arguments,
    reason = "the knobs of one paced run, passed through"
)]
pub async fn pace_then_drain(
    sh: &Shared,
    txs: &[mpsc::UnboundedSender<Cmd>],
    pb: &ProgressBar,
    schedule: &Schedule,
    make: impl Fn(Micros) -> Cmd,
    timeout: Duration,
    max_run: Option<Duration>,
    also: impl Fn() -> bool,
) -> bool {
    let paced = std::sync::atomic::AtomicBool::new(false);
    let pacer = async {
        pace(sh, txs, schedule, make).await;
        paced.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let waiter = drain(sh, pb, timeout, max_run, || {
        paced.load(std::sync::atomic::Ordering::Relaxed) && also()
    });
    let ((), settled) = tokio::join!(pacer, waiter);
    settled
}

pub async fn drain(
    sh: &Shared,
    pb: &ProgressBar,
    timeout: Duration,
    max_run: Option<Duration>,
    sending_done: impl Fn() -> bool,
) -> bool {
    let begun = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    let mut sent_at: Option<Instant> = None;
    loop {
        let (marker, delivered, settled) = {
            let l = sh.ledger();
            (l.progress_marker(), l.delivered, l.pending_acks() == 0)
        };
        pb.set_position(delivered);
        if marker != last.0 {
            last = (marker, Instant::now());
        }
        let done = sending_done();
        if done && sent_at.is_none() {
            sent_at = Some(Instant::now());
        }
        // The full check walks every entry: only when the cheap one passes.
        if done && settled && sh.ledger().settled() {
            return true;
        }
        let why = if let Some(m) = max_run.filter(|m| begun.elapsed() >= *m) {
            Some(format!("--max-run {} s", m.as_secs()))
        } else if last.1.elapsed() >= timeout {
            Some(format!("no progress for --timeout {} s", timeout.as_secs()))
        } else if sent_at.is_some_and(|t| t.elapsed() >= timeout) {
            Some(format!(
                "--timeout {} s after sending ended",
                timeout.as_secs()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            *sh.stopped_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            // Stop the pacer too.
            sh.stop.cancel();
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `--series` writer of a run on `sh`, when the flag is given; call
/// [`Shared::start_series`] first.
pub fn series_writer(
    x: &Ctx,
    sh: &Arc<Shared>,
    schedule: Option<Schedule>,
) -> Result<Option<series::Writer>> {
    match &x.common.series {
        None => Ok(None),
        Some(path) => series::Writer::spawn(path, sh.clone(), schedule).map(Some),
    }
}

/// Writes the rest of the series and records its row count in the report.
pub async fn finish_series(r: &mut Report, w: Option<series::Writer>) -> Result<()> {
    if let Some(w) = w {
        let rows = w.finish().await?;
        r.set("series_rows", rows);
    }
    Ok(())
}

/// Stops every peer and waits for their tasks (closing frames included).
pub async fn stop_peers(sh: &Shared, mut tasks: JoinSet<()>) {
    sh.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

/// Connection figures every scenario reports, and the refusals and drops the pass/fail
/// checks read: `refused` adds error frames and refused handshakes to the rejected sends,
/// `dropped` counts every close of an established connection the harness did not ask for.
pub fn conn_fields(r: &mut Report, c: &ConnStats) {
    conn_counts(r, c);
}

/// Why the run stopped early, when it did.
pub fn stop_fields(r: &mut Report, sh: &Shared) {
    if let Some(why) = sh
        .stopped_by
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        r.set("stopped_by", why);
    }
}

/// The `overloaded` refusals of handshakes: counted apart, never in `refused` (the peer
/// waited what the broker asked and tried again; a peer that never got in fails the run
/// by other checks).
pub fn overloaded_fields(r: &mut Report, o: &peer::Overloaded) {
    r.set("overloaded_refusals", o.total());
    if o.total() == 0 {
        return;
    }
    r.set("overloaded_refusals_by", json!(o.by));
    r.set("overloaded_wait_ms", round3(o.waited_us as f64 / 1000.0));
    r.set(
        "overloaded_retry_after_max_ms",
        round3(o.asked_max_us as f64 / 1000.0),
    );
    r.set("overloaded_waits_capped", o.capped);
    if o.without_delay > 0 {
        r.set("overloaded_without_delay", o.without_delay);
    }
}

fn conn_counts(r: &mut Report, c: &ConnStats) {
    overloaded_fields(r, &c.overloaded);
    let refused_handshakes: std::collections::BTreeMap<&str, u64> = c
        .connect_failures
        .iter()
        .filter(|(k, _)| k.starts_with("refused"))
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    r.refused =
        r.rejected + c.errors.values().sum::<u64>() + refused_handshakes.values().sum::<u64>();
    r.dropped = c.closes.values().sum();
    if !refused_handshakes.is_empty() {
        r.set("refused_handshakes", json!(refused_handshakes));
    }
    r.set("closes", json!(c.closes));
    r.set("connect_failures", json!(c.connect_failures));
    r.set("reconnects", c.reconnects);
    if !c.errors.is_empty() {
        r.set("errors", json!(c.errors));
    }
    if !c.rejects.is_empty() {
        r.set("rejects", json!(c.rejects));
    }
    r.set("handshake_p50_ms", quantile_ms(&c.handshake_us, 0.5));
    r.set("handshake_p99_ms", quantile_ms(&c.handshake_us, 0.99));
}

/// Broker RSS and CPU figures when `--broker-pid` was given.
pub fn broker_fields(
    r: &mut Report,
    pids: &[u32],
    before: &Sample,
    after: &Sample,
    per: u64,
    per_what: &str,
) {
    if pids.is_empty() {
        return;
    }
    let cpu_ms = before.cpu_ms_until(after);
    r.set("broker_pids", json!(pids));
    r.set("broker_rss_kib_before", before.total_rss_kib());
    r.set("broker_rss_kib_after", after.total_rss_kib());
    r.set("broker_cpu_ms", round3(cpu_ms));
    if per > 0 {
        r.set(
            &format!("broker_cpu_us_per_{per_what}"),
            round3(cpu_ms * 1000.0 / per as f64),
        );
    }
}

/// Fields and checks about the harness's own correctness.
pub fn integrity(r: &mut Report, sh: &Shared) {
    let open_failures = sh.open_failures.load(Ordering::Relaxed);
    r.set("open_failures", open_failures);
    r.set("system_pushes", sh.system_pushes.load(Ordering::Relaxed));
    if open_failures > 0 {
        r.fail(format!(
            "{open_failures} sealed pushes did not open with the sender's key"
        ));
    }
    if let Some(Value::Number(n)) = r.extra.get("id_mismatches")
        && n.as_u64().unwrap_or(0) > 0
    {
        r.fail(format!(
            "{n} pushes carried another messageId than their ack"
        ));
    }
}
