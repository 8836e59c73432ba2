//! scaleout: several `serve --role consumer` instances in one consumer group.
//!
//! (a) The same ingest (20 tenants, every event applied exactly once) on one instance and
//!     on three, in the same run: on one machine the database bounds both, so the point is
//!     that three instances lose nothing and stay within 10% of one.
//! (b) Produce-to-commit latency (p99) of the tenants that do not move, while a third
//!     instance joins and while it is SIGKILLed, against the same tenants with no
//!     membership change (two instances, steady): at most 2x.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::harness::{
    fail, now_ms, percentile, pg, produce, scim_event, wait_for, BenchWorld, ServiceProcess,
};
use super::{check, BenchError, Ctx, Figure, ScenarioReport};
use enablement::actors::ports::{EventPublisher, OutboundRecord};
use enablement::actors::{TenantId, TopicKind};
use enablement::kafka::KafkaPublisher;

fn instance(world: &BenchWorld, id: &str) -> Result<ServiceProcess, BenchError> {
    ServiceProcess::start_instance(
        world,
        "consumer",
        &[
            // A killed instance's tenants move after the session timeout.
            ("ENABLEMENT__KAFKA__SESSION_TIMEOUT_MS", "10000".into()),
            ("ENABLEMENT__KAFKA__STATISTICS_INTERVAL_MS", "1000".into()),
        ],
        Some(id),
    )
}

/// Tenant -> index of the instance that runs it, once every tenant of `tenants` runs on
/// exactly one of `instances`.
async fn owners(
    instances: &[&ServiceProcess],
    tenants: &[TenantId],
) -> Option<BTreeMap<String, usize>> {
    let mut owner = BTreeMap::new();
    for (i, svc) in instances.iter().enumerate() {
        let v = svc.readyz().await?;
        let owned = v["consumer_group"]["owned"].as_array()?;
        let running = v["tenants"]["running"].as_u64()? as usize;
        if running != owned.len() {
            return None;
        }
        for t in owned.iter().filter_map(|t| t.as_str()) {
            if owner.insert(t.to_owned(), i).is_some() {
                return None;
            }
        }
    }
    tenants
        .iter()
        .all(|t| owner.contains_key(t.as_str()))
        .then_some(owner)
}

async fn settled(
    instances: &[&ServiceProcess],
    tenants: &[TenantId],
    what: &str,
) -> Result<BTreeMap<String, usize>, BenchError> {
    wait_for(what, Duration::from_secs(180), || {
        owners(instances, tenants)
    })
    .await
}

async fn processed(world: &BenchWorld, tenants: &[TenantId]) -> Result<i64, BenchError> {
    let ids: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
    world
        .owner
        .query_one(
            "select count(*) from processed_events where tenant_id = any($1)",
            &[&ids],
        )
        .await
        .map(|r| r.get(0))
        .map_err(pg)
}

/// Events/s of one ingest of `per_tenant` events to each of `tenants` by `n` instances
/// that own them before the first event is produced.
async fn ingest(
    world: &BenchWorld,
    publisher: &KafkaPublisher,
    tenants: &[TenantId],
    per_tenant: usize,
    n: usize,
) -> Result<f64, BenchError> {
    let mut instances = Vec::new();
    for i in 0..n {
        instances.push(instance(world, &format!("ingest{n}-{i}"))?);
    }
    let refs: Vec<&ServiceProcess> = instances.iter().collect();
    settled(&refs, tenants, "tenants assigned").await?;
    let started = Instant::now();
    for t in tenants {
        let events = (0..per_tenant)
            .map(|i| {
                let user = format!("u{i}");
                (
                    user.clone(),
                    scim_event(t.as_str(), &format!("{t}-e{i}"), &user, 0),
                )
            })
            .collect();
        produce(publisher, t, events).await?;
    }
    let total = (tenants.len() * per_tenant) as i64;
    wait_for("every event applied", Duration::from_secs(900), || async {
        (processed(world, tenants).await.ok()? >= total).then_some(())
    })
    .await?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    for svc in instances {
        svc.stop(Duration::from_secs(60));
    }
    Ok(rate)
}

/// Sends one event per tenant every 100 ms until `stop`; records each send time (ms).
async fn trickle(
    publisher: KafkaPublisher,
    tenants: Vec<TenantId>,
    sent: Arc<Mutex<HashMap<String, (String, u128)>>>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), BenchError> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        for t in &tenants {
            let id = format!("{t}-l{i}");
            let user = format!("l{i}");
            let record = OutboundRecord {
                topic: TopicKind::Scim,
                key: Some(user.as_bytes().to_vec()),
                payload: scim_event(t.as_str(), &id, &user, 0).into_bytes(),
                headers: vec![],
            };
            sent.lock().await.insert(id, (t.to_string(), now_ms()));
            publisher.publish(t, vec![record]).await.map_err(fail)?;
        }
        i += 1;
    }
}

/// Send time (ms) of the events sent between `from` and `to` (ms) by the tenants `keep`.
fn window(
    sent: &HashMap<String, (String, u128)>,
    from: u128,
    to: u128,
    keep: &dyn Fn(&str) -> bool,
) -> HashMap<String, u128> {
    sent.iter()
        .filter(|(_, (t, at))| *at >= from && *at < to && keep(t))
        .map(|(id, (_, at))| (id.clone(), *at))
        .collect()
}

/// Produce-to-commit latencies (ms, sorted) of `events`, once all are applied.
async fn latencies(
    world: &BenchWorld,
    events: &HashMap<String, u128>,
) -> Result<Vec<f64>, BenchError> {
    let ids: Vec<&String> = events.keys().collect();
    let rows = wait_for(
        "the window's events applied",
        Duration::from_secs(300),
        || async {
            let rows = world
                .owner
                .query(
                    "select event_id, (extract(epoch from processed_at) * 1000)::float8
                   from processed_events where event_id = any($1)",
                    &[&ids],
                )
                .await
                .ok()?;
            (rows.len() == ids.len()).then_some(rows)
        },
    )
    .await?;
    let mut out: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let at: f64 = r.get(1);
            events.get(r.get::<_, &str>(0)).map(|s| at - *s as f64)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    Ok(out)
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    let (n_tenants, per_tenant, steady_secs) = if ctx.smoke() {
        (4usize, 200usize, 3u64)
    } else {
        (20, 2_000, 10)
    };
    let world = BenchWorld::new(ctx.config, ctx.config_path, "scaleout", ctx.keep).await?;
    let publisher = KafkaPublisher::new(&world.config.kafka).map_err(fail)?;
    let mut checks = Vec::new();

    // (a) one instance, then three, each on tenants of its own.
    let one: Vec<TenantId> = (0..n_tenants)
        .map(|i| world.tenant(&format!("one{i}")))
        .collect::<Result<_, _>>()?;
    let three: Vec<TenantId> = (0..n_tenants)
        .map(|i| world.tenant(&format!("three{i}")))
        .collect::<Result<_, _>>()?;
    world.register_many(&one).await?;
    let rate_one = ingest(&world, &publisher, &one, per_tenant, 1).await?;
    world.register_many(&three).await?;
    let rate_three = ingest(&world, &publisher, &three, per_tenant, 3).await?;
    for (set, name) in [(&one, "one"), (&three, "three")] {
        let users = world
            .owner
            .query_one(
                "select count(*) from users where tenant_id = any($1)",
                &[&set.iter().map(TenantId::as_str).collect::<Vec<_>>()],
            )
            .await
            .map_err(pg)?
            .get::<_, i64>(0);
        let outbox = world
            .owner
            .query_one(
                "select count(*) from outbox where tenant_id = any($1)",
                &[&set.iter().map(TenantId::as_str).collect::<Vec<_>>()],
            )
            .await
            .map_err(pg)?
            .get::<_, i64>(0);
        let expected = (set.len() * per_tenant) as i64;
        checks.push(check(
            processed(&world, set).await? == expected && outbox == expected && users == expected,
            format!("{name} instance(s): {expected} events applied once, {outbox} outbox rows, {users} users"),
        )?);
    }

    // (b) latency of the tenants that do not move. The tenants of (a) are suspended first:
    // among 46 tenants the assignor may hand every latency tenant to the joining instance,
    // leaving none that stays; among 6, two move and four stay.
    let earlier: Vec<&str> = one.iter().chain(&three).map(TenantId::as_str).collect();
    world
        .owner
        .execute(
            "update tenants set status = 'suspended' where tenant_id = any($1)",
            &[&earlier],
        )
        .await
        .map_err(pg)?;
    let lat: Vec<TenantId> = (0..6)
        .map(|i| world.tenant(&format!("lat{i}")))
        .collect::<Result<_, _>>()?;
    world.register_many(&lat).await?;
    let (x, y) = (instance(&world, "x")?, instance(&world, "y")?);
    let before = settled(&[&x, &y], &lat, "two instances").await?;
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(trickle(
        KafkaPublisher::new(&world.config.kafka).map_err(fail)?,
        lat.clone(),
        sent.clone(),
        stop.clone(),
    ));
    let steady = Duration::from_secs(steady_secs);
    let t0 = now_ms();
    tokio::time::sleep(steady).await; // a measurement window, not a synchronisation
    let t1 = now_ms();
    let z = instance(&world, "z")?;
    let joined = wait_for(
        "the third instance owns tenants",
        Duration::from_secs(180),
        || async {
            let o = owners(&[&x, &y, &z], &lat).await?;
            o.values().any(|i| *i == 2).then_some(o)
        },
    )
    .await?;
    tokio::time::sleep(steady / 2).await;
    let t2 = now_ms();
    let on_z: Vec<String> = joined
        .iter()
        .filter(|(_, i)| **i == 2)
        .map(|(t, _)| t.clone())
        .collect();
    z.kill();
    let after = settled(&[&x, &y], &lat, "after the kill").await?;
    tokio::time::sleep(steady / 2).await;
    let t3 = now_ms();
    stop.cancel();
    task.await.map_err(fail)??;
    let sent = sent.lock().await.clone();
    let of = |m: &BTreeMap<String, usize>| -> Vec<Option<usize>> {
        lat.iter().map(|t| m.get(t.as_str()).copied()).collect()
    };
    eprintln!(
        "bench: scaleout (b) owners of the latency tenants: before {:?}, joined {:?}, after {:?}; {} events sent",
        of(&before),
        of(&joined),
        of(&after),
        sent.len()
    );
    // Tenants that stayed on their instance through the join and through the kill.
    let stayed_join = |t: &str| before.get(t) == joined.get(t);
    let stayed_kill = |t: &str| !on_z.iter().any(|z| z == t) && before.get(t) == after.get(t);
    let base = latencies(
        &world,
        &window(&sent, t0, t1, &|t| stayed_join(t) && stayed_kill(t)),
    )
    .await?;
    let during_join = latencies(&world, &window(&sent, t1, t2, &stayed_join)).await?;
    let during_kill = latencies(&world, &window(&sent, t2, t3, &stayed_kill)).await?;
    let all = window(&sent, 0, u128::MAX, &|_| true);
    let applied = latencies(&world, &all).await?.len();
    checks.push(check(
        applied == all.len(),
        format!("all {applied} latency events applied once across the join and the kill"),
    )?);
    checks.push(check(
        !base.is_empty() && !during_join.is_empty() && !during_kill.is_empty(),
        format!(
            "tenants that did not move: {} / {} / {} events measured",
            base.len(),
            during_join.len(),
            during_kill.len()
        ),
    )?);
    drop((x, y));
    let p99 = |v: &[f64]| percentile(v, 0.99);
    let (p_base, p_join, p_kill) = (p99(&base), p99(&during_join), p99(&during_kill));
    let figures = vec![
        Figure::plain("(a) one instance, events/s", rate_one, "events/s"),
        Figure::plain("(a) three instances, events/s", rate_three, "events/s"),
        Figure::at_least("(a) three / one", rate_three / rate_one, "ratio", 0.9),
        Figure::plain("(b) p99 steady (two instances)", p_base, "ms"),
        Figure::plain("(b) p99 while an instance joins", p_join, "ms"),
        Figure::plain("(b) p99 while an instance is SIGKILLed", p_kill, "ms"),
        Figure::at_most("(b) join / steady", p_join / p_base.max(1.0), "ratio", 2.0),
        Figure::at_most("(b) kill / steady", p_kill / p_base.max(1.0), "ratio", 2.0),
    ];
    world.cleanup().await;
    Ok(ScenarioReport {
        scenario: "scaleout".into(),
        size: format!(
            "{n_tenants} tenants x {per_tenant} events; 6 tenants at 10 events/s for latency"
        ),
        seconds: 0.0,
        checks,
        figures,
        notes: vec![
            "(a) timed from the first event produced (instances already own the tenants) until the last is applied".into(),
            "(b) latency: send time to processed_at, for tenants whose instance did not change; windows: steady, join (until settled + half a window), kill (until the killed instance's tenants run again + half a window)".into(),
        ],
    })
}
