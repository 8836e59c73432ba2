-- Retention: the service deletes what has outlived its use, per tenant and in small
-- batches (src/retention.rs): relayed outbox rows, finished upstream jobs, old security
-- events, old idempotency records and old dead letters. Deletes run in the tenant's scoped
-- transaction, so row-level security still confines them to that tenant: without a scope
-- they match no row.
--
-- An event replayed after its idempotency record expired is still a no-op: the user row
-- keeps the event's occurredAt, and an event not newer than it is stale.

grant delete on processed_events to __APP_ROLE__;
grant delete on security_events to __APP_ROLE__;
grant delete on upstream_jobs to __APP_ROLE__;
grant delete on dead_letters to __APP_ROLE__;

-- Age scans: BRIN indexes are tiny and nearly free to maintain on append-mostly tables.
create index processed_events_age on processed_events using brin (processed_at);
create index security_events_age on security_events using brin (occurred_at);
create index outbox_age on outbox using brin (created_at);
create index dead_letters_age on dead_letters using brin (created_at);
create index upstream_jobs_finished on upstream_jobs (tenant_id, done_at) where status <> 'pending';
