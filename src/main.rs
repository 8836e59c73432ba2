//! The `enablement` command line: `migrate`, `tenant`, `serve` and `events`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The service allocates and frees many short-lived buffers per batch (decoded records,
/// SCIM documents, bind messages); glibc's allocator spent about half the service's CPU
/// on them under load (`perf`, see BENCHMARKS.md), mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use enablement::actors::{TenantId, TopicKind};
use enablement::config::Config;
use enablement::db::{connect_pool, migrate, Registry};
use enablement::kafka::{push_events, tail_topic, TailOptions};

#[derive(Parser)]
#[command(
    name = "enablement",
    version,
    about = "Multi-tenant SCIM and MindTickle enablement service"
)]
struct Cli {
    /// Configuration file (every key overridable as ENABLEMENT__<SECTION>__<KEY>).
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations, create and restrict the service role.
    Migrate,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Run the service: supervisor, one actor per tenant, HTTP control endpoint.
    Serve {
        /// What this process runs: all (default), consumer (SCIM pipeline and upstream
        /// work), aggregator (readiness reports) or api (HTTP tenant routes). Every role
        /// serves /healthz, /readyz and /metrics on http.listen.
        #[arg(long, value_enum, default_value = "all")]
        role: enablement::config::Role,
    },
    /// Benchmark the service against baselines measured in the same run (needs PostgreSQL,
    /// Redis and the broker up: scripts/bench.sh brings them up first).
    Bench {
        #[arg(long, value_enum, default_value = "all")]
        scenario: enablement::bench::Scenario,
        /// `full` (the sizes BENCHMARKS.md reports) or `smoke` (seconds; what CI runs).
        #[arg(long, value_enum, default_value = "full")]
        size: enablement::bench::Size,
        /// Where the JSON report goes.
        #[arg(long, default_value = "bench-results.json")]
        out: PathBuf,
        /// Keep each scenario's database for inspection.
        #[arg(long)]
        keep: bool,
    },
    /// Produce to or read from a tenant's topics.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Register a tenant, create its topics and print its API token once.
    Add {
        /// Tenant id: ^[a-z0-9][a-z0-9-]{0,62}$
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// List registered tenants (no secrets).
    List,
    /// Suspend a tenant: its topic is unsubscribed (the actor drains and stops) and its
    /// cache namespace is deleted (SCAN, never KEYS). Data and topics are kept.
    Suspend { id: String },
    /// Re-activate a suspended tenant.
    Resume { id: String },
    /// Replace the tenant's API token and print the new one once; the old one stops
    /// working at once.
    RotateToken { id: String },
    /// Store the tenant's MindTickle client credentials; the secret is read from stdin
    /// (never from the command line, where `ps` would show it).
    SetUpstream {
        id: String,
        #[arg(long)]
        client_id: String,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Send JSON lines from stdin to tenant.<id>.scim.
    Push {
        #[arg(long)]
        tenant: String,
    },
    /// Print records of a tenant topic as JSON lines.
    Tail {
        #[arg(long)]
        tenant: String,
        /// scim, user_changed, events or dlq
        #[arg(long)]
        topic: String,
        /// Start at the oldest record instead of the end.
        #[arg(long)]
        from_beginning: bool,
        /// Exit at the end of the topic instead of waiting for more.
        #[arg(long)]
        exit: bool,
        /// Exit after this many records.
        #[arg(long)]
        limit: Option<usize>,
    },
}

fn tenant_arg(raw: &str) -> Result<TenantId, String> {
    TenantId::parse(raw).map_err(|e| format!("invalid tenant id: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    enablement::telemetry::init_logging(&config.log);
    match run(cli.command, config, &cli.config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config, config_path: &Path) -> Result<(), String> {
    match command {
        Command::Migrate => {
            let report = migrate(&config.postgres).await.map_err(|e| e.to_string())?;
            println!(
                "migrations applied: {}; already applied: {}",
                report.applied.len(),
                report.already_applied.len()
            );
            Ok(())
        }
        Command::Tenant { command } => {
            let pool = connect_pool(&config.postgres)
                .await
                .map_err(|e| e.to_string())?;
            let registry = Registry::new(pool);
            let suspend = matches!(command, TenantCommand::Suspend { .. });
            match command {
                TenantCommand::Add { id, name } => {
                    let tenant = tenant_arg(&id)?;
                    let r = enablement::tenants::register(&registry, &config.kafka, &tenant, &name)
                        .await
                        .map_err(|e| e.to_string())?;
                    eprintln!(
                        "tenant {} registered; topics: {}",
                        tenant,
                        r.topics.join(", ")
                    );
                    eprintln!("API token (shown once, store it now):");
                    println!("{}", r.api_token);
                    Ok(())
                }
                TenantCommand::SetUpstream { id, client_id } => {
                    let tenant = tenant_arg(&id)?;
                    let mut secret = String::new();
                    std::io::stdin()
                        .read_line(&mut secret)
                        .map_err(|e| e.to_string())?;
                    let secret = secret.trim();
                    if secret.is_empty() || client_id.trim().is_empty() {
                        return Err("client id and a secret on stdin are required".into());
                    }
                    let store = enablement::db::TenantScopedStore::new(registry.pool().clone());
                    let updated = store
                        .set_upstream_credentials(&tenant, client_id.trim(), secret)
                        .await
                        .map_err(|e| e.to_string())?;
                    if !updated {
                        return Err(format!("tenant {tenant} does not exist"));
                    }
                    eprintln!("upstream credentials of {tenant} stored");
                    Ok(())
                }
                TenantCommand::Suspend { id } | TenantCommand::Resume { id } => {
                    let tenant = tenant_arg(&id)?;
                    let status = if suspend { "suspended" } else { "active" };
                    if !registry
                        .set_status(&tenant, status)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        return Err(format!("tenant {tenant} does not exist"));
                    }
                    if suspend {
                        let cache = enablement::cache::RedisCache::new(&config.redis)
                            .map_err(|e| e.to_string())?;
                        match cache.invalidate_tenant(&tenant).await {
                            Ok(n) => eprintln!("removed {n} cached keys of {tenant}"),
                            Err(e) => {
                                eprintln!("warning: cache not cleared ({e}); entries expire by TTL")
                            }
                        }
                    }
                    eprintln!("tenant {tenant} is {status}");
                    Ok(())
                }
                TenantCommand::RotateToken { id } => {
                    let tenant = tenant_arg(&id)?;
                    let token = enablement::tokens::generate(&tenant);
                    let store = enablement::db::TenantScopedStore::new(registry.pool().clone());
                    let updated = store
                        .set_api_token_hash(&tenant, enablement::tokens::hash(&token))
                        .await
                        .map_err(|e| e.to_string())?;
                    if !updated {
                        return Err(format!("tenant {tenant} does not exist"));
                    }
                    eprintln!("API token of {tenant} replaced; the old one no longer works");
                    eprintln!("new API token (shown once, store it now):");
                    println!("{token}");
                    Ok(())
                }
                TenantCommand::List => {
                    for t in registry.list().await.map_err(|e| e.to_string())? {
                        println!("{}", serde_json::to_string(&t).map_err(|e| e.to_string())?);
                    }
                    Ok(())
                }
            }
        }
        Command::Serve { role } => enablement::service::serve(config, role)
            .await
            .map_err(|e| e.to_string()),
        Command::Bench {
            scenario,
            size,
            out,
            keep,
        } => {
            let opts = enablement::bench::BenchOptions {
                scenario,
                size,
                out,
                keep,
            };
            enablement::bench::run(&config, config_path, &opts)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Command::Events { command } => match command {
            EventsCommand::Push { tenant } => {
                let tenant = tenant_arg(&tenant)?;
                let stdin = tokio::io::BufReader::new(tokio::io::stdin());
                let n = push_events(&config.kafka, &tenant, stdin).await?;
                eprintln!(
                    "pushed {n} records to {}",
                    tenant.topic(&config.kafka.topic_prefix, TopicKind::Scim)
                );
                Ok(())
            }
            EventsCommand::Tail {
                tenant,
                topic,
                from_beginning,
                exit,
                limit,
            } => {
                let tenant = tenant_arg(&tenant)?;
                let kind = TopicKind::parse(&topic)
                    .ok_or("topic must be scim, user_changed, events or dlq")?;
                let opts = TailOptions {
                    from_beginning,
                    exit_at_end: exit,
                    limit,
                };
                let cfg = config.kafka.clone();
                tokio::task::spawn_blocking(move || {
                    tail_topic(&cfg, &tenant, kind, &opts, |v| println!("{v}"))
                })
                .await
                .map_err(|e| e.to_string())??;
                Ok(())
            }
        },
    }
}
