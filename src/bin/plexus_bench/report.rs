//! Results: one scenario's figures, the whole run's report (JSON), tables for humans.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::cli::{CompareArgs, Sizes};
use super::procstat::ProcUsage;
use super::stats::Summary;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    pub unit: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    /// Why the scenario did not run (e.g. no second server for federation).
    pub skipped: Option<String>,
    /// What stopped it, if it failed.
    pub error: Option<String>,
    pub setup_seconds: f64,
    /// Length of the measured phase.
    pub measured_seconds: f64,
    /// The headline figures, in table order.
    pub metrics: Vec<Metric>,
    /// Full latency distributions, by name.
    pub latencies_ms: BTreeMap<String, Summary>,
    /// The server (and second server, and this tool) during the measured phase.
    pub server: Option<ProcUsage>,
    pub server2: Option<ProcUsage>,
    pub client: Option<ProcUsage>,
    pub notes: Vec<String>,
}

impl ScenarioResult {
    pub fn new(name: &str) -> Self {
        ScenarioResult { name: name.to_owned(), ..Default::default() }
    }

    pub fn metric(&mut self, key: &str, value: f64, unit: &str) {
        self.metrics.push(Metric { key: key.to_owned(), value, unit: unit.to_owned() });
    }

    /// Records a latency distribution; its p50, p90, p99 and max become metrics.
    pub fn latency(&mut self, key: &str, samples_ms: &[f64]) {
        let Some(s) = Summary::of(samples_ms) else {
            self.notes.push(format!("{key}: no samples"));
            return;
        };
        for (p, v) in [("p50", s.p50), ("p90", s.p90), ("p99", s.p99), ("max", s.max)] {
            self.metric(&format!("{key} {p}"), v, "ms");
        }
        self.latencies_ms.insert(key.to_owned(), s);
    }

    /// All rows of this scenario for a table: its metrics, then resource use.
    fn rows(&self) -> Vec<(String, String)> {
        if let Some(why) = &self.skipped {
            return vec![("skipped".into(), why.clone())];
        }
        let mut rows: Vec<(String, String)> =
            self.metrics.iter().map(|m| (m.key.clone(), format!("{} {}", number(m.value), m.unit))).collect();
        for (who, usage) in [("server", &self.server), ("server2", &self.server2)] {
            if let Some(u) = usage {
                rows.push((format!("{who} CPU"), format!("{} s ({} %)", number(u.cpu_seconds), number(u.cpu_percent))));
                rows.push((format!("{who} RSS peak"), format!("{} MiB", number(u.rss_peak_mb))));
            }
        }
        if let Some(u) = &self.client {
            rows.push(("bench client CPU".into(), format!("{} s", number(u.cpu_seconds))));
        }
        rows.push(("set-up time".into(), format!("{} s", number(self.setup_seconds))));
        if let Some(e) = &self.error {
            rows.push(("ERROR".into(), e.clone()));
        }
        rows
    }
}

/// The machine a run was made on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// 1-, 5- and 15-minute load averages when the run ended: other work on the machine.
    pub load_average: String,
}

impl Machine {
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_owned());
        let mem_kb: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kb / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub label: String,
    pub url: String,
    pub revision: Option<String>,
    pub note: Option<String>,
    pub machine: Machine,
    pub sizes: Sizes,
    /// The server's RSS before the first scenario.
    pub idle_rss_mb: Option<f64>,
    pub wall_seconds: f64,
    pub scenarios: Vec<ScenarioResult>,
}

/// A figure with as many decimals as its size deserves.
fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// Printed as soon as a scenario ends, so a long run shows progress.
pub fn print_result(result: &ScenarioResult) {
    for (key, value) in result.rows() {
        eprintln!("   {key:<28} {value}");
    }
}

pub fn print_table(report: &RunReport) {
    println!("\n{} ({})", report.label, report.url);
    if let Some(rss) = report.idle_rss_mb {
        println!("  idle RSS before the run: {} MiB", number(rss));
    }
    println!("  {:<14} {:<28} value", "scenario", "metric");
    for s in &report.scenarios {
        for (key, value) in s.rows() {
            println!("  {:<14} {key:<28} {value}", s.name);
        }
    }
}

/// `compare`: one Markdown table per scenario, one column per report.
pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let report: RunReport =
            serde_json::from_str(&text).with_context(|| format!("{} is not a plexus-bench report", path.display()))?;
        reports.push(report);
    }
    print!("{}", compare_markdown(&reports));
    Ok(())
}

fn compare_markdown(reports: &[RunReport]) -> String {
    let mut out = String::new();
    let header = |out: &mut String, first: &str| {
        let labels: Vec<&str> = reports.iter().map(|r| r.label.as_str()).collect();
        let _ = writeln!(out, "| {first} | {} |", labels.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(reports.len()));
    };
    let _ = writeln!(out, "### Run\n");
    header(&mut out, "");
    let cell = |f: &dyn Fn(&RunReport) -> String| reports.iter().map(f).collect::<Vec<_>>().join(" | ");
    let _ = writeln!(out, "| revision | {} |", cell(&|r| r.revision.clone().unwrap_or_else(|| "-".into())));
    let _ = writeln!(
        out,
        "| idle RSS | {} |",
        cell(&|r| r.idle_rss_mb.map_or("-".into(), |v| format!("{} MiB", number(v))))
    );
    let _ = writeln!(out, "| load average at end | {} |", cell(&|r| r.machine.load_average.clone()));
    let _ = writeln!(out, "| run time | {} |", cell(&|r| format!("{} s", number(r.wall_seconds))));

    let mut names: Vec<&str> = Vec::new();
    for r in reports {
        for s in &r.scenarios {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
    }
    for name in names {
        let results: Vec<Option<&ScenarioResult>> =
            reports.iter().map(|r| r.scenarios.iter().find(|s| s.name == name)).collect();
        let rows: Vec<Vec<(String, String)>> =
            results.iter().map(|s| s.map(|s| s.rows()).unwrap_or_default()).collect();
        let mut keys: Vec<&str> = Vec::new();
        for row in &rows {
            for (k, _) in row {
                if !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
        }
        let _ = writeln!(out, "\n### {name}\n");
        header(&mut out, "metric");
        for key in keys {
            let values: Vec<String> = rows
                .iter()
                .map(|row| row.iter().find(|(k, _)| k == key).map_or("-".into(), |(_, v)| v.replace('|', "/")))
                .collect();
            let _ = writeln!(out, "| {key} | {} |", values.join(" | "));
        }
        let notes: Vec<String> = reports
            .iter()
            .zip(&results)
            .flat_map(|(r, s)| {
                s.map(|s| s.notes.as_slice()).unwrap_or_default().iter().map(|n| format!("- {}: {n}", r.label))
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out, "\n{}", notes.join("\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, accepted: f64, notes: &[&str]) -> RunReport {
        let mut send = ScenarioResult::new("send");
        send.metric("accepted messages/s", accepted, "msg/s");
        send.notes = notes.iter().map(|n| n.to_string()).collect();
        let mut federation = ScenarioResult::new("federation");
        federation.skipped = Some("no --hs2".into());
        RunReport {
            label: label.into(),
            url: "http://127.0.0.1:1".into(),
            revision: Some("abc".into()),
            note: None,
            machine: Machine::detect(),
            sizes: crate::plexus_bench::cli::Sizes::quick(),
            idle_rss_mb: Some(10.0),
            wall_seconds: 1.0,
            scenarios: vec![send, federation],
        }
    }

    #[test]
    fn compare_puts_servers_side_by_side() {
        let md = compare_markdown(&[report("a", 1234.4, &["one room each"]), report("b", 12.0, &[])]);
        assert!(md.contains("| metric | a | b |"), "{md}");
        assert!(md.contains("| accepted messages/s | 1234 msg/s | 12.0 msg/s |"), "{md}");
        assert!(md.contains("| skipped | no --hs2 | no --hs2 |"), "{md}");
        assert!(md.contains("- a: one room each"), "{md}");
        assert!(md.contains("| idle RSS | 10.0 MiB | 10.0 MiB |"), "{md}");
    }
}
