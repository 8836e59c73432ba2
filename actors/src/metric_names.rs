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
pub const OWNED_TENANT_GAUGES: [&str; 3] = [
    TENANT_BACKLOG_MESSAGES,
    TENANT_LAG_MESSAGES,
    UPSTREAM_QUEUE_DEPTH,
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
/// Counter {kind}: errors receiving from the broker.
pub const FEED_ERRORS_TOTAL: &str = "enablement_feed_errors_total";
/// Counter {route, status}: HTTP requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "enablement_http_requests_total";
/// Histogram (seconds) {trigger}: one readiness aggregation, lock to commit.
pub const READINESS_AGGREGATION_SECONDS: &str = "enablement_readiness_aggregation_duration_seconds";
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
/// Requests the HTTP edge refused before any work, by `reason` (`auth_failures`,
/// `client_concurrency`).
pub const HTTP_REFUSED_TOTAL: &str = "enablement_http_refused_total";
