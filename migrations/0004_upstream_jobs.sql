-- The durable per-tenant queue of upstream work (progress syncs, SCIM pushes). Drained by
-- the tenant's actor in priority order (0 interactive, 1 SCIM push, 2 background) under the
-- tenant's rate budget; a job is marked done in the same transaction as its effects.
create table upstream_jobs (
    tenant_id  text not null references tenants (tenant_id),
    id         bigint generated always as identity,
    priority   smallint not null check (priority in (0, 1, 2)),
    kind       text not null check (kind in ('sync_progress', 'push_user')),
    subject    text not null,
    payload    jsonb not null default '{}'::jsonb,
    status     text not null default 'pending' check (status in ('pending', 'done', 'failed')),
    attempts   integer not null default 0,
    last_error text,
    created_at timestamptz not null default now(),
    done_at    timestamptz,
    primary key (tenant_id, id)
);
create index upstream_jobs_pending on upstream_jobs (tenant_id, priority, id) where status = 'pending';

alter table upstream_jobs enable row level security;
alter table upstream_jobs force row level security;
create policy tenant_isolation on upstream_jobs
    using (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    with check (tenant_id = nullif(current_setting('app.tenant_id', true), ''));

grant select, insert, update on upstream_jobs to __APP_ROLE__;
