-- The SCIM 2.0 service provider (`/scim/v2/{tenant}/`, README "SCIM provider").
--
-- * A SCIM bearer token per tenant, separate from the API token (an identity provider's
--   credential grants provisioning, not the tenant API), stored only as SHA-256 and
--   rotatable (`tenant scim-token`). Null: the tenant has no SCIM provider enabled.
-- * `users.deleted`: a SCIM DELETE (over HTTP or as a Kafka DELETE event) deactivates the
--   user as before (history, reports) and marks it deleted, so the provider answers 404
--   for it and leaves it out of lists; a later CREATE of the same id clears the mark.
-- * Groups (teams) and their members. Members are rows, not a jsonb array: a PATCH adding
--   or removing thousands of members is one statement, and the readiness report groups
--   progress by them.

alter table tenant_secrets
    add column scim_token_sha256 bytea check (length(scim_token_sha256) = 32),
    add column scim_token_rotated_at timestamptz;

alter table users add column deleted boolean not null default false;

-- `userName eq` inside the tenant's row-level security: a qual applying `lower()` (not
-- leakproof) to a column is evaluated after the policy, never as an index condition, so the
-- index of 0015 on `lower(user_name)` is never used by the service role. A generated
-- lower-case column compares with `=` (leakproof) and is indexed.
alter table users
    add column user_name_lower text generated always as (lower(user_name)) stored;
create index users_by_user_name_lower on users (tenant_id, user_name_lower);
drop index users_by_lower_user_name;

create table scim_groups (
    tenant_id    text not null references tenants (tenant_id),
    group_id     text not null,
    display_name text not null,
    display_name_lower text generated always as (lower(display_name)) stored,
    external_id  text,
    -- The resource as last written, without `members` (they are rows below) and `meta`.
    scim         jsonb not null,
    version      bigint not null check (version >= 1),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    primary key (tenant_id, group_id)
);
create index scim_groups_by_display_name_lower on scim_groups (tenant_id, display_name_lower);
create index scim_groups_by_external_id on scim_groups (tenant_id, external_id);

create table scim_group_members (
    tenant_id text not null,
    group_id  text not null,
    user_id   text not null,
    primary key (tenant_id, group_id, user_id),
    foreign key (tenant_id, group_id) references scim_groups (tenant_id, group_id)
        on delete cascade
);
create index scim_group_members_by_user on scim_group_members (tenant_id, user_id);

do $$
declare
    t text;
begin
    foreach t in array array['scim_groups', 'scim_group_members']
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

-- A SCIM DELETE of a group removes it (and its member rows): groups carry no history the
-- reports need; users are never deleted by the service role.
grant select, insert, update, delete on scim_groups to __APP_ROLE__;
grant select, insert, delete on scim_group_members to __APP_ROLE__;
