//! [`JobPump`]: drains a tenant's durable upstream queue, one job at a time, under the
//! tenant's limiter (every MindTickle call of the tenant waits for a permit there).
//!
//! A job's effect and its completion commit in one transaction (`finish_sync_job`), so a
//! crash re-runs a job at most, never loses or doubles its effect. The pump tells its owner
//! what happened through [`PumpReport`] (the tests below listen with a closure).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SyncError;
use crate::metric_names as m;
use crate::ports::{Job, JobKind, ProgressSnapshot, RosterCache, TenantStore};
use crate::tenant::TenantId;
use crate::upstream::{MindTickleApi, TenantLimiter};

/// What a pump tells its owner.
#[derive(Debug)]
pub enum PumpReport {
    /// A job finished (its waiter, if any, gets the result).
    Finished(i64, Result<ProgressSnapshot, SyncError>),
    /// A job wrote outbox rows: relay them.
    OutboxWritten,
}

/// Drains the tenant's durable upstream queue, one job at a time, under its limiter.
pub struct JobPump {
    pub tenant: TenantId,
    pub store: Arc<dyn TenantStore>,
    pub upstream: Arc<dyn MindTickleApi>,
    /// Where a catalog refresh puts the catalog (the tenant's cache namespace).
    pub cache: Arc<dyn RosterCache>,
    pub limiter: Arc<TenantLimiter>,
    /// Tells the owner what happened (the tenant actor answers waiters, relays the outbox).
    pub report: Arc<dyn Fn(PumpReport) + Send + Sync>,
    pub wake: Arc<tokio::sync::Notify>,
    pub alive: CancellationToken,
    pub poll: Duration,
    /// A job running keeps the actor from being passivated.
    pub activity: Arc<super::Activity>,
}

impl JobPump {
    pub async fn run(self) {
        loop {
            let next = tokio::select! {
                _ = self.alive.cancelled() => return,
                next = self.store.next_job(&self.tenant) => next,
            };
            self.publish_depth().await;
            match next {
                Ok(Some(job)) => {
                    let _busy = self.activity.busy();
                    tokio::select! {
                        _ = self.alive.cancelled() => return,
                        _ = self.execute(job) => {}
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.alive.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.poll) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, error = %e, "reading the job queue failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn publish_depth(&self) {
        if let Ok(depths) = self.store.queue_depth(&self.tenant).await {
            for (priority, n) in depths {
                metrics::gauge!(m::UPSTREAM_QUEUE_DEPTH, "tenant" => self.tenant.as_str().to_owned(),
                    "priority" => priority.as_str())
                .set(n as f64);
            }
        }
    }

    async fn execute(&self, job: Job) {
        let (tenant, store, upstream) = (&self.tenant, &self.store, &self.upstream);
        match job.kind {
            JobKind::SyncProgress => {
                let fetched = self
                    .limiter
                    .run(|| upstream.user_courses(tenant, &job.subject))
                    .await;
                let result = match fetched {
                    Ok(courses) => match store.finish_sync_job(tenant, job.id, &courses).await {
                        Ok(snapshot) => Ok(snapshot),
                        Err(e) => {
                            // Still pending: retried on the next turn (effects not committed).
                            tracing::warn!(tenant = %tenant, error = %e, "finishing a sync job failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return;
                        }
                    },
                    Err(e) => {
                        let _ = store.finish_job(tenant, job.id, Some(&e.to_string())).await;
                        Err(SyncError::from(e))
                    }
                };
                let synced = result.is_ok();
                // Answer the waiter before relaying: the caller should not wait for Kafka.
                (self.report)(PumpReport::Finished(job.id, result));
                if synced {
                    (self.report)(PumpReport::OutboxWritten);
                }
            }
            JobKind::RefreshCatalog => {
                let fetched = self.limiter.run(|| upstream.catalog(tenant)).await;
                let error = match fetched {
                    Ok(courses) => match self.cache.store_catalog(tenant, &courses).await {
                        Ok(()) => None,
                        Err(e) => Some(format!("cache: {e}")),
                    },
                    Err(e) => Some(e.to_string()),
                };
                if let Err(e) = store.finish_job(tenant, job.id, error.as_deref()).await {
                    tracing::warn!(tenant = %tenant, error = %e, "finishing a catalog job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            JobKind::PushUser => {
                let pushed = self
                    .limiter
                    .run(|| upstream.push_user(tenant, &job.payload))
                    .await;
                let error = pushed.err().map(|e| e.to_string());
                if let Err(e) = store.finish_job(tenant, job.id, error.as_deref()).await {
                    tracing::warn!(tenant = %tenant, error = %e, "finishing a push job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeStore;
    use crate::ports::{JobPriority, NewJob};
    use crate::upstream::{
        CatalogCourse, CourseStatus, LimiterSettings, RosterUser, UpstreamCourse, UpstreamError,
    };
    use std::sync::Mutex;

    fn t() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    /// An upstream answering one course per user, or failing for user "down"; counts pushes.
    #[derive(Default)]
    struct Upstream {
        pushes: Mutex<Vec<serde_json::Value>>,
    }

    #[async_trait::async_trait]
    impl MindTickleApi for Upstream {
        async fn user_courses(
            &self,
            _: &TenantId,
            user: &str,
        ) -> Result<Vec<UpstreamCourse>, UpstreamError> {
            if user == "down" {
                return Err(UpstreamError::NotFound);
            }
            Ok(vec![UpstreamCourse {
                course_id: "c1".into(),
                title: "Pitch".into(),
                status: CourseStatus::Completed,
                quiz_score: Some(90.0),
                completed_at: None,
            }])
        }
        async fn catalog(&self, _: &TenantId) -> Result<Vec<CatalogCourse>, UpstreamError> {
            Ok(vec![])
        }
        async fn roster(&self, _: &TenantId) -> Result<Vec<RosterUser>, UpstreamError> {
            Ok(vec![])
        }
        async fn push_user(
            &self,
            _: &TenantId,
            change: &serde_json::Value,
        ) -> Result<(), UpstreamError> {
            self.pushes.lock().unwrap().push(change.clone());
            Ok(())
        }
    }

    fn job(priority: JobPriority, kind: JobKind, subject: &str) -> NewJob {
        NewJob {
            priority,
            kind,
            subject: subject.into(),
            payload: serde_json::json!({"userId": subject}),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_run_in_priority_order_and_report_their_outcome() {
        let store = Arc::new(FakeStore::default());
        let upstream = Arc::new(Upstream::default());
        use crate::ports::TenantStore as _;
        store
            .enqueue_job(&t(), &job(JobPriority::Background, JobKind::PushUser, "p1"))
            .await
            .unwrap();
        store
            .enqueue_job(
                &t(),
                &job(JobPriority::Interactive, JobKind::SyncProgress, "down"),
            )
            .await
            .unwrap();
        store
            .enqueue_job(
                &t(),
                &job(JobPriority::Interactive, JobKind::SyncProgress, "u1"),
            )
            .await
            .unwrap();
        let reports: Arc<Mutex<Vec<String>>> = Default::default();
        let seen = reports.clone();
        let alive = CancellationToken::new();
        let limits = LimiterSettings {
            requests_per_min: 600,
            ..LimiterSettings::default()
        };
        tokio::spawn(
            JobPump {
                tenant: t(),
                store: store.clone(),
                upstream: upstream.clone(),
                cache: Arc::new(crate::fakes::FakeCache::default()),
                limiter: Arc::new(TenantLimiter::for_tenant(&t(), limits)),
                report: Arc::new(move |r| {
                    seen.lock().unwrap().push(match r {
                        PumpReport::Finished(id, Ok(s)) => format!("{id} ok {}", s.user_id),
                        PumpReport::Finished(id, Err(_)) => format!("{id} failed"),
                        PumpReport::OutboxWritten => "outbox".into(),
                    })
                }),
                wake: Arc::new(tokio::sync::Notify::new()),
                alive: alive.clone(),
                poll: Duration::from_secs(10),
                activity: Default::default(),
            }
            .run(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while store
            .jobs
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, _, done)| !done)
        {
            assert!(tokio::time::Instant::now() < deadline, "jobs not drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        alive.cancel();
        let reports = reports.lock().unwrap().clone();
        // Interactive first (ids 2, 3), the background push last; a failed sync is
        // reported as failed and finished (not retried forever by the pump).
        assert_eq!(reports[0], "2 failed");
        assert_eq!(reports[1..3], ["3 ok u1".to_string(), "outbox".to_string()]);
        assert_eq!(
            upstream.pushes.lock().unwrap().len(),
            1,
            "the push ran once"
        );
    }
}
