//! Retention against the real database: old rows go in small batches, per tenant, only
//! what has outlived its use (an unrelayed outbox row or a pending job stays), another
//! tenant's rows are untouched, and an event replayed after its idempotency record expired
//! is still a no-op.

mod common;

use std::time::Duration;

use common::{scim_event, tenant, TestEnv};
use enablement::actors::ports::{ScimBatch, TenantStore};
use enablement::actors::scim::{parse_event, ParseLimits};
use enablement::actors::TenantId;
use enablement::config::{Keep, RetentionSettings};
use enablement::retention::purge_tenant;

fn batch(t: &TenantId, lines: &[String]) -> ScimBatch {
    let limits = ParseLimits::at(
        time::OffsetDateTime::now_utc(),
        1 << 20,
        Duration::from_secs(3600),
    );
    ScimBatch {
        events: lines
            .iter()
            .map(|l| parse_event(t, l.as_bytes(), limits).expect("valid"))
            .collect(),
        ..Default::default()
    }
}

fn keep_nothing(batch_rows: i64) -> RetentionSettings {
    RetentionSettings {
        interval: Duration::from_secs(1),
        batch_rows,
        keep: Keep {
            outbox_relayed: Duration::ZERO,
            finished_jobs: Duration::ZERO,
            security_events: Duration::ZERO,
            idempotency: Duration::ZERO,
            dead_letters: Duration::ZERO,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_rows_go_in_batches_per_tenant_and_a_replay_stays_a_no_op() {
    let env = TestEnv::new().await;
    let (a, b) = (tenant("ret-a"), tenant("ret-b"));
    env.add_tenant(&a).await;
    env.add_tenant(&b).await;
    let store = env.store().await;
    let lines = |t: &TenantId| -> Vec<String> {
        (0..25)
            .map(|i| {
                scim_event(
                    t.as_str(),
                    &format!("e{i}"),
                    "CREATE",
                    &format!("u{i}"),
                    i,
                    "r@r.test",
                )
            })
            .collect()
    };
    for t in [&a, &b] {
        store
            .apply_scim_batch(t, batch(t, &lines(t)), 0)
            .await
            .expect("apply");
    }
    // A's first 20 outbox rows were relayed; 21-25 were not (they must stay).
    store.mark_outbox_relayed(&a, 20).await.expect("cursor");
    store.mark_outbox_relayed(&b, 25).await.expect("cursor");
    // Without a tenant scope the service role deletes nothing (RLS fails closed).
    let pool = env.app_pool().await;
    let conn = pool.get().await.expect("conn");
    let n = conn
        .execute("delete from processed_events", &[])
        .await
        .expect("delete");
    assert_eq!(n, 0, "no scope, no rows");
    drop(conn);

    let deleted = purge_tenant(&store, &a, &keep_nothing(7))
        .await
        .expect("purge");
    let of = |table: &str| deleted.iter().find(|(t, _)| *t == table).map(|(_, n)| *n);
    assert_eq!(
        of("processed_events"),
        Some(25),
        "in batches of 7 until short"
    );
    assert_eq!(of("outbox"), Some(20), "only relayed rows");
    assert_eq!(env.processed(&a).await, 0);
    assert_eq!(
        env.count("select count(*) from outbox where tenant_id = $1", &a)
            .await,
        5
    );
    // B is untouched.
    assert_eq!(env.processed(&b).await, 25);
    assert_eq!(
        env.count("select count(*) from outbox where tenant_id = $1", &b)
            .await,
        25
    );

    // A replay of A's events after their idempotency records expired changes nothing:
    // the stored occurredAt makes each one stale or unchanged.
    let report = store
        .apply_scim_batch(&a, batch(&a, &lines(&a)), 0)
        .await
        .expect("replay");
    assert_eq!(report.applied, 0, "{report:?}");
    assert!(report.outbox.is_empty(), "no effect published again");
    assert_eq!(
        env.count("select count(*) from outbox where tenant_id = $1", &a)
            .await,
        5
    );
}
