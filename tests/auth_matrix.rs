//! The authentication matrix over every tenant route: no token, garbage, a forged token of
//! the right shape, another tenant's token, the tenant's own token and the operator token.

mod common;

use common::{tenant, Service, TestEnv};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_route_answers_401_404_or_serves_by_token() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("mx-a"), tenant("mx-b"));
    let token_a = env.add_tenant(&a).await;
    let token_b = env.add_tenant(&b).await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&a, &b]).await;
    let op = env.config.http.operator_token.clone();
    let forged = format!("ent_{a}.{}", "f".repeat(64));
    let quiz = json!({"submissionId": "s", "userId": "nobody", "courseId": "c", "quizId": "q",
                      "answers": [{"questionId": "x", "selected": "y", "correct": true}],
                      "score": 100, "submittedAt": "2026-11-01T00:00:00Z"});
    let routes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, format!("/api/tenants/{a}/users"), None),
        (Method::GET, format!("/api/tenants/{a}/courses"), None),
        (
            Method::POST,
            format!("/api/tenants/{a}/users/u1/sync-progress"),
            None,
        ),
        (
            Method::GET,
            format!("/api/tenants/{a}/users/u1/sync-progress"),
            None,
        ),
        (
            Method::POST,
            format!("/api/tenants/{a}/quiz-results"),
            Some(quiz),
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
            async move { req.send().await.unwrap().status().as_u16() }
        };
    let before = env
        .count("select count(*) from security_events where tenant_id = $1 and kind = 'cross_tenant_access'", &b)
        .await;
    for (method, path, body) in &routes {
        for (who, token, expect_unauth) in [
            ("none", None, Some(401)),
            ("garbage", Some("garbage"), Some(401)),
            ("forged", Some(forged.as_str()), Some(401)),
            ("other tenant", Some(token_b.as_str()), Some(404)),
        ] {
            let status = send(method.clone(), path, body.clone(), token).await;
            assert_eq!(Some(status), expect_unauth, "{method} {path} with {who}");
        }
        // Own token and operator token pass authentication (the answer is the route's own:
        // 200, or 404 for the unknown user / never-synced progress, 503 without upstream).
        for (who, token) in [("own", token_a.as_str()), ("operator", op.as_str())] {
            let status = send(method.clone(), path, body.clone(), Some(token)).await;
            assert!(
                ![401, 403].contains(&status),
                "{method} {path} with {who}: {status}"
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
    // Registration is operator-only: a tenant token is not enough.
    let reg = json!({"tenantId": common::unique("mx"), "displayName": "x"});
    assert_eq!(
        send(
            Method::POST,
            "/api/tenants",
            Some(reg.clone()),
            Some(&token_a)
        )
        .await,
        401
    );
    assert_eq!(
        send(Method::POST, "/api/tenants", Some(reg), Some(&op)).await,
        201
    );
    // Unknown routes are JSON 404s.
    assert_eq!(send(Method::GET, "/api/nope", None, Some(&op)).await, 404);
}
