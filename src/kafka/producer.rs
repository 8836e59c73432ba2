//! [`KafkaPublisher`]: the idempotent producer behind the `EventPublisher` port. Records go
//! where the [`TopicLayout`] places them: the tenant's own topic, or its partition of a
//! shared topic with a `tenant` header.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::base_client_config;
use super::layout::{TopicLayout, TENANT_HEADER};
use crate::actors::ports::{EventPublisher, OutboundRecord, PublishError};
use crate::actors::{TenantId, TopicKind};
use crate::config::KafkaConfig;

#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    layout: Arc<TopicLayout>,
    timeout: Duration,
    /// Reads the last record of a topic (relay recovery); created on first use.
    tail: Arc<TailReader>,
}

/// One group-less consumer per process, used only to read the last record of a tenant
/// topic when the relay is unsure what reached it (after a restart or a failed publish).
struct TailReader {
    config: ClientConfig,
    consumer: Mutex<Option<BaseConsumer>>,
}

impl TailReader {
    /// The `outbox.seq` of the last record of `partition` of `topic` (with `tenant`: of the
    /// last record whose `tenant` header names it, on a shared topic: read backwards in
    /// windows of `SHARED_SCAN_WINDOW` records until one is found or the partition starts).
    fn last_outbox_seq(
        &self,
        topic: &str,
        partition: i32,
        tenant: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<i64>, KafkaError> {
        const SHARED_SCAN_WINDOW: i64 = 1000;
        let mut guard = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.config.create()?);
        }
        let Some(consumer) = guard.as_ref() else {
            return Ok(None);
        };
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let window = if tenant.is_some() {
            SHARED_SCAN_WINDOW
        } else {
            1
        };
        let mut end = high;
        while end > low {
            let start = (end - window).max(low);
            let found = read_range(consumer, topic, partition, start, end, tenant, timeout);
            let _ = consumer.unassign();
            if let Some(seq) = found? {
                return Ok(Some(seq));
            }
            end = start;
        }
        Ok(None)
    }
}

/// The `outbox.seq` header of a record, when `tenant` is `None` or its `tenant` header
/// names `tenant`.
fn outbox_seq_of(m: &rdkafka::message::BorrowedMessage<'_>, tenant: Option<&str>) -> Option<i64> {
    let hs = m.headers()?;
    let header = |key: &str| hs.iter().find(|h| h.key == key).and_then(|h| h.value);
    if let Some(t) = tenant {
        if header(TENANT_HEADER) != Some(t.as_bytes()) {
            return None;
        }
    }
    std::str::from_utf8(header("outbox.seq")?)
        .ok()?
        .parse()
        .ok()
}

/// The last `outbox.seq` (of `tenant`'s records, if given) in offsets `start..end`.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    tenant: Option<&str>,
    timeout: Duration,
) -> Result<Option<i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::RequestTimedOut,
            ));
        }
        match consumer.poll(left) {
            Some(Ok(m)) => {
                if m.offset() >= end {
                    return Ok(last);
                }
                if let Some(seq) = outbox_seq_of(&m, tenant) {
                    last = Some(seq);
                }
                if m.offset() >= end - 1 {
                    return Ok(last);
                }
            }
            Some(Err(e)) => return Err(e),
            None => continue,
        }
    }
}

impl KafkaPublisher {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = base_client_config(cfg)
            .set("enable.idempotence", "true")
            .set("message.max.bytes", cfg.max_record_bytes.to_string())
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", cfg.produce_timeout_ms.to_string())
            .create()?;
        let mut tail = base_client_config(cfg);
        tail.set("group.id", "enablement-tail-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        Ok(Self {
            producer,
            layout: Arc::new(TopicLayout::new(cfg)),
            timeout: Duration::from_millis(cfg.produce_timeout_ms),
            tail: Arc::new(TailReader {
                config: tail,
                consumer: Mutex::new(None),
            }),
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Where each tenant's records go (the hub keeps its shared set current).
    pub fn layout(&self) -> Arc<TopicLayout> {
        self.layout.clone()
    }

    /// Probes the broker with a metadata request on the producer's connection (`/readyz`).
    pub async fn broker_reachable(&self) -> Result<(), String> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Waits for delivery reports until the producer's queue is empty.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

async fn settle(f: DeliveryFuture, timeout: Duration) -> Result<(), PublishError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err((e, _)))) => Err(PublishError::Broker(e.to_string())),
        Ok(Err(_)) => Err(PublishError::Broker("delivery report lost".into())),
        Err(_) => Err(PublishError::Broker("delivery timed out".into())),
    }
}

#[async_trait]
impl EventPublisher for KafkaPublisher {
    async fn publish(
        &self,
        tenant: &TenantId,
        records: Vec<OutboundRecord>,
    ) -> Result<(), PublishError> {
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
        for r in &records {
            let place = self.layout.place(tenant, r.topic);
            loop {
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_slice()),
                    });
                }
                if place.shared {
                    headers = headers.insert(Header {
                        key: TENANT_HEADER,
                        value: Some(tenant.as_str().as_bytes()),
                    });
                }
                let mut rec = FutureRecord::to(&place.topic)
                    .partition(place.partition)
                    .payload(&r.payload)
                    .headers(headers);
                if place.shared && r.topic == TopicKind::Scim {
                    // The shared inbound topic is keyed by tenant id: the consumer routes by it.
                    rec = rec.key(tenant.as_str().as_bytes());
                } else if let Some(k) = &r.key {
                    rec = rec.key(k.as_slice());
                }
                match self.producer.send_result(rec) {
                    Ok(f) => {
                        pending.push_back(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        match pending.pop_front() {
                            Some(f) => settle(f, self.timeout).await?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => return Err(PublishError::Broker(e.to_string())),
                }
            }
        }
        for f in pending {
            settle(f, self.timeout).await?;
        }
        Ok(())
    }

    async fn last_outbox_seq(
        &self,
        tenant: &TenantId,
        topic: TopicKind,
    ) -> Result<Option<i64>, PublishError> {
        let tail = self.tail.clone();
        let place = self.layout.place(tenant, topic);
        let filter = place.shared.then(|| tenant.as_str().to_owned());
        let timeout = self.timeout.min(Duration::from_secs(10));
        tokio::task::spawn_blocking(move || {
            tail.last_outbox_seq(&place.topic, place.partition, filter.as_deref(), timeout)
        })
        .await
        .map_err(|e| PublishError::Broker(e.to_string()))?
        .map_err(|e| PublishError::Broker(e.to_string()))
    }
}
