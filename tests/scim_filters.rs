//! SCIM filters (RFC 7644 §3.4.2.2) evaluated by PostgreSQL over stored users: every
//! operator, logical forms, complex attribute filters, case rules per attribute, the
//! enterprise extension, refusals, and that a filter never reaches another tenant's rows
//! (run inside the tenant's RLS scope, as the service role).

mod common;

use common::{tenant, TestEnv};
use enablement::actors::scim::filter::{parse, FilterError};
use enablement::actors::TenantId;
use enablement::db::scim_filter::user_condition;
use serde_json::json;

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

async fn seed(
    env: &TestEnv,
    t: &TenantId,
    users: &[(&str, &str, Option<&str>, bool, serde_json::Value)],
) {
    for (id, user_name, external_id, active, scim) in users {
        env.owner
            .execute(
                "insert into users (tenant_id, user_id, user_name, role, external_id, active, scim,
                                    version, source_occurred_at, source_event_id)
                 values ($1, $2, $3, 'rep', $4, $5, $6, 1, now(), 'seed')",
                &[&t.as_str(), id, user_name, external_id, active, scim],
            )
            .await
            .expect("seed user");
    }
}

/// The ids the filter selects in the tenant's scope, as the service role.
async fn select(env: &TestEnv, t: &TenantId, filter: &str) -> Result<Vec<String>, FilterError> {
    let f = parse(filter)?;
    let cond = user_condition(&f, "r", 1)?;
    let sql = format!(
        "select r.user_id from users r where {} order by 1",
        cond.sql
    );
    let store = env.store().await;
    let params = cond.params.clone();
    let ids = enablement::tenant_tx!(store, t, |tx, _t| {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = tx.query(&sql, &refs).await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>())
    })
    .await
    .expect("filter query runs");
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_and_form_is_evaluated_in_postgres() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("fa"), tenant("fb"));
    env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    seed(
        &env,
        &a,
        &[
            ("u1", "Alice@Acme.test", Some("EXT-1"), true, json!({
                "userName": "Alice@Acme.test", "displayName": "Alice Anders",
                "name": {"givenName": "Alice", "familyName": "Anders"},
                "emails": [{"value": "alice@acme.test", "type": "work", "primary": true},
                           {"value": "a@home.test", "type": "home"}],
                ENTERPRISE: {"employeeNumber": "100", "department": "Sales", "manager": {"value": "u3"}}})),
            ("u2", "bob@acme.test", Some("ext-2"), false, json!({
                "userName": "bob@acme.test", "displayName": "Bob",
                "emails": [{"value": "bob@other.test", "type": "work"}],
                ENTERPRISE: {"employeeNumber": "200", "department": "sales"}})),
            ("u3", "carol@acme.test", None, true, json!({
                "userName": "carol@acme.test", "title": "Manager", "emails": [],
                "name": {"givenName": "Carol"}})),
            ("u4", "dave@acme.test", Some("EXT-4"), true, json!({"userName": "dave@acme.test"})),
        ],
    )
    .await;
    // Another tenant's user that matches every filter below: never selected.
    seed(&env, &b, &[("u1", "Alice@Acme.test", Some("EXT-1"), true, json!({
        "userName": "Alice@Acme.test", "emails": [{"value": "alice@acme.test", "type": "work", "primary": true}]}))]).await;

    let cases: &[(&str, &[&str])] = &[
        (r#"userName eq "alice@acme.test""#, &["u1"]),
        (r#"USERNAME Eq "ALICE@ACME.TEST""#, &["u1"]),
        (r#"externalId eq "ext-1""#, &[]),
        (r#"externalId eq "EXT-1""#, &["u1"]),
        (r#"id eq "u2""#, &["u2"]),
        (r#"userName ne "bob@acme.test""#, &["u1", "u3", "u4"]),
        (r#"userName co "ACME""#, &["u1", "u2", "u3", "u4"]),
        (r#"userName sw "ca""#, &["u3"]),
        (r#"userName ew "@ACME.test""#, &["u1", "u2", "u3", "u4"]),
        ("externalId pr", &["u1", "u2", "u4"]),
        ("title pr", &["u3"]),
        (r#"userName gt "bob@acme.test""#, &["u3", "u4"]),
        (r#"userName ge "bob@acme.test""#, &["u2", "u3", "u4"]),
        (r#"userName lt "bob@acme.test""#, &["u1"]),
        (r#"userName le "bob@acme.test""#, &["u1", "u2"]),
        ("active eq false", &["u2"]),
        ("active eq true", &["u1", "u3", "u4"]),
        (r#"emails[type eq "work" and value co "@acme"]"#, &["u1"]),
        (r#"emails[type eq "work"]"#, &["u1", "u2"]),
        (r#"emails co "home""#, &["u1"]),
        (r#"emails.type eq "home""#, &["u1"]),
        ("emails pr", &["u1", "u2"]),
        ("emails[primary eq true]", &["u1"]),
        ("not (active eq true)", &["u2"]),
        (
            r#"(userName sw "a" or userName sw "b") and active eq true"#,
            &["u1"],
        ),
        (
            r#"userName sw "a" or userName sw "b" and active eq true"#,
            &["u1"],
        ),
        (
            &format!(r#"{ENTERPRISE}:department eq "SALES""#),
            &["u1", "u2"],
        ),
        (&format!(r#"{ENTERPRISE}:manager.value eq "u3""#), &["u1"]),
        (
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "bob@acme.test""#,
            &["u2"],
        ),
        (r#"name.givenName sw "c""#, &["u3"]),
        (
            r#"meta.lastModified gt "2000-01-01T00:00:00Z""#,
            &["u1", "u2", "u3", "u4"],
        ),
        (r#"meta.created lt "2000-01-01T00:00:00Z""#, &[]),
        ("not (userName pr)", &[]),
        // Values are parameters: quotes and SQL in a value are text to compare.
        (r#"userName eq "x' or '1'='1""#, &[]),
        (r#"displayName eq "Bob\") or (\"1\" eq \"1""#, &[]),
    ];
    for (filter, want) in cases {
        let got = select(&env, &a, filter)
            .await
            .unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(got, *want, "{filter}");
    }

    for bad in [
        "userName eq",
        r#"userName xx "a""#,
        r#"(userName eq "a""#,
        r#"emails[type eq "work""#,
        r#"foo eq "a""#,
        "active gt true",
        r#"meta.created gt "yesterday""#,
        r#"userName eq "a" and"#,
        r#"emails[value[type eq "x"]]"#,
        r#"userName eq 'single'"#,
        r#"userName eq "bad \q escape""#,
        r#"userName co 12"#,
    ] {
        assert!(
            select(&env, &a, bad).await.is_err(),
            "{bad} must be refused"
        );
    }
    let deep = format!("{}userName pr{}", "(".repeat(40), ")".repeat(40));
    assert!(matches!(
        select(&env, &a, &deep).await,
        Err(FilterError::TooComplex(_))
    ));
    let wide = vec![r#"userName eq "x""#; 300].join(" or ");
    assert!(matches!(
        select(&env, &a, &wide).await,
        Err(FilterError::TooComplex(_))
    ));
    let long = format!(r#"userName eq "{}""#, "x".repeat(5000));
    assert!(matches!(
        select(&env, &a, &long).await,
        Err(FilterError::TooComplex(_))
    ));
}

/// `userName eq` and `externalId eq` are index lookups: the plan names the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_name_and_external_id_lookups_use_an_index() {
    let env = TestEnv::new().await;
    let t = tenant("fidx");
    env.add_tenant(&t).await;
    env.owner
        .execute(
            "insert into users (tenant_id, user_id, user_name, role, external_id, active, scim,
                                version, source_occurred_at, source_event_id)
             select $1, 'u' || g, 'user' || g || '@acme.test', 'rep', 'ext-' || g, true,
                    jsonb_build_object('userName', 'user' || g || '@acme.test'), 1, now(), 'seed'
               from generate_series(1, 20000) g",
            &[&t.as_str()],
        )
        .await
        .expect("seed");
    env.owner
        .batch_execute("analyze users")
        .await
        .expect("analyze");
    let store = env.store().await;
    for (filter, index) in [
        (
            r#"userName eq "USER777@acme.test""#,
            "users_by_user_name_lower",
        ),
        (r#"externalId eq "ext-777""#, "users_by_external_id"),
    ] {
        let cond = user_condition(&parse(filter).expect("parse"), "r", 2).expect("compile");
        let sql = format!(
            "explain select r.user_id from users r where r.tenant_id = $1 and {}",
            cond.sql
        );
        // As the service role inside the tenant's row-level security, where the service
        // runs it (a superuser's plan would hide a qual the policy keeps out of the index).
        let tenant_id = t.as_str().to_owned();
        let values = cond.params.clone();
        let plan: Vec<String> = store
            .scoped(&t, move |tx, _| {
                Box::pin(async move {
                    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        vec![&tenant_id];
                    params.extend(
                        values
                            .iter()
                            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)),
                    );
                    Ok(tx
                        .query(&sql, &params)
                        .await?
                        .iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect())
                })
            })
            .await
            .expect("explain");
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{filter}: {plan}");
    }
}
