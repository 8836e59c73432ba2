//! Progress sync through the tenant's actor and rate budget, against the simulator.

mod common;

use std::time::Duration;

use common::{eventually, push, read_topic, scim_event, tenant, Service, TestEnv};
use enablement::actors::TopicKind;
use enablement::db::TenantScopedStore;
use enablement::simulator::{dev_secret, router, SimSettings};
use serde_json::Value;

async fn start_sim() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(SimSettings::default())).await });
    format!("http://{addr}")
}

async fn call(
    svc: &Service,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{}{path}", svc.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_progress_stores_announces_and_answers_202_when_the_budget_is_spent() {
    let env = TestEnv::new().await;
    let (t, other) = (tenant("prog"), tenant("prog-other"));
    let token = env.add_tenant(&t).await;
    let other_token = env.add_tenant(&other).await;
    let store = TenantScopedStore::new(env.app_pool().await);
    store
        .set_upstream_credentials(&t, t.as_str(), &dev_secret(t.as_str()))
        .await
        .unwrap();
    let sim = start_sim().await;
    // A budget of 30/min with no burst beyond 1: the second sync in a row must wait ~2 s.
    let svc = Service::start(
        &env,
        &[
            ("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str()),
            ("ENABLEMENT__MINDTICKLE__REQUESTS_PER_MIN", "30"),
            ("ENABLEMENT__MINDTICKLE__BURST", "1"),
            ("ENABLEMENT__HTTP__REQUEST_DEADLINE_MS", "300"),
        ],
    );
    svc.wait_ready(&[&t, &other]).await;
    push(
        &env.config,
        &t,
        &[scim_event(
            t.as_str(),
            "e1",
            "CREATE",
            "u123",
            1,
            "u@p.test",
        )],
    )
    .await;
    eventually("user provisioned", Duration::from_secs(30), || async {
        (env.processed(&t).await == 1).then_some(())
    })
    .await;
    let path = format!("/api/tenants/{t}/users/u123/sync-progress");
    let (status, _, body) = call(&svc, reqwest::Method::GET, &path, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_synced"))
    );

    let (status, _, first) = call(&svc, reqwest::Method::POST, &path, &token).await;
    assert_eq!(status, 200, "{first}");
    let courses = first["courses"].as_array().unwrap();
    assert!(!courses.is_empty());
    let (status, _, stored) = call(&svc, reqwest::Method::GET, &path, &token).await;
    assert_eq!(status, 200);
    assert_eq!(stored["courses"], first["courses"]);
    assert_eq!(
        env.count(
            "select count(*) from course_progress where tenant_id = $1",
            &t
        )
        .await,
        courses.len() as i64
    );
    let events = eventually(
        "progress.synced published",
        Duration::from_secs(30),
        || async {
            let recs = read_topic(&env.config, &t, TopicKind::Events).await;
            (!recs.is_empty()).then_some(recs)
        },
    )
    .await;
    assert_eq!(events[0]["payload"]["type"], "progress.synced");
    assert_eq!(events[0]["payload"]["userId"], "u123");

    // The budget is spent: the next sync answers 202 with a place to poll, then completes.
    let (status, headers, body) = call(&svc, reqwest::Method::POST, &path, &token).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(headers["location"].to_str().unwrap(), path);
    let first_synced = first["syncedAt"].as_str().unwrap().to_owned();
    eventually(
        "background sync completed",
        Duration::from_secs(30),
        || async {
            let (_, _, v) = call(&svc, reqwest::Method::GET, &path, &token).await;
            (v["syncedAt"].as_str()? != first_synced).then_some(())
        },
    )
    .await;
    let stats: Value = reqwest::get(format!("{sim}/admin/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["organisations"][t.as_str()]["limit_violations"],
        0,
        "{stats}"
    );
    assert_eq!(stats["organisations"][t.as_str()]["served"], 2);

    // Unknown users and other tenants' tokens get 404.
    let unknown = format!("/api/tenants/{t}/users/nobody/sync-progress");
    assert_eq!(
        call(&svc, reqwest::Method::POST, &unknown, &token).await.0,
        404
    );
    assert_eq!(
        call(&svc, reqwest::Method::POST, &path, &other_token)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&svc, reqwest::Method::GET, &path, &other_token)
            .await
            .0,
        404
    );
}
