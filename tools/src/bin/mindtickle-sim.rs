//! `mindtickle-sim`: the bundled MindTickle REST API simulator (see `enablement::simulator`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use enablement_tools::simulator::{run_with_tls, Faults, SimSettings};

#[derive(Parser)]
#[command(
    name = "mindtickle-sim",
    version,
    about = "Simulator of the MindTickle REST API"
)]
struct Args {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:4010")]
    listen: SocketAddr,
    /// Sustained requests per minute per organisation.
    #[arg(long, default_value_t = 60)]
    rate_per_min: u32,
    /// Burst per organisation.
    #[arg(long, default_value_t = 4)]
    burst: u32,
    /// Token lifetime in simulated seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl_s: u64,
    /// Simulated seconds per real second (speeds up token expiry).
    #[arg(long, default_value_t = 1.0)]
    clock_speed: f64,
    /// Latency added to every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Answer everything 429 for this long after start.
    #[arg(long, default_value_t = 0)]
    force_429_for_ms: u64,
    /// Retry-After seconds of forced 429s.
    #[arg(long, default_value_t = 1)]
    retry_after_s: u64,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    if !(0.0..=1.0).contains(&a.error_rate) || a.clock_speed <= 0.0 {
        eprintln!("error: --error-rate must be within 0..1 and --clock-speed positive");
        return std::process::ExitCode::from(2);
    }
    let settings = SimSettings {
        listen: a.listen,
        rate_per_min: a.rate_per_min,
        burst: a.burst,
        token_ttl: Duration::from_secs(a.token_ttl_s),
        clock_speed: a.clock_speed,
        faults: Faults {
            latency_ms: a.latency_ms,
            error_rate: a.error_rate,
            force_429_for_ms: a.force_429_for_ms,
            retry_after_s: a.retry_after_s,
        },
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => match (std::fs::read(c), std::fs::read(k)) {
            (Ok(c), Ok(k)) => Some((c, k)),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: --tls-cert/--tls-key: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        _ => None,
    };
    match run_with_tls(settings, tls).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
