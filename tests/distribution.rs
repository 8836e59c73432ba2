//! The schema is ready to be distributed by `tenant_id` (e.g. Citus, with every tenant table
//! distributed on it and co-located): read from the catalog of a freshly migrated database,
//! every table holds a `tenant_id`, and every primary key, unique constraint or unique index
//! and foreign key leads with it (a distributed table's unique constraints must contain the
//! distribution column, and foreign keys between distributed tables must join on it).

mod common;

use common::TestEnv;

/// Every way a table of the public schema breaks the rule, as readable lines.
async fn violations(env: &TestEnv) -> Vec<String> {
    let db = &env.owner;
    let mut out = Vec::new();
    // Tables without a tenant_id column (the migration ledger is the service's own).
    for row in db
        .query(
            "select c.relname::text from pg_class c
               join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = 'public' and c.relkind in ('r', 'p')
                and c.relname <> 'schema_migrations'
                and not exists (select 1 from pg_attribute a
                                 where a.attrelid = c.oid and a.attname = 'tenant_id'
                                   and not a.attisdropped)
              order by 1",
            &[],
        )
        .await
        .expect("tables query")
    {
        out.push(format!(
            "table {} has no tenant_id",
            row.get::<_, String>(0)
        ));
    }
    // Unique indexes (primary keys, unique constraints, unique indexes) whose first column
    // is not tenant_id.
    for row in db
        .query(
            "select c.relname::text, i.relname::text, coalesce(a.attname::text, '(expression)')
               from pg_index x
               join pg_class c on c.oid = x.indrelid
               join pg_class i on i.oid = x.indexrelid
               join pg_namespace n on n.oid = c.relnamespace
               left join pg_attribute a on a.attrelid = c.oid and a.attnum = x.indkey[0]
              where n.nspname = 'public' and x.indisunique
                and c.relname <> 'schema_migrations'
                and coalesce(a.attname::text, '') <> 'tenant_id'
              order by 1, 2",
            &[],
        )
        .await
        .expect("indexes query")
    {
        out.push(format!(
            "unique index {} on {} leads with {}",
            row.get::<_, String>(1),
            row.get::<_, String>(0),
            row.get::<_, String>(2)
        ));
    }
    // Foreign keys that do not pair tenant_id with tenant_id first.
    for row in db
        .query(
            "select c.relname::text, k.conname::text
               from pg_constraint k
               join pg_class c on c.oid = k.conrelid
               join pg_namespace n on n.oid = c.relnamespace
               join pg_attribute a on a.attrelid = k.conrelid and a.attnum = k.conkey[1]
               join pg_attribute f on f.attrelid = k.confrelid and f.attnum = k.confkey[1]
              where n.nspname = 'public' and k.contype = 'f'
                and (a.attname <> 'tenant_id' or f.attname <> 'tenant_id')
              order by 1, 2",
            &[],
        )
        .await
        .expect("foreign keys query")
    {
        out.push(format!(
            "foreign key {} on {} does not lead with tenant_id on both sides",
            row.get::<_, String>(1),
            row.get::<_, String>(0)
        ));
    }
    out
}

#[tokio::test]
async fn every_key_of_every_table_leads_with_tenant_id() {
    let env = TestEnv::new().await;
    let found = violations(&env).await;
    assert!(
        found.is_empty(),
        "not distributable by tenant_id:\n{}",
        found.join("\n")
    );
    // The check sees the tables at all.
    let tables = env
        .owner
        .query_one(
            "select count(*) from pg_tables where schemaname = 'public'",
            &[],
        )
        .await
        .expect("count tables")
        .get::<_, i64>(0);
    assert!(tables >= 15, "{tables} tables");
}

#[tokio::test]
async fn a_table_keyed_without_tenant_id_is_reported() {
    let env = TestEnv::new().await;
    env.owner
        .batch_execute(
            "create table bad_keyed (id bigserial primary key, tenant_id text not null);
             create table bad_untenanted (id int primary key);
             create table bad_unique (tenant_id text not null, email text not null);
             create unique index bad_unique_email on bad_unique (email);
             create table bad_fk (tenant_id text not null, other bigint references bad_keyed (id));",
        )
        .await
        .expect("create bad tables");
    let found = violations(&env).await.join("\n");
    for what in [
        "unique index bad_keyed_pkey on bad_keyed leads with id",
        "table bad_untenanted has no tenant_id",
        "unique index bad_unique_email on bad_unique leads with email",
        "foreign key bad_fk_other_fkey on bad_fk",
    ] {
        assert!(found.contains(what), "missing {what:?} in:\n{found}");
    }
}
