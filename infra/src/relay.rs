//! The outbox relay: publishes the log to Kafka, in position order, at least once.
//!
//! The `events` table is the outbox: every event row is committed in the append transaction,
//! and positions are gap-free and in commit order, so a cursor (`relay_cursors`) is enough to
//! never skip an event that committed late. The cursor moves only after Kafka acknowledged the
//! whole batch; a crash before that re-publishes the batch (consumers skip duplicates by
//! aggregate sequence). One relay per name publishes at a time (see [`Relay::run`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::message::Header;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::Row;
use tracing::Instrument as _;

use crate::db::{Database, Dialect};
use crate::event_store::read_log;
use crate::kafka::{cloudevent_headers, producer, KafkaSettings};
use crate::telemetry;
use crate::InfraError;

/// Failed publication attempts of every relay in this process (a batch Kafka or the store
/// refused; each is retried). Process-wide because `/metrics` reports it, whichever task runs
/// the relay.
static PUBLISH_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many publication attempts failed in this process so far.
pub fn publish_errors() -> u64 {
    PUBLISH_ERRORS.load(Ordering::Relaxed)
}

pub struct Relay {
    db: Database,
    producer: FutureProducer,
    kafka: KafkaSettings,
    name: String,
    batch: u32,
}

impl Relay {
    pub const DEFAULT_NAME: &'static str = "kafka";

    pub fn new(db: Database, kafka: &KafkaSettings) -> Result<Self, InfraError> {
        Ok(Self {
            db,
            producer: producer(kafka)?,
            kafka: kafka.clone(),
            name: Self::DEFAULT_NAME.to_owned(),
            batch: 1000,
        })
    }

    /// A relay with its own cursor (several relays may publish one log to different clusters
    /// or topic prefixes).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The position up to which everything is acknowledged by Kafka.
    pub async fn cursor(&self) -> Result<u64, InfraError> {
        Self::published(&self.db, &self.name).await
    }

    /// The position up to which the relay `name` has everything acknowledged by Kafka.
    pub async fn published(db: &Database, name: &str) -> Result<u64, InfraError> {
        let row = sqlx::query("SELECT position FROM relay_cursors WHERE relay = $1")
            .bind(name)
            .fetch_optional(&db.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<i64, _>("position")? as u64,
            None => 0,
        })
    }

    /// Every relay's cursor (name, position acknowledged by Kafka), by name: the relay lag
    /// any process can report, as the cursors live in the store.
    pub async fn cursors(db: &Database) -> Result<Vec<(String, u64)>, InfraError> {
        let rows = sqlx::query("SELECT relay, position FROM relay_cursors ORDER BY relay")
            .fetch_all(&db.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("relay")?,
                    row.try_get::<i64, _>("position")? as u64,
                ))
            })
            .collect()
    }

    /// Publishes the next batch; returns how many events it published.
    pub async fn publish_batch(&self) -> Result<usize, InfraError> {
        let cursor = self.cursor().await?;
        let records = read_log(&self.db, cursor, self.batch).await?;
        let Some(last) = records.last().map(|r| r.position) else {
            return Ok(0);
        };
        // Empty (and not read) unless trace export is on.
        let traces = telemetry::trace_contexts(&self.db, cursor, last).await?;
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let topic = self.kafka.topic_for(&record.envelope.aggregate_type)?;
            let value = serde_json::to_vec(&record.envelope)
                .map_err(|e| InfraError::Corrupt(e.to_string()))?;
            let key = record.envelope.aggregate_id.clone();
            let mut headers = cloudevent_headers(record);
            // The publish continues the append's trace, and the message carries the publish
            // span's context on to the projectors (W3C trace context in a Kafka header).
            let span = match traces.get(&record.position) {
                Some(appended) => {
                    let span = tracing::info_span!(
                        target: telemetry::TRACE_TARGET,
                        "publish",
                        position = record.position as i64,
                        topic = %topic,
                    );
                    telemetry::continue_trace(&span, appended);
                    if let Some(traceparent) = telemetry::traceparent_of(&span) {
                        headers = headers.insert(Header {
                            key: telemetry::TRACEPARENT,
                            value: Some(traceparent.as_bytes()),
                        });
                    }
                    span
                }
                None => tracing::Span::none(),
            };
            let producer = &self.producer;
            deliveries.push(
                async move {
                    let message = FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&value)
                        .headers(headers);
                    producer
                        .send(message, Timeout::After(Duration::from_secs(60)))
                        .await
                        .map_err(|(e, _)| InfraError::Kafka(e))
                }
                .instrument(span),
            );
        }
        try_join_all(deliveries).await?;
        sqlx::query(
            "INSERT INTO relay_cursors (relay, position) VALUES ($1, $2)
             ON CONFLICT (relay) DO UPDATE SET position = excluded.position",
        )
        .bind(&self.name)
        .bind(last as i64)
        .execute(&self.db.pool)
        .await?;
        Ok(records.len())
    }

    /// Waits until this relay is the only one publishing under its name. On Postgres it holds a
    /// session advisory lock on a connection of its own for as long as it runs; the lock goes
    /// when the process (and so the connection) dies, and a standby relay takes over. An
    /// embedded SQLite store belongs to one process, which runs at most one relay.
    async fn lease(&self) -> Result<Option<sqlx::AnyConnection>, InfraError> {
        if self.db.dialect != Dialect::Postgres {
            return Ok(None);
        }
        // Detached from the pool: dropping it closes the session, which releases the lock.
        let mut conn = self.db.pool.acquire().await?.detach();
        let key = format!("quantus-relay:{}", self.name);
        let mut announced = false;
        loop {
            let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(&key)
                .fetch_one(&mut conn)
                .await?;
            if held {
                if announced {
                    tracing::info!(relay = %self.name, "taking over publication");
                }
                return Ok(Some(conn));
            }
            if !announced {
                tracing::info!(relay = %self.name, "another relay publishes under this name; standing by");
                announced = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The lease, retried until it is taken.
    async fn take_lease(&self) -> Option<sqlx::AnyConnection> {
        loop {
            match self.lease().await {
                Ok(lease) => return lease,
                Err(error) => {
                    tracing::warn!(%error, "relay cannot take its lease; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Whether the lease's session still holds the lock. The session can end while this
    /// process lives (a terminated backend, a network cut): Postgres then releases the lock and
    /// a standby takes it, so publishing on would make two relays publish at once.
    async fn still_leased(lease: &mut sqlx::AnyConnection) -> bool {
        // The lease connection holds no other advisory lock.
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                            WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid())",
        )
        .fetch_one(lease)
        .await
        .unwrap_or(false)
    }

    /// Runs until the task is dropped; errors are logged and retried with back-off.
    pub async fn run(self) {
        let mut lease = self.take_lease().await;
        let mut backoff = Duration::from_millis(100);
        loop {
            // Checked before every batch: after a lost lease at most the batch in flight is
            // published twice (projectors skip positions they have).
            if let Some(held) = lease.as_mut() {
                if !Self::still_leased(held).await {
                    tracing::warn!(relay = %self.name, "relay lost its lease; standing by until it takes it again");
                    // The dead session's connection goes before a new one is opened.
                    drop(lease.take());
                    lease = self.take_lease().await;
                    continue;
                }
            }
            match self.publish_batch().await {
                Ok(0) => {
                    let cursor = self.cursor().await.unwrap_or(0);
                    self.db
                        .wait_for_append(cursor, Duration::from_millis(50))
                        .await;
                }
                Ok(n) => {
                    tracing::debug!(published = n, "relay published a batch");
                    backoff = Duration::from_millis(100);
                }
                Err(error) => {
                    PUBLISH_ERRORS.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "relay failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
