//! The `enablement` binary: parses the command line and hands it to [`enablement::cli`].

use std::process::ExitCode;

use clap::Parser;

/// The service allocates and frees many short-lived buffers per batch (decoded records,
/// SCIM documents, bind messages); glibc's allocator spent about half the service's CPU
/// on them under load (`perf`, see BENCHMARKS.md), mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = enablement::cli::Cli::parse();
    match enablement::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
