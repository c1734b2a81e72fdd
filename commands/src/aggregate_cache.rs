//! Recently used aggregates' states, kept in this process so that loading one reads only the
//! events appended after its cached state: O(1) events for a long stream (a usage meter, a
//! person's passkeys, a keyring) once it is warm, instead of its whole history.
//!
//! Correct without invalidation: a cached state is a state the aggregate really had at its
//! sequence, and every load reads the events after it from the store, whoever wrote them (this
//! process or another). It lives in memory only, so a new build never reads a state its own
//! code did not make (see docs/DECISIONS.md, "Aggregate state cache"). Bounded: least
//! recently used entries go first.

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use cqrs_es::Aggregate;
use lru::LruCache;

type Entry = (u64, Box<dyn Any + Send + Sync>);

pub struct AggregateCache {
    entries: Mutex<LruCache<(&'static str, String), Entry>>,
}

impl AggregateCache {
    /// Entries kept by default.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<(&'static str, String), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached state of aggregate `id` and its sequence, if any.
    pub fn get<A: Aggregate + Clone + 'static>(&self, id: &str) -> Option<(A, u64)> {
        let mut entries = self.lock();
        let (sequence, state) = entries.get(&(A::TYPE, id.to_owned()))?;
        let state = state.downcast_ref::<A>()?.clone();
        Some((state, *sequence))
    }

    /// Keeps `state` as aggregate `id` at `sequence`, unless a later state is kept already.
    pub fn put<A: Aggregate + Clone + 'static>(&self, id: &str, state: &A, sequence: u64) {
        let mut entries = self.lock();
        let key = (A::TYPE, id.to_owned());
        if entries
            .peek(&key)
            .is_some_and(|(kept, _)| *kept >= sequence)
        {
            return;
        }
        entries.put(key, (sequence, Box::new(state.clone())));
    }

    /// Keeps at most `capacity` states from now on (the least recently used go first).
    pub fn resize(&self, capacity: usize) {
        self.lock()
            .resize(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN));
    }

    /// How many aggregates are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for AggregateCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}
