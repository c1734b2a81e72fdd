//! Group commit: one writer per [`Database`](crate::Database) appends the events of every
//! pending command in one transaction.
//!
//! Why: appends are serialised (gap-free, commit-ordered positions; see docs/event-log.md), so
//! with one transaction per command the log's throughput is one lock hold (four round trips and
//! a WAL flush on Postgres, a busy-handler sleep on SQLite) per command. Here a command hands
//! its events to a bounded queue and waits for its own answer; a single writer task takes
//! whatever is queued, and while it commits one batch the next one queues up (no timer, no
//! artificial delay: an idle writer commits a lone command at once).
//!
//! One batch is one transaction:
//!
//! 1. the append lock (Postgres: `pg_advisory_xact_lock`; SQLite: `BEGIN IMMEDIATE` on the
//!    writer's own connection), which still serialises this writer against other processes;
//! 2. one head read (`MAX(position)`);
//! 3. one read of the last link (sequence, hash) of every aggregate the batch touches;
//! 4. in memory, in queue order, each command's optimistic-concurrency check against those links
//!    (and against earlier commands of the same batch): a command whose first sequence is not
//!    its aggregate's last + 1 is refused on its own with `OptimisticLockError` (the API's 409)
//!    and none of its events is written; the others are sealed (hash chain) and numbered
//!    head + 1, head + 2, … ;
//! 5. one multi-row `INSERT` (in chunks of [`ROWS_PER_INSERT`]) and one `COMMIT`.
//!
//! Only after the commit does each command learn the position of its own last event. If a
//! statement fails before the commit (it should not: every check was made under the lock), the
//! transaction is rolled back and each command of the batch is retried alone, so one bad
//! command cannot fail the others. If the commit itself fails, every command of the batch gets
//! the error (as a lone command did before): its outcome is unknown to the writer, and the
//! caller's retry meets the aggregate's real state.
//!
//! A caller that gave up waiting (its request was dropped) before its batch formed is left out of
//! the batch; once the batch is formed its events commit with the others.
//!
//! Admission (load shedding, issue 17): the queue is bounded by [`WriteLimits`]. A write takes
//! one of `queue_depth` slots before it does any work (the command bus takes it before loading
//! the aggregate) and holds it until it is answered; with every slot taken it is refused at once
//! with [`Overloaded`] (the API's 503 with `Retry-After`), so overload never turns into a
//! queue that grows without bound. A write admitted but not yet taken into a batch within
//! `queue_timeout` of its request's arrival is withdrawn (nothing of it is written) and refused
//! the same way, so an accepted write waits at most that long plus one batch. Once the writer
//! has taken a command into a batch it always waits for the batch's answer: a 503 means "not
//! written". The deadline counts from the arrival the HTTP server stamps ([`arriving`]; from
//! admission where there is none), so the time before admission (authentication, reading the
//! body, waiting for a CPU) counts too, and a write already past it at admission is shed at
//! once, before it loads anything.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use quantus_domain::{Envelope, GENESIS_HASH};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Row};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::db::{announce, get_u64, Dialect, POSTGRES_APPEND_LOCK};
use crate::event_store::{connection, envelope_from_serialized, payload_text, sql, COLUMNS};

/// Most commands in one batch.
pub const MAX_BATCH_COMMANDS: usize = 256;
/// A batch stops taking commands once it holds this many events.
pub const MAX_BATCH_EVENTS: usize = 2048;
/// Rows per `INSERT` statement: 16 parameters each, far below both databases' limits.
pub const ROWS_PER_INSERT: usize = 200;
/// Aggregates per last-link query (a `UNION ALL` of that many parts; SQLite allows 500).
const LINKS_PER_QUERY: usize = 200;

type Answer = Result<u64, PersistenceError>;

/// Bounds on the queue in front of the writer (`QUANTUS_WRITE_QUEUE_DEPTH`,
/// `QUANTUS_WRITE_QUEUE_TIMEOUT_MS`, `QUANTUS_WRITE_RETRY_AFTER_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// Writes admitted at once (loading, deciding, queued or being committed); more are shed.
    pub queue_depth: usize,
    /// The longest a write may be in the server (from its request's arrival, else from its
    /// admission) before the writer takes it into a batch.
    pub queue_timeout: Duration,
    /// What a shed write is told to wait before it tries again (`Retry-After`).
    pub retry_after: Duration,
}

impl WriteLimits {
    /// The largest accepted `queue_depth` (far below Tokio's semaphore limit).
    pub const MAX_DEPTH: usize = 1 << 20;
}

impl Default for WriteLimits {
    fn default() -> Self {
        Self {
            queue_depth: 64,
            queue_timeout: Duration::from_millis(2000),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A write refused because the write queue is full, or because it waited in it too long.
/// Nothing of it was written; the caller may try again after `retry_after`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the event store is overloaded: the write was not accepted; try again in {} s", retry_after.as_secs().max(1))]
pub struct Overloaded {
    pub retry_after: Duration,
}

impl Overloaded {
    /// The `Overloaded` inside a store error, if that is what it is.
    pub fn of(e: &PersistenceError) -> Option<Self> {
        match e {
            PersistenceError::ConnectionError(inner) => inner.downcast_ref::<Overloaded>().copied(),
            _ => None,
        }
    }
}

impl From<Overloaded> for PersistenceError {
    fn from(o: Overloaded) -> Self {
        PersistenceError::ConnectionError(Box::new(o))
    }
}

tokio::task_local! {
    /// When the request being served arrived (set by the HTTP server around each request).
    static ARRIVAL: Instant;
}

/// Runs `work` (one request) with its arrival time known to admission: a write's queueing
/// deadline then counts from `at`. Work not run in it (jobs, the CLI) counts from admission.
pub async fn arriving<F: std::future::Future>(at: Instant, work: F) -> F::Output {
    ARRIVAL.scope(at, work).await
}

/// One admitted write's slot in the queue, held until it is answered (or dropped unused).
pub struct WritePermit {
    _slot: OwnedSemaphorePermit,
    deadline: Instant,
}

/// The bounded admission every write passes, shared by every clone of a `Database`.
struct Admission {
    slots: Arc<Semaphore>,
    limits: WriteLimits,
    shed: AtomicU64,
}

impl Admission {
    fn new(limits: WriteLimits) -> Self {
        let depth = limits.queue_depth.clamp(1, WriteLimits::MAX_DEPTH);
        Self {
            slots: Arc::new(Semaphore::new(depth)),
            limits: WriteLimits {
                queue_depth: depth,
                ..limits
            },
            shed: AtomicU64::new(0),
        }
    }

    fn overloaded(&self) -> Overloaded {
        self.shed.fetch_add(1, Ordering::Relaxed);
        Overloaded {
            retry_after: self.limits.retry_after,
        }
    }
}

/// What the write queue holds now, and what it has shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Writes admitted and not yet answered.
    pub in_flight: usize,
    /// The configured bound.
    pub depth: usize,
    /// Writes refused since the start (queue full, or waited too long).
    pub shed: u64,
}

/// A queued request: waiting for the writer, taken into a batch, or withdrawn by its caller.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// One command's events, and where its answer goes.
struct Request {
    events: Vec<SerializedEvent>,
    /// The W3C trace context of the command's `append` span (only while trace export is on).
    traceparent: Option<String>,
    reply: oneshot::Sender<Answer>,
    state: Arc<AtomicU8>,
}

impl Request {
    /// The writer takes the request into its batch unless its caller withdrew it (or left).
    fn take(&self) -> bool {
        !self.reply.is_closed()
            && self
                .state
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// What the writer has done so far: transactions and the commands in them.
#[derive(Debug, Default)]
pub struct AppendStats {
    /// Batch transactions attempted (a batch retried command by command counts each retry).
    pub batches: AtomicU64,
    /// Commands those transactions carried (refused ones included).
    pub commands: AtomicU64,
}

impl AppendStats {
    /// (batches, commands) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.commands.load(Ordering::Relaxed),
        )
    }
}

/// The handle every clone of a `Database` shares: the queue into this process's writer, which is
/// started on the first append (on the runtime of that append) and again if it ever stopped.
#[derive(Clone)]
pub(crate) struct Appender {
    queue: Arc<Mutex<Option<mpsc::UnboundedSender<Request>>>>,
    admission: Arc<Admission>,
    pool: AnyPool,
    dialect: Dialect,
    head: Arc<watch::Sender<u64>>,
    stats: Arc<AppendStats>,
}

impl Appender {
    pub(crate) fn new(pool: AnyPool, dialect: Dialect, head: Arc<watch::Sender<u64>>) -> Self {
        Self {
            queue: Arc::new(Mutex::new(None)),
            admission: Arc::new(Admission::new(WriteLimits::default())),
            pool,
            dialect,
            head,
            stats: Arc::default(),
        }
    }

    pub(crate) fn stats(&self) -> &AppendStats {
        &self.stats
    }

    /// Replaces the queue's bounds (before the handle is shared: clones made earlier keep the
    /// old admission).
    pub(crate) fn set_limits(&mut self, limits: WriteLimits) {
        self.admission = Arc::new(Admission::new(limits));
    }

    pub(crate) fn limits(&self) -> WriteLimits {
        self.admission.limits
    }

    pub(crate) fn queue_stats(&self) -> QueueStats {
        let a = &self.admission;
        QueueStats {
            in_flight: a
                .limits
                .queue_depth
                .saturating_sub(a.slots.available_permits()),
            depth: a.limits.queue_depth,
            shed: a.shed.load(Ordering::Relaxed),
        }
    }

    /// A slot in the write queue, or [`Overloaded`] at once when every slot is taken or the
    /// request has been in the server longer than the queue timeout already.
    pub(crate) fn admit(&self) -> Result<WritePermit, Overloaded> {
        let a = &self.admission;
        let now = Instant::now();
        let arrived = ARRIVAL.try_with(|at| *at).unwrap_or(now);
        let deadline = arrived + a.limits.queue_timeout;
        if deadline <= now {
            return Err(a.overloaded());
        }
        match a.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(WritePermit {
                _slot: slot,
                deadline,
            }),
            Err(_) => Err(a.overloaded()),
        }
    }

    /// Appends one command's events (all of one aggregate, sequences consecutive) and answers
    /// with the log position of the last one, once it is committed.
    pub(crate) async fn append(&self, events: Vec<SerializedEvent>) -> Answer {
        let permit = self.admit()?;
        self.append_admitted(permit, events).await
    }

    /// As [`Appender::append`], in the slot `permit` holds (released when this returns).
    pub(crate) async fn append_admitted(
        &self,
        permit: WritePermit,
        events: Vec<SerializedEvent>,
    ) -> Answer {
        if events.is_empty() {
            return Ok(0);
        }
        use tracing::Instrument as _;
        // For trace export only (left out of the log): the wait for this command's events to be
        // committed by the group-commit writer, which commits many commands in one transaction.
        // (`i64`: the OpenTelemetry bridge exports unsigned fields as text.)
        let span = tracing::info_span!(target: crate::telemetry::TRACE_TARGET, "append", events = events.len() as i64);
        // Recorded beside the events, so the relay and the projectors continue this trace.
        let traceparent = crate::telemetry::enabled()
            .then(|| crate::telemetry::traceparent_of(&span))
            .flatten();
        self.enqueue(permit, events, traceparent)
            .instrument(span)
            .await
    }

    async fn enqueue(
        &self,
        permit: WritePermit,
        events: Vec<SerializedEvent>,
        traceparent: Option<String>,
    ) -> Answer {
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        self.sender()
            .send(Request {
                events,
                traceparent,
                reply,
                state: state.clone(),
            })
            .map_err(|_| stopped())?;
        match tokio::time::timeout_at(permit.deadline, &mut answer).await {
            Ok(answered) => answered.map_err(|_| stopped())?,
            Err(_) => {
                if state
                    .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // Not taken into a batch: it will never be written.
                    Err(self.admission.overloaded().into())
                } else {
                    // Already in a batch being committed: its answer is the truth.
                    answer.await.map_err(|_| stopped())?
                }
            }
        }
    }

    fn sender(&self) -> mpsc::UnboundedSender<Request> {
        let mut slot = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        // Unbounded as a channel, bounded by admission: every request in it holds a slot, but for
        // those withdrawn by their callers, which the writer drops when it reaches them.
        let (sender, receiver) = mpsc::unbounded_channel();
        // The writer holds the pool and the head signal, never this handle: when the last
        // `Database` clone goes, the queue closes and the writer ends.
        let writer = Writer {
            pool: self.pool.clone(),
            dialect: self.dialect,
            head: self.head.clone(),
            stats: self.stats.clone(),
            conn: None,
        };
        tokio::spawn(writer.run(receiver));
        *slot = Some(sender.clone());
        sender
    }
}

fn stopped() -> PersistenceError {
    PersistenceError::ConnectionError(Box::new(std::io::Error::other(
        "the event writer stopped before answering",
    )))
}

struct Writer {
    pool: AnyPool,
    dialect: Dialect,
    head: Arc<watch::Sender<u64>>,
    stats: Arc<AppendStats>,
    /// The writer's own connection, taken out of the pool (on SQLite the only one that appends).
    conn: Option<AnyConnection>,
}

/// Why a batch failed as a whole.
struct Failure {
    error: PersistenceError,
    /// The `COMMIT` itself failed: the batch's outcome is unknown, so it is not retried.
    at_commit: bool,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = queue.recv().await {
            if !first.take() {
                continue;
            }
            let mut events = first.events.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_COMMANDS && events < MAX_BATCH_EVENTS {
                match queue.try_recv() {
                    Ok(next) if next.take() => {
                        events += next.events.len();
                        batch.push(next);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
        }
    }

    async fn commit(&mut self, batch: Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        let commands: Vec<Command<'_>> = batch.iter().map(Request::command).collect();
        match self.attempt(&commands).await {
            Ok(answers) => self.answer(batch, answers),
            Err(failure) if !failure.at_commit && batch.len() > 1 => {
                tracing::warn!(
                    error = %failure.error,
                    commands = batch.len(),
                    "a batch of appends failed before its commit; appending its commands one by one"
                );
                for request in batch {
                    let answer = match self.attempt(&[request.command()]).await {
                        Ok(mut answers) => answers.pop().unwrap_or_else(|| Err(stopped())),
                        Err(failure) => Err(failure.error),
                    };
                    if let Ok(position) = answer {
                        announce(&self.head, position);
                    }
                    let _ = request.reply.send(answer);
                }
            }
            Err(failure) => {
                let message = failure.error.to_string();
                let mut errors =
                    std::iter::once(failure.error).chain(std::iter::repeat_with(|| {
                        PersistenceError::ConnectionError(Box::new(std::io::Error::other(
                            message.clone(),
                        )))
                    }));
                for request in batch {
                    if let Some(e) = errors.next() {
                        let _ = request.reply.send(Err(e));
                    }
                }
            }
        }
    }

    fn answer(&self, batch: Vec<Request>, answers: Vec<Answer>) {
        if let Some(last) = answers.iter().filter_map(|a| a.as_ref().ok()).max() {
            announce(&self.head, *last);
        }
        for (request, answer) in batch.into_iter().zip(answers) {
            // A caller that stopped waiting simply does not hear the answer.
            let _ = request.reply.send(answer);
        }
    }

    /// One transaction for `commands`; per command, its last position or why it was refused.
    async fn attempt(&mut self, commands: &[Command<'_>]) -> Result<Vec<Answer>, Failure> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        if self.conn.is_none() {
            let conn = self.pool.acquire().await.map_err(|e| Failure {
                error: sql(e),
                at_commit: false,
            })?;
            self.conn = Some(conn.detach());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure {
                error: stopped(),
                at_commit: false,
            });
        };
        let result = append_batch(conn, self.dialect, commands).await;
        if result.is_err() {
            // Start the next batch on a fresh connection: this one may be broken, or still in
            // the failed transaction.
            self.conn = None;
        }
        result
    }
}

/// One command of a batch: its events and its append span's trace context.
struct Command<'a> {
    events: &'a [SerializedEvent],
    traceparent: Option<&'a str>,
}

impl Request {
    fn command(&self) -> Command<'_> {
        Command {
            events: &self.events,
            traceparent: self.traceparent.as_deref(),
        }
    }
}

/// Trace contexts are kept for this many positions behind the head (the relay and the
/// projectors read them within moments; one that is this far behind has lost the trace's
/// timing anyway), pruned whenever a batch crosses a multiple of [`TRACE_PRUNE_EVERY`].
const TRACE_KEEP: u64 = 100_000;
const TRACE_PRUNE_EVERY: u64 = 4096;

/// The batch's transaction: lock, head, links, checks, one multi-row insert, commit.
async fn append_batch(
    conn: &mut AnyConnection,
    dialect: Dialect,
    commands: &[Command<'_>],
) -> Result<Vec<Answer>, Failure> {
    let before = |error: PersistenceError| Failure {
        error,
        at_commit: false,
    };
    let mut tx = match dialect {
        Dialect::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await.map_err(sql),
        Dialect::Postgres => conn.begin().await.map_err(sql),
    }
    .map_err(before)?;
    if dialect == Dialect::Postgres {
        sqlx::query(POSTGRES_APPEND_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| before(sql(e)))?;
    }
    let head = sqlx::query("SELECT COALESCE(MAX(position), 0) AS head FROM events")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| before(sql(e)))?;
    let mut position = get_u64(&head, "head").map_err(|e| before(connection(e)))?;

    let mut aggregates: Vec<(&str, &str)> = commands
        .iter()
        .filter_map(|c| c.events.first())
        .map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str()))
        .collect();
    aggregates.sort_unstable();
    aggregates.dedup();
    let mut links = last_links(&mut tx, &aggregates).await.map_err(before)?;

    let first_position = position;
    let mut rows: Vec<(u64, Envelope)> = Vec::new();
    let mut traces: Vec<(u64, &str)> = Vec::new();
    let mut answers = Vec::with_capacity(commands.len());
    for command in commands {
        match seal_command(command.events, &links, position) {
            Ok(sealed) => {
                if let Some(traceparent) = command.traceparent {
                    traces.extend(sealed.iter().map(|(p, _)| (*p, traceparent)));
                }
                if let Some((last_position, last)) = sealed.last() {
                    position = *last_position;
                    links.insert(
                        (last.aggregate_type.clone(), last.aggregate_id.clone()),
                        (last.sequence, last.hash.clone()),
                    );
                }
                answers.push(Ok(position));
                rows.extend(sealed);
            }
            Err(refused) => answers.push(Err(refused)),
        }
    }
    insert_rows(&mut tx, &rows).await.map_err(before)?;
    if !traces.is_empty() {
        insert_traces(&mut tx, &traces).await.map_err(before)?;
        if position / TRACE_PRUNE_EVERY > first_position / TRACE_PRUNE_EVERY {
            sqlx::query("DELETE FROM event_trace_context WHERE position <= $1")
                .bind(position.saturating_sub(TRACE_KEEP) as i64)
                .execute(&mut *tx)
                .await
                .map_err(|e| before(sql(e)))?;
        }
    }
    tx.commit().await.map_err(|e| Failure {
        error: sql(e),
        at_commit: true,
    })?;
    Ok(answers)
}

/// Checks one command against its aggregate's last link and seals its events, numbered after
/// `position`. Refused commands write nothing.
fn seal_command(
    events: &[SerializedEvent],
    links: &HashMap<(String, String), (u64, String)>,
    mut position: u64,
) -> Result<Vec<(u64, Envelope)>, PersistenceError> {
    let Some(first) = events.first() else {
        return Ok(vec![]);
    };
    let (last_sequence, prev_hash) = links
        .get(&(first.aggregate_type.clone(), first.aggregate_id.clone()))
        .map(|(s, h)| (*s, h.as_str()))
        .unwrap_or((0, GENESIS_HASH));
    if first.sequence as u64 != last_sequence + 1 {
        return Err(PersistenceError::OptimisticLockError);
    }
    let mut prev_hash = prev_hash.to_owned();
    let mut sealed = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        if event.aggregate_type != first.aggregate_type
            || event.aggregate_id != first.aggregate_id
            || event.sequence != first.sequence + i
        {
            return Err(PersistenceError::UnknownError(
                "a command's events must be of one aggregate, in consecutive sequence".into(),
            ));
        }
        position += 1;
        let envelope = envelope_from_serialized(event, &prev_hash)?;
        prev_hash.clone_from(&envelope.hash);
        sealed.push((position, envelope));
    }
    Ok(sealed)
}

/// The last (sequence, hash) of each of `aggregates` that has events.
async fn last_links(
    tx: &mut AnyConnection,
    aggregates: &[(&str, &str)],
) -> Result<HashMap<(String, String), (u64, String)>, PersistenceError> {
    let mut links = HashMap::with_capacity(aggregates.len());
    for chunk in aggregates.chunks(LINKS_PER_QUERY) {
        // Each part reads one aggregate's newest event backwards along the unique index
        // (aggregate_type, aggregate_id, sequence).
        let mut text = String::new();
        for i in 0..chunk.len() {
            if i > 0 {
                text.push_str(" UNION ALL ");
            }
            let _ = write!(
                text,
                "SELECT * FROM (SELECT aggregate_type, aggregate_id, sequence, hash FROM events \
                 WHERE aggregate_type = ${} AND aggregate_id = ${} ORDER BY sequence DESC LIMIT 1) AS l{i}",
                2 * i + 1,
                2 * i + 2
            );
        }
        let mut query = sqlx::query(&text);
        for (aggregate_type, aggregate_id) in chunk {
            query = query.bind(*aggregate_type).bind(*aggregate_id);
        }
        for row in query.fetch_all(&mut *tx).await.map_err(sql)? {
            links.insert(
                (
                    row.try_get("aggregate_type").map_err(sql)?,
                    row.try_get("aggregate_id").map_err(sql)?,
                ),
                (
                    get_u64(&row, "sequence").map_err(connection)?,
                    row.try_get("hash").map_err(sql)?,
                ),
            );
        }
    }
    Ok(links)
}

/// Inserts the sealed events, [`ROWS_PER_INSERT`] rows per statement.
async fn insert_rows(
    tx: &mut AnyConnection,
    rows: &[(u64, Envelope)],
) -> Result<(), PersistenceError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut text = format!("INSERT INTO events ({COLUMNS}) VALUES ");
        for i in 0..chunk.len() {
            text.push_str(if i == 0 { "(" } else { ", (" });
            for c in 1..=16 {
                let _ = write!(text, "{}${}", if c == 1 { "" } else { ", " }, i * 16 + c);
            }
            text.push(')');
        }
        let mut query = sqlx::query(&text);
        for (position, envelope) in chunk {
            query = bind_event(query, *position, envelope)?;
        }
        query.execute(&mut *tx).await.map_err(sql)?;
    }
    Ok(())
}

/// Records each traced event's `traceparent` beside it ([`ROWS_PER_INSERT`] rows per statement).
async fn insert_traces(
    tx: &mut AnyConnection,
    traces: &[(u64, &str)],
) -> Result<(), PersistenceError> {
    for chunk in traces.chunks(ROWS_PER_INSERT) {
        let mut text = "INSERT INTO event_trace_context (position, traceparent) VALUES ".to_owned();
        for i in 0..chunk.len() {
            let _ = write!(
                text,
                "{}(${}, ${})",
                if i == 0 { "" } else { ", " },
                2 * i + 1,
                2 * i + 2
            );
        }
        let mut query = sqlx::query(&text);
        for (position, traceparent) in chunk {
            query = query.bind(*position as i64).bind(*traceparent);
        }
        query.execute(&mut *tx).await.map_err(sql)?;
    }
    Ok(())
}

/// Binds one `events` row, in [`COLUMNS`] order.
fn bind_event<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    position: u64,
    e: &'q Envelope,
) -> Result<Query<'q, Any, AnyArguments<'q>>, PersistenceError> {
    Ok(query
        .bind(position as i64)
        .bind(e.event_id.to_string())
        .bind(e.aggregate_type.as_str())
        .bind(e.aggregate_id.as_str())
        .bind(e.sequence as i64)
        .bind(e.event_type.as_str())
        .bind(i64::from(e.schema_version))
        .bind(quantus_domain::envelope::rfc3339_micros::format(
            &e.occurred_at,
        ))
        .bind(e.tenant_id.as_str())
        .bind(e.actor.kind.as_str())
        .bind(e.actor.id.as_str())
        .bind(e.correlation_id.to_string())
        .bind(e.causation_id.to_string())
        .bind(payload_text(&e.payload)?)
        .bind(e.prev_hash.as_str())
        .bind(e.hash.as_str()))
}

#[cfg(test)]
mod tests {
    use quantus_domain::{Actor, ActorKind, CommandContext};
    use serde_json::json;

    use super::*;

    fn event(aggregate_id: &str, sequence: usize) -> SerializedEvent {
        let metadata = CommandContext {
            tenant_id: aggregate_id.to_owned(),
            actor: Actor {
                kind: ActorKind::System,
                id: "test".into(),
            },
            occurred_at: chrono::Utc::now(),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: uuid::Uuid::now_v7(),
        }
        .to_metadata();
        SerializedEvent {
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            aggregate_type: "Organization".into(),
            event_type: "OrganizationRenamed".into(),
            event_version: "1".into(),
            payload: json!({"OrganizationRenamed": {"name": "n", "previous_name": "p"}}),
            metadata: serde_json::to_value(metadata).unwrap(),
        }
    }

    fn links(entries: &[(&str, u64, &str)]) -> HashMap<(String, String), (u64, String)> {
        entries
            .iter()
            .map(|(id, seq, hash)| {
                (
                    ("Organization".to_owned(), (*id).to_owned()),
                    (*seq, (*hash).to_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn a_new_aggregate_starts_at_the_genesis_hash_and_takes_the_next_positions() {
        let sealed = seal_command(&[event("a", 1), event("a", 2)], &links(&[]), 41).unwrap();
        let positions: Vec<u64> = sealed.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, [42, 43]);
        assert_eq!(sealed[0].1.prev_hash, GENESIS_HASH);
        assert_eq!(sealed[1].1.prev_hash, sealed[0].1.hash);
        assert!(sealed[0].1.verify_link(None).is_ok());
        assert!(sealed[1].1.verify_link(Some(&sealed[0].1)).is_ok());
    }

    #[test]
    fn a_command_continues_its_aggregates_chain() {
        let hash = "ab".repeat(32);
        let sealed = seal_command(&[event("a", 4)], &links(&[("a", 3, &hash)]), 9).unwrap();
        assert_eq!(sealed[0].0, 10);
        assert_eq!(sealed[0].1.prev_hash, hash);
    }

    #[test]
    fn a_taken_or_skipped_sequence_is_a_conflict() {
        let taken = links(&[("a", 3, &"ab".repeat(32))]);
        for sequence in [1, 3, 5] {
            assert!(matches!(
                seal_command(&[event("a", sequence)], &taken, 0),
                Err(PersistenceError::OptimisticLockError)
            ));
        }
        assert!(matches!(
            seal_command(&[event("b", 2)], &taken, 0),
            Err(PersistenceError::OptimisticLockError)
        ));
    }

    #[test]
    fn a_command_spanning_aggregates_or_skipping_sequences_is_refused_whole() {
        for events in [
            vec![event("a", 1), event("b", 2)],
            vec![event("a", 1), event("a", 3)],
        ] {
            assert!(matches!(
                seal_command(&events, &links(&[]), 0),
                Err(PersistenceError::UnknownError(_))
            ));
        }
    }
}
