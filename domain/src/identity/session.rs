//! Session: a person signed in at the identity provider (the browser's SSO session).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RequestInfo;

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStarted {
    pub user_id: String,
    pub organization_id: String,
    pub amr: Vec<String>,
    #[schemars(with = "String")]
    pub auth_time: DateTime<Utc>,
    #[schemars(with = "String")]
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the cookie's secret half.
    pub secret_sha256: String,
    pub request: RequestInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionEnded {
    /// `logout`, or `administrative`.
    pub reason: String,
    pub request: RequestInfo,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum SessionEvent for "Session" {
        SessionStarted(SessionStarted),
        SessionEnded(SessionEnded),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Start(SessionStarted),
    End {
        reason: String,
        request: RequestInfo,
    },
}

impl SessionCommand {
    /// The request this command records.
    pub fn request_mut(&mut self) -> &mut RequestInfo {
        match self {
            SessionCommand::Start(s) => &mut s.request,
            SessionCommand::End { request, .. } => request,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session already exists")]
    AlreadyExists,
    #[error("no such session")]
    NotFound,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub started: Option<SessionStarted>,
    pub ended: bool,
}

impl Session {
    /// Live at `now`: started, not ended, not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.ended && self.started.as_ref().is_some_and(|s| now < s.expires_at)
    }

    fn decide(&self, command: SessionCommand) -> Result<Vec<SessionEvent>, SessionError> {
        let event = match command {
            SessionCommand::Start(s) if self.started.is_none() => SessionEvent::SessionStarted(s),
            SessionCommand::Start(_) => return Err(SessionError::AlreadyExists),
            SessionCommand::End { .. } if self.started.is_none() => {
                return Err(SessionError::NotFound)
            }
            SessionCommand::End { .. } if self.ended => return Ok(vec![]),
            SessionCommand::End { reason, request } => {
                SessionEvent::SessionEnded(SessionEnded { reason, request })
            }
        };
        Ok(vec![event])
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
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
        match event {
            SessionEvent::SessionStarted(s) => self.started = Some(s),
            SessionEvent::SessionEnded(_) => self.ended = true,
        }
    }
}
