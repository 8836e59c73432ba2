//! `mindtickle-sim`: a simulator of the MindTickle REST API used by the quick start, the
//! tests and the benchmarks.
//!
//! It serves the endpoints the service uses (see the README's "Upstream contract") with
//! deterministic data per organisation, enforces the platform's per-organisation limits
//! (60 requests/min sustained, a burst of 4) by answering 429 with `Retry-After`, expires
//! bearer tokens after an hour of simulated time (`--clock-speed` runs that clock faster),
//! injects faults (latency, 5xx rate, forced 429 windows) by flag or admin call, and counts
//! per organisation every request served and every limit violation so tests can assert zero.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use enablement::actors::TenantId;

/// Simulator settings (command-line flags of `mindtickle-sim`).
#[derive(Debug, Clone)]
pub struct SimSettings {
    pub listen: SocketAddr,
    /// Sustained requests per minute per organisation.
    pub rate_per_min: u32,
    /// Burst per organisation (the platform's ~4 requests/s).
    pub burst: u32,
    /// Token lifetime in simulated time.
    pub token_ttl: Duration,
    /// Simulated seconds per real second (token expiry only).
    pub clock_speed: f64,
    pub faults: Faults,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4010)),
            rate_per_min: 60,
            burst: 4,
            token_ttl: Duration::from_secs(3600),
            clock_speed: 1.0,
            faults: Faults::default(),
        }
    }
}

/// Injected faults, global or per organisation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Fraction (0..1) of requests answered 503.
    pub error_rate: f64,
    /// Answer every request with 429 for this long from now.
    pub force_429_for_ms: u64,
    /// `Retry-After` seconds sent with forced 429s.
    pub retry_after_s: u64,
}

type OrgLimiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
>;

#[derive(Debug, Default, Clone, Serialize)]
pub struct OrgStats {
    /// Requests answered normally.
    pub served: u64,
    /// Requests beyond the organisation's quota (answered 429): should stay 0.
    pub limit_violations: u64,
    /// Requests answered 429 because of an injected storm (not the client's fault).
    pub forced_429: u64,
    /// Requests answered 503 by fault injection.
    pub injected_errors: u64,
    /// Requests refused for an expired or unknown token.
    pub unauthorized: u64,
    pub tokens_issued: u64,
}

struct SimState {
    settings: SimSettings,
    started: Instant,
    limiter: OrgLimiter,
    stats: Mutex<HashMap<String, OrgStats>>,
    /// token -> (org, expiry in simulated seconds since start)
    tokens: Mutex<HashMap<String, (String, f64)>>,
    faults: Mutex<(Faults, HashMap<String, Faults>)>,
    /// org -> forced 429 window end
    storms: Mutex<HashMap<String, Instant>>,
    global_storm: Mutex<Option<Instant>>,
    counter: Mutex<u64>,
    /// Users created or changed through the API, per org.
    pushed: Mutex<HashMap<String, HashMap<String, Value>>>,
}

impl SimState {
    fn sim_now(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * self.settings.clock_speed
    }

    fn stat(&self, org: &str, f: impl FnOnce(&mut OrgStats)) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(s.entry(org.to_owned()).or_default());
    }

    fn faults_for(&self, org: &str) -> Faults {
        let f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        f.1.get(org).cloned().unwrap_or_else(|| f.0.clone())
    }
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Builds the simulator's router (also used in-process by tests).
pub fn router(settings: SimSettings) -> Router {
    let quota =
        Quota::per_minute(NonZeroU32::new(settings.rate_per_min.max(1)).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(settings.burst.max(1)).unwrap_or(NonZeroU32::MIN));
    let state = Arc::new(SimState {
        limiter: RateLimiter::keyed(quota),
        started: Instant::now(),
        stats: Mutex::default(),
        tokens: Mutex::default(),
        faults: Mutex::new((settings.faults.clone(), HashMap::new())),
        storms: Mutex::default(),
        global_storm: Mutex::new(
            (settings.faults.force_429_for_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(settings.faults.force_429_for_ms)),
        ),
        counter: Mutex::new(0),
        pushed: Mutex::default(),
        settings,
    });
    Router::new()
        .route("/oauth/token", post(token))
        .route("/v2/users", get(list_users).post(create_user))
        .route("/v2/users/{user_id}", put(update_user))
        .route("/v2/users/{user_id}/deactivate", post(deactivate_user))
        .route("/v2/users/{user_id}/courses", get(user_courses))
        .route("/v2/courses", get(catalog))
        .route("/admin/stats", get(stats))
        .route("/admin/faults", post(set_faults))
        .with_state(state)
}

pub async fn run(settings: SimSettings) -> std::io::Result<()> {
    run_with_tls(settings, None).await
}

/// [`run`], over HTTPS when given `(certificate PEM, key PEM)`.
pub async fn run_with_tls(
    settings: SimSettings,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(listen = %settings.listen, tls = tls.is_some(), "mindtickle simulator listening");
    let app = router(settings);
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(enablement::signal::shutdown_signal())
                .await
        }
        Some((cert, key)) => {
            let tls = crate::tls_listener::TlsListener::new(listener, &cert, &key)?;
            axum::serve(tls, app)
                .with_graceful_shutdown(enablement::signal::shutdown_signal())
                .await
        }
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    client_id: String,
    client_secret: String,
}

/// The development credential of an organisation: `sim-<org>`.
pub fn dev_secret(org: &str) -> String {
    format!("sim-{org}")
}

async fn token(State(s): State<Arc<SimState>>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<TokenRequest>(&body) else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id and client_secret required",
        );
    };
    if TenantId::parse(&req.client_id).is_err() || req.client_secret != dev_secret(&req.client_id) {
        return err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    let n = {
        let mut c = s.counter.lock().unwrap_or_else(|p| p.into_inner());
        *c += 1;
        *c
    };
    let token = format!(
        "simtok-{}-{n}-{}",
        req.client_id,
        s.started.elapsed().as_nanos()
    );
    let ttl = s.settings.token_ttl.as_secs_f64();
    s.tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone(), (req.client_id.clone(), s.sim_now() + ttl));
    s.stat(&req.client_id, |st| st.tokens_issued += 1);
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl as u64}))
        .into_response()
}

/// Authenticates, applies faults and the organisation's quota. Returns the org on success.
async fn admit(s: &SimState, headers: &HeaderMap) -> Result<String, Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let org = {
        let tokens = s.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(token) {
            Some((org, exp)) if *exp > s.sim_now() => Ok(org.clone()),
            Some((org, _)) => Err(Some(org.clone())),
            None => Err(None),
        }
    };
    let org = match org {
        Ok(o) => o,
        Err(org) => {
            if let Some(o) = org {
                s.stat(&o, |st| st.unauthorized += 1);
            }
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "token expired or unknown",
            ));
        }
    };
    let faults = s.faults_for(&org);
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let storm_until = {
        let storms = s.storms.lock().unwrap_or_else(|p| p.into_inner());
        storms
            .get(&org)
            .copied()
            .or(*s.global_storm.lock().unwrap_or_else(|p| p.into_inner()))
    };
    if storm_until.is_some_and(|t| Instant::now() < t) {
        s.stat(&org, |st| st.forced_429 += 1);
        let retry = faults.retry_after_s.max(1);
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry.to_string())],
            Json(json!({"error": {"code": "rate_limited", "message": "injected 429 storm"}})),
        )
            .into_response());
    }
    if let Err(not_until) = s.limiter.check_key(&org) {
        s.stat(&org, |st| st.limit_violations += 1);
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let retry = wait.as_secs().max(1);
        return Err((StatusCode::TOO_MANY_REQUESTS, [("retry-after", retry.to_string())],
            Json(json!({"error": {"code": "rate_limited", "message": "organisation quota exceeded"}}))).into_response());
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        s.stat(&org, |st| st.injected_errors += 1);
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "injected failure",
        ));
    }
    s.stat(&org, |st| st.served += 1);
    Ok(org)
}

fn h(parts: &[&str]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

const COURSES: [&str; 6] = [
    "Discovery Calls",
    "Objection Handling",
    "Product Fundamentals",
    "Negotiation",
    "Pipeline Hygiene",
    "Demo Mastery",
];

fn course_list() -> Vec<Value> {
    COURSES
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": format!("c{}", i + 1), "title": t, "quizCount": 1 + i % 3}))
        .collect()
}

/// Deterministic roster of an organisation: 20 users, plus any pushed through the API.
fn roster(s: &SimState, org: &str) -> Vec<Value> {
    let mut users: Vec<Value> = (1..=20)
        .map(|i| {
            json!({"id": format!("u{i}"), "email": format!("user{i}@{org}.example"),
                   "name": format!("User {i}"), "role": if i % 5 == 1 { "manager" } else { "rep" },
                   "active": true})
        })
        .collect();
    if let Some(p) = s.pushed.lock().unwrap_or_else(|p| p.into_inner()).get(org) {
        for (id, u) in p {
            users.retain(|x| x["id"] != id.as_str());
            users.push(u.clone());
        }
    }
    users
}

#[derive(Deserialize)]
struct PageQuery {
    page: Option<usize>,
}

async fn list_users(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Response, Response> {
    let org = admit(&s, &headers).await?;
    let all = roster(&s, &org);
    let page = q.page.unwrap_or(1).max(1);
    let per = 100;
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .cloned()
        .collect();
    let next = (page * per < all.len()).then_some(page + 1);
    Ok(Json(json!({"users": items, "nextPage": next})).into_response())
}

async fn catalog(State(s): State<Arc<SimState>>, headers: HeaderMap) -> Result<Response, Response> {
    admit(&s, &headers).await?;
    Ok(Json(json!({"courses": course_list()})).into_response())
}

async fn user_courses(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Response, Response> {
    let org = admit(&s, &headers).await?;
    if let Some(poisoned) = poisoned_courses(&user_id) {
        return Ok(Json(json!({"userId": user_id, "courses": poisoned})).into_response());
    }
    let courses: Vec<Value> = COURSES
        .iter()
        .enumerate()
        .filter(|(i, _)| !h(&[&org, &user_id, &i.to_string(), "assigned"]).is_multiple_of(4))
        .map(|(i, t)| {
            let id = format!("c{}", i + 1);
            let roll = h(&[&org, &user_id, &id]) % 10;
            let (status, score, completed) = match roll {
                0..=2 => ("not_started", Value::Null, Value::Null),
                3..=5 => ("in_progress", json!(40 + roll * 5), Value::Null),
                _ => ("completed", json!(60 + roll * 4), json!(format!("2026-10-{:02}T12:00:00Z", 1 + roll))),
            };
            json!({"courseId": id, "title": t, "status": status, "quizScore": score, "completedAt": completed})
        })
        .collect();
    Ok(Json(json!({"userId": user_id, "courses": courses})).into_response())
}

/// Answers a hostile platform could give, for users named `poison-<kind>` (the service
/// must fail those jobs with a reason and go on): a score out of range, a course listed
/// twice, a NUL character, and an answer of about 1 MB.
fn poisoned_courses(user_id: &str) -> Option<Value> {
    let course = |id: &str, title: &str, score: Value| {
        json!({"courseId": id, "title": title, "status": "completed", "quizScore": score,
               "completedAt": "2026-10-01T12:00:00Z"})
    };
    Some(match user_id.strip_prefix("poison-")? {
        "score" => json!([course("c1", "Pricing", json!(150))]),
        "duplicate" => json!([
            course("c1", "Pricing", json!(80)),
            course("c1", "Pricing", json!(90))
        ]),
        "nul" => json!([course("c1", "Pri\u{0}cing", json!(80))]),
        "huge" => json!([course("c1", &"x".repeat(1_000_000), json!(80))]),
        _ => return None,
    })
}

async fn create_user(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Response> {
    let org = admit(&s, &headers).await?;
    let Some(id) = body["id"].as_str().map(str::to_owned) else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "id is required",
        ));
    };
    s.pushed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(org)
        .or_default()
        .insert(id, body.clone());
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn update_user(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    Json(mut body): Json<Value>,
) -> Result<Response, Response> {
    let org = admit(&s, &headers).await?;
    body["id"] = Value::String(user_id.clone());
    s.pushed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(org)
        .or_default()
        .insert(user_id, body.clone());
    Ok(Json(body).into_response())
}

async fn deactivate_user(
    State(s): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Response, Response> {
    let org = admit(&s, &headers).await?;
    let mut pushed = s.pushed.lock().unwrap_or_else(|p| p.into_inner());
    let entry = pushed
        .entry(org)
        .or_default()
        .entry(user_id.clone())
        .or_insert_with(|| json!({"id": user_id}));
    entry["active"] = Value::Bool(false);
    Ok(Json(entry.clone()).into_response())
}

async fn stats(State(s): State<Arc<SimState>>) -> Response {
    let stats = s.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Json(json!({"organisations": stats})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    /// Organisation to affect; absent for all.
    org: Option<String>,
    #[serde(flatten)]
    faults: Faults,
}

async fn set_faults(State(s): State<Arc<SimState>>, Json(req): Json<FaultRequest>) -> Response {
    let storm = (req.faults.force_429_for_ms > 0)
        .then(|| Instant::now() + Duration::from_millis(req.faults.force_429_for_ms));
    match &req.org {
        Some(org) => {
            if TenantId::parse(org).is_err() {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_org",
                    "org must be a tenant id",
                );
            }
            s.faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .insert(org.clone(), req.faults.clone());
            let mut storms = s.storms.lock().unwrap_or_else(|p| p.into_inner());
            match storm {
                Some(t) => storms.insert(org.clone(), t),
                None => storms.remove(org),
            };
        }
        None => {
            s.faults.lock().unwrap_or_else(|p| p.into_inner()).0 = req.faults.clone();
            *s.global_storm.lock().unwrap_or_else(|p| p.into_inner()) = storm;
        }
    }
    Json(json!({"ok": true})).into_response()
}
