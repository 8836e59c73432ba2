-- Tenant registry, tenant secrets, SCIM users, idempotency records, outbox, security events.
-- Applied by `enablement migrate` as the owner role. __APP_ROLE__ is replaced by the
-- validated, quoted name of the service role.
--
-- Every table holding tenant data leads its keys with tenant_id and has row-level security
-- enabled and forced, with a fail-closed policy: an unset app.tenant_id matches no row.

-- The registry holds nothing secret: ids, names, status, limits.
create table tenants (
    tenant_id          text primary key check (tenant_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    display_name       text not null check (length(display_name) between 1 and 200),
    status             text not null default 'active' check (status in ('active', 'suspended')),
    rate_limit_per_min integer check (rate_limit_per_min > 0),
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now()
);

-- Secrets: readable only inside the tenant's own scoped transaction.
create table tenant_secrets (
    tenant_id              text primary key references tenants (tenant_id),
    api_token_sha256       bytea not null check (length(api_token_sha256) = 32),
    upstream_client_id     text,
    upstream_client_secret text,
    created_at             timestamptz not null default now(),
    rotated_at             timestamptz
);

create table users (
    tenant_id          text not null references tenants (tenant_id),
    user_id            text not null,
    user_name          text not null,
    email              text,
    role               text not null check (role in ('rep', 'manager', 'admin')),
    external_id        text,
    manager_id         text,
    active             boolean not null,
    -- The whole SCIM resource as last received (meta.version = version).
    scim               jsonb not null,
    version            bigint not null check (version >= 1),
    source_occurred_at timestamptz not null,
    source_event_id    text not null,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    primary key (tenant_id, user_id)
);
create index users_by_external_id on users (tenant_id, external_id);
create index users_by_manager on users (tenant_id, manager_id);

-- One row per SCIM event id ever applied: replays are no-ops.
create table processed_events (
    tenant_id    text not null references tenants (tenant_id),
    event_id     text not null,
    processed_at timestamptz not null default now(),
    primary key (tenant_id, event_id)
);

-- Transactional outbox, relayed to tenant.<id>.<topic> by the tenant's actor.
create table outbox (
    tenant_id   text not null references tenants (tenant_id),
    id          bigint generated always as identity,
    topic       text not null check (topic in ('user_changed', 'events')),
    message_key text not null,
    payload     jsonb not null,
    created_at  timestamptz not null default now(),
    sent_at     timestamptz,
    primary key (tenant_id, id)
);
create index outbox_unsent on outbox (tenant_id, id) where sent_at is null;

create table security_events (
    tenant_id   text not null references tenants (tenant_id),
    id          bigint generated always as identity,
    kind        text not null,
    detail      jsonb not null,
    occurred_at timestamptz not null default now(),
    primary key (tenant_id, id)
);

do $$
declare
    t text;
begin
    foreach t in array array['tenant_secrets', 'users', 'processed_events', 'outbox', 'security_events']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I
                 using (tenant_id = nullif(current_setting(''app.tenant_id'', true), ''''))
                 with check (tenant_id = nullif(current_setting(''app.tenant_id'', true), ''''))',
            t);
    end loop;
end
$$;

-- Least privilege for the service role: data only, no DDL, no deletes of history.
grant usage on schema public to __APP_ROLE__;
grant select, insert, update on tenants to __APP_ROLE__;
grant select, insert, update on tenant_secrets to __APP_ROLE__;
grant select, insert, update on users to __APP_ROLE__;
grant select, insert on processed_events to __APP_ROLE__;
grant select, insert, update, delete on outbox to __APP_ROLE__;
grant select, insert on security_events to __APP_ROLE__;
