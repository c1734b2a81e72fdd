//! Invoice: what a contract costs for one month: its recurring prices plus metered usage,
//! in exact integer minor units of the contract's currency, and what became of the payment.
//!
//! An invoice's id is derived from its contract and period, so issuing the same month twice
//! is refused by the store instead of billing twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::commercial::contract::Contract;
use crate::commercial::money::{sum, times};
use crate::commercial::usage::Period;
use crate::decision::record_decision;

/// Namespace of invoice ids (UUID v5 over `invoice/<contract id>/<YYYY-MM>`).
pub const INVOICE_NAMESPACE: uuid::Uuid = uuid::uuid!("0b7f1c9e-51d2-4a8e-a6a4-3c8f0f6b2d17");

pub fn invoice_id(contract_id: &str, period: Period) -> String {
    uuid::Uuid::new_v5(
        &INVOICE_NAMESPACE,
        format!("invoice/{contract_id}/{period}").as_bytes(),
    )
    .to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The line item's recurring price for the month.
    Subscription,
    /// Metered usage times its unit price.
    Usage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceLine {
    pub line_item_id: String,
    pub kind: LineKind,
    pub description: String,
    pub quantity: i64,
    /// Minor units.
    pub unit_amount: i64,
    /// `quantity × unit_amount`, minor units.
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceIssued {
    pub contract_id: String,
    pub customer_id: String,
    pub organization_id: String,
    /// `YYYY-MM`.
    pub period: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    pub total: i64,
    #[schemars(with = "String")]
    pub due_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceSent {
    /// `builtin` or `stripe`.
    pub provider: String,
    pub external_id: String,
    pub customer_external_id: String,
    pub hosted_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoicePaid {
    pub provider: String,
    /// The provider's event or payment reference.
    pub reference: String,
    #[schemars(with = "String")]
    pub paid_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoicePaymentFailed {
    pub provider: String,
    pub reference: String,
    #[schemars(with = "String")]
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceVoided {
    pub reason: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum InvoiceEvent for "Invoice" {
        InvoiceIssued(InvoiceIssued),
        InvoiceSent(InvoiceSent),
        InvoicePaid(InvoicePaid),
        InvoicePaymentFailed(InvoicePaymentFailed),
        InvoiceVoided(InvoiceVoided),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceCommand {
    Issue(InvoiceIssued),
    RecordSent(InvoiceSent),
    RecordPaid(InvoicePaid),
    RecordPaymentFailed(InvoicePaymentFailed),
    Void { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    #[error("{0}")]
    Invalid(String),
    #[error("an invoice for this contract and period already exists")]
    AlreadyIssued,
    #[error("invoice not found")]
    NotFound,
    #[error("the invoice is {0}; it cannot {1}")]
    WrongState(&'static str, &'static str),
}

impl InvoiceError {
    pub fn is_validation(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InvoiceStatus {
    #[default]
    Absent,
    /// Recorded here, not yet handed to the billing provider.
    Issued,
    /// The provider has it; payment is due.
    Open,
    Paid,
    Void,
}

impl InvoiceStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Issued => "issued",
            Self::Open => "open",
            Self::Paid => "paid",
            Self::Void => "void",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub status: InvoiceStatus,
    pub issued: Option<InvoiceIssued>,
    pub sent: Option<InvoiceSent>,
    pub paid: Option<InvoicePaid>,
    pub payment_failures: u32,
}

/// The lines of `contract`'s invoice for `period`, given the organization's metered usage in
/// that month. Refuses when the contract was not in force during the period, or when an amount
/// does not fit exactly.
pub fn invoice_lines(
    contract: &Contract,
    period: Period,
    usage: &BTreeMap<String, i64>,
) -> Result<Vec<InvoiceLine>, String> {
    if !contract.in_force_during(period.starts_at(), period.ends_at()) {
        return Err(format!(
            "the contract was not in force during {period}; there is nothing to bill"
        ));
    }
    let mut lines = vec![];
    for item in &contract.line_items {
        let at = format!("line item {}", item.id);
        lines.push(InvoiceLine {
            line_item_id: item.id.clone(),
            kind: LineKind::Subscription,
            description: format!("{} {} ({period})", item.product, item.edition),
            quantity: item.quantity,
            unit_amount: item.unit_price,
            amount: times(item.quantity, item.unit_price, &at)?,
        });
        for (metric, price) in &item.usage_prices {
            let used = usage.get(metric).copied().unwrap_or(0);
            if used == 0 {
                continue;
            }
            lines.push(InvoiceLine {
                line_item_id: item.id.clone(),
                kind: LineKind::Usage,
                description: format!("{metric} used in {period}"),
                quantity: used,
                unit_amount: *price,
                amount: times(used, *price, &at)?,
            });
        }
    }
    Ok(lines)
}

impl Invoice {
    fn decide(&self, command: InvoiceCommand) -> Result<Vec<InvoiceEvent>, InvoiceError> {
        use InvoiceCommand as C;
        use InvoiceEvent as E;
        use InvoiceStatus as S;
        match (self.status, command) {
            (S::Absent, C::Issue(i)) => {
                crate::commercial::money::Currency::parse(&i.currency)
                    .map_err(InvoiceError::Invalid)?;
                Period::parse(&i.period).map_err(InvoiceError::Invalid)?;
                if i.lines
                    .iter()
                    .any(|l| l.amount != l.quantity * l.unit_amount)
                {
                    return Err(InvoiceError::Invalid(
                        "each line's amount must be its quantity times its unit amount".into(),
                    ));
                }
                let total = sum(i.lines.iter().map(|l| l.amount), "invoice")
                    .map_err(InvoiceError::Invalid)?;
                if total != i.total {
                    return Err(InvoiceError::Invalid(format!(
                        "the total must be the sum of the lines ({total})"
                    )));
                }
                Ok(vec![E::InvoiceIssued(i)])
            }
            (_, C::Issue(_)) => Err(InvoiceError::AlreadyIssued),
            (S::Absent, _) => Err(InvoiceError::NotFound),
            (S::Issued, C::RecordSent(s)) => Ok(vec![E::InvoiceSent(s)]),
            // Sending again after a crash finds the same provider invoice: nothing new.
            (S::Open | S::Paid, C::RecordSent(s))
                if self.sent.as_ref().map(|x| &x.external_id) == Some(&s.external_id) =>
            {
                Ok(vec![])
            }
            (S::Issued | S::Open, C::RecordPaid(p)) => Ok(vec![E::InvoicePaid(p)]),
            (S::Paid, C::RecordPaid(_)) => Ok(vec![]),
            (S::Issued | S::Open, C::RecordPaymentFailed(f)) => {
                Ok(vec![E::InvoicePaymentFailed(f)])
            }
            (S::Issued | S::Open, C::Void { reason }) => {
                let reason = reason.trim().to_owned();
                if reason.is_empty() || reason.chars().count() > 500 {
                    return Err(InvoiceError::Invalid(
                        "reason must be 1 to 500 characters".into(),
                    ));
                }
                Ok(vec![E::InvoiceVoided(InvoiceVoided { reason })])
            }
            (S::Void, C::Void { .. }) => Ok(vec![]),
            (status, command) => Err(InvoiceError::WrongState(
                status.name(),
                match command {
                    C::Issue(_) => "be issued",
                    C::RecordSent(_) => "be sent",
                    C::RecordPaid(_) => "be paid",
                    C::RecordPaymentFailed(_) => "fail a payment",
                    C::Void { .. } => "be voided",
                },
            )),
        }
    }
}

impl Aggregate for Invoice {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = InvoiceCommand;
    type Event = InvoiceEvent;
    type Error = InvoiceError;
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
            InvoiceEvent::InvoiceIssued(i) => {
                self.status = InvoiceStatus::Issued;
                self.issued = Some(i);
            }
            InvoiceEvent::InvoiceSent(s) => {
                self.status = InvoiceStatus::Open;
                self.sent = Some(s);
            }
            InvoiceEvent::InvoicePaid(p) => {
                self.status = InvoiceStatus::Paid;
                self.paid = Some(p);
            }
            InvoiceEvent::InvoicePaymentFailed(_) => self.payment_failures += 1,
            InvoiceEvent::InvoiceVoided(_) => self.status = InvoiceStatus::Void,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commercial::contract::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn contract(currency: &str) -> Contract {
        let mut c = Contract::default();
        let item = LineItem {
            id: "a".into(),
            product: "qpu-access".into(),
            edition: "pro".into(),
            features: vec![],
            quotas: BTreeMap::new(),
            limits: BTreeMap::new(),
            quantity: 3,
            unit_price: 19_999,
            usage_prices: [("shots".to_owned(), 7)].into(),
            max_activations: 1,
        };
        c.apply(ContractEvent::ContractDrafted(ContractDrafted {
            contract_id: "c1".into(),
            customer_id: "org".into(),
            organization_id: "org".into(),
            currency: currency.into(),
            line_items: vec![item],
            starts_at: t("2026-10-15T00:00:00Z"),
            ends_at: t("2027-10-15T00:00:00Z"),
        }));
        c.apply(ContractEvent::ContractActivated(ContractActivated {
            licenses: vec![],
        }));
        c
    }

    #[test]
    fn lines_are_recurring_prices_plus_metered_usage_in_exact_minor_units() {
        let usage: BTreeMap<String, i64> = [("shots".to_owned(), 1_000_001)].into();
        let lines =
            invoice_lines(&contract("EUR"), Period::parse("2026-11").unwrap(), &usage).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].amount, 59_997);
        assert_eq!(lines[1].amount, 7_000_007);
        assert_eq!(sum(lines.iter().map(|l| l.amount), "t").unwrap(), 7_060_004);
    }

    #[test]
    fn a_month_outside_the_term_has_nothing_to_bill() {
        let err = invoice_lines(
            &contract("EUR"),
            Period::parse("2026-09").unwrap(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.contains("not in force"), "{err}");
    }

    #[test]
    fn an_overflowing_amount_is_refused_not_wrapped() {
        let usage: BTreeMap<String, i64> = [("shots".to_owned(), i64::MAX / 2)].into();
        assert!(
            invoice_lines(&contract("EUR"), Period::parse("2026-11").unwrap(), &usage).is_err()
        );
    }

    #[test]
    fn paying_twice_changes_nothing_and_a_void_invoice_cannot_be_paid() {
        use cqrs_es::test::TestFramework;
        let issued = InvoiceEvent::InvoiceIssued(InvoiceIssued {
            contract_id: "c1".into(),
            customer_id: "org".into(),
            organization_id: "org".into(),
            period: "2026-11".into(),
            currency: "EUR".into(),
            lines: vec![],
            total: 0,
            due_at: t("2026-12-31T00:00:00Z"),
        });
        let paid = InvoicePaid {
            provider: "stripe".into(),
            reference: "evt_1".into(),
            paid_at: t("2026-12-02T00:00:00Z"),
        };
        TestFramework::<Invoice>::with(())
            .given(vec![
                issued.clone(),
                InvoiceEvent::InvoicePaid(paid.clone()),
            ])
            .when(InvoiceCommand::RecordPaid(paid.clone()))
            .then_expect_events(vec![]);
        TestFramework::<Invoice>::with(())
            .given(vec![
                issued,
                InvoiceEvent::InvoiceVoided(InvoiceVoided {
                    reason: "duplicate".into(),
                }),
            ])
            .when(InvoiceCommand::RecordPaid(paid))
            .then_expect_error(InvoiceError::WrongState("void", "be paid"));
    }
}
