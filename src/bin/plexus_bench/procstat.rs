//! RSS and CPU time of a process, sampled from /proc while a scenario runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Resident set size in MiB, from /proc/PID/status.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// User plus system CPU seconds used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces;
    // utime and stime are fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// What a process used during one scenario's measured phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcUsage {
    pub pid: u32,
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    /// CPU seconds per wall second, in percent of one core.
    pub cpu_percent: f64,
    pub rss_start_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_end_mb: f64,
}

/// Samples one process in the background until `finish`.
pub struct Sampler {
    pid: u32,
    started: Instant,
    cpu_start: f64,
    rss_start: f64,
    peak: Arc<Mutex<f64>>,
    task: JoinHandle<()>,
}

impl Sampler {
    /// None when the process cannot be read (gone, or not on this machine).
    pub fn start(pid: u32) -> Option<Sampler> {
        let cpu_start = cpu_seconds(pid)?;
        let rss_start = rss_mb(pid)?;
        let peak = Arc::new(Mutex::new(rss_start));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    let Some(rss) = rss_mb(pid) else { return };
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = p.max(rss);
                }
            }
        });
        Some(Sampler { pid, started: Instant::now(), cpu_start, rss_start, peak, task })
    }

    pub fn finish(self) -> Option<ProcUsage> {
        self.task.abort();
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(self.pid)? - self.cpu_start;
        let rss_end = rss_mb(self.pid)?;
        let peak = self.peak.lock().unwrap_or_else(|e| e.into_inner()).max(rss_end);
        Some(ProcUsage {
            pid: self.pid,
            wall_seconds: wall,
            cpu_seconds: cpu,
            cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
            rss_start_mb: self.rss_start,
            rss_peak_mb: peak,
            rss_end_mb: rss_end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_mb(pid).is_some_and(|r| r > 0.0));
        assert!(cpu_seconds(pid).is_some_and(|c| c >= 0.0));
        assert!(rss_mb(u32::MAX).is_none());
    }
}
