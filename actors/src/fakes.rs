//! In-memory adapters for the actor unit tests: a replayable log per tenant, a store that
//! runs the real [`crate::scim::plan_batch`] rules, and recording publisher and cache.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::ports::*;
use crate::scim::{plan_batch, StoredUser};
use crate::tenant::{TenantId, TopicKind};

#[derive(Default)]
pub struct FakeLog {
    pub records: Mutex<Vec<InboundRecord>>,
    pub appended: Notify,
    /// Next offset to consume, as stored by the actor ("committed").
    pub stored: Mutex<i64>,
    pub max_buffered_seen: AtomicUsize,
}

impl FakeLog {
    pub fn append(&self, payload: Vec<u8>) {
        let mut recs = self.records.lock().unwrap();
        let offset = recs.len() as i64;
        recs.push(InboundRecord {
            offset,
            key: None,
            payload,
            headers: vec![],
        });
        drop(recs);
        self.appended.notify_waiters();
    }
    pub fn stored(&self) -> i64 {
        *self.stored.lock().unwrap()
    }
}

pub struct FakeFeed {
    log: Arc<FakeLog>,
    pos: Mutex<usize>,
    held: Arc<Held>,
}

/// Records fetched and not yet stored, across every feed of a [`FakeFeeds`].
#[derive(Default)]
pub struct Held {
    pub now: AtomicUsize,
    pub max: AtomicUsize,
}

#[async_trait]
impl PartitionFeed for FakeFeed {
    async fn recv(&self) -> Result<InboundRecord, FeedError> {
        loop {
            let notified = self.log.appended.notified();
            {
                let recs = self.log.records.lock().unwrap();
                let mut pos = self.pos.lock().unwrap();
                if *pos < recs.len() {
                    let rec = recs[*pos].clone();
                    *pos += 1;
                    let buffered = *pos - *self.log.stored.lock().unwrap() as usize;
                    self.log
                        .max_buffered_seen
                        .fetch_max(buffered, Ordering::SeqCst);
                    let all = self.held.now.fetch_add(1, Ordering::SeqCst) + 1;
                    self.held.max.fetch_max(all, Ordering::SeqCst);
                    return Ok(rec);
                }
            }
            notified.await;
        }
    }
    fn store_offset(&self, next_offset: i64) -> Result<(), FeedError> {
        let mut s = self.log.stored.lock().unwrap();
        if next_offset > *s {
            let _ = self
                .held
                .now
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_sub((next_offset - *s) as usize))
                });
        }
        *s = (*s).max(next_offset);
        Ok(())
    }
}

#[derive(Default)]
pub struct FakeFeeds {
    pub logs: Mutex<HashMap<TenantId, Arc<FakeLog>>>,
    pub held: Arc<Held>,
}

impl FakeFeeds {
    pub fn log(&self, tenant: &TenantId) -> Arc<FakeLog> {
        self.logs
            .lock()
            .unwrap()
            .entry(tenant.clone())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl FeedSource for FakeFeeds {
    async fn open(&self, tenant: &TenantId) -> Result<Arc<dyn PartitionFeed>, FeedError> {
        let log = self.log(tenant);
        let pos = log.stored() as usize;
        Ok(Arc::new(FakeFeed {
            log,
            pos: Mutex::new(pos),
            held: self.held.clone(),
        }))
    }

    async fn until_record(&self, tenant: &TenantId) -> Result<(), FeedError> {
        let log = self.log(tenant);
        loop {
            let notified = log.appended.notified();
            if log.records.lock().unwrap().len() > log.stored() as usize {
                return Ok(());
            }
            notified.await;
        }
    }
}

#[derive(Default)]
pub struct TenantData {
    pub users: HashMap<String, StoredUser>,
    pub processed: HashSet<String>,
    /// The outbox in `seq` order (seq = position + 1).
    pub outbox: Vec<OutboxRecord>,
    /// The stored relay cursor.
    pub relayed_seq: i64,
    pub security: Vec<SecurityEvent>,
    /// Source offsets dead-lettered (the database's unique key), with their reason.
    pub dead_letters: HashMap<i64, &'static str>,
}

#[derive(Default)]
pub struct FakeStore {
    pub data: Mutex<HashMap<TenantId, TenantData>>,
    /// Batches containing a user with this userName fail (a poison event).
    pub poison_user_name: Mutex<Option<String>>,
    /// While set, every batch waits here (lets tests hold a tenant's actor busy).
    pub gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Batches that reached the gate (waiting there while it is closed).
    pub gated: AtomicUsize,
    /// Reads of pending outbox rows (relay passes over the table).
    pub outbox_reads: AtomicUsize,
    pub batches: AtomicUsize,
    /// Simulated database time per batch.
    pub batch_delay: Mutex<std::time::Duration>,
    /// The registry's per-tenant quota override.
    pub quota: Mutex<Option<u32>>,
    /// The next this many batches fail as if the database were down (transient).
    pub transient_failures: AtomicUsize,
    /// Every batch of these tenants is refused, even one holding only dead letters.
    pub refuse_tenants: Mutex<HashSet<TenantId>>,
    /// Panic once right after the next commit (a crash between commit and offset store).
    pub crash_after_commit: std::sync::atomic::AtomicBool,
    /// Batch transactions attempted, committed or not.
    pub attempts: AtomicUsize,
    /// The next this many cursor stores fail as if the database were down.
    pub cursor_failures: AtomicUsize,
    /// (tenant, id, job, done)
    pub jobs: Mutex<Vec<(TenantId, i64, NewJob, bool)>>,
    /// The next this many queue-depth reads fail (a pool exhausted by a mass assignment).
    pub queue_depth_failures: AtomicUsize,
    /// Queue-depth reads answered, failed or not.
    pub queue_depth_reads: AtomicUsize,
}

impl FakeStore {
    pub fn users(&self, tenant: &TenantId) -> HashMap<String, StoredUser> {
        self.data
            .lock()
            .unwrap()
            .get(tenant)
            .map(|d| d.users.clone())
            .unwrap_or_default()
    }
    pub fn with<R>(&self, tenant: &TenantId, f: impl FnOnce(&TenantData) -> R) -> R {
        let mut data = self.data.lock().unwrap();
        f(data.entry(tenant.clone()).or_default())
    }
    /// An outbox row written by another writer (a progress sync, an aggregator).
    pub fn append_outbox(&self, tenant: &TenantId, topic: TopicKind, key: &str, payload: &[u8]) {
        let mut all = self.data.lock().unwrap();
        let data = all.entry(tenant.clone()).or_default();
        let seq = data.outbox.len() as i64 + 1;
        data.outbox.push(OutboxRecord {
            seq,
            topic,
            key: Some(key.as_bytes().to_vec()),
            payload: payload.to_vec(),
            headers: vec![],
        });
    }
}

#[async_trait]
impl TenantStore for FakeStore {
    async fn apply_scim_batch(
        &self,
        tenant: &TenantId,
        batch: ScimBatch,
        relayed_through: i64,
    ) -> Result<BatchReport, StoreError> {
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            self.gated.fetch_add(1, Ordering::SeqCst);
            let _permit = gate.acquire().await;
        }
        let delay = *self.batch_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let outage =
            self.transient_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if outage.is_ok() {
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        if self.refuse_tenants.lock().unwrap().contains(tenant) {
            return Err(StoreError::Query("refused for this tenant".into()));
        }
        let poison = self.poison_user_name.lock().unwrap().clone();
        if let Some(p) = poison {
            if batch.events.iter().any(|e| e.user.user_name == p) {
                return Err(StoreError::Query("poisoned".into()));
            }
            if batch
                .events
                .iter()
                .any(|e| e.user.user_name == format!("{p}-panic"))
            {
                panic!("injected panic in the store");
            }
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut all = self.data.lock().unwrap();
        let data = all.entry(tenant.clone()).or_default();
        let plan = plan_batch(
            data.users.clone(),
            &data.processed,
            batch.events,
            batch.delete_policy,
        );
        let mut report = BatchReport::default();
        for (id, outcome) in &plan.outcomes {
            report.count(*outcome);
            data.processed.insert(id.clone());
        }
        for u in plan.upserts {
            data.users.insert(u.user_id.clone(), u);
        }
        data.relayed_seq = data.relayed_seq.max(relayed_through);
        for c in plan.changes {
            let record = OutboxRecord {
                seq: data.outbox.len() as i64 + 1,
                topic: TopicKind::UserChanged,
                key: Some(c.user_id.clone().into_bytes()),
                payload: serde_json::to_vec(&c).unwrap(),
                headers: vec![],
            };
            data.outbox.push(record.clone());
            report.outbox.push(record);
        }
        for d in batch.dead_letters {
            if data
                .dead_letters
                .insert(d.source_offset, d.reason)
                .is_some()
            {
                continue; // dead-lettered by an earlier run of this batch
            }
            let record = OutboxRecord {
                seq: data.outbox.len() as i64 + 1,
                topic: TopicKind::Dlq,
                key: d.record.key,
                payload: d.record.payload,
                headers: d.record.headers,
            };
            report.dead_lettered += 1;
            data.outbox.push(record.clone());
            report.outbox.push(record);
        }
        data.security.extend(batch.security_events);
        drop(all);
        if self.crash_after_commit.swap(false, Ordering::SeqCst) {
            panic!("injected crash after commit");
        }
        Ok(report)
    }

    async fn pending_outbox(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        self.outbox_reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.with(tenant, |d| {
            let after = after.max(d.relayed_seq);
            d.outbox
                .iter()
                .filter(|r| r.seq > after)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn enqueue_job(&self, tenant: &TenantId, job: &NewJob) -> Result<i64, StoreError> {
        let mut jobs = self.jobs.lock().unwrap();
        let id = jobs.len() as i64 + 1;
        jobs.push((tenant.clone(), id, job.clone(), false));
        Ok(id)
    }

    async fn next_job(&self, tenant: &TenantId) -> Result<Option<Job>, StoreError> {
        let jobs = self.jobs.lock().unwrap();
        Ok(jobs
            .iter()
            .filter(|(t, _, _, done)| t == tenant && !done)
            .min_by_key(|(_, id, j, _)| (j.priority, *id))
            .map(|(_, id, j, _)| Job {
                id: *id,
                kind: j.kind,
                subject: j.subject.clone(),
                payload: j.payload.clone(),
            }))
    }

    async fn finish_sync_job(
        &self,
        tenant: &TenantId,
        job_id: i64,
        courses: &[crate::upstream::UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError> {
        self.finish_job(tenant, job_id, None).await?;
        let subject = self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .find(|(_, id, _, _)| *id == job_id)
            .map(|(_, _, j, _)| j.subject.clone())
            .unwrap_or_default();
        self.record_progress(tenant, &subject, courses).await
    }

    async fn finish_job(
        &self,
        _t: &TenantId,
        job_id: i64,
        _e: Option<&str>,
    ) -> Result<(), StoreError> {
        for (_, id, _, done) in self.jobs.lock().unwrap().iter_mut() {
            if *id == job_id {
                *done = true;
            }
        }
        Ok(())
    }

    async fn queue_depth(&self, tenant: &TenantId) -> Result<Vec<(JobPriority, u64)>, StoreError> {
        self.queue_depth_reads.fetch_add(1, Ordering::SeqCst);
        let failing =
            self.queue_depth_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(StoreError::Unavailable("injected: pool timed out".into()));
        }
        let jobs = self.jobs.lock().unwrap();
        Ok(JobPriority::ALL
            .into_iter()
            .map(|p| {
                let n = jobs
                    .iter()
                    .filter(|(t, _, j, done)| t == tenant && !done && j.priority == p)
                    .count();
                (p, n as u64)
            })
            .collect())
    }

    async fn quota_override(&self, _tenant: &TenantId) -> Result<Option<u32>, StoreError> {
        Ok(*self.quota.lock().unwrap())
    }

    async fn record_progress(
        &self,
        _tenant: &TenantId,
        user_id: &str,
        courses: &[crate::upstream::UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError> {
        Ok(ProgressSnapshot {
            user_id: user_id.to_owned(),
            courses: courses.to_vec(),
            synced_at: None,
        })
    }

    async fn mark_outbox_relayed(
        &self,
        tenant: &TenantId,
        through_seq: i64,
    ) -> Result<(), StoreError> {
        let failing = self
            .cursor_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        let mut all = self.data.lock().unwrap();
        let data = all.entry(tenant.clone()).or_default();
        data.relayed_seq = data.relayed_seq.max(through_seq);
        Ok(())
    }
}

#[derive(Default)]
pub struct FakePublisher {
    pub published: Mutex<Vec<(TenantId, OutboundRecord)>>,
    /// The next this many publish calls fail (a broker outage).
    pub failures: AtomicUsize,
    /// The next publish call delivers this many records, then fails.
    pub ack_then_fail: AtomicUsize,
    /// Calls of `last_outbox_seq`.
    pub tail_reads: AtomicUsize,
}

impl FakePublisher {
    /// The `outbox.seq` header of every record published for the tenant, in publish order.
    pub fn outbox_seqs(&self, tenant: &TenantId) -> Vec<i64> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == tenant)
            .filter_map(|(_, r)| r.headers.iter().find(|(k, _)| k == "outbox.seq"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
            .collect()
    }
    pub fn on(&self, tenant: &TenantId, topic: TopicKind) -> Vec<OutboundRecord> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, r)| t == tenant && r.topic == topic)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

#[async_trait]
impl EventPublisher for FakePublisher {
    async fn publish(
        &self,
        tenant: &TenantId,
        records: Vec<OutboundRecord>,
    ) -> Result<(), PublishError> {
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(PublishError::Broker("injected outage".into()));
        }
        let mut p = self.published.lock().unwrap();
        let partial = self.ack_then_fail.swap(0, Ordering::SeqCst);
        if partial > 0 {
            // The broker took the first records, then the connection broke.
            p.extend(
                records
                    .into_iter()
                    .take(partial)
                    .map(|r| (tenant.clone(), r)),
            );
            return Err(PublishError::Broker("injected failure mid-publish".into()));
        }
        p.extend(records.into_iter().map(|r| (tenant.clone(), r)));
        Ok(())
    }

    async fn last_outbox_seq(
        &self,
        tenant: &TenantId,
        topic: TopicKind,
    ) -> Result<Option<i64>, PublishError> {
        self.tail_reads.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .on(tenant, topic)
            .last()
            .and_then(|r| r.headers.iter().find(|(k, _)| k == "outbox.seq"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok()))
    }
}

#[derive(Default)]
pub struct FakeCache {
    pub invalidations: Mutex<Vec<TenantId>>,
    pub catalogs: Mutex<HashMap<TenantId, usize>>,
}

#[async_trait]
impl RosterCache for FakeCache {
    async fn invalidate_roster(&self, tenant: &TenantId) -> Result<(), CacheError> {
        self.invalidations.lock().unwrap().push(tenant.clone());
        Ok(())
    }

    async fn store_catalog(
        &self,
        tenant: &TenantId,
        courses: &[crate::upstream::CatalogCourse],
    ) -> Result<(), CacheError> {
        self.catalogs
            .lock()
            .unwrap()
            .insert(tenant.clone(), courses.len());
        Ok(())
    }
}
