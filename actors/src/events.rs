//! Internal events: one struct per thing an operator should see, each of which logs and
//! counts itself in [`InternalEvent::emit`] (the shape of vector's internal events).
//!
//! A log line and its metric can then never drift apart, and the code that notices
//! something reads as one line (`BatchRetried { .. }.emit()`). Metric names come from
//! [`crate::metric_names`]; persisting a security event is the store's work, not the
//! event's.

use std::fmt::Display;
use std::time::Duration;

use crate::metric_names as m;
use crate::tenant::TenantId;

/// Something worth a log line and a metric.
pub trait InternalEvent {
    fn emit(self);
}

/// A security event: logged at error level and counted by kind. The caller records it in
/// the tenant's `security_events` (in the same transaction when there is one).
pub struct SecurityEventObserved<'a> {
    pub tenant: &'a TenantId,
    /// `tenant_mismatch`, `rls_violation`, `cross_tenant_access`.
    pub kind: &'static str,
    pub detail: &'a serde_json::Value,
}

impl InternalEvent for SecurityEventObserved<'_> {
    fn emit(self) {
        tracing::error!(tenant = %self.tenant, kind = self.kind, detail = %self.detail,
            "security event");
        metrics::counter!(m::SECURITY_EVENTS_TOTAL, "kind" => self.kind).increment(1);
    }
}

/// A SCIM micro-batch's transaction committed: events by outcome, and each dead letter,
/// logged with its source offset and reason (never its payload).
pub struct BatchCommitted<'a> {
    pub tenant: &'a TenantId,
    /// Events by outcome: `applied`, `unchanged`, `stale`, `duplicate`.
    pub outcomes: [(&'static str, u64); 4],
    /// Source offset and reason of each record dead-lettered.
    pub dead_reasons: &'a [(i64, &'static str)],
}

impl InternalEvent for BatchCommitted<'_> {
    fn emit(self) {
        let label = self.tenant.as_str().to_owned();
        for (offset, reason) in self.dead_reasons {
            tracing::warn!(tenant = %self.tenant, offset, reason, "record dead-lettered");
            metrics::counter!(m::SCIM_DLQ_TOTAL, "tenant" => label.clone(), "reason" => *reason)
                .increment(1);
        }
        for (outcome, n) in self.outcomes {
            if n > 0 {
                metrics::counter!(m::SCIM_EVENTS_TOTAL, "tenant" => label.clone(),
                    "outcome" => outcome)
                .increment(n);
            }
        }
    }
}

/// A whole micro-batch handled (all its commits, retries and splits): one log line with
/// the stable fields `tenant`, `batch` (its first offset), `offset` (its last), `records`,
/// `events` and `duration_ms`, and the batch histograms.
pub struct BatchHandled<'a> {
    pub tenant: &'a TenantId,
    pub first_offset: i64,
    pub last_offset: i64,
    pub records: usize,
    pub events: usize,
    pub took: Duration,
}

impl InternalEvent for BatchHandled<'_> {
    fn emit(self) {
        tracing::info!(tenant = %self.tenant, batch = self.first_offset, offset = self.last_offset,
            records = self.records, events = self.events,
            duration_ms = self.took.as_millis() as u64, "batch committed");
        metrics::histogram!(m::SCIM_BATCH_DURATION_SECONDS).record(self.took.as_secs_f64());
        metrics::histogram!(m::SCIM_BATCH_SIZE_EVENTS).record(self.events as f64);
    }
}

/// Why a batch's transaction is tried again.
#[derive(Debug, Clone, Copy)]
pub enum RetryReason {
    /// A transient database failure, waited out for `delay`.
    Transient { attempt: u32, delay: Duration },
    /// Refused for a reason of its own: split in halves to find the record.
    Split { records: usize },
    /// The refused record, found: dead-lettered alone.
    Isolated { offset: i64 },
}

/// A batch transaction tried again (`enablement_scim_batch_retries_total{reason}`).
pub struct BatchRetried<'a> {
    pub tenant: &'a TenantId,
    pub reason: RetryReason,
    pub error: &'a dyn Display,
}

impl InternalEvent for BatchRetried<'_> {
    fn emit(self) {
        let (tenant, error) = (self.tenant, self.error);
        let label = match self.reason {
            RetryReason::Transient { attempt, delay } => {
                tracing::warn!(tenant = %tenant, error = %error, attempt,
                    delay_ms = delay.as_millis() as u64,
                    "batch hit a transient database failure; waiting it out");
                "transient"
            }
            RetryReason::Split { records } => {
                tracing::info!(tenant = %tenant, records, error = %error,
                    "batch refused; splitting it to isolate the record");
                "split"
            }
            RetryReason::Isolated { offset } => {
                tracing::warn!(tenant = %tenant, offset, error = %error,
                    "the database refused one record; dead-lettering it");
                "isolated"
            }
        };
        metrics::counter!(m::SCIM_BATCH_RETRIES_TOTAL, "reason" => label).increment(1);
    }
}

/// Outbox rows acknowledged by the broker.
pub struct OutboxPublished<'a> {
    pub tenant: &'a TenantId,
    pub rows: usize,
}

impl InternalEvent for OutboxPublished<'_> {
    fn emit(self) {
        metrics::counter!(m::OUTBOX_PUBLISHED_TOTAL, "tenant" => self.tenant.as_str().to_owned())
            .increment(self.rows as u64);
    }
}

/// A cache operation failed; the service carries on without the cache.
pub struct CacheFailed<'a> {
    pub tenant: &'a TenantId,
    pub operation: &'static str,
    pub error: &'a dyn Display,
}

impl InternalEvent for CacheFailed<'_> {
    fn emit(self) {
        tracing::warn!(tenant = %self.tenant, operation = self.operation, error = %self.error,
            "cache operation failed");
        metrics::counter!(m::CACHE_ERRORS_TOTAL, "operation" => self.operation).increment(1);
    }
}

/// A tenant actor failed (or failed to start) and is restarted after `delay`, or parked.
pub struct TenantActorFailed<'a> {
    pub tenant: &'a TenantId,
    pub failures_in_row: u32,
    pub reason: &'a str,
    pub delay: Duration,
    pub parked: bool,
}

impl InternalEvent for TenantActorFailed<'_> {
    fn emit(self) {
        let (tenant, failures, reason) = (self.tenant, self.failures_in_row, self.reason);
        if self.parked {
            tracing::error!(tenant = %tenant, failures, %reason,
                park_s = self.delay.as_secs(), "tenant actor crash-looping; parked");
        } else {
            tracing::warn!(tenant = %tenant, failures, %reason,
                delay_ms = self.delay.as_millis() as u64, "tenant actor failed; restarting");
        }
        metrics::counter!(m::ACTOR_RESTARTS_TOTAL, "tenant" => tenant.as_str().to_owned())
            .increment(1);
    }
}

/// Why a tenant's feed stopped pulling.
#[derive(Debug, Clone, Copy)]
pub enum PauseReason {
    /// `high_water` records held.
    HighWater,
    /// The tenant's byte budget held.
    ByteBudget { bytes: usize },
}

/// A tenant's feed paused (it resumes below the low-water marks).
pub struct FeedPaused<'a> {
    pub tenant: &'a TenantId,
    pub reason: PauseReason,
}

impl InternalEvent for FeedPaused<'_> {
    fn emit(self) {
        let label = self.tenant.as_str().to_owned();
        match self.reason {
            PauseReason::HighWater => {
                tracing::debug!(tenant = %self.tenant, "pausing at high water");
                metrics::counter!(m::TENANT_PARTITION_PAUSES_TOTAL, "tenant" => label).increment(1);
            }
            PauseReason::ByteBudget { bytes } => {
                tracing::debug!(tenant = %self.tenant, bytes, "pausing at the tenant's byte budget");
                metrics::counter!(m::TENANT_BYTE_BUDGET_PAUSES_TOTAL, "tenant" => label)
                    .increment(1);
            }
        }
    }
}

/// A record arrived past the offset expected: legitimate with transaction markers or
/// compaction, otherwise a broker skipped records. Visible, never silent.
pub struct FeedOffsetGap<'a> {
    pub tenant: &'a TenantId,
    pub offset: i64,
    pub expected: i64,
}

impl InternalEvent for FeedOffsetGap<'_> {
    fn emit(self) {
        tracing::warn!(tenant = %self.tenant, offset = self.offset, expected = self.expected,
            "offset gap in tenant partition");
        metrics::counter!(m::FEED_ERRORS_TOTAL, "kind" => "offset_gap").increment(1);
    }
}

/// Receiving from the broker failed (`kind`: `recv` on a tenant feed, `consumer` on the
/// group consumer's main queue).
pub struct FeedReceiveFailed<'a> {
    pub tenant: Option<&'a TenantId>,
    pub kind: &'static str,
    pub error: &'a dyn Display,
}

impl InternalEvent for FeedReceiveFailed<'_> {
    fn emit(self) {
        match self.tenant {
            Some(t) => tracing::warn!(tenant = %t, error = %self.error, "feed receive failed"),
            None => tracing::warn!(error = %self.error, "consumer error"),
        }
        metrics::counter!(m::FEED_ERRORS_TOTAL, "kind" => self.kind).increment(1);
    }
}

/// The consumer-group watchdog found the group wedged; the consumer is re-created.
pub struct ConsumerGroupWedged {
    pub reason: &'static str,
}

impl InternalEvent for ConsumerGroupWedged {
    fn emit(self) {
        tracing::warn!(
            reason = self.reason,
            "consumer group wedged; re-creating the consumer as a fresh member"
        );
        metrics::counter!(m::KAFKA_GROUP_WEDGED_TOTAL, "reason" => self.reason).increment(1);
    }
}

/// A cache read answered (hit or miss) for one of the tenant's resources.
pub struct CacheLookup<'a> {
    pub tenant: &'a TenantId,
    pub resource: &'static str,
    pub hit: bool,
}

impl InternalEvent for CacheLookup<'_> {
    fn emit(self) {
        let name = if self.hit {
            m::CACHE_HITS_TOTAL
        } else {
            m::CACHE_MISSES_TOTAL
        };
        metrics::counter!(name, "tenant" => self.tenant.as_str().to_owned(),
            "resource" => self.resource)
        .increment(1);
    }
}

/// One upstream (MindTickle) call answered, after waiting `waited` for a permit.
pub struct UpstreamCalled<'a> {
    pub tenant: &'a str,
    /// `ok`, `429`, `5xx`, `unauthorized`, `not_found`, `timeout` or `error`.
    pub status: &'static str,
    pub waited: Duration,
}

impl InternalEvent for UpstreamCalled<'_> {
    fn emit(self) {
        metrics::histogram!(m::UPSTREAM_PERMIT_WAIT_SECONDS).record(self.waited.as_secs_f64());
        metrics::counter!(m::UPSTREAM_CALLS_TOTAL, "tenant" => self.tenant.to_owned(),
            "status" => self.status)
        .increment(1);
        if self.status == "429" {
            metrics::counter!(m::UPSTREAM_RATE_LIMITED_TOTAL, "tenant" => self.tenant.to_owned())
                .increment(1);
        }
    }
}

/// A readiness aggregation stored a report, was coalesced into one already running, or
/// failed (the schedule keeps the tenant due).
pub enum ReadinessAggregation<'a> {
    Stored {
        tenant: &'a TenantId,
        /// `manual`, `changed` or `scheduled`.
        trigger: &'static str,
        provisional: bool,
        took: Duration,
    },
    Coalesced,
    Failed {
        tenant: &'a TenantId,
        error: &'a dyn Display,
    },
}

impl InternalEvent for ReadinessAggregation<'_> {
    fn emit(self) {
        match self {
            Self::Stored {
                tenant,
                trigger,
                provisional,
                took,
            } => {
                metrics::histogram!(m::READINESS_AGGREGATION_SECONDS, "trigger" => trigger)
                    .record(took.as_secs_f64());
                let state = if provisional { "provisional" } else { "final" };
                metrics::counter!(m::READINESS_REPORTS_TOTAL, "state" => state).increment(1);
                tracing::info!(tenant = %tenant, trigger, provisional,
                    duration_ms = took.as_millis() as u64, "readiness report stored");
            }
            Self::Coalesced => metrics::counter!(m::READINESS_COALESCED_TOTAL).increment(1),
            Self::Failed { tenant, error } => {
                metrics::counter!(m::READINESS_FAILURES_TOTAL).increment(1);
                tracing::warn!(tenant = %tenant, error = %error, "readiness aggregation failed");
            }
        }
    }
}
