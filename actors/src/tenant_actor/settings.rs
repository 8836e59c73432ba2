//! [`PipelineSettings`]: the tuning of every tenant's pipeline (`[pipeline]` in the config).

use std::time::Duration;

use crate::backoff::Backoff;

/// Tuning of the per-tenant pipeline (from `[pipeline]` in the config).
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Most events committed in one transaction.
    pub max_batch_events: usize,
    /// How long a partial batch waits for more records before it is handed over.
    pub batch_linger: Duration,
    /// Buffered records at which the partition is paused.
    pub high_water: usize,
    /// Buffered records at which a paused partition resumes.
    pub low_water: usize,
    /// Larger payloads are rejected to the DLQ.
    pub max_message_bytes: usize,
    /// Outbox rows relayed per round trip.
    pub outbox_batch: usize,
    /// Delay before retrying an outbox relay that failed.
    pub outbox_retry: Duration,
    /// How often an idle job pump looks at the queue without being woken.
    pub job_poll: Duration,
    /// How long a relay cursor may wait for the next batch to carry it before it is
    /// stored on its own (a crash in between republishes, at least once, never loses).
    pub cursor_store_delay: Duration,
    /// Batch transactions one process runs at once, across its tenants. Each tenant has
    /// at most one in flight anyway; this bounds how many the database works on together
    /// (more concurrent writers than its cores only add contention) and leaves the rest
    /// of the pool to job pumps and the API. Waiting batches are served in arrival order.
    pub max_concurrent_batches: usize,
    /// Largest record the broker accepts (`kafka.max_record_bytes`): dead letters are cut
    /// to fit, and `max_message_bytes` leaves room for the `user_changed` envelope.
    pub max_record_bytes: usize,
    /// Bytes of payload one tenant may hold in the service (buffered and in flight); its
    /// feed pauses at this, like at `high_water` records, and resumes below half of it.
    pub tenant_buffer_max_bytes: usize,
    /// Bytes of payload all tenants of the process may hold together. Past it, a tenant
    /// that already holds records fetches no more; one holding none may still take one,
    /// so every tenant keeps moving and the total stays within this plus one record each.
    pub process_buffer_max_bytes: usize,
    /// `occurredAt` later than now plus this is dead-lettered as implausible.
    pub max_future_skew: Duration,
    /// Waiting out a database outage: a batch whose transaction failed for a transient
    /// reason is retried after this capped, jittered backoff (never skipped, never parked).
    pub retry_backoff: Backoff,
    /// What a SCIM DELETE does to the stored user.
    pub scim_delete: crate::scim::DeletePolicy,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            max_batch_events: 500,
            batch_linger: Duration::from_millis(5),
            high_water: 2000,
            low_water: 500,
            max_message_bytes: 256 * 1024,
            outbox_batch: 1000,
            outbox_retry: Duration::from_secs(1),
            job_poll: Duration::from_secs(10),
            cursor_store_delay: Duration::from_secs(1),
            max_concurrent_batches: 4,
            max_record_bytes: 1_000_000,
            tenant_buffer_max_bytes: 8 * 1024 * 1024,
            process_buffer_max_bytes: 128 * 1024 * 1024,
            max_future_skew: Duration::from_secs(24 * 3600),
            retry_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            scim_delete: crate::scim::DeletePolicy::Deactivate,
        }
    }
}
