-- Secrets at rest: a tenant's MindTickle client secret is stored sealed (AES-256-GCM with
-- an operator key, src/sealing.rs) beside the id of the key that sealed it. The plaintext
-- column of 0001 is no longer written; `enablement secrets rotate-key` seals any value an
-- older version left there and clears it, so a dump without the key reveals no secret.
alter table tenant_secrets
    add column upstream_secret_sealed bytea,
    add column upstream_secret_key_id text,
    add constraint tenant_secrets_sealed_with_key
        check ((upstream_secret_sealed is null) = (upstream_secret_key_id is null));
