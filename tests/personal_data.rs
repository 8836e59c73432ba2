//! Personal data: a SCIM DELETE can erase the user's personal fields, and `tenant delete
//! --erase` removes a tenant's rows, secrets, cache namespace and topics (only an audit
//! record stays) while the other tenants go on.

mod common;

use std::time::Duration;

use common::{eventually, read_topic, scim_event, tenant, Service, TestEnv};
use enablement::actors::{TenantId, TopicKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scim_delete_can_erase_the_users_personal_fields() {
    let env = TestEnv::new().await;
    let t = tenant("erase-user");
    env.add_tenant(&t).await;
    let svc = Service::start(
        &env,
        &[("ENABLEMENT__PIPELINE__SCIM_DELETE", "erase_personal_data")],
    );
    svc.wait_ready(&[&t]).await;
    env.provision(&t, "pd-e1", "u1", "ada@erase.test").await;
    common::push(
        &env.config,
        &t,
        &[scim_event(
            t.as_str(),
            "pd-e2",
            "DELETE",
            "u1",
            2,
            "ada@erase.test",
        )],
    )
    .await;
    let row = eventually("the delete applied", Duration::from_secs(30), || async {
        let r = env
            .owner
            .query_one(
                "select active, user_name, email, external_id, manager_id, scim::text, version
                   from users where tenant_id = $1 and user_id = 'u1'",
                &[&t.as_str()],
            )
            .await
            .ok()?;
        (!r.get::<_, bool>(0)).then_some(r)
    })
    .await;
    assert_eq!(
        row.get::<_, String>(1),
        "u1",
        "the user name is replaced by the id"
    );
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert_eq!(row.get::<_, Option<String>>(3), None);
    assert_eq!(row.get::<_, Option<String>>(4), None);
    let scim: Value = serde_json::from_str(&row.get::<_, String>(5)).unwrap();
    assert_eq!(
        scim,
        serde_json::json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "u1", "active": false})
    );
    assert_eq!(row.get::<_, i64>(6), 2, "the erasure is a new version");
    let changed = eventually("user_changed relayed", Duration::from_secs(30), || async {
        let recs = read_topic(&env.config, &t, TopicKind::UserChanged).await;
        (recs.len() >= 2).then_some(recs)
    })
    .await;
    assert!(
        !changed[1].to_string().contains("ada@erase.test"),
        "{}",
        changed[1]
    );
    assert_eq!(changed[1]["payload"]["active"], Value::Bool(false));
}

fn topics_of(env: &TestEnv, t: &TenantId) -> Vec<String> {
    let consumer: BaseConsumer = enablement::kafka::base_client_config(&env.config.kafka)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let prefix = format!("tenant.{t}.");
    md.topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Rows of the tenant in every table that has a `tenant_id` column.
async fn rows_of(env: &TestEnv, t: &TenantId) -> i64 {
    rows_of_except(env, t, &[]).await
}

/// Rows of the tenant in every table but `except`.
async fn rows_of_except(env: &TestEnv, t: &TenantId, except: &[&str]) -> i64 {
    let tables: Vec<String> = env
        .owner
        .query(
            "select table_name::text from information_schema.columns
              where column_name = 'tenant_id' and table_schema = 'public'
                and table_name <> 'tenant_erasures'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 14, "{tables:?}");
    let mut n = 0;
    for table in tables.iter().filter(|t| !except.contains(&t.as_str())) {
        n += env
            .count(
                &format!("select count(*) from {table} where tenant_id = $1"),
                t,
            )
            .await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_tenant_removes_its_rows_secrets_cache_and_topics_and_keeps_an_audit_record() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("erase-a"), tenant("erase-b"));
    let token_a = env.add_tenant(&a).await;
    let token_b = env.add_tenant(&b).await;
    let store = env.store().await;
    store
        .set_upstream_credentials(&a, "client-a", "secret-a")
        .await
        .unwrap();
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&a, &b]).await;
    env.provision(&a, "ea-1", "u1", "u1@a.test").await;
    env.provision(&b, "eb-1", "u1", "u1@b.test").await;
    // Roster cached for both.
    for (t, token) in [(&a, &token_a), (&b, &token_b)] {
        let (status, _, _) = svc
            .call(
                reqwest::Method::GET,
                &format!("/api/tenants/{t}/users"),
                token,
            )
            .await;
        assert_eq!(status, 200);
    }
    assert!(!common::tenant_cache_keys(&env, &a).await.is_empty());
    assert_eq!(topics_of(&env, &a).len(), 4);
    // tenant_owners changes on its own (the running instance reports the tenants it owns).
    let before_b = rows_of_except(&env, &b, &["tenant_owners"]).await;

    // Without the confirmation: refused, nothing touched.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enablement"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .args(["tenant", "delete", a.as_str(), "--erase"])
        .envs(env.service_env("127.0.0.1:1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(rows_of(&env, &a).await > 0);

    let out = common::cli_ok(
        &env,
        &[
            "tenant",
            "delete",
            a.as_str(),
            "--erase",
            "--confirm",
            a.as_str(),
        ],
    );
    assert_eq!(out, format!("tenant {a} erased"));
    assert_eq!(
        rows_of(&env, &a).await,
        0,
        "a row of the erased tenant is left"
    );
    assert!(common::tenant_cache_keys(&env, &a).await.is_empty());
    eventually("topics deleted", Duration::from_secs(30), || async {
        topics_of(&env, &a).is_empty().then_some(())
    })
    .await;
    let audit = env
        .owner
        .query_one(
            "select (rows->>'users')::int, (rows->>'tenant_secrets')::int, (rows->>'tenants')::int
               from tenant_erasures where tenant_id = $1",
            &[&a.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            audit.get::<_, i32>(0),
            audit.get::<_, i32>(1),
            audit.get::<_, i32>(2)
        ),
        (1, 1, 1)
    );
    // The erased tenant's token opens nothing; the other tenant is untouched and still served.
    let (status, _, _) = svc
        .call(
            reqwest::Method::GET,
            &format!("/api/tenants/{a}/users"),
            &token_a,
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(rows_of_except(&env, &b, &["tenant_owners"]).await, before_b);
    assert!(!common::tenant_cache_keys(&env, &b).await.is_empty());
    env.provision(&b, "eb-2", "u2", "u2@b.test").await;
}
