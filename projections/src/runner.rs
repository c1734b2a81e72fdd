//! Feeds a [`Projection`] from the log with an exactly-once effect.
//!
//! Each batch is one transaction holding: the read-model changes, the per-aggregate sequence
//! reached (`projection_streams`, which makes re-delivered events no-ops), and the source
//! checkpoint (`projection_checkpoints`: the next log position, or the next offset of each Kafka
//! partition). A crash anywhere rolls all three back together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quantus_infra::db::get_u64;
use quantus_infra::event_store::{read_log, tail_log};
use quantus_infra::kafka::{consumer, ensure_topics, record_from_message, KafkaSettings};
use quantus_infra::{Database, InfraError, LogRecord};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::{AnyConnection, Row};

use crate::Projection;

/// The checkpoint source name of the store's own log.
pub const LOG_SOURCE: &str = "log";

/// One event as delivered by a source: `offset` is its position in that source.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: String,
    pub offset: u64,
    pub record: LogRecord,
}

impl Delivery {
    pub fn from_log(record: LogRecord) -> Self {
        Self {
            source: LOG_SOURCE.to_owned(),
            offset: record.position,
            record,
        }
    }
}

#[derive(Clone)]
pub struct ProjectionRunner {
    db: Database,
    projection: Arc<dyn Projection>,
}

impl ProjectionRunner {
    pub fn new(db: Database, projection: Arc<dyn Projection>) -> Self {
        Self { db, projection }
    }

    pub fn projection(&self) -> &Arc<dyn Projection> {
        &self.projection
    }

    /// Creates the read model's tables.
    pub async fn prepare(&self) -> Result<(), InfraError> {
        let mut tx = self.db.begin_update(self.projection.name()).await?;
        self.projection.create(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The next offset to read from `source` (1 for the log: positions start at 1).
    pub async fn next_offset(&self, source: &str) -> Result<u64, InfraError> {
        next_offset(
            &mut *self.db.pool.acquire().await?,
            self.projection.name(),
            source,
        )
        .await
    }

    /// Applies deliveries in one transaction; returns how many changed the model.
    pub async fn apply_batch(&self, deliveries: &[Delivery]) -> Result<usize, InfraError> {
        let name = self.projection.name();
        let mut tx = self.db.begin_update(name).await?;
        let mut next: BTreeMap<&str, u64> = BTreeMap::new();
        let mut applied = 0;
        for d in deliveries {
            let stored = match next.get(d.source.as_str()) {
                Some(n) => *n,
                None => next_offset(&mut tx, name, &d.source).await?,
            };
            if d.offset < stored {
                continue; // Delivered again after a restart or a rebalance.
            }
            next.insert(&d.source, d.offset + 1);
            if self.apply_once(&mut tx, &d.record).await? {
                applied += 1;
            }
        }
        for (source, offset) in next {
            sqlx::query(
                "INSERT INTO projection_checkpoints (projection, source, position) VALUES ($1, $2, $3)
                 ON CONFLICT (projection, source) DO UPDATE SET position = excluded.position",
            )
            .bind(name)
            .bind(source)
            .bind(offset as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Applies one event unless this projection already has it; refuses to skip a gap.
    async fn apply_once(
        &self,
        conn: &mut AnyConnection,
        record: &LogRecord,
    ) -> Result<bool, InfraError> {
        let e = &record.envelope;
        if !self.projection.handles(&e.aggregate_type) {
            return Ok(false);
        }
        let name = self.projection.name();
        let row = sqlx::query(
            "SELECT sequence FROM projection_streams WHERE projection = $1 AND aggregate_type = $2 AND aggregate_id = $3",
        )
        .bind(name)
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .fetch_optional(&mut *conn)
        .await?;
        let last = match row {
            Some(row) => get_u64(&row, "sequence")?,
            None => 0,
        };
        if e.sequence <= last {
            return Ok(false);
        }
        if e.sequence != last + 1 {
            return Err(InfraError::Corrupt(format!(
                "{name}: {} {} jumps from sequence {last} to {} (position {}): an event is missing",
                e.aggregate_type, e.aggregate_id, e.sequence, record.position
            )));
        }
        self.projection.apply(conn, record).await?;
        sqlx::query(
            "INSERT INTO projection_streams (projection, aggregate_type, aggregate_id, sequence, position)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (projection, aggregate_type, aggregate_id)
             DO UPDATE SET sequence = excluded.sequence, position = excluded.position",
        )
        .bind(name)
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .bind(e.sequence as i64)
        .bind(record.position as i64)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    /// Applies the store's log up to its current head; returns the events read.
    pub async fn catch_up_from_store(&self) -> Result<u64, InfraError> {
        let mut count = 0;
        loop {
            let after = self.next_offset(LOG_SOURCE).await? - 1;
            let records = read_log(&self.db, after, 1000).await?;
            if records.is_empty() {
                return Ok(count);
            }
            count += records.len() as u64;
            let deliveries: Vec<Delivery> = records.into_iter().map(Delivery::from_log).collect();
            self.apply_batch(&deliveries).await?;
        }
    }

    /// Follows the store's log forever (the embedded mode).
    pub async fn run_from_store(self) -> Result<(), InfraError> {
        self.prepare().await?;
        loop {
            let after = self.next_offset(LOG_SOURCE).await? - 1;
            let result = tail_log(&self.db, after, 1000, |records| {
                let deliveries: Vec<Delivery> =
                    records.into_iter().map(Delivery::from_log).collect();
                let runner = self.clone();
                async move { runner.apply_batch(&deliveries).await.map(|_| true) }
            })
            .await;
            if let Err(error) = result {
                tracing::error!(projection = self.projection.name(), %error, "projection stalled; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Consumes every topic as member of the consumer group `quantus.projection.NAME` forever
    /// (the production mode). Kafka's own committed offsets are only a hint that saves
    /// re-reading; the checkpoints in the read model's database decide.
    pub async fn run_from_kafka(self, kafka: KafkaSettings) -> Result<(), InfraError> {
        let group = format!(
            "{}quantus.projection.{}",
            kafka.topic_prefix,
            self.projection.name()
        );
        self.run_from_kafka_group(kafka, group).await
    }

    /// As [`Self::run_from_kafka`], in a consumer group of the caller's choosing.
    pub async fn run_from_kafka_group(
        self,
        kafka: KafkaSettings,
        group: String,
    ) -> Result<(), InfraError> {
        self.prepare().await?;
        ensure_topics(&kafka).await?;
        let consumer = consumer(&kafka, &group)?;
        let topics = kafka.topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        loop {
            let mut deliveries = Vec::new();
            let first = consumer.recv().await?;
            deliveries.push(delivery_from(&first)?);
            while deliveries.len() < 1000 {
                match tokio::time::timeout(Duration::from_millis(5), consumer.recv()).await {
                    Ok(message) => deliveries.push(delivery_from(&message?)?),
                    Err(_) => break,
                }
            }
            let mut backoff = Duration::from_millis(100);
            while let Err(error) = self.apply_batch(&deliveries).await {
                tracing::error!(projection = self.projection.name(), %error, "projection batch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let mut offsets = TopicPartitionList::new();
            for d in &deliveries {
                if let Some((topic, partition)) = d.source.split_once('/') {
                    let partition: i32 = partition.parse().unwrap_or_default();
                    offsets.add_partition_offset(
                        topic,
                        partition,
                        Offset::Offset(d.offset as i64 + 1),
                    )?;
                }
            }
            if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
                tracing::debug!(%error, "offset hint not committed");
            }
        }
    }

    /// Empties the model and replays the whole log into it, in one transaction: readers see
    /// either the old model or the rebuilt one.
    pub async fn rebuild(&self) -> Result<u64, InfraError> {
        self.prepare().await?;
        let name = self.projection.name();
        let mut tx = self.db.begin_update(name).await?;
        self.reset_in(&mut tx).await?;
        let mut after = 0;
        loop {
            let records = read_log(&self.db, after, 1000).await?;
            let Some(last) = records.last().map(|r| r.position) else {
                break;
            };
            for record in &records {
                self.apply_once(&mut tx, record).await?;
            }
            after = last;
        }
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, source, position) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(LOG_SOURCE)
        .bind(after as i64 + 1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Empties the model and forgets everything it applied, so the next run applies the whole
    /// log again.
    pub async fn reset(&self) -> Result<(), InfraError> {
        self.prepare().await?;
        let mut tx = self.db.begin_update(self.projection.name()).await?;
        self.reset_in(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reset_in(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        self.projection.clear(conn).await?;
        for table in ["projection_streams", "projection_checkpoints"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE projection = $1"))
                .bind(self.projection.name())
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// The model's rows, for comparisons.
    pub async fn dump(&self) -> Result<Vec<serde_json::Value>, InfraError> {
        self.projection
            .dump(&mut *self.db.pool.acquire().await?)
            .await
    }

    /// Whether the model reflects the event at `position` (read-your-writes).
    pub async fn has_applied(&self, position: u64) -> Result<Option<bool>, InfraError> {
        let row =
            sqlx::query("SELECT aggregate_type, aggregate_id FROM events WHERE position = $1")
                .bind(position as i64)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let aggregate_type: String = row.try_get("aggregate_type")?;
        if !self.projection.handles(&aggregate_type) {
            return Ok(Some(true));
        }
        let reached = sqlx::query(
            "SELECT position FROM projection_streams WHERE projection = $1 AND aggregate_type = $2 AND aggregate_id = $3",
        )
        .bind(self.projection.name())
        .bind(&aggregate_type)
        .bind(row.try_get::<String, _>("aggregate_id")?)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(Some(match reached {
            Some(r) => get_u64(&r, "position")? >= position,
            None => false,
        }))
    }
}

async fn next_offset(
    conn: &mut AnyConnection,
    projection: &str,
    source: &str,
) -> Result<u64, InfraError> {
    let row = sqlx::query(
        "SELECT position FROM projection_checkpoints WHERE projection = $1 AND source = $2",
    )
    .bind(projection)
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(row) => get_u64(&row, "position")?,
        // The log starts at position 1; Kafka partitions at offset 0.
        None if source == LOG_SOURCE => 1,
        None => 0,
    })
}

fn delivery_from<M: Message>(message: &M) -> Result<Delivery, InfraError> {
    Ok(Delivery {
        source: format!("{}/{}", message.topic(), message.partition()),
        offset: message.offset() as u64,
        record: record_from_message(message)?,
    })
}
