//! The durable per-tenant upstream queue: priority order, the tenant's quota, and nothing
//! lost or done twice across a crash.

mod common;

use std::time::Duration;

use common::{eventually, tenant, Service, TestEnv};
use enablement::actors::ports::{JobKind, JobPriority, NewJob, TenantStore};
use enablement_tools::simulator::{dev_secret, router, SimSettings};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_beyond_a_minutes_budget_survives_a_crash_in_priority_order_within_quota() {
    let env = TestEnv::new().await;
    let t = tenant("queue");
    env.add_tenant(&t).await;
    // The platform allows 120/min per organisation; the registry gives the tenant the same.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = format!("http://{}", listener.local_addr().unwrap());
    let settings = SimSettings {
        rate_per_min: 120,
        burst: 4,
        ..Default::default()
    };
    tokio::spawn(async move { axum::serve(listener, router(settings)).await });
    env.owner
        .execute(
            "update tenants set rate_limit_per_min = 120 where tenant_id = $1",
            &[&t.as_str()],
        )
        .await
        .unwrap();
    let store = env.store().await;
    store
        .set_upstream_credentials(&t, t.as_str(), &dev_secret(t.as_str()))
        .await
        .unwrap();

    // 10 SCIM pushes queued first, then 150 interactive syncs: more than a minute's budget.
    const PUSHES: usize = 10;
    const SYNCS: usize = 150;
    for i in 0..PUSHES {
        let change = json!({"userId": format!("p{i}"), "active": true,
                            "user": {"userName": format!("p{i}"), "emails": [{"value": "p@x.test"}]}});
        let job = NewJob {
            priority: JobPriority::ScimPush,
            kind: JobKind::PushUser,
            subject: format!("p{i}"),
            payload: change,
        };
        store.enqueue_job(&t, &job).await.unwrap();
    }
    for i in 0..SYNCS {
        let job = NewJob {
            priority: JobPriority::Interactive,
            kind: JobKind::SyncProgress,
            subject: format!("u{i}"),
            payload: Value::Null,
        };
        store.enqueue_job(&t, &job).await.unwrap();
    }
    let done = |kind: &'static str| {
        let env = &env;
        let t = t.clone();
        async move {
            env.owner
                .query_one(
                    "select count(*) from upstream_jobs where tenant_id = $1 and kind = $2 and status = 'done'",
                    &[&t.as_str(), &kind],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let extra = [("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str())];
    let mut svc = Service::start(&env, &extra);
    eventually("some syncs done", Duration::from_secs(60), || async {
        (done("sync_progress").await >= 20).then_some(())
    })
    .await;
    let depth =
        format!("enablement_upstream_queue_depth{{tenant=\"{t}\",priority=\"interactive\"}}");
    assert!(svc.metric(&depth).await > 0.0, "queue depth is reported");
    svc.kill();
    let at_kill = done("sync_progress").await as usize;
    assert!(at_kill < SYNCS, "the crash lands mid-queue ({at_kill})");

    let svc = Service::start(&env, &extra);
    eventually(
        "queue drained after restart",
        Duration::from_secs(240),
        || async {
            (done("sync_progress").await as usize == SYNCS
                && done("push_user").await as usize == PUSHES)
                .then_some(())
        },
    )
    .await;
    // Exactly once: one progress.synced outbox row per sync job, no failure, nothing pending.
    assert_eq!(
        env.count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'events' and payload->>'type' = 'progress.synced'",
            &t
        )
        .await,
        SYNCS as i64
    );
    assert_eq!(
        env.count(
            "select count(*) from upstream_jobs where tenant_id = $1 and status <> 'done'",
            &t
        )
        .await,
        0
    );
    // Priority: every interactive sync finished before the first SCIM push.
    let ordered: bool = env
        .owner
        .query_one(
            "select (select max(done_at) from upstream_jobs where tenant_id = $1 and kind = 'sync_progress')
                  < (select min(done_at) from upstream_jobs where tenant_id = $1 and kind = 'push_user')",
            &[&t.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ordered, "interactive work runs before SCIM pushes");
    // Within the quota: the platform counted no violation; at most the one call in flight at
    // the crash was repeated.
    let stats: Value = reqwest::get(format!("{sim}/admin/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = &stats["organisations"][t.as_str()];
    assert_eq!(org["limit_violations"], 0, "{org}");
    let served = org["served"].as_u64().unwrap() as usize;
    assert!(
        (SYNCS + PUSHES..=SYNCS + PUSHES + 1).contains(&served),
        "served {served}"
    );
    drop(svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_changes_are_pushed_to_the_platform_through_the_queue() {
    let env = TestEnv::new().await;
    let t = tenant("push");
    env.add_tenant(&t).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(SimSettings::default())).await });
    let store = env.store().await;
    store
        .set_upstream_credentials(&t, t.as_str(), &dev_secret(t.as_str()))
        .await
        .unwrap();
    let svc = Service::start(&env, &[("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str())]);
    svc.wait_ready(&[&t]).await;
    let a = t.as_str();
    common::push(
        &env.config,
        &t,
        &[
            common::scim_event(a, "c1", "CREATE", "new-hire", 1, "hire@x.test"),
            common::scim_event(a, "c2", "DELETE", "new-hire", 2, "hire@x.test"),
        ],
    )
    .await;
    eventually("both pushes done", Duration::from_secs(60), || async {
        let n = env
            .count("select count(*) from upstream_jobs where tenant_id = $1 and kind = 'push_user' and status = 'done'", &t)
            .await;
        (n == 2).then_some(())
    })
    .await;
    // The platform now knows the user, deactivated.
    let cfg = enablement::config::MindTickleConfig {
        base_url: sim.clone(),
        ..Default::default()
    };
    let client =
        enablement::upstream::MindTickleClient::new(&cfg, std::sync::Arc::new(store.clone()))
            .unwrap();
    use enablement::actors::upstream::MindTickleApi;
    let roster = client.roster(&t).await.unwrap();
    let hire = roster
        .iter()
        .find(|u| u.id == "new-hire")
        .expect("pushed user on the platform");
    assert!(!hire.active);
    drop(svc);
}
