//! The event store: cqrs-es' `PersistedEventRepository` over [`Database`], writing sealed
//! [`Envelope`]s with a gap-free global position, and reading the log back in order.

use std::time::Duration;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use quantus_domain::envelope::{tag_payload, untag_payload};
use quantus_domain::events::{EventEnum, EventPayload};
use quantus_domain::{Actor, ActorKind, CommandContext, Envelope};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::db::{get_u64, Database};
use crate::InfraError;

/// One event as the log holds it: its global position and its envelope.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    pub position: u64,
    pub envelope: Envelope,
}

impl LogRecord {
    /// The record's event as its aggregate's event enum (see `quantus_domain::events`): the
    /// one way a consumer of the log reads an event. An event of another aggregate, of a type
    /// the enum does not declare, or with a payload of the wrong shape is `Corrupt`.
    pub fn decode<E: EventEnum>(&self) -> Result<E, InfraError> {
        self.envelope
            .decode::<E>()
            .map_err(|e| InfraError::Corrupt(format!("event at position {}: {e}", self.position)))
    }
}

pub(crate) const COLUMNS: &str =
    "position, event_id, aggregate_type, aggregate_id, sequence, event_type, \
    schema_version, occurred_at, tenant_id, actor_kind, actor_id, correlation_id, causation_id, \
    payload, prev_hash, hash";

/// The event store of every aggregate. Cheap to clone.
#[derive(Clone)]
pub struct SqlEventRepository {
    db: Database,
}

impl SqlEventRepository {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Events after `after`, in log order, at most `limit`.
    pub async fn read_log(&self, after: u64, limit: u32) -> Result<Vec<LogRecord>, InfraError> {
        read_log(&self.db, after, limit).await
    }

    /// The position of the newest event of one aggregate (0 if it has none).
    pub async fn aggregate_head(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<u64, InfraError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(position), 0) AS head FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_one(&self.db.pool)
        .await?;
        get_u64(&row, "head")
    }

    /// Records that `grant_id` can be found by (`kind`, `lookup`): a device user code's digest,
    /// or a session id.
    pub async fn index_grant(
        &self,
        kind: &str,
        lookup: &str,
        grant_id: &str,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "INSERT INTO grant_index (kind, lookup, grant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(kind)
        .bind(lookup)
        .bind(grant_id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The chained hashes of the events at positions `after + 1..=up_to`, in order: leaves of
    /// the log's Merkle tree.
    pub async fn event_hashes_between(
        &self,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<[u8; 32]>, InfraError> {
        let rows = sqlx::query(
            "SELECT position, hash FROM events WHERE position > $1 AND position <= $2 ORDER BY position",
        )
        .bind(after as i64)
        .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
        .fetch_all(&self.db.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let expected = after + i as u64 + 1;
            if get_u64(row, "position")? != expected {
                return Err(InfraError::Corrupt(format!(
                    "the log has a gap before position {expected}"
                )));
            }
            let hash: String = row.try_get("hash")?;
            let mut leaf = [0u8; 32];
            hex::decode_to_slice(&hash, &mut leaf).map_err(|_| {
                InfraError::Corrupt(format!("event {expected} has a malformed hash"))
            })?;
            out.push(leaf);
        }
        Ok(out)
    }

    /// Signed checkpoints in the log, by tree size: (log position, payload).
    pub async fn checkpoints(
        &self,
        after_size: u64,
        limit: u32,
    ) -> Result<Vec<(u64, serde_json::Value)>, InfraError> {
        let rows = sqlx::query(
            "SELECT position, payload FROM events WHERE aggregate_type = 'LogCheckpoint' AND aggregate_id > $1 ORDER BY aggregate_id LIMIT $2",
        )
        .bind(format!("checkpoint-{after_size:020}"))
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                Ok((
                    get_u64(r, "position")?,
                    serde_json::from_str(&payload)
                        .map_err(|e| InfraError::Corrupt(e.to_string()))?,
                ))
            })
            .collect()
    }

    /// The newest checkpoint: (log position, payload).
    pub async fn latest_checkpoint(&self) -> Result<Option<(u64, serde_json::Value)>, InfraError> {
        let row = sqlx::query(
            "SELECT position, payload FROM events WHERE aggregate_type = 'LogCheckpoint' ORDER BY aggregate_id DESC LIMIT 1",
        )
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| {
            let payload: String = r.try_get("payload")?;
            Ok((
                get_u64(&r, "position")?,
                serde_json::from_str(&payload).map_err(|e| InfraError::Corrupt(e.to_string()))?,
            ))
        })
        .transpose()
    }

    /// Where event `event_id` is: (position, tenant).
    pub async fn locate_event(&self, event_id: &str) -> Result<Option<(u64, String)>, InfraError> {
        let row = sqlx::query("SELECT position, tenant_id FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| Ok((get_u64(&r, "position")?, r.try_get("tenant_id")?)))
            .transpose()
    }

    /// Every event of one type, in log order (for sweeps such as retention).
    pub async fn events_of_type(
        &self,
        aggregate_type: &str,
        event_type: &str,
    ) -> Result<Vec<LogRecord>, InfraError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND event_type = $2 ORDER BY position"
        ))
        .bind(aggregate_type)
        .bind(event_type)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Every event of type `P`, decoded, in log order.
    pub async fn events_of<P: EventPayload>(&self) -> Result<Vec<(LogRecord, P)>, InfraError> {
        let records = self
            .events_of_type(<P::Enum as EventEnum>::AGGREGATE, P::NAME)
            .await?;
        records
            .into_iter()
            .map(|record| {
                let event = P::from_event(record.decode::<P::Enum>()?).ok_or_else(|| {
                    InfraError::Corrupt(format!(
                        "event at position {} is not a {}",
                        record.position,
                        P::NAME
                    ))
                })?;
                Ok((record, event))
            })
            .collect()
    }

    /// One aggregate's events with their log positions, in sequence order.
    pub async fn aggregate_records(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<LogRecord>, InfraError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Records (`kind`, `lookup`) once; false when it was already recorded (a replay).
    pub async fn claim_once(&self, kind: &str, lookup: &str) -> Result<bool, InfraError> {
        let done = sqlx::query(
            "INSERT INTO grant_index (kind, lookup, grant_id) VALUES ($1, $2, '') ON CONFLICT DO NOTHING",
        )
        .bind(kind)
        .bind(lookup)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets every (`kind`, `lookup`) whose lookup starts with `prefix` (a person's entries
    /// when they are erased).
    pub async fn forget_indexed(&self, kind: &str, prefix: &str) -> Result<u64, InfraError> {
        let done = sqlx::query(
            "DELETE FROM grant_index WHERE kind = $1 AND substr(lookup, 1, length($2)) = $2",
        )
        .bind(kind)
        .bind(prefix)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Grant ids found by (`kind`, `lookup`), oldest first.
    pub async fn indexed_grants(
        &self,
        kind: &str,
        lookup: &str,
    ) -> Result<Vec<String>, InfraError> {
        let rows = sqlx::query(
            "SELECT grant_id FROM grant_index WHERE kind = $1 AND lookup = $2 ORDER BY grant_id",
        )
        .bind(kind)
        .bind(lookup)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("grant_id")?)).collect()
    }

    /// How far process manager `process` has acted on the log (0 before it starts).
    pub async fn process_cursor(&self, process: &str) -> Result<u64, InfraError> {
        let row = sqlx::query("SELECT position FROM process_cursors WHERE process = $1")
            .bind(process)
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| get_u64(&r, "position"))
            .transpose()
            .map(|p| p.unwrap_or(0))
    }

    /// Records that `process` has acted on everything up to `position` (never moves back).
    pub async fn advance_process_cursor(
        &self,
        process: &str,
        position: u64,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "INSERT INTO process_cursors (process, position) VALUES ($1, $2)
             ON CONFLICT (process) DO UPDATE SET position = excluded.position
             WHERE process_cursors.position < excluded.position",
        )
        .bind(process)
        .bind(position as i64)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The saved state of aggregate (`aggregate_type`, `aggregate_id`) and the sequence it
    /// stands at, when one was saved by a build with fingerprint `build`.
    pub async fn snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        build: &str,
    ) -> Result<Option<(u64, String)>, InfraError> {
        let row = sqlx::query(
            "SELECT sequence, state FROM aggregate_snapshots
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND build = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(build)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|row| -> Result<(u64, String), InfraError> {
            let sequence: i64 = row.try_get("sequence")?;
            Ok((u64::try_from(sequence).unwrap_or(0), row.try_get("state")?))
        })
        .transpose()
    }

    /// Saves `state` as the aggregate at `sequence`, replacing an older one or one another
    /// build wrote; a later state saved first stays (saves may arrive out of order).
    pub async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        build: &str,
        state: &str,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "INSERT INTO aggregate_snapshots (aggregate_type, aggregate_id, sequence, build, state)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
             SET sequence = excluded.sequence, build = excluded.build, state = excluded.state
             WHERE aggregate_snapshots.sequence < excluded.sequence
                OR aggregate_snapshots.build <> excluded.build",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
        .bind(build)
        .bind(state)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Removes the saved state of an aggregate (one that could not be read).
    pub async fn forget_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "DELETE FROM aggregate_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// An aggregate's events up to sequence `up_to`, for deciding what an old event meant.
    pub async fn aggregate_records_until(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        up_to: u64,
    ) -> Result<Vec<LogRecord>, InfraError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence <= $3 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// One event of an aggregate, by its sequence, if it is stored.
    pub async fn aggregate_event(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Result<Option<LogRecord>, InfraError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// The sequence of one aggregate's last event at or before log position `position` (0
    /// when it had none yet): where the aggregate stood at that point of the log.
    pub async fn aggregate_sequence_at(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        position: u64,
    ) -> Result<u64, InfraError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(sequence), 0) AS sequence FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND position <= $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .fetch_one(&self.db.pool)
        .await?;
        get_u64(&row, "sequence")
    }

    /// Which aggregate the event at `position` belongs to, if it exists yet.
    pub async fn aggregate_at(
        &self,
        position: u64,
    ) -> Result<Option<(String, String)>, InfraError> {
        let row =
            sqlx::query("SELECT aggregate_type, aggregate_id FROM events WHERE position = $1")
                .bind(position as i64)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(match row {
            Some(row) => Some((row.try_get("aggregate_type")?, row.try_get("aggregate_id")?)),
            None => None,
        })
    }

    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<SerializedEvent>, InfraError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after_sequence as i64)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| record_from_row(row).map(|r| serialized_from_envelope(r.envelope)))
            .collect()
    }

    /// Appends one command's events (all of one aggregate, in consecutive sequence) through
    /// this process's group-commit writer (`group_commit.rs`) and answers with the log position
    /// of the last one once it is committed; `OptimisticLockError` when the aggregate's next
    /// sequence was taken first, in which case nothing of the command was written.
    pub async fn append(&self, events: Vec<SerializedEvent>) -> Result<u64, PersistenceError> {
        self.db.append(events).await
    }

    /// A slot in the bounded write queue, taken before a command does any work; `Overloaded`
    /// at once when the queue is full (load shedding).
    pub fn admit(
        &self,
    ) -> Result<crate::group_commit::WritePermit, crate::group_commit::Overloaded> {
        self.db.admit_write()
    }

    /// As [`SqlEventRepository::append`], in the slot `permit` holds.
    pub async fn append_admitted(
        &self,
        permit: crate::group_commit::WritePermit,
        events: Vec<SerializedEvent>,
    ) -> Result<u64, PersistenceError> {
        self.db.append_admitted(permit, events).await
    }
}

pub(crate) fn sql(e: sqlx::Error) -> PersistenceError {
    if e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
    {
        PersistenceError::OptimisticLockError
    } else {
        PersistenceError::ConnectionError(Box::new(e))
    }
}

pub(crate) fn connection(e: InfraError) -> PersistenceError {
    PersistenceError::ConnectionError(Box::new(e))
}

pub(crate) fn payload_text(v: &Value) -> Result<String, PersistenceError> {
    serde_json::to_string(v).map_err(PersistenceError::from)
}

/// Builds and seals the envelope of a new event from what cqrs-es hands the repository.
pub(crate) fn envelope_from_serialized(
    event: &SerializedEvent,
    prev_hash: &str,
) -> Result<Envelope, PersistenceError> {
    let meta = event.metadata.as_object().cloned().unwrap_or_default();
    let ctx = CommandContext::from_metadata(&meta).map_err(|key| {
        PersistenceError::UnknownError(format!("command metadata lacks a valid {key:?}").into())
    })?;
    let schema_version = event.event_version.parse::<u32>().map_err(|_| {
        PersistenceError::UnknownError(
            format!("event version {:?} is not a number", event.event_version).into(),
        )
    })?;
    Envelope {
        event_id: Uuid::now_v7(),
        aggregate_type: event.aggregate_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        sequence: event.sequence as u64,
        event_type: event.event_type.clone(),
        schema_version,
        occurred_at: quantus_domain::envelope::truncate_to_micros(ctx.occurred_at),
        tenant_id: ctx.tenant_id,
        actor: ctx.actor,
        correlation_id: ctx.correlation_id,
        causation_id: ctx.causation_id,
        payload: untag_payload(&event.event_type, event.payload.clone()),
        prev_hash: String::new(),
        hash: String::new(),
    }
    .seal(prev_hash)
    .map_err(|e| PersistenceError::UnknownError(Box::new(e)))
}

/// The inverse: what cqrs-es needs to rebuild an aggregate.
fn serialized_from_envelope(e: Envelope) -> SerializedEvent {
    let mut meta = CommandContext {
        tenant_id: e.tenant_id,
        actor: e.actor,
        occurred_at: e.occurred_at,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
    }
    .to_metadata();
    meta.insert("event_id".into(), e.event_id.to_string());
    meta.insert("hash".into(), e.hash);
    SerializedEvent {
        aggregate_id: e.aggregate_id,
        sequence: e.sequence as usize,
        aggregate_type: e.aggregate_type,
        payload: tag_payload(&e.event_type, e.payload),
        event_type: e.event_type,
        event_version: e.schema_version.to_string(),
        metadata: serde_json::to_value(meta).unwrap_or(Value::Null),
    }
}

/// Reads one `events` row. Malformed rows are reported, never silently repaired.
pub fn record_from_row(row: &AnyRow) -> Result<LogRecord, InfraError> {
    let position = get_u64(row, "position")?;
    let corrupt = |what: &str| InfraError::Corrupt(format!("event at position {position}: {what}"));
    let text = |c: &str| -> Result<String, InfraError> { Ok(row.try_get::<String, _>(c)?) };
    let uuid = |c: &str| Uuid::parse_str(&text(c)?).map_err(|_| corrupt(c));
    let occurred_at = chrono::DateTime::parse_from_rfc3339(&text("occurred_at")?)
        .map_err(|_| corrupt("occurred_at"))?
        .with_timezone(&chrono::Utc);
    let envelope = Envelope {
        event_id: uuid("event_id")?,
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        sequence: get_u64(row, "sequence")?,
        event_type: text("event_type")?,
        schema_version: u32::try_from(get_u64(row, "schema_version")?)
            .map_err(|_| corrupt("schema_version"))?,
        occurred_at,
        tenant_id: text("tenant_id")?,
        actor: Actor {
            kind: ActorKind::parse(&text("actor_kind")?).ok_or_else(|| corrupt("actor_kind"))?,
            id: text("actor_id")?,
        },
        correlation_id: uuid("correlation_id")?,
        causation_id: uuid("causation_id")?,
        payload: serde_json::from_str(&text("payload")?).map_err(|_| corrupt("payload"))?,
        prev_hash: text("prev_hash")?,
        hash: text("hash")?,
    };
    Ok(LogRecord { position, envelope })
}

/// Events after `after`, in log order, at most `limit`.
pub async fn read_log(db: &Database, after: u64, limit: u32) -> Result<Vec<LogRecord>, InfraError> {
    // Positions are signed 64-bit in the store: nothing can follow a larger one (and a
    // wrapping cast would turn it into -1, i.e. the whole log).
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
    ))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(record_from_row).collect()
}

/// Which aggregate each event after `after` belongs to, in log order, at most `limit`: what a
/// process needs to know which of its in-memory states the log has moved past, without
/// reading payloads.
pub async fn read_log_keys(
    db: &Database,
    after: u64,
    limit: u32,
) -> Result<Vec<LogKey>, InfraError> {
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let rows = sqlx::query(
        "SELECT position, aggregate_type, aggregate_id, sequence FROM events \
         WHERE position > $1 ORDER BY position LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(LogKey {
                position: get_u64(row, "position")?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: get_u64(row, "sequence")?,
            })
        })
        .collect()
}

/// An event's place in the log and in its aggregate's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    pub position: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
}

/// The last log position appended before `instant` (0 when none was): a time answered in
/// positions, so a reader can start or stop there.
///
/// Why a binary search and no index: the writer stamps each event's id (UUID v7) while it holds
/// the append lock and numbers the events in the same order (`group_commit.rs`), so the ids'
/// instants do not decrease along the positions, which are gap-free. `occurred_at` is the
/// command's time, taken before it queued, and may run backwards; it is not used. Writers on
/// hosts whose clocks disagree can blur the boundary by that disagreement.
pub async fn position_before(
    db: &Database,
    instant: chrono::DateTime<chrono::Utc>,
) -> Result<u64, InfraError> {
    let (mut low, mut high) = (0, db.head_position().await?);
    // Invariant: `low` was appended before `instant` (0 stands for the start), `high` is the
    // answer's upper bound.
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if appended_at(db, middle).await? < instant {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    Ok(low)
}

/// When the writer stamped the event at `position` (its id's UUID v7 instant).
pub async fn appended_at(
    db: &Database,
    position: u64,
) -> Result<chrono::DateTime<chrono::Utc>, InfraError> {
    let corrupt = |what: &str| InfraError::Corrupt(format!("event at position {position}: {what}"));
    let row = sqlx::query("SELECT event_id FROM events WHERE position = $1")
        .bind(i64::try_from(position).map_err(|_| corrupt("position"))?)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| corrupt("missing (positions are gap-free)"))?;
    let id =
        Uuid::parse_str(&row.try_get::<String, _>("event_id")?).map_err(|_| corrupt("event_id"))?;
    let (seconds, nanos) = id
        .get_timestamp()
        .filter(|_| id.get_version_num() == 7)
        .ok_or_else(|| corrupt("event_id is not a UUID v7"))?
        .to_unix();
    chrono::DateTime::from_timestamp(i64::try_from(seconds).unwrap_or(i64::MAX), nanos)
        .ok_or_else(|| corrupt("event_id's instant"))
}

/// Follows the log from `after`, calling `on_batch` for each non-empty batch, until it returns
/// `false`. Wakes at once on appends in this process, and polls for other processes' appends.
pub async fn tail_log<F, Fut>(
    db: &Database,
    mut after: u64,
    batch: u32,
    mut on_batch: F,
) -> Result<(), InfraError>
where
    F: FnMut(Vec<LogRecord>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, InfraError>>,
{
    loop {
        let records = read_log(db, after, batch).await?;
        match records.last() {
            Some(last) => {
                after = last.position;
                if !on_batch(records).await? {
                    return Ok(());
                }
            }
            None => db.wait_for_append(after, Duration::from_millis(100)).await,
        }
    }
}

impl PersistedEventRepository for SqlEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.load(A::TYPE, aggregate_id, 0)
            .await
            .map_err(connection)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.load(A::TYPE, aggregate_id, last_sequence as u64)
            .await
            .map_err(connection)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        // Aggregates are short streams; replaying them is cheaper than keeping snapshots right.
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.append(events.to_vec()).await.map(|_| ())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let events = self
            .load(A::TYPE, aggregate_id, 0)
            .await
            .map_err(connection)?;
        Ok(replay(events).await)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 ORDER BY position"
        ))
        .bind(A::TYPE)
        .fetch_all(&self.db.pool)
        .await
        .map_err(sql)?;
        let events = rows
            .iter()
            .map(|row| record_from_row(row).map(|r| serialized_from_envelope(r.envelope)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(connection)?;
        Ok(replay(events).await)
    }
}

async fn replay(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    for event in events {
        // The channel holds every event, so pushing never waits.
        let _ = feed.push(Ok(event)).await;
    }
    stream
}
