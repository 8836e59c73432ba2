-- Operations: who runs each tenant (for `enablement status`), dead letters redriven, and
-- per-tenant operational figures in one round trip.
--
-- tenant_owners holds no tenant data (ids, a state, counters, a timestamp), like the
-- registry: each consumer instance reports the tenants it owns every few seconds; a row
-- older than a few report intervals means nobody reported the tenant lately.

create table tenant_owners (
    tenant_id    text primary key references tenants (tenant_id) on delete cascade,
    instance_id  text not null,
    actor_state  text not null,
    restarts     bigint not null default 0,
    lag_messages bigint,
    reported_at  timestamptz not null default now()
);
grant select, insert, update, delete on tenant_owners to __APP_ROLE__;

-- `enablement events redrive` marks what it republished: redriving again skips it.
alter table dead_letters add column redriven_at timestamptz;
grant update (redriven_at) on dead_letters to __APP_ROLE__;

-- Per-tenant figures (counts and ages only, never rows). A plain (security invoker)
-- function: it scopes itself to each tenant in turn exactly as the service's scoped
-- transactions do (`app.tenant_id`, transaction-local), so row-level security still
-- confines every read, and restores the caller's setting before it returns.
-- p_history: also count the last hour's events and dead letters (for `status`; the
-- metrics sampler leaves them out).
create function tenant_ops_stats(p_tenants text[], p_history boolean)
returns table (
    tenant_id              text,
    unrelayed_rows         bigint,
    oldest_unrelayed_s     double precision,
    pending_jobs           jsonb,
    oldest_pending_s       jsonb,
    events_last_hour       bigint,
    dead_letters_last_hour bigint,
    last_report_at         timestamptz,
    last_report_provisional boolean
)
language plpgsql volatile
set search_path = public, pg_temp
as $$
declare
    saved text := current_setting('app.tenant_id', true);
    t text;
begin
    foreach t in array p_tenants loop
        perform set_config('app.tenant_id', t, true);
        tenant_id := t;
        select count(*), coalesce(extract(epoch from now() - min(o.created_at)), 0)
          into unrelayed_rows, oldest_unrelayed_s
          from outbox o
         where o.seq > coalesce((select r.relayed_seq from outbox_relay r), 0);
        select coalesce(jsonb_object_agg(j.priority, j.n), '{}'::jsonb),
               coalesce(jsonb_object_agg(j.priority, j.age), '{}'::jsonb)
          into pending_jobs, oldest_pending_s
          from (select u.priority, count(*) as n,
                       extract(epoch from now() - min(u.created_at)) as age
                  from upstream_jobs u where u.status = 'pending' group by u.priority) j;
        if p_history then
            select count(*) into events_last_hour from processed_events e
             where e.processed_at > now() - interval '1 hour';
            select count(*) into dead_letters_last_hour from dead_letters d
             where d.created_at > now() - interval '1 hour';
        end if;
        -- The newest report is the one with the highest id (the primary key's order).
        select r.computed_at, r.provisional into last_report_at, last_report_provisional
          from readiness_reports r order by r.id desc limit 1;
        if not found then
            last_report_at := null;
            last_report_provisional := null;
        end if;
        return next;
    end loop;
    perform set_config('app.tenant_id', coalesce(saved, ''), true);
end
$$;
revoke all on function tenant_ops_stats(text[], boolean) from public;
grant execute on function tenant_ops_stats(text[], boolean) to __APP_ROLE__;
