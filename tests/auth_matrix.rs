//! The authentication matrix over every tenant route: no token, garbage, a forged token of
//! the right shape, another tenant's token, the tenant's own token and the operator token.

mod common;

use common::{tenant, Service, TestEnv};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_route_answers_401_403_404_or_serves_by_token() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("mx-a"), tenant("mx-b"));
    let token_a = env.add_tenant(&a).await;
    let token_b = env.add_tenant(&b).await;
    let store = env.store().await;
    let sim = common::start_sim(enablement_tools::simulator::SimSettings::default()).await;
    let secret = enablement_tools::simulator::dev_secret(a.as_str());
    store
        .set_upstream_credentials(&a, a.as_str(), &secret)
        .await
        .unwrap();
    // The matrix fails authentication on purpose more often than the per-address budget
    // allows (tests/http_edge.rs tests that budget).
    let svc = Service::start(
        &env,
        &[
            ("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str()),
            ("ENABLEMENT__HTTP__AUTH_FAILURES_PER_MIN", "10000"),
        ],
    );
    svc.wait_ready(&[&a, &b]).await;
    env.provision(&a, "mx-e1", "u1", "u1@mx.test").await;
    let op = env.config.http.operator_token.expose().to_owned();
    let forged = format!("ent_{a}.{}", "f".repeat(64));
    let quiz = json!({"submissionId": "s", "userId": "u1", "courseId": "c", "quizId": "q",
                      "answers": [{"questionId": "x", "selected": "y", "correct": true}],
                      "score": 100, "submittedAt": "2026-11-01T00:00:00Z"});
    // Every tenant route, with what an authorised caller gets.
    let routes: Vec<(Method, String, Option<serde_json::Value>, &[u16])> = vec![
        (Method::GET, format!("/api/tenants/{a}/users"), None, &[200]),
        (
            Method::GET,
            format!("/api/tenants/{a}/courses"),
            None,
            &[200],
        ),
        (
            Method::POST,
            format!("/api/tenants/{a}/sync-progress"),
            None,
            &[202],
        ),
        (
            Method::POST,
            format!("/api/tenants/{a}/users/u1/sync-progress"),
            None,
            &[200, 202],
        ),
        (
            Method::GET,
            format!("/api/tenants/{a}/users/u1/sync-progress"),
            None,
            &[200, 404],
        ),
        (
            Method::POST,
            format!("/api/tenants/{a}/quiz-results"),
            Some(quiz),
            &[200, 201],
        ),
        (
            Method::POST,
            format!("/api/tenants/{a}/readiness/aggregate"),
            None,
            &[200, 202],
        ),
        (
            Method::GET,
            format!("/api/tenants/{a}/readiness"),
            None,
            &[200, 404],
        ),
    ];
    let client = reqwest::Client::new();
    let send =
        |method: Method, path: &str, body: Option<serde_json::Value>, token: Option<&str>| {
            let mut req = client.request(method, format!("{}{path}", svc.base_url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
        };
    let before = env
        .count("select count(*) from security_events where tenant_id = $1 and kind = 'cross_tenant_access'", &b)
        .await;
    for (method, path, body, ok) in &routes {
        for (who, token, expect) in [
            ("none", None, 401),
            ("garbage", Some("garbage"), 401),
            ("forged", Some(forged.as_str()), 401),
            ("other tenant", Some(token_b.as_str()), 404),
        ] {
            let (status, text) = send(method.clone(), path, body.clone(), token).await;
            assert_eq!(status, expect, "{method} {path} with {who}: {text}");
        }
        for (who, token) in [("own", token_a.as_str()), ("operator", op.as_str())] {
            let (status, text) = send(method.clone(), path, body.clone(), Some(token)).await;
            assert!(
                ok.contains(&status),
                "{method} {path} with {who}: {status} {text}"
            );
        }
    }
    let after = env
        .count("select count(*) from security_events where tenant_id = $1 and kind = 'cross_tenant_access'", &b)
        .await;
    assert_eq!(
        after - before,
        routes.len() as i64,
        "each cross-tenant use recorded against the token's tenant"
    );

    // A suspended tenant is cut off on every route, for its token and the operator alike;
    // its cache is not refilled. Resuming restores access.
    common::cli_ok(&env, &["tenant", "suspend", a.as_str()]);
    for (method, path, body, _) in &routes {
        for token in [token_a.as_str(), op.as_str()] {
            let (status, text) = send(method.clone(), path, body.clone(), Some(token)).await;
            assert_eq!(status, 403, "{method} {path} while suspended: {text}");
            assert!(text.contains("tenant_suspended"), "{text}");
        }
    }
    let mut redis = redis::Client::open(env.config.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let roster_key = format!("tenant:{{{a}}}:roster");
    let cached: bool = redis::cmd("EXISTS")
        .arg(&roster_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!cached, "a suspended tenant's cache is not refilled");
    common::cli_ok(&env, &["tenant", "resume", a.as_str()]);
    let users = format!("/api/tenants/{a}/users");
    assert_eq!(send(Method::GET, &users, None, Some(&token_a)).await.0, 200);

    // Rotation: the new token works, the old one stops at once.
    let rotated = common::cli_ok(&env, &["tenant", "rotate-token", a.as_str()]);
    assert!(rotated.starts_with(&format!("ent_{a}.")), "{rotated}");
    assert_eq!(send(Method::GET, &users, None, Some(&token_a)).await.0, 401);
    assert_eq!(send(Method::GET, &users, None, Some(&rotated)).await.0, 200);

    // Registration is operator-only: a tenant token is not enough.
    let reg = json!({"tenantId": common::unique("mx"), "displayName": "x"});
    assert_eq!(
        send(
            Method::POST,
            "/api/tenants",
            Some(reg.clone()),
            Some(&rotated)
        )
        .await
        .0,
        401
    );
    assert_eq!(
        send(Method::POST, "/api/tenants", Some(reg), Some(&op))
            .await
            .0,
        201
    );
    // Unknown routes are JSON 404s.
    assert_eq!(send(Method::GET, "/api/nope", None, Some(&op)).await.0, 404);
}
