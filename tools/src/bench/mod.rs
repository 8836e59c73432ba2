//! `enablement bench`: the service against the real PostgreSQL, Redis, broker and the bundled
//! MindTickle simulator, every figure reported as a ratio to a baseline measured in the same
//! run (shared machines drift; ratios hold).
//!
//! Each scenario gets its own database and unique tenant ids, starts the real service binary
//! as a child process, checks its own results (every event applied exactly once, zero limit
//! violations, identical figures) before it reports a number, and fails otherwise.
//!
//! - [`ingest`]: SCIM events/s against the raw database and broker ceilings and against one
//!   transaction per event.
//! - [`isolation`]: a quiet tenant's produce-to-commit latency while another floods.
//! - [`ratelimit`]: achieved upstream calls per minute against each tenant's quota.
//! - [`aggregate`]: a readiness aggregation through the service against the bare SQL.
//! - [`tenants`]: memory per idle tenant actor and the time to spawn them all; memory per
//!   passivated tenant and the time until 10,000 are assigned.
//! - [`scim`]: the SCIM provider's `GET ?filter=userName eq` and PATCH on 100,000 users
//!   against the bare SQL lookup and update of the same user.
//! - [`scaleout`]: three instances against one on the same ingest; latency of the tenants
//!   that do not move while an instance joins or dies.

mod aggregate;
mod harness;
mod ingest;
mod isolation;
mod ratelimit;
mod scaleout;
mod scim;
mod tenants;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use enablement::config::Config;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    All,
    Ingest,
    Isolation,
    Ratelimit,
    Aggregate,
    Tenants,
    Scaleout,
    Scim,
}

impl Scenario {
    fn each(self) -> Vec<Scenario> {
        match self {
            Scenario::All => vec![
                Scenario::Ingest,
                Scenario::Isolation,
                Scenario::Ratelimit,
                Scenario::Aggregate,
                Scenario::Tenants,
                Scenario::Scaleout,
                Scenario::Scim,
            ],
            one => vec![one],
        }
    }
    fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Ingest => "ingest",
            Scenario::Isolation => "isolation",
            Scenario::Ratelimit => "ratelimit",
            Scenario::Aggregate => "aggregate",
            Scenario::Tenants => "tenants",
            Scenario::Scaleout => "scaleout",
            Scenario::Scim => "scim",
        }
    }
}

/// Sizes: `full` is what BENCHMARKS.md reports; `smoke` keeps the harness honest in CI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    Full,
    Smoke,
}

pub struct BenchOptions {
    pub scenario: Scenario,
    pub size: Size,
    pub out: PathBuf,
    pub keep: bool,
}

/// One reported figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// `>= x` or `<= x` when the figure has a target.
    pub target: Option<String>,
    pub met: Option<bool>,
}

impl Figure {
    pub fn plain(name: &str, value: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            target: None,
            met: None,
        }
    }
    pub fn at_least(name: &str, value: f64, unit: &str, min: f64) -> Self {
        Self {
            target: Some(format!(">= {min}")),
            met: Some(value >= min),
            ..Self::plain(name, value, unit)
        }
    }
    pub fn at_most(name: &str, value: f64, unit: &str, max: f64) -> Self {
        Self {
            target: Some(format!("<= {max}")),
            met: Some(value <= max),
            ..Self::plain(name, value, unit)
        }
    }
}

/// What one scenario measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub size: String,
    pub seconds: f64,
    /// Self-checks that passed (a failed one aborts the scenario with an error).
    pub checks: Vec<String>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

pub(crate) struct Ctx<'a> {
    pub config: &'a Config,
    pub config_path: &'a Path,
    pub size: Size,
    pub keep: bool,
}

impl Ctx<'_> {
    pub fn smoke(&self) -> bool {
        self.size == Size::Smoke
    }
}

/// A self-check: passes with its description, or aborts the scenario.
pub(crate) fn check(ok: bool, what: impl Into<String>) -> Result<String, BenchError> {
    let what = what.into();
    if ok {
        Ok(what)
    } else {
        Err(BenchError(format!("self-check failed: {what}")))
    }
}

/// Runs the chosen scenarios, prints a table and writes the JSON report to `out`.
pub async fn run(
    config: &Config,
    config_path: &Path,
    opts: &BenchOptions,
) -> Result<Vec<ScenarioReport>, BenchError> {
    let ctx = Ctx {
        config,
        config_path,
        size: opts.size,
        keep: opts.keep,
    };
    let mut reports = Vec::new();
    for scenario in opts.scenario.each() {
        eprintln!("bench: {} ({:?})", scenario.name(), opts.size);
        let started = Instant::now();
        let mut report = match scenario {
            Scenario::Ingest => ingest::run(&ctx).await?,
            Scenario::Isolation => isolation::run(&ctx).await?,
            Scenario::Ratelimit => ratelimit::run(&ctx).await?,
            Scenario::Aggregate => aggregate::run(&ctx).await?,
            Scenario::Tenants => tenants::run(&ctx).await?,
            Scenario::Scaleout => scaleout::run(&ctx).await?,
            Scenario::Scim => scim::run(&ctx).await?,
            Scenario::All => unreachable_all(),
        };
        report.seconds = started.elapsed().as_secs_f64();
        print_report(&report);
        reports.push(report);
        write_json(&opts.out, &reports)?;
    }
    // A missed target fails the run (exit code 1), after the report is written. A smoke
    // run only proves the scenarios work: its sizes are too small for the targets.
    let missed: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.figures
                .iter()
                .filter(|f| f.met == Some(false))
                .map(move |f| {
                    format!(
                        "{}: {} = {:.3} (target {})",
                        r.scenario,
                        f.name,
                        f.value,
                        f.target.as_deref().unwrap_or("")
                    )
                })
        })
        .collect();
    if !missed.is_empty() && !ctx.smoke() {
        return Err(BenchError(format!("targets missed: {}", missed.join("; "))));
    }
    Ok(reports)
}

fn unreachable_all() -> ScenarioReport {
    // `Scenario::each` never yields `All`.
    ScenarioReport {
        scenario: "all".into(),
        size: String::new(),
        seconds: 0.0,
        checks: vec![],
        figures: vec![],
        notes: vec![],
    }
}

fn write_json(out: &Path, reports: &[ScenarioReport]) -> Result<(), BenchError> {
    let machine = machine();
    let doc = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine,
        "finishedAt": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "scenarios": reports,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(harness::fail)?;
    std::fs::write(out, text).map_err(|e| BenchError(format!("{}: {e}", out.display())))
}

/// CPU model, cores and memory of this machine (from /proc).
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    serde_json::json!({"cpu": model, "cores": cores, "memoryMiB": mem_kib / 1024})
}

fn print_report(r: &ScenarioReport) {
    println!("\n## {} ({}, {:.0} s)", r.scenario, r.size, r.seconds);
    println!("| figure | value | unit | target | met |");
    println!("|---|---:|---|---|---|");
    for f in &r.figures {
        println!(
            "| {} | {} | {} | {} | {} |",
            f.name,
            fmt_value(f.value),
            f.unit,
            f.target.as_deref().unwrap_or(""),
            match f.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    for c in &r.checks {
        println!("- checked: {c}");
    }
    for n in &r.notes {
        println!("- note: {n}");
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
