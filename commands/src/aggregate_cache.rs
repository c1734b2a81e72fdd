//! Recently used aggregates' states, kept in this process so that loading one reads only the
//! events appended after its cached state: O(1) events for a long stream (a usage meter, a
//! person's passkeys, a keyring) once it is warm, instead of its whole history.
//!
//! Two ways to read it:
//! - [`AggregateCache::get`]: a state the aggregate really had at its sequence; the caller
//!   reads the events after it from the store, whoever wrote them (this process or another).
//!   Correct without invalidation.
//! - [`AggregateCache::fresh`]: the hot paths (token verification, introspection, client and
//!   key lookups, issue 18 item 2) take a kept state as current without reading the store,
//!   when the log follower ([`crate::log_follower`]) has seen no later event of it. That is
//!   only sound when no later event can have slipped past the follower's notes, which is what
//!   `trusted` and the forgetting watermark below guarantee.
//!
//! It lives in memory only, so a new build never reads a state its own code did not make (see
//! docs/DECISIONS.md, "Aggregate state cache"). Bounded: least recently used entries go first.

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use cqrs_es::Aggregate;
use lru::LruCache;

struct Entry {
    /// The kept state and the sequence it is at (none: only the follower's note below).
    state: Option<(u64, Box<dyn Any + Send + Sync>)>,
    /// The highest sequence of this aggregate the log follower has seen, and at which log
    /// position (0, 0: none seen).
    logged: u64,
    logged_at: u64,
    /// The state may be taken as current when the follower has seen nothing later: it was read
    /// after every event the follower had not yet seen could have been noted here.
    trusted: bool,
}

struct Entries {
    lru: LruCache<String, Entry>,
    /// The highest log position of a follower's note that was evicted: a state read from the
    /// store before that position may have missed the event behind it, so it is not trusted.
    forgotten: u64,
}

pub struct AggregateCache {
    entries: Mutex<Entries>,
}

fn key(aggregate_type: &str, id: &str) -> String {
    format!("{aggregate_type}\u{0}{id}")
}

impl AggregateCache {
    /// Entries kept by default.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries {
                lru: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
                forgotten: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached state of aggregate `id` and its sequence, if any.
    pub fn get<A: Aggregate + Clone + 'static>(&self, id: &str) -> Option<(A, u64)> {
        let mut entries = self.lock();
        let entry = entries.lru.get(&key(A::TYPE, id))?;
        let (sequence, state) = entry.state.as_ref()?;
        Some((state.downcast_ref::<A>()?.clone(), *sequence))
    }

    /// The cached state of aggregate `id` when it can be taken as current without reading the
    /// store: trusted, and the log follower has seen no later event of it. Current as of the
    /// follower's last pass; the caller checks that pass is recent enough.
    pub fn fresh<A: Aggregate + Clone + 'static>(&self, id: &str) -> Option<(A, u64)> {
        let mut entries = self.lock();
        let entry = entries.lru.get(&key(A::TYPE, id))?;
        let (sequence, state) = entry.state.as_ref()?;
        if !entry.trusted || entry.logged > *sequence {
            return None;
        }
        Some((state.downcast_ref::<A>()?.clone(), *sequence))
    }

    /// Keeps `state` as aggregate `id` at `sequence`, unless a later state is kept already.
    /// `read_after` is the follower's position before the state was read from the store (or
    /// before the command that made it loaded its aggregate): every event up to it is in the
    /// state, every later one the follower notes here.
    pub fn put<A: Aggregate + Clone + 'static>(
        &self,
        id: &str,
        state: &A,
        sequence: u64,
        read_after: u64,
    ) {
        let mut entries = self.lock();
        let trusted = read_after >= entries.forgotten;
        let key = key(A::TYPE, id);
        if let Some(entry) = entries.lru.get_mut(&key) {
            if entry
                .state
                .as_ref()
                .is_some_and(|(kept, _)| *kept >= sequence)
            {
                return;
            }
            entry.state = Some((sequence, Box::new(state.clone())));
            entry.trusted = trusted;
            return;
        }
        let entry = Entry {
            state: Some((sequence, Box::new(state.clone()))),
            logged: 0,
            logged_at: 0,
            trusted,
        };
        Self::insert(&mut entries, key, entry);
    }

    /// A load read no event after the kept state at `sequence`: the state is current as of
    /// that read, so it may be trusted from now on (see [`Self::put`] for `read_after`).
    pub fn confirm<A: Aggregate + 'static>(&self, id: &str, sequence: u64, read_after: u64) {
        let mut entries = self.lock();
        let trusted = read_after >= entries.forgotten;
        if let Some(entry) = entries.lru.get_mut(&key(A::TYPE, id)) {
            if entry
                .state
                .as_ref()
                .is_some_and(|(kept, _)| *kept == sequence)
                && trusted
            {
                entry.trusted = true;
            }
        }
    }

    /// The log follower saw event `sequence` of an aggregate at log `position`.
    pub fn saw(&self, aggregate_type: &str, id: &str, sequence: u64, position: u64) {
        let mut entries = self.lock();
        let key = key(aggregate_type, id);
        if let Some(entry) = entries.lru.get_mut(&key) {
            if sequence > entry.logged {
                entry.logged = sequence;
                entry.logged_at = position;
            }
            return;
        }
        // Noted even with no state kept: a load that read the store before this event and
        // keeps its state afterwards must not be taken as current.
        let entry = Entry {
            state: None,
            logged: sequence,
            logged_at: position,
            trusted: false,
        };
        Self::insert(&mut entries, key, entry);
    }

    /// From now on, states read before `position` are not trusted (the follower starts there:
    /// it never saw what came before).
    pub fn distrust_before(&self, position: u64) {
        let mut entries = self.lock();
        entries.forgotten = entries.forgotten.max(position);
        for (_, entry) in entries.lru.iter_mut() {
            entry.trusted = false;
        }
    }

    fn insert(entries: &mut Entries, key: String, entry: Entry) {
        if let Some((_, evicted)) = entries.lru.push(key, entry) {
            entries.forgotten = entries.forgotten.max(evicted.logged_at);
        }
    }

    /// Keeps at most `capacity` states from now on (the least recently used go first).
    pub fn resize(&self, capacity: usize) {
        let mut entries = self.lock();
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        while entries.lru.len() > capacity.get() {
            if let Some((_, evicted)) = entries.lru.pop_lru() {
                entries.forgotten = entries.forgotten.max(evicted.logged_at);
            }
        }
        entries.lru.resize(capacity);
    }

    /// How many aggregates are kept.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use quantus_domain::organization::Organization;

    fn org() -> Organization {
        Organization::default()
    }

    #[test]
    fn a_state_kept_after_everything_the_follower_saw_is_current() {
        let cache = AggregateCache::new(10);
        cache.saw("Organization", "acme", 1, 5);
        cache.put("acme", &org(), 1, 5);
        assert!(cache.fresh::<Organization>("acme").is_some());
    }

    #[test]
    fn a_later_event_seen_by_the_follower_makes_the_kept_state_not_current() {
        let cache = AggregateCache::new(10);
        cache.put("acme", &org(), 1, 5);
        cache.saw("Organization", "acme", 2, 6);
        assert!(cache.fresh::<Organization>("acme").is_none());
        // Still a real past state for loads that read what follows it.
        assert_eq!(cache.get::<Organization>("acme").map(|(_, s)| s), Some(1));
    }

    #[test]
    fn a_state_read_before_an_event_the_follower_saw_first_is_not_current() {
        // The load read sequence 1 from the store; event 2 was appended and seen by the
        // follower before the load kept its state.
        let cache = AggregateCache::new(10);
        cache.saw("Organization", "acme", 2, 6);
        cache.put("acme", &org(), 1, 5);
        assert!(cache.fresh::<Organization>("acme").is_none());
    }

    #[test]
    fn a_forgotten_note_distrusts_states_read_before_it() {
        let cache = AggregateCache::new(1);
        // The follower notes acme's event 2 at position 6, then the note is evicted.
        cache.saw("Organization", "acme", 2, 6);
        cache.saw("Organization", "other", 1, 7);
        // A load that read acme at sequence 1 before position 6 keeps its state late.
        cache.put("acme", &org(), 1, 5);
        assert!(cache.fresh::<Organization>("acme").is_none());
        // A state read after the forgotten notes is trusted.
        cache.put("acme", &org(), 2, 7);
        assert!(cache.fresh::<Organization>("acme").is_some());
    }

    #[test]
    fn states_read_before_the_follower_started_are_not_current_until_confirmed() {
        let cache = AggregateCache::new(10);
        cache.put("acme", &org(), 1, 0);
        cache.distrust_before(9);
        cache.put("globex", &org(), 1, 0);
        assert!(cache.fresh::<Organization>("acme").is_none());
        assert!(cache.fresh::<Organization>("globex").is_none());
        cache.confirm::<Organization>("globex", 1, 9);
        assert!(cache.fresh::<Organization>("globex").is_some());
    }
}
