-- Dead letters go through the transactional outbox, once per source record.
--
-- A rejected SCIM record (invalid, unstorable, or refused by the database and isolated by
-- splitting its batch) is written in the same transaction as the rest of its batch: a row
-- in `dead_letters`, keyed by its source offset, and an outbox row carrying the original
-- bytes, key and headers. A batch replayed after a crash or restart finds the offset
-- already dead-lettered and writes nothing: the DLQ topic gets each record once.

create table dead_letters (
    tenant_id     text not null references tenants (tenant_id),
    -- Offset in the tenant's inbound topic (partition 0: one partition per tenant).
    source_offset bigint not null check (source_offset >= 0),
    reason        text not null,
    detail        text not null,
    created_at    timestamptz not null default now(),
    primary key (tenant_id, source_offset)
);

alter table dead_letters enable row level security;
alter table dead_letters force row level security;
create policy tenant_isolation on dead_letters
    using (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    with check (tenant_id = nullif(current_setting('app.tenant_id', true), ''));

-- Outbox rows may carry raw records: a dead letter's bytes need not be JSON (or UTF-8).
alter table outbox drop constraint outbox_topic_check;
alter table outbox add constraint outbox_topic_check
    check (topic in ('user_changed', 'events', 'scim.dlq'));
alter table outbox alter column payload drop not null;
alter table outbox add column raw_payload bytea;
alter table outbox add column raw_key bytea;
alter table outbox add column header_names text[];
alter table outbox add column header_values bytea[];
alter table outbox add constraint outbox_payload_present
    check (payload is not null or raw_payload is not null);

grant select, insert on dead_letters to __APP_ROLE__;
