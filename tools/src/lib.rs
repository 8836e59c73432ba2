//! Development tools of the enablement service, kept out of the service crate (which
//! compiles neither): the bundled MindTickle API [`simulator`] (`mindtickle-sim`, also run
//! in-process by the integration tests) and the [`bench`]mark (`enablement-bench`).
//!
//! Both use the service only through its public library: configuration, the database's
//! migrations and registry, the Kafka publisher and `enablement::testing`, the small API
//! for building a world (a fresh database, SCIM events, free ports) that the integration
//! tests share.

pub mod bench;
pub mod simulator;
pub mod tls_listener;
