//! Kafka: topics, the producer the relay uses, and the CloudEvents binary-mode mapping.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::schema::BoundedContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

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
    /// This process's stable name in its consumer groups (`group.instance.id`, static
    /// membership): a restarted member with the same name gets its partitions back at once
    /// instead of after the session timeout. Must differ between processes of one deployment.
    pub instance_id: Option<String>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: 3,
            topic_prefix: String::new(),
            instance_id: None,
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

/// How long a group member may stay silent before the broker gives its partitions to others.
/// Short, so that a crashed member's partitions move within seconds; heartbeats run on
/// librdkafka's own thread, so a busy process still sends them.
const SESSION_TIMEOUT_MS: &str = "10000";

/// The settings of a group member that commits nothing by itself: positions live with the read
/// models, and Kafka's committed offsets are only a hint.
fn group_config(kafka: &KafkaSettings, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", "1000")
        // Reconnect to a broker that came back within a second, not up to 10 s later.
        .set("reconnect.backoff.max.ms", "1000");
    if let Some(id) = &kafka.instance_id {
        config.set("group.instance.id", id);
    }
    config
}

/// The name of a partition as a checkpoint source: `topic/partition`.
pub fn partition_source(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The next offset to read per partition (`topic/partition`), as the caller's own store
/// recorded it. A group member starts every partition it is given here, so the store decides
/// where reading resumes, whatever Kafka's committed offsets say; a partition the store has
/// never read starts at the beginning. Stale (lower) values only cause re-reads, which the
/// caller drops as duplicates.
#[derive(Debug, Clone, Default)]
pub struct StartOffsets(Arc<Mutex<HashMap<String, i64>>>);

impl StartOffsets {
    pub fn set(&self, source: &str, next: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(source.to_owned(), next as i64);
    }

    fn get(&self, source: &str) -> Option<i64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(source).copied()
    }
}

/// Answers rebalances itself: assigned partitions start at the store's offsets, revoked ones
/// are released at once (librdkafka waits for this answer; a member that never gives it stays
/// in `wait-unassign-call` for ever).
struct GroupContext {
    group: String,
    start: StartOffsets,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = TopicPartitionList::new();
                for p in tpl.elements() {
                    let offset = self
                        .start
                        .get(&partition_source(p.topic(), p.partition()))
                        .map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = assigned.add_partition_offset(p.topic(), p.partition(), offset)
                    {
                        tracing::error!(group = %self.group, error = %e, "cannot set a start offset");
                    }
                }
                tracing::info!(group = %self.group, partitions = assigned.count(), "partitions assigned");
                if cooperative {
                    consumer.incremental_assign(&assigned)
                } else {
                    consumer.assign(&assigned)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(group = %self.group, error = %code, "rebalance failed; releasing partitions");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(group = %self.group, error = %e, "answering a rebalance failed");
        }
    }
}

/// One record as a group member received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub record: LogRecord,
    /// The message's W3C `traceparent` header (the relay's publish span), if it has one.
    pub traceparent: Option<String>,
}

/// A member of a consumer group reading every platform topic, starting each partition where
/// the caller's store says ([`StartOffsets`]).
pub struct GroupConsumer {
    group: String,
    /// Whether the last poll failed (errors are logged once per run).
    failing: AtomicBool,
    // An `Option` so that dropping can hand the consumer to a thread of its own.
    inner: Option<Arc<StreamConsumer<GroupContext>>>,
}

impl GroupConsumer {
    /// Joins `group` and subscribes to every platform topic.
    pub fn join(
        kafka: &KafkaSettings,
        group: &str,
        start: StartOffsets,
    ) -> Result<Self, InfraError> {
        let consumer: StreamConsumer<GroupContext> = group_config(kafka, group)
            .create_with_context(GroupContext {
                group: group.to_owned(),
                start,
            })?;
        let topics = kafka.topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            group: group.to_owned(),
            failing: AtomicBool::new(false),
            inner: Some(Arc::new(consumer)),
        })
    }

    fn consumer(&self) -> Result<&StreamConsumer<GroupContext>, InfraError> {
        self.inner
            .as_deref()
            .ok_or_else(|| InfraError::Config(format!("consumer of {} is closed", self.group)))
    }

    /// The next record, or `None` when none came within `wait`. Returning regularly matters:
    /// each call polls the consumer, which is also when rebalances are answered. A record
    /// that is not a platform envelope is an error; Kafka's own errors are logged and read
    /// as "nothing yet" (the client retries by itself; a member that stays silent is the
    /// caller's watchdog's business).
    pub async fn next(&self, wait: Duration) -> Result<Option<Received>, InfraError> {
        let consumer = self.consumer()?;
        let deadline = tokio::time::Instant::now() + wait;
        let error = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => return Ok(None),
            Ok(Ok(message)) => {
                self.failing.store(false, Ordering::Relaxed);
                return Ok(Some(Received {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    record: record_from_message(&message)?,
                    traceparent: crate::telemetry::enabled()
                        .then(|| header_text(&message, crate::telemetry::TRACEPARENT))
                        .flatten(),
                }));
            }
            Ok(Err(error)) => error,
        };
        // Once per run of errors: while the broker is away the client reports it on every
        // poll.
        if !self.failing.swap(true, Ordering::Relaxed) {
            if let KafkaError::MessageConsumption(RDKafkaErrorCode::FencedInstanceId) = error {
                tracing::error!(group = %self.group, "another process joined with this process's instance id (group.instance.id); give each process its own QUANTUS_KAFKA_INSTANCE_ID");
            } else {
                tracing::warn!(group = %self.group, %error, "Kafka consumer error (further ones are logged at debug level until a record arrives)");
            }
        } else {
            tracing::debug!(group = %self.group, %error, "Kafka consumer error");
        }
        tokio::time::sleep_until(deadline).await;
        Ok(None)
    }

    /// Commits `offsets` (topic, partition, next offset) to Kafka as a hint for tools that
    /// look at group lag; failures only matter to them.
    pub fn commit_hint(&self, offsets: &[(String, i32, i64)]) {
        let Ok(consumer) = self.consumer() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in offsets {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(group = %self.group, %error, "offset hint not committed");
        }
    }

    /// Leaves the group, waiting at most `within` (a broker that is away cannot be told; the
    /// session timeout then does it).
    pub async fn close(mut self, within: Duration) {
        if let Some(done) = self.release() {
            if tokio::time::timeout(within, done).await.is_err() {
                tracing::info!(group = %self.group, "consumer still closing; not waiting for it");
            }
        }
    }

    /// Closes the consumer on a thread of its own: librdkafka's close blocks (for as long as
    /// the group does not answer), and must hold up neither the runtime nor a shutdown.
    fn release(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let consumer = self.inner.take()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => Some(rx),
            Err(error) => {
                tracing::warn!(group = %self.group, %error, "no thread to close the consumer on");
                None
            }
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.release();
    }
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

/// A header's value as text (`None` when absent or not UTF-8).
fn header_text<M: Message>(message: &M, key: &str) -> Option<String> {
    let headers = message.headers()?;
    let value = headers.iter().find(|h| h.key == key)?.value?;
    std::str::from_utf8(value).ok().map(str::to_owned)
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

/// Where each partition of the platform's topics begins and ends (its low and high
/// watermarks), for consumer lag. One client per process, kept between reads: it joins no
/// group and commits nothing. An admin client, because it polls its own queue, so errors
/// while the broker is away do not pile up in a queue nobody reads.
pub struct PartitionEnds {
    topics: Vec<String>,
    admin: Arc<AdminClient<DefaultClientContext>>,
}

impl PartitionEnds {
    pub fn new(kafka: &KafkaSettings) -> Result<Self, InfraError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("reconnect.backoff.max.ms", "1000")
            .create()?;
        Ok(Self {
            topics: kafka.topics(),
            admin: Arc::new(admin),
        })
    }

    /// `(low, high)` per partition source (`topic/partition`, as [`partition_source`]), all
    /// read within `within` or an error. A topic not created yet has no partitions. The
    /// librdkafka calls block, so they run on a blocking thread; a read cut short by the
    /// deadline leaves that thread to finish its current call (each call is bounded too).
    pub async fn read(&self, within: Duration) -> Result<BTreeMap<String, (i64, i64)>, InfraError> {
        let admin = self.admin.clone();
        let topics = self.topics.clone();
        let deadline = std::time::Instant::now() + within;
        let left = move || {
            deadline
                .checked_duration_since(std::time::Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    InfraError::Unreachable(format!(
                        "Kafka did not tell the partitions' ends within {within:?}"
                    ))
                })
        };
        let read = tokio::task::spawn_blocking(move || {
            let client = admin.inner();
            let metadata = client.fetch_metadata(None, left()?)?;
            let mut ends = BTreeMap::new();
            for topic in &topics {
                let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
                    continue;
                };
                for partition in meta.partitions() {
                    let bounds = client.fetch_watermarks(topic, partition.id(), left()?)?;
                    ends.insert(partition_source(topic, partition.id()), bounds);
                }
            }
            Ok::<_, InfraError>(ends)
        });
        match tokio::time::timeout(within, read).await {
            Ok(Ok(ends)) => ends,
            Ok(Err(join)) => Err(InfraError::Unreachable(format!(
                "reading the partitions' ends failed: {join}"
            ))),
            Err(_) => Err(InfraError::Unreachable(format!(
                "Kafka did not tell the partitions' ends within {within:?}"
            ))),
        }
    }
}

/// Messages on Kafka a reader has not consumed: per partition, its high watermark minus the
/// reader's next offset (`next`, by partition source; a partition missing from it is read
/// from its low watermark), summed.
pub fn lag_behind(ends: &BTreeMap<String, (i64, i64)>, next: &HashMap<String, i64>) -> u64 {
    ends.iter()
        .map(|(source, &(low, high))| {
            let from = next.get(source).copied().unwrap_or(low).max(low);
            u64::try_from(high - from).unwrap_or(0)
        })
        .sum()
}

#[cfg(test)]
mod partition_end_tests {
    use super::*;

    #[test]
    fn lag_sums_each_partitions_unread_messages() {
        let ends: BTreeMap<String, (i64, i64)> = [
            ("t/0".to_owned(), (0, 10)),
            ("t/1".to_owned(), (4, 7)),
            ("t/2".to_owned(), (0, 5)),
        ]
        .into();
        // t/0 read up to 6, t/1 never read (starts at its low watermark), t/2 read ahead of
        // what the broker says (a stale end): no negative lag.
        let next: HashMap<String, i64> = [("t/0".to_owned(), 6), ("t/2".to_owned(), 9)].into();
        assert_eq!(lag_behind(&ends, &next), 4 + 3);
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_an_error_within_the_bound() {
        let ends = PartitionEnds::new(&KafkaSettings::new("127.0.0.1:1")).unwrap();
        let started = std::time::Instant::now();
        let read = ends.read(Duration::from_millis(500)).await;
        assert!(
            matches!(
                read,
                Err(InfraError::Unreachable(_)) | Err(InfraError::Kafka(_))
            ),
            "{read:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
