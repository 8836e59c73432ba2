//! Tenant registration, shared by `enablement tenant add` and `POST /api/tenants`.
//!
//! Order matters: the id is validated and checked first (an existing tenant is an error
//! that changes nothing), the topics are created next (idempotent), and the registry row
//! and hashed token are written last, so a tenant is never visible without its topics.

use crate::actors::TenantId;
use crate::config::KafkaConfig;
use crate::db::{Registry, RegistryError, TenantRecord};
use crate::kafka::{create_tenant_topics, AdminError};
use crate::tokens;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Topics(#[from] AdminError),
}

pub struct Registered {
    pub tenant: TenantRecord,
    pub topics: Vec<String>,
    /// Shown once; only its SHA-256 is stored.
    pub api_token: String,
}

pub async fn register(
    registry: &Registry,
    kafka: &KafkaConfig,
    tenant: &TenantId,
    display_name: &str,
) -> Result<Registered, RegisterError> {
    if registry.exists(tenant).await? {
        return Err(RegistryError::Exists(tenant.clone()).into());
    }
    let topics = create_tenant_topics(kafka, tenant).await?;
    let api_token = tokens::generate(tenant);
    let record = registry
        .add(tenant, display_name, &tokens::hash(&api_token))
        .await?;
    tracing::info!(tenant = %tenant, "tenant registered");
    Ok(Registered {
        tenant: record,
        topics,
        api_token,
    })
}
