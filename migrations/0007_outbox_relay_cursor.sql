-- The outbox is relayed by a per-tenant sequence and cursor instead of marking every row.
--
-- Every outbox row gets `seq`, allocated from the tenant's `outbox_relay` row. Allocating
-- updates that row, whose lock is held until commit: a tenant's outbox writers commit one
-- after another, so `seq` order is commit order and the committed seqs are gap-free. The
-- relay then needs one number per tenant, `relayed_seq` (every row up to it was published),
-- instead of an update per row: the tenant actor publishes a batch's rows from memory
-- right after the commit and moves the cursor inside its next transaction.
--
-- Lock order for writers of a tenant: the `outbox_relay` row before `readiness_schedule`.

create table outbox_relay (
    tenant_id   text primary key references tenants (tenant_id),
    -- The next seq to allocate.
    next_seq    bigint not null default 1 check (next_seq >= 1),
    -- Every row with seq <= relayed_seq was published (at least once).
    relayed_seq bigint not null default 0 check (relayed_seq >= 0),
    relayed_at  timestamptz
);

alter table outbox add column seq bigint;

-- Backfill as the owner: without FORCE the owner is not subject to the policies.
alter table outbox no force row level security;
update outbox o set seq = n.seq
  from (select tenant_id, id, row_number() over (partition by tenant_id order by id) as seq
          from outbox) n
 where o.tenant_id = n.tenant_id and o.id = n.id;
insert into outbox_relay (tenant_id, next_seq, relayed_seq, relayed_at)
select t.tenant_id,
       coalesce(m.last_seq, 0) + 1,
       coalesce(m.first_unsent - 1, m.last_seq, 0),
       now()
  from tenants t
  left join (select tenant_id, max(seq) as last_seq,
                    min(seq) filter (where sent_at is null) as first_unsent
               from outbox group by tenant_id) m on m.tenant_id = t.tenant_id;
alter table outbox force row level security;

alter table outbox alter column seq set not null;
create unique index outbox_by_seq on outbox (tenant_id, seq);
drop index outbox_unsent;
alter table outbox drop column sent_at;

alter table outbox_relay enable row level security;
alter table outbox_relay force row level security;
create policy tenant_isolation on outbox_relay
    using (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    with check (tenant_id = nullif(current_setting('app.tenant_id', true), ''));

grant select, insert, update on outbox_relay to __APP_ROLE__;
