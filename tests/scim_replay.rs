//! Recorded provisioning sequences of Okta and Microsoft Entra ID, replayed against the real
//! binary (PostgreSQL, Redis, broker): create, find by `userName eq`, patch, deactivate,
//! group push, in the order and the exact shapes those vendors document
//! (`tests/fixtures/scim/{okta,entra}.json`, each naming its source). Each step checks the
//! status and the answer; ids are captured from answers and substituted into later steps.
//! Then the database shows the same effects the Kafka path has.

mod common;

use std::collections::HashMap;

use common::{Service, TestEnv};
use serde_json::Value;

/// Replaces `${name}` in every string of `v`.
fn substitute(v: &Value, vars: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let mut out = s.clone();
            for (k, val) in vars {
                out = out.replace(&format!("${{{k}}}"), val);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| substitute(i, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A JSON pointer whose tokens may hold `:` and `/`-free URNs (`/urn:...:User/manager`).
fn at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    v.pointer(pointer)
}

async fn replay(fixture: &str) -> (TestEnv, enablement::actors::TenantId) {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/scim/{fixture}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let script: Value = serde_json::from_str(&text).expect("fixture JSON");
    let env = TestEnv::new().await;
    let (t, _, token) = env.add_scim_tenant(fixture).await;
    let svc = Service::start_role(&env, "api", &[]);
    svc.wait_up().await;
    let client = reqwest::Client::new();
    let base = format!("{}/scim/v2/{t}", svc.base_url);
    let mut vars: HashMap<String, String> = HashMap::new();
    for step in script["steps"].as_array().expect("steps") {
        let step = substitute(step, &vars);
        let name = step["name"].as_str().unwrap_or("?");
        let method = reqwest::Method::from_bytes(step["method"].as_str().unwrap().as_bytes())
            .expect("method");
        let mut req = client
            .request(method, format!("{base}{}", step["path"].as_str().unwrap()))
            .bearer_auth(&token);
        if let Some(body) = step.get("body") {
            req = req
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            Some(status as u64),
            step["status"].as_u64(),
            "{fixture}: {name}: {answer}"
        );
        if let Some(expect) = step.get("expect").and_then(Value::as_object) {
            for (pointer, want) in expect {
                assert_eq!(
                    at(&answer, pointer),
                    Some(want),
                    "{fixture}: {name}: {pointer} in {answer}"
                );
            }
        }
        for pointer in step["absent"].as_array().into_iter().flatten() {
            let p = pointer.as_str().unwrap();
            assert!(
                at(&answer, p).is_none(),
                "{fixture}: {name}: {p} present in {answer}"
            );
        }
        if let Some(capture) = step.get("capture").and_then(Value::as_object) {
            for (var, pointer) in capture {
                let v = at(&answer, pointer.as_str().unwrap())
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{fixture}: {name}: nothing at {pointer}"));
                vars.insert(var.clone(), v.to_owned());
            }
        }
    }
    (env, t)
}

/// Okta: import (none found), create, find, PUT profile update, deactivate and reactivate
/// by path-less replace, group push (create, rename with the id in the value, add and
/// remove the member, delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_provisioning_sequence() {
    let (env, t) = replay("okta").await;
    // The Kafka path's effects: one users row at its version, active again; a
    // `user_changed` per effective change (create, update, deactivate, reactivate); the
    // group's changes announced; the group and its members gone.
    let version = env
        .count(
            "select version from users where tenant_id = $1 and user_name = 'isabell.provisioning@example.com' and active",
            &t,
        )
        .await;
    assert_eq!(version, 4);
    assert_eq!(
        env.count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'user_changed'",
            &t
        )
        .await,
        4
    );
    assert_eq!(
        env.count(
            "select count(*) from outbox where tenant_id = $1 and payload->>'type' = 'group_changed'",
            &t
        )
        .await,
        5
    );
    assert_eq!(
        env.count("select count(*) from scim_groups where tenant_id = $1", &t)
            .await,
        0
    );
}

/// Entra: find (none), create (with a manager), uniqueness, find by `userName eq`, PATCH of
/// multi- and single-valued attributes, the manager as an array, rename, disable with a
/// string boolean, group operations with `excludedAttributes=members`, members added and
/// removed by value, user and group deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_provisioning_sequence() {
    let (env, t) = replay("entra").await;
    // The deleted user: deactivated, marked deleted, its manager kept (history); the
    // manager is a `manager` by role.
    assert_eq!(
        env.count(
            "select count(*) from users where tenant_id = $1 and not active and deleted
                and manager_id is not null and user_name like '5b50642d-%'",
            &t
        )
        .await,
        1
    );
    assert_eq!(
        env.count(
            "select count(*) from users where tenant_id = $1 and role = 'manager' and active",
            &t
        )
        .await,
        1
    );
    // Two creates, four effective PATCHes, the delete.
    assert_eq!(
        env.count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'user_changed'",
            &t
        )
        .await,
        7
    );
}
