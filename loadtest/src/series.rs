//! `--series FILE`: one row per second of the run (sends, acks, deliveries, errors,
//! handshakes and their latency percentiles), as CSV or JSON lines by the file's
//! extension.
//!
//! Second `t` is the window `[t, t+1)` seconds after the run's origin (its first send;
//! for `idle` and `churn`, the first connection). Every event counts in the second it
//! happened (a send at the time it was due), so a row is complete once that second is
//! over; the writer flushes rows a second late and keeps only the open seconds in
//! memory, however long the run. An event recorded after its second was written (a
//! pacer late by more than a second) counts in the oldest second still open.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::ledger::Micros;
use crate::report::{max_ms, quantile_ms};
use crate::stages::Schedule;

/// The columns, in order (CSV header; JSON keys).
pub const COLUMNS: [&str; 18] = [
    "t_s",
    "target",
    "connected",
    "sent",
    "accepted",
    "rejected",
    "delivered",
    "duplicates",
    "errors",
    "handshakes",
    "ack_p50_ms",
    "ack_p99_ms",
    "e2e_p50_ms",
    "e2e_p90_ms",
    "e2e_p99_ms",
    "e2e_max_ms",
    "handshake_p50_ms",
    "handshake_p99_ms",
];

fn histogram() -> Histogram<u64> {
    // Two significant digits: plenty for a plot, and a small bucket.
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
}

/// What happened in one second.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub delivered: u64,
    pub duplicates: u64,
    /// Rejected sends, `error` frames, lost connections and failed connection attempts.
    pub errors: u64,
    pub handshakes: u64,
    /// Connected peers at the last change in this second.
    pub connected: Option<u64>,
    pub ack_us: Histogram<u64>,
    pub e2e_us: Histogram<u64>,
    pub handshake_us: Histogram<u64>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            sent: 0,
            accepted: 0,
            rejected: 0,
            delivered: 0,
            duplicates: 0,
            errors: 0,
            handshakes: 0,
            connected: None,
            ack_us: histogram(),
            e2e_us: histogram(),
            handshake_us: histogram(),
        }
    }
}

/// The open seconds of a run's series.
#[derive(Debug, Default)]
pub struct Series {
    /// Microseconds (on the caller's clock) of second 0; `None` until [`Series::start`].
    origin: Option<Micros>,
    /// Second of `open[0]`.
    first: u64,
    open: VecDeque<Bucket>,
}

impl Series {
    pub fn new() -> Series {
        Series::default()
    }

    /// Starts the clock: second 0 begins at `origin`. Events before it are not kept.
    pub fn start(&mut self, origin: Micros) {
        if self.origin.is_none() {
            self.origin = Some(origin);
        }
    }

    /// The bucket of the event at `at` (`None` before the start).
    pub fn at(&mut self, at: Micros) -> Option<&mut Bucket> {
        let origin = self.origin?;
        if at < origin {
            return None;
        }
        let sec = ((at - origin) / 1_000_000).max(self.first);
        let i = (sec - self.first) as usize;
        while self.open.len() <= i {
            self.open.push_back(Bucket::default());
        }
        self.open.get_mut(i)
    }

    /// Removes and returns every second before `upto` (empty ones included), oldest first.
    pub fn take_before(&mut self, upto: u64) -> Vec<(u64, Bucket)> {
        let mut out = Vec::new();
        while self.first < upto {
            out.push((self.first, self.open.pop_front().unwrap_or_default()));
            self.first += 1;
        }
        out
    }

    /// Removes and returns every second that has an event (the end of a run).
    pub fn take_all(&mut self) -> Vec<(u64, Bucket)> {
        let upto = self.first + self.open.len() as u64;
        self.take_before(upto)
    }

    /// The second `now` falls in (0 before the start).
    pub fn second_of(&self, now: Micros) -> u64 {
        self.origin.map_or(0, |o| now.saturating_sub(o) / 1_000_000)
    }
}

/// CSV or JSON lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    /// From the file name: `.csv` is CSV; `.jsonl`, `.ndjson` and `.json` are JSON lines.
    pub fn of(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
        {
            Some(e) if e == "csv" => Ok(Format::Csv),
            Some(e) if e == "jsonl" || e == "ndjson" || e == "json" => Ok(Format::JsonLines),
            _ => bail!(
                "--series {}: name the file .csv or .jsonl (JSON lines)",
                path.display()
            ),
        }
    }
}

/// One finished second as the file's row.
pub fn row(sec: u64, b: &Bucket, connected: u64, target: Option<f64>) -> Value {
    json!({
        "t_s": sec,
        "target": target.map(|t| (t * 1000.0).round() / 1000.0),
        "connected": connected,
        "sent": b.sent,
        "accepted": b.accepted,
        "rejected": b.rejected,
        "delivered": b.delivered,
        "duplicates": b.duplicates,
        "errors": b.errors,
        "handshakes": b.handshakes,
        "ack_p50_ms": quantile_ms(&b.ack_us, 0.5),
        "ack_p99_ms": quantile_ms(&b.ack_us, 0.99),
        "e2e_p50_ms": quantile_ms(&b.e2e_us, 0.5),
        "e2e_p90_ms": quantile_ms(&b.e2e_us, 0.9),
        "e2e_p99_ms": quantile_ms(&b.e2e_us, 0.99),
        "e2e_max_ms": max_ms(&b.e2e_us),
        "handshake_p50_ms": quantile_ms(&b.handshake_us, 0.5),
        "handshake_p99_ms": quantile_ms(&b.handshake_us, 0.99),
    })
}

fn csv_line(v: &Value) -> String {
    let mut s = String::new();
    for (i, c) in COLUMNS.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match &v[*c] {
            Value::Null => {}
            x => {
                let _ = write!(s, "{x}");
            }
        }
    }
    s.push('\n');
    s
}

/// Where rows come from: a run's ledger, or the churn tally.
pub trait Source: Send + Sync + 'static {
    /// Runs `f` on the series under its lock.
    fn with_series<R>(&self, f: impl FnOnce(&mut Series) -> R) -> Option<R>;
    /// Microseconds on the series' clock.
    fn now_us(&self) -> Micros;
}

/// The file a run's rows go to.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    format: Format,
    out: std::io::BufWriter<std::fs::File>,
    connected: u64,
    rows: u64,
    schedule: Option<Schedule>,
}

impl Sink {
    fn write(&mut self, rows: Vec<(u64, Bucket)>) -> Result<()> {
        for (sec, b) in rows {
            if let Some(c) = b.connected {
                self.connected = c;
            }
            let target = self
                .schedule
                .as_ref()
                .filter(|s| (sec as f64) < s.duration())
                .map(|s| s.value_at(sec as f64 + 0.5));
            let v = row(sec, &b, self.connected, target);
            let line = match self.format {
                Format::Csv => csv_line(&v),
                Format::JsonLines => format!("{v}\n"),
            };
            self.out
                .write_all(line.as_bytes())
                .with_context(|| format!("writing {}", self.path.display()))?;
            self.rows += 1;
        }
        self.out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A running series writer; [`Writer::finish`] writes the rest and says how many rows.
#[derive(Debug)]
pub struct Writer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<u64>>,
}

impl Writer {
    /// Creates `path` (header included for CSV) and writes one row a second, a second
    /// late, until [`Writer::finish`]. `schedule` fills the `target` column.
    pub fn spawn<S: Source>(
        path: &Path,
        src: Arc<S>,
        schedule: Option<Schedule>,
    ) -> Result<Writer> {
        let format = Format::of(path)?;
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating --series {}", path.display()))?;
        let mut sink = Sink {
            path: path.to_path_buf(),
            format,
            out: std::io::BufWriter::new(file),
            connected: 0,
            rows: 0,
            schedule,
        };
        if format == Format::Csv {
            let header = COLUMNS.join(",") + "\n";
            sink.out
                .write_all(header.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = token.cancelled() => break,
                }
                // Seconds that ended more than a second ago.
                let rows = src
                    .with_series(|s| {
                        let now = s.second_of(src.now_us());
                        s.take_before(now.saturating_sub(1))
                    })
                    .unwrap_or_default();
                sink.write(rows)?;
            }
            let rows = src.with_series(Series::take_all).unwrap_or_default();
            sink.write(rows)?;
            Ok(sink.rows)
        });
        Ok(Writer { stop, task })
    }

    /// Writes the remaining seconds and closes the file; returns the rows written.
    pub async fn finish(self) -> Result<u64> {
        self.stop.cancel();
        self.task.await.context("the series writer panicked")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_land_in_their_second_and_late_ones_in_the_oldest_open() {
        let mut s = Series::new();
        assert!(s.at(5).is_none(), "nothing before the start");
        s.start(1_000_000);
        assert!(s.at(999_999).is_none());
        s.at(1_000_000).expect("open").sent += 1;
        s.at(3_500_000).expect("open").sent += 2;
        let rows = s.take_before(1);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0, rows[0].1.sent), (0, 1));
        // Second 0 is written: a late event for it counts in second 1.
        s.at(1_200_000).expect("open").delivered += 1;
        let rows = s.take_all();
        let got: Vec<(u64, u64, u64)> = rows
            .iter()
            .map(|(t, b)| (*t, b.sent, b.delivered))
            .collect();
        assert_eq!(got, [(1, 0, 1), (2, 2, 0)]);
        assert!(s.take_all().is_empty());
        assert_eq!(s.second_of(4_000_001), 3);
    }

    #[test]
    fn the_format_follows_the_extension() {
        assert_eq!(Format::of(Path::new("a/b.csv")).expect("csv"), Format::Csv);
        assert_eq!(
            Format::of(Path::new("x.JSONL")).expect("jsonl"),
            Format::JsonLines
        );
        assert_eq!(
            Format::of(Path::new("x.ndjson")).expect("ndjson"),
            Format::JsonLines
        );
        assert!(Format::of(Path::new("x.txt")).is_err());
        assert!(Format::of(Path::new("x")).is_err());
    }

    #[test]
    fn a_row_has_every_column_and_csv_leaves_no_target_empty_as_null() {
        let mut b = Bucket {
            sent: 3,
            ..Default::default()
        };
        b.e2e_us.saturating_record(2_000);
        let v = row(7, &b, 4, None);
        for c in COLUMNS {
            assert!(v.get(c).is_some(), "missing {c}");
        }
        let line = csv_line(&v);
        assert_eq!(line.split(',').count(), COLUMNS.len());
        assert!(line.starts_with("7,,4,3,"), "{line}");
        assert!(v["e2e_p50_ms"].as_f64().expect("number") > 1.9);
    }
}
