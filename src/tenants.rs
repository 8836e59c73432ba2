//! Tenant administration: the application functions behind `enablement tenant ...` and the
//! operator routes of the HTTP API (registration), in one place.
//!
//! Registration order matters: the id is validated and checked first (an existing tenant is
//! an error that changes nothing), the topics are created next (idempotent), and the
//! registry row and hashed token are written last, so a tenant is never visible without its
//! topics.

use crate::actors::ports::StoreError;
use crate::actors::TenantId;
use crate::cache::RedisCache;
use crate::config::{KafkaConfig, RedisConfig};
use crate::db::{Registry, RegistryError, TenantRecord, TenantScopedStore};
use crate::kafka::{create_shared_topics, create_tenant_topics, create_topics_for, AdminError};
use crate::tokens;

#[derive(Debug, thiserror::Error)]
pub enum TenantAdminError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Topics(#[from] AdminError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant {0} does not exist")]
    NotFound(TenantId),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("erasure failed, nothing was deleted: {0}")]
    Erase(String),
    #[error("nothing registered: {0}")]
    Csv(String),
}

pub struct Registered {
    pub tenant: TenantRecord,
    pub topics: Vec<String>,
    /// Shown once; only its SHA-256 is stored.
    pub api_token: String,
}

/// Where a registered tenant's records live (see [`crate::kafka::TopicLayout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topics {
    /// Its own four topics (the default).
    #[default]
    Dedicated,
    /// The shared topics, keyed by its id (many small tenants).
    Shared,
}

impl Topics {
    fn shared(self) -> bool {
        self == Topics::Shared
    }
}

/// Registers a tenant: topics (its own, or the shared ones), then the registry row and
/// its hashed API token.
pub async fn register(
    registry: &Registry,
    kafka: &KafkaConfig,
    tenant: &TenantId,
    display_name: &str,
    topics: Topics,
) -> Result<Registered, TenantAdminError> {
    if registry.exists(tenant).await? {
        return Err(RegistryError::Exists(tenant.clone()).into());
    }
    let topic_names = match topics {
        Topics::Dedicated => create_tenant_topics(kafka, tenant).await?,
        Topics::Shared => create_shared_topics(kafka).await?,
    };
    let api_token = tokens::generate(tenant);
    let record = registry
        .add(
            tenant,
            display_name,
            &tokens::hash(&api_token),
            topics.shared(),
        )
        .await?;
    tracing::info!(tenant = %tenant, "tenant registered");
    Ok(Registered {
        tenant: record,
        topics: topic_names,
        api_token,
    })
}

/// Registers many tenants at once (thousands): every id checked first (an existing one
/// is an error that changes nothing), then all their topics through one admin client in
/// batches, then the registry rows and hashed tokens. Returns each tenant's API token.
pub async fn register_many(
    registry: &Registry,
    kafka: &KafkaConfig,
    tenants: &[(TenantId, String)],
    topics: Topics,
) -> Result<Vec<(TenantId, String)>, TenantAdminError> {
    let known: std::collections::HashSet<TenantId> = registry
        .list()
        .await?
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    if let Some((t, _)) = tenants.iter().find(|(t, _)| known.contains(t)) {
        return Err(RegistryError::Exists(t.clone()).into());
    }
    match topics {
        Topics::Dedicated => {
            let ids: Vec<TenantId> = tenants.iter().map(|(t, _)| t.clone()).collect();
            create_topics_for(kafka, &ids).await?;
        }
        Topics::Shared => {
            create_shared_topics(kafka).await?;
        }
    }
    let mut out = Vec::with_capacity(tenants.len());
    for (t, name) in tenants {
        let api_token = tokens::generate(t);
        registry
            .add(t, name, &tokens::hash(&api_token), topics.shared())
            .await?;
        out.push((t.clone(), api_token));
    }
    tracing::info!(tenants = tenants.len(), "tenants registered");
    Ok(out)
}

/// Reads `tenant_id,display_name` lines (`tenant add --from-csv`; a first line
/// `tenant_id,...` is a header; blank lines are skipped; the display name is the rest of
/// the line, commas included). Every line is checked before anything is registered: the
/// error names each bad line (at most 20) and never echoes an invalid id.
pub fn parse_tenant_csv(text: &str) -> Result<Vec<(TenantId, String)>, TenantAdminError> {
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("tenant_id")) {
            continue;
        }
        let (id, name) = line.split_once(',').unwrap_or((line, ""));
        let name = name.trim().trim_matches('"').trim();
        match TenantId::parse(id.trim()) {
            Err(e) => bad.push(format!("line {}: {e}", i + 1)),
            Ok(_) if name.is_empty() || name.chars().count() > 200 => bad.push(format!(
                "line {}: display name must be 1 to 200 characters",
                i + 1
            )),
            Ok(t) if !seen.insert(t.clone()) => {
                bad.push(format!("line {}: tenant {t} appears twice", i + 1))
            }
            Ok(t) => rows.push((t, name.to_owned())),
        }
    }
    if !bad.is_empty() {
        let more = bad.len().saturating_sub(20);
        bad.truncate(20);
        if more > 0 {
            bad.push(format!("and {more} more"));
        }
        return Err(TenantAdminError::Csv(bad.join("; ")));
    }
    Ok(rows)
}

/// Re-seals every tenant's MindTickle secret with the active key (`secrets rotate-key`),
/// one tenant-scoped transaction each. Returns how many secrets were re-sealed.
pub async fn reseal_secrets(
    registry: &Registry,
    store: &TenantScopedStore,
) -> Result<usize, TenantAdminError> {
    let mut n = 0;
    for t in registry.list().await? {
        if store.reseal_upstream_secret(&t.tenant_id).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// Stores the tenant's MindTickle client credentials (in its RLS-protected secrets row).
pub async fn set_upstream(
    store: &TenantScopedStore,
    tenant: &TenantId,
    client_id: &str,
    secret: &str,
) -> Result<(), TenantAdminError> {
    let (client_id, secret) = (client_id.trim(), secret.trim());
    if client_id.is_empty() || secret.is_empty() {
        return Err(TenantAdminError::Invalid(
            "client id and a secret on stdin are required",
        ));
    }
    if !store
        .set_upstream_credentials(tenant, client_id, secret)
        .await?
    {
        return Err(TenantAdminError::NotFound(tenant.clone()));
    }
    Ok(())
}

/// What suspending a tenant did to its cache namespace.
pub enum CacheCleared {
    /// Keys removed (by SCAN, never KEYS).
    Removed(u64),
    /// Redis did not answer: the entries expire by TTL.
    Failed(String),
}

/// Suspends a tenant (its topic is unsubscribed by every consumer within
/// `kafka.tenant_refresh_ms`, its routes answer 403, its cache namespace is cleared) or
/// resumes it. `None` for a resume.
pub async fn set_suspended(
    registry: &Registry,
    redis: &RedisConfig,
    tenant: &TenantId,
    suspended: bool,
) -> Result<Option<CacheCleared>, TenantAdminError> {
    let status = if suspended { "suspended" } else { "active" };
    if !registry.set_status(tenant, status).await? {
        return Err(TenantAdminError::NotFound(tenant.clone()));
    }
    if !suspended {
        return Ok(None);
    }
    let cleared = match RedisCache::new(redis) {
        Ok(cache) => match cache.invalidate_tenant(tenant).await {
            Ok(n) => CacheCleared::Removed(n),
            Err(e) => CacheCleared::Failed(e.to_string()),
        },
        Err(e) => CacheCleared::Failed(e.to_string()),
    };
    Ok(Some(cleared))
}

/// What `tenant delete --erase` removed.
pub struct Erased {
    pub rows: crate::db::ErasedRows,
    pub cache: CacheCleared,
    pub topics: Result<Vec<String>, String>,
}

/// Erases a tenant: it is suspended first (consumers drain and stop), then every row is
/// deleted in one transaction as the owner (an audit record stays), then its cache
/// namespace (SCAN) and its topics. The database step decides: when it fails nothing is
/// reported erased; the cache and topic steps report their own failures.
pub async fn erase(
    registry: &Registry,
    config: &crate::config::Config,
    tenant: &TenantId,
) -> Result<Erased, TenantAdminError> {
    set_suspended(registry, &config.redis, tenant, true).await?;
    let rows = crate::db::erase_tenant(&config.postgres, tenant)
        .await
        .map_err(|e| TenantAdminError::Erase(e.to_string()))?;
    if rows.is_empty() {
        return Err(TenantAdminError::NotFound(tenant.clone()));
    }
    let cache = match RedisCache::new(&config.redis) {
        Ok(cache) => match cache.invalidate_tenant(tenant).await {
            Ok(n) => CacheCleared::Removed(n),
            Err(e) => CacheCleared::Failed(e.to_string()),
        },
        Err(e) => CacheCleared::Failed(e.to_string()),
    };
    let topics = crate::kafka::delete_tenant_topics(&config.kafka, tenant)
        .await
        .map_err(|e| e.to_string());
    Ok(Erased {
        rows,
        cache,
        topics,
    })
}

/// Replaces the tenant's API token; returns the new one (shown once). The old token stops
/// working at once.
pub async fn rotate_token(
    store: &TenantScopedStore,
    tenant: &TenantId,
) -> Result<String, TenantAdminError> {
    let token = tokens::generate(tenant);
    if !store
        .set_api_token_hash(tenant, tokens::hash(&token))
        .await?
    {
        return Err(TenantAdminError::NotFound(tenant.clone()));
    }
    Ok(token)
}

/// Enables the tenant's SCIM provider or replaces its SCIM token; returns the new token
/// (shown once). The previous token stops working at once on this instance and within
/// the SCIM token cache's lifetime (5 s) on every other one.
pub async fn rotate_scim_token(
    store: &TenantScopedStore,
    tenant: &TenantId,
) -> Result<String, TenantAdminError> {
    let token = tokens::generate_scim(tenant);
    if !store.set_scim_token(tenant, tokens::hash(&token)).await? {
        return Err(TenantAdminError::NotFound(tenant.clone()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_csv_is_checked_whole_before_anything_is_registered() {
        let rows =
            parse_tenant_csv("tenant_id,display_name\nacme,Acme, Inc.\n\nglobex,\"Globex\"\n")
                .expect("valid");
        assert_eq!(
            rows,
            vec![
                (TenantId::parse("acme").unwrap(), "Acme, Inc.".to_owned()),
                (TenantId::parse("globex").unwrap(), "Globex".to_owned()),
            ]
        );
        let err = parse_tenant_csv("acme,A\nBad*Id,B\nacme,C\ninitech\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: tenant id must start"), "{err}");
        assert!(err.contains("line 3: tenant acme appears twice"), "{err}");
        assert!(err.contains("line 4: display name"), "{err}");
        assert!(!err.contains("Bad*Id"), "never echoes an invalid id: {err}");
    }
}
