//! Passkeys (WebAuthn credentials) of a person. One `PasskeyCredentials` aggregate per user
//! (id = the user's id). The credential (public key, flags) is sealed with the user's data key,
//! like the rest of their personal data; its id and signature counter are in clear so the
//! rules below can be checked.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Sealed;

use crate::decision::record_decision;

pub const MAX_PASSKEYS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyRegistered {
    /// base64url of the credential id.
    pub credential_id: String,
    /// The person's label for it ("laptop"), at most 100 characters.
    pub name: String,
    /// The credential as the relying-party library stores it, sealed.
    pub credential: Sealed,
    /// The attestation statement format the authenticator used (`none`, `packed`, ...).
    pub attestation_format: String,
    pub counter: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyUsed {
    pub credential_id: String,
    /// The authenticator's signature counter (0 for authenticators that keep none).
    pub counter: u32,
    /// The credential with its updated counter and backup state, sealed.
    pub credential: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyRemoved {
    pub credential_id: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum PasskeyEvent for "PasskeyCredentials" {
        PasskeyRegistered(PasskeyRegistered),
        PasskeyUsed(PasskeyUsed),
        PasskeyRemoved(PasskeyRemoved),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasskeyCommand {
    Register(PasskeyRegistered),
    Use(PasskeyUsed),
    Remove { credential_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("this passkey is already registered")]
    Duplicate,
    #[error("no such passkey")]
    NotFound,
    /// W3C WebAuthn §7.2 step 21: a counter that does not grow suggests a cloned authenticator.
    #[error("the passkey's signature counter went from {stored} to {presented}: it may be cloned")]
    CounterRegressed { stored: u32, presented: u32 },
}

/// One registered passkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPasskey {
    pub name: String,
    pub credential: Sealed,
    pub attestation_format: String,
    pub counter: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyCredentials {
    /// By credential id.
    pub passkeys: BTreeMap<String, StoredPasskey>,
}

impl PasskeyCredentials {
    fn decide(&self, command: PasskeyCommand) -> Result<Vec<PasskeyEvent>, PasskeyError> {
        match command {
            PasskeyCommand::Register(r) => {
                let name = r.name.trim().to_owned();
                if name.is_empty()
                    || name.chars().count() > 100
                    || name.chars().any(char::is_control)
                {
                    return Err(PasskeyError::Invalid(
                        "a passkey's name is 1 to 100 printable characters".into(),
                    ));
                }
                if self.passkeys.contains_key(&r.credential_id) {
                    return Err(PasskeyError::Duplicate);
                }
                if self.passkeys.len() >= MAX_PASSKEYS {
                    return Err(PasskeyError::Invalid(format!(
                        "a person has at most {MAX_PASSKEYS} passkeys"
                    )));
                }
                Ok(vec![PasskeyEvent::PasskeyRegistered(PasskeyRegistered {
                    name,
                    ..r
                })])
            }
            PasskeyCommand::Use(u) => {
                let stored = self
                    .passkeys
                    .get(&u.credential_id)
                    .ok_or(PasskeyError::NotFound)?;
                // Authenticators without a counter always say 0; any other must grow.
                if (u.counter != 0 || stored.counter != 0) && u.counter <= stored.counter {
                    return Err(PasskeyError::CounterRegressed {
                        stored: stored.counter,
                        presented: u.counter,
                    });
                }
                Ok(vec![PasskeyEvent::PasskeyUsed(u)])
            }
            PasskeyCommand::Remove { credential_id } => {
                if !self.passkeys.contains_key(&credential_id) {
                    return Err(PasskeyError::NotFound);
                }
                Ok(vec![PasskeyEvent::PasskeyRemoved(PasskeyRemoved {
                    credential_id,
                })])
            }
        }
    }
}

impl Aggregate for PasskeyCredentials {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = PasskeyCommand;
    type Event = PasskeyEvent;
    type Error = PasskeyError;
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
            PasskeyEvent::PasskeyRegistered(r) => {
                self.passkeys.insert(
                    r.credential_id,
                    StoredPasskey {
                        name: r.name,
                        credential: r.credential,
                        attestation_format: r.attestation_format,
                        counter: r.counter,
                    },
                );
            }
            PasskeyEvent::PasskeyUsed(u) => {
                if let Some(p) = self.passkeys.get_mut(&u.credential_id) {
                    p.counter = u.counter;
                    p.credential = u.credential;
                }
            }
            PasskeyEvent::PasskeyRemoved(r) => {
                self.passkeys.remove(&r.credential_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Spec = TestFramework<PasskeyCredentials>;

    fn sealed() -> Sealed {
        Sealed {
            subject: "u".into(),
            nonce: "n".into(),
            ciphertext: "c".into(),
        }
    }

    fn registered(counter: u32) -> PasskeyEvent {
        PasskeyEvent::PasskeyRegistered(PasskeyRegistered {
            credential_id: "cred".into(),
            name: "laptop".into(),
            credential: sealed(),
            attestation_format: "packed".into(),
            counter,
        })
    }

    fn used(counter: u32) -> PasskeyCommand {
        PasskeyCommand::Use(PasskeyUsed {
            credential_id: "cred".into(),
            counter,
            credential: sealed(),
        })
    }

    #[test]
    fn the_signature_counter_must_grow() {
        Spec::with(())
            .given(vec![registered(5)])
            .when(used(6))
            .then_expect_events(vec![PasskeyEvent::PasskeyUsed(PasskeyUsed {
                credential_id: "cred".into(),
                counter: 6,
                credential: sealed(),
            })]);
        for stale in [5, 4] {
            Spec::with(())
                .given(vec![registered(5)])
                .when(used(stale))
                .then_expect_error(PasskeyError::CounterRegressed {
                    stored: 5,
                    presented: stale,
                });
        }
        // Authenticators that keep no counter say 0 every time.
        Spec::with(())
            .given(vec![registered(0)])
            .when(used(0))
            .then_expect_events(vec![PasskeyEvent::PasskeyUsed(PasskeyUsed {
                credential_id: "cred".into(),
                counter: 0,
                credential: sealed(),
            })]);
    }

    #[test]
    fn a_credential_is_registered_once() {
        Spec::with(())
            .given(vec![registered(0)])
            .when(PasskeyCommand::Register(PasskeyRegistered {
                credential_id: "cred".into(),
                name: "again".into(),
                credential: sealed(),
                attestation_format: "none".into(),
                counter: 0,
            }))
            .then_expect_error(PasskeyError::Duplicate);
    }
}
