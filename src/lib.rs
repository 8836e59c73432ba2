//! The enablement service: adapters for the ports of [`enablement_actors`], the HTTP control
//! endpoint, configuration, metrics and the command line.
//!
//! Dependency points one way: this crate uses `enablement_actors`, never the reverse.
//! - [`bench`]: `enablement bench`, the benchmark scenarios against the real services.
//! - [`config`]: the TOML file plus `ENABLEMENT__<SECTION>__<KEY>` overrides, validated.
//! - [`db`]: migrations, the tenant registry and the RLS-scoped [`db::TenantScopedStore`].
//! - [`kafka`]: topic administration, the shared group consumer with one partition queue per
//!   tenant, the producer and the developer tools (`events push|tail`).
//! - [`cache`]: the per-tenant Redis namespace.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, the operator and tenant API.
//! - [`operations`]: the owners report, `enablement status`, dead-letter redrive.
//! - [`readiness`]: the analytics aggregator (team readiness reports, computed in SQL).
//! - [`scim`]: the SCIM 2.0 service provider per tenant (Users, Groups, discovery).
//! - [`retention`]: the background deletion of rows that have outlived their use.
//! - [`service`]: wiring for `serve`, its start-up preflight, and graceful shutdown.
//! - [`tls`]: rustls client settings (CA files, libpq verification levels) for the backends.

pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod http;
pub mod kafka;
pub mod operations;
pub mod quiz;
pub mod readiness;
pub mod retention;
pub mod scim;
pub mod sealing;
pub mod service;
pub mod signal;
pub mod telemetry;
pub mod tenants;
pub mod testing;
pub mod tls;
pub mod tokens;
pub mod upstream;

pub use enablement_actors as actors;
