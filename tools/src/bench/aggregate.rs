//! aggregate: one tenant with a million progress rows (100,000 users x 10 courses) and
//! 100,000 quiz submissions beside 99 small tenants. Times a readiness aggregation through the
//! service (`POST .../readiness/aggregate`: lock, the report query, stored report, outbox,
//! HTTP) against the bare report query run directly in PostgreSQL on the same data, runs
//! interleaved, medians compared.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::{fail, pg, BenchWorld, ServiceProcess};
use super::{check, BenchError, Ctx, Figure, ScenarioReport};
use enablement::actors::TenantId;
use enablement::db::TenantScopedStore;

struct Sizes {
    users: i32,
    courses: i32,
    quizzes: i32,
    small_tenants: i32,
    runs: usize,
}

async fn seed(world: &BenchWorld, big: &TenantId, s: &Sizes) -> Result<(), BenchError> {
    let sql = format!(
        "insert into tenants (tenant_id, display_name) values ('{big}', 'Big');
         insert into tenants (tenant_id, display_name)
           select '{big}-s' || g, 'Small' from generate_series(1, {small}) g;
         insert into readiness_locks select tenant_id from tenants;
         insert into users (tenant_id, user_id, user_name, role, manager_id, active, scim, version,
                            source_occurred_at, source_event_id)
           select '{big}', 'u' || g, 'u' || g || '@big.test',
                  case when g % 20 = 0 then 'manager' else 'rep' end,
                  'u' || ((g / 20) * 20), g % 50 <> 0, '{{}}', 1, now(), 'seed'
             from generate_series(1, {users}) g;
         insert into course_progress (tenant_id, user_id, course_id, title, status, score)
           select '{big}', 'u' || u, 'c' || c, 'Course ' || c,
                  (array['not_started','in_progress','completed'])[1 + (u + c) % 3],
                  case when (u * c) % 7 = 0 then null else (u * c) % 101 end
             from generate_series(1, {users}) u, generate_series(1, {courses}) c;
         insert into quiz_submissions (tenant_id, submission_id, user_id, course_id, quiz_id,
                                       answers, score, submitted_at)
           select '{big}', 's' || g, 'u' || (1 + g % {users}), 'c' || (1 + g % {courses}), 'q1',
                  '[]', g % 101, now()
             from generate_series(1, {quizzes}) g;
         insert into users (tenant_id, user_id, user_name, role, manager_id, active, scim, version,
                            source_occurred_at, source_event_id)
           select t.tenant_id, 'u' || g, 'u' || g, 'rep', 'u1', true, '{{}}', 1, now(), 'seed'
             from tenants t, generate_series(1, 50) g where t.tenant_id like '{big}-s%';
         insert into course_progress (tenant_id, user_id, course_id, title, status, score)
           select t.tenant_id, 'u' || u, 'c' || c, 'C', 'completed', 50
             from tenants t, generate_series(1, 50) u, generate_series(1, 10) c
            where t.tenant_id like '{big}-s%';",
        small = s.small_tenants,
        users = s.users,
        courses = s.courses,
        quizzes = s.quizzes,
    );
    world.owner.batch_execute(&sql).await.map_err(pg)?;
    world
        .owner
        .batch_execute("vacuum analyze")
        .await
        .map_err(pg)
}

async fn bare(
    store: &TenantScopedStore,
    t: &TenantId,
    freshness_ms: f64,
) -> Result<(f64, Value), BenchError> {
    let name = t.as_str().to_owned();
    let started = Instant::now();
    let v: Value = store
        .scoped(t, move |tx, _| {
            Box::pin(async move {
                Ok(tx
                    .query_one(enablement::readiness::REPORT_SQL, &[&name, &freshness_ms])
                    .await?
                    .get(0))
            })
        })
        .await
        .map_err(fail)?;
    Ok((started.elapsed().as_secs_f64() * 1000.0, v))
}

async fn through_service(
    svc: &ServiceProcess,
    t: &TenantId,
    token: &str,
) -> Result<(f64, Value), BenchError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(fail)?;
    let started = Instant::now();
    let r = client
        .post(format!(
            "{}/api/tenants/{t}/readiness/aggregate",
            svc.base_url
        ))
        .bearer_auth(token)
        .send()
        .await
        .map_err(fail)?;
    let status = r.status();
    let v: Value = r.json().await.map_err(fail)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() || status.as_u16() == 202 {
        return Err(fail(format!("aggregate answered {status}: {v}")));
    }
    Ok((ms, v))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    let sizes = if ctx.smoke() {
        Sizes {
            users: 2_000,
            courses: 5,
            quizzes: 1_000,
            small_tenants: 5,
            runs: 3,
        }
    } else {
        Sizes {
            users: 100_000,
            courses: 10,
            quizzes: 100_000,
            small_tenants: 99,
            runs: 5,
        }
    };
    let world = BenchWorld::new(ctx.config, ctx.config_path, "aggregate", ctx.keep).await?;
    let big = world.tenant("big")?;
    let seeding = Instant::now();
    seed(&world, &big, &sizes).await?;
    let seed_secs = seeding.elapsed().as_secs_f64();
    let rows = world
        .scalar(&format!(
            "select count(*) from course_progress where tenant_id = '{big}'"
        ))
        .await?;
    let mut checks = vec![check(
        rows == i64::from(sizes.users) * i64::from(sizes.courses),
        format!("{rows} progress rows seeded for the big tenant"),
    )?];
    let store = world.store().await?;
    let freshness_ms = world.config.aggregator.freshness_ms as f64;
    let mut svc = ServiceProcess::start(&world, "api", &[])?;
    svc.wait_ready(0, Duration::from_secs(60)).await?;
    let token = world.config.http.operator_token.expose().to_owned();
    // One warm-up each (caches, plans), then interleaved measured runs.
    let (_, want) = bare(&store, &big, freshness_ms).await?;
    let (_, first) = through_service(&svc, &big, &token).await?;
    let (mut bare_ms, mut svc_ms) = (Vec::new(), Vec::new());
    for _ in 0..sizes.runs {
        bare_ms.push(bare(&store, &big, freshness_ms).await?.0);
        svc_ms.push(through_service(&svc, &big, &token).await?.0);
    }
    svc.stop(Duration::from_secs(30));
    for key in ["assigned", "completed", "scored", "activeUsers"] {
        checks.push(check(
            want[key] == first[key],
            format!(
                "{key}: the service's report equals the bare query's ({})",
                want[key]
            ),
        )?);
    }
    let close = (want["avgScore"].as_f64().unwrap_or(-1.0)
        - first["avgScore"].as_f64().unwrap_or(-2.0))
    .abs()
        < 1e-9;
    checks.push(check(close, "avgScore equal")?);
    for key in ["byCourse", "byTeam"] {
        let n = |v: &Value| v[key].as_array().map(Vec::len).unwrap_or(0);
        checks.push(check(
            n(&want) == n(&first) && n(&want) > 0,
            format!("{key}: {} entries in both", n(&want)),
        )?);
    }
    let (b, s) = (median(bare_ms), median(svc_ms));
    let figures = vec![
        Figure::plain("progress rows of the big tenant", rows as f64, "rows"),
        Figure::plain("bare report query, median", b, "ms"),
        Figure::plain("through the service, median", s, "ms"),
        Figure::at_most("service / bare", s / b, "ratio", 1.2),
        Figure::plain("seeding", seed_secs, "s"),
    ];
    world.cleanup().await;
    Ok(ScenarioReport {
        scenario: "aggregate".into(),
        size: format!(
            "{} users x {} courses, {} quiz submissions, {} small tenants, {} runs",
            sizes.users, sizes.courses, sizes.quizzes, sizes.small_tenants, sizes.runs
        ),
        seconds: 0.0,
        checks,
        figures,
        notes: vec!["service: HTTP POST .../readiness/aggregate end to end (lock, query, stored report with its breakdowns, outbox, JSON answer); bare: the same report.sql in a tenant-scoped transaction".into()],
    })
}
