//! Hostile input through the real pipeline: 10,000 generated payloads (mutated valid
//! events, NUL and control characters, deep nesting, huge numbers and strings, wrong types,
//! duplicate keys, far-future timestamps, another tenant's id, junk bytes) on one tenant's
//! topic, beside a well-behaved tenant. Nothing panics, nothing parks, every record is
//! applied or dead-lettered exactly once with a reason, and the other tenant is unaffected.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    assert_effects_once, eventually, push_raw, read_topic, scim_event, tenant, Service, TestEnv,
};
use enablement::actors::hostile::HostileEvents;
use enablement::actors::TopicKind;

const RECORDS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_payloads_are_applied_or_dead_lettered_once() {
    let env = TestEnv::new().await;
    let (hostile, good) = (tenant("hostile"), tenant("good"));
    env.add_tenant(&hostile).await;
    env.add_tenant(&good).await;
    let svc = Service::start(
        &env,
        &[("ENABLEMENT__PIPELINE__MAX_MESSAGE_BYTES", "65536")],
    );
    svc.wait_ready(&[&hostile, &good]).await;

    let mut gen = HostileEvents::new(0xbad5eed, hostile.as_str());
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let payloads: Vec<Vec<u8>> = (0..RECORDS)
        .map(|_| {
            let (p, kind) = gen.next_payload();
            *kinds.entry(format!("{kind:?}")).or_default() += 1;
            p
        })
        .collect();
    for chunk in payloads.chunks(1000) {
        push_raw(&env.config, &hostile, chunk).await;
    }
    let good_lines: Vec<String> = (0..300)
        .map(|i| {
            scim_event(
                good.as_str(),
                &format!("g{i}"),
                "CREATE",
                &format!("u{i}"),
                i,
                "g@g.test",
            )
        })
        .collect();
    common::push(&env.config, &good, &good_lines).await;

    eventually(
        "every hostile record settled",
        Duration::from_secs(300),
        || async {
            let done = env.processed(&hostile).await
                + env
                    .count(
                        "select count(*) from dead_letters where tenant_id = $1",
                        &hostile,
                    )
                    .await;
            (done >= RECORDS as i64).then_some(())
        },
    )
    .await;
    eventually(
        "the good tenant applied",
        Duration::from_secs(60),
        || async { (env.processed(&good).await == 300).then_some(()) },
    )
    .await;
    assert_effects_once(&env, &hostile, RECORDS as i64).await;
    assert_effects_once(&env, &good, 300).await;

    // Every dead letter carries a known reason, and the topic agrees with the table.
    let dlq = read_topic(&env.config, &hostile, TopicKind::Dlq).await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq {
        let reason = r["headers"]["dlq.reason"]
            .as_str()
            .unwrap_or("missing")
            .to_owned();
        *reasons.entry(reason).or_default() += 1;
    }
    let known = [
        "oversized",
        "invalid_json",
        "invalid_field",
        "missing_field",
        "unknown_operation",
        "tenant_mismatch",
        "unstorable",
        "implausible_timestamp",
        "database_refused",
    ];
    for reason in reasons.keys() {
        assert!(known.contains(&reason.as_str()), "unknown reason {reason}");
    }
    let applied = env.processed(&hostile).await;
    println!("hostile payloads by mutation: {kinds:?}");
    println!("outcomes: applied {applied}, dead-lettered by reason {reasons:?}");

    // Nothing panicked or parked; the instance stayed in service.
    let (status, body) = svc.get("/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tenants"]["not_running"], serde_json::json!([]), "{body}");
    assert_eq!(v["tenants"]["restarted"], serde_json::json!([]), "{body}");
    assert!(!svc.log().contains("panicked"), "a panic in the log");
}
