//! The SCIM 2.0 provider over HTTP against the real binary, PostgreSQL, Redis and broker:
//! every filter operator, every PATCH form, ETag preconditions, every error type, groups
//! and their readiness breakdown, the tenant's own SCIM token (cross-tenant, rotation,
//! suspension), and one pipeline with Kafka events (same effects, defined order).

mod common;

use std::time::Duration;

use common::{eventually, push, read_topic, scim_event, Service, TestEnv};
use enablement::actors::{TenantId, TopicKind};
use reqwest::Method;
use serde_json::{json, Value};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A SCIM client of one tenant's provider.
struct Scim {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Scim {
    fn new(svc: &Service, t: &TenantId, token: &str) -> Self {
        Self {
            base: format!("{}/scim/v2/{t}", svc.base_url),
            token: token.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/scim+json")
                .body(b.to_string());
        }
        let resp = r.send().await.expect("request");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        if status != 204 && status != 304 {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                ct.starts_with("application/scim+json"),
                "{path}: content type {ct:?} ({status})"
            );
        }
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.call(Method::GET, path, None, &[]).await;
        (s, v)
    }

    /// The ids a filter selects.
    async fn ids(&self, filter: &str) -> Vec<String> {
        let path = format!("/Users?filter={}", urlencode(filter));
        let (s, v) = self.get(&path).await;
        assert_eq!(s, 200, "{filter}: {v}");
        let mut ids: Vec<String> = v["Resources"]
            .as_array()
            .expect("Resources")
            .iter()
            .map(|r| r["userName"].as_str().unwrap_or("").to_owned())
            .collect();
        ids.sort();
        assert_eq!(v["totalResults"].as_u64(), Some(ids.len() as u64));
        ids
    }

    async fn create_user(&self, body: Value) -> Value {
        let (s, h, v) = self.call(Method::POST, "/Users", Some(body), &[]).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(h["etag"], "W/\"1\"");
        assert!(h["location"]
            .to_str()
            .unwrap()
            .ends_with(v["id"].as_str().unwrap()));
        v
    }

    async fn patch(&self, path: &str, ops: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let body = json!({"schemas": [PATCH], "Operations": ops});
        let (s, _, v) = self.call(Method::PATCH, path, Some(body), headers).await;
        (s, v)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn user(name: &str, email: &str, dept: &str) -> Value {
    json!({
        "schemas": [USER, ENT],
        "userName": name,
        "externalId": format!("EXT-{name}"),
        "name": {"givenName": name, "familyName": "Tester"},
        "displayName": format!("{name} Tester"),
        "title": dept,
        "emails": [{"value": email, "type": "work", "primary": true},
                   {"value": format!("home-{email}"), "type": "home"}],
        "active": true,
        "password": "never-stored",
        ENT: {"department": dept, "employeeNumber": "100"}
    })
}

async fn scim_tenant(env: &TestEnv, prefix: &str) -> (TenantId, String, String) {
    env.add_scim_tenant(prefix).await
}

fn assert_error(status: u16, v: &Value, want_status: u16, scim_type: Option<&str>) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["schemas"][0], ERROR, "{v}");
    assert_eq!(v["status"], want_status.to_string(), "{v}");
    assert_eq!(v["scimType"].as_str(), scim_type, "{v}");
}

/// Users: create, read, every filter operator and form, paging, projection, every PATCH
/// form with the providers' quirks, ETags and `If-Match`, PUT, DELETE, every error type,
/// and the effects in the database (version, idempotency, outbox, readiness mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_filters_patch_etags_and_errors() {
    let env = TestEnv::new().await;
    let (t, api_token, token) = scim_tenant(&env, "scimu").await;
    let svc = Service::start_role(&env, "api", &[]);
    svc.wait_up().await;
    let scim = Scim::new(&svc, &t, &token);

    // Discovery.
    let (s, spc) = scim.get("/ServiceProviderConfig").await;
    assert_eq!((s, &spc["patch"]["supported"]), (200, &json!(true)));
    let (s, rt) = scim.get("/ResourceTypes").await;
    assert_eq!((s, rt["totalResults"].as_u64()), (200, Some(2)));
    let (s, schemas) = scim.get("/Schemas").await;
    assert_eq!((s, schemas["totalResults"].as_u64()), (200, Some(3)));
    let (s, _) = scim.get(&format!("/Schemas/{ENT}")).await;
    assert_eq!(s, 200);
    let (s, v) = scim.get("/Schemas/urn:nope").await;
    assert_error(s, &v, 404, None);

    // Authorisation: no token, the tenant's API token, garbage: 401 in the SCIM schema.
    for bad in ["", api_token.as_str(), "scim_x.00"] {
        let c = Scim::new(&svc, &t, bad);
        let (s, h, v) = c.call(Method::GET, "/Users", None, &[]).await;
        assert_error(s, &v, 401, None);
        assert!(h.contains_key("www-authenticate"));
    }

    // Create.
    let ada = scim
        .create_user(user("ada", "ada@acme.test", "Sales"))
        .await;
    let bob = scim
        .create_user(user("bob", "bob@acme.test", "Support"))
        .await;
    scim.create_user(user("Cyd.Smith", "cyd@other.test", "Sales"))
        .await;
    assert_eq!(ada["meta"]["version"], "W/\"1\"");
    assert_eq!(ada["meta"]["resourceType"], "User");
    assert!(ada["meta"]["created"].is_string() && ada["meta"]["lastModified"].is_string());
    assert!(ada["meta"]["location"]
        .as_str()
        .unwrap()
        .contains("/scim/v2/"));
    assert!(ada.get("password").is_none() && !ada.to_string().contains("never-stored"));
    let ada_id = ada["id"].as_str().unwrap().to_owned();

    // Uniqueness: userName is case-insensitive.
    let (s, _, v) = scim
        .call(
            Method::POST,
            "/Users",
            Some(user("ADA", "x@acme.test", "x")),
            &[],
        )
        .await;
    assert_error(s, &v, 409, Some("uniqueness"));

    // Every operator and form, evaluated in PostgreSQL.
    let cases: &[(&str, &[&str])] = &[
        ("userName eq \"ada\"", &["ada"]),
        ("USERNAME eq \"ADA\"", &["ada"]),
        ("userName ne \"ada\"", &["Cyd.Smith", "bob"]),
        ("userName co \"yd.s\"", &["Cyd.Smith"]),
        ("userName sw \"b\"", &["bob"]),
        ("userName ew \"SMITH\"", &["Cyd.Smith"]),
        ("title pr", &["Cyd.Smith", "ada", "bob"]),
        ("nickName pr", &[]),
        ("userName gt \"bob\"", &["Cyd.Smith"]),
        ("userName ge \"bob\"", &["Cyd.Smith", "bob"]),
        ("userName lt \"bob\"", &["ada"]),
        ("userName le \"bob\"", &["ada", "bob"]),
        ("externalId eq \"EXT-ada\"", &["ada"]),
        ("externalId eq \"ext-ada\"", &[]),
        (
            "title eq \"sales\" and not (userName eq \"ada\")",
            &["Cyd.Smith"],
        ),
        (
            "userName eq \"ada\" or userName eq \"bob\"",
            &["ada", "bob"],
        ),
        (
            "emails[type eq \"work\" and value co \"@acme\"]",
            &["ada", "bob"],
        ),
        ("emails.value ew \"other.test\"", &["Cyd.Smith"]),
        (&format!("{ENT}:department eq \"Support\""), &["bob"]),
        ("name.givenName sw \"a\"", &["ada"]),
        (
            "meta.lastModified gt \"2000-01-01T00:00:00Z\"",
            &["Cyd.Smith", "ada", "bob"],
        ),
        ("active eq true", &["Cyd.Smith", "ada", "bob"]),
    ];
    for (f, want) in cases {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(scim.ids(f).await, want, "filter {f}");
    }
    for bad in [
        "userName eq",
        "userName xx \"a\"",
        "nosuch eq \"a\"",
        "((userName eq \"a\"",
    ] {
        let (s, v) = scim.get(&format!("/Users?filter={}", urlencode(bad))).await;
        assert_error(s, &v, 400, Some("invalidFilter"));
    }

    // Paging and projection.
    let (_, page) = scim.get("/Users?startIndex=2&count=1").await;
    assert_eq!(page["totalResults"], 3);
    assert_eq!(page["startIndex"], 2);
    assert_eq!(page["itemsPerPage"], 1);
    let (_, none) = scim.get("/Users?count=0").await;
    assert_eq!(
        (none["totalResults"].as_u64(), none["itemsPerPage"].as_u64()),
        (Some(3), Some(0))
    );
    let (_, beyond) = scim.get("/Users?startIndex=10").await;
    assert_eq!(beyond["totalResults"], 3);
    let (s, v) = scim.get("/Users?count=many").await;
    assert_error(s, &v, 400, Some("invalidValue"));
    let (_, only) = scim
        .get(&format!("/Users/{ada_id}?attributes=userName,emails.value"))
        .await;
    assert_eq!(only["userName"], "ada");
    assert!(only.get("title").is_none() && only["emails"][0].get("type").is_none());
    assert!(only["id"].is_string() && only["meta"].is_object());
    let (_, except) = scim
        .get(&format!(
            "/Users/{ada_id}?excludedAttributes=emails,{ENT}:department"
        ))
        .await;
    assert!(except.get("emails").is_none());
    assert_eq!(except[ENT]["employeeNumber"], "100");
    assert!(except[ENT].get("department").is_none());

    // ETag on GET; If-None-Match.
    let (s, h, _) = scim
        .call(Method::GET, &format!("/Users/{ada_id}"), None, &[])
        .await;
    assert_eq!((s, h["etag"].to_str().unwrap()), (200, "W/\"1\""));
    let (s, _, _) = scim
        .call(
            Method::GET,
            &format!("/Users/{ada_id}"),
            None,
            &[("if-none-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(s, 304);

    // PATCH forms.
    let p = format!("/Users/{ada_id}");
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "title", "value": "Lead"}]),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(
        (s, &v["title"], &v["meta"]["version"]),
        (200, &json!("Lead"), &json!("W/\"2\""))
    );
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "title", "value": "X"}]),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_error(s, &v, 412, None);
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "add", "value": {"nickName": "Countess"}}]),
            &[],
        )
        .await;
    assert_eq!((s, &v["nickName"]), (200, &json!("Countess")));
    let (s, v) = scim
        .patch(&p, json!([{"op": "remove", "path": "nickName"}]), &[])
        .await;
    assert!(s == 200 && v.get("nickName").is_none(), "{v}");
    let (s, v) = scim
        .patch(&p, json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "ada2@acme.test"}]), &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["emails"][0]["value"], "ada2@acme.test");
    assert_eq!(v["emails"][1]["value"], "home-ada@acme.test");
    let (s, v) = scim.patch(&p, json!([{"op": "add", "path": "emails", "value": [{"value": "x@acme.test", "type": "other"}]}]), &[]).await;
    assert_eq!((s, v["emails"].as_array().unwrap().len()), (200, 3));
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "remove", "path": "emails[type eq \"other\"]"}]),
            &[],
        )
        .await;
    assert_eq!((s, v["emails"].as_array().unwrap().len()), (200, 2));
    let (s, v) = scim
        .patch(&p, json!([{"op": "Replace", "path": format!("{ENT}:manager"), "value": {"value": bob["id"]}}]), &[])
        .await;
    assert_eq!((s, &v[ENT]["manager"]["value"]), (200, &bob["id"]));
    // Entra: capitalised op, string boolean.
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
            &[],
        )
        .await;
    assert_eq!((s, &v["active"]), (200, &json!(false)));
    // Okta: replace without a path.
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "value": {"active": true}}]),
            &[],
        )
        .await;
    assert_eq!((s, &v["active"]), (200, &json!(true)));
    let version: i64 = v["meta"]["version"].as_str().unwrap()[3..]
        .trim_end_matches('"')
        .parse()
        .unwrap();
    assert!(
        version >= 9,
        "every effective PATCH is a version: {version}"
    );
    // A PATCH that changes nothing keeps the version.
    let (_, same) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "active", "value": true}]),
            &[],
        )
        .await;
    assert_eq!(same["meta"]["version"], v["meta"]["version"]);

    // PATCH errors, each with its scimType.
    let (s, v) = scim.patch(&p, json!([{"op": "remove"}]), &[]).await;
    assert_error(s, &v, 400, Some("noTarget"));
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "emails[type eq]", "value": "x"}]),
            &[],
        )
        .await;
    assert_error(s, &v, 400, Some("invalidPath"));
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "id", "value": "other"}]),
            &[],
        )
        .await;
    assert_error(s, &v, 400, Some("mutability"));
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "active", "value": "maybe"}]),
            &[],
        )
        .await;
    assert_error(s, &v, 400, Some("invalidValue"));
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "jump", "path": "title", "value": "x"}]),
            &[],
        )
        .await;
    assert_error(s, &v, 400, Some("invalidSyntax"));
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"op": "replace", "path": "title", "value": i.to_string()}))
        .collect();
    let (s, v) = scim.patch(&p, Value::Array(many), &[]).await;
    assert_error(s, &v, 400, Some("tooMany"));
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "userName", "value": "BOB"}]),
            &[],
        )
        .await;
    assert_error(s, &v, 409, Some("uniqueness"));
    let (s, _, v) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({"schemas": [USER]})),
            &[],
        )
        .await;
    assert_error(s, &v, 400, Some("invalidValue"));
    let (s, _, v) = scim
        .call(
            Method::PATCH,
            &p,
            None,
            &[("content-type", "application/scim+json")],
        )
        .await;
    assert_error(s, &v, 400, Some("invalidSyntax"));

    // PUT replaces the resource.
    let mut put = user("ada", "ada3@acme.test", "Ops");
    put["title"] = json!("Replaced");
    put.as_object_mut().unwrap().remove("displayName");
    let (s, h, v) = scim.call(Method::PUT, &p, Some(put), &[]).await;
    assert_eq!((s, &v["title"]), (200, &json!("Replaced")), "{v}");
    assert!(v.get("displayName").is_none());
    assert_eq!(
        h["etag"].to_str().unwrap(),
        v["meta"]["version"].as_str().unwrap()
    );

    // The effects are the Kafka path's: version column, idempotency rows, user_changed
    // outbox rows (one per effective change), the readiness mark.
    let version_db = env
        .count(
            "select version from users where tenant_id = $1 and user_name = 'ada'",
            &t,
        )
        .await;
    assert_eq!(
        format!("W/\"{version_db}\""),
        v["meta"]["version"].as_str().unwrap()
    );
    let changes = env
        .count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'user_changed'",
            &t,
        )
        .await;
    assert_eq!(
        changes,
        3 + version_db - 1,
        "3 creates and every later version of ada"
    );
    let http_events = env
        .count("select count(*) from processed_events where tenant_id = $1 and event_id like 'scim-http:%'", &t)
        .await;
    assert!(
        http_events >= changes,
        "every write has its idempotency record"
    );
    let marks = env
        .count(
            "select count(*) from readiness_schedule where tenant_id = $1",
            &t,
        )
        .await;
    assert_eq!(marks, 1);

    // DELETE: 204, then 404 everywhere; the row stays deactivated (history).
    let (s, _, _) = scim
        .call(Method::DELETE, &p, None, &[("if-match", "W/\"1\"")])
        .await;
    assert_eq!(s, 412);
    let (s, _, _) = scim.call(Method::DELETE, &p, None, &[]).await;
    assert_eq!(s, 204);
    let (s, v) = scim.get(&p).await;
    assert_error(s, &v, 404, None);
    let (s, _, v) = scim.call(Method::DELETE, &p, None, &[]).await;
    assert_error(s, &v, 404, None);
    let (s, v) = scim
        .patch(
            &p,
            json!([{"op": "replace", "path": "title", "value": "x"}]),
            &[],
        )
        .await;
    assert_error(s, &v, 404, None);
    assert_eq!(scim.ids("userName eq \"ada\"").await, Vec::<String>::new());
    assert_eq!(
        env.count("select count(*) from users where tenant_id = $1 and user_name = 'ada' and not active and deleted", &t).await,
        1
    );
    // The name is free again.
    scim.create_user(user("ada", "ada@acme.test", "Sales"))
        .await;

    // `.search` takes the same query as a body.
    let (s, _, v) = scim
        .call(
            Method::POST,
            "/Users/.search",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                        "filter": "userName sw \"b\"", "attributes": ["userName"], "count": 10}),
            ),
            &[],
        )
        .await;
    assert_eq!((s, v["totalResults"].as_u64()), (200, Some(1)), "{v}");
    assert!(v["Resources"][0].get("emails").is_none());
    assert!(!svc.log().contains(&token), "the token is never logged");
}

/// The tenant's SCIM token: another tenant's valid token gets 404 on this tenant's path
/// and a security event; a suspended tenant gets 403; a rotated token stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_tokens_are_per_tenant_and_rotatable() {
    let env = TestEnv::new().await;
    let (a, _, a_token) = scim_tenant(&env, "scima").await;
    let (b, _, b_token) = scim_tenant(&env, "scimb").await;
    let svc = Service::start_role(&env, "api", &[]);
    svc.wait_up().await;
    let on_a = Scim::new(&svc, &a, &a_token);
    let a_user = on_a.create_user(user("ann", "ann@a.test", "Sales")).await;

    // B's token on A's path: 404, recorded as B's security event; A's user never shown.
    let b_on_a = Scim::new(&svc, &a, &b_token);
    let (s, v) = b_on_a
        .get(&format!("/Users/{}", a_user["id"].as_str().unwrap()))
        .await;
    assert_error(s, &v, 404, None);
    let (s, _, _) = b_on_a
        .call(
            Method::POST,
            "/Users",
            Some(user("evil", "e@b.test", "x")),
            &[],
        )
        .await;
    assert_eq!(s, 404);
    assert!(env.count("select count(*) from security_events where tenant_id = $1 and kind = 'cross_tenant_access'", &b).await >= 1);
    // B's own path: A's user id is not found there.
    let on_b = Scim::new(&svc, &b, &b_token);
    let (s, _) = on_b
        .get(&format!("/Users/{}", a_user["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 404);
    let (_, list) = on_b.get("/Users").await;
    assert_eq!(list["totalResults"], 0);
    // An invalid tenant id in the path.
    let bad = Scim::new(&svc, &TenantId::parse("x").unwrap(), &a_token);
    let (s, v) = bad.get("/Users").await;
    assert_error(s, &v, 404, None);

    // Rotation: the new token works at once; the old one within the cache's lifetime.
    let new_token = enablement::tenants::rotate_scim_token(&env.store().await, &a)
        .await
        .expect("rotate");
    let (s, _) = Scim::new(&svc, &a, &new_token).get("/Users").await;
    assert_eq!(s, 200);
    eventually(
        "old SCIM token refused",
        Duration::from_secs(15),
        || async {
            let (s, _) = on_a.get("/Users").await;
            (s == 401).then_some(())
        },
    )
    .await;

    // Suspension: 403 (after the verified-token cache's lifetime).
    let registry = enablement::db::Registry::new(env.app_pool().await);
    registry.set_status(&b, "suspended").await.expect("suspend");
    eventually(
        "suspended tenant refused",
        Duration::from_secs(15),
        || async {
            let (s, v) = on_b.get("/Users").await;
            (s == 403 && v["schemas"][0] == ERROR).then_some(())
        },
    )
    .await;
}

/// Groups: create with members, filters, `excludedAttributes=members`, PATCH adding and
/// removing thousands of members at once (Entra's and Okta's forms), a value-filter
/// remove, ETags, unknown members refused, displayName unique, DELETE; `group_changed` in
/// the outbox; the readiness report's breakdown per group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_members_and_the_readiness_breakdown() {
    let env = TestEnv::new().await;
    let (t, api_token, token) = scim_tenant(&env, "scimg").await;
    let svc = Service::start_role(&env, "api", &[]);
    svc.wait_up().await;
    let scim = Scim::new(&svc, &t, &token);
    let a = scim
        .create_user(user("ann", "ann@acme.test", "Sales"))
        .await;
    let b = scim
        .create_user(user("ben", "ben@acme.test", "Sales"))
        .await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    let (s, h, g) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(
                json!({"schemas": [GROUP], "displayName": "Sales EMEA", "externalId": "okta-1",
                        "members": [{"value": a_id}]}),
            ),
            &[],
        )
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(h["etag"], "W/\"1\"");
    assert_eq!(g["members"][0]["value"], a_id);
    assert_eq!(g["members"][0]["display"], "ann");
    let gid = g["id"].as_str().unwrap().to_owned();
    let gp = format!("/Groups/{gid}");
    let (s, _, v) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({"schemas": [GROUP], "displayName": "sales emea"})),
            &[],
        )
        .await;
    assert_error(s, &v, 409, Some("uniqueness"));
    let (s, _, v) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(
                json!({"schemas": [GROUP], "displayName": "G2", "members": [{"value": "g1", "type": "Group"}]}),
            ),
            &[],
        )
        .await;
    assert_error(s, &v, 400, Some("invalidValue"));

    // Filters and projection.
    let (_, l) = scim
        .get(&format!(
            "/Groups?filter={}&excludedAttributes=members",
            urlencode("displayName eq \"sales emea\"")
        ))
        .await;
    assert_eq!(l["totalResults"], 1);
    assert!(l["Resources"][0].get("members").is_none());
    let (_, l) = scim
        .get(&format!(
            "/Groups?filter={}",
            urlencode(&format!("members[value eq \"{a_id}\"]"))
        ))
        .await;
    assert_eq!(l["totalResults"], 1);
    let (_, l) = scim
        .get(&format!(
            "/Groups?filter={}",
            urlencode("externalId eq \"okta-1\"")
        ))
        .await;
    assert_eq!(l["totalResults"], 1);
    // The user shows its group.
    let (_, u) = scim.get(&format!("/Users/{a_id}")).await;
    assert_eq!(u["groups"][0]["value"], gid);
    // A write is answered with the user as stored, groups and `meta` included: the
    // answer is what a GET after it serves.
    let (s, patched) = scim
        .patch(
            &format!("/Users/{a_id}"),
            json!([{"op": "replace", "path": "title", "value": "Grouped"}]),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["groups"][0]["value"], gid);
    assert_eq!(patched["groups"][0]["display"], "Sales EMEA");
    let (_, after) = scim.get(&format!("/Users/{a_id}")).await;
    assert_eq!(patched, after);
    assert_ne!(patched["meta"]["lastModified"], u["meta"]["lastModified"]);

    // Thousands of members in one PATCH (Entra's form: op capitalised), then removed.
    let mut many = Vec::new();
    for i in 0..2000 {
        many.push(format!("bulk-{i}"));
    }
    let store = env.store().await;
    // The 2,000 users arrive as one Kafka-path batch would store them: through the same
    // unit of work, quickly, without 2,000 HTTP round trips.
    let events: Vec<_> = many
        .iter()
        .map(|id| {
            enablement::actors::scim::parse_event(
                &t,
                scim_event(
                    t.as_str(),
                    &format!("e-{id}"),
                    "CREATE",
                    id,
                    1,
                    &format!("{id}@acme.test"),
                )
                .as_bytes(),
                enablement::actors::scim::ParseLimits::at(
                    time::OffsetDateTime::now_utc(),
                    65536,
                    Duration::from_secs(3600),
                ),
            )
            .expect("event")
        })
        .collect();
    use enablement::actors::ports::TenantStore;
    store
        .apply_scim_batch(
            &t,
            enablement::actors::ports::ScimBatch {
                events,
                delete_policy: Default::default(),
                security_events: vec![],
                dead_letters: vec![],
            },
            0,
        )
        .await
        .expect("bulk users");
    let values: Vec<Value> = many.iter().map(|id| json!({"value": id})).collect();
    let (s, v) = scim
        .patch(
            &gp,
            json!([{"op": "Add", "path": "members", "value": values}]),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["members"].as_array().unwrap().len(), 2001);
    let (s, v) = scim
        .patch(
            &gp,
            json!([{"op": "add", "path": "members", "value": values}]),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_error(s, &v, 412, None);
    let remove: Vec<Value> = many[..1500].iter().map(|id| json!({"value": id})).collect();
    let (s, v) = scim
        .patch(
            &gp,
            json!([{"op": "Remove", "path": "members", "value": remove}]),
            &[],
        )
        .await;
    assert_eq!((s, v["members"].as_array().unwrap().len()), (200, 501));
    // Okta's form: remove by value filter, add with replace of displayName.
    let (s, v) = scim
        .patch(
            &gp,
            json!([{"op": "remove", "path": format!("members[value eq \"{a_id}\"]")},
                          {"op": "add", "path": "members", "value": [{"value": b_id}]},
                          {"op": "replace", "value": {"displayName": "Sales Europe"}}]),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["displayName"], "Sales Europe");
    assert_eq!(
        env.count(
            "select count(*) from scim_group_members where tenant_id = $1",
            &t
        )
        .await,
        501
    );
    let announced = env
        .count("select count(*) from outbox where tenant_id = $1 and topic = 'events' and payload->>'type' = 'group_changed'", &t)
        .await;
    assert_eq!(announced, 4);

    // The readiness report has a breakdown per group.
    let second = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({"schemas": [GROUP], "displayName": "Empty"})),
            &[],
        )
        .await;
    assert_eq!(second.0, 201);
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/tenants/{t}/readiness/aggregate",
            svc.base_url
        ))
        .bearer_auth(&api_token)
        .send()
        .await
        .expect("aggregate");
    assert!(r.status().is_success(), "{}", r.status());
    let report: Value = r.json().await.expect("report");
    let by_group = report["byGroup"].as_array().expect("byGroup");
    assert_eq!(by_group.len(), 2, "{report}");
    let europe = by_group
        .iter()
        .find(|g| g["displayName"] == "Sales Europe")
        .unwrap();
    assert_eq!(europe["members"], 501);
    let empty = by_group
        .iter()
        .find(|g| g["displayName"] == "Empty")
        .unwrap();
    assert_eq!(empty["members"], 0);

    // DELETE: 204, then 404; members gone; the users stay.
    let (s, _, _) = scim.call(Method::DELETE, &gp, None, &[]).await;
    assert_eq!(s, 204);
    let (s, v) = scim.get(&gp).await;
    assert_error(s, &v, 404, None);
    assert_eq!(
        env.count(
            "select count(*) from scim_group_members where tenant_id = $1",
            &t
        )
        .await,
        0
    );
    let (_, u) = scim.get(&format!("/Users/{b_id}")).await;
    assert!(u.get("groups").is_none());
}

/// One pipeline: a SCIM write over HTTP and a Kafka event have the same effects and a
/// defined order. An HTTP create is announced on `user_changed` by the tenant's relay; a
/// Kafka UPDATE older than the HTTP write is stale, a newer one applies and the provider
/// serves it; a Kafka DELETE makes the provider answer 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_writes_and_kafka_events_share_one_pipeline() {
    let env = TestEnv::new().await;
    let (t, _, token) = scim_tenant(&env, "scimk").await;
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&t]).await;
    let scim = Scim::new(&svc, &t, &token);
    let created = scim
        .create_user(user("kim", "kim@acme.test", "Sales"))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    // The tenant's owner relays the HTTP write's outbox row to Kafka.
    let record = eventually("user_changed relayed", Duration::from_secs(30), || async {
        read_topic(&env.config, &t, TopicKind::UserChanged)
            .await
            .into_iter()
            .map(|r| r["payload"].clone())
            .find(|r| r["userId"] == id.as_str())
    })
    .await;
    assert_eq!(record["operation"], "CREATE");
    assert_eq!(record["version"], 1);

    // A Kafka event older than the HTTP write: stale, nothing changes.
    let before = env.processed(&t).await;
    push(
        &env.config,
        &t,
        &[scim_event(
            t.as_str(),
            "k-old",
            "UPDATE",
            &id,
            1,
            "old@acme.test",
        )],
    )
    .await;
    eventually("old event processed", Duration::from_secs(30), || async {
        (env.processed(&t).await > before).then_some(())
    })
    .await;
    let (_, v) = scim.get(&format!("/Users/{id}")).await;
    assert_eq!(v["meta"]["version"], "W/\"1\"");

    // A newer Kafka event applies; the provider serves it with the next version.
    let mut newer: Value = serde_json::from_str(&scim_event(
        t.as_str(),
        "k-new",
        "UPDATE",
        &id,
        1,
        "new@acme.test",
    ))
    .unwrap();
    newer["occurredAt"] = json!(time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap());
    push(&env.config, &t, &[newer.to_string()]).await;
    let v = eventually("kafka update served", Duration::from_secs(30), || async {
        let (_, v) = scim.get(&format!("/Users/{id}")).await;
        (v["meta"]["version"] == "W/\"2\"").then_some(v)
    })
    .await;
    assert_eq!(v["emails"][0]["value"], "new@acme.test");
    // An HTTP PATCH lands on top of it (version 3), whatever the Kafka event's clock.
    let (s, v) = scim
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "title", "value": "After"}]),
            &[("if-match", "W/\"2\"")],
        )
        .await;
    assert_eq!((s, &v["meta"]["version"]), (200, &json!("W/\"3\"")));

    // A Kafka DELETE: the provider no longer serves the user.
    let mut del: Value = serde_json::from_str(&scim_event(
        t.as_str(),
        "k-del",
        "DELETE",
        &id,
        1,
        "new@acme.test",
    ))
    .unwrap();
    del["occurredAt"] = json!(
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(1))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    push(&env.config, &t, &[del.to_string()]).await;
    eventually("kafka delete served", Duration::from_secs(30), || async {
        let (s, _) = scim.get(&format!("/Users/{id}")).await;
        (s == 404).then_some(())
    })
    .await;
}

/// What a client was told is what is stored: concurrent creates, the service SIGKILLed in
/// the middle; after a restart every user answered 201 is served (a 2xx is durable), none
/// is served twice. Hostile bodies get SCIM errors, never a 5xx or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_and_hostile_bodies_get_scim_errors() {
    let env = TestEnv::new().await;
    let (t, _, token) = scim_tenant(&env, "scimx").await;
    let mut svc = Service::start_role(&env, "api", &[]);
    svc.wait_up().await;
    let base = format!("{}/scim/v2/{t}", svc.base_url);

    // Hostile bodies and parameters.
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        client
            .post(format!("{base}/Users"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(body)
            .send()
    };
    let r = post(b"{not json".to_vec()).await.expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.expect("SCIM error body");
    assert_eq!(v["scimType"], "invalidSyntax");
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = post(deep.into_bytes()).await.expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let huge = vec![b' '; 2 * 1024 * 1024];
    let r = post(huge).await.expect("post");
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.expect("413 body");
    assert_eq!(v["schemas"][0], ERROR);
    let scim = Scim::new(&svc, &t, &token);
    let long = format!("userName eq \"{}\"", "x".repeat(5000));
    let (s, v) = scim
        .get(&format!("/Users?filter={}", urlencode(&long)))
        .await;
    assert_error(s, &v, 400, Some("invalidFilter"));
    let (s, _, v) = scim.call(Method::GET, "/Nothing/here", None, &[]).await;
    assert_error(s, &v, 404, None);

    // Concurrent creates; SIGKILL once some were answered.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        tasks.spawn(async move {
            let body = user(&format!("k{i}"), &format!("k{i}@acme.test"), "Sales");
            let r = client
                .post(format!("{base}/Users"))
                .bearer_auth(&token)
                .header("content-type", "application/scim+json")
                .body(body.to_string())
                .send()
                .await
                .ok()?;
            if r.status().as_u16() != 201 {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            v["id"].as_str().map(str::to_owned)
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(id) = r.expect("task") {
            acknowledged.push(id);
        }
        if acknowledged.len() == 10 {
            svc.kill();
        }
    }
    assert!(
        acknowledged.len() >= 10,
        "{} answered before the kill",
        acknowledged.len()
    );
    let svc = Service::start_role(&env, "api", &[]);
    svc.wait_up().await;
    let scim = Scim::new(&svc, &t, &token);
    for id in &acknowledged {
        let (s, v) = scim.get(&format!("/Users/{id}")).await;
        assert_eq!(s, 200, "acknowledged user {id} lost: {v}");
    }
    let (_, all) = scim.get("/Users?count=1000").await;
    let stored = all["totalResults"].as_u64().unwrap_or(0) as usize;
    assert!(
        stored >= acknowledged.len() && stored <= 60,
        "{stored} stored"
    );
}

/// What a concurrent write is answered is its own outcome, though a tenant's concurrent
/// writes share a transaction (decided together, folded into one unit of work): every
/// change committed once, in the outbox once, answered with its own result and version; a
/// stale `If-Match`, a taken `userName` (also between two creates in flight together, and
/// a rename onto an existing user) and an unknown id refused without touching the others;
/// two writes of one user both applied, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_transactions_and_each_is_answered_for_itself() {
    let env = TestEnv::new().await;
    let (t, _, token) = scim_tenant(&env, "scimfold").await;
    let svc = Service::start_role(
        &env,
        "api",
        &[
            // All of the writes below in progress at once from this one address.
            (
                "ENABLEMENT__HTTP__MAX_CONCURRENT_REQUESTS_PER_CLIENT",
                "100",
            ),
            ("ENABLEMENT__HTTP__AUTH_FAILURES_PER_MIN", "3"),
        ],
    );
    svc.wait_up().await;
    let scim = std::sync::Arc::new(Scim::new(&svc, &t, &token));
    let mut ids = Vec::new();
    for i in 0..30 {
        let v = scim
            .create_user(user(&format!("f{i}"), &format!("f{i}@acme.test"), "Sales"))
            .await;
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    let replace = |path: &str, value: &str| json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": path, "value": value}]});
    // (what, method, path, body, If-Match, expected status)
    type Planned = (
        String,
        Method,
        String,
        Option<Value>,
        Option<&'static str>,
        u16,
    );
    let mut writes: Vec<Planned> = Vec::new();
    for (i, id) in ids.iter().enumerate().take(29) {
        let body = replace("title", &format!("wave-{i}"));
        writes.push((
            format!("title {i}"),
            Method::PATCH,
            format!("/Users/{id}"),
            Some(body),
            None,
            200,
        ));
    }
    for (i, id) in ids.iter().enumerate().take(5) {
        let body = replace("displayName", &format!("second-{i}"));
        writes.push((
            format!("second {i}"),
            Method::PATCH,
            format!("/Users/{id}"),
            Some(body),
            None,
            200,
        ));
    }
    for (i, id) in ids.iter().enumerate().skip(10).take(5) {
        let body = replace("title", "stale");
        writes.push((
            format!("stale {i}"),
            Method::PATCH,
            format!("/Users/{id}"),
            Some(body),
            Some("W/\"99\""),
            412,
        ));
    }
    let rename = replace("userName", "F21");
    writes.push((
        "rename onto f21".into(),
        Method::PATCH,
        format!("/Users/{}", ids[20]),
        Some(rename),
        None,
        409,
    ));
    let unknown = replace("title", "x");
    writes.push((
        "unknown".into(),
        Method::PATCH,
        "/Users/no-such-id".into(),
        Some(unknown),
        None,
        404,
    ));
    writes.push((
        "delete 29".into(),
        Method::DELETE,
        format!("/Users/{}", ids[29]),
        None,
        None,
        204,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (what, method, path, body, if_match, want) in writes {
        let scim = scim.clone();
        tasks.spawn(async move {
            let headers: Vec<(&str, &str)> = if_match.iter().map(|m| ("if-match", *m)).collect();
            let (s, h, v) = scim.call(method, &path, body, &headers).await;
            (what, want, s, h, v)
        });
    }
    for twin in 0..2 {
        let scim = scim.clone();
        tasks.spawn(async move {
            let body = user("twin", &format!("twin{twin}@acme.test"), "Sales");
            let (s, h, v) = scim.call(Method::POST, "/Users", Some(body), &[]).await;
            (format!("twin {twin}"), 0, s, h, v)
        });
    }
    let mut twins = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (what, want, s, h, v) = r.expect("task");
        if what.starts_with("twin") {
            twins.push(s);
            if s == 409 {
                assert_error(s, &v, 409, Some("uniqueness"));
            }
            continue;
        }
        assert_eq!(s, want, "{what}: {v}");
        match s {
            200 => {
                // The answer is this write's own result at its own version.
                let etag = h["etag"].to_str().expect("etag");
                assert_eq!(v["meta"]["version"], etag, "{what}");
                let i: usize = what
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("index");
                if what.starts_with("title") {
                    assert_eq!(v["title"], format!("wave-{i}"), "{what}: {v}");
                } else {
                    assert_eq!(v["displayName"], format!("second-{i}"), "{what}: {v}");
                }
            }
            409 => assert_error(s, &v, 409, Some("uniqueness")),
            412 | 404 => assert_eq!(v["schemas"][0], ERROR, "{what}: {v}"),
            _ => {}
        }
    }
    twins.sort_unstable();
    assert_eq!(twins, vec![201, 409], "one of two creates of one userName");
    // Both writes of users 0..4 applied, one after the other.
    for (i, id) in ids.iter().enumerate().take(29) {
        let (s, v) = scim.get(&format!("/Users/{id}")).await;
        assert_eq!(s, 200);
        assert_eq!(v["title"], format!("wave-{i}"), "{v}");
        assert_eq!(v["userName"], format!("f{i}"), "{v}");
        let version = if i < 5 { "W/\"3\"" } else { "W/\"2\"" };
        assert_eq!(v["meta"]["version"], version, "{v}");
        if i < 5 {
            assert_eq!(v["displayName"], format!("second-{i}"), "{v}");
        }
    }
    let (s, _) = scim.get(&format!("/Users/{}", ids[29])).await;
    assert_eq!(s, 404, "deleted");
    // Once in the outbox each: 30 + 1 creates, 29 + 5 changes, 1 delete.
    assert_eq!(
        env.count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'user_changed'",
            &t
        )
        .await,
        66
    );
    assert_eq!(env.processed(&t).await, 66);

    // A client that spends its authentication budget is refused on the SCIM paths in the
    // SCIM error schema too, with Retry-After.
    let wrong = Scim::new(&svc, &t, &format!("scim_{t}.{}", "0".repeat(64)));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, h, v) = wrong.call(Method::GET, "/Users", None, &[]).await;
        assert_eq!(v["schemas"][0], ERROR, "{s}: {v}");
        if s == 429 {
            assert_eq!(v["status"], "429", "{v}");
            assert!(h.contains_key("retry-after"));
        }
        statuses.push(s);
    }
    assert_eq!(statuses, vec![401, 401, 401, 429, 429]);
}

/// A write the database refuses inside a shared transaction fails alone: the fold of the
/// batch is rolled back and its writes retried one by one, so the others commit and are
/// answered 200, the refused one gets a SCIM 503 and leaves nothing behind. (The refusal is
/// a constraint this test adds to its own database: the provider's validation lets the
/// value through, PostgreSQL does not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_database_refuses_fails_alone_in_a_shared_transaction() {
    let env = TestEnv::new().await;
    let (t, _, token) = scim_tenant(&env, "scimpoison").await;
    let svc = Service::start_role(
        &env,
        "api",
        &[(
            "ENABLEMENT__HTTP__MAX_CONCURRENT_REQUESTS_PER_CLIENT",
            "100",
        )],
    );
    svc.wait_up().await;
    let scim = std::sync::Arc::new(Scim::new(&svc, &t, &token));
    let mut ids = Vec::new();
    for i in 0..24 {
        let v = scim
            .create_user(user(&format!("p{i}"), &format!("p{i}@acme.test"), "Sales"))
            .await;
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    env.owner
        .batch_execute(
            "alter table users add constraint test_poison check (scim->>'title' is distinct from 'poison')",
        )
        .await
        .expect("constraint");
    let outbox_before = env
        .count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'user_changed'",
            &t,
        )
        .await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let scim = scim.clone();
        let path = format!("/Users/{id}");
        let title = if i % 8 == 3 {
            "poison".to_owned()
        } else {
            format!("ok-{i}")
        };
        tasks.spawn(async move {
            let body = json!({"schemas": [PATCH], "Operations": [
                {"op": "replace", "path": "title", "value": title}]});
            let (s, _, v) = scim.call(Method::PATCH, &path, Some(body), &[]).await;
            (i, s, v)
        });
    }
    let mut poisoned = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, s, v) = r.expect("task");
        if i % 8 == 3 {
            poisoned += 1;
            assert_error(s, &v, 503, None);
        } else {
            assert_eq!(s, 200, "write {i}: {v}");
            assert_eq!(v["title"], format!("ok-{i}"));
        }
    }
    assert_eq!(poisoned, 3);
    for (i, id) in ids.iter().enumerate() {
        let (_, v) = scim.get(&format!("/Users/{id}")).await;
        let want = if i % 8 == 3 {
            "Sales".to_owned()
        } else {
            format!("ok-{i}")
        };
        assert_eq!(v["title"], want, "{v}");
    }
    assert_eq!(
        env.count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'user_changed'",
            &t
        )
        .await,
        outbox_before + 21
    );
    // The refusal is logged without the row it refused (no resource, no e-mail).
    let log = svc.log();
    assert!(log.contains("test_poison"), "the refusal is logged");
    assert!(
        !log.contains("acme.test") && !log.contains("Failing row"),
        "{log}"
    );
}
