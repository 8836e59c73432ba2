//! [`KafkaPublisher`]: the idempotent producer behind the `EventPublisher` port.

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
use crate::actors::ports::{EventPublisher, OutboundRecord, PublishError};
use crate::actors::{TenantId, TopicKind};
use crate::config::KafkaConfig;

#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    prefix: String,
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
    /// The `outbox.seq` of the last record of partition 0 of `topic`.
    fn last_outbox_seq(&self, topic: &str, timeout: Duration) -> Result<Option<i64>, KafkaError> {
        let mut guard = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.config.create()?);
        }
        let Some(consumer) = guard.as_ref() else {
            return Ok(None);
        };
        let (low, high) = consumer.fetch_watermarks(topic, 0, timeout)?;
        if high <= low {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(high - 1))?;
        consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + timeout;
        let found = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::RequestTimedOut,
                ));
            }
            match consumer.poll(left) {
                Some(Ok(m)) if m.offset() >= high - 1 => {
                    break Ok(m.headers().and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == "outbox.seq")
                            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                    }))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e),
                None => continue,
            }
        };
        let _ = consumer.unassign();
        found
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
            prefix: cfg.topic_prefix.clone(),
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
            let topic = tenant.topic(&self.prefix, r.topic);
            loop {
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_slice()),
                    });
                }
                let mut rec = FutureRecord::to(&topic)
                    .payload(&r.payload)
                    .headers(headers);
                if let Some(k) = &r.key {
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
        let topic = tenant.topic(&self.prefix, topic);
        let timeout = self.timeout.min(Duration::from_secs(10));
        tokio::task::spawn_blocking(move || tail.last_outbox_seq(&topic, timeout))
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?
            .map_err(|e| PublishError::Broker(e.to_string()))
    }
}
