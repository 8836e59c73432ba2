-- `enablement tenant delete <id> --erase` removes every row of a tenant; what stays is this
-- audit record: who was erased, when, and how many rows of each table went (no personal
-- data, so no row-level security; the service role cannot read or write it).
create table tenant_erasures (
    tenant_id  text        not null,
    erased_at  timestamptz not null default now(),
    rows       jsonb       not null,
    primary key (tenant_id, erased_at)
);
