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
use crate::ports::{BatchReport, SecurityEvent};
use crate::tenant::TenantId;

/// Something worth a log line and a metric.
pub trait InternalEvent {
    fn emit(self);
}

/// A security event: logged at error level and counted by kind. The caller records it in
/// the tenant's `security_events` (in the same transaction when there is one).
pub struct SecurityEventObserved<'a> {
    pub tenant: &'a TenantId,
    pub event: &'a SecurityEvent,
}

impl InternalEvent for SecurityEventObserved<'_> {
    fn emit(self) {
        tracing::error!(tenant = %self.tenant, kind = self.event.kind,
            detail = %self.event.detail, "security event");
        metrics::counter!(m::SECURITY_EVENTS_TOTAL, "kind" => self.event.kind).increment(1);
    }
}

/// A SCIM micro-batch committed: events by outcome, dead letters by reason, and the batch's
/// duration and size.
pub struct BatchCommitted<'a> {
    pub tenant: &'a TenantId,
    pub report: &'a BatchReport,
    pub dead_reasons: &'a [&'static str],
}

impl InternalEvent for BatchCommitted<'_> {
    fn emit(self) {
        let label = self.tenant.as_str().to_owned();
        for reason in self.dead_reasons {
            metrics::counter!(m::SCIM_DLQ_TOTAL, "tenant" => label.clone(), "reason" => *reason)
                .increment(1);
        }
        let r = self.report;
        for (outcome, n) in [
            ("applied", r.applied),
            ("unchanged", r.unchanged),
            ("stale", r.stale),
            ("duplicate", r.duplicate),
        ] {
            if n > 0 {
                metrics::counter!(m::SCIM_EVENTS_TOTAL, "tenant" => label.clone(),
                    "outcome" => outcome)
                .increment(n);
            }
        }
    }
}

/// A whole micro-batch handled (all its commits, retries and splits).
pub struct BatchHandled {
    pub events: usize,
    pub took: Duration,
}

impl InternalEvent for BatchHandled {
    fn emit(self) {
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
