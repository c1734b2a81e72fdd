//! Kafka: topics, the producer the relay uses, and the CloudEvents binary-mode mapping.

use std::time::Duration;

use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::schema::BoundedContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::{InfraError, LogRecord};

/// Header carrying the global log position (a CloudEvents extension attribute).
pub const POSITION_HEADER: &str = "ce_quantusposition";

/// Where and how the platform talks to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Partitions of topics the platform creates.
    pub partitions: i32,
    /// Put before every topic name, so several environments can share one cluster.
    pub topic_prefix: String,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: 3,
            topic_prefix: String::new(),
        }
    }

    /// The topic an event goes to, from its aggregate's bounded context.
    pub fn topic_for(&self, aggregate_type: &str) -> Result<String, InfraError> {
        BoundedContext::of_aggregate(aggregate_type)
            .map(|c| format!("{}{}", self.topic_prefix, c.topic()))
            .ok_or_else(|| {
                InfraError::Corrupt(format!(
                    "no bounded context owns aggregate type {aggregate_type:?}"
                ))
            })
    }

    /// Every topic of the platform.
    pub fn topics(&self) -> Vec<String> {
        BoundedContext::ALL
            .iter()
            .map(|c| format!("{}{}", self.topic_prefix, c.topic()))
            .collect()
    }
}

/// Creates the topics that do not exist yet: infinite retention, no compaction (the log is
/// the audit trail, nothing may age out or be folded away).
pub async fn ensure_topics(kafka: &KafkaSettings) -> Result<(), InfraError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()?;
    let names = kafka.topics();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            NewTopic::new(name, kafka.partitions, TopicReplication::Fixed(1))
                .set("retention.ms", "-1")
                .set("retention.bytes", "-1")
                .set("cleanup.policy", "delete")
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(InfraError::Config(format!(
                    "cannot create topic {topic}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// Deletes the platform's topics under `kafka`'s prefix (benchmarks and tests clean up with it;
/// the platform itself never deletes its log).
pub async fn delete_topics(kafka: &KafkaSettings) -> Result<(), InfraError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()?;
    let names = kafka.topics();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    admin.delete_topics(&names, &AdminOptions::new()).await?;
    Ok(())
}

/// An idempotent, fully acknowledged producer whose partitioner agrees with Java clients.
pub fn producer(kafka: &KafkaSettings) -> Result<FutureProducer, InfraError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// A consumer in `group` that commits nothing by itself: positions live with the read models.
pub fn consumer(kafka: &KafkaSettings, group: &str) -> Result<StreamConsumer, InfraError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?)
}

/// CloudEvents 1.0 binary-mode headers for one record.
pub fn cloudevent_headers(record: &LogRecord) -> OwnedHeaders {
    let e = &record.envelope;
    let context = BoundedContext::of_aggregate(&e.aggregate_type)
        .map(|c| c.topic())
        .unwrap_or("quantus.unknown");
    let ce_type = format!("dev.quantus.{}.v{}", e.event_type, e.schema_version);
    let source = format!("urn:quantus:{context}:{}", e.aggregate_type);
    let time = rfc3339_micros::format(&e.occurred_at);
    let id = e.event_id.to_string();
    let position = record.position.to_string();
    let sequence = e.sequence.to_string();
    let pairs: [(&str, &str); 12] = [
        ("ce_specversion", "1.0"),
        ("ce_id", &id),
        ("ce_type", &ce_type),
        ("ce_source", &source),
        ("ce_subject", &e.aggregate_id),
        ("ce_time", &time),
        ("content-type", "application/json"),
        ("ce_sequence", &sequence),
        (POSITION_HEADER, &position),
        ("ce_quantushash", &e.hash),
        ("ce_quantusprevhash", &e.prev_hash),
        ("ce_quantustenant", &e.tenant_id),
    ];
    pairs
        .iter()
        .fold(OwnedHeaders::new_with_capacity(pairs.len()), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
}

/// Decodes a message the relay produced back into a log record.
pub fn record_from_message<M: Message>(message: &M) -> Result<LogRecord, InfraError> {
    let where_ = || {
        format!(
            "{}/{}@{}",
            message.topic(),
            message.partition(),
            message.offset()
        )
    };
    let position = message
        .headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == POSITION_HEADER)
                .and_then(|h| h.value)
        })
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .ok_or_else(|| {
            InfraError::Corrupt(format!(
                "message {} has no {POSITION_HEADER} header",
                where_()
            ))
        })?;
    let payload = message
        .payload()
        .ok_or_else(|| InfraError::Corrupt(format!("message {} has no value", where_())))?;
    let envelope = serde_json::from_slice(payload).map_err(|e| {
        InfraError::Corrupt(format!("message {} is not an envelope: {e}", where_()))
    })?;
    Ok(LogRecord { position, envelope })
}

/// Reads every partition of every platform topic from the beginning up to the end it had when
/// the read began, calling `on_record` per message in partition order. For auditors: it joins
/// no consumer group and commits nothing.
pub async fn read_all_topics(
    kafka: &KafkaSettings,
    mut on_record: impl FnMut(LogRecord) -> Result<(), InfraError>,
) -> Result<u64, InfraError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set(
            "group.id",
            format!("quantus.audit.{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let timeout = Duration::from_secs(30);
    let metadata = consumer.fetch_metadata(None, timeout)?;
    let mut read = 0;
    for topic in kafka.topics() {
        let topic = topic.as_str();
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
            continue;
        };
        for partition in meta.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            if high <= low {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition.id(), Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let mut next = low;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while next < high {
                if std::time::Instant::now() > deadline {
                    return Err(InfraError::Config(format!(
                        "timed out reading {topic}/{}",
                        partition.id()
                    )));
                }
                match consumer.poll(Duration::from_millis(500)) {
                    Some(Ok(message)) => {
                        next = message.offset() + 1;
                        on_record(record_from_message(&message)?)?;
                        read += 1;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => {}
                }
            }
        }
    }
    Ok(read)
}
