//! RetentionPolicy: how long an organization keeps job artifacts, per job class, and whether
//! a legal hold stops all deletion. Manifests and the log are kept forever; only artifact bytes
//! ever go.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

/// The rule that applies to every class without its own.
pub const ANY_CLASS: &str = "*";
/// Longest retention accepted (100 years): "forever" is simply no rule.
pub const MAX_DAYS: u32 = 36_500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleSet {
    pub organization_id: String,
    /// A job class, or `*` for every class without a rule of its own.
    pub job_class: String,
    /// Artifacts are deleted this many days after they were stored.
    pub keep_artifacts_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegalHoldPlaced {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegalHoldReleased {}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum RetentionEvent for "RetentionPolicy" {
        RetentionRuleSet(RetentionRuleSet),
        LegalHoldPlaced(LegalHoldPlaced),
        LegalHoldReleased(LegalHoldReleased),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionCommand {
    SetRule(RetentionRuleSet),
    PlaceHold { reason: String },
    ReleaseHold,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("keep_artifacts_days must be at most {MAX_DAYS}")]
    TooLong,
    #[error("job_class must be 1 to 200 characters")]
    BadClass,
    #[error("a legal hold is already in place")]
    AlreadyHeld,
    #[error("there is no legal hold")]
    NotHeld,
}

impl RetentionError {
    pub fn is_validation(&self) -> bool {
        matches!(self, Self::TooLong | Self::BadClass)
    }
}

/// The aggregate id of an organization's policy.
pub fn policy_id(organization_id: &str) -> String {
    format!("retention-{organization_id}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub rules: BTreeMap<String, u32>,
    pub legal_hold: Option<String>,
}

impl RetentionPolicy {
    /// How many days artifacts of `job_class` are kept; `None`: forever.
    pub fn keep_days(&self, job_class: &str) -> Option<u32> {
        self.rules
            .get(job_class)
            .or_else(|| self.rules.get(ANY_CLASS))
            .copied()
    }

    /// The policy's name for an artifact-purged event.
    pub fn describe(&self, job_class: &str) -> String {
        match self.rules.get(job_class) {
            Some(d) => format!("{job_class}: keep artifacts {d} days"),
            None => format!(
                "*: keep artifacts {} days",
                self.keep_days(job_class).unwrap_or(0)
            ),
        }
    }

    fn decide(&self, command: RetentionCommand) -> Result<Vec<RetentionEvent>, RetentionError> {
        let event = match command {
            RetentionCommand::SetRule(r) => {
                if r.keep_artifacts_days > MAX_DAYS {
                    return Err(RetentionError::TooLong);
                }
                let class = r.job_class.trim();
                if class.is_empty() || class.chars().count() > 200 {
                    return Err(RetentionError::BadClass);
                }
                if self.rules.get(class) == Some(&r.keep_artifacts_days) {
                    return Ok(vec![]);
                }
                RetentionEvent::RetentionRuleSet(RetentionRuleSet {
                    job_class: class.to_owned(),
                    ..r
                })
            }
            RetentionCommand::PlaceHold { reason } => {
                if self.legal_hold.is_some() {
                    return Err(RetentionError::AlreadyHeld);
                }
                RetentionEvent::LegalHoldPlaced(LegalHoldPlaced {
                    reason: reason.trim().chars().take(500).collect(),
                })
            }
            RetentionCommand::ReleaseHold => {
                if self.legal_hold.is_none() {
                    return Err(RetentionError::NotHeld);
                }
                RetentionEvent::LegalHoldReleased(LegalHoldReleased {})
            }
        };
        Ok(vec![event])
    }
}

impl Aggregate for RetentionPolicy {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = RetentionCommand;
    type Event = RetentionEvent;
    type Error = RetentionError;
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
            RetentionEvent::RetentionRuleSet(r) => {
                self.rules.insert(r.job_class, r.keep_artifacts_days);
            }
            RetentionEvent::LegalHoldPlaced(h) => self.legal_hold = Some(h.reason),
            RetentionEvent::LegalHoldReleased(_) => self.legal_hold = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn rule(class: &str, days: u32) -> RetentionRuleSet {
        RetentionRuleSet {
            organization_id: "org".into(),
            job_class: class.into(),
            keep_artifacts_days: days,
        }
    }

    #[test]
    fn a_class_rule_wins_over_the_catch_all_and_no_rule_keeps_forever() {
        let mut p = RetentionPolicy::default();
        assert_eq!(p.keep_days("calibration"), None);
        p.apply(RetentionEvent::RetentionRuleSet(rule("*", 90)));
        p.apply(RetentionEvent::RetentionRuleSet(rule("calibration", 7)));
        assert_eq!(p.keep_days("calibration"), Some(7));
        assert_eq!(p.keep_days("production"), Some(90));
    }

    #[test]
    fn holds_are_placed_and_released_once() {
        TestFramework::<RetentionPolicy>::with(())
            .given(vec![RetentionEvent::LegalHoldPlaced(LegalHoldPlaced {
                reason: "litigation".into(),
            })])
            .when(RetentionCommand::PlaceHold {
                reason: "again".into(),
            })
            .then_expect_error(RetentionError::AlreadyHeld);
        TestFramework::<RetentionPolicy>::with(())
            .given_no_previous_events()
            .when(RetentionCommand::SetRule(rule("*", MAX_DAYS + 1)))
            .then_expect_error(RetentionError::TooLong);
    }
}
