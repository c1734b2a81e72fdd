//! Follows the log so that this process knows which of its kept aggregate states the log has
//! moved past, whoever appended (issue 18, item 2). The hot paths (access-token verification,
//! introspection, the token keyring, client lookups, grant liveness) then take a kept state as
//! current without reading the store, as long as the follower's last pass over the log's head
//! began less than the staleness bound ago; otherwise they read the store as every other load
//! does. So a change committed by any process reaches every process's hot paths within the
//! bound (`QUANTUS_READ_STALENESS_MS`, default 1 s), and at once in the process that made it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::aggregate_cache::AggregateCache;
use crate::CommandError;
use quantus_infra::Database;

/// How many events one pass reads at most.
const BATCH: u32 = 1000;

pub struct LogFollower {
    /// Every event up to this position has been noted in the cache.
    position: AtomicU64,
    /// When the last pass that reached the log's head began, in nanoseconds after `base` (0:
    /// none yet); a pass sees every event committed before it began.
    caught_up: AtomicU64,
    base: Instant,
    /// The staleness bound in nanoseconds (0: not following, the hot paths read the store).
    staleness: AtomicU64,
    /// Loads answered from memory on the strength of the follower.
    served: AtomicU64,
}

impl Default for LogFollower {
    fn default() -> Self {
        Self {
            position: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            base: Instant::now(),
            staleness: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }
    }
}

impl LogFollower {
    /// The position up to which every event is noted: taken before a load reads the store.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Whether a kept state the follower has seen nothing past may be taken as current: the
    /// last pass over the log's head began within the staleness bound.
    pub fn is_fresh(&self) -> bool {
        let bound = self.staleness.load(Ordering::Relaxed);
        let at = self.caught_up.load(Ordering::Acquire);
        if bound == 0 || at == 0 {
            return false;
        }
        let now = self.base.elapsed().as_nanos() as u64;
        now.saturating_sub(at) < bound
    }

    /// Whether a follower runs (`serve` starts one unless the staleness bound is 0).
    pub fn is_following(&self) -> bool {
        self.staleness.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// How many loads were answered from memory without reading the store.
    pub fn served_from_memory(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Follows the log from its head now, noting each event's aggregate in `cache`, until the
    /// task is dropped. A failed read is retried; meanwhile the passes age and the hot paths
    /// fall back to the store.
    pub(crate) async fn follow(
        self: Arc<Self>,
        db: Database,
        cache: Arc<AggregateCache>,
        staleness: Duration,
    ) -> Result<(), CommandError> {
        let start = db.head_position().await?;
        cache.distrust_before(start);
        self.position.store(start, Ordering::Release);
        let bound = u64::try_from(staleness.as_nanos()).unwrap_or(u64::MAX);
        self.staleness.store(bound, Ordering::Relaxed);
        // Idle, look for other processes' appends several times per bound (appends in this
        // process wake the follower at once).
        let poll = (staleness / 5).clamp(Duration::from_millis(5), Duration::from_millis(200));
        let mut after = start;
        loop {
            let began = self.base.elapsed().as_nanos() as u64;
            let keys = match quantus_infra::event_store::read_log_keys(&db, after, BATCH).await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(error = %e, "log follower: reading the log failed; hot paths read the store until it recovers");
                    tokio::time::sleep(poll).await;
                    continue;
                }
            };
            for k in &keys {
                cache.saw(&k.aggregate_type, &k.aggregate_id, k.sequence, k.position);
            }
            if let Some(last) = keys.last() {
                after = last.position;
                self.position.store(after, Ordering::Release);
            }
            if keys.len() < BATCH as usize {
                self.caught_up.store(began.max(1), Ordering::Release);
                db.wait_for_append(after, poll).await;
            }
        }
    }
}
