//! Authentication outcomes that are not part of a grant or session: each sign-in attempt (one
//! event per attempt, its own aggregate) and each consent a user gives a client.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RequestInfo;

use crate::decision::record_decision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignInFailure {
    /// No such user. The login name is not recorded: it may be someone's password typed in
    /// the wrong field.
    UnknownUser,
    BadPassword,
    LockedOut,
    Disabled,
    NoPassword,
    /// The password was right; the second factor (TOTP or recovery code) was not.
    BadSecondFactor,
    /// A TOTP code that was already used (RFC 6238 §5.2).
    ReplayedSecondFactor,
    /// The second-factor step took too long or its state was forged.
    SecondFactorExpired,
    /// A conditional-access rule blocked it, or asked for a factor the person lacks.
    BlockedByPolicy,
    /// A passkey assertion that did not verify (or an expired or reused ceremony).
    BadPasskey,
    /// A passkey whose signature counter did not grow: possibly a cloned authenticator.
    ClonedPasskey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInSucceeded {
    pub user_id: String,
    pub client_id: Option<String>,
    pub session_id: String,
    pub amr: Vec<String>,
    pub request: RequestInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInFailed {
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub reason: SignInFailure,
    /// Set when this failure locked the account.
    #[schemars(with = "Option<String>")]
    pub locked_until: Option<DateTime<Utc>>,
    pub request: RequestInfo,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum SignInEvent for "SignInAttempt" {
        SignInSucceeded(SignInSucceeded),
        SignInFailed(SignInFailed),
    }
}

impl SignInEvent {
    /// The request this attempt records, and the person it names (if the account is known).
    pub fn request_and_user(&mut self) -> (&mut RequestInfo, Option<String>) {
        match self {
            SignInEvent::SignInSucceeded(e) => (&mut e.request, Some(e.user_id.clone())),
            SignInEvent::SignInFailed(e) => (&mut e.request, e.user_id.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this sign-in attempt is already recorded")]
pub struct AlreadyRecorded;

/// One sign-in attempt; recorded once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInAttempt {
    pub recorded: bool,
}

impl SignInAttempt {
    fn decide(&self, command: SignInEvent) -> Result<Vec<SignInEvent>, AlreadyRecorded> {
        if self.recorded {
            return Err(AlreadyRecorded);
        }
        Ok(vec![command])
    }
}

impl Aggregate for SignInAttempt {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = SignInEvent;
    type Event = SignInEvent;
    type Error = AlreadyRecorded;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, _: Self::Event) {
        self.recorded = true;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentGranted {
    pub user_id: String,
    pub client_id: String,
    pub scope: BTreeSet<String>,
    pub request: RequestInfo,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum ConsentEvent for "Consent" {
        ConsentGranted(ConsentGranted),
    }
}

/// What a user agreed a client may do (`<user id>:<client id>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub scope: BTreeSet<String>,
}

impl Consent {
    pub fn covers(&self, scope: &BTreeSet<String>) -> bool {
        scope.is_subset(&self.scope)
    }

    fn decide(&self, command: ConsentGranted) -> Result<Vec<ConsentEvent>, AlreadyRecorded> {
        if self.covers(&command.scope) {
            return Ok(vec![]);
        }
        Ok(vec![ConsentEvent::ConsentGranted(command)])
    }
}

impl Aggregate for Consent {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = ConsentGranted;
    type Event = ConsentEvent;
    type Error = AlreadyRecorded;
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
        let ConsentEvent::ConsentGranted(e) = event;
        self.scope.extend(e.scope);
    }
}
