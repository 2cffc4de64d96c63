//! `plexus-bench`: load scenarios against any Matrix homeserver, over the client-server API
//! only, so that one run measures Plexus and Synapse alike. See docs/benchmarks.md.

mod plexus_bench;

use clap::Parser;

use plexus_bench::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(plexus_bench::run(*args))
        }
        Command::Compare(args) => plexus_bench::report::compare(&args),
    }
}
