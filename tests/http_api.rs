//! The tenant-scoped HTTP API: authentication matrix, edge validation and the roster cache.

mod common;

use std::time::Duration;

use common::{eventually, push, scim_event, tenant, Service, TestEnv};
use serde_json::Value;

async fn get(svc: &Service, path: &str, token: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", svc.base_url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, cache, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reach_only_their_own_tenant() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("auth-a"), tenant("auth-b"));
    let token_a = env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&a, &b]).await;
    let op = env.config.http.operator_token.expose().to_owned();
    let path_a = format!("/api/tenants/{a}/users");
    let path_b = format!("/api/tenants/{b}/users");
    let forged = format!("ent_{a}.{}", "0".repeat(64));

    assert_eq!(get(&svc, &path_a, None).await.0, 401);
    assert_eq!(get(&svc, &path_a, Some("garbage")).await.0, 401);
    assert_eq!(
        get(&svc, &path_a, Some(&forged)).await.0,
        401,
        "right format, wrong secret"
    );
    assert_eq!(get(&svc, &path_a, Some(&token_a)).await.0, 200);
    assert_eq!(get(&svc, &path_a, Some(&op)).await.0, 200);
    assert_eq!(get(&svc, &path_b, Some(&op)).await.0, 200);

    // A's token on B's path: 404 like a tenant that does not exist, and a security event.
    let (status, _, body) = get(&svc, &path_b, Some(&token_a)).await;
    assert_eq!(status, 404);
    let missing = get(&svc, "/api/tenants/no-such-tenant/users", Some(&token_a)).await;
    assert_eq!(
        (missing.0, &missing.2),
        (404, &body),
        "indistinguishable from a missing tenant"
    );
    assert_eq!(
        env.count(
            "select count(*) from security_events where tenant_id = $1 and kind = 'cross_tenant_access'",
            &a
        )
        .await,
        2
    );
    assert!(
        svc.metric("enablement_security_events_total{kind=\"cross_tenant_access\"}")
            .await
            >= 2.0
    );
    assert!(
        !body.to_string().contains(b.as_str()),
        "no other tenant's data in errors"
    );

    // Glob-shaped and otherwise invalid tenant ids are refused at the edge.
    for raw in ["a*", "a%3F", "%5Ba%5D", "A", "a.b"] {
        let (status, _, body) = get(&svc, &format!("/api/tenants/{raw}/users"), Some(&op)).await;
        assert_eq!(status, 400, "{raw}");
        assert_eq!(body["error"]["code"], "invalid_tenant_id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roster_is_cached_per_tenant_and_invalidated_by_scim_changes_only_for_that_tenant() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("cache-a"), tenant("cache-b"));
    let token_a = env.add_tenant(&a).await;
    let token_b = env.add_tenant(&b).await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&a, &b]).await;
    env.provision(&a, "a1", "u1", "u1@a.test").await;
    env.provision(&b, "b1", "u1", "u1@b.test").await;
    let (pa, pb) = (
        format!("/api/tenants/{a}/users"),
        format!("/api/tenants/{b}/users"),
    );
    let (_, cache, body) = get(&svc, &pa, Some(&token_a)).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
    assert_eq!(body["users"][0]["email"], "u1@a.test");
    assert_eq!(
        get(&svc, &pa, Some(&token_a)).await.1.as_deref(),
        Some("hit")
    );
    assert_eq!(
        get(&svc, &pb, Some(&token_b)).await.1.as_deref(),
        Some("miss")
    );
    assert_eq!(
        get(&svc, &pb, Some(&token_b)).await.1.as_deref(),
        Some("hit")
    );

    // A SCIM change of A invalidates A's roster, not B's.
    push(
        &env.config,
        &a,
        &[scim_event(a.as_str(), "a2", "CREATE", "u2", 2, "u2@a.test")],
    )
    .await;
    eventually("a2 applied", Duration::from_secs(30), || async {
        (env.processed(&a).await == 2).then_some(())
    })
    .await;
    let redis = redis::Client::open(env.config.redis.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let key_b: Option<String> = redis::cmd("GET")
        .arg(format!("tenant:{{{b}}}:roster"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // The invalidation follows the commit (after it, never before): wait for it rather
    // than racing the actor between its commit and its invalidation.
    let key_a = format!("tenant:{{{a}}}:roster");
    eventually("A's roster invalidated", Duration::from_secs(30), || {
        let (mut conn, key_a) = (conn.clone(), key_a.clone());
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key_a)
                .query_async(&mut conn)
                .await
                .ok()?;
            v.is_none().then_some(())
        }
    })
    .await;
    assert!(key_b.is_some(), "B's cached roster untouched");
    let (_, cache, body) = get(&svc, &pa, Some(&token_a)).await;
    assert_eq!(
        cache.as_deref(),
        Some("miss"),
        "A's roster was invalidated after the commit"
    );
    assert_eq!(body["users"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(&svc, &pb, Some(&token_b)).await.1.as_deref(),
        Some("hit")
    );
    let hits = format!("enablement_cache_hits_total{{tenant=\"{a}\",resource=\"roster\"}}");
    let misses = format!("enablement_cache_misses_total{{tenant=\"{a}\",resource=\"roster\"}}");
    assert_eq!(svc.metric(&hits).await, 1.0);
    assert_eq!(svc.metric(&misses).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_roster_is_served_from_postgres_and_the_failure_counted() {
    let env = TestEnv::new().await;
    let a = tenant("noredis");
    let token = env.add_tenant(&a).await;
    let closed = format!("redis://127.0.0.1:{}/0", common::free_port());
    let svc = Service::start(&env, &[("ENABLEMENT__REDIS__URL", &closed)]);
    // Not ready (Redis is down) but serving.
    eventually("http up", Duration::from_secs(60), || async {
        let (status, body) = svc.get("/readyz").await?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (status == 503 && v["checks"]["redis"]["ok"] == false).then_some(())
    })
    .await;
    push(
        &env.config,
        &a,
        &[scim_event(a.as_str(), "n1", "CREATE", "u1", 1, "u1@n.test")],
    )
    .await;
    eventually("applied without Redis", Duration::from_secs(60), || async {
        (env.processed(&a).await == 1).then_some(())
    })
    .await;
    let (status, cache, body) = get(&svc, &format!("/api/tenants/{a}/users"), Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(body["users"][0]["id"], "u1");
    let m = svc.metrics().await;
    let errors: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("enablement_cache_errors_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(errors >= 2.0, "cache failures are counted: {errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_is_cached_and_suspending_a_tenant_clears_only_its_namespace() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("susp-a"), tenant("susp-b"));
    let token_a = env.add_tenant(&a).await;
    let token_b = env.add_tenant(&b).await;
    let store = env.store().await;
    let sim = common::start_sim(enablement_tools::simulator::SimSettings::default()).await;
    for t in [&a, &b] {
        let secret = enablement_tools::simulator::dev_secret(t.as_str());
        store
            .set_upstream_credentials(t, t.as_str(), &secret)
            .await
            .unwrap();
    }
    let svc = Service::start(&env, &[("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str())]);
    svc.wait_ready(&[&a, &b]).await;
    let courses_a = format!("/api/tenants/{a}/courses");
    let (status, cache, body) = get(&svc, &courses_a, Some(&token_a)).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    assert_eq!(body["courses"].as_array().unwrap().len(), 6);
    assert_eq!(
        get(&svc, &courses_a, Some(&token_a)).await.1.as_deref(),
        Some("hit")
    );
    let stats: Value = reqwest::get(format!("{sim}/admin/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["organisations"][a.as_str()]["served"],
        1,
        "second answer came from Redis"
    );
    for (t, token) in [(&a, &token_a), (&b, &token_b)] {
        get(&svc, &format!("/api/tenants/{t}/users"), Some(token)).await;
    }
    assert_eq!(common::tenant_cache_keys(&env, &a).await.len(), 2);
    assert_eq!(common::tenant_cache_keys(&env, &b).await.len(), 1);

    common::cli_ok(&env, &["tenant", "suspend", a.as_str()]);
    assert!(
        common::tenant_cache_keys(&env, &a).await.is_empty(),
        "A's namespace cleared"
    );
    assert_eq!(
        common::tenant_cache_keys(&env, &b).await.len(),
        1,
        "B's keys untouched"
    );
    // The suspended tenant's actor is drained and stopped; the other keeps running.
    eventually(
        "suspended tenant's actor stopped",
        Duration::from_secs(30),
        || async {
            let (_, body) = svc.get("/readyz").await?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["tenants"]["running"] == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        get(&svc, &format!("/api/tenants/{b}/users"), Some(&token_b))
            .await
            .1
            .as_deref(),
        Some("hit")
    );
}
