//! tenants: 1,000 registered, idle tenants. Reports the resident memory each idle tenant
//! actor adds (RSS with all of them minus RSS of the same service with none, in the same
//! run), the time from the process start until every actor runs, and the CPU the idle
//! service burns. Then 10,000 tenants on the shared topics with
//! `supervisor.start_passivated`: the time until every tenant is assigned and passivated,
//! and the memory each adds.

use std::time::{Duration, Instant};

use super::harness::{BenchWorld, ServiceProcess};
use super::{check, BenchError, Ctx, Figure, ScenarioReport};
use enablement::actors::TenantId;

/// CPU seconds (user + system) the process used so far, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Starts the service, waits for `actors`, lets it idle for `idle`; returns
/// (seconds to ready, RSS KiB after idling, idle CPU seconds per second).
async fn measure(
    world: &BenchWorld,
    actors: usize,
    idle: Duration,
) -> Result<(f64, u64, f64, usize), BenchError> {
    let started = Instant::now();
    let mut svc = ServiceProcess::start(world, "consumer", &[])?;
    svc.wait_ready(actors, Duration::from_secs(300)).await?;
    measure_idle(svc, started, idle).await
}

/// What the passivated service measured.
struct Passivated {
    ready_secs: f64,
    rss_kib: u64,
    cpu: f64,
    /// Produce-to-commit (ms, sorted) of a first event to a passivated tenant (its actor
    /// starts) and of a second one right after (its actor runs).
    cold_ms: Vec<f64>,
    warm_ms: Vec<f64>,
}

/// Produces one event to `tenant` and waits until it is applied; returns the latency (ms).
async fn one_event(
    world: &BenchWorld,
    publisher: &enablement::kafka::KafkaPublisher,
    tenant: &TenantId,
    n: u64,
) -> Result<f64, BenchError> {
    let id = format!("{tenant}-w{n}");
    let user = format!("w{n}");
    let sent = super::harness::now_ms();
    super::harness::produce(
        publisher,
        tenant,
        vec![(
            user.clone(),
            super::harness::scim_event(tenant.as_str(), &id, &user, 0),
        )],
    )
    .await?;
    let at: f64 =
        super::harness::wait_for("the event applied", Duration::from_secs(60), || async {
            world
                .owner
                .query_opt(
                    "select (extract(epoch from processed_at) * 1000)::float8
                   from processed_events where tenant_id = $1 and event_id = $2",
                    &[&tenant.as_str(), &id],
                )
                .await
                .ok()?
                .map(|r| r.get(0))
        })
        .await?;
    Ok(at - sent as f64)
}

/// Starts the service with every tenant passivated, waits until `tenants` are assigned
/// and passivated, reads its memory and CPU, then wakes `woken` of them with an event.
async fn measure_passivated(
    world: &BenchWorld,
    tenants: &[TenantId],
    woken: usize,
    idle: Duration,
) -> Result<Passivated, BenchError> {
    let n = tenants.len();
    let started = Instant::now();
    // A group of its own: the earlier service of this world (a static member, stopped)
    // stays in its group until its session times out, and a newcomer's join waits for that.
    let svc = ServiceProcess::start(
        world,
        "consumer",
        &[
            ("ENABLEMENT__SUPERVISOR__START_PASSIVATED", "true".into()),
            (
                "ENABLEMENT__KAFKA__GROUP_ID",
                format!("{}-passivated", world.config.kafka.group_id),
            ),
        ],
    )?;
    super::harness::wait_for(
        "every tenant assigned and passivated",
        Duration::from_secs(600),
        || async {
            let v = svc.readyz().await?;
            let assigned = v["consumer_group"]["assigned_tenants"].as_u64()? as usize;
            let passivated = v["tenants"]["passivated"].as_u64()? as usize;
            (assigned == n && passivated == n).then_some(())
        },
    )
    .await?;
    let ready_secs = started.elapsed().as_secs_f64();
    // A measurement window, not a synchronisation: the service is idle by construction.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_secs(svc.pid());
    tokio::time::sleep(idle).await;
    let cpu = (cpu_secs(svc.pid()) - cpu_before) / idle.as_secs_f64();
    let (rss_kib, _) = svc.rss_kib();
    let publisher = enablement::kafka::KafkaPublisher::new(&world.config.kafka)
        .map_err(super::harness::fail)?;
    // The tenants live on the shared topics: the publisher places their records there.
    publisher.layout().set_shared(tenants.iter().cloned());
    let (mut cold_ms, mut warm_ms) = (Vec::new(), Vec::new());
    for (i, t) in tenants
        .iter()
        .step_by((n / woken).max(1))
        .take(woken)
        .enumerate()
    {
        cold_ms.push(one_event(world, &publisher, t, 2 * i as u64).await?);
        warm_ms.push(one_event(world, &publisher, t, 2 * i as u64 + 1).await?);
    }
    cold_ms.sort_by(f64::total_cmp);
    warm_ms.sort_by(f64::total_cmp);
    svc.stop(Duration::from_secs(60));
    Ok(Passivated {
        ready_secs,
        rss_kib,
        cpu,
        cold_ms,
        warm_ms,
    })
}

/// Reads the start time, idles, reads RSS and CPU, stops the service.
async fn measure_idle(
    svc: ServiceProcess,
    started: Instant,
    idle: Duration,
) -> Result<(f64, u64, f64, usize), BenchError> {
    {
        let ready_secs = started.elapsed().as_secs_f64();
        let running = svc
            .readyz()
            .await
            .and_then(|v| v["tenants"]["running"].as_u64())
            .unwrap_or(0) as usize;
        // A measurement window, not a synchronisation: the service is idle by construction.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_before = cpu_secs(svc.pid());
        tokio::time::sleep(idle).await;
        let cpu = (cpu_secs(svc.pid()) - cpu_before) / idle.as_secs_f64();
        let (rss, _) = svc.rss_kib();
        svc.stop(Duration::from_secs(60));
        Ok((ready_secs, rss, cpu, running))
    }
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    let n: usize = if ctx.smoke() { 20 } else { 1_000 };
    let n_lazy: usize = if ctx.smoke() { 100 } else { 10_000 };
    let idle = Duration::from_secs(if ctx.smoke() { 2 } else { 10 });
    let world = BenchWorld::new(ctx.config, ctx.config_path, "tenants", ctx.keep).await?;
    let (_, rss_empty, cpu_empty, _) = measure(&world, 0, idle).await?;

    let tenants: Vec<TenantId> = (0..n)
        .map(|i| world.tenant(&format!("t{i}")))
        .collect::<Result<_, _>>()?;
    let registering = Instant::now();
    world.register_many(&tenants).await?;
    let register_secs = registering.elapsed().as_secs_f64();
    let registered = world.scalar("select count(*) from tenants").await?;
    let mut checks = vec![check(
        registered == n as i64,
        format!("{registered} tenants registered with their topics"),
    )?];

    let (ready_secs, rss_full, cpu_full, running) = measure(&world, n, idle).await?;
    checks.push(check(
        running == n,
        format!("{running} of {n} tenant actors running"),
    )?);

    // The same service owning 10,000 small tenants on the shared topics, every one
    // passivated from its assignment (the tenants above suspended meanwhile).
    let more: Vec<TenantId> = (0..n_lazy)
        .map(|i| world.tenant(&format!("s{i}")))
        .collect::<Result<_, _>>()?;
    let registering_more = Instant::now();
    world
        .register_many_on(&more, enablement::tenants::Topics::Shared)
        .await?;
    let register_more_secs = registering_more.elapsed().as_secs_f64();
    world
        .owner
        .execute(
            "update tenants set status = 'suspended' where topics = 'dedicated'",
            &[],
        )
        .await
        .map_err(super::harness::fail)?;
    let woken = 20;
    let lazy = measure_passivated(&world, &more, woken, idle).await?;
    checks.push(check(
        lazy.cold_ms.len() == woken,
        format!(
            "{n_lazy} tenants on the shared topics assigned to one instance and passivated; {woken} woken by an event, each applied"
        ),
    )?);
    let (lazy_secs, rss_lazy, cpu_lazy) = (lazy.ready_secs, lazy.rss_kib, lazy.cpu);
    let per_lazy_kib = rss_lazy.saturating_sub(rss_empty) as f64 / n_lazy as f64;
    let p50 = |v: &[f64]| super::harness::percentile(v, 0.5);
    let wake_cost = p50(&lazy.cold_ms) - p50(&lazy.warm_ms);
    let per_tenant_kib = rss_full.saturating_sub(rss_empty) as f64 / n as f64;
    let figures = vec![
        Figure::plain("idle tenants", n as f64, "tenants"),
        Figure::plain(
            "service RSS with no tenant",
            rss_empty as f64 / 1024.0,
            "MiB",
        ),
        Figure::plain(
            "service RSS with all tenants",
            rss_full as f64 / 1024.0,
            "MiB",
        ),
        Figure::at_most("RSS per idle tenant", per_tenant_kib, "KiB", 100.0),
        Figure::at_most("start until every actor runs", ready_secs, "s", 10.0),
        Figure::plain("idle CPU with no tenant", cpu_empty, "cores"),
        Figure::plain("idle CPU with all tenants", cpu_full, "cores"),
        Figure::plain(
            "registering them (topics in batches of 200 through one client, then rows)",
            register_secs,
            "s",
        ),
        Figure::plain(
            "passivated tenants on the shared topics (supervisor.start_passivated)",
            n_lazy as f64,
            "tenants",
        ),
        Figure::plain(
            "service RSS with all of them passivated",
            rss_lazy as f64 / 1024.0,
            "MiB",
        ),
        Figure::at_most("RSS per passivated tenant", per_lazy_kib, "KiB", 10.0),
        Figure::at_most(
            "start until every partition is assigned (passivated)",
            lazy_secs,
            "s",
            30.0,
        ),
        Figure::plain("idle CPU with the passivated tenants", cpu_lazy, "cores"),
        Figure::plain(
            "first event to a passivated tenant, produce to commit, p50 / max",
            p50(&lazy.cold_ms),
            "ms",
        ),
        Figure::plain("(max)", lazy.cold_ms.last().copied().unwrap_or(0.0), "ms"),
        Figure::plain(
            "next event (actor running), produce to commit, p50",
            p50(&lazy.warm_ms),
            "ms",
        ),
        Figure::at_most("wake cost: first minus next, p50", wake_cost, "ms", 100.0),
        Figure::plain(
            "registering the shared tenants (one registry row each)",
            register_more_secs,
            "s",
        ),
    ];
    world.cleanup().await;
    Ok(ScenarioReport {
        scenario: "tenants".into(),
        size: format!("{n} idle tenants, then {n_lazy} passivated on the shared topics"),
        seconds: 0.0,
        checks,
        figures,
        notes: vec!["start: from spawning the process until /readyz reports every tenant actor running (includes connecting, the group join and the assignment)".into()],
    })
}
