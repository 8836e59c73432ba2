//! The tenant registry: the global, non-secret list of tenants, plus registration, which
//! writes the tenant's secrets inside that tenant's own RLS scope.

use tokio_postgres::error::SqlState;

use super::{redact, PgPool};
use crate::actors::TenantId;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantRecord {
    pub tenant_id: TenantId,
    pub display_name: String,
    pub status: String,
    pub rate_limit_per_min: Option<i32>,
    /// Its records live on the shared topics, keyed by tenant id (`tenants.topics`).
    pub shared_topics: bool,
}

/// The registry as the Kafka hub reads it ([`Registry::layout`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryLayout {
    /// Active tenants with their own topics.
    pub dedicated: std::collections::BTreeSet<TenantId>,
    /// Tenants on the shared topics, with whether each is active.
    pub shared: std::collections::BTreeMap<TenantId, bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("tenant {0} already exists")]
    Exists(TenantId),
    #[error("display name must be 1 to 200 characters, not only spaces, no control characters")]
    DisplayName,
    #[error("database error: {0}")]
    Db(String),
}

fn db(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Db(redact(e))
}

#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Registers a tenant with the SHA-256 of its API token. Fails without changing
    /// anything when the tenant exists.
    pub async fn add(
        &self,
        tenant: &TenantId,
        display_name: &str,
        token_sha256: &[u8; 32],
        shared_topics: bool,
    ) -> Result<TenantRecord, RegistryError> {
        let name = display_name.trim();
        if name.is_empty()
            || display_name.chars().count() > 200
            || display_name.chars().any(char::is_control)
        {
            return Err(RegistryError::DisplayName);
        }
        let mut conn = self.pool.get().await.map_err(db)?;
        let tx = conn.transaction().await.map_err(db)?;
        let inserted = tx
            .execute(
                "insert into tenants (tenant_id, display_name, topics) values ($1, $2, $3)",
                &[
                    &tenant.as_str(),
                    &name,
                    &if shared_topics { "shared" } else { "dedicated" },
                ],
            )
            .await;
        if let Err(e) = inserted {
            return Err(if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                RegistryError::Exists(tenant.clone())
            } else {
                db(e)
            });
        }
        tx.execute(
            "select set_config('app.tenant_id', $1, true)",
            &[&tenant.as_str()],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "insert into tenant_secrets (tenant_id, api_token_sha256) values ($1, $2)",
            &[&tenant.as_str(), &token_sha256.as_slice()],
        )
        .await
        .map_err(db)?;
        // The row an aggregation of this tenant locks (see crate::readiness).
        tx.execute(
            "insert into readiness_locks (tenant_id) values ($1)",
            &[&tenant.as_str()],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(TenantRecord {
            tenant_id: tenant.clone(),
            display_name: name.to_owned(),
            status: "active".into(),
            rate_limit_per_min: None,
            shared_topics,
        })
    }

    /// Sets the tenant's status (`active` or `suspended`); false when it does not exist.
    pub async fn set_status(&self, tenant: &TenantId, status: &str) -> Result<bool, RegistryError> {
        let conn = self.pool.get().await.map_err(db)?;
        let n = conn
            .execute(
                "update tenants set status = $2, updated_at = now() where tenant_id = $1",
                &[&tenant.as_str(), &status],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// The tenant's status (`active`, `suspended`); `None` when it does not exist.
    pub async fn status(&self, tenant: &TenantId) -> Result<Option<String>, RegistryError> {
        let conn = self.pool.get().await.map_err(db)?;
        let row = conn
            .query_opt(
                "select status from tenants where tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// One tenant's registry row.
    pub async fn get(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, RegistryError> {
        let conn = self.pool.get().await.map_err(db)?;
        let row = conn
            .query_opt(
                "select display_name, status, rate_limit_per_min, topics = 'shared'
                   from tenants where tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| TenantRecord {
            tenant_id: tenant.clone(),
            display_name: r.get(0),
            status: r.get(1),
            rate_limit_per_min: r.get(2),
            shared_topics: r.get(3),
        }))
    }

    pub async fn exists(&self, tenant: &TenantId) -> Result<bool, RegistryError> {
        let conn = self.pool.get().await.map_err(db)?;
        let row = conn
            .query_opt(
                "select 1 from tenants where tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    /// Every tenant. Rows that fail validation (impossible given the CHECK) are skipped.
    pub async fn list(&self) -> Result<Vec<TenantRecord>, RegistryError> {
        let conn = self.pool.get().await.map_err(db)?;
        let rows = conn
            .query(
                "select tenant_id, display_name, status, rate_limit_per_min, topics = 'shared'
                   from tenants order by tenant_id",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(TenantRecord {
                    tenant_id: TenantId::parse(r.get::<_, &str>(0)).ok()?,
                    display_name: r.get(1),
                    status: r.get(2),
                    rate_limit_per_min: r.get(3),
                    shared_topics: r.get(4),
                })
            })
            .collect())
    }

    pub async fn active(&self) -> Result<Vec<TenantId>, RegistryError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|t| t.status == "active")
            .map(|t| t.tenant_id)
            .collect())
    }

    /// A cheap fingerprint of what the hub follows (each tenant's id, status and topics,
    /// hashed and summed in the database): the hub reads the whole layout only when it
    /// moved, so following thousands of tenants costs one small answer per refresh. A sum
    /// rather than a timestamp: a change committed late with an early `now()` still moves it.
    pub async fn fingerprint(&self) -> Result<(i64, i64), RegistryError> {
        let conn = self.pool.get().await.map_err(db)?;
        let row = conn
            .query_one(
                "select count(*),
                        coalesce(sum(hashtext(tenant_id || ':' || status || ':' || topics)::bigint), 0)::bigint
                   from tenants",
                &[],
            )
            .await
            .map_err(db)?;
        Ok((row.get(0), row.get(1)))
    }

    /// Where the tenants' records live: the active tenants on their own topics, and every
    /// tenant on the shared topics with whether it is active (one query, for the hub's
    /// refresh: thousands of tenants cost one round trip).
    pub async fn layout(&self) -> Result<RegistryLayout, RegistryError> {
        let mut out = RegistryLayout::default();
        for t in self.list().await? {
            let active = t.status == "active";
            match (t.shared_topics, active) {
                (true, _) => {
                    out.shared.insert(t.tenant_id, active);
                }
                (false, true) => {
                    out.dedicated.insert(t.tenant_id);
                }
                (false, false) => {}
            }
        }
        Ok(out)
    }
}

/// The tenant's upstream quota override (requests per minute). The registry is global and
/// holds nothing secret: no tenant scope needed.
pub(crate) async fn quota_override(
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<Option<u32>, crate::actors::ports::StoreError> {
    use crate::actors::ports::StoreError;
    let conn = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(super::redact(e)))?;
    let row = conn
        .query_opt(
            "select rate_limit_per_min from tenants where tenant_id = $1",
            &[&tenant.as_str()],
        )
        .await
        .map_err(super::store_error)?;
    Ok(row
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .and_then(|n| u32::try_from(n).ok()))
}
