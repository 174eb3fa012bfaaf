//! Load generator for the claudemesh broker.
//!
//! It plays real clients: ed25519 member keys enrolled through the operator API, signed
//! `hello`s built with the broker crate's own [`broker::protocol::signing`], direct
//! messages sealed with `crypto_box` to the recipient's key, a `client_ack` for every
//! push, and reconnects with jittered exponential backoff. Bookkeeping lives in the pure
//! [`ledger`]; results in [`report`]; what the run created is deleted by [`cleanup`].

pub mod cleanup;
pub mod cli;
pub mod client;
pub mod ledger;
pub mod operator;
pub mod peer;
pub mod proc_stats;
pub mod report;
pub mod scenario;
pub mod seal;
pub mod series;
pub mod stages;
pub mod tls;

use anyhow::{Result, bail};
use cli::{Cli, Common, Scenario};
use client::Dial;
use operator::Endpoint;
use report::{Allow, Report, Thresholds};

/// What every scenario runs with: the flags, the resolved URLs (TLS set up where their
/// scheme says so) and the record of what the run created.
#[derive(Debug)]
pub struct Ctx {
    pub common: Common,
    /// One per `--url`.
    pub dials: Vec<Dial>,
    /// The operator API: `--api-url`, else the `--url` values.
    pub api: Vec<Dial>,
    pub created: cleanup::Created,
}

impl Ctx {
    /// Parses and resolves the URLs; with any TLS URL, builds the TLS configuration and
    /// completes one TLS handshake with each TLS endpoint, so that a certificate problem
    /// stops the run before it starts.
    pub async fn new(common: &Common) -> Result<Ctx> {
        let urls: Vec<Endpoint> = common
            .urls
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<_>>()?;
        let api: Vec<Endpoint> = if common.api_urls.is_empty() {
            urls.clone()
        } else {
            common
                .api_urls
                .iter()
                .map(|u| Endpoint::parse(u))
                .collect::<Result<_>>()?
        };
        let any_tls = urls.iter().chain(&api).any(|e| e.tls);
        let connector = match (any_tls, &common.ca) {
            (true, ca) => Some(tls::connector(ca.as_deref())?),
            (false, Some(ca)) => bail!(
                "--ca {} given, but no --url or --api-url is wss:// or https://",
                ca.display()
            ),
            (false, None) => None,
        };
        let mut dials = Vec::new();
        for e in &urls {
            dials.push(Dial::resolve(e, connector.as_ref()).await?);
        }
        let mut api_dials = Vec::new();
        for e in &api {
            api_dials.push(Dial::resolve(e, connector.as_ref()).await?);
        }
        for d in dials.iter().chain(&api_dials).filter(|d| d.tls.is_some()) {
            if let Err(e) = d.open(None).await {
                bail!("TLS to {} (at {}): {e}", d.authority, d.addr.ip());
            }
        }
        Ok(Ctx {
            common: common.clone(),
            dials,
            api: api_dials,
            created: Default::default(),
        })
    }

    /// The pass/fail rules of the `--allow-*` flags.
    pub fn allow(&self) -> Allow {
        let c = &self.common;
        Allow {
            refused: c.allow_refused,
            unsent: c.allow_unsent,
            unsettled: c.allow_unsettled,
            disconnects: c.allow_disconnects,
        }
    }
}

async fn scenario(x: &Ctx, s: &Scenario) -> Result<Report> {
    match s {
        Scenario::Dm(a) => scenario::dm::run(x, a).await,
        Scenario::Broadcast(a) => scenario::broadcast::run(x, a).await,
        Scenario::Idle(a) => scenario::idle::run(x, a).await,
        Scenario::Failover(a) => scenario::failover::run(x, a).await,
        Scenario::Churn(a) => scenario::churn::run(x, a).await,
    }
}

/// Deletes what the run created (unless `--keep`); `None` when nothing was to be done.
async fn clean_up(x: &Ctx) -> Option<cleanup::Outcome> {
    let (meshes, members) = x.created.counts();
    if meshes == 0 {
        return None;
    }
    if x.common.keep {
        scenario::note(&format!(
            "--keep: leaving {meshes} meshes and {members} members: {}",
            x.created.mesh_ids().join(" ")
        ));
        return None;
    }
    let token = scenario::token(&x.common).unwrap_or_default();
    let out = cleanup::delete_all(&x.api, &token, &x.created, 8).await;
    for w in &out.warnings {
        scenario::note(&format!("warning: clean-up: {w}"));
    }
    if !out.left.is_empty() {
        scenario::note(&format!("meshes left behind: {}", out.left.join(" ")));
    }
    Some(out)
}

/// Runs the scenario `cli` names, deletes what it created, and applies the pass/fail
/// rules and the threshold flags. Ctrl-C stops the run and still cleans up.
pub async fn run(cli: &Cli) -> Result<Report> {
    let x = Ctx::new(&cli.common).await?;
    let outcome = tokio::select! {
        r = scenario(&x, &cli.scenario) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let cleaned = clean_up(&x).await;
    let mut report = match outcome {
        Some(r) => r?,
        None => bail!("interrupted"),
    };
    report.set("created_meshes", serde_json::json!(x.created.mesh_ids()));
    if let Some(out) = cleaned {
        report.set("cleanup", out.to_json());
        for e in &out.errors {
            report.fail(format!("clean-up failed: {e}"));
        }
    }
    report.set("kept", x.common.keep);
    let c = &x.common;
    Thresholds {
        min_delivered: c.min_delivered,
        max_p99_ms: c.max_p99_ms,
    }
    .apply(&mut report);
    x.allow().apply(&mut report);
    Ok(report)
}
