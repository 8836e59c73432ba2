//! Ports: the traits through which actors reach the outside world.
//!
//! One trait per port; the service's adapters (`src/`) implement them over PostgreSQL,
//! Redis and Kafka, and the unit tests here implement them in memory. Every method is
//! scoped to one tenant: no port offers a way to touch two tenants at once.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

pub use crate::jobs::{Job, JobKind, JobPriority, NewJob};
use crate::scim::{EventOutcome, ScimEvent};
use crate::tenant::{TenantId, TopicKind};
use crate::upstream::UpstreamCourse;

/// One record read from a tenant's inbound partition.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedError {
    #[error("broker error: {0}")]
    Broker(String),
    #[error("tenant topic is not assigned to this instance")]
    NotAssigned,
}

/// A tenant's inbound partition, pulled at the actor's own pace.
///
/// Backpressure is the caller not calling `recv`: an adapter must then stop fetching once
/// its own bounded prefetch is full, leaving the backlog in the broker's log.
#[async_trait]
pub trait PartitionFeed: Send + Sync + 'static {
    /// Waits for the next record. Cancellation safe.
    async fn recv(&self) -> Result<InboundRecord, FeedError>;
    /// Records that every record before `next_offset` has its effects committed.
    fn store_offset(&self, next_offset: i64) -> Result<(), FeedError>;
    /// Whether the tenant's offsets follow one another (its own partition). A tenant on a
    /// shared partition sees gaps where other tenants' records are: not a broker defect.
    fn contiguous(&self) -> bool {
        true
    }
}

/// Opens tenant feeds. Opening again (after an actor restart) rewinds to the first record
/// whose effects are not known to be committed.
#[async_trait]
pub trait FeedSource: Send + Sync + 'static {
    async fn open(&self, tenant: &TenantId) -> Result<Arc<dyn PartitionFeed>, FeedError>;
    /// Returns once a record past what the tenant's last actor stored is available (the
    /// tenant is passivated: this wakes it). The record itself is read again by the next
    /// [`FeedSource::open`], which rewinds. Cancellation safe.
    async fn until_record(&self, tenant: &TenantId) -> Result<(), FeedError>;
}

/// Where a consumer group's assignment changes go: the Kafka hub tells the tenants of this
/// process which partitions it owns now (implemented by [`crate::tenants::Tenants`]).
#[async_trait]
pub trait AssignmentSink: Send + Sync + 'static {
    /// These tenants' partitions were assigned to this instance: run them.
    fn assign(&self, tenants: Vec<TenantId>);
    /// These tenants' partitions are being revoked: drain and stop them. False when the
    /// drain did not complete within `timeout`.
    async fn revoke(&self, tenants: Vec<TenantId>, timeout: std::time::Duration) -> bool;
}

/// A security-relevant observation recorded with the tenant's data.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityEvent {
    pub kind: &'static str,
    pub detail: Value,
}

/// A source record refused by validation or by the database, to be published on the
/// tenant's DLQ topic through the outbox.
///
/// It is written in the same transaction as the rest of its batch, keyed by the source
/// offset: a batch replayed after a crash or restart finds the offset already dead-lettered
/// and publishes nothing twice.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub source_offset: i64,
    /// Stable reason code (`dlq.reason`).
    pub reason: &'static str,
    /// The DLQ record: original key, bytes and headers plus the `dlq.*` headers.
    pub record: OutboundRecord,
}

/// A validated batch of SCIM events plus security events and dead letters, applied in one
/// transaction.
#[derive(Debug, Clone, Default)]
pub struct ScimBatch {
    pub events: Vec<ScimEvent>,
    /// What a SCIM DELETE does to the stored user (`pipeline.scim_delete`).
    pub delete_policy: crate::scim::DeletePolicy,
    pub security_events: Vec<SecurityEvent>,
    pub dead_letters: Vec<DeadLetter>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub applied: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub duplicate: u64,
    /// Dead letters written by this batch (offsets dead-lettered before are not counted).
    pub dead_lettered: u64,
    /// The outbox rows the batch committed, in `seq` order (consecutive seqs): the actor
    /// publishes them from memory when they directly follow what it relayed before.
    pub outbox: Vec<OutboxRecord>,
    /// Upstream jobs the batch queued (SCIM pushes); the job pump is woken only for these.
    pub jobs_queued: u64,
}

impl BatchReport {
    pub fn count(&mut self, outcome: EventOutcome) {
        match outcome {
            EventOutcome::Applied => self.applied += 1,
            EventOutcome::Unchanged => self.unchanged += 1,
            EventOutcome::Stale => self.stale += 1,
            EventOutcome::Duplicate => self.duplicate += 1,
        }
    }
}

/// A row of the transactional outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Per-tenant sequence: commit order, gap-free (see migration 0007).
    pub seq: i64,
    pub topic: TopicKind,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Headers besides `outbox.seq` (a dead letter's original and `dlq.*` headers).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why the store could not do something. The class decides what the caller does:
/// [`StoreError::Unavailable`] is transient (wait and retry the same work); the others are
/// about the work itself (isolate the record that causes it, never retry it unchanged).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database is down, restarting, overloaded or the transaction lost a race
    /// (serialization failure, deadlock): the same work will succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("row-level security refused the operation: {0}")]
    PolicyViolation(String),
    #[error("database error: {0}")]
    Query(String),
}

impl StoreError {
    /// True when retrying the same work later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Tenant-scoped persistence. Every call runs in its own transaction with `app.tenant_id`
/// set to `tenant`; there is no method that could run a tenant query outside one.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Applies the batch (idempotency records, user upserts, outbox rows, security events)
    /// atomically. In the same transaction, moves the tenant's relay cursor up to
    /// `relayed_through` (rows the caller published since its last cursor write).
    async fn apply_scim_batch(
        &self,
        tenant: &TenantId,
        batch: ScimBatch,
        relayed_through: i64,
    ) -> Result<BatchReport, StoreError>;
    /// Outbox rows not yet relayed, in `seq` order, at most `limit`: those after the stored
    /// relay cursor and after `after` (what the caller knows it relayed already).
    async fn pending_outbox(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError>;
    /// Moves the tenant's relay cursor up to `through_seq` (never back).
    async fn mark_outbox_relayed(
        &self,
        tenant: &TenantId,
        through_seq: i64,
    ) -> Result<(), StoreError>;
    /// Adds a job to the tenant's durable upstream queue; returns its id.
    async fn enqueue_job(&self, tenant: &TenantId, job: &NewJob) -> Result<i64, StoreError>;
    /// The next pending job in priority order (interactive, SCIM push, background).
    async fn next_job(&self, tenant: &TenantId) -> Result<Option<Job>, StoreError>;
    /// Completes a progress-sync job: stores the progress, writes `progress.synced` and
    /// marks the job done, in one transaction (so a job's effect happens exactly once).
    async fn finish_sync_job(
        &self,
        tenant: &TenantId,
        job_id: i64,
        courses: &[UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError>;
    /// Marks a job done, or failed with the error after its last attempt.
    async fn finish_job(
        &self,
        tenant: &TenantId,
        job_id: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Pending jobs per priority (for the queue-depth gauge).
    async fn queue_depth(&self, tenant: &TenantId) -> Result<Vec<(JobPriority, u64)>, StoreError>;
    /// The tenant's upstream quota override (requests per minute) from the registry.
    async fn quota_override(&self, tenant: &TenantId) -> Result<Option<u32>, StoreError>;
    /// Replaces the user's synced course progress and writes `progress.synced` to the
    /// outbox, in one transaction.
    async fn record_progress(
        &self,
        tenant: &TenantId,
        user_id: &str,
        courses: &[UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError>;
}

/// A tenant's MindTickle client credentials (id, secret), read where they are kept (the
/// tenant's RLS-protected secrets row). The API adapter depends on this port, not on the
/// database, and asks only when it needs a new bearer token.
#[async_trait]
pub trait UpstreamCredentials: Send + Sync + 'static {
    async fn upstream_credentials(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<(String, String)>, StoreError>;
}

/// A user's course progress as last synced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressSnapshot {
    pub user_id: String,
    pub courses: Vec<UpstreamCourse>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub synced_at: Option<time::OffsetDateTime>,
}

/// A record to publish on one of the tenant's topics.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRecord {
    pub topic: TopicKind,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("broker refused or timed out: {0}")]
    Broker(String),
}

/// Publishes to the tenant's topics; returns once the broker acknowledged every record.
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    async fn publish(
        &self,
        tenant: &TenantId,
        records: Vec<OutboundRecord>,
    ) -> Result<(), PublishError>;

    /// The `outbox.seq` header of the last record on the tenant's `topic` (`None`: empty,
    /// or the last record carries none). The relay publishes a topic's rows in `seq` order
    /// through an idempotent producer, so every row of that topic up to it is on the topic:
    /// after a crash or a failed publish the relay skips them instead of publishing twice.
    async fn last_outbox_seq(
        &self,
        tenant: &TenantId,
        topic: TopicKind,
    ) -> Result<Option<i64>, PublishError>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("cache unavailable: {0}")]
    Unavailable(String),
}

/// The tenant's cache namespace (`tenant:{<id>}:*`).
#[async_trait]
pub trait RosterCache: Send + Sync + 'static {
    /// Drops the cached roster after a committed change to the tenant's users.
    async fn invalidate_roster(&self, tenant: &TenantId) -> Result<(), CacheError>;
    /// Stores a freshly fetched course catalog (a catalog refresh job).
    async fn store_catalog(
        &self,
        tenant: &TenantId,
        courses: &[crate::upstream::CatalogCourse],
    ) -> Result<(), CacheError>;
}
