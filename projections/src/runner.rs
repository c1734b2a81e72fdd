//! Feeds a [`Projection`] from the log with an exactly-once effect.
//!
//! Each batch is one transaction holding: the read-model changes, the per-aggregate sequence
//! reached (`projection_streams`, which makes re-delivered events no-ops), and the source
//! checkpoint (`projection_checkpoints`: the next log position, or the next offset of each Kafka
//! partition). A crash anywhere rolls all three back together.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use quantus_infra::db::get_u64;
use quantus_infra::event_store::{read_log, tail_log};
use quantus_infra::kafka::{
    ensure_topics, partition_source, GroupConsumer, KafkaSettings, Received, StartOffsets,
};
use quantus_infra::relay::Relay;
use quantus_infra::telemetry;
use quantus_infra::{Database, InfraError, LogRecord};
use sqlx::AnyConnection;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::Projection;

/// The checkpoint source name of the store's own log.
pub const LOG_SOURCE: &str = "log";

/// A consumer that received nothing for this long while Kafka holds positions the model has
/// not seen is rebuilt (after a broker outage librdkafka can stay stuck in a rebalance).
pub const STALL_REBUILD_AFTER: Duration = Duration::from_secs(15);

/// Tells long-running loops to stop (`true`); they finish or drop the batch in hand. A
/// receiver whose sender is gone never stops them.
pub type Shutdown = watch::Receiver<bool>;

/// Resolves when `shutdown` says stop (never, if no one can say it any more).
async fn stopped(shutdown: &mut Shutdown) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One event as delivered by a source: `offset` is its position in that source.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: String,
    pub offset: u64,
    pub record: LogRecord,
    /// The W3C trace context its apply continues: the Kafka message's `traceparent` (the
    /// relay's publish), or the append's from the store's log. Only while trace export is on.
    pub traceparent: Option<String>,
}

impl Delivery {
    /// The Kafka topic and partition this came from (`None` for the store's log).
    fn kafka_partition(&self) -> Option<(&str, i32)> {
        let (topic, partition) = self.source.rsplit_once('/')?;
        Some((topic, partition.parse().ok()?))
    }

    pub fn from_log(record: LogRecord) -> Self {
        Self {
            source: LOG_SOURCE.to_owned(),
            offset: record.position,
            record,
            traceparent: None,
        }
    }

    /// Deliveries from the store's log, each with its append's trace context when one was
    /// recorded (read only while trace export is on).
    async fn from_log_traced(
        db: &Database,
        records: Vec<LogRecord>,
    ) -> Result<Vec<Self>, InfraError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(vec![]);
        };
        let mut traces =
            telemetry::trace_contexts(db, first.position.saturating_sub(1), last.position).await?;
        Ok(records
            .into_iter()
            .map(|record| Self {
                traceparent: traces.remove(&record.position),
                ..Self::from_log(record)
            })
            .collect())
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

    /// Creates the read model's tables, and its high-water mark if it has none yet.
    pub async fn prepare(&self) -> Result<(), InfraError> {
        let name = self.projection.name();
        let mut tx = self.db.begin_update(name).await?;
        self.projection.create(&mut tx).await?;
        if read_watermark(&mut tx, name).await?.is_none() {
            // A model from before high-water marks. Read from the store's log, its checkpoint
            // is exact (positions arrive in order). Kafka checkpoints say nothing about
            // positions: they are forgotten, so every partition is read again from its start;
            // per-aggregate sequences make that re-read change nothing but the mark.
            let from_log = checkpoint(&mut tx, name, LOG_SOURCE)
                .await?
                .map_or(0, |next| next - 1);
            sqlx::query(
                "DELETE FROM projection_checkpoints WHERE projection = $1 AND source <> $2",
            )
            .bind(name)
            .bind(LOG_SOURCE)
            .execute(&mut *tx)
            .await?;
            write_watermark(&mut tx, name, from_log).await?;
        }
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
        let mut seen = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let stored = match next.get(d.source.as_str()) {
                Some(n) => *n,
                None => next_offset(&mut tx, name, &d.source).await?,
            };
            if d.offset < stored {
                continue; // Delivered again after a restart or a rebalance.
            }
            next.insert(&d.source, d.offset + 1);
            seen.push(d.record.position);
            let span = match &d.traceparent {
                Some(traceparent) => {
                    let span = tracing::info_span!(
                        target: telemetry::TRACE_TARGET,
                        "apply",
                        projection = name,
                        position = d.record.position as i64,
                    );
                    telemetry::continue_trace(&span, traceparent);
                    span
                }
                None => tracing::Span::none(),
            };
            if self.apply_once(&mut tx, &d.record).instrument(span).await? {
                applied += 1;
            }
        }
        advance_watermark(&mut tx, name, seen).await?;
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
        let versions = self.projection.versions(conn, record).await?;
        crate::history::record(conn, name, record.position, &versions).await?;
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
            let deliveries = Delivery::from_log_traced(&self.db, records).await?;
            self.apply_batch(&deliveries).await?;
        }
    }

    /// Follows the store's log (the embedded mode) until `shutdown`.
    pub async fn run_from_store(self, mut shutdown: Shutdown) -> Result<(), InfraError> {
        self.prepare().await?;
        loop {
            let after = self.next_offset(LOG_SOURCE).await? - 1;
            let follow = tail_log(&self.db, after, 1000, |records| {
                let runner = self.clone();
                async move {
                    let deliveries = Delivery::from_log_traced(&runner.db, records).await?;
                    runner.apply_batch(&deliveries).await.map(|_| true)
                }
            });
            let result = tokio::select! {
                result = follow => result,
                _ = stopped(&mut shutdown) => return Ok(()),
            };
            if let Err(error) = result {
                tracing::error!(projection = self.projection.name(), %error, "projection stalled; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Consumes every topic as member of the consumer group `quantus.projection.NAME` until
    /// `shutdown` (the production mode). Kafka's own committed offsets are only a hint that
    /// tools read; the checkpoints in the read model's database decide where each partition
    /// resumes.
    pub async fn run_from_kafka(
        self,
        kafka: KafkaSettings,
        shutdown: Shutdown,
    ) -> Result<(), InfraError> {
        let group = format!(
            "{}quantus.projection.{}",
            kafka.topic_prefix,
            self.projection.name()
        );
        self.run_from_kafka_group(kafka, group, shutdown).await
    }

    /// As [`Self::run_from_kafka`], in a consumer group of the caller's choosing.
    ///
    /// A watchdog rebuilds the consumer when it has received nothing for
    /// [`STALL_REBUILD_AFTER`] while the relay has published positions the model has not seen:
    /// after a broker outage librdkafka can stay in a rebalance for good, while a new consumer
    /// reads at once.
    pub async fn run_from_kafka_group(
        self,
        kafka: KafkaSettings,
        group: String,
        mut shutdown: Shutdown,
    ) -> Result<(), InfraError> {
        self.prepare().await?;
        ensure_topics(&kafka).await?;
        let name = self.projection.name();
        let mut start = self.start_offsets().await?;
        let mut consumer = GroupConsumer::join(&kafka, &group, start.clone())?;
        let mut last_received = Instant::now();
        let mut last_check = Instant::now();
        // Doubles after each rebuild that brought nothing (a broker still away), so closing
        // members do not pile up; back to the start at the next record.
        let mut patience = STALL_REBUILD_AFTER;
        loop {
            if *shutdown.borrow() {
                consumer.close(Duration::from_secs(3)).await;
                return Ok(());
            }
            let first = tokio::select! {
                first = consumer.next(Duration::from_secs(1)) => first?,
                _ = stopped(&mut shutdown) => continue,
            };
            let Some(first) = first else {
                if last_received.elapsed() < patience || last_check.elapsed() < patience {
                    continue;
                }
                last_check = Instant::now();
                match self.unseen_on_kafka().await {
                    Ok(None) => {}
                    Ok(Some((published, seen))) => {
                        tracing::warn!(
                            projection = name, %group, published, seen,
                            silent_s = last_received.elapsed().as_secs(),
                            "consumer receives nothing while Kafka holds positions the model has not seen; rebuilding it"
                        );
                        // The new member starts where the database says.
                        match self.start_offsets().await.and_then(|fresh| {
                            let joined = GroupConsumer::join(&kafka, &group, fresh.clone())?;
                            Ok((fresh, joined))
                        }) {
                            Ok((fresh, joined)) => {
                                start = fresh;
                                // Dropping closes the old member on a thread of its own.
                                consumer = joined;
                                last_received = Instant::now();
                                patience = (patience * 2).min(Duration::from_secs(120));
                            }
                            Err(error) => {
                                tracing::error!(projection = name, %error, "rebuilding the consumer failed; retrying later")
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(projection = name, %error, "watchdog could not read the positions")
                    }
                }
                continue;
            };
            last_received = Instant::now();
            patience = STALL_REBUILD_AFTER;
            let mut deliveries = vec![delivery_from(first)];
            while deliveries.len() < 1000 {
                match consumer.next(Duration::from_millis(5)).await? {
                    Some(received) => deliveries.push(delivery_from(received)),
                    None => break,
                }
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.apply_batch(&deliveries).await {
                    Ok(_) => break,
                    Err(error) => {
                        tracing::error!(projection = name, %error, "projection batch failed; retrying");
                    }
                }
                // Dropping the batch is safe: nothing of it was committed.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut shutdown) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            if *shutdown.borrow() {
                continue;
            }
            let mut hints: BTreeMap<(String, i32), i64> = BTreeMap::new();
            for d in &deliveries {
                if let Some((topic, partition)) = d.kafka_partition() {
                    let next = d.offset as i64 + 1;
                    let hint = hints.entry((topic.to_owned(), partition)).or_default();
                    *hint = (*hint).max(next);
                    start.set(&d.source, d.offset + 1);
                }
            }
            let hints: Vec<(String, i32, i64)> =
                hints.into_iter().map(|((t, p), n)| (t, p, n)).collect();
            consumer.commit_hint(&hints);
        }
    }

    /// `(published, seen)` when the relay has published positions past the model's mark.
    async fn unseen_on_kafka(&self) -> Result<Option<(u64, u64)>, InfraError> {
        let published = Relay::published(&self.db, Relay::DEFAULT_NAME).await?;
        let seen = self.watermark().await?;
        Ok((published > seen).then_some((published, seen)))
    }

    /// Where each Kafka partition resumes, from the model's checkpoints.
    async fn start_offsets(&self) -> Result<StartOffsets, InfraError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT source, position FROM projection_checkpoints WHERE projection = $1 AND source <> $2",
        )
        .bind(self.projection.name())
        .bind(LOG_SOURCE)
        .fetch_all(&self.db.pool)
        .await?;
        let start = StartOffsets::default();
        for (source, next) in rows {
            start.set(&source, u64::try_from(next).unwrap_or_default());
        }
        Ok(start)
    }

    /// Empties the model and replays the whole log into it, in one transaction: readers see
    /// either the old model or the rebuilt one.
    pub async fn rebuild(&self) -> Result<u64, InfraError> {
        self.rebuild_reporting(|_| {}).await
    }

    /// [`Self::rebuild`], telling `applied` how many events each batch read.
    pub async fn rebuild_reporting(&self, mut applied: impl FnMut(u64)) -> Result<u64, InfraError> {
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
            applied(records.len() as u64);
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
        write_watermark(&mut tx, name, after).await?;
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
        for table in [
            "projection_streams",
            "projection_checkpoints",
            "projection_watermarks",
            "projection_positions_ahead",
            "read_model_history",
            "read_model_history_rows",
        ] {
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

    /// The model's high-water mark: it has seen every log position up to this one.
    pub async fn watermark(&self) -> Result<u64, InfraError> {
        let mut conn = self.db.pool.acquire().await?;
        Ok(read_watermark(&mut conn, self.projection.name())
            .await?
            .unwrap_or(0))
    }

    /// The log's last position (what `min_position` can name at most).
    pub async fn log_head(&self) -> Result<u64, InfraError> {
        self.db.head_position().await
    }

    /// Whether the model reflects the event at `position` and every event before it
    /// (read-your-writes: seeing `p` implies seeing everything before `p`).
    pub async fn has_applied(&self, position: u64) -> Result<bool, InfraError> {
        Ok(self.watermark().await? >= position)
    }
}

/// Every read model's high-water mark, by projection name (a model that never ran has none):
/// what `/metrics` and `/readyz` report.
pub async fn watermarks(db: &Database) -> Result<BTreeMap<String, u64>, InfraError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT projection, position FROM projection_watermarks")
            .fetch_all(&db.pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, p)| (name, u64::try_from(p).unwrap_or_default()))
        .collect())
}

/// Every read model's next offset per Kafka partition (`topic/partition`), by projection name,
/// as its checkpoints record them (committed with the model's changes, so exactly where its
/// consumer resumes): what `/metrics` measures Kafka consumer lag against. The store's log is
/// not a partition and is left out.
pub async fn kafka_offsets(
    db: &Database,
) -> Result<BTreeMap<String, HashMap<String, i64>>, InfraError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT projection, source, position FROM projection_checkpoints WHERE source <> $1",
    )
    .bind(LOG_SOURCE)
    .fetch_all(&db.pool)
    .await?;
    let mut offsets: BTreeMap<String, HashMap<String, i64>> = BTreeMap::new();
    for (projection, source, next) in rows {
        offsets.entry(projection).or_default().insert(source, next);
    }
    Ok(offsets)
}

async fn read_watermark(
    conn: &mut AnyConnection,
    projection: &str,
) -> Result<Option<u64>, InfraError> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT position FROM projection_watermarks WHERE projection = $1")
            .bind(projection)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(p,)| {
        u64::try_from(p)
            .map_err(|_| InfraError::Corrupt(format!("{projection}: negative watermark {p}")))
    })
    .transpose()
}

async fn write_watermark(
    conn: &mut AnyConnection,
    projection: &str,
    position: u64,
) -> Result<(), InfraError> {
    sqlx::query(
        "INSERT INTO projection_watermarks (projection, position) VALUES ($1, $2)
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
    )
    .bind(projection)
    .bind(position as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records that the model has seen `positions` (applied or not its business), and moves its
/// high-water mark up over every position now seen without a gap below it. Positions above a
/// gap wait in `projection_positions_ahead` until the gap fills: Kafka partitions deliver
/// independently, so position 9 may come before 8. Sound because the relay publishes every
/// log position (gap-free, docs/event-log.md) to a topic the model reads: each projection
/// reads every platform topic, so every position reaches it sooner or later.
async fn advance_watermark(
    conn: &mut AnyConnection,
    projection: &str,
    mut positions: Vec<u64>,
) -> Result<u64, InfraError> {
    let start = read_watermark(conn, projection).await?.unwrap_or(0);
    positions.sort_unstable();
    positions.dedup();
    positions.retain(|p| *p > start);
    let mut mark = start;
    let mut fresh = positions.into_iter().peekable();
    loop {
        while fresh.next_if_eq(&(mark + 1)).is_some() {
            mark += 1;
        }
        let ahead: Vec<(i64,)> = sqlx::query_as(
            "SELECT position FROM projection_positions_ahead WHERE projection = $1 AND position > $2
             ORDER BY position LIMIT 1000",
        )
        .bind(projection)
        .bind(mark as i64)
        .fetch_all(&mut *conn)
        .await?;
        let before = mark;
        for (p,) in ahead {
            if p as u64 == mark + 1 {
                mark += 1;
            } else {
                break;
            }
        }
        if mark == before {
            break;
        }
    }
    let rest: Vec<u64> = fresh.filter(|p| *p > mark).collect();
    for chunk in rest.chunks(400) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("($1, ${})", i + 2))
            .collect();
        let sql = format!(
            "INSERT INTO projection_positions_ahead (projection, position) VALUES {}
             ON CONFLICT (projection, position) DO NOTHING",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(projection);
        for p in chunk {
            query = query.bind(*p as i64);
        }
        query.execute(&mut *conn).await?;
    }
    if mark > start {
        sqlx::query(
            "DELETE FROM projection_positions_ahead WHERE projection = $1 AND position <= $2",
        )
        .bind(projection)
        .bind(mark as i64)
        .execute(&mut *conn)
        .await?;
        write_watermark(conn, projection, mark).await?;
    }
    Ok(mark)
}

async fn checkpoint(
    conn: &mut AnyConnection,
    projection: &str,
    source: &str,
) -> Result<Option<u64>, InfraError> {
    let row = sqlx::query(
        "SELECT position FROM projection_checkpoints WHERE projection = $1 AND source = $2",
    )
    .bind(projection)
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| get_u64(&row, "position")).transpose()
}

async fn next_offset(
    conn: &mut AnyConnection,
    projection: &str,
    source: &str,
) -> Result<u64, InfraError> {
    Ok(match checkpoint(conn, projection, source).await? {
        Some(next) => next,
        // The log starts at position 1; Kafka partitions at offset 0.
        None if source == LOG_SOURCE => 1,
        None => 0,
    })
}

fn delivery_from(received: Received) -> Delivery {
    Delivery {
        source: partition_source(&received.topic, received.partition),
        offset: received.offset as u64,
        record: received.record,
        traceparent: received.traceparent,
    }
}
