//! [`KafkaPublisher`]: the idempotent producer behind the `EventPublisher` port.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::base_client_config;
use crate::actors::ports::{EventPublisher, OutboundRecord, PublishError};
use crate::actors::TenantId;
use crate::config::KafkaConfig;

#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    prefix: String,
    timeout: Duration,
}

impl KafkaPublisher {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = base_client_config(cfg)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", cfg.produce_timeout_ms.to_string())
            .create()?;
        Ok(Self {
            producer,
            prefix: cfg.topic_prefix.clone(),
            timeout: Duration::from_millis(cfg.produce_timeout_ms),
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
}
