//! Every metric name the service emits, in one place (`enablement_<subsystem>_<name>_<unit>`,
//! `_total` for counters). Tenant id is a label only where an operator needs per-tenant views.

/// Counter {tenant, outcome=applied|unchanged|stale|duplicate}: SCIM events committed.
pub const SCIM_EVENTS_TOTAL: &str = "enablement_scim_events_total";
/// Counter {tenant, reason}: SCIM payloads rejected to the tenant's DLQ topic.
pub const SCIM_DLQ_TOTAL: &str = "enablement_scim_dlq_total";
/// Histogram (seconds): one micro-batch from hand-off to commit (no tenant label).
pub const SCIM_BATCH_DURATION_SECONDS: &str = "enablement_scim_batch_duration_seconds";
/// Histogram (events): size of committed micro-batches.
pub const SCIM_BATCH_SIZE_EVENTS: &str = "enablement_scim_batch_size_events";
/// Gauge {tenant}: records fetched from the broker but not yet committed by the actor.
pub const TENANT_BACKLOG_MESSAGES: &str = "enablement_tenant_backlog_messages";
/// Gauge {tenant}: records in the tenant's inbound partition not yet consumed (broker lag).
pub const TENANT_LAG_MESSAGES: &str = "enablement_tenant_lag_messages";
/// Counter {tenant}: times the tenant's partition was paused at the high-water mark.
pub const TENANT_PARTITION_PAUSES_TOTAL: &str = "enablement_tenant_partition_pauses_total";
/// Counter {tenant}: tenant actor restarts after a failure.
pub const ACTOR_RESTARTS_TOTAL: &str = "enablement_actor_restarts_total";
/// Counter {tenant}: tenant actors started in this process (an assignment, a restart after
/// a failure, a wake after passivation). A rebalance that does not move a tenant leaves its
/// count alone.
pub const ACTOR_STARTS_TOTAL: &str = "enablement_actor_starts_total";
/// Gauges {tenant} that describe a tenant owned by this instance: `/metrics` leaves out the
/// series of tenants whose partitions moved to another instance.
pub const OWNED_TENANT_GAUGES: [&str; 7] = [
    READINESS_REPORT_AGE_SECONDS,
    TENANT_BACKLOG_MESSAGES,
    TENANT_LAG_MESSAGES,
    UPSTREAM_QUEUE_DEPTH,
    UPSTREAM_QUEUE_OLDEST_AGE_SECONDS,
    OUTBOX_UNRELAYED_ROWS,
    OUTBOX_OLDEST_UNRELAYED_AGE_SECONDS,
];
/// Gauge: tenant actors running in this process.
pub const ACTORS_RUNNING: &str = "enablement_actors_running";
/// Gauge: tenants owned here whose actors are passivated (idle, stopped, woken on demand).
pub const ACTORS_PASSIVATED: &str = "enablement_actors_passivated";
/// Counter: tenant actors passivated after `supervisor.passivate_after_ms` idle.
pub const TENANT_PASSIVATIONS_TOTAL: &str = "enablement_tenant_passivations_total";
/// Counter {reason}: passivated tenants woken, by what woke them (`record`, `job`,
/// `request`).
pub const TENANT_WAKES_TOTAL: &str = "enablement_tenant_wakes_total";
/// Gauge: tenants parked after crash-looping.
pub const ACTORS_PARKED: &str = "enablement_actors_parked";
/// Counter {tenant}: outbox rows published to Kafka.
pub const OUTBOX_PUBLISHED_TOTAL: &str = "enablement_outbox_published_total";
/// Counter {kind}: security events (tenant mismatch, cross-tenant access).
pub const SECURITY_EVENTS_TOTAL: &str = "enablement_security_events_total";
/// Counter {operation}: cache operations that failed (Redis down); the service carries on.
pub const CACHE_ERRORS_TOTAL: &str = "enablement_cache_errors_total";
/// Counter {tenant, resource}: cache hits and misses.
pub const CACHE_HITS_TOTAL: &str = "enablement_cache_hits_total";
pub const CACHE_MISSES_TOTAL: &str = "enablement_cache_misses_total";
/// Counter {tenant, status}: upstream (MindTickle) calls by outcome (`ok`, `429`, `5xx`, ...).
pub const UPSTREAM_CALLS_TOTAL: &str = "enablement_upstream_calls_total";
/// Counter {tenant}: 429 answers from the platform (should stay 0 outside injected storms).
pub const UPSTREAM_RATE_LIMITED_TOTAL: &str = "enablement_upstream_rate_limited_total";
/// Histogram (seconds): time an upstream call waited for a permit of its tenant's budget.
pub const UPSTREAM_PERMIT_WAIT_SECONDS: &str = "enablement_upstream_permit_wait_seconds";
/// Gauge {tenant, priority}: pending jobs in the tenant's durable upstream queue.
pub const UPSTREAM_QUEUE_DEPTH: &str = "enablement_upstream_queue_depth";
/// Gauge {tenant, priority}: age of the tenant's oldest pending upstream job (0 when none).
pub const UPSTREAM_QUEUE_OLDEST_AGE_SECONDS: &str = "enablement_upstream_queue_oldest_age_seconds";
/// Gauge {tenant}: outbox rows committed but not yet published to Kafka.
pub const OUTBOX_UNRELAYED_ROWS: &str = "enablement_outbox_unrelayed_rows";
/// Gauge {tenant}: age of the tenant's oldest unpublished outbox row (0 when none).
pub const OUTBOX_OLDEST_UNRELAYED_AGE_SECONDS: &str =
    "enablement_outbox_oldest_unrelayed_age_seconds";
/// Gauge: 1 when this instance answers `/readyz` with 200 (its dependencies answer).
pub const INSTANCE_READY: &str = "enablement_instance_ready";
/// Gauge: tenants whose inbound topics this instance's consumer subscribed to.
pub const KAFKA_SUBSCRIBED_TENANTS: &str = "enablement_kafka_subscribed_tenants";
/// Gauge: tenants whose partitions the consumer group assigned to this instance.
pub const KAFKA_ASSIGNED_TENANTS: &str = "enablement_kafka_assigned_tenants";
/// Counter {kind}: errors receiving from the broker.
pub const FEED_ERRORS_TOTAL: &str = "enablement_feed_errors_total";
/// Counter {route, method, status_class}: HTTP requests answered, by route template (never
/// the raw path: `/api/tenants/{tenant}/users`, or `unmatched`).
pub const HTTP_REQUESTS_TOTAL: &str = "enablement_http_requests_total";
/// Histogram (seconds) {route, method}: time from a request's head to its answer's head.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "enablement_http_request_duration_seconds";
/// Histogram (seconds) {trigger}: one readiness aggregation, lock to commit.
pub const READINESS_AGGREGATION_SECONDS: &str = "enablement_readiness_aggregation_duration_seconds";
/// Gauge {tenant}: seconds since the tenant's latest readiness report was computed (absent
/// while it has none).
pub const READINESS_REPORT_AGE_SECONDS: &str = "enablement_readiness_report_age_seconds";
/// Counter {state=provisional|final}: readiness reports stored.
pub const READINESS_REPORTS_TOTAL: &str = "enablement_readiness_reports_total";
/// Counter {reason}: re-aggregations scheduled (inputs changed, sync work settled).
pub const READINESS_REAGGREGATIONS_SCHEDULED_TOTAL: &str =
    "enablement_readiness_reaggregations_scheduled_total";
/// Counter: aggregation requests answered 202 because one was already running.
pub const READINESS_COALESCED_TOTAL: &str = "enablement_readiness_coalesced_total";
/// Counter: aggregations that failed (the schedule keeps the tenant due).
pub const READINESS_FAILURES_TOTAL: &str = "enablement_readiness_failures_total";
/// Counter {reason=transient|split|isolated}: SCIM batch transactions tried again: after a
/// transient database failure, split to isolate a refused record, or that record alone.
pub const SCIM_BATCH_RETRIES_TOTAL: &str = "enablement_scim_batch_retries_total";
/// Counter {reason}: consumer-group watchdog findings (`no_assignment`, `foreign_assignment`, `silent_feed`) and
/// the consumer re-creations they caused.
pub const KAFKA_GROUP_WEDGED_TOTAL: &str = "enablement_kafka_group_wedged_total";
/// Counter {reason}: records on a shared inbound partition that name none of its tenants
/// (no or invalid key, unknown tenant, a tenant with its own topics, a suspended tenant,
/// wrong partition), published on the shared DLQ topic.
pub const SHARED_RECORDS_DEAD_LETTERED_TOTAL: &str =
    "enablement_shared_records_dead_lettered_total";
/// Counter {tenant}: records pausing a tenant's feed because its byte budget was full.
pub const TENANT_BYTE_BUDGET_PAUSES_TOTAL: &str = "enablement_tenant_byte_budget_pauses_total";
/// Counter {table}: rows deleted by the retention job.
pub const RETENTION_DELETED_TOTAL: &str = "enablement_retention_deleted_total";
/// Counter {reason}: requests the HTTP edge refused before any work (`auth_failures`,
/// `client_concurrency`).
pub const HTTP_REFUSED_TOTAL: &str = "enablement_http_refused_total";

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric's name, kind and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn d(name: &'static str, kind: Kind, help: &'static str) -> Described {
    Described { name, kind, help }
}

/// The `# HELP` text of every metric above; the telemetry module describes them all at
/// start-up. A unit test fails when a name above has no entry here.
pub const CATALOG: &[Described] = {
    use Kind::*;
    &[
        d(SCIM_EVENTS_TOTAL, Counter, "SCIM events committed, by outcome (applied, unchanged, stale, duplicate)."),
        d(SCIM_DLQ_TOTAL, Counter, "SCIM records dead-lettered to the tenant's DLQ topic, by reason."),
        d(SCIM_BATCH_DURATION_SECONDS, Histogram, "Time from a micro-batch's hand-off to its commit, in seconds."),
        d(SCIM_BATCH_SIZE_EVENTS, Histogram, "Events per committed micro-batch."),
        d(SCIM_BATCH_RETRIES_TOTAL, Counter, "Batch transactions tried again: after a transient failure, split, or a record alone."),
        d(TENANT_BACKLOG_MESSAGES, Gauge, "Records fetched from the broker and not yet committed by the tenant's actor."),
        d(TENANT_LAG_MESSAGES, Gauge, "Records in the tenant's inbound partition not yet consumed (broker lag)."),
        d(TENANT_PARTITION_PAUSES_TOTAL, Counter, "Times the tenant's partition was paused at its prefetch high-water mark."),
        d(TENANT_BYTE_BUDGET_PAUSES_TOTAL, Counter, "Times the tenant's feed paused because its byte budget was full."),
        d(ACTOR_RESTARTS_TOTAL, Counter, "Tenant actor restarts after a failure."),
        d(ACTOR_STARTS_TOTAL, Counter, "Tenant actors started in this process (assignment, restart, wake)."),
        d(ACTORS_RUNNING, Gauge, "Tenant actors running in this process."),
        d(ACTORS_PASSIVATED, Gauge, "Tenants owned here whose actors are passivated (idle, woken on demand)."),
        d(ACTORS_PARKED, Gauge, "Tenants parked after crash-looping (no actor until a restart or reassignment)."),
        d(TENANT_PASSIVATIONS_TOTAL, Counter, "Tenant actors passivated after being idle."),
        d(TENANT_WAKES_TOTAL, Counter, "Passivated tenants woken, by what woke them (record, job, request)."),
        d(OUTBOX_PUBLISHED_TOTAL, Counter, "Outbox rows published to Kafka."),
        d(OUTBOX_UNRELAYED_ROWS, Gauge, "Outbox rows committed and not yet published to Kafka."),
        d(OUTBOX_OLDEST_UNRELAYED_AGE_SECONDS, Gauge, "Age of the oldest unpublished outbox row, in seconds (0 when none)."),
        d(SECURITY_EVENTS_TOTAL, Counter, "Security events (tenant mismatch, cross-tenant access attempts), by kind."),
        d(CACHE_ERRORS_TOTAL, Counter, "Cache operations that failed (Redis unavailable); answered without the cache."),
        d(CACHE_HITS_TOTAL, Counter, "Cache hits, by resource."),
        d(CACHE_MISSES_TOTAL, Counter, "Cache misses, by resource."),
        d(UPSTREAM_CALLS_TOTAL, Counter, "MindTickle API calls, by outcome (ok, 429, 5xx, ...)."),
        d(UPSTREAM_RATE_LIMITED_TOTAL, Counter, "429 answers from the MindTickle API."),
        d(UPSTREAM_PERMIT_WAIT_SECONDS, Histogram, "Time an upstream call waited for a permit of its tenant's rate budget, in seconds."),
        d(UPSTREAM_QUEUE_DEPTH, Gauge, "Pending jobs in the tenant's durable upstream queue, by priority."),
        d(UPSTREAM_QUEUE_OLDEST_AGE_SECONDS, Gauge, "Age of the tenant's oldest pending upstream job, by priority, in seconds."),
        d(FEED_ERRORS_TOTAL, Counter, "Errors receiving from the broker, by kind."),
        d(HTTP_REQUESTS_TOTAL, Counter, "HTTP requests answered, by route template, method and status class."),
        d(HTTP_REQUEST_DURATION_SECONDS, Histogram, "HTTP request latency by route template and method, in seconds."),
        d(HTTP_REFUSED_TOTAL, Counter, "Requests the HTTP edge refused before any work, by reason."),
        d(READINESS_AGGREGATION_SECONDS, Histogram, "One readiness aggregation from lock to commit, in seconds, by trigger."),
        d(READINESS_REPORT_AGE_SECONDS, Gauge, "Seconds since the tenant's latest readiness report was computed."),
        d(READINESS_REPORTS_TOTAL, Counter, "Readiness reports stored, by state (provisional, final)."),
        d(READINESS_REAGGREGATIONS_SCHEDULED_TOTAL, Counter, "Readiness re-aggregations scheduled, by reason."),
        d(READINESS_COALESCED_TOTAL, Counter, "Aggregation requests coalesced into one already running."),
        d(READINESS_FAILURES_TOTAL, Counter, "Readiness aggregations that failed (the tenant stays due)."),
        d(KAFKA_GROUP_WEDGED_TOTAL, Counter, "Consumer-group watchdog findings and the consumer re-creations they caused, by reason."),
        d(KAFKA_SUBSCRIBED_TENANTS, Gauge, "Tenants whose inbound topics this instance's consumer subscribed to."),
        d(KAFKA_ASSIGNED_TENANTS, Gauge, "Tenants whose partitions the consumer group assigned to this instance."),
        d(SHARED_RECORDS_DEAD_LETTERED_TOTAL, Counter, "Records on a shared inbound partition naming none of its tenants, dead-lettered, by reason."),
        d(RETENTION_DELETED_TOTAL, Counter, "Rows deleted by the retention job, by table."),
        d(INSTANCE_READY, Gauge, "1 when this instance is ready (its dependencies answer), else 0."),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name declared in this file has HELP text, once; names carry their unit.
    #[test]
    fn every_metric_is_described_once_with_a_unit_suffix() {
        let source = include_str!("metric_names.rs");
        let declared: std::collections::BTreeSet<&str> = source
            .split('"')
            .filter(|s| s.len() > 11 && s.starts_with("enablement_") && !s.contains(' '))
            .collect();
        let described: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
        for name in &declared {
            assert_eq!(
                described.iter().filter(|n| *n == name).count(),
                1,
                "{name} must have exactly one CATALOG entry"
            );
        }
        assert_eq!(
            described.len(),
            declared.len(),
            "CATALOG names an undeclared metric"
        );
        for m in CATALOG {
            assert!(!m.help.is_empty() && m.help.ends_with('.'), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(
                    m.name.ends_with("_seconds") || m.name.ends_with("_events"),
                    "{}",
                    m.name
                ),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }
}
