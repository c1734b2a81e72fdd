//! Contract: what a customer bought (line items with features, quotas, limits and prices) and
//! for how long, moving through draft, sent, signed, active, amended, terminated, expired.
//!
//! The contract decides which licences it implies: activation, amendment and termination
//! events carry the licence plan (issue, renew, revoke, with deterministic licence ids), and
//! the contract-to-licence process manager only carries the plan out. Replaying the log
//! therefore always yields the same licences, and carrying a plan out twice changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::commercial::money::Currency;
use crate::decision::record_decision;
use crate::licensing::license::MAX_LIMIT;

pub const MAX_LINE_ITEMS: usize = 50;
pub const MAX_TEXT_CHARS: usize = 200;

/// The namespace of licence ids derived from contracts (UUID v5 over
/// `contract/<contract id>/<line item id>/<amendment>`).
pub const LICENSE_NAMESPACE: uuid::Uuid = uuid::uuid!("6f0c5a52-3a43-4f3c-9a39-7d2b8d0e51a4");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Work beyond the quota is refused.
    Hard,
    /// Work beyond the quota goes on and raises a `QuotaExceeded` event.
    Soft,
}

/// An amount of a metered quantity per calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub amount: i64,
    pub enforcement: Enforcement,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    /// Unique within the contract; amendments match items by it.
    pub id: String,
    pub product: String,
    pub edition: String,
    #[serde(default)]
    pub features: Vec<String>,
    /// Metered quantities per month (`jobs` counts submissions; other names meter the job
    /// metrics of the same name).
    #[serde(default)]
    pub quotas: BTreeMap<String, Quota>,
    /// Limits written into the licence (seats, qubits, ...).
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
    pub quantity: i64,
    /// Price per unit and month, in the currency's minor units.
    pub unit_price: i64,
    /// Price per unit of metered usage, in minor units.
    #[serde(default)]
    pub usage_prices: BTreeMap<String, i64>,
    /// Machines the licence may be activated on.
    pub max_activations: u32,
}

impl LineItem {
    /// Whether the licence this item implies would be the same under `other`.
    fn same_license_terms(&self, other: &LineItem) -> bool {
        self.product == other.product
            && self.edition == other.edition
            && self.features == other.features
            && self.limits == other.limits
            && self.max_activations == other.max_activations
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LicenseAction {
    Issue,
    /// Same terms, later expiry.
    Renew,
    Revoke,
}

/// One step of a contract's licence plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedLicense {
    pub line_item_id: String,
    pub license_id: String,
    pub action: LicenseAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractDrafted {
    pub contract_id: String,
    /// The customer's id (which is its organization's id).
    pub customer_id: String,
    pub organization_id: String,
    pub currency: String,
    pub line_items: Vec<LineItem>,
    #[schemars(with = "String")]
    pub starts_at: DateTime<Utc>,
    #[schemars(with = "String")]
    pub ends_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractRevised {
    pub line_items: Vec<LineItem>,
    #[schemars(with = "String")]
    pub starts_at: DateTime<Utc>,
    #[schemars(with = "String")]
    pub ends_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractSent {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractSigned {
    /// Who signed for the customer (as they gave their name).
    pub signed_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractActivated {
    pub licenses: Vec<PlannedLicense>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractAmended {
    /// 1 for the first amendment.
    pub amendment: u32,
    pub reason: String,
    pub line_items: Vec<LineItem>,
    #[schemars(with = "String")]
    pub ends_at: DateTime<Utc>,
    pub licenses: Vec<PlannedLicense>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractTerminated {
    pub reason: String,
    #[schemars(with = "String")]
    pub terminated_at: DateTime<Utc>,
    pub licenses: Vec<PlannedLicense>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractExpired {
    #[schemars(with = "String")]
    pub expired_at: DateTime<Utc>,
}

/// QuantumLock refused a step of the licence plan for good (for example: the licence terms are
/// invalid); the plan goes on with its other steps and other contracts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractLicenseFailed {
    pub line_item_id: String,
    pub license_id: String,
    pub action: LicenseAction,
    pub reason: String,
}

/// What a pending licence step waits for: a cause that can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LicenseHold {
    /// QuantumLock refuses licences for the organization while it is suspended; its
    /// reactivation retries the step at once.
    OrganizationSuspended,
    /// QuantumLock (or QSA, for the Portal's token) could not be reached, timed out, or
    /// answered 5xx, 408 or 429.
    Unavailable,
}

/// A step of the licence plan did not happen for a reason that can pass; it is tried again
/// at `retry_at` (exponential backoff, see [`RetryPolicy`]) or at once when its cause clears.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractLicensePending {
    pub line_item_id: String,
    pub license_id: String,
    pub action: LicenseAction,
    pub hold: LicenseHold,
    pub reason: String,
    /// 1 for the first failed attempt.
    pub attempt: u32,
    #[schemars(with = "String")]
    pub retry_at: DateTime<Utc>,
}

/// QuantumLock carried out a step of the licence plan (the licence is issued, renewed or
/// revoked as planned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractLicenseCarriedOut {
    pub line_item_id: String,
    pub license_id: String,
    pub action: LicenseAction,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum ContractEvent for "Contract" {
        ContractDrafted(ContractDrafted),
        ContractRevised(ContractRevised),
        ContractSent(ContractSent),
        ContractSigned(ContractSigned),
        ContractActivated(ContractActivated),
        ContractAmended(ContractAmended),
        ContractTerminated(ContractTerminated),
        ContractExpired(ContractExpired),
        ContractLicenseFailed(ContractLicenseFailed),
        ContractLicensePending(ContractLicensePending),
        ContractLicenseCarriedOut(ContractLicenseCarriedOut),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContractCommand {
    Draft(ContractDrafted),
    Revise(ContractRevised),
    Send,
    Sign {
        signed_by: String,
    },
    Activate {
        now: DateTime<Utc>,
    },
    Amend {
        reason: String,
        line_items: Vec<LineItem>,
        ends_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    Terminate {
        reason: String,
        now: DateTime<Utc>,
    },
    Expire {
        now: DateTime<Utc>,
    },
    /// Records that QuantumLock refused a planned step (once per licence and action).
    RecordLicenseFailure(ContractLicenseFailed),
    /// Records that a planned step failed for a reason that can pass (once per attempt; an
    /// attempt already recorded, or a step no longer current, records nothing).
    RecordLicensePending(ContractLicensePending),
    /// Records that QuantumLock carried out a planned step (once).
    RecordLicenseCarriedOut(ContractLicenseCarriedOut),
}

impl ContractCommand {
    /// The transition's name in the API (`POST /v1/contracts/{id}/{action}`).
    pub fn action(&self) -> &'static str {
        match self {
            Self::Draft(_) => "draft",
            Self::Revise(_) => "revise",
            Self::Send => "send",
            Self::Sign { .. } => "sign",
            Self::Activate { .. } => "activate",
            Self::Amend { .. } => "amend",
            Self::Terminate { .. } => "terminate",
            Self::Expire { .. } => "expire",
            Self::RecordLicenseFailure(_) => "record a licence failure",
            Self::RecordLicensePending(_) => "record a pending licence",
            Self::RecordLicenseCarriedOut(_) => "record a licence carried out",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("{0}")]
    Invalid(String),
    #[error("contract already exists")]
    AlreadyExists,
    #[error("contract not found")]
    NotFound,
    #[error("the contract is {from}; it cannot {action}")]
    IllegalTransition {
        from: &'static str,
        action: &'static str,
    },
    #[error("{0}")]
    Timing(String),
}

impl ContractError {
    pub fn is_validation(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ContractStatus {
    #[default]
    Absent,
    Draft,
    Sent,
    Signed,
    Active,
    Amended,
    Terminated,
    Expired,
}

impl ContractStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Draft => "draft",
            Self::Sent => "sent",
            Self::Signed => "signed",
            Self::Active => "active",
            Self::Amended => "amended",
            Self::Terminated => "terminated",
            Self::Expired => "expired",
        }
    }

    /// Active or amended: the contract grants what it lists.
    pub fn in_force(self) -> bool {
        matches!(self, Self::Active | Self::Amended)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    pub status: ContractStatus,
    pub contract_id: String,
    pub customer_id: String,
    pub organization_id: String,
    pub currency: String,
    pub line_items: Vec<LineItem>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub signed_by: Option<String>,
    pub amendments: u32,
    pub terminated_at: Option<DateTime<Utc>>,
    /// The licence each line item has now (by line item id).
    pub licenses: BTreeMap<String, String>,
    /// Plan steps QuantumLock refused: `<licence id>/<action>` -> reason.
    pub license_failures: BTreeMap<String, String>,
    /// The latest planned licence step of each line item and how far it got.
    #[serde(default)]
    pub license_steps: BTreeMap<String, LicenseStep>,
}

/// A line item's latest licence step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseStep {
    pub license_id: String,
    pub action: LicenseAction,
    pub state: LicenseStepState,
}

/// How far a licence step got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LicenseStepState {
    /// Planned; the process manager has not reported on it yet.
    Planned,
    /// Failed for a reason that can pass; tried again at `retry_at` or when `hold` clears.
    Pending {
        hold: LicenseHold,
        reason: String,
        attempt: u32,
        retry_at: DateTime<Utc>,
    },
    /// QuantumLock carried it out.
    Done,
    /// QuantumLock refused it for good.
    Failed { reason: String },
}

/// A line item's licence as the contract knows it: `issued`, `renewed`, `revoked`,
/// `pending`, `failed`, or `planned` (not reported on yet).
pub fn license_standing(action: LicenseAction, state: &LicenseStepState) -> &'static str {
    match (state, action) {
        (LicenseStepState::Planned, _) => "planned",
        (LicenseStepState::Pending { .. }, _) => "pending",
        (LicenseStepState::Failed { .. }, _) => "failed",
        (LicenseStepState::Done, LicenseAction::Issue) => "issued",
        (LicenseStepState::Done, LicenseAction::Renew) => "renewed",
        (LicenseStepState::Done, LicenseAction::Revoke) => "revoked",
    }
}

impl LicenseStep {
    /// The step as the API shows it: `{license_id, action, standing}`, with `hold`, `reason`,
    /// `attempt` and `retry_at` when pending and `reason` when failed.
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "license_id": self.license_id,
            "action": self.action,
            "standing": license_standing(self.action, &self.state),
        });
        match &self.state {
            LicenseStepState::Pending {
                hold,
                reason,
                attempt,
                retry_at,
            } => {
                v["hold"] = serde_json::json!(hold);
                v["reason"] = serde_json::json!(reason);
                v["attempt"] = serde_json::json!(attempt);
                v["retry_at"] = serde_json::json!(retry_at);
            }
            LicenseStepState::Failed { reason } => v["reason"] = serde_json::json!(reason),
            _ => {}
        }
        v
    }

    fn is(&self, license_id: &str, action: LicenseAction) -> bool {
        self.license_id == license_id && self.action == action
    }
}

/// Bounded exponential backoff with jitter for licence steps that can pass. The clock and the
/// randomness are the caller's: [`RetryPolicy::retry_at`] is a pure function of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt.
    pub first: std::time::Duration,
    /// The largest delay.
    pub max: std::time::Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: std::time::Duration::from_secs(2),
            max: std::time::Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1 for the first): `first * 2^(attempt-1)`,
    /// at most `max`, then scaled into `[1/2, 1]` of itself by `jitter` (in `[0, 1]`; values
    /// outside are clamped) so that many steps failing together do not retry together.
    pub fn delay(&self, attempt: u32, jitter: f64) -> std::time::Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let full = self.first.saturating_mul(factor).min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        full.mul_f64(0.5 + 0.5 * jitter)
    }

    /// When to try again after failed attempt `attempt` at `now`.
    pub fn retry_at(&self, attempt: u32, now: DateTime<Utc>, jitter: f64) -> DateTime<Utc> {
        chrono::TimeDelta::from_std(self.delay(attempt, jitter))
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now)
    }
}

fn failure_key(license_id: &str, action: LicenseAction) -> String {
    format!("{license_id}/{action:?}")
}

/// The licence id of a line item at an amendment (0 = as activated).
pub fn license_id(contract_id: &str, line_item_id: &str, amendment: u32) -> String {
    uuid::Uuid::new_v5(
        &LICENSE_NAMESPACE,
        format!("contract/{contract_id}/{line_item_id}/{amendment}").as_bytes(),
    )
    .to_string()
}

fn text(field: &str, value: &str) -> Result<String, ContractError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > MAX_TEXT_CHARS || v.chars().any(char::is_control) {
        return Err(ContractError::Invalid(format!(
            "{field} must be 1 to {MAX_TEXT_CHARS} printable characters"
        )));
    }
    Ok(v.to_owned())
}

fn amount(field: &str, v: i64) -> Result<(), ContractError> {
    if !(0..=MAX_LIMIT).contains(&v) {
        return Err(ContractError::Invalid(format!(
            "{field} must be between 0 and {MAX_LIMIT}"
        )));
    }
    Ok(())
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Checks and normalises line items (trimmed text, sorted features without duplicates).
pub fn check_line_items(items: Vec<LineItem>) -> Result<Vec<LineItem>, ContractError> {
    if items.is_empty() || items.len() > MAX_LINE_ITEMS {
        return Err(ContractError::Invalid(format!(
            "a contract has 1 to {MAX_LINE_ITEMS} line items"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut priced = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for mut item in items {
        if !is_key(&item.id) {
            return Err(ContractError::Invalid(format!(
                "line item id {:?} must be 1 to 64 of a-z, 0-9, '-', '_'",
                item.id
            )));
        }
        if !seen.insert(item.id.clone()) {
            return Err(ContractError::Invalid(format!(
                "line item id {:?} appears twice",
                item.id
            )));
        }
        let at = |f: &str| format!("line item {:?}: {f}", item.id);
        item.product = text(&at("product"), &item.product)?;
        item.edition = text(&at("edition"), &item.edition)?;
        for f in &item.features {
            if !is_key(f) {
                return Err(ContractError::Invalid(at(&format!(
                    "feature {f:?} must be 1 to 64 of a-z, 0-9, '-', '_'"
                ))));
            }
        }
        item.features.sort();
        item.features.dedup();
        for (name, quota) in &item.quotas {
            if !is_key(name) {
                return Err(ContractError::Invalid(at(&format!(
                    "quota name {name:?} must be 1 to 64 of a-z, 0-9, '-', '_'"
                ))));
            }
            amount(&at(&format!("quota {name}")), quota.amount)?;
        }
        for (name, v) in &item.limits {
            if !is_key(name) {
                return Err(ContractError::Invalid(at(&format!(
                    "limit name {name:?} must be 1 to 64 of a-z, 0-9, '-', '_'"
                ))));
            }
            amount(&at(&format!("limit {name}")), *v)?;
        }
        for (name, v) in &item.usage_prices {
            if !is_key(name) {
                return Err(ContractError::Invalid(at(&format!(
                    "usage price {name:?} must name a metric (a-z, 0-9, '-', '_')"
                ))));
            }
            // Usage is metered per organization: pricing it twice would bill it twice.
            if !priced.insert(name.clone()) {
                return Err(ContractError::Invalid(at(&format!(
                    "usage of {name:?} is already priced by another line item"
                ))));
            }
            amount(&at(&format!("usage price {name}")), *v)?;
        }
        if !(1..=1_000_000).contains(&item.quantity) {
            return Err(ContractError::Invalid(at("quantity must be 1 to 1000000")));
        }
        amount(&at("unit_price"), item.unit_price)?;
        crate::commercial::money::times(item.quantity, item.unit_price, &at("price"))
            .map_err(ContractError::Invalid)?;
        if item.max_activations == 0 {
            return Err(ContractError::Invalid(at(
                "max_activations must be at least 1",
            )));
        }
        // The licence this item implies must be one QuantumLock accepts: its own rules decide.
        let t = chrono::DateTime::<Utc>::UNIX_EPOCH;
        crate::licensing::license::validate_terms(crate::licensing::license::LicenseIssued {
            organization_id: "contract".into(),
            product: item.product.clone(),
            edition: item.edition.clone(),
            features: item.features.clone(),
            limits: item.limits.clone(),
            not_before: t,
            expires_at: t + chrono::Duration::seconds(1),
            grace_period_seconds: 0,
            max_activations: item.max_activations,
            machine_fingerprint: None,
        })
        .map_err(|e| ContractError::Invalid(at(&format!("as a licence: {e}"))))?;
        out.push(item);
    }
    Ok(out)
}

fn check_term(starts_at: DateTime<Utc>, ends_at: DateTime<Utc>) -> Result<(), ContractError> {
    for (field, at) in [("starts_at", starts_at), ("ends_at", ends_at)] {
        quantus_crypto::instant::check(at)
            .map_err(|e| ContractError::Invalid(format!("{field}: {e}")))?;
    }
    if ends_at <= starts_at {
        return Err(ContractError::Invalid(
            "ends_at must be later than starts_at".into(),
        ));
    }
    Ok(())
}

impl Contract {
    fn illegal(&self, action: &'static str) -> ContractError {
        match self.status {
            ContractStatus::Absent => ContractError::NotFound,
            s => ContractError::IllegalTransition {
                from: s.name(),
                action,
            },
        }
    }

    fn decide(&self, command: ContractCommand) -> Result<Vec<ContractEvent>, ContractError> {
        use ContractCommand as C;
        use ContractEvent as E;
        use ContractStatus as S;
        let action = command.action();
        match (self.status, command) {
            (S::Absent, C::Draft(d)) => {
                Currency::parse(&d.currency).map_err(ContractError::Invalid)?;
                check_term(d.starts_at, d.ends_at)?;
                Ok(vec![E::ContractDrafted(ContractDrafted {
                    line_items: check_line_items(d.line_items)?,
                    ..d
                })])
            }
            (_, C::Draft(_)) => Err(ContractError::AlreadyExists),
            (S::Draft, C::Revise(r)) => {
                check_term(r.starts_at, r.ends_at)?;
                Ok(vec![E::ContractRevised(ContractRevised {
                    line_items: check_line_items(r.line_items)?,
                    ..r
                })])
            }
            (S::Draft, C::Send) => Ok(vec![E::ContractSent(ContractSent {})]),
            (S::Sent, C::Sign { signed_by }) => Ok(vec![E::ContractSigned(ContractSigned {
                signed_by: text("signed_by", &signed_by)?,
            })]),
            (S::Signed, C::Activate { now }) => {
                if self.ends_at.is_some_and(|end| now >= end) {
                    return Err(ContractError::Timing(
                        "the contract's term has already ended; amend a new one instead".into(),
                    ));
                }
                let licenses = self
                    .line_items
                    .iter()
                    .map(|item| PlannedLicense {
                        line_item_id: item.id.clone(),
                        license_id: license_id(&self.contract_id, &item.id, 0),
                        action: LicenseAction::Issue,
                    })
                    .collect();
                Ok(vec![E::ContractActivated(ContractActivated { licenses })])
            }
            (
                S::Active | S::Amended,
                C::Amend {
                    reason,
                    line_items,
                    ends_at,
                    now,
                },
            ) => {
                let reason = text("reason", &reason)?;
                let line_items = check_line_items(line_items)?;
                if ends_at <= now {
                    return Err(ContractError::Invalid(
                        "an amendment's ends_at must be in the future".into(),
                    ));
                }
                let amendment = self.amendments + 1;
                let licenses = self.plan_amendment(&line_items, ends_at, amendment);
                Ok(vec![E::ContractAmended(ContractAmended {
                    amendment,
                    reason,
                    line_items,
                    ends_at,
                    licenses,
                })])
            }
            (S::Signed | S::Active | S::Amended, C::Terminate { reason, now }) => {
                let licenses = self
                    .licenses
                    .iter()
                    .map(|(item, id)| PlannedLicense {
                        line_item_id: item.clone(),
                        license_id: id.clone(),
                        action: LicenseAction::Revoke,
                    })
                    .collect();
                Ok(vec![E::ContractTerminated(ContractTerminated {
                    reason: text("reason", &reason)?,
                    terminated_at: now,
                    licenses,
                })])
            }
            (S::Active | S::Amended, C::Expire { now }) => match self.ends_at {
                Some(end) if now >= end => Ok(vec![E::ContractExpired(ContractExpired {
                    expired_at: end,
                })]),
                Some(end) => Err(ContractError::Timing(format!(
                    "the contract runs until {}; it cannot expire before",
                    end.to_rfc3339()
                ))),
                None => Err(ContractError::NotFound),
            },
            (
                S::Absent,
                C::RecordLicenseFailure(_)
                | C::RecordLicensePending(_)
                | C::RecordLicenseCarriedOut(_),
            ) => Err(ContractError::NotFound),
            (_, C::RecordLicensePending(p)) => {
                let recordable = match self.license_steps.get(&p.line_item_id) {
                    Some(step) if step.is(&p.license_id, p.action) => match &step.state {
                        LicenseStepState::Planned => true,
                        LicenseStepState::Pending { attempt, .. } => p.attempt > *attempt,
                        LicenseStepState::Done | LicenseStepState::Failed { .. } => false,
                    },
                    // Superseded by a later plan, or never planned.
                    _ => false,
                };
                if !recordable {
                    return Ok(vec![]);
                }
                let reason: String = p.reason.chars().take(MAX_TEXT_CHARS * 5).collect();
                Ok(vec![E::ContractLicensePending(ContractLicensePending {
                    reason,
                    ..p
                })])
            }
            (_, C::RecordLicenseCarriedOut(c)) => match self.license_steps.get(&c.line_item_id) {
                Some(step)
                    if step.is(&c.license_id, c.action) && step.state != LicenseStepState::Done =>
                {
                    Ok(vec![E::ContractLicenseCarriedOut(c)])
                }
                _ => Ok(vec![]),
            },
            (_, C::RecordLicenseFailure(f)) => {
                let key = failure_key(&f.license_id, f.action);
                if self.license_failures.contains_key(&key) {
                    return Ok(vec![]);
                }
                let reason: String = f.reason.chars().take(MAX_TEXT_CHARS * 5).collect();
                Ok(vec![E::ContractLicenseFailed(ContractLicenseFailed {
                    reason,
                    ..f
                })])
            }
            _ => Err(self.illegal(action)),
        }
    }

    /// Renew what keeps its terms, re-issue what changed, revoke what was dropped.
    fn plan_amendment(
        &self,
        items: &[LineItem],
        ends_at: DateTime<Utc>,
        amendment: u32,
    ) -> Vec<PlannedLicense> {
        let mut plan = vec![];
        let old_end = self.ends_at.unwrap_or(ends_at);
        for item in items {
            let before = self.line_items.iter().find(|old| old.id == item.id);
            let current = self.licenses.get(&item.id);
            match (before, current) {
                (Some(old), Some(id)) if old.same_license_terms(item) && ends_at >= old_end => {
                    if ends_at > old_end {
                        plan.push(PlannedLicense {
                            line_item_id: item.id.clone(),
                            license_id: id.clone(),
                            action: LicenseAction::Renew,
                        });
                    }
                }
                _ => {
                    if let Some(id) = current {
                        plan.push(PlannedLicense {
                            line_item_id: item.id.clone(),
                            license_id: id.clone(),
                            action: LicenseAction::Revoke,
                        });
                    }
                    plan.push(PlannedLicense {
                        line_item_id: item.id.clone(),
                        license_id: license_id(&self.contract_id, &item.id, amendment),
                        action: LicenseAction::Issue,
                    });
                }
            }
        }
        for (item, id) in &self.licenses {
            if !items.iter().any(|i| &i.id == item) {
                plan.push(PlannedLicense {
                    line_item_id: item.clone(),
                    license_id: id.clone(),
                    action: LicenseAction::Revoke,
                });
            }
        }
        plan
    }

    fn follow(&mut self, plan: &[PlannedLicense]) {
        for step in plan {
            self.license_steps.insert(
                step.line_item_id.clone(),
                LicenseStep {
                    license_id: step.license_id.clone(),
                    action: step.action,
                    state: LicenseStepState::Planned,
                },
            );
            match step.action {
                LicenseAction::Issue | LicenseAction::Renew => {
                    self.licenses
                        .insert(step.line_item_id.clone(), step.license_id.clone());
                }
                LicenseAction::Revoke => {
                    if self.licenses.get(&step.line_item_id) == Some(&step.license_id) {
                        self.licenses.remove(&step.line_item_id);
                    }
                }
            }
        }
    }

    /// Whether the contract was in force at some time in `[from, to)`: what makes it billable
    /// for a period.
    pub fn in_force_during(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        let was_active = matches!(
            self.status,
            ContractStatus::Active
                | ContractStatus::Amended
                | ContractStatus::Terminated
                | ContractStatus::Expired
        );
        let end = match (self.ends_at, self.terminated_at) {
            (Some(e), Some(t)) => Some(e.min(t)),
            (e, _) => e,
        };
        was_active && self.starts_at.is_some_and(|s| s < to) && end.is_some_and(|e| e > from)
    }

    /// Whether the contract grants its line items at `at`.
    pub fn grants_at(&self, at: DateTime<Utc>) -> bool {
        self.status.in_force()
            && self.starts_at.is_some_and(|s| s <= at)
            && self.ends_at.is_some_and(|e| at < e)
    }
}

impl Aggregate for Contract {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = ContractCommand;
    type Event = ContractEvent;
    type Error = ContractError;
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
        use ContractEvent as E;
        use ContractStatus as S;
        match event {
            E::ContractDrafted(d) => {
                self.status = S::Draft;
                self.contract_id = d.contract_id;
                self.customer_id = d.customer_id;
                self.organization_id = d.organization_id;
                self.currency = d.currency;
                self.line_items = d.line_items;
                self.starts_at = Some(d.starts_at);
                self.ends_at = Some(d.ends_at);
            }
            E::ContractRevised(r) => {
                self.line_items = r.line_items;
                self.starts_at = Some(r.starts_at);
                self.ends_at = Some(r.ends_at);
            }
            E::ContractSent(_) => self.status = S::Sent,
            E::ContractSigned(s) => {
                self.status = S::Signed;
                self.signed_by = Some(s.signed_by);
            }
            E::ContractActivated(a) => {
                self.status = S::Active;
                self.follow(&a.licenses);
            }
            E::ContractAmended(a) => {
                self.status = S::Amended;
                self.amendments = a.amendment;
                self.line_items = a.line_items;
                self.ends_at = Some(a.ends_at);
                self.follow(&a.licenses);
            }
            E::ContractTerminated(t) => {
                self.status = S::Terminated;
                self.terminated_at = Some(t.terminated_at);
                self.follow(&t.licenses);
            }
            E::ContractExpired(_) => self.status = S::Expired,
            E::ContractLicenseFailed(f) => {
                if let Some(step) = self.license_steps.get_mut(&f.line_item_id) {
                    if step.is(&f.license_id, f.action) {
                        step.state = LicenseStepState::Failed {
                            reason: f.reason.clone(),
                        };
                    }
                }
                self.license_failures
                    .insert(failure_key(&f.license_id, f.action), f.reason);
            }
            E::ContractLicensePending(p) => {
                if let Some(step) = self.license_steps.get_mut(&p.line_item_id) {
                    if step.is(&p.license_id, p.action) {
                        step.state = LicenseStepState::Pending {
                            hold: p.hold,
                            reason: p.reason,
                            attempt: p.attempt,
                            retry_at: p.retry_at,
                        };
                    }
                }
            }
            E::ContractLicenseCarriedOut(c) => {
                if let Some(step) = self.license_steps.get_mut(&c.line_item_id) {
                    if step.is(&c.license_id, c.action) {
                        step.state = LicenseStepState::Done;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use ContractCommand as C;
    use ContractEvent as E;

    type Spec = TestFramework<Contract>;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn item(id: &str, features: &[&str]) -> LineItem {
        LineItem {
            id: id.into(),
            product: "qpu-access".into(),
            edition: "enterprise".into(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
            quotas: [(
                "jobs".to_owned(),
                Quota {
                    amount: 100,
                    enforcement: Enforcement::Hard,
                },
            )]
            .into(),
            limits: [("qubits".to_owned(), 64)].into(),
            quantity: 2,
            unit_price: 150_000,
            // Usage is priced once per contract: on item "a".
            usage_prices: if id == "a" {
                [("jobs".to_owned(), 250)].into()
            } else {
                BTreeMap::new()
            },
            max_activations: 3,
        }
    }

    fn drafted(items: Vec<LineItem>) -> E {
        E::ContractDrafted(ContractDrafted {
            contract_id: "c1".into(),
            customer_id: "org".into(),
            organization_id: "org".into(),
            currency: "EUR".into(),
            line_items: items,
            starts_at: t("2026-01-01T00:00:00Z"),
            ends_at: t("2027-01-01T00:00:00Z"),
        })
    }

    fn activated(items: &[&str]) -> E {
        E::ContractActivated(ContractActivated {
            licenses: items
                .iter()
                .map(|i| PlannedLicense {
                    line_item_id: (*i).into(),
                    license_id: license_id("c1", i, 0),
                    action: LicenseAction::Issue,
                })
                .collect(),
        })
    }

    fn active() -> Vec<E> {
        vec![
            drafted(vec![item("a", &["sim"]), item("b", &["qpu"])]),
            E::ContractSent(ContractSent {}),
            E::ContractSigned(ContractSigned {
                signed_by: "Ada".into(),
            }),
            activated(&["a", "b"]),
        ]
    }

    #[test]
    fn a_contract_goes_from_draft_to_active_and_activation_plans_one_licence_per_item() {
        Spec::with(())
            .given(active()[..3].to_vec())
            .when(C::Activate {
                now: t("2026-02-01T00:00:00Z"),
            })
            .then_expect_events(vec![activated(&["a", "b"])]);
    }

    #[test]
    fn illegal_transitions_name_the_state_and_the_action() {
        Spec::with(())
            .given(vec![drafted(vec![item("a", &[])])])
            .when(C::Activate {
                now: t("2026-02-01T00:00:00Z"),
            })
            .then_expect_error(ContractError::IllegalTransition {
                from: "draft",
                action: "activate",
            });
        Spec::with(())
            .given(active())
            .when(C::Sign {
                signed_by: "x".into(),
            })
            .then_expect_error(ContractError::IllegalTransition {
                from: "active",
                action: "sign",
            });
        Spec::with(())
            .given_no_previous_events()
            .when(C::Send)
            .then_expect_error(ContractError::NotFound);
    }

    #[test]
    fn an_amendment_renews_unchanged_items_reissues_changed_ones_and_revokes_dropped_ones() {
        let mut a_longer = item("a", &["sim"]);
        a_longer.quantity = 5; // price and quantity are not licence terms
        Spec::with(())
            .given(active())
            .when(C::Amend {
                reason: "upgrade".into(),
                line_items: vec![a_longer.clone(), item("c", &["qpu", "annealer"])],
                ends_at: t("2028-01-01T00:00:00Z"),
                now: t("2026-06-01T00:00:00Z"),
            })
            .then_expect_events(vec![E::ContractAmended(ContractAmended {
                amendment: 1,
                reason: "upgrade".into(),
                line_items: vec![a_longer, item("c", &["annealer", "qpu"])],
                ends_at: t("2028-01-01T00:00:00Z"),
                licenses: vec![
                    PlannedLicense {
                        line_item_id: "a".into(),
                        license_id: license_id("c1", "a", 0),
                        action: LicenseAction::Renew,
                    },
                    PlannedLicense {
                        line_item_id: "c".into(),
                        license_id: license_id("c1", "c", 1),
                        action: LicenseAction::Issue,
                    },
                    PlannedLicense {
                        line_item_id: "b".into(),
                        license_id: license_id("c1", "b", 0),
                        action: LicenseAction::Revoke,
                    },
                ],
            })]);
    }

    #[test]
    fn changed_features_reissue_the_licence() {
        Spec::with(())
            .given(active())
            .when(C::Amend {
                reason: "more".into(),
                line_items: vec![item("a", &["sim", "noise"]), item("b", &["qpu"])],
                ends_at: t("2027-01-01T00:00:00Z"),
                now: t("2026-06-01T00:00:00Z"),
            })
            .then_expect_events(vec![E::ContractAmended(ContractAmended {
                amendment: 1,
                reason: "more".into(),
                line_items: vec![item("a", &["noise", "sim"]), item("b", &["qpu"])],
                ends_at: t("2027-01-01T00:00:00Z"),
                licenses: vec![
                    PlannedLicense {
                        line_item_id: "a".into(),
                        license_id: license_id("c1", "a", 0),
                        action: LicenseAction::Revoke,
                    },
                    PlannedLicense {
                        line_item_id: "a".into(),
                        license_id: license_id("c1", "a", 1),
                        action: LicenseAction::Issue,
                    },
                ],
            })]);
    }

    #[test]
    fn termination_revokes_every_current_licence() {
        Spec::with(())
            .given(active())
            .when(C::Terminate {
                reason: "unpaid".into(),
                now: t("2026-03-01T00:00:00Z"),
            })
            .then_expect_events(vec![E::ContractTerminated(ContractTerminated {
                reason: "unpaid".into(),
                terminated_at: t("2026-03-01T00:00:00Z"),
                licenses: vec![
                    PlannedLicense {
                        line_item_id: "a".into(),
                        license_id: license_id("c1", "a", 0),
                        action: LicenseAction::Revoke,
                    },
                    PlannedLicense {
                        line_item_id: "b".into(),
                        license_id: license_id("c1", "b", 0),
                        action: LicenseAction::Revoke,
                    },
                ],
            })]);
    }

    #[test]
    fn a_contract_expires_only_at_its_end() {
        Spec::with(())
            .given(active())
            .when(C::Expire {
                now: t("2026-12-31T23:59:59Z"),
            })
            .then_expect_error(ContractError::Timing(
                "the contract runs until 2027-01-01T00:00:00+00:00; it cannot expire before".into(),
            ));
        Spec::with(())
            .given(active())
            .when(C::Expire {
                now: t("2027-01-02T00:00:00Z"),
            })
            .then_expect_events(vec![E::ContractExpired(ContractExpired {
                expired_at: t("2027-01-01T00:00:00Z"),
            })]);
    }

    #[test]
    fn line_items_are_validated() {
        let mut dup = vec![item("a", &[]), item("a", &[])];
        assert!(check_line_items(dup.clone()).is_err());
        dup[1].id = "b".into();
        dup[1].unit_price = -1;
        assert!(check_line_items(dup.clone()).is_err());
        dup[1].unit_price = MAX_LIMIT;
        assert!(
            check_line_items(dup.clone()).is_err(),
            "quantity × price overflows"
        );
        assert!(check_line_items(vec![]).is_err());
        let mut twice = item("b", &[]);
        twice.usage_prices = [("jobs".to_owned(), 1)].into();
        assert!(check_line_items(vec![item("a", &[]), twice]).is_err());
        let mut bad = item("Bad Id", &[]);
        assert!(check_line_items(vec![bad.clone()]).is_err());
        bad.id = "ok".into();
        bad.max_activations = 0;
        assert!(check_line_items(vec![bad]).is_err());
    }

    #[test]
    fn a_refused_licence_is_recorded_once() {
        let failure = ContractLicenseFailed {
            line_item_id: "a".into(),
            license_id: license_id("c1", "a", 0),
            action: LicenseAction::Issue,
            reason: "QuantumLock answered 409: organization org is suspended".into(),
        };
        Spec::with(())
            .given(active())
            .when(C::RecordLicenseFailure(failure.clone()))
            .then_expect_events(vec![E::ContractLicenseFailed(failure.clone())]);
        let mut history = active();
        history.push(E::ContractLicenseFailed(failure.clone()));
        Spec::with(())
            .given(history)
            .when(C::RecordLicenseFailure(failure))
            .then_expect_events(vec![]);
    }

    fn pending(attempt: u32) -> ContractLicensePending {
        ContractLicensePending {
            line_item_id: "a".into(),
            license_id: license_id("c1", "a", 0),
            action: LicenseAction::Issue,
            hold: LicenseHold::OrganizationSuspended,
            reason: "QuantumLock answered 409: organization org is suspended".into(),
            attempt,
            retry_at: t("2026-01-01T00:00:02Z"),
        }
    }

    fn carried_out(item: &str) -> ContractLicenseCarriedOut {
        ContractLicenseCarriedOut {
            line_item_id: item.into(),
            license_id: license_id("c1", item, 0),
            action: LicenseAction::Issue,
        }
    }

    #[test]
    fn a_licence_step_that_can_pass_is_pending_once_per_attempt() {
        Spec::with(())
            .given(active())
            .when(C::RecordLicensePending(pending(1)))
            .then_expect_events(vec![E::ContractLicensePending(pending(1))]);
        let mut history = active();
        history.push(E::ContractLicensePending(pending(1)));
        // The same attempt again (a crash, or two retries racing) records nothing.
        Spec::with(())
            .given(history.clone())
            .when(C::RecordLicensePending(pending(1)))
            .then_expect_events(vec![]);
        Spec::with(())
            .given(history)
            .when(C::RecordLicensePending(pending(2)))
            .then_expect_events(vec![E::ContractLicensePending(pending(2))]);
    }

    #[test]
    fn a_pending_licence_carried_out_is_done_and_stays_done() {
        let mut history = active();
        history.push(E::ContractLicensePending(pending(1)));
        Spec::with(())
            .given(history.clone())
            .when(C::RecordLicenseCarriedOut(carried_out("a")))
            .then_expect_events(vec![E::ContractLicenseCarriedOut(carried_out("a"))]);
        history.push(E::ContractLicenseCarriedOut(carried_out("a")));
        Spec::with(())
            .given(history.clone())
            .when(C::RecordLicenseCarriedOut(carried_out("a")))
            .then_expect_events(vec![]);
        // A late report of a failed attempt does not make a done step pending again.
        Spec::with(())
            .given(history.clone())
            .when(C::RecordLicensePending(pending(2)))
            .then_expect_events(vec![]);

        let mut contract = Contract::default();
        for e in history {
            contract.apply(e);
        }
        assert_eq!(contract.license_steps["a"].state, LicenseStepState::Done);
        assert_eq!(contract.license_steps["b"].state, LicenseStepState::Planned);
    }

    #[test]
    fn a_pending_step_superseded_by_a_later_plan_records_nothing() {
        let mut history = active();
        history.push(E::ContractLicensePending(pending(1)));
        history.push(E::ContractTerminated(ContractTerminated {
            reason: "ended".into(),
            terminated_at: t("2026-02-01T00:00:00Z"),
            licenses: vec![PlannedLicense {
                line_item_id: "a".into(),
                license_id: license_id("c1", "a", 0),
                action: LicenseAction::Revoke,
            }],
        }));
        Spec::with(())
            .given(history.clone())
            .when(C::RecordLicensePending(pending(2)))
            .then_expect_events(vec![]);
        Spec::with(())
            .given(history)
            .when(C::RecordLicenseCarriedOut(carried_out("a")))
            .then_expect_events(vec![]);
        Spec::with(())
            .given(vec![])
            .when(C::RecordLicensePending(pending(1)))
            .then_expect_error(ContractError::NotFound);
    }

    #[test]
    fn a_pending_contract_shows_why_and_when_and_a_refusal_shows_failed() {
        let mut contract = Contract::default();
        for e in active() {
            contract.apply(e);
        }
        contract.apply(E::ContractLicensePending(pending(3)));
        assert_eq!(
            contract.license_steps["a"].state,
            LicenseStepState::Pending {
                hold: LicenseHold::OrganizationSuspended,
                reason: pending(3).reason,
                attempt: 3,
                retry_at: t("2026-01-01T00:00:02Z"),
            }
        );
        contract.apply(E::ContractLicenseFailed(ContractLicenseFailed {
            line_item_id: "b".into(),
            license_id: license_id("c1", "b", 0),
            action: LicenseAction::Issue,
            reason: "QuantumLock answered 422: bad terms".into(),
        }));
        assert_eq!(
            contract.license_steps["b"].state,
            LicenseStepState::Failed {
                reason: "QuantumLock answered 422: bad terms".into()
            }
        );
    }

    #[test]
    fn retries_back_off_exponentially_within_bounds_and_jitter() {
        use std::time::Duration;
        let policy = RetryPolicy {
            first: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        assert_eq!(policy.delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(policy.delay(2, 1.0), Duration::from_secs(4));
        assert_eq!(policy.delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(policy.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(policy.delay(6, 1.0), Duration::from_secs(60));
        assert_eq!(policy.delay(u32::MAX, 1.0), Duration::from_secs(60));
        assert_eq!(policy.delay(u32::MAX, f64::NAN), Duration::from_secs(30));
        assert_eq!(policy.delay(1, 7.0), Duration::from_secs(2));
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(policy.retry_at(2, now, 0.5), t("2026-01-01T00:00:03Z"));
        assert_eq!(
            policy.retry_at(1, DateTime::<Utc>::MAX_UTC, 1.0),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn a_line_item_must_make_a_licence_quantumlock_accepts() {
        let mut long = item("a", &[]);
        long.product = "p".repeat(150);
        let err = check_line_items(vec![long]).unwrap_err();
        assert!(err.to_string().contains("as a licence"), "{err}");
    }

    #[test]
    fn licence_ids_are_deterministic_uuids() {
        assert_eq!(license_id("c1", "a", 0), license_id("c1", "a", 0));
        assert_ne!(license_id("c1", "a", 0), license_id("c1", "a", 1));
        assert!(uuid::Uuid::parse_str(&license_id("c1", "a", 0)).is_ok());
    }
}
