//! LogCheckpoint: a signed tree head over the log (RFC 9162), recorded as an event. One
//! aggregate per tree size (`checkpoint-<size, 20 digits>`), so a size is checkpointed once
//! however many processes try.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogCheckpointSigned {
    /// The number of log positions covered: events 1..=size.
    pub tree_size: u64,
    /// The Merkle tree head, lower-case hex.
    pub root_hash: String,
    /// The C2SP signed note (origin, size, base64 root, signature line).
    pub note: String,
    /// The checkpoint key that signed it.
    pub kid: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum LogCheckpointEvent for "LogCheckpoint" {
        LogCheckpointSigned(LogCheckpointSigned),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogCheckpointError {
    #[error("this tree size is already checkpointed")]
    AlreadySigned,
    #[error("a checkpoint covers at least one event")]
    Empty,
}

/// The aggregate id of the checkpoint of `tree_size`.
pub fn checkpoint_id(tree_size: u64) -> String {
    format!("checkpoint-{tree_size:020}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCheckpoint {
    pub signed: Option<LogCheckpointSigned>,
}

impl LogCheckpoint {
    fn decide(
        &self,
        command: LogCheckpointSigned,
    ) -> Result<Vec<LogCheckpointEvent>, LogCheckpointError> {
        if self.signed.is_some() {
            return Err(LogCheckpointError::AlreadySigned);
        }
        if command.tree_size == 0 {
            return Err(LogCheckpointError::Empty);
        }
        Ok(vec![LogCheckpointEvent::LogCheckpointSigned(command)])
    }
}

impl Aggregate for LogCheckpoint {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = LogCheckpointSigned;
    type Event = LogCheckpointEvent;
    type Error = LogCheckpointError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        let LogCheckpointEvent::LogCheckpointSigned(e) = event;
        self.signed = Some(e);
    }
}
