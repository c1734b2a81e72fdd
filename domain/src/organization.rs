//! Organization: the tenant every other aggregate belongs to.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

/// Longest organization name accepted, in Unicode scalar values.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest suspension reason accepted, in Unicode scalar values.
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrganizationCommand {
    Create { name: String },
    Rename { name: String },
    Suspend { reason: String },
    Reactivate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationCreated {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationRenamed {
    pub name: String,
    pub previous_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationSuspended {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationReactivated {}

crate::events! {
    /// Externally tagged: the variant name is the `event_type`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum OrganizationEvent for "Organization" {
        OrganizationCreated(OrganizationCreated),
        OrganizationRenamed(OrganizationRenamed),
        OrganizationSuspended(OrganizationSuspended),
        OrganizationReactivated(OrganizationReactivated),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrganizationError {
    #[error("name must not be empty")]
    EmptyName,
    #[error("name must be at most {MAX_NAME_CHARS} characters")]
    NameTooLong,
    #[error("name must not contain control characters")]
    NameHasControlCharacters,
    #[error("reason must be at most {MAX_REASON_CHARS} characters")]
    ReasonTooLong,
    #[error("organization already exists")]
    AlreadyExists,
    #[error("organization not found")]
    NotFound,
    #[error("organization is suspended")]
    Suspended,
    #[error("organization is already suspended")]
    AlreadySuspended,
    #[error("organization is not suspended")]
    NotSuspended,
}

impl OrganizationError {
    /// Whether the command was malformed (as opposed to conflicting with current state).
    pub fn is_validation(&self) -> bool {
        matches!(
            self,
            Self::EmptyName
                | Self::NameTooLong
                | Self::NameHasControlCharacters
                | Self::ReasonTooLong
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OrganizationStatus {
    #[default]
    Absent,
    Active,
    Suspended,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub status: OrganizationStatus,
    pub name: String,
}

/// Trims and checks a name; returns the form that is stored.
pub fn validate_name(raw: &str) -> Result<String, OrganizationError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(OrganizationError::EmptyName);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(OrganizationError::NameTooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(OrganizationError::NameHasControlCharacters);
    }
    Ok(name.to_owned())
}

fn validate_reason(raw: &str) -> Result<String, OrganizationError> {
    let reason = raw.trim();
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(OrganizationError::ReasonTooLong);
    }
    Ok(reason.to_owned())
}

impl Organization {
    fn decide(
        &self,
        command: OrganizationCommand,
    ) -> Result<Vec<OrganizationEvent>, OrganizationError> {
        use OrganizationCommand as C;
        use OrganizationEvent as E;
        use OrganizationStatus as S;
        match (self.status, command) {
            (S::Absent, C::Create { name }) => {
                Ok(vec![E::OrganizationCreated(OrganizationCreated {
                    name: validate_name(&name)?,
                })])
            }
            (_, C::Create { .. }) => Err(OrganizationError::AlreadyExists),
            (S::Absent, _) => Err(OrganizationError::NotFound),
            (S::Suspended, C::Rename { .. }) => Err(OrganizationError::Suspended),
            (S::Active, C::Rename { name }) => {
                let name = validate_name(&name)?;
                if name == self.name {
                    return Ok(vec![]); // Renaming to the current name changes nothing.
                }
                Ok(vec![E::OrganizationRenamed(OrganizationRenamed {
                    name,
                    previous_name: self.name.clone(),
                })])
            }
            (S::Active, C::Suspend { reason }) => {
                Ok(vec![E::OrganizationSuspended(OrganizationSuspended {
                    reason: validate_reason(&reason)?,
                })])
            }
            (S::Suspended, C::Suspend { .. }) => Err(OrganizationError::AlreadySuspended),
            (S::Suspended, C::Reactivate) => {
                Ok(vec![E::OrganizationReactivated(OrganizationReactivated {})])
            }
            (S::Active, C::Reactivate) => Err(OrganizationError::NotSuspended),
        }
    }
}

impl Aggregate for Organization {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = OrganizationCommand;
    type Event = OrganizationEvent;
    type Error = OrganizationError;
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
            OrganizationEvent::OrganizationCreated(e) => {
                self.status = OrganizationStatus::Active;
                self.name = e.name;
            }
            OrganizationEvent::OrganizationRenamed(e) => self.name = e.name,
            OrganizationEvent::OrganizationSuspended(_) => {
                self.status = OrganizationStatus::Suspended
            }
            OrganizationEvent::OrganizationReactivated(_) => {
                self.status = OrganizationStatus::Active
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;
    use OrganizationCommand as C;
    use OrganizationEvent as E;

    type Spec = TestFramework<Organization>;

    fn created(name: &str) -> E {
        E::OrganizationCreated(OrganizationCreated { name: name.into() })
    }
    fn suspended() -> E {
        E::OrganizationSuspended(OrganizationSuspended {
            reason: "unpaid".into(),
        })
    }

    #[test]
    fn creating_a_new_organization_trims_its_name() {
        Spec::with(())
            .given_no_previous_events()
            .when(C::Create {
                name: "  Acme Quantum ".into(),
            })
            .then_expect_events(vec![created("Acme Quantum")]);
    }

    #[test]
    fn an_organization_cannot_be_created_twice() {
        Spec::with(())
            .given(vec![created("Acme")])
            .when(C::Create {
                name: "Acme".into(),
            })
            .then_expect_error(OrganizationError::AlreadyExists);
    }

    #[test]
    fn names_are_validated() {
        for (name, error) in [
            ("   ", OrganizationError::EmptyName),
            (
                &"x".repeat(MAX_NAME_CHARS + 1)[..],
                OrganizationError::NameTooLong,
            ),
            (
                "bad\u{0007}name",
                OrganizationError::NameHasControlCharacters,
            ),
        ] {
            Spec::with(())
                .given_no_previous_events()
                .when(C::Create { name: name.into() })
                .then_expect_error(error);
        }
        // Exactly the maximum, counted in characters, not bytes.
        Spec::with(())
            .given_no_previous_events()
            .when(C::Create {
                name: "é".repeat(MAX_NAME_CHARS),
            })
            .then_expect_events(vec![created(&"é".repeat(MAX_NAME_CHARS))]);
    }

    #[test]
    fn renaming_records_the_previous_name() {
        Spec::with(())
            .given(vec![created("Acme")])
            .when(C::Rename {
                name: "Acme Labs".into(),
            })
            .then_expect_events(vec![E::OrganizationRenamed(OrganizationRenamed {
                name: "Acme Labs".into(),
                previous_name: "Acme".into(),
            })]);
    }

    #[test]
    fn renaming_to_the_same_name_records_nothing() {
        Spec::with(())
            .given(vec![created("Acme")])
            .when(C::Rename {
                name: " Acme ".into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn commands_on_a_missing_organization_fail() {
        for command in [
            C::Rename { name: "x".into() },
            C::Suspend {
                reason: String::new(),
            },
            C::Reactivate,
        ] {
            Spec::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(OrganizationError::NotFound);
        }
    }

    #[test]
    fn suspension_and_reactivation_alternate() {
        Spec::with(())
            .given(vec![created("Acme")])
            .when(C::Suspend {
                reason: " unpaid ".into(),
            })
            .then_expect_events(vec![suspended()]);
        Spec::with(())
            .given(vec![created("Acme"), suspended()])
            .when(C::Suspend {
                reason: "again".into(),
            })
            .then_expect_error(OrganizationError::AlreadySuspended);
        Spec::with(())
            .given(vec![created("Acme"), suspended()])
            .when(C::Reactivate)
            .then_expect_events(vec![E::OrganizationReactivated(OrganizationReactivated {})]);
        Spec::with(())
            .given(vec![created("Acme")])
            .when(C::Reactivate)
            .then_expect_error(OrganizationError::NotSuspended);
    }

    #[test]
    fn a_suspended_organization_cannot_be_renamed() {
        Spec::with(())
            .given(vec![created("Acme"), suspended()])
            .when(C::Rename {
                name: "Other".into(),
            })
            .then_expect_error(OrganizationError::Suspended);
    }

    #[test]
    fn event_type_is_the_serde_variant_name() {
        for event in [
            created("a"),
            suspended(),
            E::OrganizationRenamed(OrganizationRenamed {
                name: "b".into(),
                previous_name: "a".into(),
            }),
            E::OrganizationReactivated(OrganizationReactivated {}),
        ] {
            let value = serde_json::to_value(&event).unwrap();
            assert!(value.get(event.event_type()).is_some(), "{value}");
        }
    }
}
