//! Idle passivation against the real service, broker, database, cache and the MindTickle
//! simulator: a tenant actor idle for `supervisor.passivate_after_ms` is stopped (its
//! partition stays assigned) and is started again by a record on its topic, by a job
//! written for it by another process, and by a request of the HTTP API; nothing is lost
//! or applied twice across it, and the tenant never exceeds its MindTickle quota.

mod common;

use std::time::Duration;

use common::{assert_effects_once, eventually, push, scim_event, tenant, Service, TestEnv};
use enablement::actors::TenantId;
use serde_json::Value;

fn event(t: &TenantId, n: usize) -> String {
    scim_event(
        t.as_str(),
        &format!("p{n}"),
        "CREATE",
        &format!("u{n}"),
        n as u64,
        &format!("p{n}@p.test"),
    )
}

async fn readyz(svc: &Service) -> Option<Value> {
    let (_, body) = svc.get("/readyz").await?;
    serde_json::from_str(&body).ok()
}

async fn wait_passivated(svc: &Service, what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        let v = readyz(svc).await?;
        (v["tenants"]["passivated"] == 1 && v["tenants"]["running"] == 0).then_some(())
    })
    .await;
}

async fn wakes(svc: &Service, reason: &str) -> f64 {
    svc.metric(&format!(
        "enablement_tenant_wakes_total{{reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_is_passivated_and_woken_by_a_record_a_job_and_a_request() {
    let env = TestEnv::new().await;
    let t = tenant("idle");
    let token = env.add_tenant(&t).await;
    let sim = common::start_sim(enablement_tools::simulator::SimSettings::default()).await;
    let secret = enablement_tools::simulator::dev_secret(t.as_str());
    env.store()
        .await
        .set_upstream_credentials(&t, t.as_str(), &secret)
        .await
        .expect("credentials");
    let extra = [
        ("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str()),
        ("ENABLEMENT__SUPERVISOR__PASSIVATE_AFTER_MS", "1500"),
    ];
    let svc = Service::start_role(&env, "all", &extra);
    // Another process without tenant actors: its writes reach the owner as jobs.
    let api = Service::start_role(&env, "api", &extra);
    push(&env.config, &t, &[event(&t, 0)]).await;
    eventually("first event applied", Duration::from_secs(60), || async {
        (env.processed(&t).await == 1).then_some(())
    })
    .await;

    // Idle: passivated, and the group still assigns its partition here.
    wait_passivated(&svc, "passivated after being idle").await;
    let v = readyz(&svc).await.expect("readyz");
    assert_eq!(
        v["consumer_group"]["owned"],
        serde_json::json!([t.as_str()]),
        "{v}"
    );
    assert!(svc.metric("enablement_tenant_passivations_total").await >= 1.0);
    assert_eq!(svc.metric("enablement_actors_passivated").await, 1.0);

    // A record wakes it; the record is applied once.
    push(&env.config, &t, &[event(&t, 1)]).await;
    eventually(
        "record applied after a wake",
        Duration::from_secs(60),
        || async { (env.processed(&t).await == 2).then_some(()) },
    )
    .await;
    assert!(wakes(&svc, "record").await >= 1.0);

    // A job written by the other process wakes it and runs.
    wait_passivated(&svc, "passivated again").await;
    let (status, _, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/tenants/{t}/users/u0/sync-progress"),
            &token,
        )
        .await;
    assert_eq!(status, 202, "queued by the api process");
    eventually(
        "the job ran on the owner",
        Duration::from_secs(60),
        || async {
            let (status, _, _) = svc
                .call(
                    reqwest::Method::GET,
                    &format!("/api/tenants/{t}/users/u0/sync-progress"),
                    &token,
                )
                .await;
            (status == 200).then_some(())
        },
    )
    .await;
    assert!(wakes(&svc, "job").await >= 1.0);

    // A request that needs the actor wakes it and is answered.
    wait_passivated(&svc, "passivated a third time").await;
    let (status, _, body) = svc
        .call(
            reqwest::Method::GET,
            &format!("/api/tenants/{t}/courses"),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["courses"].as_array().map(Vec::len), Some(6));
    assert!(wakes(&svc, "request").await >= 1.0);

    assert_effects_once(&env, &t, 2).await;
    let stats: Value = reqwest::get(format!("{sim}/admin/stats"))
        .await
        .expect("sim stats")
        .json()
        .await
        .expect("stats json");
    assert_eq!(
        stats["organisations"][t.as_str()]["limit_violations"],
        0,
        "{stats}"
    );
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_assigned_passivated_start_on_their_first_record_and_miss_none() {
    let env = TestEnv::new().await;
    let (quiet, busy) = (tenant("lazy-q"), tenant("lazy-b"));
    env.add_tenant(&quiet).await;
    env.add_tenant(&busy).await;
    // A backlog before the service starts: the watch takes its first record off the
    // partition, and the actor it wakes must still apply that record.
    let backlog: Vec<String> = (0..20).map(|n| event(&busy, n)).collect();
    push(&env.config, &busy, &backlog).await;
    let svc = Service::start_role(
        &env,
        "consumer",
        &[
            ("ENABLEMENT__SUPERVISOR__PASSIVATE_AFTER_MS", "600000"),
            ("ENABLEMENT__SUPERVISOR__START_PASSIVATED", "true"),
        ],
    );
    eventually("the backlog applied", Duration::from_secs(60), || async {
        (env.processed(&busy).await == 20).then_some(())
    })
    .await;
    let v = readyz(&svc).await.expect("readyz");
    assert_eq!(v["tenants"]["running"], 1, "{v}");
    assert_eq!(
        v["tenants"]["passivated"], 1,
        "the quiet tenant never started: {v}"
    );
    // A later record of the quiet tenant is its first: applied.
    push(&env.config, &quiet, &[event(&quiet, 0)]).await;
    eventually(
        "the quiet tenant's first record",
        Duration::from_secs(60),
        || async { (env.processed(&quiet).await == 1).then_some(()) },
    )
    .await;
    assert_effects_once(&env, &busy, 20).await;
    assert_effects_once(&env, &quiet, 1).await;
}
