//! The SCIM pipeline end to end: the real binary, broker, PostgreSQL and Redis.

mod common;

use std::time::Duration;

use common::{eventually, push, read_topic, scim_event, tenant, Service, TestEnv};
use enablement::actors::TopicKind;
use serde_json::Value;

fn header<'a>(rec: &'a Value, name: &str) -> &'a str {
    rec["headers"][name].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_provision_update_deactivate_and_bad_input_goes_to_the_dlq() {
    let env = TestEnv::new().await;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    env.add_tenant(&acme).await;
    env.add_tenant(&globex).await;
    let svc = Service::start(&env, &[("ENABLEMENT__PIPELINE__MAX_MESSAGE_BYTES", "4096")]);
    svc.wait_ready(&[&acme, &globex]).await;

    let a = acme.as_str();
    // An identity system may send the password: it is never stored nor re-published.
    let mut with_password: Value =
        serde_json::from_str(&scim_event(a, "e1", "CREATE", "u1", 1, "one@acme.test")).unwrap();
    with_password["user"]["password"] = Value::String("Hunter2-secret".into());
    with_password["user"]["PASSWORD"] = Value::String("Hunter2-secret".into());
    let good = vec![
        with_password.to_string(),
        scim_event(a, "e2", "CREATE", "u2", 2, "two@acme.test"),
        scim_event(a, "e3", "UPDATE", "u1", 3, "one.new@acme.test"),
        scim_event(a, "e4", "DELETE", "u2", 4, "two@acme.test"),
        scim_event(a, "e1", "CREATE", "u1", 1, "one@acme.test"), // replay: no-op
        scim_event(a, "e5", "UPDATE", "u1", 2, "stale@acme.test"), // older than e3: no-op
    ];
    let mut missing_user_name: Value =
        serde_json::from_str(&scim_event(a, "b3", "CREATE", "u9", 9, "x@acme.test")).unwrap();
    missing_user_name["user"]
        .as_object_mut()
        .unwrap()
        .remove("userName");
    let mut missing_id: Value =
        serde_json::from_str(&scim_event(a, "b4", "CREATE", "u9", 9, "x@acme.test")).unwrap();
    missing_id["user"].as_object_mut().unwrap().remove("id");
    let mut wrong_type: Value =
        serde_json::from_str(&scim_event(a, "b5", "CREATE", "u9", 9, "x@acme.test")).unwrap();
    wrong_type["user"]["active"] = Value::String("yes".into());
    let bad = [
        ("invalid_json", "this is not json".to_string()),
        ("invalid_field", wrong_type.to_string()),
        ("missing_field", missing_user_name.to_string()),
        ("missing_field", missing_id.to_string()),
        (
            "unknown_operation",
            scim_event(a, "b6", "MERGE", "u9", 9, "x@acme.test"),
        ),
        (
            "oversized",
            format!("{{\"pad\": \"{}\"}}", "x".repeat(5000)),
        ),
        (
            "tenant_mismatch",
            scim_event(globex.as_str(), "b8", "CREATE", "spy", 9, "spy@globex.test"),
        ),
    ];
    let mut lines = good.clone();
    lines.extend(bad.iter().map(|(_, l)| l.clone()));
    push(&env.config, &acme, &lines).await;
    // The other tenant's traffic is independent.
    push(
        &env.config,
        &globex,
        &[scim_event(
            globex.as_str(),
            "g1",
            "CREATE",
            "u1",
            1,
            "g@globex.test",
        )],
    )
    .await;

    eventually("acme's events applied", Duration::from_secs(30), || async {
        (env.processed(&acme).await == 5).then_some(())
    })
    .await;
    let rows = env
        .owner
        .query(
            "select user_id, email, active, version, scim->>'active' from users where tenant_id = $1 order by 1",
            &[&acme.as_str()],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, bool, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "u1".into(),
                "one.new@acme.test".into(),
                true,
                2,
                "true".into()
            ),
            (
                "u2".into(),
                "two@acme.test".into(),
                false,
                2,
                "false".into()
            ),
        ]
    );

    // One user_changed record per effective change (e1, e2, e3, e4), relayed.
    let changed = eventually("user_changed relayed", Duration::from_secs(30), || async {
        let recs = read_topic(&env.config, &acme, TopicKind::UserChanged).await;
        (recs.len() >= 4).then_some(recs)
    })
    .await;
    let ids: Vec<&str> = changed
        .iter()
        .map(|r| r["payload"]["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e2", "e3", "e4"]);
    assert!(
        changed.iter().all(|r| !r.to_string().contains("Hunter2")),
        "a password was re-published"
    );
    let stored_passwords = env
        .count(
            "select count(*) from users where tenant_id = $1 and scim::text like '%Hunter2%'",
            &acme,
        )
        .await;
    assert_eq!(stored_passwords, 0, "a password was stored");
    assert_eq!(changed[3]["payload"]["active"], Value::Bool(false));
    // The relay cursor is stored (carried by a later batch or after cursor_store_delay).
    eventually("relay cursor stored", Duration::from_secs(30), || async {
        let unrelayed = env
            .count(
                "select count(*) from outbox where tenant_id = $1
                   and seq > (select relayed_seq from outbox_relay where tenant_id = $1)",
                &acme,
            )
            .await;
        (unrelayed == 0).then_some(())
    })
    .await;

    // Every rejected payload is on the DLQ with its reason, source offset and original bytes.
    let dlq = eventually("dlq records", Duration::from_secs(30), || async {
        let recs = read_topic(&env.config, &acme, TopicKind::Dlq).await;
        (recs.len() >= bad.len()).then_some(recs)
    })
    .await;
    assert_eq!(dlq.len(), bad.len());
    for (i, ((reason, original), rec)) in bad.iter().zip(&dlq).enumerate() {
        assert_eq!(header(rec, "dlq.reason"), *reason, "record {i}");
        assert_eq!(
            header(rec, "dlq.source.offset"),
            (good.len() + i).to_string()
        );
        assert!(!header(rec, "dlq.detail").is_empty());
        let payload = match &rec["payload"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let original_v: Result<Value, _> = serde_json::from_str(original);
        match original_v {
            Ok(v) => assert_eq!(serde_json::from_str::<Value>(&payload).unwrap(), v),
            Err(_) => assert_eq!(&payload, original),
        }
    }
    // The mismatch is also a recorded security event of the topic's tenant.
    assert_eq!(
        env.count("select count(*) from security_events where tenant_id = $1 and kind = 'tenant_mismatch'", &acme).await,
        1
    );
    assert_eq!(
        env.count("select count(*) from users where tenant_id = $1", &globex)
            .await,
        1,
        "the spoofed event never reached globex"
    );
    // Metrics: per-tenant processed and DLQ counters, backlog gauge, batch histogram.
    let label = format!("tenant=\"{acme}\"");
    let m = svc.metrics().await;
    let metric = |prefix: &str, extra: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.contains(&label) && k.contains(extra))
            .map(|(_, v)| *v)
            .sum()
    };
    assert_eq!(
        metric("enablement_scim_events_total", "outcome=\"applied\""),
        4.0
    );
    assert_eq!(
        metric("enablement_scim_events_total", "outcome=\"duplicate\""),
        1.0
    );
    assert_eq!(
        metric("enablement_scim_events_total", "outcome=\"stale\""),
        1.0
    );
    assert_eq!(metric("enablement_scim_dlq_total", ""), bad.len() as f64);
    assert!(m
        .keys()
        .any(|k| k.starts_with("enablement_tenant_backlog_messages") && k.contains(&label)));
    assert!(m
        .keys()
        .any(|k| k.starts_with("enablement_scim_batch_duration_seconds_bucket")));
    assert!(m.contains_key("enablement_actors_running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_a_tenant_added_while_running() {
    let env = TestEnv::new().await;
    let first = tenant("first");
    env.add_tenant(&first).await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&first]).await;
    let (status, body) = svc.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("ok"));
    let (status, body) = svc.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    for part in ["postgres", "redis", "kafka"] {
        assert_eq!(v["checks"][part]["ok"], Value::Bool(true), "{part}: {body}");
    }
    assert_eq!(v["tenants"]["running"], 1, "{body}");
    assert_eq!(v["consumer_group"]["assigned_tenants"], 1, "{body}");

    let late = tenant("late");
    let added = std::time::Instant::now();
    env.add_tenant(&late).await;
    push(
        &env.config,
        &late,
        &[scim_event(
            late.as_str(),
            "l1",
            "CREATE",
            "u1",
            1,
            "l@late.test",
        )],
    )
    .await;
    eventually(
        "late tenant's event applied",
        Duration::from_secs(10),
        || async { (env.processed(&late).await == 1).then_some(()) },
    )
    .await;
    assert!(added.elapsed() < Duration::from_secs(10));
    svc.wait_ready(&[&first, &late]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_is_dead_lettered_alone_and_its_batch_applied() {
    let env = TestEnv::new().await;
    let t = tenant("refuse");
    env.add_tenant(&t).await;
    // A database rule the validation does not know (as the owner, outside the service):
    // the record passes parsing and only the database refuses it.
    env.owner
        .batch_execute(&format!(
            "alter table users add constraint test_refuse
               check (tenant_id <> '{t}' or user_name not like 'refuse-me%')"
        ))
        .await
        .unwrap();
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&t]).await;
    let mut lines: Vec<String> = (0..40)
        .map(|i| {
            scim_event(
                t.as_str(),
                &format!("r{i}"),
                "CREATE",
                &format!("u{i}"),
                i,
                "r@r.test",
            )
        })
        .collect();
    let mut refused: Value = serde_json::from_str(&lines[17]).unwrap();
    refused["user"]["userName"] = Value::String("refuse-me@r.test".into());
    lines[17] = refused.to_string();
    let mut nul: Value = serde_json::from_str(&lines[30]).unwrap();
    nul["user"]["userName"] = Value::String("nul\u{0}name@r.test".into());
    lines[30] = nul.to_string();
    lines.push(format!("{{\"pad\": \"{}\"}}", "x".repeat(300 * 1024)));
    push(&env.config, &t, &lines).await;

    eventually("the other 38 applied", Duration::from_secs(60), || async {
        (env.processed(&t).await == 38).then_some(())
    })
    .await;
    let dlq = eventually(
        "3 dead letters relayed",
        Duration::from_secs(30),
        || async {
            let recs = read_topic(&env.config, &t, TopicKind::Dlq).await;
            (recs.len() >= 3).then_some(recs)
        },
    )
    .await;
    let mut got: Vec<(String, String)> = dlq
        .iter()
        .map(|r| {
            (
                header(r, "dlq.reason").to_owned(),
                header(r, "dlq.source.offset").to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("database_refused".to_string(), "17".to_string()),
            ("oversized".to_string(), "40".to_string()),
            ("unstorable".to_string(), "30".to_string()),
        ]
    );
    assert_eq!(
        env.count("select count(*) from dead_letters where tenant_id = $1", &t)
            .await,
        3
    );
    let restarts = format!("enablement_actor_restarts_total{{tenant=\"{t}\"}}");
    assert_eq!(
        svc.metric(&restarts).await,
        0.0,
        "isolated without a restart"
    );
    let (status, _) = svc.get("/readyz").await.unwrap();
    assert_eq!(status, 200);

    // A replay of the whole topic (a new consumer group) applies nothing twice and
    // dead-letters nothing twice.
    drop(svc);
    let group = common::unique("g");
    let svc = Service::start(&env, &[("ENABLEMENT__KAFKA__GROUP_ID", &group)]);
    svc.wait_ready(&[&t]).await;
    let lag = format!("enablement_scim_events_total{{tenant=\"{t}\",outcome=\"duplicate\"}}");
    eventually(
        "the replay reached the end",
        Duration::from_secs(60),
        || async { (svc.metric(&lag).await >= 38.0).then_some(()) },
    )
    .await;
    let dlq_after = read_topic(&env.config, &t, TopicKind::Dlq).await;
    assert_eq!(dlq_after.len(), 3, "no dead letter published twice");
    assert_eq!(
        read_topic(&env.config, &t, TopicKind::UserChanged)
            .await
            .len(),
        38,
        "no effect published twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_failing_persistently_is_restarted_and_counted_while_others_keep_flowing() {
    let env = TestEnv::new().await;
    let (sick, healthy) = (tenant("sick"), tenant("healthy"));
    env.add_tenant(&sick).await;
    env.add_tenant(&healthy).await;
    // A fault of one tenant's storage that even its dead letters hit (every write of the
    // tenant's outbox allocates from its outbox_relay row).
    env.owner
        .batch_execute(&format!(
            "create function sick() returns trigger language plpgsql as $$
             begin
               if new.tenant_id = '{sick}' then raise exception 'injected failure'; end if;
               return new;
             end $$;
             create trigger sick before insert or update on outbox_relay
               for each row execute function sick();"
        ))
        .await
        .unwrap();
    let svc = Service::start(
        &env,
        &[
            ("ENABLEMENT__SUPERVISOR__RESTART_BACKOFF_INITIAL_MS", "50"),
            ("ENABLEMENT__SUPERVISOR__RESTART_BACKOFF_MAX_MS", "400"),
            ("ENABLEMENT__SUPERVISOR__MAX_CONSECUTIVE_FAILURES", "1000"),
        ],
    );
    svc.wait_ready(&[&sick, &healthy]).await;
    push(
        &env.config,
        &sick,
        &[scim_event(
            sick.as_str(),
            "p1",
            "CREATE",
            "u1",
            1,
            "p@sick.test",
        )],
    )
    .await;
    let restarts = format!("enablement_actor_restarts_total{{tenant=\"{sick}\"}}");
    eventually(
        "sick tenant restarted twice",
        Duration::from_secs(30),
        || async { (svc.metric(&restarts).await >= 2.0).then_some(()) },
    )
    .await;
    // Meanwhile the healthy tenant flows.
    let lines: Vec<String> = (0..20)
        .map(|i| {
            scim_event(
                healthy.as_str(),
                &format!("h{i}"),
                "CREATE",
                &format!("u{i}"),
                i,
                "h@h.test",
            )
        })
        .collect();
    push(&env.config, &healthy, &lines).await;
    eventually(
        "healthy tenant applied",
        Duration::from_secs(30),
        || async { (env.processed(&healthy).await == 20).then_some(()) },
    )
    .await;
    assert_eq!(
        env.processed(&sick).await,
        0,
        "the failing batch never committed"
    );
    let healthy_restarts = format!("enablement_actor_restarts_total{{tenant=\"{healthy}\"}}");
    assert_eq!(svc.metric(&healthy_restarts).await, 0.0);
    // One tenant's trouble never takes the instance out of service: /readyz stays 200 and
    // names the tenant.
    let (status, body) = svc.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["tenants"]["restarted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["tenant"] == sick.as_str()),
        "{body}"
    );

    // The fault clears: the next restart replays the batch and the tenant recovers.
    env.owner
        .batch_execute("drop trigger sick on outbox_relay")
        .await
        .unwrap();
    eventually("sick tenant recovered", Duration::from_secs(30), || async {
        (env.processed(&sick).await == 1).then_some(())
    })
    .await;
    svc.wait_ready(&[&sick, &healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_registration_over_http_needs_the_operator_token() {
    let env = TestEnv::new().await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/tenants", svc.base_url);
    let id = common::unique("http");
    let body = serde_json::json!({"tenantId": id, "displayName": "Over HTTP"});
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("wrong-token-wrong-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let op = env.config.http.operator_token.expose().to_owned();
    let r = client
        .post(&url)
        .bearer_auth(&op)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let token = v["apiToken"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ent_"));
    assert_eq!(v["topics"].as_array().unwrap().len(), 4);
    let r = client
        .post(&url)
        .bearer_auth(&op)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "tenant_exists");
    assert!(!v.to_string().contains(&token));
    for bad in ["a*", "a?", "[a]", "Acme", "a.b", ""] {
        let r = client
            .post(&url)
            .bearer_auth(&op)
            .json(&serde_json::json!({"tenantId": bad, "displayName": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_tenant_id");
    }
    let r = client
        .post(&url)
        .bearer_auth(&op)
        .json(&serde_json::json!({"tenantId": common::tenant("shx").as_str(), "displayName": "x", "sharedTopics": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "sharedTopics must be a boolean");
    let r = client
        .post(&url)
        .bearer_auth(&op)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let big = "x".repeat(env.config.http.max_body_bytes + 1);
    let r = client
        .post(&url)
        .bearer_auth(&op)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}
