//! Broker process figures from `/proc`: resident memory and CPU time.

use std::sync::OnceLock;

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `utime + stime` of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when it cannot be asked).
pub fn ticks_per_sec() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// A before/after sample of several broker processes.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub rss_kib: Vec<Option<u64>>,
    pub cpu_ticks: Vec<Option<u64>>,
}

impl Sample {
    pub fn take(pids: &[u32]) -> Sample {
        Sample {
            rss_kib: pids.iter().map(|p| rss_kib(*p)).collect(),
            cpu_ticks: pids.iter().map(|p| cpu_ticks(*p)).collect(),
        }
    }

    pub fn total_rss_kib(&self) -> u64 {
        self.rss_kib.iter().flatten().sum()
    }

    /// CPU milliseconds spent by all processes between `self` and `later`.
    pub fn cpu_ms_until(&self, later: &Sample) -> f64 {
        let ticks: u64 = self
            .cpu_ticks
            .iter()
            .zip(&later.cpu_ticks)
            .filter_map(|(a, b)| Some(b.as_ref()?.saturating_sub(*a.as_ref()?)))
            .sum();
        ticks as f64 * 1000.0 / ticks_per_sec() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tbroker\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        let stat = "4242 (bro ker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|r| r > 0));
        assert!(cpu_ticks(me).is_some());
        let a = Sample::take(&[me]);
        let b = Sample::take(&[me]);
        assert!(a.cpu_ms_until(&b) >= 0.0);
    }
}
