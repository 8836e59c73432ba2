//! The ports of the actors crate implemented over PostgreSQL: [`TenantStore`] and
//! [`UpstreamCredentials`] for [`TenantScopedStore`], plus the store's own methods used by
//! the HTTP API and the CLI. Each method is one scoped transaction around functions of the
//! module that owns the SQL of its concern (`scim`, `outbox`, `jobs`, `progress`,
//! `secrets`); nothing here writes SQL of its own.

use async_trait::async_trait;
use serde_json::Value;

use super::jobs::{self, JobRow};
use super::scoped::TenantScopedStore;
use super::{notify_tenant_work, outbox, progress, registry, schedule, scim, secrets};
use crate::actors::ports::UpstreamCredentials;
use crate::actors::ports::{
    BatchReport, Job, JobPriority, NewJob, OutboxRecord, ProgressSnapshot, ScimBatch, StoreError,
    TenantStore,
};
use crate::actors::upstream::UpstreamCourse;
use crate::actors::TenantId;
use crate::tenant_tx;

impl TenantScopedStore {
    /// The user's last synced progress, `None` when the user was never synced.
    pub async fn progress(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<Option<ProgressSnapshot>, StoreError> {
        let u = user_id.to_owned();
        tenant_tx!(self, tenant, |tx, t| { progress::read(tx, t, &u).await }).await
    }

    /// True when the user exists in the tenant's SCIM roster.
    pub async fn user_exists(&self, tenant: &TenantId, user_id: &str) -> Result<bool, StoreError> {
        let u = user_id.to_owned();
        tenant_tx!(self, tenant, |tx, t| { scim::exists(tx, t, &u).await }).await
    }

    /// The tenant's user roster as provisioned by SCIM (active and deactivated).
    pub async fn roster(&self, tenant: &TenantId) -> Result<Vec<Value>, StoreError> {
        tenant_tx!(self, tenant, |tx, t| { scim::roster(tx, t).await }).await
    }

    /// Queues progress syncs durably and wakes the tenant's consumer wherever it runs: one
    /// user at interactive priority, or (`None`) every active user without a sync queued at
    /// background priority. Returns the number of jobs queued.
    pub async fn queue_syncs(
        &self,
        tenant: &TenantId,
        user: Option<&str>,
    ) -> Result<u64, StoreError> {
        let user = user.map(str::to_owned);
        tenant_tx!(self, tenant, |tx, t| {
            let n = match &user {
                Some(u) => {
                    let job = JobRow {
                        priority: JobPriority::Interactive,
                        kind: crate::actors::ports::JobKind::SyncProgress,
                        subject: u,
                        payload: None,
                    };
                    jobs::enqueue(tx, t, &[job]).await?.len() as u64
                }
                None => {
                    let users = scim::active_ids(tx, t).await?;
                    jobs::enqueue_syncs(tx, t, JobPriority::Background, &users, i64::MAX).await?
                }
            };
            notify_tenant_work(tx, t).await?;
            Ok(n)
        })
        .await
    }

    /// Queues a refresh of the tenant's course catalog into its cache (unless one is
    /// pending) and wakes the tenant's owner. True when a job was queued.
    pub async fn queue_catalog_refresh(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        tenant_tx!(self, tenant, |tx, t| {
            let queued = jobs::enqueue_unless_pending(
                tx,
                t,
                JobPriority::Interactive,
                crate::actors::ports::JobKind::RefreshCatalog,
            )
            .await?;
            notify_tenant_work(tx, t).await?;
            Ok(queued)
        })
        .await
    }

    /// Stores the tenant's MindTickle credentials in its RLS-protected secrets row, the
    /// secret sealed with the active key of `secrets.keys`.
    pub async fn set_upstream_credentials(
        &self,
        tenant: &TenantId,
        client_id: &str,
        secret: &str,
    ) -> Result<bool, StoreError> {
        let (key_id, sealed) = self
            .sealer()
            .seal(tenant.as_str(), secret)
            .map_err(sealing)?;
        let id = client_id.to_owned();
        tenant_tx!(self, tenant, |tx, t| {
            secrets::set_upstream_credentials(tx, t, &id, &key_id, &sealed).await
        })
        .await
    }

    /// Re-seals the tenant's MindTickle secret with the active key (and seals a plaintext
    /// an older version left). True when there was a secret to re-seal.
    pub async fn reseal_upstream_secret(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let Some((client_id, secret)) = self.upstream_credentials(tenant).await? else {
            return Ok(false);
        };
        self.set_upstream_credentials(tenant, &client_id, &secret)
            .await
    }

    /// Replaces the tenant's API token hash (rotation: the old token stops working at
    /// once). False when the tenant does not exist.
    pub async fn set_api_token_hash(
        &self,
        tenant: &TenantId,
        token_sha256: [u8; 32],
    ) -> Result<bool, StoreError> {
        tenant_tx!(self, tenant, |tx, t| {
            secrets::set_api_token_hash(tx, t, &token_sha256).await
        })
        .await
    }

    /// True when `token_sha256` is the tenant's API token hash (constant-time compare).
    pub async fn token_matches(
        &self,
        tenant: &TenantId,
        token_sha256: [u8; 32],
    ) -> Result<bool, StoreError> {
        let stored = tenant_tx!(self, tenant, |tx, t| {
            secrets::api_token_hash(tx, t).await
        })
        .await?;
        Ok(stored.is_some_and(|s| crate::tokens::constant_time_eq(&s, &token_sha256)))
    }

    /// True when `token_sha256` is the tenant's SCIM token hash (constant-time compare);
    /// false when the tenant has none.
    pub async fn scim_token_matches(
        &self,
        tenant: &TenantId,
        token_sha256: [u8; 32],
    ) -> Result<bool, StoreError> {
        let stored = tenant_tx!(self, tenant, |tx, t| {
            secrets::scim_token_hash(tx, t).await
        })
        .await?;
        Ok(stored.is_some_and(|s| crate::tokens::constant_time_eq(&s, &token_sha256)))
    }

    /// Replaces the tenant's SCIM token hash; false when the tenant does not exist.
    pub async fn set_scim_token(
        &self,
        tenant: &TenantId,
        token_sha256: [u8; 32],
    ) -> Result<bool, StoreError> {
        tenant_tx!(self, tenant, |tx, t| {
            secrets::set_scim_token_hash(tx, t, &token_sha256).await
        })
        .await
    }

    /// Queues jobs for the tenant (benchmarks and tools; the service queues through its
    /// own paths). Returns their ids.
    pub async fn enqueue_jobs(
        &self,
        tenant: &TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<i64>, StoreError> {
        let jobs = jobs.to_vec();
        tenant_tx!(self, tenant, |tx, t| {
            let payloads: Vec<String> = jobs.iter().map(|j| j.payload.to_string()).collect();
            let rows: Vec<JobRow<'_>> = jobs
                .iter()
                .zip(&payloads)
                .map(|(j, p)| JobRow {
                    priority: j.priority,
                    kind: j.kind,
                    subject: &j.subject,
                    payload: Some(p),
                })
                .collect();
            jobs::enqueue(tx, t, &rows).await
        })
        .await
    }
}

#[async_trait]
impl TenantStore for TenantScopedStore {
    async fn apply_scim_batch(
        &self,
        tenant: &TenantId,
        batch: ScimBatch,
        relayed_through: i64,
    ) -> Result<BatchReport, StoreError> {
        tenant_tx!(self, tenant, |tx, t| {
            scim::apply_batch(tx, t, batch, relayed_through).await
        })
        .await
    }

    async fn pending_outbox(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        tenant_tx!(self, tenant, |tx, t| {
            outbox::pending(tx, t, after, limit).await
        })
        .await
    }

    async fn mark_outbox_relayed(
        &self,
        tenant: &TenantId,
        through_seq: i64,
    ) -> Result<(), StoreError> {
        tenant_tx!(self, tenant, |tx, t| {
            outbox::store_cursor(tx, t, through_seq).await
        })
        .await
    }

    async fn quota_override(&self, tenant: &TenantId) -> Result<Option<u32>, StoreError> {
        registry::quota_override(self.pool(), tenant).await
    }

    async fn record_progress(
        &self,
        tenant: &TenantId,
        user_id: &str,
        courses: &[UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError> {
        let (u, courses) = (user_id.to_owned(), courses.to_vec());
        tenant_tx!(self, tenant, |tx, t| {
            progress::record(tx, t, &u, courses).await
        })
        .await
    }

    async fn enqueue_job(&self, tenant: &TenantId, job: &NewJob) -> Result<i64, StoreError> {
        let ids = self.enqueue_jobs(tenant, std::slice::from_ref(job)).await?;
        ids.first()
            .copied()
            .ok_or_else(|| StoreError::Query("the job insert returned no id".into()))
    }

    async fn next_job(&self, tenant: &TenantId) -> Result<Option<Job>, StoreError> {
        tenant_tx!(self, tenant, |tx, t| { jobs::next(tx, t).await }).await
    }

    async fn finish_sync_job(
        &self,
        tenant: &TenantId,
        job_id: i64,
        courses: &[UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError> {
        let courses = courses.to_vec();
        tenant_tx!(self, tenant, |tx, t| {
            // Claim the job first: a job already done (a replay after a crash between the
            // upstream call and this commit) produces no second effect.
            let claimed = jobs::finish(tx, t, job_id, None).await?;
            let user = jobs::subject(tx, t, job_id).await?;
            if !claimed {
                return Ok(ProgressSnapshot {
                    user_id: user,
                    courses,
                    synced_at: None,
                });
            }
            progress::record(tx, t, &user, courses).await
        })
        .await
    }

    async fn finish_job(
        &self,
        tenant: &TenantId,
        job_id: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let error = error.map(str::to_owned);
        tenant_tx!(self, tenant, |tx, t| {
            jobs::finish(tx, t, job_id, error.as_deref()).await?;
            schedule::mark_if_sync_settled(tx, t).await
        })
        .await
    }

    async fn queue_depth(&self, tenant: &TenantId) -> Result<Vec<(JobPriority, u64)>, StoreError> {
        tenant_tx!(self, tenant, |tx, t| { jobs::depth(tx, t).await }).await
    }
}

#[async_trait]
impl UpstreamCredentials for TenantScopedStore {
    async fn upstream_credentials(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<(String, String)>, StoreError> {
        let stored = tenant_tx!(self, tenant, |tx, t| {
            secrets::upstream_credentials(tx, t).await
        })
        .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let secret = match (stored.sealed, stored.legacy_plaintext) {
            (Some((key_id, sealed)), _) => self
                .sealer()
                .open(tenant.as_str(), &key_id, &sealed)
                .map_err(sealing)?,
            (None, Some(plain)) => {
                tracing::warn!(tenant = %tenant, "a MindTickle secret is stored unsealed: run `enablement secrets rotate-key`");
                plain
            }
            (None, None) => return Ok(None),
        };
        Ok(Some((stored.client_id, secret)))
    }
}

fn sealing(e: crate::sealing::SealError) -> StoreError {
    StoreError::Query(e.to_string())
}
