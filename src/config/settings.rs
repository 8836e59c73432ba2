//! The runtime settings the service's parts are built with, derived from the validated
//! [`Config`] in one place (durations typed, defaults resolved), and the process [`Role`].
//!
//! Settings of the core (pipeline, supervisor, limiter) are defined by the actors crate;
//! those of the service's own workers (aggregator, retention) are defined here, so the
//! workers depend on configuration and never the reverse.

use std::time::Duration;

use super::Config;
use crate::actors::{PipelineSettings, SupervisorSettings};

/// What a `serve` process runs. Roles in separate processes coordinate only through
/// PostgreSQL (queues, schedule, locks, `NOTIFY`) and Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything in one process (the default).
    All,
    /// The SCIM pipeline and upstream work: supervisor, tenant actors, Kafka consumer.
    Consumer,
    /// The readiness aggregator.
    Aggregator,
    /// The HTTP control endpoint (tenant routes, registration).
    Api,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Consumer => "consumer",
            Role::Aggregator => "aggregator",
            Role::Api => "api",
        }
    }
    pub fn consumes(self) -> bool {
        matches!(self, Role::All | Role::Consumer)
    }
    pub fn aggregates(self) -> bool {
        matches!(self, Role::All | Role::Aggregator)
    }
    /// Serves the tenant API; every role serves /healthz, /readyz and /metrics.
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
}

#[derive(Debug, Clone)]
pub struct AggregatorSettings {
    /// Progress synced longer ago than this makes a report provisional.
    pub freshness: Duration,
    /// Quiet time after the last change before the automatic re-aggregation.
    pub debounce: Duration,
    /// Longest a change waits for its re-aggregation while changes keep coming.
    pub max_delay: Duration,
    /// How often an idle worker looks for due tenants.
    pub poll_interval: Duration,
    /// Aggregations one aggregator process runs at once.
    pub concurrency: usize,
    /// Reports kept per tenant.
    pub history_per_tenant: i64,
    /// Upper bound of one aggregation's SQL.
    pub statement_timeout: Duration,
    /// Refresh syncs queued per aggregation for users with stale progress (0: none).
    pub refresh_stale_max_jobs: i64,
    /// Who computes (`computedBy` in reports): the instance id.
    pub instance: String,
}

/// How long each kind of row is kept.
#[derive(Debug, Clone)]
pub struct Keep {
    pub outbox_relayed: Duration,
    pub finished_jobs: Duration,
    pub security_events: Duration,
    pub idempotency: Duration,
    pub dead_letters: Duration,
}

#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Between passes; zero disables retention.
    pub interval: Duration,
    pub batch_rows: i64,
    pub keep: Keep,
}

impl Config {
    pub fn pipeline_settings(&self) -> PipelineSettings {
        let p = &self.pipeline;
        PipelineSettings {
            max_batch_events: p.max_batch_events,
            batch_linger: Duration::from_millis(p.batch_linger_ms),
            high_water: p.high_water_messages,
            low_water: p.low_water_messages,
            max_message_bytes: p.max_message_bytes,
            outbox_batch: p.outbox_batch,
            outbox_retry: Duration::from_millis(p.outbox_retry_ms),
            job_poll: Duration::from_millis(p.job_poll_ms.max(1)),
            max_concurrent_batches: p.max_concurrent_batches,
            max_future_skew: Duration::from_secs(p.max_future_skew_s),
            max_record_bytes: self.kafka.max_record_bytes,
            tenant_buffer_max_bytes: p.tenant_buffer_max_bytes,
            process_buffer_max_bytes: p.process_buffer_max_bytes,
            retry_backoff: crate::actors::backoff::Backoff::new(
                Duration::from_millis(p.retry_backoff_initial_ms.max(1)),
                Duration::from_millis(p.retry_backoff_max_ms.max(1)),
            ),
            scim_delete: p.scim_delete,
            ..PipelineSettings::default()
        }
    }

    pub fn limiter_settings(&self) -> crate::actors::upstream::LimiterSettings {
        let m = &self.mindtickle;
        crate::actors::upstream::LimiterSettings {
            requests_per_min: m.requests_per_min,
            burst: m.burst,
            max_retry_after: Duration::from_secs(m.max_retry_after_s),
            backoff_initial: Duration::from_millis(m.backoff_initial_ms),
            backoff_max: Duration::from_millis(m.backoff_max_ms),
            max_attempts: m.max_attempts,
        }
    }

    pub fn retention_settings(&self) -> RetentionSettings {
        let r = &self.retention;
        RetentionSettings {
            interval: Duration::from_secs(r.interval_s),
            batch_rows: i64::from(r.batch_rows.max(1)),
            keep: Keep {
                outbox_relayed: Duration::from_secs(r.outbox_relayed_keep_s),
                finished_jobs: Duration::from_secs(r.finished_jobs_keep_s),
                security_events: Duration::from_secs(r.security_events_keep_s),
                idempotency: Duration::from_secs(r.idempotency_keep_s),
                dead_letters: Duration::from_secs(r.dead_letters_keep_s),
            },
        }
    }

    pub fn aggregator_settings(&self) -> AggregatorSettings {
        let a = &self.aggregator;
        AggregatorSettings {
            freshness: Duration::from_millis(a.freshness_ms),
            debounce: Duration::from_millis(a.debounce_ms),
            max_delay: Duration::from_millis(a.max_delay_ms),
            poll_interval: Duration::from_millis(a.poll_interval_ms),
            concurrency: a.concurrency,
            history_per_tenant: i64::from(a.history_per_tenant),
            statement_timeout: Duration::from_millis(a.statement_timeout_ms),
            refresh_stale_max_jobs: i64::from(a.refresh_stale_max_jobs),
            instance: self.group_instance_id(),
        }
    }

    pub fn supervisor_settings(&self) -> SupervisorSettings {
        let s = &self.supervisor;
        SupervisorSettings {
            restart_backoff_initial: Duration::from_millis(s.restart_backoff_initial_ms),
            restart_backoff_max: Duration::from_millis(s.restart_backoff_max_ms),
            max_consecutive_failures: s.max_consecutive_failures,
            park_duration: Duration::from_secs(s.park_duration_s),
            healthy_after: Duration::from_secs(s.healthy_after_s),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            passivate_after: (s.passivate_after_ms > 0)
                .then(|| Duration::from_millis(s.passivate_after_ms)),
            start_passivated: s.start_passivated,
        }
    }
}
