//! ratelimit: every tenant has a queue of progress syncs worth `budget` of its quota
//! (overridden to 600/min in the registry); the simulator enforces the same quota per
//! organisation and counts violations. Reports achieved calls/min per tenant divided by the
//! quota, then again with a 429 storm injected on one tenant (for the others).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::harness::{
    fail, http_client, pg, start_simulator, wait_for, BenchWorld, ServiceProcess,
};
use super::{check, BenchError, Ctx, Figure, ScenarioReport};
use crate::simulator::{dev_secret, SimSettings};
use enablement::actors::ports::{JobKind, JobPriority, NewJob};
use enablement::actors::TenantId;

const QUOTA_PER_MIN: i64 = 600;

/// Per tenant: (done, failed, achieved calls/min) of a phase's jobs.
async fn phase_rates(
    world: &BenchWorld,
    phase: i64,
) -> Result<Vec<(String, i64, i64, f64)>, BenchError> {
    let rows = world
        .owner
        .query(
            "select tenant_id,
                    count(*) filter (where status = 'done'),
                    count(*) filter (where status = 'failed'),
                    extract(epoch from max(done_at) - min(done_at))::float8
               from upstream_jobs where (payload->>'phase')::int = $1
              group by tenant_id order by tenant_id",
            &[&(phase as i32)],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| {
            let done: i64 = r.get(1);
            let span: Option<f64> = r.get(3);
            let rate = match span {
                Some(s) if s > 0.0 => (done - 1) as f64 / s * 60.0,
                _ => 0.0,
            };
            (r.get(0), done, r.get(2), rate)
        })
        .collect())
}

/// Pending jobs of every tenant but `except`.
async fn pending(world: &BenchWorld, except: &str) -> Result<i64, BenchError> {
    world
        .owner
        .query_one(
            "select count(*) from upstream_jobs where status = 'pending' and tenant_id <> $1",
            &[&except],
        )
        .await
        .map(|r| r.get(0))
        .map_err(pg)
}

async fn queue_jobs(
    world: &BenchWorld,
    tenants: &[TenantId],
    per_tenant: i64,
    phase: i64,
) -> Result<(), BenchError> {
    // Queued through the service's own enqueue (as the service role, under RLS).
    let store = world.store().await?;
    let jobs: Vec<NewJob> = (1..=per_tenant)
        .map(|g| NewJob {
            priority: JobPriority::Background,
            kind: JobKind::SyncProgress,
            subject: format!("u{g}"),
            payload: json!({ "phase": phase }),
        })
        .collect();
    for t in tenants {
        store.enqueue_jobs(t, &jobs).await.map_err(fail)?;
    }
    let names: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    for t in &names {
        world
            .owner
            .execute("select pg_notify('enablement_tenant_work', $1)", &[t])
            .await
            .map_err(pg)?;
    }
    Ok(())
}

async fn sim_stats(sim: &str) -> Result<Value, BenchError> {
    http_client()
        .get(format!("{sim}/admin/stats"))
        .send()
        .await
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)
}

fn org_sum(stats: &Value, field: &str) -> i64 {
    stats["organisations"]
        .as_object()
        .map(|o| o.values().filter_map(|s| s[field].as_i64()).sum())
        .unwrap_or(0)
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    let (n_tenants, budget_secs) = if ctx.smoke() {
        (3usize, 10i64)
    } else {
        (20, 180)
    };
    let per_tenant = QUOTA_PER_MIN * budget_secs / 60;
    let sim = start_simulator(SimSettings {
        rate_per_min: QUOTA_PER_MIN as u32,
        burst: 10,
        ..SimSettings::default()
    })
    .await?;
    let mut world = BenchWorld::new(ctx.config, ctx.config_path, "ratelimit", ctx.keep).await?;
    world.config.mindtickle.base_url = sim.clone();
    let tenants: Vec<TenantId> = (0..n_tenants)
        .map(|i| world.tenant(&format!("t{i}")))
        .collect::<Result<_, _>>()?;
    world.register(&tenants).await?;
    let store = world.store().await?;
    for t in &tenants {
        store
            .set_upstream_credentials(t, t.as_str(), &dev_secret(t.as_str()))
            .await
            .map_err(fail)?;
    }
    world
        .owner
        .execute(
            "update tenants set rate_limit_per_min = $1",
            &[&(QUOTA_PER_MIN as i32)],
        )
        .await
        .map_err(pg)?;
    let mut checks = Vec::new();

    // Phase 1: every tenant drains its queue.
    queue_jobs(&world, &tenants, per_tenant, 1).await?;
    let started = Instant::now();
    let mut svc = ServiceProcess::start(&world, "consumer", &[])?;
    svc.wait_ready(n_tenants, Duration::from_secs(120)).await?;
    let total = per_tenant * n_tenants as i64;
    let timeout = Duration::from_secs(budget_secs as u64 * 3 + 120);
    // A cheap probe (the pending partial index), once a second: the bench must not load the
    // database it measures.
    wait_for("phase 1 drained", timeout, || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        (pending(&world, "").await.ok()? == 0).then_some(())
    })
    .await?;
    let phase1_secs = started.elapsed().as_secs_f64();
    let rates = phase_rates(&world, 1).await?;
    let stats = sim_stats(&sim).await?;
    let done: i64 = rates.iter().map(|r| r.1).sum();
    checks.push(check(
        done == total,
        format!("phase 1: {done} of {total} syncs done, none failed"),
    )?);
    let served = org_sum(&stats, "served");
    checks.push(check(
        served == total,
        format!("phase 1: the platform served {served} calls for {total} syncs (each once)"),
    )?);
    let violations = org_sum(&stats, "limit_violations");
    checks.push(check(
        violations == 0,
        format!("phase 1: {violations} limit violations"),
    )?);
    let synced = world
        .scalar("select count(*) from outbox where payload->>'type' = 'progress.synced'")
        .await?;
    checks.push(check(
        synced == total,
        format!("phase 1: {synced} progress.synced, one per sync"),
    )?);
    let ratios: Vec<f64> = rates.iter().map(|r| r.3 / QUOTA_PER_MIN as f64).collect();
    let min_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let mean_ratio = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;

    // Phase 2: the same with a 429 storm on the first tenant.
    let stormed = &tenants[0];
    let storm_ms = (budget_secs * 1000 + 30_000) as u64;
    let r = http_client()
        .post(format!("{sim}/admin/faults"))
        .json(&json!({"org": stormed.as_str(), "force_429_for_ms": storm_ms, "retry_after_s": 5}))
        .send()
        .await
        .map_err(fail)?;
    checks.push(check(
        r.status().is_success(),
        "storm injected on one tenant",
    )?);
    queue_jobs(&world, &tenants, per_tenant, 2).await?;
    let others = (n_tenants as i64 - 1) * per_tenant;
    let stormed_name = stormed.to_string();
    wait_for("phase 2 drained for the others", timeout, || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        (pending(&world, &stormed_name).await.ok()? == 0).then_some(())
    })
    .await?;
    let rates2 = phase_rates(&world, 2).await?;
    let stats2 = sim_stats(&sim).await?;
    svc.stop(Duration::from_secs(30));
    let others_rates: Vec<&(String, i64, i64, f64)> =
        rates2.iter().filter(|r| r.0 != stormed_name).collect();
    let others_done: i64 = others_rates.iter().map(|r| r.1).sum();
    checks.push(check(
        others_done == others,
        format!("phase 2: the others did {others_done} of {others} syncs, none failed"),
    )?);
    let violations2 = org_sum(&stats2, "limit_violations");
    checks.push(check(
        violations2 == 0,
        format!("phase 2: {violations2} limit violations"),
    )?);
    let forced = stats2["organisations"][stormed.as_str()]["forced_429"]
        .as_i64()
        .unwrap_or(0);
    checks.push(check(
        forced > 0,
        format!("phase 2: the stormed tenant met {forced} injected 429s"),
    )?);
    let min_ratio2 = others_rates
        .iter()
        .map(|r| r.3 / QUOTA_PER_MIN as f64)
        .fold(f64::INFINITY, f64::min);

    let figures = vec![
        Figure::plain("tenants x syncs queued", total as f64, "calls"),
        Figure::plain("quota per tenant", QUOTA_PER_MIN as f64, "calls/min"),
        Figure::at_least("achieved / quota, lowest tenant", min_ratio, "ratio", 0.95),
        Figure::plain("achieved / quota, mean", mean_ratio, "ratio"),
        Figure::at_most("limit violations", violations as f64, "calls", 0.0),
        Figure::at_least(
            "with a 429 storm on one tenant: achieved / quota, lowest other",
            min_ratio2,
            "ratio",
            0.95,
        ),
        Figure::at_most(
            "with the storm: limit violations",
            violations2 as f64,
            "calls",
            0.0,
        ),
        Figure::plain("phase 1 wall time", phase1_secs, "s"),
    ];
    world.cleanup().await;
    Ok(ScenarioReport {
        scenario: "ratelimit".into(),
        size: format!("{n_tenants} tenants x {per_tenant} syncs ({budget_secs} s of a {QUOTA_PER_MIN}/min budget)"),
        seconds: 0.0,
        checks,
        figures,
        notes: vec!["achieved: (jobs done - 1) / (last done - first done) per tenant, from upstream_jobs.done_at".into()],
    })
}
