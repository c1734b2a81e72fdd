//! Application services: the one command pipeline every write goes through.
//!
//! `execute` loads an aggregate from the store, checks the caller's expected version, lets
//! the pure aggregate decide, and commits the events (envelope, hash chain and log position
//! are added by the store). It answers with the log position a client can wait for.

pub mod access;
pub mod aggregate_cache;
pub mod checkpoints;
pub mod commercial;
pub mod evidence;
pub mod export;
pub mod identity;
pub mod invites;
pub mod licensing;
pub mod log_follower;
pub mod observe;
pub mod passkeys;
pub mod saml;
pub mod scim;
pub mod totp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use quantus_domain::licensing::crypto_policy::CryptoPolicyError;
use quantus_domain::licensing::keyring::KeyringError;
use quantus_domain::licensing::license::LicenseError;
use quantus_domain::organization::{Organization, OrganizationCommand, OrganizationError};
use quantus_domain::CommandContext;
use quantus_infra::group_commit::Overloaded;
use quantus_infra::{InfraError, SqlEventRepository};

use crate::aggregate_cache::AggregateCache;
use crate::log_follower::LogFollower;
use crate::observe::{Observer, Outcome};

/// What a successful command tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Log position of the aggregate's newest event after the command.
    pub position: u64,
    /// The aggregate's version (sequence of its newest event).
    pub version: u64,
    /// How many events the command recorded (0 when it changed nothing).
    pub events: usize,
}

/// The one error type of the command layer.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command itself is malformed (maps to 422).
    #[error("{0}")]
    Invalid(String),
    /// The aggregate does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The command conflicts with the aggregate's state (409).
    #[error("{0}")]
    Rejected(String),
    /// Someone else changed the aggregate first (409; 412 at the API when the client named
    /// the version it expected with `If-Match`).
    #[error("{0}")]
    Concurrency(String),
    /// A hard quota refuses the work (403).
    #[error("{0}")]
    QuotaExceeded(String),
    /// Another service (QuantumLock, QSA, the billing provider) failed or refused (502).
    #[error("{0}")]
    Upstream(String),
    #[error("storage: {0}")]
    Storage(String),
    /// The write queue is full (or the write waited in it too long): nothing was written; try
    /// again after `retry_after_seconds` (503 with `Retry-After`).
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after_seconds: u64,
    },
}

impl From<Overloaded> for CommandError {
    fn from(o: Overloaded) -> Self {
        CommandError::Unavailable {
            detail: o.to_string(),
            retry_after_seconds: o.retry_after.as_secs().max(1),
        }
    }
}

/// Aggregates whose errors the pipeline can sort into the categories above.
pub trait ClassifyError {
    fn classify(&self) -> CommandError;
}

impl ClassifyError for OrganizationError {
    fn classify(&self) -> CommandError {
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            OrganizationError::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

impl ClassifyError for KeyringError {
    fn classify(&self) -> CommandError {
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            e if e.is_not_found() => CommandError::NotFound(e.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

impl ClassifyError for CryptoPolicyError {
    fn classify(&self) -> CommandError {
        CommandError::Rejected(self.to_string())
    }
}

impl ClassifyError for LicenseError {
    fn classify(&self) -> CommandError {
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            LicenseError::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

/// A stream's state is saved (a snapshot) each time it grows by this many events, and when a
/// load had to replay at least this many: so a process that has not kept a stream's state
/// reads at most this many of its events, however long the stream (issue 18, item 3).
pub const SNAPSHOT_EVERY: u64 = 100;

/// Runs commands against the event store.
#[derive(Clone)]
pub struct CommandBus {
    repo: SqlEventRepository,
    cache: Arc<AggregateCache>,
    /// Events read from the store to rebuild states (the cost snapshots bound).
    replayed: Arc<AtomicU64>,
    /// Told how each command ended (set once, by the API for its metrics).
    observer: Arc<OnceLock<Arc<dyn Observer>>>,
    /// What the log has moved past, for loads that may skip the store (the hot paths).
    follower: Arc<LogFollower>,
}

impl CommandBus {
    pub fn new(repo: SqlEventRepository) -> Self {
        Self::with_cache(repo, AggregateCache::default())
    }

    /// A bus keeping up to `cache`'s capacity of aggregate states in memory.
    pub fn with_cache(repo: SqlEventRepository, cache: AggregateCache) -> Self {
        Self {
            repo,
            cache: Arc::new(cache),
            replayed: Arc::new(AtomicU64::new(0)),
            observer: Arc::new(OnceLock::new()),
            follower: Arc::new(LogFollower::default()),
        }
    }

    /// Tells `observer` how every later command ends (on this bus and its clones); the first
    /// observer set stays.
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    /// The in-memory aggregate states (for their count in metrics).
    pub fn cache(&self) -> &AggregateCache {
        &self.cache
    }

    /// The log follower behind [`Self::load_recent`].
    pub fn follower(&self) -> &LogFollower {
        &self.follower
    }

    /// Follows the log until dropped, so that [`Self::load_recent`] answers from memory states
    /// no older than `staleness` (see [`log_follower`]). Run once per process, by `serve`.
    pub async fn follow_log(&self, staleness: Duration) -> Result<(), CommandError> {
        self.follower
            .clone()
            .follow(self.repo.database().clone(), self.cache.clone(), staleness)
            .await
    }

    /// How many events this bus (and its clones) has read from the store to rebuild states.
    pub fn events_replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// An aggregate's current state and sequence: its state kept in memory, else its saved
    /// state (snapshot), else its first event; plus the events stored after it (appended by
    /// this process or any other).
    async fn current<A>(&self, id: &str) -> Result<(A, u64), CommandError>
    where
        A: Aggregate + Clone + 'static,
    {
        // Every event up to here is in the store for the read below, or the follower notes it.
        let read_after = self.follower.position();
        let kept = self.cache.get::<A>(id);
        let was_kept = kept.is_some();
        let (mut aggregate, mut sequence) = match kept {
            Some(kept) => kept,
            None => self.saved::<A>(id).await,
        };
        let events = self
            .repo
            .get_last_events::<A>(id, sequence as usize)
            .await
            .map_err(|e| CommandError::Storage(e.to_string()))?;
        let replayed = events.len() as u64;
        self.replayed.fetch_add(replayed, Ordering::Relaxed);
        for serialized in events {
            let envelope = EventEnvelope::<A>::try_from(serialized)
                .map_err(|e| CommandError::Storage(e.to_string()))?;
            sequence = envelope.sequence as u64;
            aggregate.apply(envelope.payload);
        }
        if replayed > 0 {
            self.cache.put(id, &aggregate, sequence, read_after);
        } else if was_kept {
            self.cache.confirm::<A>(id, sequence, read_after);
        }
        if replayed >= SNAPSHOT_EVERY {
            self.save(id, &aggregate, sequence);
        }
        Ok((aggregate, sequence))
    }

    /// The state saved for aggregate `id` by a build with this one's state fingerprint, or
    /// the empty state. A snapshot is only a cache of the log: when it cannot be read, the
    /// stream is replayed from its first event.
    async fn saved<A>(&self, id: &str) -> (A, u64)
    where
        A: Aggregate,
    {
        let fingerprint = quantus_domain::STATE_FINGERPRINT;
        match self.repo.snapshot(A::TYPE, id, fingerprint).await {
            Ok(Some((sequence, state))) => match serde_json::from_str::<A>(&state) {
                Ok(state) => (state, sequence),
                Err(e) => {
                    // Removed, so that the replay's save (of a lower sequence, perhaps) lands.
                    tracing::warn!(aggregate = A::TYPE, id, error = %e, "unreadable snapshot ignored");
                    let _ = self.repo.forget_snapshot(A::TYPE, id).await;
                    (A::default(), 0)
                }
            },
            Ok(None) => (A::default(), 0),
            Err(e) => {
                tracing::warn!(aggregate = A::TYPE, id, error = %e, "snapshot not read");
                (A::default(), 0)
            }
        }
    }

    /// Saves `state` (aggregate `id` right after its event `sequence`, committed) in the
    /// background: the command that got there does not wait for it, and a failed save only
    /// means a longer replay later.
    fn save<A>(&self, id: &str, state: &A, sequence: u64)
    where
        A: Aggregate,
    {
        let Ok(state) = serde_json::to_string(state) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let repo = self.repo.clone();
        let id = id.to_owned();
        runtime.spawn(async move {
            let fingerprint = quantus_domain::STATE_FINGERPRINT;
            if let Err(e) = repo
                .save_snapshot(A::TYPE, &id, sequence, fingerprint, &state)
                .await
            {
                tracing::warn!(aggregate = A::TYPE, id, error = %e, "snapshot not saved");
            }
        });
    }

    pub fn repository(&self) -> &SqlEventRepository {
        &self.repo
    }

    /// Executes `command` on aggregate `id`. With `expected_version`, the command is refused
    /// unless the aggregate is exactly at that version (optimistic concurrency for clients).
    pub async fn execute<A>(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: A::Command,
        expected_version: Option<u64>,
        services: &A::Services,
    ) -> Result<CommandOutcome, CommandError>
    where
        A: Aggregate + Clone + 'static,
        A::Error: ClassifyError,
    {
        use tracing::Instrument as _;
        let started = Instant::now();
        // A span for trace export only (its target is left out of the log): the command, child
        // of the request that runs it, parent of the append.
        let span = tracing::info_span!(target: quantus_infra::telemetry::TRACE_TARGET, "command", aggregate = A::TYPE);
        let result = self
            .run::<A>(ctx, id, command, expected_version, services)
            .instrument(span)
            .await;
        if let Some(observer) = self.observer.get() {
            let events = result.as_ref().map_or(0, |o| o.events);
            observer.finished(A::TYPE, Outcome::of(&result), events, started.elapsed());
        }
        result
    }

    async fn run<A>(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: A::Command,
        expected_version: Option<u64>,
        services: &A::Services,
    ) -> Result<CommandOutcome, CommandError>
    where
        A: Aggregate + Clone + 'static,
        A::Error: ClassifyError,
    {
        // Load shedding: a slot in the bounded write queue before any work, held until the
        // events are committed (or the command turns out to change nothing).
        let permit = self.repo.admit()?;
        let read_after = self.follower.position();
        let (mut aggregate, current) = self.current::<A>(id).await?;
        if let Some(expected) = expected_version {
            if expected != current {
                return Err(CommandError::Concurrency(format!(
                    "expected version {expected}, but the {} is at version {current}",
                    A::TYPE.to_lowercase()
                )));
            }
        }
        let sink = EventSink::default();
        aggregate
            .handle(command, services, &sink)
            .await
            .map_err(|e| e.classify())?;
        let events = sink.collect().await;
        let count = events.len();
        let position = if count > 0 {
            // The events go to the store's group-commit writer, which answers with the position
            // of this command's own last event (read-your-writes) once its batch is committed.
            let metadata = ctx.to_metadata();
            let serialized = events
                .into_iter()
                .zip(current as usize + 1..)
                .map(|(payload, sequence)| {
                    SerializedEvent::try_from(&EventEnvelope::<A> {
                        aggregate_id: id.to_owned(),
                        sequence,
                        payload,
                        metadata: metadata.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CommandError::Storage(e.to_string()))?;
            let position = match self.repo.append_admitted(permit, serialized).await {
                Ok(position) => position,
                Err(e) => match (persistence::<A>(e), expected_version) {
                    // The version the client expected was current when loaded, but another
                    // writer's append got there first: name the version it left.
                    (CommandError::Concurrency(_), Some(expected)) => {
                        let (_, now) = self.current::<A>(id).await?;
                        return Err(CommandError::Concurrency(format!(
                            "expected version {expected}, but the {} is at version {now}",
                            A::TYPE.to_lowercase()
                        )));
                    }
                    (e, _) => return Err(e),
                },
            };
            // Committed: the aggregate as `handle` left it (the event sink applies each event
            // it records) is its state now, so the next command on it reads no event at all.
            let now_at = current + count as u64;
            self.cache.put(id, &aggregate, now_at, read_after);
            if now_at / SNAPSHOT_EVERY > current / SNAPSHOT_EVERY {
                self.save(id, &aggregate, now_at);
            }
            position
        } else {
            drop(permit);
            self.repo
                .aggregate_head(A::TYPE, id)
                .await
                .map_err(|e| CommandError::Storage(e.to_string()))?
        };
        Ok(CommandOutcome {
            position,
            version: current + count as u64,
            events: count,
        })
    }

    /// The current state and version of an aggregate (for decisions that span aggregates, and
    /// for small write-side reads such as the key set).
    pub async fn load<A>(&self, id: &str) -> Result<(A, u64), CommandError>
    where
        A: Aggregate + Clone + 'static,
    {
        self.current::<A>(id).await
    }

    /// [`Self::load`] for an aggregate that must exist (`exists` tells from its state):
    /// otherwise `NotFound` "no {what} {id}".
    pub async fn load_existing<A>(
        &self,
        id: &str,
        what: &str,
        exists: impl FnOnce(&A) -> bool,
    ) -> Result<(A, u64), CommandError>
    where
        A: Aggregate + Clone + 'static,
    {
        let (aggregate, version) = self.current::<A>(id).await?;
        if !exists(&aggregate) {
            return Err(CommandError::NotFound(format!("no {what} {id}")));
        }
        Ok((aggregate, version))
    }

    /// An aggregate's state no older than the log follower's staleness bound, from memory
    /// when this process keeps it and the follower has seen nothing later, else as
    /// [`Self::load`]. For the hot paths' reads (token verification, introspection, keys,
    /// client lookups), never for a command's own load: a command's decision must see every
    /// committed event, which its append then checks.
    pub async fn load_recent<A>(&self, id: &str) -> Result<(A, u64), CommandError>
    where
        A: Aggregate + Clone + 'static,
    {
        if self.follower.is_fresh() {
            if let Some(kept) = self.cache.fresh::<A>(id) {
                self.follower.served();
                return Ok(kept);
            }
        }
        self.current::<A>(id).await
    }

    /// An aggregate as it stood right after its event `sequence` (what an old event meant).
    pub async fn load_until<A>(&self, id: &str, sequence: u64) -> Result<A, CommandError>
    where
        A: Aggregate,
        A::Event: quantus_domain::events::EventEnum,
    {
        let mut aggregate = A::default();
        for record in self
            .repo
            .aggregate_records_until(A::TYPE, id, sequence)
            .await?
        {
            aggregate.apply(record.decode::<A::Event>()?);
        }
        Ok(aggregate)
    }

    /// An aggregate and its version as they stood at log position `position` (after its
    /// event): the state an as-of query of an aggregate, rather than a read model, answers.
    pub async fn load_as_of<A>(&self, id: &str, position: u64) -> Result<(A, u64), CommandError>
    where
        A: Aggregate,
        A::Event: quantus_domain::events::EventEnum,
    {
        let sequence = self
            .repo
            .aggregate_sequence_at(A::TYPE, id, position)
            .await?;
        Ok((self.load_until::<A>(id, sequence).await?, sequence))
    }

    /// Ok when organization `id` exists and is not suspended: the precondition of every
    /// command that creates something inside an organization.
    pub async fn active_organization(&self, id: &str) -> Result<(), CommandError> {
        use quantus_domain::organization::OrganizationStatus;
        match self.load::<Organization>(id).await?.0.status {
            OrganizationStatus::Active => Ok(()),
            OrganizationStatus::Absent => {
                Err(CommandError::Invalid(format!("no organization {id}")))
            }
            OrganizationStatus::Suspended => Err(CommandError::Rejected(format!(
                "organization {id} is suspended"
            ))),
        }
    }

    /// Shorthand for the Organization aggregate.
    pub async fn organization(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: OrganizationCommand,
        expected_version: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute::<Organization>(ctx, id, command, expected_version, &())
            .await
    }
}

fn storage<A: Aggregate>(e: AggregateError<A::Error>) -> CommandError {
    match e {
        AggregateError::AggregateConflict => CommandError::Concurrency(format!(
            "the {} was changed by another command at the same time; reload and retry",
            A::TYPE.to_lowercase()
        )),
        other => CommandError::Storage(other.to_string()),
    }
}

fn persistence<A: Aggregate>(e: PersistenceError) -> CommandError {
    if let Some(overloaded) = Overloaded::of(&e) {
        return overloaded.into();
    }
    storage::<A>(e.into())
}

impl From<InfraError> for CommandError {
    fn from(e: InfraError) -> Self {
        CommandError::Storage(e.to_string())
    }
}

/// What the command layer's tests share.
#[cfg(test)]
pub(crate) mod testing {
    use quantus_domain::{Actor, ActorKind, CommandContext};

    /// A command the test issues as the system, now, in `tenant`.
    pub(crate) fn ctx(tenant: &str) -> CommandContext {
        CommandContext {
            tenant_id: tenant.to_owned(),
            actor: Actor {
                kind: ActorKind::System,
                id: "test".into(),
            },
            occurred_at: quantus_domain::envelope::truncate_to_micros(chrono::Utc::now()),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: uuid::Uuid::now_v7(),
        }
    }

    /// A test store's folder, removed when the test ends.
    pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod load_existing_tests {
    use quantus_domain::organization::OrganizationStatus;
    use quantus_infra::Database;

    use super::testing::{ctx, Scratch};
    use super::*;

    /// An aggregate that must exist loads with its version, and one that does not is
    /// `NotFound` naming what and which.
    #[tokio::test]
    async fn an_aggregate_that_must_exist_loads_or_is_not_found() {
        let store =
            Scratch(std::env::temp_dir().join(format!("quantus-load-{}", uuid::Uuid::now_v7())));
        let bus = CommandBus::new(SqlEventRepository::new(
            Database::open(None, &store.0).await.unwrap(),
        ));
        let create = OrganizationCommand::Create {
            name: "Acme".into(),
        };
        bus.organization(&ctx("o1"), "o1", create, Some(0))
            .await
            .unwrap();
        let exists = |o: &Organization| o.status != OrganizationStatus::Absent;

        let (org, version) = bus
            .load_existing::<Organization>("o1", "organization", exists)
            .await
            .unwrap();
        assert_eq!((org.name.as_str(), version), ("Acme", 1));
        match bus
            .load_existing::<Organization>("o2", "organization", exists)
            .await
        {
            Err(CommandError::NotFound(detail)) => assert_eq!(detail, "no organization o2"),
            other => panic!("{other:?}"),
        }
    }
}
