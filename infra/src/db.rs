//! One connection pool over Postgres (production) or SQLite (embedded), and the schema.
//!
//! Both dialects share every statement except the few named in [`Dialect`]; columns use only
//! BIGINT and TEXT so that the same rows mean the same thing in both.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use tokio::sync::watch;

use crate::group_commit::Appender;
use crate::InfraError;

/// The transaction-scoped lock every append to the log takes on Postgres (see
/// docs/event-log.md, "Log positions").
pub(crate) const POSTGRES_APPEND_LOCK: &str = "SELECT pg_advisory_xact_lock(7215130706)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A pool plus the knowledge of which database it talks to.
#[derive(Clone)]
pub struct Database {
    pub pool: AnyPool,
    pub dialect: Dialect,
    /// The last log position this process committed; wakes in-process log tailers at once.
    head: Arc<watch::Sender<u64>>,
    /// The queue into this database's one group-commit writer (`group_commit.rs`).
    appender: Appender,
}

/// Statements that differ between the dialects.
const SCHEMA: &[&str] = &[
    // The log. One row per event; `position` is gap-free and in commit order (see
    // docs/event-log.md). The row is also the outbox entry: the relay keeps a cursor.
    "CREATE TABLE IF NOT EXISTS events (
        position BIGINT PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        aggregate_type TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        schema_version BIGINT NOT NULL,
        occurred_at TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        causation_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (aggregate_type, aggregate_id, sequence)
    )",
    // How far each process manager has carried out the log's instructions.
    "CREATE TABLE IF NOT EXISTS process_cursors (
        process TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )",
    // The W3C trace context of an event's append, while trace export is on: beside the log,
    // never in it (no hash, checkpoint or audit reads it), pruned as the log grows
    // (telemetry.rs, group_commit.rs).
    "CREATE TABLE IF NOT EXISTS event_trace_context (
        position BIGINT PRIMARY KEY,
        traceparent TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS relay_cursors (
        relay TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )",
    // Where each projection has read up to, per source ('log', or 'topic/partition').
    "CREATE TABLE IF NOT EXISTS projection_checkpoints (
        projection TEXT NOT NULL,
        source TEXT NOT NULL,
        position BIGINT NOT NULL,
        PRIMARY KEY (projection, source)
    )",
    // The last sequence (and its log position) each projection applied per aggregate: makes
    // application idempotent and answers read-your-writes waits.
    "CREATE TABLE IF NOT EXISTS projection_streams (
        projection TEXT NOT NULL,
        aggregate_type TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        position BIGINT NOT NULL,
        PRIMARY KEY (projection, aggregate_type, aggregate_id)
    )",
    // Each projection's high-water mark: every log position up to it is in the model
    // (applied, or read and not for this model). Read-your-writes waits on it.
    "CREATE TABLE IF NOT EXISTS projection_watermarks (
        projection TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )",
    // Positions a projection has read above its high-water mark while a lower one is still on
    // its way (Kafka partitions deliver independently); folded into the mark when the gap fills.
    "CREATE TABLE IF NOT EXISTS projection_positions_ahead (
        projection TEXT NOT NULL,
        position BIGINT NOT NULL,
        PRIMARY KEY (projection, position)
    )",
    // The versioned read models' history (system-versioned, SQL:2011 style, in log
    // positions): each row a read model held, valid from the position that made it until the
    // one that changed or removed it (NULL: still current). As-of queries read it with one
    // indexed query (see `quantus_projections::history`).
    "CREATE TABLE IF NOT EXISTS read_model_history (
        projection TEXT NOT NULL,
        kind TEXT NOT NULL,
        row_id TEXT NOT NULL,
        organization_id TEXT NOT NULL,
        valid_from BIGINT NOT NULL,
        valid_to BIGINT,
        doc TEXT NOT NULL,
        PRIMARY KEY (kind, row_id, valid_from)
    )",
    // Every row a versioned model ever held, with its tenant: an as-of page walks these in id
    // order and seeks each one's version at the position.
    "CREATE TABLE IF NOT EXISTS read_model_history_rows (
        projection TEXT NOT NULL,
        kind TEXT NOT NULL,
        row_id TEXT NOT NULL,
        organization_id TEXT NOT NULL,
        first_from BIGINT NOT NULL,
        PRIMARY KEY (kind, row_id)
    )",
    "CREATE INDEX IF NOT EXISTS read_model_history_rows_org ON read_model_history_rows (kind, organization_id, row_id)",
    // Per-subject data keys, wrapped with the master key. Deleting a row crypto-shreds every
    // field sealed with it, across the whole log (see docs/identity.md). Not in the log itself.
    "CREATE TABLE IF NOT EXISTS subject_keys (
        subject TEXT PRIMARY KEY,
        wrapped TEXT NOT NULL,
        created_at TEXT NOT NULL
    )",
    // Login name (a keyed digest of the email) to user: unique at once, and deleted when the
    // user is erased.
    "CREATE TABLE IF NOT EXISTS user_logins (
        login TEXT PRIMARY KEY,
        user_id TEXT NOT NULL
    )",
    // Which organizations hold an email (the keyed digest of the address): the discovery
    // step of a sign-in whose client is platform-wide. Emails are unique per organization
    // (the `user_logins` row), never across the platform.
    "CREATE TABLE IF NOT EXISTS login_directory (
        email TEXT NOT NULL,
        organization_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (email, organization_id)
    )",
    // Service providers' entity ids, unique per organization; finds the SP of a request that
    // arrives at the shared SSO endpoint.
    "CREATE TABLE IF NOT EXISTS saml_entity_ids (
        entity_id TEXT NOT NULL,
        organization_id TEXT NOT NULL,
        provider_id TEXT NOT NULL,
        PRIMARY KEY (entity_id, organization_id)
    )",
    // SAML request ids seen within the IssueInstant window, per service provider: a second
    // request with the same id is a replay. Times are Unix seconds.
    "CREATE TABLE IF NOT EXISTS saml_request_ids (
        provider_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (provider_id, request_id)
    )",
    // Lookups the log cannot answer by id: device user codes (by digest) and the grants of a
    // session. Written before the grant's first event; a row without a grant finds nothing.
    "CREATE TABLE IF NOT EXISTS grant_index (
        kind TEXT NOT NULL,
        lookup TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        PRIMARY KEY (kind, lookup, grant_id)
    )",
    // Idempotency keys of creating requests, per caller (tenant and principal), with the
    // answer to replay; `status` is NULL while the request is in flight. Times are Unix ms.
    "CREATE TABLE IF NOT EXISTS idempotency_keys (
        scope TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        claimed_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        status BIGINT,
        headers TEXT,
        body TEXT,
        PRIMARY KEY (scope, idem_key)
    )",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at)",
    // Consecutive failed sign-ins per account: operational rate-limit state, like a counter in
    // a cache; the outcomes themselves are audit events.
    // The web consoles' sessions (backend-for-frontend): the browser holds `<id>.<secret>` in
    // an HttpOnly cookie; the row holds the secret's digest and the person's tokens, sealed
    // with the master key (bound to the row id). Operational state, not part of the log.
    "CREATE TABLE IF NOT EXISTS console_sessions (
        id TEXT PRIMARY KEY,
        console TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        sealed TEXT NOT NULL,
        version BIGINT NOT NULL,
        expires_at TEXT NOT NULL
    )",
    // The log's Merkle tree as C2SP tlog-tiles (`log_tiles.rs`): derived from the events'
    // hashes, hex, up to 256 per tile; `log_tree` holds how many leaves they cover.
    "CREATE TABLE IF NOT EXISTS log_tiles (
        level BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        width BIGINT NOT NULL,
        hashes TEXT NOT NULL,
        PRIMARY KEY (level, idx)
    )",
    "CREATE TABLE IF NOT EXISTS log_tree (
        id BIGINT PRIMARY KEY,
        size BIGINT NOT NULL
    )",
    "INSERT INTO log_tree (id, size) VALUES (1, 0) ON CONFLICT DO NOTHING",
    // Witness cosignatures of checkpoints (`witness.rs`): each witness's newest per size.
    "CREATE TABLE IF NOT EXISTS checkpoint_cosignatures (
        tree_size BIGINT NOT NULL,
        checkpoint TEXT NOT NULL,
        witness TEXT NOT NULL,
        line TEXT NOT NULL,
        cosigned_at TEXT NOT NULL,
        PRIMARY KEY (tree_size, witness)
    )",
    // Saved aggregate states (`event_store.rs`, snapshots): a cache of the log, never the
    // truth; keyed by the build that wrote it (`STATE_FINGERPRINT`).
    "CREATE TABLE IF NOT EXISTS aggregate_snapshots (
        aggregate_type TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        build TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id)
    )",
    "CREATE TABLE IF NOT EXISTS sign_in_throttle (
        account TEXT PRIMARY KEY,
        failures BIGINT NOT NULL,
        first_failure TEXT NOT NULL,
        locked_until TEXT
    )",
];

const POSTGRES_GUARDS: &[&str] = &[
    "CREATE OR REPLACE FUNCTION quantus_events_append_only() RETURNS trigger AS $$
     BEGIN RAISE EXCEPTION 'events are append-only'; END; $$ LANGUAGE plpgsql",
    "DO $$ BEGIN
       IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'events_append_only') THEN
         CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
           FOR EACH ROW EXECUTE FUNCTION quantus_events_append_only();
       END IF;
     END $$",
];

const SQLITE_GUARDS: &[&str] = &[
    "CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
     BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
     BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
];

impl Database {
    /// Connects to `database_url`, or to `data_dir/quantus.db` when it is `None`, and makes
    /// sure the schema exists.
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Self, InfraError> {
        sqlx::any::install_default_drivers();
        let (url, dialect) = match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (url.to_owned(), Dialect::Postgres)
            }
            Some(url) if url.starts_with("sqlite:") => (url.to_owned(), Dialect::Sqlite),
            Some(url) => {
                return Err(InfraError::Config(format!(
                    "DATABASE_URL must start with postgres:// or sqlite: (got {:?})",
                    url.split(':').next().unwrap_or_default()
                )))
            }
            None => {
                std::fs::create_dir_all(data_dir)?;
                let path = data_dir.join("quantus.db");
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Dialect::Sqlite,
                )
            }
        };
        let options = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers run beside the single writer; the busy timeout makes
                        // a second process wait for the write lock instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            });
        let pool = options.connect(&url).await?;
        let head = Arc::new(watch::channel(0).0);
        let db = Self {
            appender: Appender::new(pool.clone(), dialect, head.clone()),
            pool,
            dialect,
            head,
        };
        db.migrate().await?;
        let head = db.head_position().await?;
        db.head.send_replace(head);
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), InfraError> {
        // Concurrent first starts (several roles at once) must not race on DDL.
        let mut tx = self.begin_write().await?;
        for statement in SCHEMA {
            tx.execute(*statement).await?;
        }
        let guards = match self.dialect {
            Dialect::Postgres => POSTGRES_GUARDS,
            Dialect::Sqlite => SQLITE_GUARDS,
        };
        for statement in guards {
            tx.execute(*statement).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends one command's events to the log through this database's group-commit writer
    /// (`group_commit.rs`): answers with the position of its last event once committed.
    pub async fn append(&self, events: Vec<SerializedEvent>) -> Result<u64, PersistenceError> {
        self.appender.append(events).await
    }

    /// Bounds this database's write queue (see `group_commit.rs`, "Admission"). Call it on the
    /// handle just opened, before it is cloned: clones made earlier keep the default bounds.
    pub fn with_write_limits(mut self, limits: crate::group_commit::WriteLimits) -> Self {
        self.appender.set_limits(limits);
        self
    }

    /// The write queue's bounds.
    pub fn write_limits(&self) -> crate::group_commit::WriteLimits {
        self.appender.limits()
    }

    /// A slot in the write queue for one command, or `Overloaded` at once when it is full.
    pub fn admit_write(
        &self,
    ) -> Result<crate::group_commit::WritePermit, crate::group_commit::Overloaded> {
        self.appender.admit()
    }

    /// As [`Database::append`], for a command already admitted with [`Database::admit_write`].
    pub async fn append_admitted(
        &self,
        permit: crate::group_commit::WritePermit,
        events: Vec<SerializedEvent>,
    ) -> Result<u64, PersistenceError> {
        self.appender.append_admitted(permit, events).await
    }

    /// What the write queue holds now and what it has shed.
    pub fn write_queue(&self) -> crate::group_commit::QueueStats {
        self.appender.queue_stats()
    }

    /// How many batches this database's writer committed, and how many commands they held.
    pub fn append_stats(&self) -> &crate::group_commit::AppendStats {
        self.appender.stats()
    }

    /// Starts a transaction under the append lock (an advisory lock on Postgres, an immediate
    /// write lock on SQLite), the lock every append takes so that positions are gap-free and in
    /// commit order. Used for the schema; events are appended by [`Database::append`].
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, InfraError> {
        match self.dialect {
            Dialect::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query(POSTGRES_APPEND_LOCK).execute(&mut *tx).await?;
                Ok(tx)
            }
        }
    }

    /// Starts a transaction that updates read models. On SQLite it takes the write lock at once
    /// (a deferred transaction that later writes can fail instead of waiting); on Postgres it
    /// serialises work on one projection (`key`) across processes.
    pub async fn begin_update(
        &self,
        key: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, InfraError> {
        match self.dialect {
            Dialect::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Holds the platform's bootstrap lock until the answer is dropped: processes booting on
    /// one database (API replicas, the Portal) then register the platform's clients and write
    /// their secret files one after another, never both at once. On Postgres a session
    /// advisory lock on a connection of its own (released when it closes, also on a crash);
    /// an embedded SQLite store belongs to one process and needs none.
    pub async fn bootstrap_lock(&self) -> Result<Option<sqlx::AnyConnection>, InfraError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let mut conn = self.pool.acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock(hashtext('quantus-bootstrap'))")
            .execute(&mut conn)
            .await?;
        Ok(Some(conn))
    }

    /// The highest committed log position (0 for an empty log).
    pub async fn head_position(&self) -> Result<u64, InfraError> {
        let row = sqlx::query("SELECT COALESCE(MAX(position), 0) AS head FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("head")? as u64)
    }

    /// Tells in-process tailers that the log grew to `position`.
    pub fn announce(&self, position: u64) {
        announce(&self.head, position);
    }

    /// Waits until this process announces a position past `position`, or `timeout` passes.
    /// Other processes' appends are seen by polling, so callers loop.
    pub async fn wait_for_append(&self, position: u64, timeout: Duration) {
        let mut rx = self.head.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|head| *head > position)).await;
    }
}

/// Moves the in-process head signal to `position` if that is further.
pub(crate) fn announce(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|head| {
        let grew = position > *head;
        if grew {
            *head = position;
        }
        grew
    });
}

/// Reads an i64 column that holds a non-negative number.
pub fn get_u64(row: &AnyRow, column: &str) -> Result<u64, InfraError> {
    let v: i64 = row.try_get(column)?;
    u64::try_from(v).map_err(|_| InfraError::Corrupt(format!("{column} is negative: {v}")))
}
