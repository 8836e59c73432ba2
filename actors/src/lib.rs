//! The actor system and the domain of the enablement service, free of I/O crates.
//!
//! Layers, top to bottom (checked by `scripts/module-graph.py` against `scripts/layers.txt`):
//! - [`tenants`]: the [`Tenants`] facade, the one handle the service uses to run, drain,
//!   wake and ask the tenants of a process. Owns the [`supervisor`].
//! - [`supervisor`]: spawns one [`TenantActor`] per assigned tenant; restart, park and drain
//!   decisions live in its plain `RestartPolicy`.
//! - [`tenant_actor`]: one actor per tenant over four plain parts: feeder, batch pipeline,
//!   outbox relay, job pump.
//! - Domain: [`scim`] (the SCIM event envelope, validation with stable reject codes, and the
//!   pure rules that fold events into user state and decide every follow-up), [`readiness`],
//!   [`upstream`] (the MindTickle port, per-tenant limiter), [`jobs`] (the durable upstream
//!   queue's model), [`ports`] (the traits the service's adapters implement) and [`events`]
//!   (internal events that log and count).
//! - Base: [`tenant`] (the validated [`TenantId`], the only constructor of a tenant id),
//!   [`backoff`], [`metric_names`] (every metric name, declared once), [`hostile`] (a seeded
//!   generator of hostile SCIM payloads for property and fuzz tests).
//!
//! Nothing here depends on rdkafka, redis, tokio-postgres, bb8 or reqwest, so the unit tests
//! run against in-memory fakes with a paused clock.

pub mod backoff;
pub mod events;
pub mod hostile;
pub mod jobs;
pub mod metric_names;
pub mod ports;
pub mod readiness;
pub mod scim;
pub mod supervisor;
pub mod tenant;
pub mod tenant_actor;
pub mod tenants;
pub mod untrusted;
pub mod upstream;

#[cfg(test)]
mod fakes;

pub use supervisor::{ActorStatus, Supervisor, SupervisorSettings, TenantHealth};
pub use tenant::{TenantId, TenantIdError, TopicKind};
pub use tenant_actor::{PipelineSettings, SyncError, TenantActor, TenantDeps};
pub use tenants::{Tenants, TenantsError, TenantsInbox, TenantsRuntime};
