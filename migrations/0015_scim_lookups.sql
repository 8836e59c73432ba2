-- SCIM provider lookups (issue 13): `userName eq` compares case-insensitively (RFC 7643:
-- userName is caseExact false), so the filter compiles to lower(user_name) = ...; this
-- index keeps that lookup an index scan on 100,000 users per tenant. `externalId eq` is
-- case-exact and served by users_by_external_id (0001).
create index users_by_lower_user_name on users (tenant_id, lower(user_name));
