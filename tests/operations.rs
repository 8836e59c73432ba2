//! Operating the service: request metrics by route template and HELP text, the OpenAPI
//! document, `enablement status` (table and JSON), and `events redrive` after the cause of
//! a rejection is fixed. Real binary, PostgreSQL, Redis and broker.

mod common;

use std::time::Duration;

use common::{cli_ok, eventually, push, scim_event, tenant, Service, TestEnv};
use serde_json::Value;

/// Requests counted by route template (never the raw path), method and status class; a
/// latency histogram; every `enablement_*` family with HELP text; framework errors (405,
/// an unknown route) answer the JSON error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metrics_by_route_template_and_help_for_every_metric() {
    let env = TestEnv::new().await;
    let t = tenant("httpm");
    let token = env.add_tenant(&t).await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&t]).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let (status, _, _) = svc
            .call(
                reqwest::Method::GET,
                &format!("/api/tenants/{t}/users"),
                &token,
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = svc
        .call(
            reqwest::Method::GET,
            "/api/tenants/nobody-here/users",
            "wrong-token",
        )
        .await;
    assert_eq!(status, 401);
    // An unknown path (made up by a client) and a wrong method: JSON bodies, bounded labels.
    let r = client
        .get(format!("{}/made/up/{}", svc.base_url, common::unique("p")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    let r = client
        .delete(format!("{}/api/tenants/{t}/users", svc.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers().contains_key("allow"), "405 keeps Allow");
    let body: Value = r.json().await.expect("405 body is JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let text = eventually("request metrics", Duration::from_secs(10), || async {
        let (_, text) = svc.get("/metrics").await?;
        text.contains("enablement_http_requests_total{route=\"/api/tenants/{tenant}/users\",method=\"DELETE\"")
            .then_some(text)
    })
    .await;
    let m = enablement::testing::parse_metrics(&text);
    let users = "route=\"/api/tenants/{tenant}/users\",method=\"GET\"";
    assert_eq!(
        m.get(&format!(
            "enablement_http_requests_total{{{users},status_class=\"2xx\"}}"
        )),
        Some(&3.0),
        "{text}"
    );
    assert_eq!(
        m.get(&format!(
            "enablement_http_requests_total{{{users},status_class=\"4xx\"}}"
        )),
        Some(&1.0)
    );
    assert!(
        m.contains_key("enablement_http_requests_total{route=\"unmatched\",method=\"GET\",status_class=\"4xx\"}"),
        "{text}"
    );
    assert_eq!(
        m.get(&format!(
            "enablement_http_request_duration_seconds_count{{{users}}}"
        )),
        Some(&4.0)
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("enablement_http") && l.contains(t.as_str())),
        "no raw path or tenant id in HTTP labels"
    );
    assert!(
        !text.contains("/made/up"),
        "an invented path mints no series"
    );
    // HELP for every family the service exports.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("enablement_"))
        .collect();
    assert!(families.len() > 10, "{families:?}");
    for f in families {
        assert!(
            text.contains(&format!("# HELP {f} ")),
            "{f} has no HELP text"
        );
    }
    assert!(m.get("enablement_instance_ready") == Some(&1.0), "{text}");
}

/// `/openapi.json` is OpenAPI 3.1, needs no token, and describes exactly the routes the
/// router serves, with both bearer schemes and the error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_route() {
    let env = TestEnv::new().await;
    let svc = Service::start(&env, &[]);
    svc.wait_up().await;
    let r = reqwest::get(format!("{}/openapi.json", svc.base_url))
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/api/tenants",
        "/api/tenants/{tenant}/users",
        "/api/tenants/{tenant}/quiz-results",
        "/api/tenants/{tenant}/courses",
        "/api/tenants/{tenant}/sync-progress",
        "/api/tenants/{tenant}/users/{user}/sync-progress",
        "/api/tenants/{tenant}/readiness/aggregate",
        "/api/tenants/{tenant}/readiness",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    assert_eq!(paths.len(), 12, "{paths:?}");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["operator_token"]["scheme"], "bearer");
    assert_eq!(schemes["tenant_token"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    let users = &doc["paths"]["/api/tenants/{tenant}/users"]["get"]["responses"];
    for code in ["200", "400", "401", "403", "404", "429", "503"] {
        assert!(users[code].is_object(), "GET users documents {code}");
    }
    // A tenant registered over HTTP is served at once with the token it was given.
    let t = tenant("fresh");
    let r = reqwest::Client::new()
        .post(format!("{}/api/tenants", svc.base_url))
        .bearer_auth(&svc.operator_token)
        .json(&serde_json::json!({"tenantId": t.as_str(), "displayName": "Fresh"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status().as_u16(), 201);
    let created: Value = r.json().await.expect("json");
    let token = created["apiToken"].as_str().expect("token");
    let (status, _, body) = svc
        .call(
            reqwest::Method::GET,
            &format!("/api/tenants/{t}/users"),
            token,
        )
        .await;
    assert_eq!((status, &body["users"]), (200, &serde_json::json!([])));
    // The operator naming a tenant that does not exist: 404, no work queued for it.
    let (status, _, body) = svc
        .call(
            reqwest::Method::GET,
            "/api/tenants/no-such-tenant/courses",
            &svc.operator_token,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // The api role's document has the same routes; the consumer role's only operations.
    assert_eq!(
        serde_json::from_str::<Value>(&enablement::http::openapi_document(
            enablement::config::Role::Consumer
        ))
        .expect("json")["paths"]
            .as_object()
            .expect("paths")
            .len(),
        4
    );
}

/// `status --json` and the table: every tenant with its owner, actor state, events and
/// dead letters of the last hour, queue by priority and last readiness report; a tenant
/// nobody runs is `unowned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_tenant_with_its_owner_and_last_hour() {
    let env = TestEnv::new().await;
    let (a, b, idle) = (tenant("sta"), tenant("stb"), tenant("stc"));
    let token_a = env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    env.add_tenant(&idle).await;
    cli_ok(&env, &["tenant", "suspend", idle.as_str()]);
    let instance = common::unique("inst");
    let svc = Service::start(
        &env,
        &[("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", instance.as_str())],
    );
    svc.wait_ready(&[&a, &b]).await;
    push(
        &env.config,
        &a,
        &[
            scim_event(a.as_str(), "e1", "CREATE", "u1", 1, "u1@a.test"),
            scim_event(a.as_str(), "e2", "CREATE", "u2", 2, "u2@a.test"),
            "{not json".to_owned(),
        ],
    )
    .await;
    push(
        &env.config,
        &b,
        &[scim_event(b.as_str(), "e1", "CREATE", "u1", 1, "u1@b.test")],
    )
    .await;
    let (status, _, _) = svc
        .call(
            reqwest::Method::POST,
            &format!("/api/tenants/{a}/readiness/aggregate"),
            &token_a,
        )
        .await;
    assert!(status == 200 || status == 202, "{status}");
    let rows = eventually(
        "status of both tenants",
        Duration::from_secs(30),
        || async {
            let out = cli_ok(&env, &["status", "--json"]);
            let rows: Vec<Value> = serde_json::from_str(&out).ok()?;
            let row = |t: &enablement::actors::TenantId| {
                rows.iter().find(|r| r["tenant"] == t.as_str()).cloned()
            };
            let (ra, rb) = (row(&a)?, row(&b)?);
            (ra["events_last_hour"] == 2
                && ra["dead_letters_last_hour"] == 1
                && ra["state"] == "running"
                && !ra["last_report_at"].is_null()
                && rb["events_last_hour"] == 1)
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let ra = rows.iter().find(|r| r["tenant"] == a.as_str()).expect("a");
    assert_eq!(ra["instance"], instance.as_str());
    assert_eq!(ra["status"], "active");
    assert_eq!(ra["topics"], "dedicated");
    assert!(ra["pending_jobs"].is_object());
    assert!(ra["last_report_provisional"].is_boolean());
    let ri = rows
        .iter()
        .find(|r| r["tenant"] == idle.as_str())
        .expect("idle");
    assert_eq!(ri["status"], "suspended");
    assert_eq!(ri["state"], "unowned");
    assert!(ri["instance"].is_null());

    let table = cli_ok(&env, &["status"]);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    for col in [
        "TENANT",
        "STATE",
        "INSTANCE",
        "LAG",
        "EVENTS/1H",
        "DLQ/1H",
        "QUEUE i/s/b",
        "LAST REPORT",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let line_a = table
        .lines()
        .find(|l| l.starts_with(a.as_str()))
        .expect("row of a");
    assert!(
        line_a.contains("running") && line_a.contains(&instance),
        "{line_a}"
    );
    assert!(table.ends_with("3 tenants"), "{table}");

    // --watch redraws (clear screen, table) until SIGTERM, then exits 0.
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_enablement"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .args(["status", "--watch", "1"])
        .envs(env.service_env("127.0.0.1:1"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("status --watch");
    let stdout = watch.stdout.take().expect("stdout");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdout = stdout;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    eventually("two frames of --watch", Duration::from_secs(20), || async {
        let text = seen.lock().unwrap().clone();
        (text.matches("\x1b[2J").count() >= 2 && text.matches("3 tenants").count() >= 2)
            .then_some(())
    })
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &watch.id().to_string()])
        .status()
        .expect("kill");
    assert!(watch.wait().expect("wait").success());

    // The owner's gauges of outbox and queue ages come from the same report.
    eventually("owner gauges (sampled every 15 s)", Duration::from_secs(45), || async {
        let m = svc.metrics().await;
        (m.contains_key(&format!("enablement_outbox_unrelayed_rows{{tenant=\"{a}\"}}"))
            && m.contains_key(&format!(
                "enablement_upstream_queue_oldest_age_seconds{{tenant=\"{a}\",priority=\"interactive\"}}"
            ))
            && m.contains_key(&format!("enablement_readiness_report_age_seconds{{tenant=\"{a}\"}}")))
        .then_some(())
    })
    .await;
    // SIGKILL: no goodbye, the rows stay; once older than 90 s (aged here instead of
    // waited for) the tenants show as stale, still naming the instance.
    let mut svc = svc;
    svc.kill();
    let state_of = |rows: &[Value], t: &enablement::actors::TenantId| {
        rows.iter().find(|r| r["tenant"] == t.as_str()).map(|r| {
            (
                r["state"].as_str().unwrap_or_default().to_owned(),
                r["instance"].clone(),
            )
        })
    };
    let rows: Vec<Value> =
        serde_json::from_str(&cli_ok(&env, &["status", "--json"])).expect("json");
    assert_eq!(state_of(&rows, &a).expect("a").0, "running");
    env.owner
        .execute(
            "update tenant_owners set reported_at = now() - interval '91 seconds'",
            &[],
        )
        .await
        .expect("age the report");
    let rows: Vec<Value> =
        serde_json::from_str(&cli_ok(&env, &["status", "--json"])).expect("json");
    assert_eq!(
        state_of(&rows, &a).expect("a"),
        ("stale".to_owned(), Value::String(instance.clone()))
    );

    // A new owner takes the rows over; stopped cleanly, it takes its report with it.
    let mut svc = Service::start(&env, &[("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", "second")]);
    svc.wait_ready(&[&a, &b]).await;
    eventually(
        "the new owner reported",
        Duration::from_secs(30),
        || async {
            let rows: Vec<Value> =
                serde_json::from_str(&cli_ok(&env, &["status", "--json"])).ok()?;
            (state_of(&rows, &a)? == ("running".to_owned(), Value::String("second".into())))
                .then_some(())
        },
    )
    .await;
    assert!(svc.terminate(Duration::from_secs(30)).success());
    let rows: Vec<Value> =
        serde_json::from_str(&cli_ok(&env, &["status", "--json"])).expect("json");
    assert!(rows.iter().all(|r| r["state"] == "unowned"), "{rows:?}");
}

/// A record rejected for a limit (`pipeline.max_message_bytes`) is redriven once the limit
/// is raised: applied once, `dlq.*` headers gone, `redrive.source.offset` added; a dry run
/// and a second redrive publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_after_the_cause_is_fixed_applies_each_dead_letter_once() {
    use enablement::actors::TopicKind;
    let env = TestEnv::new().await;
    let t = tenant("redrive");
    env.add_tenant(&t).await;
    let mut svc = Service::start(&env, &[("ENABLEMENT__PIPELINE__MAX_MESSAGE_BYTES", "700")]);
    svc.wait_ready(&[&t]).await;
    let small = scim_event(t.as_str(), "e-small", "CREATE", "u-small", 1, "s@x.test");
    let mut big: Value = serde_json::from_str(&scim_event(
        t.as_str(),
        "e-big",
        "CREATE",
        "u-big",
        2,
        "b@x.test",
    ))
    .expect("json");
    big["user"]["displayName"] = Value::String("x".repeat(900));
    let big = big.to_string();
    assert!(small.len() < 700 && big.len() > 700);
    push(&env.config, &t, &[small, big, "{poison".to_owned()]).await;
    eventually("two dead letters", Duration::from_secs(30), || async {
        (env.count("select count(*) from dead_letters where tenant_id = $1", &t)
            .await
            == 2)
            .then_some(())
    })
    .await;
    eventually("dlq published", Duration::from_secs(30), || async {
        (common::read_topic(&env.config, &t, TopicKind::Dlq)
            .await
            .len()
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(env.processed(&t).await, 1);
    assert!(svc.terminate(Duration::from_secs(30)).success());

    // Dry run: lists, publishes nothing.
    let inbound_before = common::read_topic(&env.config, &t, TopicKind::Scim)
        .await
        .len();
    let out = cli_ok(
        &env,
        &[
            "events",
            "redrive",
            "--tenant",
            t.as_str(),
            "--reason",
            "oversized",
            "--dry-run",
        ],
    );
    let items: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    let outcomes: Vec<&str> = items.iter().filter_map(|i| i["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["would_redrive", "filtered"], "{out}");
    assert_eq!(
        common::read_topic(&env.config, &t, TopicKind::Scim)
            .await
            .len(),
        inbound_before
    );

    let out = cli_ok(
        &env,
        &[
            "events",
            "redrive",
            "--tenant",
            t.as_str(),
            "--from-offset",
            "1",
            "--dry-run",
        ],
    );
    let item: Value = serde_json::from_str(out.trim()).expect("one line");
    assert_eq!(
        (item["dlq_offset"].as_i64(), item["outcome"].as_str()),
        (Some(1), Some("would_redrive"))
    );
    // Bad arguments: a clear error, exit code 2, nothing read or published.
    for args in [
        vec!["events", "redrive", "--tenant", "../etc"],
        vec![
            "events",
            "redrive",
            "--tenant",
            t.as_str(),
            "--from-offset",
            "-3",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_enablement"))
            .args([
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
            ])
            .args(&args)
            .envs(env.service_env("127.0.0.1:1"))
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The cause fixed: the default limit again.
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&t]).await;
    let out = cli_ok(
        &env,
        &[
            "events",
            "redrive",
            "--tenant",
            t.as_str(),
            "--reason",
            "oversized",
        ],
    );
    assert!(out.contains("\"outcome\":\"redriven\""), "{out}");
    eventually(
        "the redriven user applied",
        Duration::from_secs(30),
        || async {
            (env.count(
                "select count(*) from users where tenant_id = $1 and user_id = 'u-big'",
                &t,
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    let inbound = common::read_topic(&env.config, &t, TopicKind::Scim).await;
    assert_eq!(inbound.len(), inbound_before + 1);
    let redriven = inbound.last().expect("redriven record");
    let headers = redriven["headers"].as_object().expect("headers");
    assert!(
        headers.keys().all(|k| !k.starts_with("dlq.")),
        "{headers:?}"
    );
    assert_eq!(headers["redrive.source.offset"], "1");
    assert_eq!(redriven["key"], "u-big", "original key");

    // Again (and without the reason filter): nothing more is published or applied.
    let out = cli_ok(&env, &["events", "redrive", "--tenant", t.as_str()]);
    let outcomes = outcomes_of(&out);
    assert_eq!(
        outcomes,
        ["already_redriven", "redriven"],
        "the poison is redriven once too: {out}"
    );
    // The poison was redriven (it is still poison: dead-lettered again, at its new offset).
    eventually(
        "the poison dead-lettered again",
        Duration::from_secs(30),
        || async {
            (common::read_topic(&env.config, &t, TopicKind::Dlq)
                .await
                .len()
                == 3)
                .then_some(())
        },
    )
    .await;
    // A third run republishes nothing: the repeat failure is reported, not looped.
    let out = cli_ok(&env, &["events", "redrive", "--tenant", t.as_str()]);
    let outcomes = outcomes_of(&out);
    assert_eq!(
        outcomes,
        ["already_redriven", "already_redriven", "failed_again"],
        "{out}"
    );
    assert_eq!(env.processed(&t).await, 2);
    assert_eq!(
        common::read_topic(&env.config, &t, TopicKind::Scim)
            .await
            .len(),
        inbound_before + 2
    );
    drop(svc);
}

/// The `outcome` of each JSON line `events redrive` printed.
fn outcomes_of(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("line")["outcome"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}
