//! ingest: SCIM events applied per second by the service, against three baselines measured
//! in the same run on the same data shape:
//! (a) the raw database ceiling: the rows the pipeline commits per event (idempotency record,
//!     user upsert, outbox row under the tenant's outbox sequence) written straight into
//!     PostgreSQL in multi-row transactions from 4 connections, same tables, indexes and
//!     RLS, no Kafka, no actors;
//! (b) the raw broker ceiling: a plain consumer reading the same topics to their end;
//! (c) the original per-event design: the same service with one transaction per event
//!     (`pipeline.max_batch_events = 1`);
//! (d) the raw broker write ceiling: the change announcements the service relays (one
//!     `user.changed` record per event, same shape) produced straight to the broker.
//!
//! The service does the work of (a), (b) and (d) on the same cores. From the CPU each
//! baseline used, the bench also reports the combined ceiling: the rate at which those
//! three minimal implementations together would saturate the machine. No implementation
//! of the pipeline can beat it on this machine; it shows how much of the gap to
//! min(a, b) is the service's own overhead and how much is work (a) and (b) leave out.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::harness::{fail, pg, produce, scim_event, BenchWorld, ServiceProcess};
use super::{check, BenchError, Ctx, Figure, ScenarioReport};
use enablement::actors::ports::{EventPublisher, OutboundRecord};
use enablement::actors::{TenantId, TopicKind};
use enablement::db::{outbox, TenantScopedStore};
use enablement::kafka::KafkaPublisher;

struct Sizes {
    tenants: usize,
    events_per_tenant: usize,
    per_event_share: usize,
}

fn events_for(t: &TenantId, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let user = format!("u{i}");
            let id = format!("{t}-e{i}");
            (user.clone(), scim_event(t.as_str(), &id, &user, 0))
        })
        .collect()
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    let sizes = if ctx.smoke() {
        Sizes {
            tenants: 2,
            events_per_tenant: 500,
            per_event_share: 5,
        }
    } else {
        Sizes {
            tenants: 20,
            events_per_tenant: 10_000,
            per_event_share: 50,
        }
    };
    let total = (sizes.tenants * sizes.events_per_tenant) as i64;
    let world = BenchWorld::new(ctx.config, ctx.config_path, "ingest", ctx.keep).await?;
    let set = |prefix: &str| -> Result<Vec<TenantId>, BenchError> {
        (0..sizes.tenants)
            .map(|i| world.tenant(&format!("{prefix}{i}")))
            .collect()
    };
    let (batched, per_event, raw) = (set("b")?, set("p")?, set("r")?);
    for group in [&batched, &per_event, &raw] {
        world.register(group).await?;
    }
    eprintln!("bench ingest: producing {} events twice", total);
    let publisher = KafkaPublisher::new(&world.config.kafka).map_err(fail)?;
    // One transaction per event runs two orders of magnitude slower: it gets the first
    // `per_event_share` of each tenant's events (the same shape), its rate is what counts.
    let per_event_n = (sizes.events_per_tenant / sizes.per_event_share).max(1);
    let per_event_total = (per_event_n * sizes.tenants) as i64;
    for t in &batched {
        produce(&publisher, t, events_for(t, sizes.events_per_tenant)).await?;
    }
    for t in &per_event {
        produce(&publisher, t, events_for(t, per_event_n)).await?;
    }
    publisher.flush(Duration::from_secs(10));
    let mut checks = Vec::new();

    // (b) the raw broker ceiling.
    let cpu = CpuMeter::start();
    let (broker_secs, read) = raw_consume(&world, &batched, total)?;
    let broker_cpu = cpu.busy_cores();
    checks.push(check(
        read == total,
        format!("plain consumer read all {total} records"),
    )?);
    let broker_eps = total as f64 / broker_secs;

    // (a) the raw database ceiling.
    let cpu = CpuMeter::start();
    let db_secs = raw_write(&world, &raw, sizes.events_per_tenant).await?;
    let db_cpu = cpu.busy_cores();
    let raw_rows = world
        .scalar(&format!(
            "select count(*) from processed_events where tenant_id like '{}-r%'",
            world.run_id
        ))
        .await?;
    checks.push(check(
        raw_rows == total,
        format!("raw writer committed {total} events"),
    )?);
    let db_eps = total as f64 / db_secs;

    // (d) the raw broker write ceiling: the announcements, straight to the broker.
    let cpu = CpuMeter::start();
    let relay_secs = raw_produce(&world, &raw, sizes.events_per_tenant).await?;
    let relay_cpu = cpu.busy_cores();
    let relay_eps = total as f64 / relay_secs;
    // Core-seconds each baseline spent per event; together the work the service must do.
    let per_event_core_s = |busy: f64, secs: f64| busy * secs / total as f64;
    let baselines_core_s =
        per_event_core_s(db_cpu, db_secs) + per_event_core_s(broker_cpu, broker_secs);
    let combined_core_s = baselines_core_s + per_event_core_s(relay_cpu, relay_secs);
    let combined_eps = machine_cores() / combined_core_s.max(1e-12);

    // The service, batched (the default configuration), then one transaction per event;
    // each run consumes only its own tenants (the others are suspended meanwhile).
    set_status(&world, per_event.iter().chain(raw.iter()), "suspended").await?;
    let (pipeline_secs, pipeline_cpu) = run_service(&world, &batched, total, &[]).await?;
    checks.extend(verify_applied(&world, &batched, total).await?);
    let pipeline_eps = total as f64 / pipeline_secs;
    set_status(&world, batched.iter(), "suspended").await?;
    set_status(&world, per_event.iter(), "active").await?;
    let (per_event_secs, per_event_cpu) = run_service(
        &world,
        &per_event,
        per_event_total,
        &[("ENABLEMENT__PIPELINE__MAX_BATCH_EVENTS", "1".into())],
    )
    .await?;
    checks.extend(verify_applied(&world, &per_event, per_event_total).await?);
    let per_event_eps = per_event_total as f64 / per_event_secs;

    let ceiling = db_eps.min(broker_eps);
    let figures = vec![
        Figure::plain("events", total as f64, "events"),
        Figure::plain("service (batched)", pipeline_eps, "events/s"),
        Figure::plain("(a) raw database ceiling", db_eps, "events/s"),
        Figure::plain("(b) raw broker ceiling", broker_eps, "events/s"),
        Figure::plain(
            "(c) service, one transaction per event",
            per_event_eps,
            "events/s",
        ),
        Figure::at_least("service / min(a, b)", pipeline_eps / ceiling, "ratio", 0.70),
        Figure::at_least("service / (c)", pipeline_eps / per_event_eps, "ratio", 4.0),
        Figure::plain(
            "(d) raw broker write ceiling (announcements)",
            relay_eps,
            "events/s",
        ),
        Figure::plain(
            "combined ceiling: all cores / CPU per event of (a) + (b) + (d)",
            combined_eps,
            "events/s",
        ),
        Figure::plain(
            "service / combined ceiling",
            pipeline_eps / combined_eps,
            "ratio",
        ),
        Figure::plain(
            "min(a, b) / combined ceiling (> 1: 0.70 x min(a, b) needs more than the machine)",
            ceiling / combined_eps,
            "ratio",
        ),
        Figure::plain("CPU busy during (d), whole machine", relay_cpu, "cores"),
        Figure::plain("CPU busy during (a), whole machine", db_cpu, "cores"),
        Figure::plain("CPU busy during (b), whole machine", broker_cpu, "cores"),
        Figure::plain(
            "CPU busy during the service run, whole machine",
            pipeline_cpu,
            "cores",
        ),
        Figure::plain("CPU busy during (c), whole machine", per_event_cpu, "cores"),
        Figure::plain(
            "CPU core-seconds per 10k events: (a) + (b)",
            baselines_core_s * 10_000.0,
            "core-s",
        ),
        Figure::plain(
            "CPU core-seconds per 10k events: (a) + (b) + (d)",
            combined_core_s * 10_000.0,
            "core-s",
        ),
        Figure::plain(
            "CPU core-seconds per 10k events: service",
            pipeline_cpu * pipeline_secs / total as f64 * 10_000.0,
            "core-s",
        ),
    ];
    world.cleanup().await;
    Ok(ScenarioReport {
        scenario: "ingest".into(),
        size: format!("{} tenants x {} events", sizes.tenants, sizes.events_per_tenant),
        seconds: 0.0,
        checks,
        figures,
        notes: vec![
            format!("(c) ran on the first 1/{} of each tenant's events ({per_event_total} events): one transaction per event is the slow path, its steady rate is the figure", sizes.per_event_share),
            "service time: from its first committed batch to the last event committed (startup and group join excluded; polled every 100 ms from /metrics)".into(),
            "CPU busy: whole-machine busy cores from /proc/stat over the phase (PostgreSQL, the broker, the service and the bench share the machine)".into(),
            "the service also relays every change to user_changed, invalidates the Redis roster and marks the readiness schedule; the raw writer does not".into(),
            "combined ceiling: the machine's cores divided by the core-seconds per event that (a), (b) and (d) used; the service must do all three on the same cores, so it cannot exceed it".into(),
        ],
    })
}

/// The cores the machine offers (the unit of the CPU figures).
fn machine_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Whole-machine CPU use between `start` and `busy_cores`, from /proc/stat.
struct CpuMeter {
    busy: u64,
    total: u64,
}

fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    // idle and iowait are fields 4 and 5.
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle.min(total), total)
}

impl CpuMeter {
    fn start() -> Self {
        let (busy, total) = cpu_ticks();
        Self { busy, total }
    }
    /// Average busy cores since `start`.
    fn busy_cores(&self) -> f64 {
        let (busy, total) = cpu_ticks();
        let share = (busy - self.busy) as f64 / (total - self.total).max(1) as f64;
        share * machine_cores()
    }
}

/// Reads every record of the tenants' inbound topics with a plain consumer; returns
/// (seconds, records).
fn raw_consume(
    world: &BenchWorld,
    tenants: &[TenantId],
    total: i64,
) -> Result<(f64, i64), BenchError> {
    let cfg = &world.config.kafka;
    let consumer: BaseConsumer = enablement::kafka::base_client_config(cfg)
        .set("group.id", format!("{}-raw", cfg.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(fail)?;
    let mut tpl = TopicPartitionList::new();
    for t in tenants {
        tpl.add_partition_offset(
            &t.topic(&cfg.topic_prefix, TopicKind::Scim),
            0,
            Offset::Beginning,
        )
        .map_err(fail)?;
    }
    consumer.assign(&tpl).map_err(fail)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut read = 0i64;
    let mut first: Option<Instant> = None;
    while read < total && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            m.map_err(fail)?;
            first.get_or_insert_with(Instant::now);
            read += 1;
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok((secs.max(1e-6), read))
}

/// Writes the pipeline's rows per event straight into PostgreSQL: 4 connections, one
/// transaction per `pipeline.max_batch_events` events (the service's batch), through the
/// same RLS scope.
async fn raw_write(
    world: &BenchWorld,
    tenants: &[TenantId],
    per_tenant: usize,
) -> Result<f64, BenchError> {
    let store = world.store().await?;
    // Prepared outside the timing: the rows each event becomes. Tenants interleaved, so
    // the 4 connections write 4 different tenants (a tenant's outbox writers take turns on
    // its sequence row, as the service's one-batch-per-tenant pipeline does).
    let mut per_tenant_chunks = Vec::new();
    for t in tenants {
        let rows: Vec<Value> = events_for(t, per_tenant)
            .into_iter()
            .filter_map(|(_, e)| serde_json::from_str(&e).ok())
            .collect();
        let chunks: Vec<Vec<Value>> = rows
            .chunks(world.config.pipeline.max_batch_events.max(1))
            .map(<[Value]>::to_vec)
            .collect();
        per_tenant_chunks.push((t.clone(), chunks.into_iter()));
    }
    let mut work = Vec::new();
    while per_tenant_chunks.iter().any(|(_, c)| c.len() > 0) {
        for (t, chunks) in per_tenant_chunks.iter_mut() {
            if let Some(chunk) = chunks.next() {
                work.push((t.clone(), chunk));
            }
        }
    }
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(work));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (queue, store) = (queue.clone(), store.clone());
        tasks.spawn(async move {
            loop {
                let Some((t, batch)) = queue.lock().await.pop() else {
                    return Ok::<(), BenchError>(());
                };
                write_batch(&store, &t, batch).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(fail)??;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn write_batch(
    store: &TenantScopedStore,
    t: &TenantId,
    batch: Vec<Value>,
) -> Result<(), BenchError> {
    let tenant = t.as_str().to_owned();
    store
        .scoped(t, move |tx, _| {
            Box::pin(async move {
                let ids: Vec<&str> = batch.iter().filter_map(|e| e["eventId"].as_str()).collect();
                let users: Vec<&str> = batch
                    .iter()
                    .filter_map(|e| e["user"]["id"].as_str())
                    .collect();
                let names: Vec<&str> = batch
                    .iter()
                    .filter_map(|e| e["user"]["userName"].as_str())
                    .collect();
                let emails: Vec<Option<&str>> = batch
                    .iter()
                    .map(|e| e["user"]["emails"][0]["value"].as_str())
                    .collect();
                let roles: Vec<&str> = batch.iter().map(|_| "rep").collect();
                let actives: Vec<bool> = batch.iter().map(|_| true).collect();
                let scims: Vec<Value> = batch.iter().map(|e| e["user"].clone()).collect();
                let versions: Vec<i64> = batch.iter().map(|_| 1).collect();
                let ats: Vec<time::OffsetDateTime> = batch
                    .iter()
                    .map(|e| {
                        e["occurredAt"]
                            .as_str()
                            .and_then(|s| {
                                time::OffsetDateTime::parse(
                                    s,
                                    &time::format_description::well_known::Rfc3339,
                                )
                                .ok()
                            })
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                    })
                    .collect();
                let payloads: Vec<String> = batch.iter().map(announcement).collect();
                let texts: Vec<&str> = payloads.iter().map(String::as_str).collect();
                tx.execute(
                    "insert into processed_events (tenant_id, event_id)
                     select $1, unnest($2::text[]) on conflict do nothing",
                    &[&tenant, &ids],
                )
                .await?;
                tx.execute(
                    "insert into users (tenant_id, user_id, user_name, email, role, active, scim,
                                        version, source_occurred_at, source_event_id)
                     select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                              $6::bool[], $7::jsonb[], $8::int8[],
                                              $9::timestamptz[], $10::text[])
                     on conflict (tenant_id, user_id) do update set
                         user_name = excluded.user_name, email = excluded.email,
                         scim = excluded.scim, version = excluded.version, updated_at = now()",
                    &[
                        &tenant, &users, &names, &emails, &roles, &actives, &scims, &versions,
                        &ats, &ids,
                    ],
                )
                .await?;
                outbox::append(tx, &tenant, TopicKind::UserChanged, &users, &texts, 0).await?;
                Ok(())
            })
        })
        .await
        .map_err(fail)
}

/// The `user_changed` announcement of a created user (the shape and size the service
/// writes to the outbox and relays), as JSON text.
fn announcement(e: &Value) -> String {
    json!({"type": "user.changed", "tenantId": e["tenantId"], "userId": e["user"]["id"],
           "change": "created", "version": 1, "user": e["user"]})
    .to_string()
}

/// Produces one `user.changed` announcement per event (the shape the service relays) to
/// the tenants' `user_changed` topics, all tenants at once, in `pipeline.outbox_batch`
/// chunks (the relay's largest publish); returns the seconds until the broker acknowledged
/// the last one.
async fn raw_produce(
    world: &BenchWorld,
    tenants: &[TenantId],
    per_tenant: usize,
) -> Result<f64, BenchError> {
    let publisher = KafkaPublisher::new(&world.config.kafka).map_err(fail)?;
    let mut work = Vec::new();
    for t in tenants {
        let records: Vec<Vec<OutboundRecord>> = events_for(t, per_tenant)
            .into_iter()
            .filter_map(|(user, e)| {
                let e: Value = serde_json::from_str(&e).ok()?;
                Some(OutboundRecord {
                    topic: TopicKind::UserChanged,
                    key: Some(user.into_bytes()),
                    payload: announcement(&e).into_bytes(),
                    headers: vec![],
                })
            })
            .collect::<Vec<_>>()
            .chunks(world.config.pipeline.outbox_batch.max(1))
            .map(<[OutboundRecord]>::to_vec)
            .collect();
        work.push((t.clone(), records));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (t, chunks) in work {
        let publisher = publisher.clone();
        tasks.spawn(async move {
            for chunk in chunks {
                publisher.publish(&t, chunk).await.map_err(fail)?;
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(fail)??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Starts the service (consumer role) and times its first to last applied event, read from
/// its own `enablement_scim_events_total` counters.
async fn run_service(
    world: &BenchWorld,
    tenants: &[TenantId],
    total: i64,
    extra: &[(&str, String)],
) -> Result<(f64, f64), BenchError> {
    let mut svc = ServiceProcess::start(world, "consumer", extra)?;
    svc.wait_ready(0, Duration::from_secs(120)).await?;
    let names: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    let applied = |m: &std::collections::HashMap<String, f64>| -> i64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("enablement_scim_events_total{")
                    && k.contains("outcome=\"applied\"")
                    && names.iter().any(|n| k.contains(&format!("tenant=\"{n}\"")))
            })
            .map(|(_, v)| *v as i64)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut first: Option<Instant> = None;
    let mut cpu: Option<CpuMeter> = None;
    loop {
        let n = applied(&svc.metrics().await);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
            cpu = Some(CpuMeter::start());
        }
        if n >= total {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(format!("only {n} of {total} events applied in time")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let busy = cpu.map_or(0.0, |c| c.busy_cores());
    svc.stop(Duration::from_secs(30));
    Ok((secs.max(1e-3), busy))
}

async fn set_status<'a>(
    world: &BenchWorld,
    tenants: impl Iterator<Item = &'a TenantId>,
    status: &str,
) -> Result<(), BenchError> {
    let names: Vec<String> = tenants.map(|t| t.to_string()).collect();
    world
        .owner
        .execute(
            "update tenants set status = $2 where tenant_id = any($1)",
            &[&names, &status],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Every event applied exactly once: one idempotency record, one user, one change each.
async fn verify_applied(
    world: &BenchWorld,
    tenants: &[TenantId],
    total: i64,
) -> Result<Vec<String>, BenchError> {
    let names: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    let count = |sql: &'static str| {
        let names = names.clone();
        async move {
            world
                .owner
                .query_one(sql, &[&names])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(fail)
        }
    };
    let processed =
        count("select count(*) from processed_events where tenant_id = any($1)").await?;
    let users = count("select count(*) from users where tenant_id = any($1)").await?;
    let changes =
        count("select count(*) from outbox where tenant_id = any($1) and topic = 'user_changed'")
            .await?;
    Ok(vec![
        check(
            processed == total,
            format!("{processed} of {total} events recorded once"),
        )?,
        check(users == total, format!("{users} users for {total} creates"))?,
        check(
            changes == total,
            format!("{changes} user_changed rows, one per event"),
        )?,
    ])
}
