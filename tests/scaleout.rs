//! Several `serve --role consumer` instances in one consumer group, on this test's own
//! broker: the tenants' partitions spread over the instances with the cooperative-sticky
//! assignor; an instance joining, leaving (SIGTERM) or dying (SIGKILL) moves only the
//! partitions that change owner; a tenant added while they run starts no other tenant's
//! actor again. Afterwards every event is applied once and every effect published once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{assert_effects_once, eventually, push, scim_event, tenant, Broker, Service, TestEnv};
use enablement::actors::TenantId;
use serde_json::Value;

fn chunk(t: &TenantId, from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| {
            let op = if i % 5 == 4 { "UPDATE" } else { "CREATE" };
            scim_event(
                t.as_str(),
                &format!("s{i}"),
                op,
                &format!("u{}", i % 200),
                i as u64,
                &format!("s{i}@s.test"),
            )
        })
        .collect()
}

fn instance(env: &TestEnv, broker: &Broker, id: &str) -> Service {
    Service::start_role(
        env,
        "consumer",
        &[
            ("ENABLEMENT__KAFKA__BROKERS", broker.address().as_str()),
            ("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", id),
            ("ENABLEMENT__KAFKA__STATISTICS_INTERVAL_MS", "1000"),
            ("ENABLEMENT__PIPELINE__MAX_BATCH_EVENTS", "50"),
        ],
    )
}

/// The tenants an instance owns and runs: `consumer_group.owned` from its `/readyz`, when
/// the supervisor runs exactly those (no tenant restarting or parked).
async fn running_tenants(svc: &Service) -> Option<Vec<String>> {
    let (_, body) = svc.get("/readyz").await?;
    let v: Value = serde_json::from_str(&body).ok()?;
    let owned: Vec<String> = v["consumer_group"]["owned"]
        .as_array()?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let running = v["tenants"]["running"].as_u64()? as usize
        + v["tenants"]["passivated"].as_u64().unwrap_or(0) as usize;
    let not_running = v["tenants"]["not_running"].as_array()?.len();
    (running == owned.len() && not_running == 0).then_some(owned)
}

/// Waits until every tenant runs on exactly one of `instances` (and each instance runs
/// exactly what the group assigned it); returns tenant -> instance index.
async fn each_tenant_on_one(
    instances: &[(usize, &Service)],
    tenants: &[TenantId],
    step: &str,
) -> BTreeMap<String, usize> {
    eventually(step, Duration::from_secs(120), || async {
        let mut owner: BTreeMap<String, usize> = BTreeMap::new();
        for (i, svc) in instances {
            for t in running_tenants(svc).await? {
                if owner.insert(t, *i).is_some() {
                    return None; // on two instances at once
                }
            }
        }
        tenants
            .iter()
            .all(|t| owner.contains_key(t.as_str()))
            .then_some(owner)
    })
    .await
}

async fn applied(env: &TestEnv, tenants: &[TenantId]) -> i64 {
    let mut n = 0;
    for t in tenants {
        n += env.processed(t).await;
    }
    n
}

async fn applied_at_least(env: &TestEnv, tenants: &[TenantId], n: i64, what: &str) {
    eventually(what, Duration::from_secs(240), || async {
        (applied(env, tenants).await >= n).then_some(())
    })
    .await;
}

/// `enablement_actor_starts_total` per tenant, summed over the instances.
async fn actor_starts(instances: &[&Service], tenants: &[TenantId]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for svc in instances {
        let m = svc.metrics().await;
        for t in tenants {
            let key = format!("enablement_actor_starts_total{{tenant=\"{t}\"}}");
            *out.entry(t.to_string()).or_insert(0.0) += m.get(&key).copied().unwrap_or(0.0);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_tenants_and_moves_lose_nothing() {
    let broker = Broker::start(false);
    let mut env = TestEnv::new().await;
    env.config.kafka.brokers = broker.address();
    let mut tenants: Vec<TenantId> = (0..5).map(|_| tenant("scale")).collect();
    for t in &tenants {
        env.add_tenant(t).await;
    }
    const CHUNK: usize = 400;
    let mut pushed = 0usize;
    let push_chunk = |tenants: Vec<TenantId>, from: usize| {
        let config = env.config.clone();
        async move {
            for t in &tenants {
                push(&config, t, &chunk(t, from, from + CHUNK)).await;
            }
        }
    };

    // Three instances share five tenants.
    let mut a = instance(&env, &broker, "scale-a");
    let b = instance(&env, &broker, "scale-b");
    let mut c = instance(&env, &broker, "scale-c");
    push_chunk(tenants.clone(), pushed).await;
    pushed += CHUNK;
    let owners = each_tenant_on_one(&[(0, &a), (1, &b), (2, &c)], &tenants, "3 instances").await;
    let spread: std::collections::BTreeSet<usize> = owners.values().copied().collect();
    assert_eq!(spread.len(), 3, "every instance got tenants: {owners:?}");
    applied_at_least(&env, &tenants, (tenants.len() * pushed) as i64, "chunk 1").await;

    // A tenant added while they run: no other tenant's actor starts again.
    let before = actor_starts(&[&a, &b, &c], &tenants).await;
    let added = tenant("scale");
    env.add_tenant(&added).await;
    push(&env.config, &added, &chunk(&added, 0, pushed)).await;
    tenants.push(added.clone());
    each_tenant_on_one(&[(0, &a), (1, &b), (2, &c)], &tenants, "the added tenant").await;
    applied_at_least(
        &env,
        &tenants,
        (tenants.len() * pushed) as i64,
        "added tenant",
    )
    .await;
    let after = actor_starts(&[&a, &b, &c], &tenants[..tenants.len() - 1]).await;
    assert_eq!(before, after, "adding a tenant restarted no other tenant");

    // A fourth instance joins while a chunk flows: it takes over some tenants.
    push_chunk(tenants.clone(), pushed).await;
    pushed += CHUNK;
    let d = instance(&env, &broker, "scale-d");
    let owners = eventually(
        "the new instance owns tenants",
        Duration::from_secs(120),
        || async {
            let owners = each_tenant_on_one(
                &[(0, &a), (1, &b), (2, &c), (3, &d)],
                &tenants,
                "4 instances",
            )
            .await;
            owners.values().any(|i| *i == 3).then_some(owners)
        },
    )
    .await;
    // Per-tenant gauges are reported by the owner only (a moved tenant's series are gone
    // from the instance it left).
    for (i, svc) in [(0, &a), (1, &b), (2, &c), (3, &d)] {
        let text = svc.get("/metrics").await.expect("metrics").1;
        for (t, owner) in &owners {
            if *owner != i {
                let series = format!("enablement_tenant_backlog_messages{{tenant=\"{t}\"}}");
                assert!(!text.contains(&series), "instance {i} reports {series}");
            }
        }
    }

    // One instance leaves with SIGTERM while a chunk flows (drains, commits, exits).
    push_chunk(tenants.clone(), pushed).await;
    pushed += CHUNK;
    assert!(a.terminate(Duration::from_secs(60)).success());
    each_tenant_on_one(&[(1, &b), (2, &c), (3, &d)], &tenants, "after SIGTERM").await;

    // One instance is SIGKILLed mid-flood: its tenants move after the session timeout.
    push_chunk(tenants.clone(), pushed).await;
    pushed += CHUNK;
    let started = Instant::now();
    c.kill();
    let owners = each_tenant_on_one(&[(1, &b), (3, &d)], &tenants, "after SIGKILL").await;
    println!(
        "after SIGKILL: every tenant running again in {:?}: {owners:?}",
        started.elapsed()
    );

    let total = (tenants.len() * pushed) as i64;
    applied_at_least(&env, &tenants, total, "everything").await;
    for t in &tenants {
        assert_eq!(env.processed(t).await, pushed as i64, "{t}: applied once");
        assert_effects_once(&env, t, pushed as i64).await;
    }
}

/// `GET` with a tenant token: status and JSON body.
async fn tenant_get(svc: &Service, path: &str, token: &str) -> (u16, Value) {
    let (status, _, body) = svc.call(reqwest::Method::GET, path, token).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_serves_any_tenants_api() {
    let broker = Broker::start(false);
    let mut env = TestEnv::new().await;
    env.config.kafka.brokers = broker.address();
    let sim = common::start_sim(enablement_tools::simulator::SimSettings::default()).await;
    let store = env.store().await;
    let tenants: Vec<TenantId> = (0..2).map(|_| tenant("api")).collect();
    let mut tokens = Vec::new();
    for t in &tenants {
        tokens.push(env.add_tenant(t).await);
        let secret = enablement_tools::simulator::dev_secret(t.as_str());
        store
            .set_upstream_credentials(t, t.as_str(), &secret)
            .await
            .expect("credentials");
        push(&env.config, t, &chunk(t, 0, 3)).await;
    }
    let start = |id: &str| {
        Service::start_role(
            &env,
            "all",
            &[
                ("ENABLEMENT__KAFKA__BROKERS", broker.address().as_str()),
                ("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", id),
                ("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str()),
            ],
        )
    };
    let instances = [start("api-a"), start("api-b")];
    let owners = eventually(
        "one tenant on each instance",
        Duration::from_secs(120),
        || async {
            let owners = each_tenant_on_one(
                &[(0, &instances[0]), (1, &instances[1])],
                &tenants,
                "tenants assigned",
            )
            .await;
            let spread: std::collections::BTreeSet<usize> = owners.values().copied().collect();
            (spread.len() == 2).then_some(owners)
        },
    )
    .await;
    applied_at_least(&env, &tenants, 6, "users provisioned").await;
    for (t, token) in tenants.iter().zip(&tokens) {
        // The instance that does not run this tenant's actor.
        let other = &instances[1 - owners[t.as_str()]];
        let courses = format!("/api/tenants/{t}/courses");
        let (status, body) = tenant_get(other, &courses, token).await;
        assert_eq!(status, 202, "queued for the owner: {body}");
        let body = eventually(
            "catalog refreshed by the owner",
            Duration::from_secs(60),
            || async {
                let (status, body) = tenant_get(other, &courses, token).await;
                (status == 200).then_some(body)
            },
        )
        .await;
        assert_eq!(body["courses"].as_array().map(Vec::len), Some(6), "{body}");

        let user = "u0";
        let sync = format!("/api/tenants/{t}/users/{user}/sync-progress");
        let (status, _, body) = other.call(reqwest::Method::POST, &sync, token).await;
        assert_eq!(status, 202, "queued for the owner: {body}");
        eventually(
            "progress synced by the owner",
            Duration::from_secs(60),
            || async { (tenant_get(other, &sync, token).await.0 == 200).then_some(()) },
        )
        .await;
        let (status, body) = tenant_get(other, &format!("/api/tenants/{t}/users"), token).await;
        assert_eq!(status, 200, "{body}");
    }
    let stats: Value = reqwest::get(format!("{sim}/admin/stats"))
        .await
        .expect("sim stats")
        .json()
        .await
        .expect("stats json");
    for t in &tenants {
        assert_eq!(
            stats["organisations"][t.as_str()]["limit_violations"],
            0,
            "{stats}"
        );
    }
}
