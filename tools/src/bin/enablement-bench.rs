//! `enablement-bench`: the benchmark scenarios against the real PostgreSQL, Redis, broker and
//! the `enablement` binary next to this one (see `enablement_tools::bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use enablement::config::Config;
use enablement_tools::bench::{run, BenchOptions, Scenario, Size};

/// Benchmark the service against baselines measured in the same run (needs PostgreSQL,
/// Redis and the broker up: scripts/bench.sh brings them up first).
#[derive(Parser)]
#[command(name = "enablement-bench", version)]
struct Args {
    /// Configuration file of the service under test.
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// `full` (the sizes BENCHMARKS.md reports) or `smoke` (seconds; what CI runs).
    #[arg(long, value_enum, default_value = "full")]
    size: Size,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Keep each scenario's database for inspection.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    enablement::telemetry::init_logging(&config.log);
    let opts = BenchOptions {
        scenario: args.scenario,
        size: args.size,
        out: args.out,
        keep: args.keep,
    };
    match run(&config, &args.config, &opts).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
