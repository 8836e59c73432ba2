//! `enablement events push|tail`: poke a tenant's topics from the shell.
//!
//! Debian's `kcat` links a librdkafka too old for some brokers; these use the bundled one.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::layout::{TopicLayout, TENANT_HEADER};
use super::{base_client_config, KafkaPublisher};
use crate::actors::ports::{EventPublisher, InboundRecord, OutboundRecord};
use crate::actors::{TenantId, TopicKind};
use crate::config::KafkaConfig;

/// Produces every non-empty line of `input` to the tenant's inbound topic, unvalidated
/// (the service validates; pushing malformed lines is how the DLQ is exercised). The key
/// is `user.id` when the line parses (on the shared topic: the tenant id, on the tenant's
/// partition). Returns the number of records acknowledged.
pub async fn push_events<R: AsyncBufRead + Unpin>(
    cfg: &KafkaConfig,
    tenant: &TenantId,
    shared_topics: bool,
    input: R,
) -> Result<usize, String> {
    let publisher = KafkaPublisher::new(cfg).map_err(|e| e.to_string())?;
    if shared_topics {
        publisher.layout().add_shared(tenant.clone());
    }
    let mut lines = input.lines();
    let mut batch = Vec::new();
    let mut total = 0;
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        if line.trim().is_empty() {
            continue;
        }
        let key = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["user"]["id"].as_str().map(|s| s.as_bytes().to_vec()));
        batch.push(OutboundRecord {
            topic: TopicKind::Scim,
            key,
            payload: line.into_bytes(),
            headers: vec![],
        });
        if batch.len() >= 1000 {
            total += batch.len();
            publisher
                .publish(tenant, std::mem::take(&mut batch))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    total += batch.len();
    publisher
        .publish(tenant, batch)
        .await
        .map_err(|e| e.to_string())?;
    Ok(total)
}

#[derive(Debug, Clone)]
pub struct TailOptions {
    pub from_beginning: bool,
    /// The tenant lives on the shared topics: read its partition, only its records.
    pub shared_topics: bool,
    /// Stop at the end of the partition instead of waiting for more.
    pub exit_at_end: bool,
    /// Stop after this many records.
    pub limit: Option<usize>,
}

/// Prints the records of one tenant topic as JSON lines (offset, key, headers, payload)
/// through `emit`. Reads without a consumer group, so it never moves the service's offsets.
pub fn tail_topic(
    cfg: &KafkaConfig,
    tenant: &TenantId,
    kind: TopicKind,
    opts: &TailOptions,
    mut emit: impl FnMut(Value),
) -> Result<usize, String> {
    let start = if opts.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let read = ReadOptions {
        shared_topics: opts.shared_topics,
        start,
        exit_at_end: opts.exit_at_end,
        limit: opts.limit,
    };
    each_record(cfg, tenant, kind, &read, |topic, m| {
        let headers: serde_json::Map<String, Value> = m
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        let payload = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.payload).into_owned()));
        emit(json!({
            "topic": topic,
            "offset": m.offset,
            "key": m.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
            "payload": payload,
        }));
    })
}

/// Where and how far [`each_record`] reads.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub shared_topics: bool,
    pub start: Offset,
    pub exit_at_end: bool,
    pub limit: Option<usize>,
}

/// Calls `f` with the topic name and each record of one tenant's topic, bytes as they are
/// (on a shared topic, only the tenant's records). Reads without a consumer group, so it
/// never moves the service's offsets. Returns the number of records read.
pub fn each_record(
    cfg: &KafkaConfig,
    tenant: &TenantId,
    kind: TopicKind,
    opts: &ReadOptions,
    mut f: impl FnMut(&str, InboundRecord),
) -> Result<usize, String> {
    let layout = TopicLayout::new(cfg);
    if opts.shared_topics {
        layout.add_shared(tenant.clone());
    }
    let place = layout.place(tenant, kind);
    let topic = place.topic.clone();
    // On a shared topic: inbound records are keyed by the tenant id, outputs name it in
    // a header; the other tenants' records are skipped.
    let mine = |m: &rdkafka::message::BorrowedMessage<'_>| {
        !place.shared
            || m.key() == Some(tenant.as_str().as_bytes())
            || m.headers().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h.key == TENANT_HEADER && h.value == Some(tenant.as_str().as_bytes()))
            })
    };
    let consumer: BaseConsumer = base_client_config(cfg)
        .set("group.id", "enablement-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, place.partition, opts.start)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut seen = 0;
    loop {
        if opts.limit.is_some_and(|l| seen >= l) {
            return Ok(seen);
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => {
                if opts.exit_at_end {
                    return Ok(seen);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(m)) if !mine(&m) => continue,
            Some(Ok(m)) => {
                seen += 1;
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                f(
                    &topic,
                    InboundRecord {
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    },
                );
            }
        }
    }
}
