//! The benchmark tool's parts: command line, HTTP client, /proc sampling, scenarios, reports.

pub mod cli;
pub mod client;
pub mod procstat;
pub mod report;
pub mod scenarios;
pub mod stats;

use std::time::Instant;

use anyhow::Context;

use cli::RunArgs;
use client::{Registration, Server};
use report::{Machine, RunReport};
use scenarios::Ctx;

/// Runs the chosen scenarios one after the other against the server(s) of `args`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let sizes = args.sizes();
    let registration = |secret: &Option<String>| match secret {
        Some(s) => Registration::SharedSecret(s.clone()),
        None => Registration::Open,
    };
    let server = Server::new(&args.hs, registration(&args.shared_secret))?;
    server.check_up().await.with_context(|| format!("{} does not answer", args.hs))?;
    let server2 = match &args.hs2 {
        Some(url) => {
            let s = Server::new(url, registration(&args.hs2_shared_secret))?;
            s.check_up().await.with_context(|| format!("{url} does not answer"))?;
            Some(s)
        }
        None => None,
    };
    let label = args.label.clone().unwrap_or_else(|| args.hs.clone());
    let idle_rss_mb = args.pid.and_then(procstat::rss_mb);
    let ctx = Ctx::new(server, server2, sizes.clone(), args.pid, args.pid2, args.setup_concurrency);
    eprintln!("plexus-bench: {label} at {} (run id {})", args.hs, ctx.run_id);

    let started = Instant::now();
    let mut results = Vec::new();
    for scenario in &args.scenarios {
        eprintln!("== {}", scenario.name());
        let result = scenarios::run_one(&ctx, *scenario).await;
        report::print_result(&result);
        results.push(result);
    }
    let report = RunReport {
        label,
        url: args.hs.clone(),
        revision: args.revision.clone(),
        note: args.note.clone(),
        machine: Machine::detect(),
        sizes,
        idle_rss_mb,
        wall_seconds: started.elapsed().as_secs_f64(),
        scenarios: results,
    };
    report::print_table(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
