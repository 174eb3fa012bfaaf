//! Command-line flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::stages::Stages;

/// Load generator for the claudemesh broker: real ed25519-signed clients over WebSocket.
///
/// It creates its own mesh and members through the operator API, connects real clients
/// (signed `hello`, `client_ack` for every push, reconnect with jittered backoff), runs
/// one scenario, prints a summary on stderr (one JSON object on stdout with --json), and
/// deletes the meshes and members it created (unless --keep).
///
/// A run passes (exit 0) only if it did what it set out to do: every planned send made,
/// none refused, every ack and delivery in (`settled`), no connection lost, and the
/// threshold flags met. The `--allow-*` flags accept one kind of shortfall each. A failed
/// run exits 1 and its summary says why; a run that could not start exits 2.
///
/// A handshake the broker refuses `overloaded` (`retryAfterMs`, or a 503 `Retry-After`
/// before the upgrade) is tried again after the delay it asks for (at most
/// --max-retry-after) and reported as `overloaded_refusals`, not as a refusal.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Broker URL, once per replica (`ws://host:port/ws`, `http://host:port` or
    /// `host:port`; `wss://` and `https://` use TLS, with no fallback to plaintext);
    /// peers are spread over them round-robin. Meshes and members are created through
    /// the first one unless --api-url.
    #[arg(long = "url", global = true, default_value = "ws://127.0.0.1:7900/ws")]
    pub urls: Vec<String>,
    /// Operator API URL (`http://host:port` or `https://…`; repeatable, tried in order),
    /// for brokers that serve `/api/v1/` on their internal port (BROKER_INTERNAL_PORT).
    /// Default: the --url values.
    #[arg(long = "api-url", global = true, value_name = "URL")]
    pub api_urls: Vec<String>,
    /// PEM file of the CA certificates to trust for `wss://`/`https://` URLs instead of
    /// the system's roots.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not delete the meshes and members the run created (their ids are printed).
    #[arg(long, global = true)]
    pub keep: bool,
    /// Write one row per second (sent, accepted, rejected, delivered, errors,
    /// handshakes, latency percentiles, connected, the stage target) to FILE: CSV for
    /// `.csv`, JSON lines for `.jsonl`/`.ndjson`.
    #[arg(long, global = true, value_name = "FILE")]
    pub series: Option<PathBuf>,
    /// Pass even when the broker refused sends (`ack{queued:false}`: rate limit,
    /// capacity, …), answered with `error` frames, or refused handshakes.
    #[arg(long, global = true)]
    pub allow_refused: bool,
    /// Pass even when planned sends were never made (the run was stopped by --max-run,
    /// or stalled for --timeout).
    #[arg(long, global = true)]
    pub allow_unsent: bool,
    /// Pass even when the run ended before every ack and delivery came in
    /// (`settled: false`).
    #[arg(long, global = true)]
    pub allow_unsettled: bool,
    /// Pass even when connections were lost during the run (for `idle`: during the
    /// hold). Implied for `failover`, whose point is losing them.
    #[arg(long, global = true)]
    pub allow_disconnects: bool,
    /// Operator token (the broker's BROKER_ADMIN_TOKEN; read from that variable when
    /// the flag is absent).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print one JSON object on stdout (and nothing else there).
    #[arg(long, global = true)]
    pub json: bool,
    /// Fail (exit 1) when fewer than this fraction (0..=1) of the expected deliveries
    /// arrive.
    #[arg(long, global = true, value_name = "FRACTION")]
    pub min_delivered: Option<f64>,
    /// Fail (exit 1) when the p99 send→push latency (handshake latency for `churn`) is
    /// above this many milliseconds.
    #[arg(long, global = true, value_name = "MS")]
    pub max_p99_ms: Option<f64>,
    /// Seconds to wait, once sending is over, for outstanding acks and pushes; also the
    /// longest a run may go without any progress.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// Hard cap, in seconds from the first send, on a dm, broadcast or failover run:
    /// when reached, the run stops and reports what it has (`settled: false`, and the
    /// sends not made as `unsent`), which fails it unless --allow-unsettled and
    /// --allow-unsent.
    #[arg(long, global = true, value_name = "SECS")]
    pub max_run: Option<u64>,
    /// Broker process id (repeatable) whose RSS and CPU time are sampled before and
    /// after the run.
    #[arg(long = "broker-pid", global = true, value_name = "PID")]
    pub broker_pids: Vec<u32>,
    /// Connections opened at once while setting up.
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_parallel: usize,
    /// Longest wait, in seconds, honoured for a handshake refused `overloaded` (the
    /// broker's `error{code:"overloaded", retryAfterMs}` + close 1013, or HTTP 503 with
    /// `Retry-After`): the client waits what the broker asks, at most this, before its
    /// next attempt, instead of its own backoff. These refusals are counted apart
    /// (`overloaded_refusals`) and do not fail the run when the client gets in later.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECS")]
    pub max_retry_after: f64,
}

impl Common {
    /// `--max-retry-after` as a duration (a negative or non-finite value: no wait).
    pub fn max_retry_after(&self) -> std::time::Duration {
        std::time::Duration::try_from_secs_f64(self.max_retry_after).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Each peer sends M direct messages to random other peers (by member key).
    Dm(Dm),
    /// Broadcasts (`*`) at a fixed rate; every other peer should get each one.
    Broadcast(Broadcast),
    /// Hold K idle connections and report the broker's RSS per connection.
    Idle(Idle),
    /// Steady direct traffic over two or more replicas; SIGKILL one mid-run.
    Failover(Failover),
    /// Connect, hello and close at a fixed rate; handshake latency.
    Churn(Churn),
}

#[derive(Debug, Clone, Args)]
pub struct Payload {
    /// Plaintext bytes per message (the ciphertext adds 16).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Send random bytes of the sealed size instead of crypto_box ciphertext.
    #[arg(long)]
    pub random_payload: bool,
    /// Do not open sealed pushes to check them.
    #[arg(long)]
    pub no_verify: bool,
    /// Priority of every send: now, next or low.
    #[arg(long, default_value = "now")]
    pub priority: String,
}

#[derive(Debug, Clone, Args)]
pub struct Dm {
    #[arg(long, default_value_t = 10)]
    pub peers: u32,
    /// Direct messages per peer.
    #[arg(long, default_value_t = 100)]
    pub messages: u32,
    /// Aggregate sends per second (open loop, paced). Without it each peer sends as fast
    /// as its acks come back, `--window` at a time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Paced load profile instead of --rate/--messages: `DURATION:RATE,…` (e.g.
    /// `30s:100,60s:1000`), the aggregate direct messages per second, each stage ramping
    /// linearly from the previous target (0 before the first; `0s:R` is a step).
    #[arg(long, value_name = "STAGES", conflicts_with_all = ["rate", "window", "messages"])]
    pub stages: Option<Stages>,
    /// Unacknowledged sends per peer without --rate; 0 fires all of them at once (the
    /// reference load test's methodology).
    #[arg(long, default_value_t = 1)]
    pub window: u32,
    /// Peers per mesh (default: all in one); messages stay within a mesh.
    #[arg(long)]
    pub per_mesh: Option<u32>,
    #[command(flatten)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Args)]
pub struct Broadcast {
    #[arg(long, default_value_t = 100)]
    pub peers: u32,
    /// Broadcasts per second, from the peers in turn.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Load profile instead of --rate/--duration: `DURATION:RATE,…`, broadcasts per
    /// second, each stage ramping linearly from the previous target (0 before the first).
    #[arg(long, value_name = "STAGES", conflicts_with_all = ["rate", "duration"])]
    pub stages: Option<Stages>,
    #[command(flatten)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Args)]
pub struct Idle {
    #[arg(long, default_value_t = 1000)]
    pub connections: u32,
    /// Connections per mesh (the broker's MAX_CONNECTIONS_PER_MESH).
    #[arg(long, default_value_t = 100)]
    pub per_mesh: u32,
    /// Seconds to hold the connections after the last one is up.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connection profile instead of --connections/--hold: `DURATION:CONNECTIONS,…`,
    /// the connections held, each stage ramping linearly from the previous target (0
    /// before the first) by opening or closing connections. RSS per connection is taken
    /// at the end of the first stage that reaches the peak.
    #[arg(long, value_name = "STAGES", conflicts_with_all = ["connections", "hold"])]
    pub stages: Option<Stages>,
    /// Connections per loopback source address before moving on to the next 127.0.0.x
    /// (default: the ephemeral port range minus a margin).
    #[arg(long)]
    pub per_address: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct Failover {
    #[arg(long, default_value_t = 100)]
    pub peers: u32,
    /// Aggregate direct messages per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Load profile instead of --rate/--duration: `DURATION:RATE,…`, aggregate direct
    /// messages per second, ramping as for `dm --stages`.
    #[arg(long, value_name = "STAGES", conflicts_with_all = ["rate", "duration"])]
    pub stages: Option<Stages>,
    /// The replica to SIGKILL.
    #[arg(long)]
    pub kill_pid: u32,
    /// Seconds after the first send to kill it.
    #[arg(long, default_value_t = 5.0)]
    pub kill_after: f64,
    /// Peers per mesh; messages stay within a mesh.
    #[arg(long, default_value_t = 100)]
    pub per_mesh: u32,
    #[command(flatten)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Args)]
pub struct Churn {
    /// Connect + hello + close per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Load profile instead of --rate/--duration: `DURATION:RATE,…`, connect+hello+close
    /// cycles per second, ramping as for `dm --stages`.
    #[arg(long, value_name = "STAGES", conflicts_with_all = ["rate", "duration"])]
    pub stages: Option<Stages>,
    /// Members taking turns (one mesh).
    #[arg(long, default_value_t = 50)]
    pub peers: u32,
    /// A new sessionId per connection (default: one per member, so a connection
    /// reattaches to the presence the previous one left in grace).
    #[arg(long)]
    pub fresh_sessions: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "loadtest",
            "dm",
            "--peers",
            "4",
            "--messages",
            "10",
            "--json",
            "--url",
            "a:1",
            "--url",
            "b:2",
            "--min-delivered",
            "0.99",
        ])
        .expect("parses");
        assert!(cli.common.json);
        assert_eq!(cli.common.urls, ["a:1", "b:2"]);
        assert_eq!(cli.common.min_delivered, Some(0.99));
        let Scenario::Dm(dm) = cli.scenario else {
            panic!("not dm")
        };
        assert_eq!((dm.peers, dm.messages, dm.window), (4, 10, 1));
        assert!(!dm.payload.random_payload);
        assert!(!cli.common.keep && !cli.common.allow_refused);
    }

    #[test]
    fn stages_replace_the_rate_flags() {
        let cli = Cli::try_parse_from(["loadtest", "dm", "--stages", "1s:10,2s:20", "--keep"])
            .expect("parses");
        let Scenario::Dm(dm) = cli.scenario else {
            panic!("not dm")
        };
        assert_eq!(dm.stages.expect("stages").0.len(), 2);
        assert!(cli.common.keep);
        for args in [
            &["loadtest", "dm", "--stages", "1s:10", "--rate", "5"][..],
            &["loadtest", "dm", "--stages", "1s:10", "--messages", "5"],
            &[
                "loadtest",
                "broadcast",
                "--stages",
                "1s:10",
                "--duration",
                "5",
            ],
            &["loadtest", "idle", "--stages", "1s:10", "--hold", "5"],
            &["loadtest", "dm", "--stages", "1s"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} parsed");
        }
    }
}
