//! The MindTickle client against the bundled simulator, through the tenant's limiter.

mod common;

use std::time::Duration;

use common::{tenant, TestEnv};
use enablement::actors::upstream::{
    CourseStatus, LimiterSettings, MindTickleApi, TenantLimiter, UpstreamError,
};
use enablement::config::MindTickleConfig;
use enablement::db::TenantScopedStore;
use enablement::upstream::MindTickleClient;
use enablement_tools::simulator::{dev_secret, SimSettings};
use serde_json::Value;

async fn sim_stats(base: &str, org: &str) -> Value {
    let v: Value = reqwest::get(format!("{base}/admin/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["organisations"][org].clone()
}

async fn client_for(env: &TestEnv, base: &str) -> (MindTickleClient, TenantScopedStore) {
    let store = env.store().await;
    let cfg = MindTickleConfig {
        base_url: base.to_owned(),
        ..Default::default()
    };
    (
        MindTickleClient::new(&cfg, std::sync::Arc::new(store.clone())).unwrap(),
        store,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_answers_token_reuse_refresh_and_bad_credentials() {
    let env = TestEnv::new().await;
    let (t, other) = (tenant("up"), tenant("up-nocred"));
    env.add_tenant(&t).await;
    env.add_tenant(&other).await;
    // One simulated hour per real second: tokens expire quickly.
    let base = common::start_sim(SimSettings {
        clock_speed: 3600.0,
        rate_per_min: 6000,
        burst: 100,
        ..Default::default()
    })
    .await;
    let (client, store) = client_for(&env, &base).await;
    assert_eq!(
        client.catalog(&other).await.unwrap_err(),
        UpstreamError::NoCredentials
    );
    assert!(store
        .set_upstream_credentials(&t, t.as_str(), &dev_secret(t.as_str()))
        .await
        .unwrap());

    let courses = client.user_courses(&t, "u1").await.unwrap();
    assert!(!courses.is_empty());
    assert_eq!(
        courses,
        client.user_courses(&t, "u1").await.unwrap(),
        "deterministic data"
    );
    for c in &courses {
        assert_eq!(
            c.completed_at.is_some(),
            c.status == CourseStatus::Completed
        );
        if c.status == CourseStatus::NotStarted {
            assert!(c.quiz_score.is_none());
        }
    }
    assert_eq!(client.catalog(&t).await.unwrap().len(), 6);
    assert_eq!(client.roster(&t).await.unwrap().len(), 20);
    assert_eq!(
        sim_stats(&base, t.as_str()).await["tokens_issued"],
        1,
        "token reused"
    );

    // The token's simulated hour passes; the client refreshes (before expiry or on 401).
    common::eventually("token refreshed", Duration::from_secs(10), || async {
        client.catalog(&t).await.unwrap();
        (sim_stats(&base, t.as_str()).await["tokens_issued"].as_u64()? >= 2).then_some(())
    })
    .await;
    assert_eq!(sim_stats(&base, t.as_str()).await["limit_violations"], 0);

    store
        .set_upstream_credentials(&t, t.as_str(), "wrong-secret")
        .await
        .unwrap();
    let (fresh_client, _) = client_for(&env, &base).await;
    let err = fresh_client.catalog(&t).await.unwrap_err();
    assert_eq!(err, UpstreamError::Unauthorized);
    assert!(
        !format!("{err:?}").contains("wrong-secret"),
        "no secret in errors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_keeps_a_tenant_within_the_platform_quota_and_429s_map_to_retry_after() {
    let env = TestEnv::new().await;
    let (t, paced) = (tenant("quota"), tenant("paced"));
    env.add_tenant(&t).await;
    env.add_tenant(&paced).await;
    // 600/min with a burst of 4 at the simulator; the tenant's limiter allows 600/min, burst 3.
    let base = common::start_sim(SimSettings {
        rate_per_min: 600,
        burst: 4,
        ..Default::default()
    })
    .await;
    let (client, store) = client_for(&env, &base).await;
    for x in [&t, &paced] {
        store
            .set_upstream_credentials(x, x.as_str(), &dev_secret(x.as_str()))
            .await
            .unwrap();
    }

    // Without the limiter, a burst is refused by the platform.
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = client.catalog(&t).await {
            limited = Some(e);
            break;
        }
    }
    match limited {
        Some(UpstreamError::RateLimited {
            retry_after: Some(_),
        }) => {}
        other => panic!("expected a 429 with Retry-After, got {other:?}"),
    }
    let before = sim_stats(&base, t.as_str()).await["limit_violations"]
        .as_u64()
        .unwrap();
    assert!(before >= 1);

    // Through the limiter (another organisation, so its platform bucket is full):
    // 30 calls, no violation.
    let limiter = TenantLimiter::new(LimiterSettings {
        requests_per_min: 600,
        burst: 3,
        ..Default::default()
    });
    for _ in 0..30 {
        limiter.run(|| client.catalog(&paced)).await.unwrap();
    }
    let after = sim_stats(&base, paced.as_str()).await;
    assert_eq!(after["served"], 30);
    assert_eq!(after["limit_violations"], 0, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_faults_hit_only_the_chosen_organisation_and_are_counted_apart() {
    let env = TestEnv::new().await;
    let (stormy, calm) = (tenant("stormy"), tenant("calm"));
    env.add_tenant(&stormy).await;
    env.add_tenant(&calm).await;
    let base = common::start_sim(SimSettings {
        rate_per_min: 6000,
        burst: 100,
        ..Default::default()
    })
    .await;
    let (client, store) = client_for(&env, &base).await;
    for t in [&stormy, &calm] {
        store
            .set_upstream_credentials(t, t.as_str(), &dev_secret(t.as_str()))
            .await
            .unwrap();
    }
    let admin = |body: Value| {
        let url = format!("{base}/admin/faults");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    admin(
        serde_json::json!({"org": stormy.as_str(), "force_429_for_ms": 60_000, "retry_after_s": 7}),
    )
    .await;
    assert_eq!(
        client.catalog(&stormy).await.unwrap_err(),
        UpstreamError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert!(
        client.catalog(&calm).await.is_ok(),
        "the storm is per organisation"
    );
    let s = sim_stats(&base, stormy.as_str()).await;
    assert_eq!(
        (s["forced_429"].as_u64(), s["limit_violations"].as_u64()),
        (Some(1), Some(0))
    );

    admin(serde_json::json!({"org": calm.as_str(), "error_rate": 1.0})).await;
    assert_eq!(
        client.catalog(&calm).await.unwrap_err(),
        UpstreamError::Server { status: 503 }
    );
    assert_eq!(sim_stats(&base, calm.as_str()).await["injected_errors"], 1);
    // Organisation names are tenant ids at the admin edge too.
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/faults"))
        .json(&serde_json::json!({"org": "a*", "latency_ms": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_fail_their_call_with_a_reason_and_ids_cannot_change_the_path() {
    let env = TestEnv::new().await;
    let t = tenant("up-hostile");
    env.add_tenant(&t).await;
    let base = common::start_sim(SimSettings {
        rate_per_min: 6000,
        burst: 100,
        ..Default::default()
    })
    .await;
    let store = env.store().await;
    let cfg = MindTickleConfig {
        base_url: base.clone(),
        max_answer_bytes: 256 * 1024,
        ..Default::default()
    };
    let client = MindTickleClient::new(&cfg, std::sync::Arc::new(store.clone())).unwrap();
    store
        .set_upstream_credentials(&t, t.as_str(), &dev_secret(t.as_str()))
        .await
        .unwrap();
    for (user, reason) in [
        ("poison-score", "outside 0..100"),
        ("poison-duplicate", "duplicate course id"),
        ("poison-nul", "NUL"),
        ("poison-huge", "max_answer_bytes"),
        ("..", "cannot be a URL path segment"),
    ] {
        match client.user_courses(&t, user).await {
            Err(UpstreamError::Invalid(m)) => assert!(m.contains(reason), "{user}: {m}"),
            other => panic!("{user}: {other:?}"),
        }
    }
    // `/`, `?` and `#` stay inside the segment: the simulator routes the request to the
    // user's courses (unencoded, `/v2/users/we/ird?x/courses` would match no route).
    let courses = client
        .user_courses(&t, "we/ird?x#y")
        .await
        .expect("an odd id is one segment");
    assert!(!courses.is_empty());
    // The hostile calls did not spoil the client for the tenant's next call.
    assert!(!client.user_courses(&t, "u1").await.unwrap().is_empty());
}
