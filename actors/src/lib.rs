//! The actor system and the domain of the enablement service, free of I/O crates.
//!
//! What lives here:
//! - [`tenant`]: the validated [`TenantId`] and the per-tenant topic and cache names derived
//!   from it (the only constructor of a tenant id anywhere in the service).
//! - [`scim`]: the SCIM event envelope, its validation into typed events or a
//!   [`scim::Rejection`], and the pure rules that fold events into stored user state.
//! - [`ports`]: the traits the service's adapters implement (store, cache, feed, publisher).
//! - [`tenant_actor`]: one [`TenantActor`] per tenant, pulling its own partition feed in
//!   micro-batches with high/low-water backpressure.
//! - [`supervisor`]: the [`Supervisor`] that spawns, restarts (capped backoff), parks and
//!   drains tenant actors.
//! - [`readiness`]: the team readiness report and the rule that makes one provisional.
//! - [`hostile`]: a seeded generator of hostile SCIM payloads for property and fuzz tests.
//! - [`metric_names`]: every metric name the service emits, declared once.
//!
//! Nothing here depends on rdkafka, redis, tokio-postgres, bb8 or reqwest, so the unit tests
//! run against in-memory fakes with a paused clock.

pub mod backoff;
pub mod hostile;
pub mod metric_names;
pub mod ports;
pub mod readiness;
pub mod scim;
pub mod supervisor;
pub mod tenant;
pub mod tenant_actor;
pub mod upstream;

#[cfg(test)]
mod fakes;

pub use supervisor::{Supervisor, SupervisorMsg, SupervisorSettings, TenantHealth};
pub use tenant::{TenantId, TenantIdError, TopicKind};
pub use tenant_actor::{PipelineSettings, TenantActor, TenantDeps, TenantMsg};
