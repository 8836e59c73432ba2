//! Row-level security and the tenant-scoped store, against the real PostgreSQL, connected
//! as the unprivileged service role exactly as the service connects.

mod common;

use common::{tenant, TestEnv};
use enablement::actors::ports::{ScimBatch, TenantStore};
use enablement::actors::scim::{parse_event, ParseLimits};
use enablement::actors::TenantId;
use enablement::db::{commit_pipelined, migrate, migrate_through, TenantScopedStore};
use tokio_postgres::types::{ToSql, Type};

async fn seed_user(store: &TenantScopedStore, t: &TenantId, user: &str) {
    let line = common::scim_event(
        t.as_str(),
        &common::unique("e"),
        "CREATE",
        user,
        1,
        "a@b.test",
    );
    let limits = ParseLimits::at(
        time::OffsetDateTime::now_utc(),
        1 << 20,
        std::time::Duration::from_secs(3600),
    );
    let ev = parse_event(t, line.as_bytes(), limits).expect("valid event");
    store
        .apply_scim_batch(
            t,
            ScimBatch {
                events: vec![ev],
                ..Default::default()
            },
            0,
        )
        .await
        .expect("apply");
}

/// Runs one statement in `scope`'s transaction with `other`'s id as `$1`.
async fn execute_as(
    store: &TenantScopedStore,
    scope: &TenantId,
    sql: &'static str,
    other: &TenantId,
) -> Result<u64, enablement::actors::ports::StoreError> {
    let other = other.to_string();
    store
        .scoped(scope, move |tx, _| {
            Box::pin(async move { tx.execute(sql, &[&other]).await })
        })
        .await
}

async fn visible_users(store: &TenantScopedStore, scope: &TenantId) -> Vec<(String, String)> {
    store
        .scoped(scope, |tx, _| {
            Box::pin(async move {
                Ok(tx
                    .query("select tenant_id, user_id from users order by 1, 2", &[])
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect())
            })
        })
        .await
        .expect("scoped select")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_rows_and_cannot_write_others() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("rls-a"), tenant("rls-b"));
    env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    let store = env.store().await;
    seed_user(&store, &a, "shared-id").await;
    seed_user(&store, &b, "shared-id").await;
    seed_user(&store, &b, "only-b").await;

    assert_eq!(
        visible_users(&store, &a).await,
        vec![(a.to_string(), "shared-id".to_string())]
    );
    assert_eq!(visible_users(&store, &b).await.len(), 2);

    // Inserting a row that names another tenant is refused by the policy's WITH CHECK.
    let err = execute_as(
        &store,
        &a,
        "insert into processed_events (tenant_id, event_id) values ($1, 'x')",
        &b,
    )
    .await
    .expect_err("cross-tenant insert must fail");
    assert!(err.to_string().contains("row-level security"), "{err}");
    assert_eq!(
        env.count(
            "select count(*) from security_events where tenant_id = $1 and kind = 'rls_violation'",
            &a
        )
        .await,
        1,
        "the refused write is recorded as a security event of the acting tenant"
    );

    // Re-labelling one's own row as another tenant's is refused too.
    let err = execute_as(&store, &a, "update users set tenant_id = $1", &b)
        .await
        .expect_err("moving a row to another tenant must fail");
    assert!(err.to_string().contains("row-level security"), "{err}");

    // Updating another tenant's rows by id silently matches nothing.
    let touched = execute_as(
        &store,
        &a,
        "update users set active = false where tenant_id = $1",
        &b,
    )
    .await
    .expect("update runs");
    assert_eq!(touched, 0);
    assert_eq!(
        env.count(
            "select count(*) from users where tenant_id = $1 and active",
            &b
        )
        .await,
        2
    );

    // The outbox and its relay cursor: A's relay sees only A's rows and cannot move B's
    // cursor (which would make B's announcements look published).
    let pending = store.pending_outbox(&a, 0, 100).await.expect("pending");
    assert_eq!(pending.len(), 1, "A's relay reads A's one row only");
    let touched = execute_as(
        &store,
        &a,
        "update outbox_relay set relayed_seq = relayed_seq + 100 where tenant_id = $1",
        &b,
    )
    .await
    .expect("update runs");
    assert_eq!(touched, 0);
    assert_eq!(
        env.count(
            "select relayed_seq from outbox_relay where tenant_id = $1",
            &b
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_setting_sees_nothing_and_the_setting_never_leaks_between_pooled_transactions() {
    let mut env = TestEnv::new().await;
    env.config.postgres.pool_max_size = 1; // one connection: every transaction reuses it
    let (a, b) = (tenant("leak-a"), tenant("leak-b"));
    env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    let pool = env.app_pool().await;
    let store = TenantScopedStore::new(
        pool.clone(),
        enablement::sealing::SecretSealer::shared(env.config.secrets.keys.expose()).unwrap(),
    );
    seed_user(&store, &a, "ua").await;
    seed_user(&store, &b, "ub").await;

    // Without a scope: no rows, no error, and the connection stays usable.
    {
        let conn = pool.get().await.expect("conn");
        let rows = conn
            .query("select * from users", &[])
            .await
            .expect("unscoped select works");
        assert!(rows.is_empty(), "an unset tenant must see no rows");
        let secrets = conn
            .query("select * from tenant_secrets", &[])
            .await
            .expect("unscoped select works");
        assert!(secrets.is_empty(), "secrets are invisible without a scope");
        let setting: Option<String> = conn
            .query_one("select current_setting('app.tenant_id', true)", &[])
            .await
            .expect("setting")
            .get(0);
        assert!(setting.unwrap_or_default().is_empty());
    }
    // A then B on the same pooled connection: each sees only itself.
    assert_eq!(
        visible_users(&store, &a).await,
        vec![(a.to_string(), "ua".into())]
    );
    assert_eq!(
        visible_users(&store, &b).await,
        vec![(b.to_string(), "ub".into())]
    );
    // After a scoped transaction the connection carries no tenant.
    let conn = pool.get().await.expect("conn");
    let setting: Option<String> = conn
        .query_one("select current_setting('app.tenant_id', true)", &[])
        .await
        .expect("setting")
        .get(0);
    assert_eq!(
        setting.unwrap_or_default(),
        "",
        "transaction-local setting must not leak"
    );
    assert!(conn
        .query("select * from users", &[])
        .await
        .expect("select")
        .is_empty());
    drop(conn);
    // A failed transaction does not poison the connection for the next tenant either.
    let _ = store
        .scoped(&a, |tx, _| {
            Box::pin(async move { tx.execute("select 1/0", &[]).await })
        })
        .await
        .expect_err("division by zero");
    assert_eq!(visible_users(&store, &b).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_role_is_least_privileged_and_cannot_touch_policies() {
    let env = TestEnv::new().await;
    let role = &env.config.postgres.app_role;
    let row = env
        .owner
        .query_one(
            "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles where rolname = $1",
            &[role],
        )
        .await
        .expect("role exists");
    let flags: (bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(flags, (false, false, false, false));
    let owned: i64 = env
        .owner
        .query_one(
            "select count(*) from pg_class c join pg_roles r on r.oid = c.relowner where r.rolname = $1",
            &[role],
        )
        .await
        .expect("ownership")
        .get(0);
    assert_eq!(owned, 0, "the service role owns nothing");
    // Every tenant table has RLS enabled and forced.
    let rows = env
        .owner
        .query(
            "select relname, relrowsecurity, relforcerowsecurity from pg_class
              where relname = any($1) order by relname",
            &[&vec![
                "tenant_secrets",
                "users",
                "processed_events",
                "outbox",
                "outbox_relay",
                "security_events",
                "dead_letters",
            ]],
        )
        .await
        .expect("pg_class");
    assert_eq!(rows.len(), 7);
    for r in rows {
        let (name, on, forced): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
        assert!(on && forced, "{name} must enable and force RLS");
    }
    let pool = env.app_pool().await;
    let conn = pool.get().await.expect("conn");
    for ddl in [
        "alter table users disable row level security",
        "alter table users no force row level security",
        "drop policy tenant_isolation on users",
        "create policy open_all on users using (true)",
        "alter role current_user bypassrls",
        "set session authorization postgres",
        "create table sneaky (x int)",
    ] {
        let err = conn.batch_execute(ddl).await.expect_err(ddl);
        let code = err.code().map(|c| c.code().to_owned()).unwrap_or_default();
        assert!(code == "42501" || code == "42P01", "{ddl}: {err} ({code})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_readable_only_in_their_tenants_scope_and_the_registry_holds_none() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("sec-a"), tenant("sec-b"));
    let token_a = env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    let store = env.store().await;
    assert!(store
        .token_matches(&a, enablement::tokens::hash(&token_a))
        .await
        .unwrap());
    assert!(
        !store
            .token_matches(&b, enablement::tokens::hash(&token_a))
            .await
            .unwrap(),
        "tenant A's token must not open tenant B"
    );
    let b_str = b.to_string();
    let seen: i64 = store
        .scoped(&a, move |tx, _| {
            Box::pin(async move {
                Ok(tx
                    .query_one(
                        "select count(*) from tenant_secrets where tenant_id = $1",
                        &[&b_str],
                    )
                    .await?
                    .get(0))
            })
        })
        .await
        .unwrap();
    assert_eq!(seen, 0, "A's scope cannot read B's secrets");
    // The registry columns hold nothing secret, and the token is stored only hashed.
    let cols: Vec<String> = env
        .owner
        .query(
            "select column_name::text from information_schema.columns where table_name = 'tenants' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        cols,
        [
            "created_at",
            "display_name",
            "rate_limit_per_min",
            "status",
            "tenant_id",
            "topics",
            "updated_at"
        ]
    );
    let stored: Vec<u8> = env
        .owner
        .query_one(
            "select api_token_sha256 from tenant_secrets where tenant_id = $1",
            &[&a.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, enablement::tokens::hash(&token_a).to_vec());
    assert!(!String::from_utf8_lossy(&stored).contains(&token_a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_from_two_processes_at_once() {
    let env = TestEnv::new().await; // applied once already
    let cfg = env.config.postgres.clone();
    let total = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let (r1, r2) = tokio::join!(migrate(&cfg), migrate(&cfg));
    for r in [r1, r2] {
        let r = r.expect("concurrent migrate succeeds");
        assert!(r.applied.is_empty());
        assert_eq!(
            r.already_applied.len(),
            total,
            "every migration file is embedded"
        );
    }
    // Two fresh databases migrated concurrently by two real processes.
    let fresh = common::unique("m").replace('-', "_");
    env.owner
        .batch_execute(&format!("create database {fresh}"))
        .await
        .unwrap();
    let url = env
        .config
        .postgres
        .migrate_url
        .replace(&env.db_name, &fresh);
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_enablement"))
            .args([
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
                "migrate",
            ])
            .env("ENABLEMENT__POSTGRES__MIGRATE_URL", &url)
            .output()
            .expect("run migrate")
    };
    let (o1, o2) = std::thread::scope(|s| {
        let h1 = s.spawn(run);
        let h2 = s.spawn(run);
        (h1.join().unwrap(), h2.join().unwrap())
    });
    assert!(o1.status.success() && o2.status.success(), "{o1:?} {o2:?}");
    let outs = [o1, o2].map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let all = format!("applied: {total};");
    assert!(outs.iter().any(|o| o.contains(&all)), "{outs:?}");
    assert!(outs.iter().any(|o| o.contains("applied: 0;")), "{outs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_to_the_relay_cursor_keeps_unsent_outbox_rows_pending() {
    let env = TestEnv::new().await;
    let fresh = common::unique("m").replace('-', "_");
    env.owner
        .batch_execute(&format!("create database {fresh}"))
        .await
        .unwrap();
    let mut cfg = env.config.postgres.clone();
    cfg.migrate_url = cfg.migrate_url.replace(&env.db_name, &fresh);
    // A deployment on the schema before migration 0007: rows marked sent one by one.
    migrate_through(&cfg, 6).await.expect("migrate to 0006");
    let (owner, conn) = tokio_postgres::connect(&cfg.migrate_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    owner
        .batch_execute(
            "insert into tenants (tenant_id, display_name) values
                 ('up-a', 'A'), ('up-b', 'B'), ('up-c', 'C');
             insert into outbox (tenant_id, topic, message_key, payload, sent_at) values
                 ('up-a', 'user_changed', 'u1', '{\"n\": 1}', now()),
                 ('up-b', 'user_changed', 'u1', '{\"n\": 1}', now()),
                 ('up-a', 'user_changed', 'u2', '{\"n\": 2}', now()),
                 ('up-a', 'events', 'u1', '{\"n\": 3}', null),
                 ('up-b', 'user_changed', 'u2', '{\"n\": 2}', now()),
                 ('up-a', 'user_changed', 'u3', '{\"n\": 4}', null);",
        )
        .await
        .unwrap();
    let report = migrate(&cfg).await.expect("upgrade");
    assert!(report
        .applied
        .iter()
        .any(|m| m == "0007_outbox_relay_cursor.sql"));
    // Per tenant, seq follows the old id order; the cursor stops before the first unsent row.
    let seqs: Vec<(String, i64, i64)> = owner
        .query(
            "select tenant_id, (payload->>'n')::int8, seq from outbox order by tenant_id, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expect = |t: &str, n: i64, seq: i64| (t.to_string(), n, seq);
    assert_eq!(
        seqs,
        vec![
            expect("up-a", 1, 1),
            expect("up-a", 2, 2),
            expect("up-a", 3, 3),
            expect("up-a", 4, 4),
            expect("up-b", 1, 1),
            expect("up-b", 2, 2),
        ]
    );
    let cursors: Vec<(String, i64, i64)> = owner
        .query(
            "select tenant_id, next_seq, relayed_seq from outbox_relay order by tenant_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        cursors,
        vec![
            expect("up-a", 5, 2),
            expect("up-b", 3, 2),
            expect("up-c", 1, 0),
        ]
    );
    // The upgraded table is still forced under RLS.
    let forced: bool = owner
        .query_one(
            "select relforcerowsecurity from pg_class where relname = 'outbox'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(forced);
}

/// `pg_dump` of the test database, as the owner.
fn dump(env: &TestEnv) -> String {
    let out = std::process::Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--data-only",
            &env.db_name,
        ])
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_secrets_are_sealed_at_rest_and_the_key_rotates() {
    use enablement::actors::ports::UpstreamCredentials;
    let mut env = TestEnv::new().await;
    let (a, b) = (tenant("seal-a"), tenant("seal-b"));
    env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    let store = env.store().await;
    let secret = "mt-secret-of-a-5b9f07";
    assert!(store
        .set_upstream_credentials(&a, "client-a", secret)
        .await
        .unwrap());
    assert_eq!(
        store.upstream_credentials(&a).await.unwrap(),
        Some(("client-a".to_string(), secret.to_string()))
    );
    // At rest: no plaintext column, no plaintext anywhere in a dump of the database.
    let row = env
        .owner
        .query_one(
            "select upstream_client_secret, upstream_secret_key_id from tenant_secrets where tenant_id = $1",
            &[&a.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("test-1"));
    assert!(!dump(&env).contains(secret), "the dump reveals the secret");

    // A sealed secret copied into another tenant's row does not open there.
    env.owner
        .execute(
            "update tenant_secrets set upstream_client_id = 'x', upstream_secret_key_id = s.k,
                    upstream_secret_sealed = s.v
               from (select upstream_secret_key_id k, upstream_secret_sealed v
                       from tenant_secrets where tenant_id = $1) s
              where tenant_id = $2",
            &[&a.as_str(), &b.as_str()],
        )
        .await
        .unwrap();
    let err = store.upstream_credentials(&b).await.unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err}");

    // Without the key: a clear error naming the setting, not the secret.
    let keyless = TenantScopedStore::new(
        env.app_pool().await,
        std::sync::Arc::new(enablement::sealing::SecretSealer::from_spec("").unwrap()),
    );
    let err = keyless
        .upstream_credentials(&a)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("secrets.keys") && !err.contains(secret),
        "{err}"
    );

    // A plaintext left by an older version, then rotation to a new key with the CLI.
    env.owner
        .execute(
            "update tenant_secrets set upstream_client_id = 'client-b', upstream_client_secret = 'legacy-b-secret',
                    upstream_secret_key_id = null, upstream_secret_sealed = null where tenant_id = $1",
            &[&b.as_str()],
        )
        .await
        .unwrap();
    let new_key = "test-2:7e57000000000000000000000000000000000000000000000000000000000002";
    env.config.secrets.keys =
        enablement::config::Secret::new(format!("{new_key},{}", common::TEST_SECRETS_KEY));
    let out = common::cli_ok(&env, &["secrets", "rotate-key"]);
    assert_eq!(out, "2 tenant secrets sealed with key test-2");
    let ids: Vec<(Option<String>, Option<String>)> = env
        .owner
        .query(
            "select upstream_secret_key_id, upstream_client_secret from tenant_secrets
              where tenant_id = any($1) order by tenant_id",
            &[&vec![a.as_str(), b.as_str()]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        ids,
        vec![(Some("test-2".into()), None), (Some("test-2".into()), None)]
    );
    assert!(!dump(&env).contains("legacy-b-secret"));
    // The old key can go: the new one alone opens both.
    env.config.secrets.keys = enablement::config::Secret::new(new_key);
    let rotated = env.store().await;
    assert_eq!(
        rotated.upstream_credentials(&a).await.unwrap().unwrap().1,
        secret
    );
    assert_eq!(
        rotated.upstream_credentials(&b).await.unwrap().unwrap().1,
        "legacy-b-secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_a_role_that_could_bypass_row_level_security() {
    let env = TestEnv::new().await;
    let suffix = env.db_name.trim_start_matches("t_").to_owned();
    let (bypass, owner, member) = (
        format!("r_bypass_{suffix}"),
        format!("r_owner_{suffix}"),
        format!("r_member_{suffix}"),
    );
    env.owner
        .batch_execute(&format!(
            "create role {bypass} login bypassrls;
             create role {owner} login;
             create role {member} login in role {owner};
             grant connect on database {db} to {bypass}, {owner}, {member};
             alter table dead_letters owner to {owner};",
            db = env.db_name
        ))
        .await
        .unwrap();
    let with_role = |role: &str| {
        let mut pg = env.config.postgres.clone();
        pg.url = pg.url.replace("enablement_app@", &format!("{role}@"));
        pg
    };
    for (role, says) in [
        (bypass.as_str(), "BYPASSRLS"),
        (owner.as_str(), "owns"),
        (member.as_str(), "owns"),
        ("postgres", "superuser"),
    ] {
        match enablement::db::connect_pool(&with_role(role)).await {
            Err(e @ enablement::db::DbError::Refused { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(says) && text.contains("postgres.url"),
                    "{role}: {text}"
                );
            }
            Err(other) => panic!("{role}: {other}"),
            Ok(_) => panic!("{role} must be refused"),
        }
    }
    // The role `migrate` made is accepted.
    assert!(enablement::db::connect_pool(&env.config.postgres)
        .await
        .is_ok());
    env.owner
        .batch_execute(&format!(
            "alter table dead_letters owner to postgres;
             revoke connect on database {db} from {bypass}, {owner}, {member};
             drop role {member}; drop role {owner}; drop role {bypass};",
            db = env.db_name
        ))
        .await
        .unwrap();
}

/// A work that sends its transaction's COMMIT with its last statements
/// (`db::commit_pipelined`): what it wrote is committed once, visible to others, and the
/// pooled connection's next transaction is a new one in its own tenant's scope; a statement
/// that fails before that COMMIT leaves nothing (the server rolls back) and is the error
/// reported. The commit happens inside the work, before it returns (another session sees
/// the row then), not when the store commits after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_sent_with_the_work_commits_once_and_a_failure_before_it_leaves_nothing() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("commit-a"), tenant("commit-b"));
    env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    // One pooled connection: every transaction below runs on the same one.
    let mut pg = env.config.postgres.clone();
    pg.pool_max_size = 1;
    let store = TenantScopedStore::new(
        enablement::db::connect_pool(&pg).await.expect("pool"),
        enablement::sealing::SecretSealer::shared(env.config.secrets.keys.expose())
            .expect("test key"),
    );
    let insert = "insert into processed_events (tenant_id, event_id) values ($1, $2)";
    let xid = "select pg_current_xact_id()::text";

    let (observer, conn) =
        tokio_postgres::connect(&env.config.postgres.migrate_url, tokio_postgres::NoTls)
            .await
            .expect("observer connects");
    tokio::spawn(conn);
    let (first, seen_inside, scope_after): (String, i64, String) = store
        .scoped(&a, move |tx, t| {
            Box::pin(async move {
                // Statements sent whole on their first poll (`query_typed`): a COMMIT
                // pipelined behind a statement that is prepared first would overtake it.
                let params = [(&t as &(dyn ToSql + Sync), Type::TEXT), (&"ahead-1", Type::TEXT)];
                let (id, inserted, committed) = tokio::join!(
                    biased;
                    tx.query_typed(xid, &[]),
                    tx.query_typed(insert, &params),
                    commit_pipelined(tx),
                );
                inserted?;
                committed?;
                // Still inside the work: another session already sees the row, and a
                // statement now runs outside the tenant's scope (the setting ended with it).
                let seen: i64 = observer
                    .query_one(
                        "select count(*) from processed_events where event_id = 'ahead-1' and tenant_id = $1",
                        &[&t],
                    )
                    .await?
                    .get(0);
                let scope: String = tx
                    .query_one("select coalesce(current_setting('app.tenant_id', true), '')", &[])
                    .await?
                    .get(0);
                Ok((id?[0].get(0), seen, scope))
            })
        })
        .await
        .expect("work committed with its statements");
    assert_eq!(seen_inside, 1, "committed before the work returned");
    assert_eq!(scope_after, "", "after the COMMIT no tenant scope is left");
    let owner_sees = |event: &'static str| {
        let a = a.to_string();
        let owner = &env.owner;
        async move {
            owner
                .query_one(
                    "select count(*) from processed_events where tenant_id = $1 and event_id = $2",
                    &[&a, &event],
                )
                .await
                .expect("owner count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        owner_sees("ahead-1").await,
        1,
        "committed and visible to another session"
    );

    // The same connection, next transaction: a new transaction, scoped to the new tenant.
    let (second, seen): (String, i64) = store
        .scoped(&b, move |tx, _| {
            Box::pin(async move {
                let id: String = tx.query_one(xid, &[]).await?.get(0);
                let seen: i64 = tx
                    .query_one("select count(*) from processed_events", &[])
                    .await?
                    .get(0);
                Ok((id, seen))
            })
        })
        .await
        .expect("next transaction");
    assert_ne!(
        first, second,
        "the pipelined COMMIT ended the first transaction"
    );
    assert_eq!(
        seen, 0,
        "tenant b's transaction sees none of tenant a's rows"
    );

    // A failed statement before the COMMIT: the error is that statement's, nothing stays.
    let failed = store
        .scoped(&a, move |tx, t| {
            Box::pin(async move {
                let fresh = [
                    (&t as &(dyn ToSql + Sync), Type::TEXT),
                    (&"ahead-2", Type::TEXT),
                ];
                let again = [
                    (&t as &(dyn ToSql + Sync), Type::TEXT),
                    (&"ahead-1", Type::TEXT),
                ];
                let (kept, duplicate, committed) = tokio::join!(
                    biased;
                    tx.query_typed(insert, &fresh),
                    tx.query_typed(insert, &again),
                    commit_pipelined(tx),
                );
                kept?;
                duplicate?;
                committed
            })
        })
        .await;
    match failed {
        Err(enablement::actors::ports::StoreError::Query(m)) => {
            assert!(
                m.contains("duplicate key"),
                "the failed statement's error: {m}"
            )
        }
        other => panic!("expected the duplicate's error, got {other:?}"),
    }
    assert_eq!(
        owner_sees("ahead-2").await,
        0,
        "rolled back with the failed statement"
    );
    // And the connection is usable, outside any transaction left behind.
    let third: String = store
        .scoped(&a, move |tx, _| {
            Box::pin(async move { Ok(tx.query_one(xid, &[]).await?.get(0)) })
        })
        .await
        .expect("connection usable");
    assert_ne!(third, first);
}
