//! The readiness aggregator against real PostgreSQL, Redis, the broker, the service binary
//! (in its separate roles too) and the MindTickle simulator.

mod common;

use std::time::Duration;

use common::{eventually, read_topic, scim_event, tenant, Service, TestEnv};
use enablement::actors::{TenantId, TopicKind};
use enablement_tools::simulator::{dev_secret, SimSettings};
use reqwest::Method;
use serde_json::Value;

/// Inserts users `(id, role, manager, active)` straight into the tenant's table (as owner).
async fn seed_users(env: &TestEnv, t: &TenantId, users: &[(&str, &str, Option<&str>, bool)]) {
    for (id, role, manager, active) in users {
        env.owner
            .execute(
                "insert into users (tenant_id, user_id, user_name, role, manager_id, active, scim,
                                    version, source_occurred_at, source_event_id)
                 values ($1, $2, $2 || '@corp.test', $3, $4, $5, '{}', 1, now(), 'seed')",
                &[&t.as_str(), id, role, manager, active],
            )
            .await
            .expect("seed user");
    }
}

/// Inserts progress rows `(user, course, status, score)` synced `age_s` seconds ago.
async fn seed_progress(
    env: &TestEnv,
    t: &TenantId,
    rows: &[(&str, &str, &str, Option<f64>)],
    age_s: f64,
) {
    for (user, course, status, score) in rows {
        env.owner
            .execute(
                "insert into course_progress (tenant_id, user_id, course_id, title, status, score,
                                              synced_at)
                 values ($1, $2, $3, 'Course ' || $3, $4, $5,
                         now() - $6::float8 * interval '1 second')",
                &[&t.as_str(), user, course, status, score, &age_s],
            )
            .await
            .expect("seed progress");
    }
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

fn find<'a>(list: &'a Value, key: &str, id: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|e| e[key] == id))
        .unwrap_or_else(|| panic!("{key}={id} missing in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_figures_on_a_hand_built_data_set_and_no_rows_of_another_tenant() {
    let env = TestEnv::new().await;
    let (a, b, empty) = (tenant("rd-a"), tenant("rd-b"), tenant("rd-empty"));
    let token_a = env.add_tenant(&a).await;
    let token_b = env.add_tenant(&b).await;
    let token_empty = env.add_tenant(&empty).await;
    // Tenant A: m1 leads u1, u2 and the deactivated u3; m2 is a manager with no team; u4
    // reports to m9, who is not a user; u5 has no assignment.
    seed_users(
        &env,
        &a,
        &[
            ("m1", "manager", None, true),
            ("m2", "manager", None, true),
            ("u1", "rep", Some("m1"), true),
            ("u2", "rep", Some("m1"), true),
            ("u3", "rep", Some("m1"), false),
            ("u4", "rep", Some("m9"), true),
            ("u5", "rep", None, true),
        ],
    )
    .await;
    seed_progress(
        &env,
        &a,
        &[
            ("u1", "c1", "completed", Some(90.0)),
            ("u1", "c2", "in_progress", Some(70.0)),
            ("u2", "c1", "completed", None),
            ("u2", "c2", "not_started", None),
            ("u3", "c1", "completed", Some(10.0)),
            ("u3", "c2", "completed", Some(20.0)),
            ("u4", "c1", "in_progress", Some(80.0)),
            ("m1", "c3", "completed", Some(100.0)),
        ],
        0.0,
    )
    .await;
    // Tenant B shares user and course ids with different figures.
    seed_users(
        &env,
        &b,
        &[
            ("m1", "manager", None, true),
            ("u1", "rep", Some("m1"), true),
        ],
    )
    .await;
    seed_progress(&env, &b, &[("u1", "c1", "completed", Some(10.0))], 0.0).await;
    // Tenant "empty": users, nothing assigned.
    seed_users(&env, &empty, &[("u1", "rep", None, true)]).await;

    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&a, &b, &empty]).await;
    let aggregate = |t: &TenantId| format!("/api/tenants/{t}/readiness/aggregate");
    let latest = |t: &TenantId| format!("/api/tenants/{t}/readiness");
    let (status, _, body) = svc.call(Method::GET, &latest(&a), &token_a).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_report"))
    );

    let (status, _, r) = svc.call(Method::POST, &aggregate(&a), &token_a).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["tenantId"], a.as_str());
    assert_eq!(r["activeUsers"], 6);
    assert_eq!(
        (r["assigned"].as_i64(), r["completed"].as_i64()),
        (Some(6), Some(3))
    );
    assert_eq!(r["scored"], 4);
    assert!(close(&r["avgScore"], 85.0), "{r}");
    assert!(close(&r["completionRate"], 0.5), "{r}");
    assert_eq!(r["provisional"], false);
    assert_eq!(r["provisionalReasons"], serde_json::json!([]));
    assert_eq!(
        (
            r["staleProgressRows"].as_i64(),
            r["pendingSyncJobs"].as_i64()
        ),
        (Some(0), Some(0))
    );
    assert!(
        r["computedAt"].is_string() && r["inputsAsOf"].is_string(),
        "{r}"
    );
    assert_eq!(r["trigger"], "manual");

    let courses = &r["byCourse"];
    assert_eq!(courses.as_array().map(Vec::len), Some(3));
    let c1 = find(courses, "courseId", "c1");
    assert_eq!(
        (c1["assigned"].as_i64(), c1["completed"].as_i64()),
        (Some(3), Some(2))
    );
    assert!(
        close(&c1["completionRate"], 2.0 / 3.0) && close(&c1["avgScore"], 85.0),
        "{c1}"
    );
    assert_eq!(c1["title"], "Course c1");
    let c2 = find(courses, "courseId", "c2");
    assert!(
        close(&c2["completionRate"], 0.0) && close(&c2["avgScore"], 70.0),
        "{c2}"
    );
    let c3 = find(courses, "courseId", "c3");
    assert!(
        close(&c3["completionRate"], 1.0) && close(&c3["avgScore"], 100.0),
        "{c3}"
    );

    let teams = &r["byTeam"];
    assert_eq!(teams.as_array().map(Vec::len), Some(3), "{teams}");
    let m1 = find(teams, "managerId", "m1");
    assert_eq!(
        (m1["teamSize"].as_i64(), m1["assigned"].as_i64()),
        (Some(2), Some(4))
    );
    assert!(
        close(&m1["completionRate"], 0.5) && close(&m1["avgScore"], 80.0),
        "{m1}"
    );
    assert_eq!(m1["managerUserName"], "m1@corp.test");
    let m2 = find(teams, "managerId", "m2");
    assert_eq!(
        (m2["teamSize"].as_i64(), m2["assigned"].as_i64()),
        (Some(0), Some(0))
    );
    assert!(
        m2["completionRate"].is_null() && m2["avgScore"].is_null(),
        "{m2}"
    );
    let m9 = find(teams, "managerId", "m9");
    assert_eq!(
        (m9["teamSize"].as_i64(), m9["managerUserName"].clone()),
        (Some(1), Value::Null)
    );
    assert!(
        close(&m9["completionRate"], 0.0) && close(&m9["avgScore"], 80.0),
        "{m9}"
    );

    // GET answers the stored report.
    let (status, _, stored) = svc.call(Method::GET, &latest(&a), &token_a).await;
    assert_eq!(status, 200);
    assert_eq!(stored["reportId"], r["reportId"]);
    assert_eq!(stored["byTeam"], r["byTeam"]);

    // B's figures are B's alone, although its ids are A's.
    let (_, _, rb) = svc.call(Method::POST, &aggregate(&b), &token_b).await;
    assert_eq!(
        (rb["assigned"].as_i64(), rb["activeUsers"].as_i64()),
        (Some(1), Some(2))
    );
    assert!(
        close(&rb["avgScore"], 10.0) && close(&rb["completionRate"], 1.0),
        "{rb}"
    );
    // Nothing assigned: null rates, no division error.
    let (status, _, re) = svc
        .call(Method::POST, &aggregate(&empty), &token_empty)
        .await;
    assert_eq!(status, 200, "{re}");
    assert_eq!(re["assigned"], 0);
    assert!(
        re["completionRate"].is_null() && re["avgScore"].is_null(),
        "{re}"
    );
    assert_eq!(re["byCourse"], serde_json::json!([]));

    // Another tenant's token: 404, never the report.
    let (status, _, _) = svc.call(Method::GET, &latest(&a), &token_b).await;
    assert_eq!(status, 404);

    // RLS under the SQL: scoped to A, the query asked for B's rows finds nothing.
    let store = env.store().await;
    let b_name = b.as_str().to_owned();
    let leaked: Value = store
        .scoped(&a, move |tx, _| {
            Box::pin(async move {
                Ok(tx
                    .query_one(enablement::readiness::REPORT_SQL, &[&b_name, &1000.0f64])
                    .await?
                    .get::<_, Value>(0))
            })
        })
        .await
        .unwrap();
    assert_eq!(
        (leaked["assigned"].as_i64(), leaked["activeUsers"].as_i64()),
        (Some(0), Some(0))
    );

    // At most one aggregation per tenant: while A's lock is held, a request is told 202.
    let lock = env.owner.execute("begin", &[]).await.map(|_| ());
    lock.expect("begin");
    env.owner
        .execute(
            "select 1 from readiness_locks where tenant_id = $1 for update",
            &[&a.as_str()],
        )
        .await
        .unwrap();
    let (status, headers, body) = svc.call(Method::POST, &aggregate(&a), &token_a).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("running")));
    assert_eq!(headers["location"], latest(&a).as_str());
    // Another tenant is not held up by it.
    let (status, _, _) = svc.call(Method::POST, &aggregate(&b), &token_b).await;
    assert_eq!(status, 200);
    env.owner.execute("commit", &[]).await.unwrap();
    let (status, _, _) = svc.call(Method::POST, &aggregate(&a), &token_a).await;
    assert_eq!(status, 200);

    // readiness.aggregated reached A's events topic through the outbox.
    let events = eventually(
        "readiness.aggregated relayed",
        Duration::from_secs(30),
        || async {
            let v = read_topic(&env.config, &a, TopicKind::Events).await;
            let n = v
                .iter()
                .filter(|e| e["payload"]["type"] == "readiness.aggregated")
                .count();
            (n >= 2).then_some(v)
        },
    )
    .await;
    let first = events
        .iter()
        .find(|e| e["payload"]["type"] == "readiness.aggregated")
        .unwrap();
    assert_eq!(first["payload"]["reportId"], r["reportId"]);
    assert!(close(&first["payload"]["avgScore"], 85.0));

    let m = svc.metrics().await;
    let final_reports = m
        .get("enablement_readiness_reports_total{state=\"final\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(
        final_reports >= 5.0,
        "final reports metric: {final_reports}"
    );
    assert!(
        m.get("enablement_readiness_coalesced_total")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "coalesced metric missing"
    );
    assert!(m
        .keys()
        .any(|k| k.starts_with("enablement_readiness_aggregation_duration_seconds")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_while_syncs_are_queued_then_final_once_the_consumer_drains_them() {
    let env = TestEnv::new().await;
    let t = tenant("rd-prov");
    let token = env.add_tenant(&t).await;
    let store = env.store().await;
    store
        .set_upstream_credentials(&t, t.as_str(), &dev_secret(t.as_str()))
        .await
        .unwrap();
    let sim = common::start_sim(SimSettings::default()).await;
    seed_users(
        &env,
        &t,
        &[
            ("m1", "manager", None, true),
            ("u1", "rep", Some("m1"), true),
            ("u2", "rep", Some("m1"), true),
        ],
    )
    .await;
    // u2's progress was synced two days ago (older than the one-day freshness), on a course
    // the platform no longer assigns (the simulator knows c1..c6): the refresh removes it.
    seed_progress(&env, &t, &[("u1", "c1", "completed", Some(90.0))], 0.0).await;
    seed_progress(
        &env,
        &t,
        &[("u2", "c99", "in_progress", Some(40.0))],
        172_800.0,
    )
    .await;

    let fast = [
        ("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str()),
        ("ENABLEMENT__AGGREGATOR__DEBOUNCE_MS", "200"),
        ("ENABLEMENT__AGGREGATOR__MAX_DELAY_MS", "2000"),
        ("ENABLEMENT__AGGREGATOR__POLL_INTERVAL_MS", "50"),
    ];
    // API and aggregator first, no consumer: queued syncs stay queued.
    let api = Service::start_role(&env, "api", &fast);
    let aggregator = Service::start_role(&env, "aggregator", &fast);
    api.wait_up().await;
    aggregator.wait_up().await;
    let aggregate = format!("/api/tenants/{t}/readiness/aggregate");
    let (status, _, r1) = api.call(Method::POST, &aggregate, &token).await;
    assert_eq!(status, 200, "{r1}");
    assert_eq!(r1["provisional"], true);
    assert_eq!(
        r1["provisionalReasons"],
        serde_json::json!(["stale_progress"])
    );
    assert_eq!(r1["staleProgressRows"], 1);
    // The stale user's refresh was queued by the aggregation.
    assert_eq!(r1["refreshSyncsQueued"], 1);
    let (status, _, q) = api
        .call(
            Method::POST,
            &format!("/api/tenants/{t}/sync-progress"),
            &token,
        )
        .await;
    assert_eq!(
        (status, q["queued"].as_i64()),
        (202, Some(2)),
        "u2 already queued"
    );
    let (_, _, r2) = api.call(Method::POST, &aggregate, &token).await;
    assert_eq!(r2["provisional"], true);
    assert_eq!(
        r2["provisionalReasons"],
        serde_json::json!(["stale_progress", "sync_pending"])
    );
    assert_eq!(r2["pendingSyncJobs"], 3);

    // The consumer drains the queue under the tenant's budget; the aggregator re-runs.
    let consumer = Service::start_role(&env, "consumer", &fast);
    consumer.wait_ready(&[&t]).await;
    let readiness = format!("/api/tenants/{t}/readiness");
    let last = eventually("a final report", Duration::from_secs(60), || async {
        let (_, _, r) = api.call(Method::GET, &readiness, &token).await;
        (r["provisional"] == false).then_some(r)
    })
    .await;
    assert!(last["reportId"].as_i64() > r2["reportId"].as_i64());
    assert_eq!(last["pendingSyncJobs"], 0);
    assert_eq!(last["staleProgressRows"], 0);
    assert_eq!(
        env.count(
            "select count(*) from course_progress where tenant_id = $1 and course_id = 'c99'",
            &t
        )
        .await,
        0,
        "the sync replaced u2's course set"
    );
    assert_ne!(
        last["trigger"], "manual",
        "the re-aggregation was automatic"
    );
    assert_eq!(
        env.count(
            "select count(*) from upstream_jobs where tenant_id = $1 and status = 'pending'",
            &t
        )
        .await,
        0
    );
    // The reports written by the api and aggregator processes were announced by the
    // consumer (woken through PostgreSQL).
    eventually("announcements relayed", Duration::from_secs(30), || async {
        let v = read_topic(&env.config, &t, TopicKind::Events).await;
        v.iter()
            .any(|e| {
                e["payload"]["type"] == "readiness.aggregated"
                    && e["payload"]["provisional"] == false
            })
            .then_some(())
    })
    .await;
    assert!(
        aggregator
            .metric("enablement_readiness_reports_total{state=\"final\"}")
            .await
            >= 1.0
    );
    assert!(
        consumer
            .metric(
                "enablement_readiness_reaggregations_scheduled_total{reason=\"progress_synced\"}"
            )
            .await
            >= 1.0
    );
    // Roles: the aggregator serves no tenant routes.
    let (status, _, _) = aggregator.call(Method::GET, &readiness, &token).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregator_processes_never_run_a_tenant_twice_at_once() {
    let env = TestEnv::new().await;
    let mut tenants = Vec::new();
    for i in 0..5 {
        let t = tenant(&format!("rd-two{i}"));
        env.add_tenant(&t).await;
        // Enough rows that one run takes a noticeable time (tens of milliseconds).
        env.owner
            .batch_execute(&format!(
                "insert into users (tenant_id, user_id, user_name, role, manager_id, active, scim,
                                    version, source_occurred_at, source_event_id)
                 select '{t}', 'u' || g, 'u' || g, 'rep', 'm' || (g % 50), true, '{{}}', 1, now(), 's'
                   from generate_series(1, 2000) g;
                 insert into course_progress (tenant_id, user_id, course_id, title, status, score)
                 select '{t}', 'u' || u, 'c' || c, 'C', 'completed', (u * c) % 100
                   from generate_series(1, 2000) u, generate_series(1, 10) c;"
            ))
            .await
            .unwrap();
        tenants.push(t);
    }
    let names: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    let settings = [
        ("ENABLEMENT__AGGREGATOR__DEBOUNCE_MS", "0"),
        ("ENABLEMENT__AGGREGATOR__MAX_DELAY_MS", "0"),
        ("ENABLEMENT__AGGREGATOR__POLL_INTERVAL_MS", "10"),
    ];
    let one = Service::start_role(
        &env,
        "aggregator",
        &[
            settings.as_slice(),
            &[("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", "agg-one")],
        ]
        .concat(),
    );
    let two = Service::start_role(
        &env,
        "aggregator",
        &[
            settings.as_slice(),
            &[("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", "agg-two")],
        ]
        .concat(),
    );
    one.wait_up().await;
    two.wait_up().await;
    let mark_all_due = || async {
        env.owner
            .execute(
                "insert into readiness_schedule (tenant_id, pending_since, changed_at, generation, reason)
                 select unnest($1::text[]), now(), now(), 1, 'users_changed'
                 on conflict (tenant_id) do update set pending_since = now(), changed_at = now(),
                     generation = readiness_schedule.generation + 1",
                &[&names],
            )
            .await
            .unwrap();
    };
    let idle = || async {
        let n: i64 = env
            .owner
            .query_one(
                "select count(*) from readiness_schedule where pending_since is not null",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    };
    let rounds = 6;
    for _ in 0..rounds {
        mark_all_due().await;
        eventually("round aggregated", Duration::from_secs(60), idle).await;
    }
    for t in &tenants {
        assert_eq!(
            env.count(
                "select count(*) from readiness_reports where tenant_id = $1",
                t
            )
            .await,
            rounds,
            "each marking of {t} was computed exactly once"
        );
    }
    let overlapping: i64 = env
        .owner
        .query_one(
            "select count(*) from readiness_reports x join readiness_reports y
                on x.tenant_id = y.tenant_id and x.id < y.id
               and x.started_at < y.finished_at and y.started_at < x.finished_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlapping, 0, "two runs of one tenant overlapped");
    let by: Vec<String> = env
        .owner
        .query(
            "select distinct computed_by from readiness_reports order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(by, vec!["agg-one", "agg-two"], "both processes took work");

    // A tenant whose aggregation runs long (its lock held here) delays nobody else.
    let held = &tenants[0];
    env.owner.execute("begin", &[]).await.unwrap();
    env.owner
        .execute(
            "select 1 from readiness_locks where tenant_id = $1 for update",
            &[&held.as_str()],
        )
        .await
        .unwrap();
    let (tx_client, conn) =
        tokio_postgres::connect(&env.config.postgres.migrate_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    tx_client
        .execute(
            "update readiness_schedule set pending_since = now(), changed_at = now(),
                    generation = generation + 1",
            &[],
        )
        .await
        .unwrap();
    eventually("the others aggregated", Duration::from_secs(60), || async {
        let n: i64 = tx_client
            .query_one(
                "select count(*) from readiness_schedule where pending_since is not null",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(
        env.count(
            "select count(*) from readiness_reports where tenant_id = $1",
            held
        )
        .await,
        rounds
    );
    env.owner.execute("commit", &[]).await.unwrap();
    eventually("the held tenant aggregated", Duration::from_secs(60), idle).await;
    assert_eq!(
        env.count(
            "select count(*) from readiness_reports where tenant_id = $1",
            held
        )
        .await,
        rounds + 1
    );
    let m = one.metrics().await;
    assert!(m
        .keys()
        .any(|k| k.starts_with("enablement_readiness_aggregation_duration_seconds_count")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_causes_one_automatic_run() {
    let env = TestEnv::new().await;
    let t = tenant("rd-burst");
    let token = env.add_tenant(&t).await;
    let svc = Service::start(
        &env,
        &[
            ("ENABLEMENT__AGGREGATOR__DEBOUNCE_MS", "1500"),
            ("ENABLEMENT__AGGREGATOR__POLL_INTERVAL_MS", "50"),
        ],
    );
    svc.wait_ready(&[&t]).await;
    let lines: Vec<String> = (0..25)
        .map(|i| {
            scim_event(
                t.as_str(),
                &format!("burst-{i}"),
                "CREATE",
                &format!("user{i}"),
                1,
                &format!("user{i}@corp.test"),
            )
        })
        .collect();
    common::push(&env.config, &t, &lines).await;
    let settled = || async {
        let applied = env.processed(&t).await;
        let pending = env
            .count(
                "select count(*) from readiness_schedule where tenant_id = $1 and pending_since is not null",
                &t,
            )
            .await;
        let reports = env
            .count(
                "select count(*) from readiness_reports where tenant_id = $1",
                &t,
            )
            .await;
        (applied == 25 && pending == 0 && reports >= 1).then_some(reports)
    };
    let reports = eventually(
        "burst applied and aggregated",
        Duration::from_secs(60),
        settled,
    )
    .await;
    assert_eq!(reports, 1, "one run for the burst");
    let (_, _, r) = svc
        .call(Method::GET, &format!("/api/tenants/{t}/readiness"), &token)
        .await;
    assert_eq!(
        (r["activeUsers"].as_i64(), r["trigger"].as_str()),
        (Some(25), Some("changed"))
    );
    assert!(
        svc.metric("enablement_readiness_reaggregations_scheduled_total{reason=\"users_changed\"}")
            .await
            >= 1.0
    );

    // A quiz result is an input too.
    let quiz = serde_json::json!({"submissionId": "s1", "userId": "user3", "courseId": "c1",
        "quizId": "q1", "score": 50.0, "submittedAt": "2026-11-01T10:00:00Z",
        "answers": [{"questionId": "a", "selected": "x", "correct": true},
                    {"questionId": "b", "selected": "y", "correct": false}]});
    let status = reqwest::Client::new()
        .post(format!("{}/api/tenants/{t}/quiz-results", svc.base_url))
        .bearer_auth(&token)
        .json(&quiz)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);
    let r = eventually("quiz re-aggregated", Duration::from_secs(30), || async {
        let (_, _, r) = svc
            .call(Method::GET, &format!("/api/tenants/{t}/readiness"), &token)
            .await;
        (r["scored"] == 1).then_some(r)
    })
    .await;
    assert!(close(&r["avgScore"], 50.0));
}
