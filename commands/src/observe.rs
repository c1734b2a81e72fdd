//! What the command bus tells an observer about each command (the API's metrics): which
//! aggregate, how it ended, how long it took. Typed, so a new ending is a compile error in
//! every observer rather than a new string.

use std::time::Duration;

use crate::{CommandError, CommandOutcome};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Its events were appended.
    Recorded,
    /// Accepted, with nothing to record (it would change nothing).
    Unchanged,
    Invalid,
    NotFound,
    /// Refused by the aggregate's rules.
    Rejected,
    /// Another command changed the aggregate first (optimistic concurrency).
    Conflict,
    QuotaExceeded,
    Upstream,
    Storage,
    /// Shed: the write queue was full or the write waited in it too long; nothing written.
    Shed,
}

impl Outcome {
    pub fn of(result: &Result<CommandOutcome, CommandError>) -> Self {
        match result {
            Ok(o) if o.events > 0 => Self::Recorded,
            Ok(_) => Self::Unchanged,
            Err(CommandError::Invalid(_)) => Self::Invalid,
            Err(CommandError::NotFound(_)) => Self::NotFound,
            Err(CommandError::Rejected(_)) => Self::Rejected,
            Err(CommandError::Concurrency(_)) => Self::Conflict,
            Err(CommandError::QuotaExceeded(_)) => Self::QuotaExceeded,
            Err(CommandError::Upstream(_)) => Self::Upstream,
            Err(CommandError::Storage(_)) => Self::Storage,
            Err(CommandError::Unavailable { .. }) => Self::Shed,
        }
    }

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Unchanged => "unchanged",
            Self::Invalid => "invalid",
            Self::NotFound => "not_found",
            Self::Rejected => "rejected",
            Self::Conflict => "conflict",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Upstream => "upstream",
            Self::Storage => "storage",
            Self::Shed => "shed",
        }
    }
}

pub trait Observer: Send + Sync {
    /// A command on an aggregate of type `aggregate` ended; `events` it recorded.
    fn finished(&self, aggregate: &'static str, outcome: Outcome, events: usize, took: Duration);
}
