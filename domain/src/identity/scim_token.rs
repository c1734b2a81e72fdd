//! ScimToken: a bearer credential with which an identity provider (Okta, Entra ID...)
//! provisions one organization's users and groups over SCIM 2.0. Only the SHA-256 digest of
//! its secret is recorded; the bearer value is `<token id>.<secret>`.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScimTokenIssued {
    pub organization_id: String,
    /// A label for people ("Okta production").
    pub name: String,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScimTokenRevoked {}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum ScimTokenEvent for "ScimToken" {
        ScimTokenIssued(ScimTokenIssued),
        ScimTokenRevoked(ScimTokenRevoked),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScimTokenCommand {
    Issue {
        organization_id: String,
        name: String,
        secret_sha256: String,
    },
    Revoke,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScimTokenError {
    #[error("SCIM token already exists")]
    AlreadyExists,
    #[error("SCIM token not found")]
    NotFound,
    #[error("name must be 1 to 128 characters without control characters")]
    BadName,
    #[error("secret digest must be 64 lower-case hex characters")]
    BadDigest,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScimToken {
    pub organization_id: String,
    pub name: String,
    pub secret_sha256: String,
    pub issued: bool,
    pub revoked: bool,
}

impl ScimToken {
    /// Whether the token may still be used.
    pub fn is_live(&self) -> bool {
        self.issued && !self.revoked
    }

    fn decide(&self, command: ScimTokenCommand) -> Result<Vec<ScimTokenEvent>, ScimTokenError> {
        match command {
            ScimTokenCommand::Issue {
                organization_id,
                name,
                secret_sha256,
            } => {
                if self.issued {
                    return Err(ScimTokenError::AlreadyExists);
                }
                let name = name.trim().to_owned();
                if name.is_empty()
                    || name.chars().count() > 128
                    || name.chars().any(char::is_control)
                {
                    return Err(ScimTokenError::BadName);
                }
                if secret_sha256.len() != 64
                    || !secret_sha256
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
                {
                    return Err(ScimTokenError::BadDigest);
                }
                Ok(vec![ScimTokenEvent::ScimTokenIssued(ScimTokenIssued {
                    organization_id,
                    name,
                    secret_sha256,
                })])
            }
            ScimTokenCommand::Revoke if !self.issued => Err(ScimTokenError::NotFound),
            ScimTokenCommand::Revoke if self.revoked => Ok(vec![]),
            ScimTokenCommand::Revoke => {
                Ok(vec![ScimTokenEvent::ScimTokenRevoked(ScimTokenRevoked {})])
            }
        }
    }
}

impl Aggregate for ScimToken {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = ScimTokenCommand;
    type Event = ScimTokenEvent;
    type Error = ScimTokenError;
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
            ScimTokenEvent::ScimTokenIssued(e) => {
                self.issued = true;
                self.organization_id = e.organization_id;
                self.name = e.name;
                self.secret_sha256 = e.secret_sha256;
            }
            ScimTokenEvent::ScimTokenRevoked(_) => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn issued() -> ScimTokenEvent {
        ScimTokenEvent::ScimTokenIssued(ScimTokenIssued {
            organization_id: "org".into(),
            name: "Okta".into(),
            secret_sha256: "a".repeat(64),
        })
    }

    #[test]
    fn a_token_is_issued_once_with_a_digest_and_revoked_for_good() {
        TestFramework::<ScimToken>::with(())
            .given_no_previous_events()
            .when(ScimTokenCommand::Issue {
                organization_id: "org".into(),
                name: " Okta ".into(),
                secret_sha256: "a".repeat(64),
            })
            .then_expect_events(vec![issued()]);
        TestFramework::<ScimToken>::with(())
            .given_no_previous_events()
            .when(ScimTokenCommand::Issue {
                organization_id: "org".into(),
                name: "Okta".into(),
                secret_sha256: "not-a-digest".into(),
            })
            .then_expect_error(ScimTokenError::BadDigest);
        TestFramework::<ScimToken>::with(())
            .given(vec![issued()])
            .when(ScimTokenCommand::Revoke)
            .then_expect_events(vec![ScimTokenEvent::ScimTokenRevoked(ScimTokenRevoked {})]);
        TestFramework::<ScimToken>::with(())
            .given_no_previous_events()
            .when(ScimTokenCommand::Revoke)
            .then_expect_error(ScimTokenError::NotFound);
        let mut t = ScimToken::default();
        t.apply(issued());
        assert!(t.is_live());
        t.apply(ScimTokenEvent::ScimTokenRevoked(ScimTokenRevoked {}));
        assert!(!t.is_live());
    }
}
