//! The `enablement` command line: `migrate`, `tenant`, `serve`, `events` and `status`.
//!
//! This module only parses and prints: each command calls one application function
//! (`db::migrate`, `tenants::*`, `service::serve`, `kafka::push_events|tail_topic`) and every
//! failure becomes one [`AppError`], whose exit code `main` returns (2: configuration or
//! usage, 1: anything else).

mod error;
mod progress;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use error::AppError;

use crate::actors::{TenantId, TopicKind};
use crate::config::Config;
use crate::db::{connect_pool, migrate, Registry, TenantScopedStore};
use crate::kafka::{push_events, tail_topic, TailOptions};
use crate::tenants::{self, CacheCleared};

#[derive(Parser)]
#[command(
    name = "enablement",
    version,
    about = "Multi-tenant SCIM and MindTickle enablement service"
)]
pub struct Cli {
    /// Configuration file (every key overridable as ENABLEMENT__<SECTION>__<KEY>).
    #[arg(long, global = true, default_value = "config.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        role: crate::config::Role,
    },
    /// Produce to or read from a tenant's topics.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Every tenant in one table: state, owning instance, lag, events and dead letters of
    /// the last hour, upstream queue by priority, outbox backlog, last readiness report.
    Status {
        /// One JSON array instead of the table (for scripts).
        #[arg(long)]
        json: bool,
        /// Refresh every N seconds (default 2) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Tenant secrets at rest (sealed with `secrets.keys`).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Re-seal every tenant's MindTickle secret with the first key of secrets.keys (and
    /// seal any left in plaintext by an older version). Run it after putting a new key
    /// first; then the old key can be removed.
    RotateKey,
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Register a tenant, create its topics and print its API token once; or many, from a
    /// CSV file of `tenant_id,display_name` lines (tokens printed as `tenant_id,token`).
    Add {
        /// Tenant id: ^[a-z0-9][a-z0-9-]{0,62}$
        #[arg(required_unless_present = "from_csv")]
        id: Option<String>,
        /// Display name.
        #[arg(long, required_unless_present = "from_csv")]
        name: Option<String>,
        /// Register every tenant of this CSV file (checked whole first; topics in batches,
        /// progress on stderr). `-` reads stdin.
        #[arg(long, conflicts_with_all = ["id", "name"])]
        from_csv: Option<PathBuf>,
        /// Keep the tenant's records on the shared topics (shared.scim, ...), keyed by its
        /// id, instead of four topics of its own: for many small tenants. Fixed at
        /// registration.
        #[arg(long)]
        shared_topics: bool,
    },
    /// List registered tenants (no secrets).
    List,
    /// Suspend a tenant: its topic is unsubscribed (the actor drains and stops) and its
    /// cache namespace is deleted (SCAN, never KEYS). Data and topics are kept.
    Suspend { id: String },
    /// Erase a tenant: every row (users, progress, secrets, queues, reports), its cache
    /// namespace and its topics; an audit record stays. Needs --erase and --confirm <id>.
    Delete {
        id: String,
        /// Remove the tenant's data (the only mode: a registered tenant is never half-deleted).
        #[arg(long)]
        erase: bool,
        /// The tenant id again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Re-activate a suspended tenant.
    Resume { id: String },
    /// Replace the tenant's API token and print the new one once; the old one stops
    /// working at once.
    RotateToken { id: String },
    /// Enable the tenant's SCIM 2.0 provider (`/scim/v2/<id>/`) or replace its SCIM token;
    /// prints the new token once (give it to the identity provider). The old one stops
    /// working at once here and within 5 s on every other instance.
    ScimToken { id: String },
    /// Store the tenant's MindTickle client credentials; the secret is read from stdin
    /// (never from the command line, where `ps` would show it).
    SetUpstream {
        id: String,
        #[arg(long)]
        client_id: String,
    },
}

#[derive(Subcommand)]
pub enum EventsCommand {
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
    /// Republish a tenant's dead letters to its inbound topic (original key, bytes and
    /// headers; `dlq.*` removed, `redrive.source.offset` added) once their cause is fixed.
    /// Each dead letter is redriven once: running it again republishes nothing.
    Redrive {
        #[arg(long)]
        tenant: String,
        /// Only dead letters of this reason (the `dlq.reason` header, e.g. oversized).
        #[arg(long)]
        reason: Option<String>,
        /// Start at this offset of the DLQ topic (default: its oldest record).
        #[arg(long)]
        from_offset: Option<i64>,
        /// Show what would be redriven; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn tenant_arg(raw: &str) -> Result<TenantId, AppError> {
    TenantId::parse(raw).map_err(|e| AppError::Usage(format!("invalid tenant id: {e}")))
}

/// Loads the configuration, starts logging and runs the command.
pub async fn run(cli: Cli) -> Result<(), AppError> {
    let config = Config::load(&cli.config)?;
    crate::telemetry::init_logging(&config.log);
    match cli.command {
        Command::Migrate => {
            let report = migrate(&config.postgres).await?;
            println!(
                "migrations applied: {}; already applied: {}",
                report.applied.len(),
                report.already_applied.len()
            );
            Ok(())
        }
        Command::Tenant { command } => tenant(command, &config).await,
        Command::Serve { role } => Ok(crate::service::serve(config, role).await?),
        Command::Events { command } => events(command, &config).await,
        Command::Status { json, watch } => {
            let registry = Registry::new(connect_pool(&config.postgres).await?);
            status::run(&registry, json, watch).await
        }
        Command::Secrets {
            command: SecretsCommand::RotateKey,
        } => {
            let registry = Registry::new(connect_pool(&config.postgres).await?);
            let sealer = crate::sealing::SecretSealer::shared(config.secrets.keys.expose())
                .map_err(|e| AppError::Usage(e.to_string()))?;
            let key_id = sealer
                .active_key_id()
                .ok_or_else(|| AppError::Usage("secrets.keys is not set".into()))?
                .to_owned();
            let store = TenantScopedStore::new(registry.pool().clone(), sealer);
            let n = tenants::reseal_secrets(&registry, &store).await?;
            println!("{n} tenant secrets sealed with key {key_id}");
            Ok(())
        }
    }
}

async fn tenant(command: TenantCommand, config: &Config) -> Result<(), AppError> {
    let registry = Registry::new(connect_pool(&config.postgres).await?);
    let sealer = crate::sealing::SecretSealer::shared(config.secrets.keys.expose())
        .map_err(|e| AppError::Usage(e.to_string()))?;
    let store = TenantScopedStore::new(registry.pool().clone(), sealer);
    match command {
        TenantCommand::Add {
            id,
            name,
            from_csv,
            shared_topics,
        } => {
            let topics = match shared_topics {
                true => tenants::Topics::Shared,
                false => tenants::Topics::Dedicated,
            };
            if let Some(path) = from_csv {
                return add_from_csv(&registry, config, &path, topics).await;
            }
            let (Some(id), Some(name)) = (id, name) else {
                return Err(AppError::Usage("tenant id and --name are required".into()));
            };
            let tenant = tenant_arg(&id)?;
            let r = tenants::register(&registry, &config.kafka, &tenant, &name, topics).await?;
            eprintln!(
                "tenant {tenant} registered; topics: {}",
                r.topics.join(", ")
            );
            eprintln!("API token (shown once, store it now):");
            println!("{}", r.api_token);
        }
        TenantCommand::SetUpstream { id, client_id } => {
            let tenant = tenant_arg(&id)?;
            let mut secret = String::new();
            std::io::stdin().read_line(&mut secret)?;
            tenants::set_upstream(&store, &tenant, &client_id, &secret).await?;
            eprintln!("upstream credentials of {tenant} stored");
        }
        TenantCommand::Suspend { id } => {
            let tenant = tenant_arg(&id)?;
            match tenants::set_suspended(&registry, &config.redis, &tenant, true).await? {
                Some(CacheCleared::Removed(n)) => eprintln!("removed {n} cached keys of {tenant}"),
                Some(CacheCleared::Failed(e)) => {
                    eprintln!("warning: cache not cleared ({e}); entries expire by TTL")
                }
                None => {}
            }
            eprintln!("tenant {tenant} is suspended");
        }
        TenantCommand::Delete { id, erase, confirm } => {
            let tenant = tenant_arg(&id)?;
            if !erase || confirm.as_deref() != Some(tenant.as_str()) {
                return Err(AppError::Usage(format!(
                    "tenant delete erases all of a tenant's data: repeat it as `tenant delete {tenant} --erase --confirm {tenant}`"
                )));
            }
            let erased = tenants::erase(&registry, config, &tenant).await?;
            let total: u64 = erased.rows.values().sum();
            eprintln!("erased {total} rows of {tenant}: {:?}", erased.rows);
            match erased.cache {
                CacheCleared::Removed(n) => eprintln!("removed {n} cached keys"),
                CacheCleared::Failed(e) => {
                    eprintln!("warning: cache not cleared ({e}); entries expire by TTL")
                }
            }
            match erased.topics {
                Ok(t) => eprintln!("deleted topics: {}", t.join(", ")),
                Err(e) => eprintln!("warning: topics not deleted ({e}); delete them by hand"),
            }
            println!("tenant {tenant} erased");
        }
        TenantCommand::Resume { id } => {
            let tenant = tenant_arg(&id)?;
            tenants::set_suspended(&registry, &config.redis, &tenant, false).await?;
            eprintln!("tenant {tenant} is active");
        }
        TenantCommand::RotateToken { id } => {
            let tenant = tenant_arg(&id)?;
            let token = tenants::rotate_token(&store, &tenant).await?;
            eprintln!("API token of {tenant} replaced; the old one no longer works");
            eprintln!("new API token (shown once, store it now):");
            println!("{token}");
        }
        TenantCommand::ScimToken { id } => {
            let tenant = tenant_arg(&id)?;
            let token = tenants::rotate_scim_token(&store, &tenant).await?;
            eprintln!("SCIM token of {tenant} set; a previous one no longer works");
            eprintln!(
                "SCIM base URL: <service>/scim/v2/{tenant}/  (token shown once, store it now):"
            );
            println!("{token}");
        }
        TenantCommand::List => {
            for t in registry.list().await? {
                println!(
                    "{}",
                    serde_json::to_string(&t).map_err(|e| AppError::Output(e.to_string()))?
                );
            }
        }
    }
    Ok(())
}

/// `tenant add --from-csv`: checks the whole file, then registers in chunks of
/// `CSV_CHUNK` (topics in batches through one admin client, then rows), reporting progress
/// on stderr and printing `tenant_id,token` lines on stdout. A chunk that fails stops the
/// run; the chunks before it stay registered (rerun with the rest of the file).
async fn add_from_csv(
    registry: &Registry,
    config: &Config,
    path: &std::path::Path,
    topics: tenants::Topics,
) -> Result<(), AppError> {
    const CSV_CHUNK: usize = 500;
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path)?
    };
    let rows = tenants::parse_tenant_csv(&text)?;
    let progress = progress::Progress::new(rows.len(), "tenants registered");
    let mut done = 0;
    progress.set(done);
    for chunk in rows.chunks(CSV_CHUNK) {
        for (t, token) in tenants::register_many(registry, &config.kafka, chunk, topics).await? {
            println!("{t},{token}");
        }
        done += chunk.len();
        progress.set(done);
    }
    Ok(())
}

/// Whether the tenant lives on the shared topics (a tenant the registry does not know is
/// taken to have its own topics).
async fn on_shared_topics(config: &Config, tenant: &TenantId) -> Result<bool, AppError> {
    let registry = Registry::new(connect_pool(&config.postgres).await?);
    Ok(registry
        .list()
        .await?
        .iter()
        .any(|t| &t.tenant_id == tenant && t.shared_topics))
}

async fn events(command: EventsCommand, config: &Config) -> Result<(), AppError> {
    match command {
        EventsCommand::Push { tenant } => {
            let tenant = tenant_arg(&tenant)?;
            let shared = on_shared_topics(config, &tenant).await?;
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let n = push_events(&config.kafka, &tenant, shared, stdin)
                .await
                .map_err(AppError::Events)?;
            let layout = crate::kafka::TopicLayout::new(&config.kafka);
            if shared {
                layout.add_shared(tenant.clone());
            }
            let place = layout.place(&tenant, TopicKind::Scim);
            eprintln!(
                "pushed {n} records to {} partition {}",
                place.topic, place.partition
            );
        }
        EventsCommand::Tail {
            tenant,
            topic,
            from_beginning,
            exit,
            limit,
        } => {
            let tenant = tenant_arg(&tenant)?;
            let kind = TopicKind::parse(&topic).ok_or_else(|| {
                AppError::Usage("topic must be scim, user_changed, events or dlq".into())
            })?;
            let opts = TailOptions {
                shared_topics: on_shared_topics(config, &tenant).await?,
                from_beginning,
                exit_at_end: exit,
                limit,
            };
            let cfg = config.kafka.clone();
            tokio::task::spawn_blocking(move || {
                tail_topic(&cfg, &tenant, kind, &opts, |v| println!("{v}"))
            })
            .await
            .map_err(|e| AppError::Events(e.to_string()))?
            .map_err(AppError::Events)?;
        }
        EventsCommand::Redrive {
            tenant,
            reason,
            from_offset,
            dry_run,
        } => {
            let tenant = tenant_arg(&tenant)?;
            if from_offset.is_some_and(|o| o < 0) {
                return Err(AppError::Usage("--from-offset must be 0 or more".into()));
            }
            let shared = on_shared_topics(config, &tenant).await?;
            let pool = connect_pool(&config.postgres).await?;
            let sealer = crate::sealing::SecretSealer::shared(config.secrets.keys.expose())
                .map_err(|e| AppError::Usage(e.to_string()))?;
            let store = TenantScopedStore::new(pool, sealer);
            let filter = crate::operations::RedriveFilter {
                reason,
                from_offset,
                dry_run,
            };
            let items = crate::operations::redrive(&config.kafka, &store, &tenant, shared, &filter)
                .await
                .map_err(|e| AppError::Events(e.to_string()))?;
            let mut counts = std::collections::BTreeMap::<&str, usize>::new();
            for item in &items {
                println!("{}", serde_json::to_string(item).unwrap_or_default());
                *counts.entry(item.outcome).or_default() += 1;
            }
            eprintln!(
                "{} dead letters read: {}",
                items.len(),
                counts
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}
