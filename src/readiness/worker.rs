//! The `aggregator` role: `concurrency` loops, each running the oldest due tenant that no
//! other transaction is aggregating. A huge tenant occupies one loop for one run; every other
//! due tenant is taken by the next free loop (here or in another aggregator process), so no
//! tenant's report waits behind another's beyond one run.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Aggregator;

/// Runs until `shutdown` is cancelled; an aggregation in flight finishes first.
pub async fn run(aggregator: Aggregator, shutdown: CancellationToken) {
    let loops = aggregator.settings().concurrency.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..loops {
        let (aggregator, shutdown) = (aggregator.clone(), shutdown.clone());
        tasks.spawn(async move { worker_loop(aggregator, shutdown).await });
    }
    tracing::info!(loops, "readiness aggregator running");
    while tasks.join_next().await.is_some() {}
}

async fn worker_loop(aggregator: Aggregator, shutdown: CancellationToken) {
    let idle = aggregator.settings().poll_interval;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let pause = match aggregator.run_next_due().await {
            Ok(Some(_)) => continue,
            Ok(None) => idle,
            Err(e) => {
                tracing::warn!(error = %e, "looking for due readiness work failed");
                idle.max(Duration::from_secs(1))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
