//! Customer: the commercial side of an organization: who is billed, where, in which currency.
//!
//! An organization has at most one customer record, and its id is the organization's id: the
//! store's optimistic concurrency then guarantees uniqueness without a lookup.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::commercial::money::Currency;
use crate::decision::record_decision;

pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRegistered {
    pub organization_id: String,
    /// Legal name on invoices.
    pub name: String,
    /// Where invoices go (a role address such as billing@ is expected, not a person's).
    pub billing_email: String,
    /// ISO 4217; every contract and invoice of the customer is in it.
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerContactChanged {
    pub name: String,
    pub billing_email: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum CustomerEvent for "Customer" {
        CustomerRegistered(CustomerRegistered),
        CustomerContactChanged(CustomerContactChanged),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCommand {
    Register(CustomerRegistered),
    ChangeContact { name: String, billing_email: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    #[error("{0}")]
    Invalid(String),
    #[error("the organization already has a customer record")]
    AlreadyExists,
    #[error("customer not found")]
    NotFound,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub registered: Option<CustomerRegistered>,
}

impl Customer {
    pub fn exists(&self) -> bool {
        self.registered.is_some()
    }
}

pub fn check_name(name: &str) -> Result<String, CustomerError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control) {
        return Err(CustomerError::Invalid(format!(
            "name must be 1 to {MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(n.to_owned())
}

/// A plausible mailbox (`local@domain`, no spaces); delivery proves the rest.
pub fn check_email(email: &str) -> Result<String, CustomerError> {
    let e = email.trim();
    let ok = e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if !ok {
        return Err(CustomerError::Invalid(format!(
            "billing_email {e:?} is not an email address"
        )));
    }
    Ok(e.to_owned())
}

impl Customer {
    fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, CustomerError> {
        match (command, &self.registered) {
            (CustomerCommand::Register(r), None) => {
                Currency::parse(&r.currency).map_err(CustomerError::Invalid)?;
                Ok(vec![CustomerEvent::CustomerRegistered(
                    CustomerRegistered {
                        organization_id: r.organization_id,
                        name: check_name(&r.name)?,
                        billing_email: check_email(&r.billing_email)?,
                        currency: r.currency,
                    },
                )])
            }
            (CustomerCommand::Register(_), Some(_)) => Err(CustomerError::AlreadyExists),
            (CustomerCommand::ChangeContact { .. }, None) => Err(CustomerError::NotFound),
            (
                CustomerCommand::ChangeContact {
                    name,
                    billing_email,
                },
                Some(current),
            ) => {
                let (name, billing_email) = (check_name(&name)?, check_email(&billing_email)?);
                if name == current.name && billing_email == current.billing_email {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::CustomerContactChanged(
                    CustomerContactChanged {
                        name,
                        billing_email,
                    },
                )])
            }
        }
    }
}

impl Aggregate for Customer {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;
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
            CustomerEvent::CustomerRegistered(e) => self.registered = Some(e),
            CustomerEvent::CustomerContactChanged(e) => {
                if let Some(r) = self.registered.as_mut() {
                    r.name = e.name;
                    r.billing_email = e.billing_email;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Spec = TestFramework<Customer>;

    fn registered(currency: &str) -> CustomerRegistered {
        CustomerRegistered {
            organization_id: "org".into(),
            name: " Acme Quantum GmbH ".into(),
            billing_email: "billing@acme.example".into(),
            currency: currency.into(),
        }
    }

    #[test]
    fn registering_trims_and_checks_the_currency() {
        let mut expected = registered("EUR");
        expected.name = "Acme Quantum GmbH".into();
        Spec::with(())
            .given_no_previous_events()
            .when(CustomerCommand::Register(registered("EUR")))
            .then_expect_events(vec![CustomerEvent::CustomerRegistered(expected)]);
        Spec::with(())
            .given_no_previous_events()
            .when(CustomerCommand::Register(registered("XAU")))
            .then_expect_error(CustomerError::Invalid(
                "XAU has no minor unit; contracts need one".into(),
            ));
    }

    #[test]
    fn an_organization_has_one_customer_record() {
        Spec::with(())
            .given(vec![CustomerEvent::CustomerRegistered(registered("EUR"))])
            .when(CustomerCommand::Register(registered("EUR")))
            .then_expect_error(CustomerError::AlreadyExists);
    }

    #[test]
    fn billing_emails_are_checked() {
        for bad in ["", "no-at", "a@b", "a b@c.d", "@c.d"] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert_eq!(check_email(" ap@acme.example ").unwrap(), "ap@acme.example");
    }
}
