//! License: what an organization may run, for how long, on how many machines.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use quantus_crypto::instant;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

/// Largest limit value: exact in every JSON implementation (see docs/event-log.md).
pub const MAX_LIMIT: i64 = (1 << 53) - 1;
pub const MAX_GRACE_SECONDS: u64 = 365 * 86400;

/// The terms of a licence, as issued or renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseIssued {
    pub organization_id: String,
    pub product: String,
    pub edition: String,
    pub features: Vec<String>,
    pub limits: BTreeMap<String, i64>,
    #[schemars(with = "String")]
    pub not_before: DateTime<Utc>,
    #[schemars(with = "String")]
    pub expires_at: DateTime<Utc>,
    pub grace_period_seconds: u64,
    pub max_activations: u32,
    pub machine_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseCommand {
    Issue(LicenseIssued),
    Activate {
        fingerprint: String,
        now: DateTime<Utc>,
    },
    Deactivate {
        fingerprint: String,
    },
    Suspend {
        reason: String,
    },
    Reinstate,
    Renew {
        expires_at: DateTime<Utc>,
    },
    Revoke {
        reason: String,
        now: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseActivated {
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseDeactivated {
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseSuspended {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseReinstated {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseRenewed {
    #[schemars(with = "String")]
    pub expires_at: DateTime<Utc>,
    #[schemars(with = "String")]
    pub previous_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseRevoked {
    pub reason: String,
    #[schemars(with = "String")]
    pub revoked_at: DateTime<Utc>,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum LicenseEvent for "License" {
        LicenseIssued(LicenseIssued),
        LicenseActivated(LicenseActivated),
        LicenseDeactivated(LicenseDeactivated),
        LicenseSuspended(LicenseSuspended),
        LicenseReinstated(LicenseReinstated),
        LicenseRenewed(LicenseRenewed),
        LicenseRevoked(LicenseRevoked),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("{0}")]
    Invalid(String),
    #[error("licence already exists")]
    AlreadyIssued,
    #[error("licence not found")]
    NotFound,
    #[error("licence is revoked")]
    Revoked,
    #[error("licence is suspended")]
    Suspended,
    #[error("licence is not suspended")]
    NotSuspended,
    #[error("licence is not valid before {0}")]
    NotYetValid(DateTime<Utc>),
    #[error("licence expired (grace period ended {0})")]
    Expired(DateTime<Utc>),
    #[error("licence is bound to another machine")]
    WrongMachine,
    #[error("all {0} activations are in use")]
    ActivationsExhausted(u32),
    #[error("machine {0} is not activated")]
    NotActivated(String),
    #[error("a renewal must move the expiry later than {0}")]
    RenewalNotLater(DateTime<Utc>),
}

impl LicenseError {
    pub fn is_validation(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LicenseStatus {
    #[default]
    Absent,
    Active,
    Suspended,
    Revoked,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    pub status: LicenseStatus,
    pub terms: Option<LicenseIssued>,
    pub activations: BTreeSet<String>,
}

fn text(field: &str, value: &str, max: usize) -> Result<String, LicenseError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(LicenseError::Invalid(format!(
            "{field} must be 1 to {max} printable characters"
        )));
    }
    Ok(v.to_owned())
}

/// Checks and normalises the terms of a new licence.
pub fn validate_terms(t: LicenseIssued) -> Result<LicenseIssued, LicenseError> {
    let mut features = BTreeSet::new();
    for f in &t.features {
        features.insert(text("feature", f, 100)?);
    }
    let mut limits = BTreeMap::new();
    for (name, value) in &t.limits {
        if !(0..=MAX_LIMIT).contains(value) {
            return Err(LicenseError::Invalid(format!(
                "limit {name} must be between 0 and {MAX_LIMIT}"
            )));
        }
        limits.insert(text("limit name", name, 100)?, *value);
    }
    for (field, at) in [("not_before", t.not_before), ("expires_at", t.expires_at)] {
        instant::check(at).map_err(|e| LicenseError::Invalid(format!("{field}: {e}")))?;
    }
    if t.expires_at <= t.not_before {
        return Err(LicenseError::Invalid(
            "expires_at must be after not_before".into(),
        ));
    }
    if t.grace_period_seconds > MAX_GRACE_SECONDS {
        return Err(LicenseError::Invalid(
            "grace period must be at most 365 days".into(),
        ));
    }
    if instant::add_seconds(t.expires_at, t.grace_period_seconds).is_none() {
        return Err(LicenseError::Invalid(
            "the grace period must end by 9999-12-31T23:59:59Z".into(),
        ));
    }
    if !(1..=10_000).contains(&t.max_activations) {
        return Err(LicenseError::Invalid(
            "max_activations must be between 1 and 10000".into(),
        ));
    }
    Ok(LicenseIssued {
        organization_id: text("organization_id", &t.organization_id, 100)?,
        product: text("product", &t.product, 100)?,
        edition: text("edition", &t.edition, 100)?,
        features: features.into_iter().collect(),
        limits,
        machine_fingerprint: t
            .machine_fingerprint
            .as_deref()
            .map(|f| text("machine_fingerprint", f, 256))
            .transpose()?,
        ..t
    })
}

impl License {
    fn terms(&self) -> Result<&LicenseIssued, LicenseError> {
        self.terms.as_ref().ok_or(LicenseError::NotFound)
    }

    /// The end of the grace period.
    pub fn usable_until(&self) -> Option<DateTime<Utc>> {
        self.terms
            .as_ref()
            // Terms are checked when issued, but a log written before that check may hold a
            // sum past the range: such a licence simply never ends its grace period.
            .map(|t| {
                instant::add_seconds(t.expires_at, t.grace_period_seconds)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            })
    }

    fn decide(&self, command: LicenseCommand) -> Result<Vec<LicenseEvent>, LicenseError> {
        use LicenseCommand as C;
        use LicenseEvent as E;
        use LicenseStatus as S;
        if let C::Issue(terms) = command {
            return match self.status {
                S::Absent => Ok(vec![E::LicenseIssued(validate_terms(terms)?)]),
                _ => Err(LicenseError::AlreadyIssued),
            };
        }
        let terms = self.terms()?;
        if self.status == S::Revoked {
            return Err(LicenseError::Revoked);
        }
        match command {
            C::Issue(_) => unreachable!("handled above"),
            C::Activate { fingerprint, now } => {
                let fingerprint = text("fingerprint", &fingerprint, 256)?;
                if self.status == S::Suspended {
                    return Err(LicenseError::Suspended);
                }
                if now < terms.not_before {
                    return Err(LicenseError::NotYetValid(terms.not_before));
                }
                let until = self.usable_until().unwrap_or(terms.expires_at);
                if now >= until {
                    return Err(LicenseError::Expired(until));
                }
                if terms
                    .machine_fingerprint
                    .as_ref()
                    .is_some_and(|bound| *bound != fingerprint)
                {
                    return Err(LicenseError::WrongMachine);
                }
                if self.activations.contains(&fingerprint) {
                    return Ok(vec![]); // Activating the same machine twice uses one seat.
                }
                if self.activations.len() >= terms.max_activations as usize {
                    return Err(LicenseError::ActivationsExhausted(terms.max_activations));
                }
                Ok(vec![E::LicenseActivated(LicenseActivated { fingerprint })])
            }
            C::Deactivate { fingerprint } => {
                let fingerprint = fingerprint.trim().to_owned();
                if !self.activations.contains(&fingerprint) {
                    return Err(LicenseError::NotActivated(fingerprint));
                }
                Ok(vec![E::LicenseDeactivated(LicenseDeactivated {
                    fingerprint,
                })])
            }
            C::Suspend { reason } => match self.status {
                S::Suspended => Err(LicenseError::Suspended),
                _ => Ok(vec![E::LicenseSuspended(LicenseSuspended {
                    reason: text("reason", &reason, 500)?,
                })]),
            },
            C::Reinstate => match self.status {
                S::Suspended => Ok(vec![E::LicenseReinstated(LicenseReinstated {})]),
                _ => Err(LicenseError::NotSuspended),
            },
            C::Renew { expires_at } => {
                instant::check(expires_at)
                    .map_err(|e| LicenseError::Invalid(format!("expires_at: {e}")))?;
                if instant::add_seconds(expires_at, terms.grace_period_seconds).is_none() {
                    return Err(LicenseError::Invalid(
                        "the grace period must end by 9999-12-31T23:59:59Z".into(),
                    ));
                }
                if expires_at <= terms.expires_at {
                    return Err(LicenseError::RenewalNotLater(terms.expires_at));
                }
                Ok(vec![E::LicenseRenewed(LicenseRenewed {
                    expires_at,
                    previous_expires_at: terms.expires_at,
                })])
            }
            C::Revoke { reason, now } => Ok(vec![E::LicenseRevoked(LicenseRevoked {
                reason: text("reason", &reason, 500)?,
                revoked_at: now,
            })]),
        }
    }
}

impl Aggregate for License {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = LicenseCommand;
    type Event = LicenseEvent;
    type Error = LicenseError;
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
            LicenseEvent::LicenseIssued(terms) => {
                self.status = LicenseStatus::Active;
                self.terms = Some(terms);
            }
            LicenseEvent::LicenseActivated(e) => {
                self.activations.insert(e.fingerprint);
            }
            LicenseEvent::LicenseDeactivated(e) => {
                self.activations.remove(&e.fingerprint);
            }
            LicenseEvent::LicenseSuspended(_) => self.status = LicenseStatus::Suspended,
            LicenseEvent::LicenseReinstated(_) => self.status = LicenseStatus::Active,
            LicenseEvent::LicenseRenewed(e) => {
                if let Some(t) = &mut self.terms {
                    t.expires_at = e.expires_at;
                }
            }
            LicenseEvent::LicenseRevoked(_) => self.status = LicenseStatus::Revoked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use LicenseCommand as C;
    use LicenseEvent as E;

    type Spec = TestFramework<License>;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Year 262,142: chrono holds it, RFC 3339 cannot write it.
    fn beyond_rfc3339() -> DateTime<Utc> {
        "+262142-12-31T23:59:59Z".parse().unwrap()
    }

    fn terms(max: u32, machine: Option<&str>) -> LicenseIssued {
        LicenseIssued {
            organization_id: "org-1".into(),
            product: "qpu-scheduler".into(),
            edition: "enterprise".into(),
            features: vec!["sso".into(), "evidence".into()],
            limits: [("qpu_hours".to_owned(), 1000)].into(),
            not_before: t("2026-01-01T00:00:00Z"),
            expires_at: t("2027-01-01T00:00:00Z"),
            grace_period_seconds: 86400,
            max_activations: max,
            machine_fingerprint: machine.map(Into::into),
        }
    }

    fn issued(max: u32) -> E {
        let mut t = terms(max, None);
        t.features.sort();
        E::LicenseIssued(t)
    }

    fn activate(fp: &str, now: &str) -> C {
        C::Activate {
            fingerprint: fp.into(),
            now: t(now),
        }
    }

    #[test]
    fn instants_past_the_accepted_range_are_refused_at_issue_and_renewal() {
        let mut far = terms(2, None);
        far.expires_at = beyond_rfc3339();
        Spec::with(())
            .given_no_previous_events()
            .when(C::Issue(far))
            .then_expect_error_message("expires_at: +262142-12-31T23:59:59+00:00 is out of range: instants must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z");
        // The last second is fine on its own, but not with a grace period that ends later.
        let mut edge = terms(2, None);
        edge.expires_at = t("9999-12-31T23:59:59Z");
        Spec::with(())
            .given_no_previous_events()
            .when(C::Issue(edge.clone()))
            .then_expect_error(LicenseError::Invalid(
                "the grace period must end by 9999-12-31T23:59:59Z".into(),
            ));
        edge.grace_period_seconds = 0;
        let mut expected = edge.clone();
        expected.features.sort();
        Spec::with(())
            .given_no_previous_events()
            .when(C::Issue(edge))
            .then_expect_events(vec![E::LicenseIssued(expected)]);
        Spec::with(())
            .given(vec![issued(1)])
            .when(C::Renew {
                expires_at: beyond_rfc3339(),
            })
            .then_expect_error_message("expires_at: +262142-12-31T23:59:59+00:00 is out of range: instants must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z");
    }

    #[test]
    fn a_licence_stored_with_an_overflowing_grace_period_still_answers() {
        // Written before issue-time checks existed: loading and activating must not panic.
        let mut far = terms(2, None);
        far.expires_at = beyond_rfc3339();
        far.grace_period_seconds = 365 * 86400;
        let mut license = License::default();
        license.apply(E::LicenseIssued(far));
        assert_eq!(license.usable_until(), Some(DateTime::<Utc>::MAX_UTC));
        Spec::with(())
            .given(vec![E::LicenseIssued({
                let mut t = terms(2, None);
                t.expires_at = beyond_rfc3339();
                t.grace_period_seconds = 365 * 86400;
                t
            })])
            .when(activate("m1", "2026-06-01T00:00:00Z"))
            .then_expect_events(vec![E::LicenseActivated(LicenseActivated {
                fingerprint: "m1".into(),
            })]);
    }

    #[test]
    fn issuing_normalises_and_validates_the_terms() {
        Spec::with(())
            .given_no_previous_events()
            .when(C::Issue(terms(2, None)))
            .then_expect_events(vec![issued(2)]);
        let mut bad = terms(2, None);
        bad.expires_at = bad.not_before;
        Spec::with(())
            .given_no_previous_events()
            .when(C::Issue(bad))
            .then_expect_error(LicenseError::Invalid(
                "expires_at must be after not_before".into(),
            ));
        let mut bad = terms(0, None);
        bad.max_activations = 0;
        assert!(Spec::with(())
            .given_no_previous_events()
            .when(C::Issue(bad))
            .inspect_result()
            .is_err());
        let mut bad = terms(1, None);
        bad.limits.insert("x".into(), -1);
        assert!(Spec::with(())
            .given_no_previous_events()
            .when(C::Issue(bad))
            .inspect_result()
            .is_err());
        Spec::with(())
            .given(vec![issued(1)])
            .when(C::Issue(terms(1, None)))
            .then_expect_error(LicenseError::AlreadyIssued);
    }

    #[test]
    fn activations_are_counted_per_machine_and_capped() {
        let now = "2026-06-01T00:00:00Z";
        Spec::with(())
            .given(vec![issued(1)])
            .when(activate("fp-1", now))
            .then_expect_events(vec![E::LicenseActivated(LicenseActivated {
                fingerprint: "fp-1".into(),
            })]);
        let one = vec![
            issued(1),
            E::LicenseActivated(LicenseActivated {
                fingerprint: "fp-1".into(),
            }),
        ];
        Spec::with(())
            .given(one.clone())
            .when(activate("fp-1", now))
            .then_expect_events(vec![]);
        Spec::with(())
            .given(one.clone())
            .when(activate("fp-2", now))
            .then_expect_error(LicenseError::ActivationsExhausted(1));
        Spec::with(())
            .given(one)
            .when(C::Deactivate {
                fingerprint: "fp-1".into(),
            })
            .then_expect_events(vec![E::LicenseDeactivated(LicenseDeactivated {
                fingerprint: "fp-1".into(),
            })]);
        Spec::with(())
            .given(vec![issued(1)])
            .when(C::Deactivate {
                fingerprint: "fp-9".into(),
            })
            .then_expect_error(LicenseError::NotActivated("fp-9".into()));
    }

    #[test]
    fn activation_respects_time_machine_and_status() {
        Spec::with(())
            .given(vec![issued(3)])
            .when(activate("fp", "2025-12-31T00:00:00Z"))
            .then_expect_error(LicenseError::NotYetValid(t("2026-01-01T00:00:00Z")));
        // Within the grace period it still activates; after it, not.
        assert!(Spec::with(())
            .given(vec![issued(3)])
            .when(activate("fp", "2027-01-01T12:00:00Z"))
            .inspect_result()
            .is_ok());
        Spec::with(())
            .given(vec![issued(3)])
            .when(activate("fp", "2027-01-02T00:00:00Z"))
            .then_expect_error(LicenseError::Expired(t("2027-01-02T00:00:00Z")));
        Spec::with(())
            .given(vec![E::LicenseIssued(terms(3, Some("fp-bound")))])
            .when(activate("fp-other", "2026-06-01T00:00:00Z"))
            .then_expect_error(LicenseError::WrongMachine);
        let suspended = vec![
            issued(3),
            E::LicenseSuspended(LicenseSuspended {
                reason: "unpaid".into(),
            }),
        ];
        Spec::with(())
            .given(suspended.clone())
            .when(activate("fp", "2026-06-01T00:00:00Z"))
            .then_expect_error(LicenseError::Suspended);
        Spec::with(())
            .given(suspended)
            .when(C::Reinstate)
            .then_expect_events(vec![E::LicenseReinstated(LicenseReinstated {})]);
    }

    #[test]
    fn revocation_is_final_and_renewal_only_extends() {
        let revoked = vec![
            issued(1),
            E::LicenseRevoked(LicenseRevoked {
                reason: "terminated".into(),
                revoked_at: t("2026-06-01T00:00:00Z"),
            }),
        ];
        for command in [
            activate("fp", "2026-06-02T00:00:00Z"),
            C::Reinstate,
            C::Renew {
                expires_at: t("2030-01-01T00:00:00Z"),
            },
            C::Revoke {
                reason: "again".into(),
                now: t("2026-06-03T00:00:00Z"),
            },
        ] {
            Spec::with(())
                .given(revoked.clone())
                .when(command)
                .then_expect_error(LicenseError::Revoked);
        }
        Spec::with(())
            .given(vec![issued(1)])
            .when(C::Renew {
                expires_at: t("2026-12-01T00:00:00Z"),
            })
            .then_expect_error(LicenseError::RenewalNotLater(t("2027-01-01T00:00:00Z")));
        Spec::with(())
            .given(vec![issued(1)])
            .when(C::Renew {
                expires_at: t("2028-01-01T00:00:00Z"),
            })
            .then_expect_events(vec![E::LicenseRenewed(LicenseRenewed {
                expires_at: t("2028-01-01T00:00:00Z"),
                previous_expires_at: t("2027-01-01T00:00:00Z"),
            })]);
        Spec::with(())
            .given_no_previous_events()
            .when(C::Reinstate)
            .then_expect_error(LicenseError::NotFound);
    }
}
