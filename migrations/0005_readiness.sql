-- Team readiness reports and the coordination of their aggregation.
--
-- readiness_reports holds tenant data (figures, breakdowns): tenant_id leads the key, RLS
-- enabled and forced, fail-closed policy, like every tenant table.
--
-- readiness_schedule and readiness_locks hold no tenant data (ids, timestamps, counters),
-- like the tenants registry: aggregator processes read them across tenants to find due work.
--   * readiness_schedule: a change of a tenant's inputs marks it (same transaction as the
--     change); the aggregator runs it once the debounce passed.
--   * readiness_locks: the row of a tenant is locked (FOR UPDATE SKIP LOCKED) by the
--     transaction computing its report, so at most one aggregation per tenant runs at a time
--     across every process. Kept apart from the schedule so that marking a change never waits
--     for a running aggregation.

create table readiness_reports (
    tenant_id     text not null references tenants (tenant_id),
    id            bigint generated always as identity,
    provisional   boolean not null,
    computed_at   timestamptz not null,
    inputs_as_of  timestamptz,
    trigger       text not null check (trigger in ('manual', 'changed', 'scheduled')),
    computed_by   text not null,
    started_at    timestamptz not null,
    finished_at   timestamptz not null,
    report        jsonb not null,
    primary key (tenant_id, id)
);

alter table readiness_reports enable row level security;
alter table readiness_reports force row level security;
create policy tenant_isolation on readiness_reports
    using (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    with check (tenant_id = nullif(current_setting('app.tenant_id', true), ''));

create table readiness_schedule (
    tenant_id     text primary key references tenants (tenant_id),
    -- First unaggregated change (null: nothing pending).
    pending_since timestamptz,
    -- Last change: the run is due `debounce` after it (or `max_delay` after pending_since).
    changed_at    timestamptz,
    -- Bumped by every change: a run clears pending_since only if no change arrived meanwhile.
    generation    bigint not null default 0,
    reason        text,
    -- The last report was provisional: re-aggregate when the tenant's sync work settles.
    await_drain   boolean not null default false
);
create index readiness_schedule_pending on readiness_schedule (pending_since)
    where pending_since is not null;

create table readiness_locks (
    tenant_id text primary key references tenants (tenant_id)
);
insert into readiness_locks (tenant_id) select tenant_id from tenants;

-- Inputs of the aggregate, per tenant: active users, their progress rows (the primary key
-- (tenant_id, user_id, course_id) serves the join), pending sync work, stale progress.
create index users_active on users (tenant_id, user_id) include (manager_id, role) where active;
create index upstream_jobs_pending_sync on upstream_jobs (tenant_id, subject)
    where status = 'pending' and kind = 'sync_progress';

grant select, insert, delete on readiness_reports to __APP_ROLE__;
grant select, insert, update on readiness_schedule to __APP_ROLE__;
grant select, insert, update on readiness_locks to __APP_ROLE__;
