-- Where a tenant's Kafka records live: its own four topics (`dedicated`, the default), or
-- the shared topics `shared.scim`, `shared.user_changed`, `shared.events`,
-- `shared.scim.dlq`, keyed by tenant id (`shared`, for many small tenants: a broker then
-- holds four topics in all instead of four per tenant). Chosen at registration.
alter table tenants add column topics text not null default 'dedicated'
    check (topics in ('dedicated', 'shared'));
