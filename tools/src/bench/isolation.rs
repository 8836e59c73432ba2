//! isolation: tenant B sends 10 events/s; its produce-to-commit latency is measured alone,
//! then while tenant A floods its own topic, in the same run. Also reports the service's RSS
//! before and during the flood, and the most of A's records the service ever held (the rest
//! of the backlog stays in the broker).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::harness::{
    fail, now_ms, percentile, pg, produce, scim_event, BenchWorld, ServiceProcess,
};
use super::{check, BenchError, Ctx, Figure, ScenarioReport};
use enablement::actors::ports::{EventPublisher, OutboundRecord};
use enablement::actors::{TenantId, TopicKind};
use enablement::kafka::KafkaPublisher;

/// Sends one event of B every 100 ms until `stop`; records each event id's send time (ms).
async fn trickle(
    publisher: KafkaPublisher,
    b: TenantId,
    prefix: String,
    sent: Arc<Mutex<HashMap<String, u128>>>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), BenchError> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let id = format!("{b}-{prefix}{i}");
        let user = format!("{prefix}{i}");
        let record = OutboundRecord {
            topic: TopicKind::Scim,
            key: Some(user.as_bytes().to_vec()),
            payload: scim_event(b.as_str(), &id, &user, 0).into_bytes(),
            headers: vec![],
        };
        sent.lock().await.insert(id, now_ms());
        publisher.publish(&b, vec![record]).await.map_err(fail)?;
        i += 1;
    }
}

/// Produce-to-commit latencies (ms, sorted) of the events sent, from `processed_at`.
async fn latencies(
    world: &BenchWorld,
    b: &TenantId,
    sent: &HashMap<String, u128>,
) -> Result<Vec<f64>, BenchError> {
    let ids: Vec<&String> = sent.keys().collect();
    let rows = world
        .owner
        .query(
            "select event_id, (extract(epoch from processed_at) * 1000)::float8
               from processed_events where tenant_id = $1 and event_id = any($2)",
            &[&b.as_str(), &ids],
        )
        .await
        .map_err(pg)?;
    let mut out: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let at: f64 = r.get(1);
            sent.get(r.get::<_, &str>(0)).map(|s| at - *s as f64)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    Ok(out)
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    let (flood, alone_secs) = if ctx.smoke() {
        (2_000usize, 3u64)
    } else {
        (200_000usize, 30u64)
    };
    let world = BenchWorld::new(ctx.config, ctx.config_path, "isolation", ctx.keep).await?;
    let (a, b) = (world.tenant("flood")?, world.tenant("quiet")?);
    world.register(&[a.clone(), b.clone()]).await?;
    let mut svc = ServiceProcess::start(&world, "consumer", &[])?;
    svc.wait_ready(2, Duration::from_secs(120)).await?;
    // A's flood and B's trickle come from different systems in production: each gets its
    // own producer, so B's records never queue behind A's in the bench's own client.
    let publisher = KafkaPublisher::new(&world.config.kafka).map_err(fail)?;
    let b_publisher = KafkaPublisher::new(&world.config.kafka).map_err(fail)?;
    let mut checks = Vec::new();

    // B alone.
    let alone = Arc::new(Mutex::new(HashMap::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(trickle(
        b_publisher.clone(),
        b.clone(),
        "alone".into(),
        alone.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(alone_secs)).await;
    stop.cancel();
    task.await.map_err(fail)??;
    let alone = alone.lock().await.clone();
    super::harness::wait_for("B's events applied", Duration::from_secs(60), || async {
        latencies(&world, &b, &alone)
            .await
            .ok()
            .filter(|l| l.len() == alone.len())
    })
    .await?;
    let lat_alone = latencies(&world, &b, &alone).await?;
    let (rss_before, _) = svc.rss_kib();

    // B while A floods.
    let during = Arc::new(Mutex::new(HashMap::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(trickle(
        b_publisher.clone(),
        b.clone(),
        "flood".into(),
        during.clone(),
        stop.clone(),
    ));
    let events: Vec<(String, String)> = (0..flood)
        .map(|i| {
            let user = format!("u{i}");
            (
                user.clone(),
                scim_event(a.as_str(), &format!("{a}-e{i}"), &user, 0),
            )
        })
        .collect();
    let flood_started = Instant::now();
    produce(&publisher, &a, events).await?;
    let produced_secs = flood_started.elapsed().as_secs_f64();
    let backlog_key = format!("enablement_tenant_backlog_messages{{tenant=\"{a}\"}}");
    let applied_key = format!("enablement_scim_events_total{{tenant=\"{a}\",outcome=\"applied\"}}");
    let mut peak_rss = 0;
    let mut peak_backlog = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let m = svc.metrics().await;
        peak_backlog = peak_backlog.max(m.get(&backlog_key).copied().unwrap_or(0.0));
        peak_rss = peak_rss.max(svc.rss_kib().0);
        if m.get(&applied_key).copied().unwrap_or(0.0) as usize >= flood {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail("the flood was not applied in time"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.map_err(fail)??;
    let during = during.lock().await.clone();
    super::harness::wait_for("B's events applied", Duration::from_secs(60), || async {
        latencies(&world, &b, &during)
            .await
            .ok()
            .filter(|l| l.len() == during.len())
    })
    .await?;
    let lat_flood = latencies(&world, &b, &during).await?;
    let a_processed = world
        .scalar(&format!(
            "select count(*) from processed_events where tenant_id = '{a}'"
        ))
        .await?;
    let b_processed = world
        .scalar(&format!(
            "select count(*) from processed_events where tenant_id = '{b}'"
        ))
        .await?;
    checks.push(check(
        a_processed == flood as i64,
        format!("A: {a_processed} of {flood} events applied once"),
    )?);
    let b_sent = (alone.len() + during.len()) as i64;
    checks.push(check(
        b_processed == b_sent,
        format!("B: {b_processed} of {b_sent} events applied once"),
    )?);
    let (_, hwm) = svc.rss_kib();
    svc.stop(Duration::from_secs(30));

    let p99_alone = percentile(&lat_alone, 99.0);
    let p99_flood = percentile(&lat_flood, 99.0);
    let figures = vec![
        Figure::plain("B events alone", alone.len() as f64, "events"),
        Figure::plain("B events during the flood", during.len() as f64, "events"),
        Figure::plain("B p50 alone", percentile(&lat_alone, 50.0), "ms"),
        Figure::plain("B p99 alone", p99_alone, "ms"),
        Figure::plain("B p50 during A's flood", percentile(&lat_flood, 50.0), "ms"),
        Figure::plain("B p99 during A's flood", p99_flood, "ms"),
        Figure::at_most(
            "B p99 flood / alone",
            p99_flood / p99_alone.max(1.0),
            "ratio",
            2.0,
        ),
        Figure::plain("A flood applied", flood as f64 / flood_secs, "events/s"),
        Figure::plain("A flood produced", flood as f64 / produced_secs, "events/s"),
        Figure::plain(
            "A records held by the service, peak",
            peak_backlog,
            "records",
        ),
        Figure::plain(
            "service RSS before the flood",
            rss_before as f64 / 1024.0,
            "MiB",
        ),
        Figure::plain(
            "service RSS peak during the flood",
            peak_rss as f64 / 1024.0,
            "MiB",
        ),
        Figure::plain(
            "service RSS high-water mark (VmHWM)",
            hwm as f64 / 1024.0,
            "MiB",
        ),
    ];
    world.cleanup().await;
    Ok(ScenarioReport {
        scenario: "isolation".into(),
        size: format!("A floods {flood}; B 10 events/s, {alone_secs} s alone then through the flood"),
        seconds: 0.0,
        checks,
        figures,
        notes: vec![
            "latency: from just before B's producer call to processed_at (the committing transaction's start) of that event".into(),
            "p99 ratios below 1 ms of p99 alone use 1 ms as the denominator".into(),
        ],
    })
}
