//! `--stages`: a load profile as a piecewise-linear function of time, and the open-loop
//! schedule derived from it.
//!
//! `--stages 30s:100,60s:1000` is a list of `duration:target`. As in k6, each stage moves
//! the target linearly from where the previous stage left it (0 before the first) to its
//! own target over its duration; a `0s` stage is a step. What the target is depends on the
//! workload: sends per second for `dm`, `broadcast` and `failover`, connect+hello+close
//! cycles per second for `churn`, connections held for `idle`.
//!
//! For a rate, the `k`-th event (from 0) is due at the time `t` where the integral of the
//! rate from 0 to `t` equals `k`, so the number of events due in any interval is the area
//! under the profile there, and a constant rate `r` gives events at `0, 1/r, 2/r, …`.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};

/// One `duration:target` of `--stages`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub secs: f64,
    pub target: f64,
}

/// The parsed `--stages` flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Stages(pub Vec<Stage>);

/// A duration: `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<f64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("{s:?}: the unit must be ms, s, m or h"),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs < 0.0 {
        bail!("{s:?} is not a duration of zero or more");
    }
    Ok(secs)
}

impl FromStr for Stages {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Stages> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (d, t) = part
                .split_once(':')
                .with_context(|| format!("stage {part:?} is not DURATION:TARGET (e.g. 30s:100)"))?;
            let secs = parse_duration(d)?;
            let target: f64 = t
                .trim()
                .parse()
                .with_context(|| format!("stage {part:?}: {t:?} is not a number"))?;
            if !target.is_finite() || target < 0.0 {
                bail!("stage {part:?}: the target must be zero or more");
            }
            out.push(Stage { secs, target });
        }
        if out.is_empty() {
            bail!("--stages needs at least one DURATION:TARGET");
        }
        if out.iter().map(|s| s.secs).sum::<f64>() <= 0.0 {
            bail!("--stages: the stages last 0 s in total");
        }
        Ok(Stages(out))
    }
}

impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}s:{}", s.secs, s.target)?;
        }
        Ok(())
    }
}

/// A piecewise-linear profile: `(seconds, value)` points, the first at 0 s, in time
/// order; the profile ends at the last point.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    points: Vec<(f64, f64)>,
    /// The area under the profile up to each point.
    area: Vec<f64>,
}

impl Schedule {
    fn from_points(points: Vec<(f64, f64)>) -> Schedule {
        let mut area = Vec::with_capacity(points.len());
        let mut sum = 0.0;
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                let q = points[i - 1];
                sum += (p.0 - q.0) * (p.1 + q.1) / 2.0;
            }
            area.push(sum);
        }
        Schedule { points, area }
    }

    /// `value` for `secs` seconds.
    pub fn constant(value: f64, secs: f64) -> Schedule {
        Schedule::from_points(vec![(0.0, value), (secs.max(0.0), value)])
    }

    /// The profile of `--stages`: from 0, each stage ramping to its target.
    pub fn from_stages(stages: &Stages) -> Schedule {
        let mut points = vec![(0.0, 0.0)];
        let mut t = 0.0;
        for s in &stages.0 {
            t += s.secs;
            points.push((t, s.target));
        }
        Schedule::from_points(points)
    }

    /// The `(seconds, value)` points, the first at 0 s.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// Seconds from start to end.
    pub fn duration(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.0)
    }

    /// The highest value anywhere.
    pub fn peak(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }

    /// The value at `t` seconds (the last value after the end).
    pub fn value_at(&self, t: f64) -> f64 {
        let Some(i) = self.points.iter().position(|p| p.0 > t) else {
            return self.points.last().map_or(0.0, |p| p.1);
        };
        if i == 0 {
            return self.points[0].1;
        }
        let (a, b) = (self.points[i - 1], self.points[i]);
        a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0)
    }

    /// The area under the profile from 0 to the end: the events a rate profile makes.
    pub fn total(&self) -> f64 {
        self.area.last().copied().unwrap_or(0.0)
    }

    /// Events of a rate profile: every `k` with `∫₀ᵗ rate = k` for some `t` before the
    /// end.
    pub fn count(&self) -> u64 {
        // Floating-point slack, so that 21 sends at 0.3/s are 21 and not 22.
        let n = self.total();
        let eps = 1e-6 + n * 1e-12;
        if n <= eps { 0 } else { (n - eps).ceil() as u64 }
    }

    /// When the `k`-th event (from 0) of a rate profile is due, in seconds; `None` from
    /// [`Schedule::count`] on.
    pub fn due(&self, k: u64) -> Option<f64> {
        if k >= self.count() {
            return None;
        }
        let k = k as f64;
        // The segment in which the area reaches k.
        let i = self
            .area
            .iter()
            .position(|a| *a >= k)
            .unwrap_or(self.area.len() - 1);
        if i == 0 {
            return Some(0.0);
        }
        let (a, b) = (self.points[i - 1], self.points[i]);
        let len = b.0 - a.0;
        let d = k - self.area[i - 1];
        if d <= 0.0 || len <= 0.0 {
            return Some(a.0);
        }
        // area(a.0 + x) - area(a.0) = v0·x + (v1 - v0)/(2·len)·x², solved for x in the
        // cancellation-free form.
        let (v0, slope) = (a.1, (b.1 - a.1) / (2.0 * len));
        let disc = (v0 * v0 + 4.0 * slope * d).max(0.0);
        let x = 2.0 * d / (v0 + disc.sqrt());
        Some((a.0 + x.min(len)).min(self.duration()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn stages_parse_and_refuse_nonsense() {
        let s: Stages = "30s:100, 1m:1000,500ms:0".parse().expect("parses");
        assert_eq!(
            s.0,
            [
                Stage {
                    secs: 30.0,
                    target: 100.0
                },
                Stage {
                    secs: 60.0,
                    target: 1000.0
                },
                Stage {
                    secs: 0.5,
                    target: 0.0
                },
            ]
        );
        assert_eq!(
            "2:5".parse::<Stages>().expect("bare seconds").0[0].secs,
            2.0
        );
        for bad in ["", "30s", "30x:1", "30s:-1", "0s:10", "abc:1", "1s:x"] {
            assert!(bad.parse::<Stages>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_constant_rate_is_evenly_spaced() {
        let s = Schedule::constant(4.0, 2.0);
        assert_eq!(s.count(), 8);
        let due: Vec<f64> = (0..8).map(|k| s.due(k).expect("due")).collect();
        for (k, t) in due.iter().enumerate() {
            assert!(close(*t, k as f64 / 4.0), "{k}: {t}");
        }
        assert_eq!(s.due(8), None);
        assert!(close(s.value_at(1.3), 4.0));
    }

    #[test]
    fn a_ramp_sends_the_area_under_it_in_the_right_places() {
        // 0 → 10/s over 2 s: 10 events, the first half second only 0.625 of them.
        let s = Schedule::from_stages(&"2s:10".parse().expect("parses"));
        assert_eq!(s.count(), 10);
        assert!(close(s.total(), 10.0));
        assert!(close(s.value_at(1.0), 5.0));
        // area(t) = 2.5 t², so event k is due at sqrt(k / 2.5).
        for k in 0..10 {
            let t = s.due(k).expect("due");
            assert!(close(t, (k as f64 / 2.5).sqrt()), "{k}: {t}");
        }
        // Then a hold and a ramp down: 10 (ramp) + 20 (hold) + 5 (down to 0 over 1 s).
        let s = Schedule::from_stages(&"2s:10,2s:10,1s:0".parse().expect("parses"));
        assert_eq!(s.count(), 35);
        let t = s.due(30).expect("due");
        assert!(close(t, 4.0), "{t}");
        let last = s.due(34).expect("due");
        assert!(last > 4.0 && last <= 5.0, "{last}");
        let times: Vec<f64> = (0..35).map(|k| s.due(k).expect("due")).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "monotone: {times:?}"
        );
        assert_eq!(s.peak(), 10.0);
    }

    #[test]
    fn a_rate_for_a_count_makes_exactly_that_count() {
        for (n, rate) in [(21u64, 0.3), (3 * 7, 7.1), (1000, 3.3), (1, 1e-3)] {
            let s = Schedule::constant(rate, n as f64 / rate);
            assert_eq!(s.count(), n, "{n} at {rate}/s");
            assert!(s.due(n - 1).is_some() && s.due(n).is_none());
        }
    }

    #[test]
    fn a_step_is_a_zero_second_stage() {
        let s = Schedule::from_stages(&"0s:100,1s:100".parse().expect("parses"));
        assert_eq!(s.count(), 100);
        assert!(close(s.due(50).expect("due"), 0.5));
        assert!(close(s.value_at(0.0), 100.0));
    }
}
