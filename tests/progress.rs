//! Progress sync through the tenant's actor and rate budget, against the simulator.

mod common;

use std::time::Duration;

use common::{eventually, read_topic, tenant, Service, TestEnv};
use enablement::actors::TopicKind;
use enablement_tools::simulator::{dev_secret, SimSettings};
use serde_json::Value;

async fn call(
    svc: &Service,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    svc.call(method, path, token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_progress_stores_announces_and_answers_202_when_the_budget_is_spent() {
    let env = TestEnv::new().await;
    let (t, other) = (tenant("prog"), tenant("prog-other"));
    let token = env.add_tenant(&t).await;
    let other_token = env.add_tenant(&other).await;
    let store = env.store().await;
    let sim = common::start_sim(SimSettings::default()).await;
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
    env.provision(&t, "e1", "u123", "u@p.test").await;
    // Credentials after provisioning: no SCIM push competes with the syncs for the budget.
    store
        .set_upstream_credentials(&t, t.as_str(), &dev_secret(t.as_str()))
        .await
        .unwrap();
    let path = format!("/api/tenants/{t}/users/u123/sync-progress");
    let (status, _, body) = call(&svc, reqwest::Method::GET, &path, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_synced"))
    );

    // A tenant actor starts with its burst spent (a previous incarnation may have used the
    // platform's window): the first sync may itself wait one interval (2 s) and answer 202.
    let (status, _, first) = call(&svc, reqwest::Method::POST, &path, &token).await;
    let first = match status {
        200 => first,
        202 => {
            eventually("the first sync", Duration::from_secs(30), || async {
                let (status, _, v) = call(&svc, reqwest::Method::GET, &path, &token).await;
                (status == 200).then_some(v)
            })
            .await
        }
        other => panic!("first sync answered {other}: {first}"),
    };
    // The budget is spent: the next sync at once answers 202 with a place to poll, then
    // completes in the background.
    let (status, headers, body) = call(&svc, reqwest::Method::POST, &path, &token).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(headers["location"].to_str().unwrap(), path);
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
            let synced: Vec<Value> = recs
                .into_iter()
                .filter(|r| r["payload"]["type"] == "progress.synced")
                .collect();
            (!synced.is_empty()).then_some(synced)
        },
    )
    .await;
    assert_eq!(events[0]["payload"]["userId"], "u123");

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
    let ok_calls = format!("enablement_upstream_calls_total{{tenant=\"{t}\",status=\"ok\"}}");
    assert_eq!(svc.metric(&ok_calls).await, 2.0);
    assert!(svc
        .metrics()
        .await
        .keys()
        .any(|k| k.starts_with("enablement_upstream_permit_wait_seconds_bucket")));

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiz_results_are_validated_recorded_once_and_announced() {
    let env = TestEnv::new().await;
    let (t, other) = (tenant("quiz"), tenant("quiz-other"));
    let token = env.add_tenant(&t).await;
    let other_token = env.add_tenant(&other).await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&t, &other]).await;
    env.provision(&t, "e1", "u1", "u1@q.test").await;
    let url = format!("{}/api/tenants/{t}/quiz-results", svc.base_url);
    let post = |body: Value, token: String| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let sub = serde_json::json!({
        "submissionId": "s-1", "userId": "u1", "courseId": "c2", "quizId": "q1",
        "answers": [{"questionId": "a", "selected": "x", "correct": true},
                    {"questionId": "b", "selected": "y", "correct": true},
                    {"questionId": "c", "selected": "z", "correct": false},
                    {"questionId": "d", "selected": "w", "correct": true}],
        "score": 75.0, "submittedAt": "2026-11-01T10:00:00Z"
    });
    assert_eq!(post(sub.clone(), token.clone()).await.0, 201);
    let (status, body) = post(sub.clone(), token.clone()).await;
    assert_eq!((status, body["duplicate"].as_bool()), (200, Some(true)));
    let mut changed = sub.clone();
    changed["score"] = 50.0.into();
    changed["answers"][0]["correct"] = false.into();
    assert_eq!(post(changed, token.clone()).await.0, 409);
    let mut bad = sub.clone();
    bad["score"] = 101.0.into();
    let (status, body) = post(bad, token.clone()).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("score"),
        "{body}"
    );
    let mut stranger = sub.clone();
    stranger["submissionId"] = "s-2".into();
    stranger["userId"] = "nobody".into();
    assert_eq!(post(stranger, token.clone()).await.0, 404);
    assert_eq!(
        post(sub.clone(), other_token).await.0,
        404,
        "another tenant's token"
    );

    let score: f64 = env
        .owner
        .query_one(
            "select score from course_progress where tenant_id = $1 and user_id = 'u1' and course_id = 'c2'",
            &[&t.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(score, 75.0);
    assert_eq!(
        env.count(
            "select count(*) from quiz_submissions where tenant_id = $1",
            &t
        )
        .await,
        1
    );
    let events = eventually(
        "quiz.completed published",
        Duration::from_secs(30),
        || async {
            let recs = read_topic(&env.config, &t, TopicKind::Events).await;
            (!recs.is_empty()).then_some(recs)
        },
    )
    .await;
    let quiz: Vec<&Value> = events
        .iter()
        .filter(|r| r["payload"]["type"] == "quiz.completed")
        .collect();
    assert_eq!(quiz.len(), 1, "announced once");
    assert_eq!(quiz[0]["payload"]["score"], 75.0);
    // RLS: the other tenant's scope cannot see the submission.
    let store = env.store().await;
    let seen: i64 = store
        .scoped(&other, |tx, _| {
            Box::pin(async move {
                Ok(tx
                    .query_one("select count(*) from quiz_submissions", &[])
                    .await?
                    .get(0))
            })
        })
        .await
        .unwrap();
    assert_eq!(seen, 0);
}
