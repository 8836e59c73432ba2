//! PostgreSQL: migrations, the tenant registry and the RLS-scoped store.
//!
//! The service connects as an unprivileged role; every tenant table forces row-level
//! security keyed on the transaction-local setting `app.tenant_id`. [`TenantScopedStore`]
//! is the only code that sets it, and always inside the transaction that does the work
//! ([`crate::tenant_tx!`]).
//!
//! One module per concern holds all of that concern's SQL, as functions over a transaction:
//! - `scim`: the SCIM unit of work of a micro-batch and the `users` table; [`scim_filter`]:
//!   SCIM filters compiled into SQL over stored users; [`scim_provider`]: the SCIM
//!   provider's reads and its groups;
//! - [`outbox`]: the transactional outbox and its relay cursor;
//! - [`jobs`]: the durable upstream queue (every job enters through `jobs::enqueue`);
//! - `progress`: synced course progress; `secrets`: credentials and token hashes;
//! - [`schedule`]: readiness re-aggregation marks; `security`: security events;
//! - `registry`: the tenant registry (global, nothing secret); `migrate`; `signals`
//!   (cross-process wake-ups); `erase` (a tenant's erasure, as the owner); `connect`
//!   (URLs, TLS, the start-up privilege check); [`ops`] (owners, per-tenant operational
//!   figures, dead letters redriven).
//!
//! `store` implements the actors crate's ports by composing those functions, one scoped
//! transaction per call.

mod connect;
mod erase;
pub mod jobs;
mod migrate;
pub mod ops;
pub mod outbox;
pub mod progress;
mod registry;
pub mod schedule;
pub mod scim;
pub mod scim_filter;
pub mod scim_provider;
mod scoped;
mod secrets;
mod security;
mod signals;
pub mod statements;
mod store;

pub use connect::{ensure_least_privilege, PgTarget};
pub use erase::{erase_tenant, ErasedRows};
pub use migrate::{migrate, migrate_through, MigrateError, MigrationReport};
pub use registry::{Registry, RegistryError, RegistryLayout, TenantRecord};
pub use scoped::commit_pipelined;
pub(crate) use scoped::store_error;
pub use scoped::{TenantScopedStore, TxWork};
pub use signals::{listen_tenant_work, notify_tenant_work, TENANT_WORK_CHANNEL};

use std::time::Duration;

use crate::config::PostgresConfig;

/// The service role's pool; each connection carries its prepared statements.
pub type PgPool = bb8::Pool<statements::PgManager>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid postgres url: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    /// The configuration is wrong (TLS, credentials, privileges): retrying cannot help.
    #[error("{key}: {reason}")]
    Refused { key: String, reason: String },
}

impl DbError {
    /// True when the error is the configuration's (the process exits 2).
    pub fn is_configuration(&self) -> bool {
        matches!(self, DbError::Refused { .. } | DbError::Url(_))
    }
}

/// Opens the service role's pool. One connection is opened first, so a wrong URL, a TLS or
/// password mismatch or a stopped database fails the start with a clear message, and the
/// role is checked for least privilege ([`ensure_least_privilege`]).
pub async fn connect_pool(cfg: &PostgresConfig) -> Result<PgPool, DbError> {
    let target = PgTarget::new(cfg, &cfg.url, "postgres.url")?;
    let probe = target.connect().await?;
    ensure_least_privilege(&probe, "postgres.url").await?;
    drop(probe);
    let manager = statements::PgManager::new(
        target.pg.clone(),
        target.tls.clone(),
        cfg.statement_cache_capacity,
    );
    let pool = bb8::Pool::builder()
        .max_size(cfg.pool_max_size)
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .build(manager)
        .await
        .map_err(|e| DbError::Connect(redact(e)))?;
    pool.get().await.map_err(|e| DbError::Connect(redact(e)))?;
    Ok(pool)
}

/// Database errors rarely carry secrets, but URLs can: keep only the message text.
pub(crate) fn redact(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    match s.find("://") {
        Some(_) => "connection error (details withheld: they may contain credentials)".into(),
        None => s,
    }
}
