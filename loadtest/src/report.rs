//! The result of a run: one JSON object (`--json`), a human summary, and the exit decision.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ledger::Ledger;

/// Everything a scenario reports. The named fields are common to every scenario (zero
/// where they do not apply); `extra` holds the scenario's own fields.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub peers: u64,
    /// Sends the run set out to make (0 where the scenario sends nothing).
    pub planned: u64,
    /// Sends attempted.
    pub messages: u64,
    /// Planned sends never made (`planned - messages`): the run stopped first.
    pub unsent: u64,
    /// Acks with `queued:true`.
    pub accepted: u64,
    /// Unique pushes (per message and recipient).
    pub delivered: u64,
    /// Repeated pushes of a message to a recipient that already had it.
    pub duplicates: u64,
    /// Deliveries the accepted sends should have produced.
    pub expected_deliveries: u64,
    /// `delivered / expected_deliveries` (1 when nothing was expected).
    pub delivered_ratio: f64,
    /// Acknowledged sends that reached none of their recipients by the end of the run.
    pub lost_acked: u64,
    pub rejected: u64,
    /// Everything the broker refused: `ack{queued:false}`, `error` frames after the
    /// handshake, and refused handshakes.
    pub refused: u64,
    /// Sends that never got an ack (their connection closed first).
    pub unacked: u64,
    /// Established connections the broker side closed or dropped during the run.
    pub dropped: u64,
    /// Whether every ack and delivery came in before the run ended.
    pub settled: bool,
    pub early_pushes: u64,
    /// Seconds from the first send to the last delivery.
    pub elapsed_s: f64,
    pub delivered_per_sec: f64,
    pub accepted_per_sec: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p90_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
    /// Whether the run met every check (its own and the threshold flags).
    pub ok: bool,
    /// Why it did not.
    pub failures: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The p99 that `--max-p99-ms` applies to (send→push, or handshake for `churn`).
    #[serde(skip)]
    pub gated_p99_ms: f64,
}

/// A quantile of a microsecond histogram, in milliseconds (0 when empty).
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    round3(h.value_at_quantile(q) as f64 / 1000.0)
}

pub fn max_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    round3(h.max() as f64 / 1000.0)
}

/// Rounds to three decimals, so the JSON stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    /// An empty report of `scenario`.
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_string(),
            peers: 0,
            planned: 0,
            messages: 0,
            unsent: 0,
            accepted: 0,
            delivered: 0,
            duplicates: 0,
            expected_deliveries: 0,
            delivered_ratio: 1.0,
            lost_acked: 0,
            rejected: 0,
            refused: 0,
            unacked: 0,
            dropped: 0,
            settled: true,
            early_pushes: 0,
            elapsed_s: 0.0,
            delivered_per_sec: 0.0,
            accepted_per_sec: 0.0,
            ack_p50_ms: 0.0,
            ack_p99_ms: 0.0,
            ack_max_ms: 0.0,
            e2e_p50_ms: 0.0,
            e2e_p90_ms: 0.0,
            e2e_p99_ms: 0.0,
            e2e_max_ms: 0.0,
            ok: true,
            failures: Vec::new(),
            extra: Map::new(),
            gated_p99_ms: 0.0,
        }
    }

    /// Fills the message fields from a ledger; `elapsed_s` is the window the rates use.
    pub fn from_ledger(scenario: &str, peers: u64, l: &Ledger, elapsed_s: f64) -> Report {
        let mut r = Report::new(scenario);
        r.peers = peers;
        r.messages = l.sent;
        r.accepted = l.accepted;
        r.delivered = l.delivered;
        r.duplicates = l.duplicates;
        r.expected_deliveries = l.expected_deliveries();
        r.delivered_ratio = if r.expected_deliveries == 0 {
            1.0
        } else {
            // Deliveries of unacknowledged sends count too, but never above 100 %.
            (l.delivered as f64 / r.expected_deliveries as f64).min(1.0)
        };
        r.delivered_ratio = (r.delivered_ratio * 1e6).round() / 1e6;
        r.lost_acked = l.lost_acked();
        r.rejected = l.rejected;
        r.unacked = l.unacked();
        r.early_pushes = l.early_pushes;
        r.elapsed_s = round3(elapsed_s);
        if elapsed_s > 0.0 {
            r.delivered_per_sec = round3(l.delivered as f64 / elapsed_s);
            r.accepted_per_sec = round3(l.accepted as f64 / elapsed_s);
        }
        r.ack_p50_ms = quantile_ms(&l.ack_us, 0.50);
        r.ack_p99_ms = quantile_ms(&l.ack_us, 0.99);
        r.ack_max_ms = max_ms(&l.ack_us);
        r.e2e_p50_ms = quantile_ms(&l.e2e_us, 0.50);
        r.e2e_p90_ms = quantile_ms(&l.e2e_us, 0.90);
        r.e2e_p99_ms = quantile_ms(&l.e2e_us, 0.99);
        r.e2e_max_ms = max_ms(&l.e2e_us);
        r.gated_p99_ms = r.e2e_p99_ms;
        r.set("id_mismatches", l.id_mismatches);
        r.set("unknown_pushes", l.unknown_pushes);
        r
    }

    /// Sets a scenario-specific field.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.extra.insert(key.to_string(), value.into());
    }

    /// Records a failed check.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
        self.ok = false;
    }

    /// The JSON object printed with `--json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// The human summary printed on stderr.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "── {} ──", self.scenario);
        if self.messages > 0 || self.scenario == "dm" || self.scenario == "broadcast" {
            let _ = writeln!(
                s,
                "peers {}  planned {}  sent {}  unsent {}  accepted {}  rejected {}  unacked {}",
                self.peers,
                self.planned,
                self.messages,
                self.unsent,
                self.accepted,
                self.rejected,
                self.unacked
            );
            let _ = writeln!(
                s,
                "delivered {} of {} ({:.2} %)  duplicates {}  early pushes {}  lost (acked, never pushed) {}",
                self.delivered,
                self.expected_deliveries,
                self.delivered_ratio * 100.0,
                self.duplicates,
                self.early_pushes,
                self.lost_acked
            );
            let _ = writeln!(
                s,
                "throughput {:.0} delivered msg/s, {:.0} accepted msg/s over {:.2} s",
                self.delivered_per_sec, self.accepted_per_sec, self.elapsed_s
            );
            let _ = writeln!(
                s,
                "send→ack  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                self.ack_p50_ms, self.ack_p99_ms, self.ack_max_ms
            );
            let _ = writeln!(
                s,
                "send→push p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                self.e2e_p50_ms, self.e2e_p90_ms, self.e2e_p99_ms, self.e2e_max_ms
            );
        }
        let _ = writeln!(
            s,
            "refused {}  connections dropped {}  settled {}",
            self.refused, self.dropped, self.settled
        );
        for (k, v) in &self.extra {
            let _ = writeln!(s, "{k}: {v}");
        }
        if self.ok {
            let _ = writeln!(s, "result: ok");
        } else {
            let _ = writeln!(s, "result: FAILED");
            for f in &self.failures {
                let _ = writeln!(s, "  - {f}");
            }
        }
        s
    }
}

/// The pass/fail flags of every scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// `--min-delivered`: the lowest acceptable `delivered_ratio` (0..=1).
    pub min_delivered: Option<f64>,
    /// `--max-p99-ms`: the highest acceptable gated p99.
    pub max_p99_ms: Option<f64>,
}

impl Thresholds {
    /// The thresholds `r` misses, as sentences.
    pub fn misses(&self, r: &Report) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(min) = self.min_delivered
            && r.delivered_ratio < min
        {
            out.push(format!(
                "delivered ratio {:.4} is below --min-delivered {min}",
                r.delivered_ratio
            ));
        }
        if let Some(max) = self.max_p99_ms
            && r.gated_p99_ms > max
        {
            out.push(format!(
                "p99 {:.3} ms is above --max-p99-ms {max}",
                r.gated_p99_ms
            ));
        }
        out
    }

    /// Adds the misses to the report's failures.
    pub fn apply(&self, r: &mut Report) {
        for m in self.misses(r) {
            r.fail(m);
        }
    }
}

/// The shortfalls a run may be allowed (`--allow-*`); everything else fails it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allow {
    pub refused: bool,
    pub unsent: bool,
    pub unsettled: bool,
    pub disconnects: bool,
}

impl Allow {
    /// Why `r` did not do what it set out to do, as sentences naming the flag that would
    /// accept each shortfall.
    pub fn misses(&self, r: &Report) -> Vec<String> {
        let mut out = Vec::new();
        if r.refused > 0 && !self.refused {
            let why = ["rejects", "errors", "refused_handshakes"]
                .iter()
                .filter_map(|k| r.extra.get(*k).map(|v| format!("{k} {v}")))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(format!(
                "the broker refused {} sends, frames or handshakes ({why}); --allow-refused accepts that",
                r.refused
            ));
        }
        let stopped = r
            .extra
            .get("stopped_by")
            .and_then(Value::as_str)
            .map_or(String::new(), |s| format!(", stopped by {s}"));
        if r.unsent > 0 && !self.unsent {
            out.push(format!(
                "{} of {} planned sends were never made{stopped}; --allow-unsent accepts that",
                r.unsent, r.planned
            ));
        }
        if !r.settled && !self.unsettled {
            out.push(format!(
                "the run ended before it settled (settled: false{stopped}): {} sends without an ack, {} of {} deliveries missing; --allow-unsettled accepts that",
                r.unacked,
                r.expected_deliveries.saturating_sub(r.delivered),
                r.expected_deliveries
            ));
        }
        if r.dropped > 0 && !self.disconnects && r.scenario != "failover" {
            let closes = r
                .extra
                .get("closes")
                .map(|v| v.to_string())
                .unwrap_or_default();
            let during = if r.scenario == "idle" {
                " during the hold"
            } else {
                ""
            };
            out.push(format!(
                "{} connections were lost{during} ({closes}); --allow-disconnects accepts that",
                r.dropped
            ));
        }
        out
    }

    /// Adds the misses to the report's failures.
    pub fn apply(&self, r: &mut Report) {
        for m in self.misses(r) {
            r.fail(m);
        }
    }
}

/// The process exit code for a finished report: 0 when ok, 1 when a check failed.
pub fn exit_code(r: &Report) -> u8 {
    if r.ok { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::MsgKey;

    fn sample() -> Report {
        let mut l = Ledger::new();
        for seq in 0..10 {
            let k = MsgKey { sender: 0, seq };
            l.on_send(k, 0, 1);
            l.on_ack(k, 1_000, true, &format!("m{seq}"));
            if seq < 9 {
                l.on_push(k, 1, &format!("m{seq}"), 2_000 + u64::from(seq) * 1_000);
            }
        }
        Report::from_ledger("dm", 2, &l, 0.5)
    }

    #[test]
    fn json_has_the_common_fields_and_extras() {
        let mut r = sample();
        r.set("window", 1);
        let v: Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
        let obj = v.as_object().expect("an object");
        for field in [
            "scenario",
            "peers",
            "messages",
            "accepted",
            "delivered",
            "duplicates",
            "delivered_per_sec",
            "ack_p50_ms",
            "ack_p99_ms",
            "e2e_p50_ms",
            "e2e_p99_ms",
            "e2e_max_ms",
            "delivered_ratio",
            "lost_acked",
            "ok",
            "failures",
        ] {
            assert!(obj.contains_key(field), "missing {field} in {v}");
        }
        assert!(!obj.contains_key("gated_p99_ms"));
        assert!(!obj.contains_key("extra"), "extras are flattened");
        assert_eq!(v["scenario"], "dm");
        assert_eq!(v["messages"], 10);
        assert_eq!(v["accepted"], 10);
        assert_eq!(v["delivered"], 9);
        assert_eq!(v["lost_acked"], 1);
        assert_eq!(v["window"], 1);
        assert_eq!(v["delivered_per_sec"], 18.0);
        assert!(v["e2e_max_ms"].as_f64().expect("number") >= 10.0);
        assert!(v["ack_p50_ms"].as_f64().expect("number") > 0.9);
    }

    #[test]
    fn thresholds_decide_the_exit_code() {
        let r = sample(); // 90 % delivered
        assert_eq!(exit_code(&r), 0);
        let t = Thresholds {
            min_delivered: Some(0.9),
            max_p99_ms: None,
        };
        assert!(t.misses(&r).is_empty(), "exactly at the bound passes");

        let mut strict = r.clone();
        Thresholds {
            min_delivered: Some(0.95),
            max_p99_ms: None,
        }
        .apply(&mut strict);
        assert_eq!(strict.failures.len(), 1);
        assert_eq!(exit_code(&strict), 1);

        let mut fast = r.clone();
        fast.gated_p99_ms = 12.0;
        let t = Thresholds {
            min_delivered: None,
            max_p99_ms: Some(10.0),
        };
        assert_eq!(t.misses(&fast).len(), 1);
        fast.gated_p99_ms = 10.0;
        assert!(t.misses(&fast).is_empty());

        assert!(Thresholds::default().misses(&strict).len() <= 1);
        let mut own = r;
        own.fail("3 acknowledged messages lost");
        assert_eq!(exit_code(&own), 1);
    }

    #[test]
    fn every_shortfall_fails_unless_its_flag_allows_it() {
        let mut r = sample();
        assert!(Allow::default().misses(&r).is_empty(), "a clean run passes");
        r.planned = 12;
        r.unsent = 2;
        r.refused = 3;
        r.set("rejects", serde_json::json!({"rate_limit: slow down": 3}));
        r.settled = false;
        r.dropped = 1;
        r.set("closes", serde_json::json!({"1012 restart": 1}));
        let misses = Allow::default().misses(&r);
        assert_eq!(misses.len(), 4, "{misses:?}");
        for flag in [
            "--allow-refused",
            "--allow-unsent",
            "--allow-unsettled",
            "--allow-disconnects",
        ] {
            assert!(
                misses.iter().any(|m| m.contains(flag)),
                "{flag} not named: {misses:?}"
            );
        }
        assert!(misses[0].contains("rate_limit"), "{misses:?}");
        let all = Allow {
            refused: true,
            unsent: true,
            unsettled: true,
            disconnects: true,
        };
        assert!(all.misses(&r).is_empty());
        let mut failover = r.clone();
        failover.scenario = "failover".into();
        assert_eq!(
            Allow {
                disconnects: false,
                ..all
            }
            .misses(&failover)
            .len(),
            0
        );
        let mut idle = r;
        idle.scenario = "idle".into();
        let m = Allow {
            disconnects: false,
            ..all
        }
        .misses(&idle);
        assert!(m.len() == 1 && m[0].contains("during the hold"), "{m:?}");
        Allow::default().apply(&mut idle);
        assert_eq!(exit_code(&idle), 1);
    }

    #[test]
    fn an_empty_run_is_well_formed() {
        let r = Report::from_ledger("broadcast", 0, &Ledger::new(), 0.0);
        assert_eq!(r.delivered_ratio, 1.0);
        assert_eq!(r.e2e_p99_ms, 0.0);
        assert_eq!(r.delivered_per_sec, 0.0);
        assert!(r.human().contains("result: ok"));
    }
}
