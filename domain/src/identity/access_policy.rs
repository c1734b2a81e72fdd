//! Conditional access: an organization's ordered rules, changed by events, and the pure
//! evaluation of a sign-in or a token request against them.
//!
//! The first rule (lowest priority number, then name) whose every condition holds decides:
//! allow, require a step-up (a second factor, or a phishing-resistant passkey), or block. No
//! matching rule allows. One `AccessPolicy` aggregate per organization (id = the
//! organization's id).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Role;

use crate::decision::record_decision;

pub const MAX_RULES: usize = 100;

/// How strongly a person authenticated, from weakest to strongest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    /// A password alone (or a service principal's secret).
    Password,
    /// A password and a second factor (TOTP or a recovery code).
    Mfa,
    /// A passkey (WebAuthn, user verification): phishing-resistant.
    Passkey,
}

impl Strength {
    /// From the `amr` values of a session (RFC 8176).
    pub fn of_amr(amr: &[String]) -> Self {
        if amr.iter().any(|m| m == "hwk" || m == "swk") {
            Strength::Passkey
        } else if amr.iter().any(|m| m == "mfa") {
            Strength::Mfa
        } else {
            Strength::Password
        }
    }

    /// The `acr` value a token carries for this strength.
    pub fn acr(self) -> &'static str {
        match self {
            Strength::Password => ACR_PASSWORD,
            Strength::Mfa => ACR_MFA,
            Strength::Passkey => ACR_PHISHING_RESISTANT,
        }
    }

    /// The strength an `acr` value asks for (unknown values: none).
    pub fn of_acr(acr: &str) -> Option<Self> {
        match acr {
            ACR_PASSWORD => Some(Strength::Password),
            ACR_MFA => Some(Strength::Mfa),
            ACR_PHISHING_RESISTANT => Some(Strength::Passkey),
            _ => None,
        }
    }
}

pub const ACR_PASSWORD: &str = "urn:quantus:acr:password";
pub const ACR_MFA: &str = "urn:quantus:acr:mfa";
pub const ACR_PHISHING_RESISTANT: &str = "urn:quantus:acr:phishing-resistant";

/// A daily time window in UTC on some weekdays (`from` inclusive, `to` exclusive, minutes
/// since midnight; `from > to` wraps past midnight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// ISO weekdays 1 (Monday) to 7 (Sunday); empty: every day.
    #[serde(default)]
    pub weekdays: BTreeSet<u8>,
    pub from_minute: u16,
    pub to_minute: u16,
}

impl TimeWindow {
    fn contains(&self, at: DateTime<Utc>) -> bool {
        let day = at.weekday().number_from_monday() as u8;
        let minute = (at.hour() * 60 + at.minute()) as u16;
        let in_day = self.weekdays.is_empty() || self.weekdays.contains(&day);
        let in_time = if self.from_minute <= self.to_minute {
            (self.from_minute..self.to_minute).contains(&minute)
        } else {
            minute >= self.from_minute || minute < self.to_minute
        };
        in_day && in_time
    }
}

/// Conditions of a rule; every one given must hold (none given: the rule always matches).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// The source address is in one of these CIDR ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_in: Option<Vec<String>>,
    /// The source address is in none of these CIDR ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_not_in: Option<Vec<String>>,
    /// The person or principal holds one of these roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<BTreeSet<Role>>,
    /// The person is in one of these groups (ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<BTreeSet<String>>,
    /// The client application is one of these (client ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<BTreeSet<String>>,
    /// The time is inside this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<TimeWindow>,
    /// The time is outside this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<TimeWindow>,
    /// The authentication so far is weaker than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength_below: Option<Strength>,
    /// The person never signed in from this address before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_ip: Option<bool>,
    /// At least this many failed sign-ins of the account in the last 15 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_failures_at_least: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    /// A second factor is needed (TOTP or a passkey).
    RequireMfa,
    /// A passkey is needed.
    RequirePasskey,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// 1 to 64 of a-z, 0-9, '-', '_'; unique in the organization.
    pub name: String,
    /// Lower first.
    pub priority: u32,
    #[serde(default)]
    pub conditions: Conditions,
    pub outcome: Outcome,
}

/// What is known about a sign-in or token request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessFacts {
    pub ip: Option<IpAddr>,
    pub roles: BTreeSet<Role>,
    pub groups: BTreeSet<String>,
    pub client_id: Option<String>,
    pub at: DateTime<Utc>,
    pub strength: Strength,
    pub new_ip: bool,
    pub recent_failures: u32,
}

/// The verdict, the rule that gave it (none: no rule matched), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDecision {
    pub outcome: Outcome,
    pub policy: Option<String>,
    pub reason: String,
}

impl AccessDecision {
    /// Whether the request may go on with the strength it has.
    pub fn satisfied_by(&self, strength: Strength) -> bool {
        match self.outcome {
            Outcome::Allow => true,
            Outcome::RequireMfa => strength >= Strength::Mfa,
            Outcome::RequirePasskey => strength >= Strength::Passkey,
            Outcome::Block => false,
        }
    }
}

fn in_ranges(ip: Option<IpAddr>, ranges: &[String]) -> bool {
    ip.is_some_and(|ip| {
        ranges
            .iter()
            .filter_map(|r| r.parse::<ipnet::IpNet>().ok())
            .any(|net| net.contains(&ip))
    })
}

impl Conditions {
    /// Whether every given condition holds; when it does, a description of what matched.
    pub fn matches(&self, f: &AccessFacts) -> Option<Vec<String>> {
        let mut why = vec![];
        if let Some(r) = &self.ip_in {
            if !in_ranges(f.ip, r) {
                return None;
            }
            why.push(format!("source address in {}", r.join(", ")));
        }
        if let Some(r) = &self.ip_not_in {
            if f.ip.is_none() || in_ranges(f.ip, r) {
                return None;
            }
            why.push(format!("source address outside {}", r.join(", ")));
        }
        if let Some(roles) = &self.roles {
            if roles.is_disjoint(&f.roles) {
                return None;
            }
            why.push("role".into());
        }
        if let Some(groups) = &self.groups {
            if groups.is_disjoint(&f.groups) {
                return None;
            }
            why.push("group".into());
        }
        if let Some(clients) = &self.clients {
            if !f.client_id.as_ref().is_some_and(|c| clients.contains(c)) {
                return None;
            }
            why.push("client application".into());
        }
        if let Some(w) = &self.within {
            if !w.contains(f.at) {
                return None;
            }
            why.push("inside the time window".into());
        }
        if let Some(w) = &self.outside {
            if w.contains(f.at) {
                return None;
            }
            why.push("outside the time window".into());
        }
        if let Some(s) = self.strength_below {
            if f.strength >= s {
                return None;
            }
            why.push(format!("authentication weaker than {s:?}").to_lowercase());
        }
        if let Some(n) = self.new_ip {
            if f.new_ip != n {
                return None;
            }
            why.push(
                if n {
                    "a new address"
                } else {
                    "a known address"
                }
                .into(),
            );
        }
        if let Some(n) = self.recent_failures_at_least {
            if f.recent_failures < n {
                return None;
            }
            why.push(format!("{} recent failed sign-ins", f.recent_failures));
        }
        Some(why)
    }
}

/// Evaluates `facts` against `rules` (any order; sorted here).
pub fn evaluate<'a>(
    rules: impl IntoIterator<Item = &'a AccessRule>,
    facts: &AccessFacts,
) -> AccessDecision {
    let mut rules: Vec<&AccessRule> = rules.into_iter().collect();
    rules.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    for rule in rules {
        if let Some(why) = rule.conditions.matches(facts) {
            let reason = if why.is_empty() {
                format!("rule {} applies to every request", rule.name)
            } else {
                format!("rule {} matched: {}", rule.name, why.join("; "))
            };
            return AccessDecision {
                outcome: rule.outcome,
                policy: Some(rule.name.clone()),
                reason,
            };
        }
    }
    AccessDecision {
        outcome: Outcome::Allow,
        policy: None,
        reason: "no rule matched".into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleSet {
    pub rule: AccessRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleRemoved {
    pub name: String,
}

// Rules are small and short-lived in memory; boxing would only add noise.
crate::events! {
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum AccessPolicyEvent for "AccessPolicy" {
        AccessRuleSet(AccessRuleSet),
        AccessRuleRemoved(AccessRuleRemoved),
    }
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessPolicyCommand {
    Set(AccessRule),
    Remove { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessPolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no rule {0:?}")]
    NoSuchRule(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPolicy {
    pub rules: BTreeMap<String, AccessRule>,
}

fn check_rule(rule: &AccessRule) -> Result<(), AccessPolicyError> {
    let ok_name = !rule.name.is_empty()
        && rule.name.len() <= 64
        && rule
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok_name {
        return Err(AccessPolicyError::Invalid(format!(
            "rule name {:?} must be 1 to 64 of a-z, 0-9, '-', '_'",
            rule.name
        )));
    }
    let c = &rule.conditions;
    for range in c.ip_in.iter().chain(c.ip_not_in.iter()).flatten() {
        if range.parse::<ipnet::IpNet>().is_err() {
            return Err(AccessPolicyError::Invalid(format!(
                "{range:?} is not a CIDR range (such as 203.0.113.0/24 or 2001:db8::/32)"
            )));
        }
    }
    for w in c.within.iter().chain(c.outside.iter()) {
        if w.from_minute >= 1440
            || w.to_minute > 1440
            || w.weekdays.iter().any(|d| !(1..=7).contains(d))
        {
            return Err(AccessPolicyError::Invalid(
                "a time window has minutes 0 to 1440 and weekdays 1 (Monday) to 7".into(),
            ));
        }
    }
    Ok(())
}

impl AccessPolicy {
    fn decide(
        &self,
        command: AccessPolicyCommand,
    ) -> Result<Vec<AccessPolicyEvent>, AccessPolicyError> {
        match command {
            AccessPolicyCommand::Set(rule) => {
                check_rule(&rule)?;
                if !self.rules.contains_key(&rule.name) && self.rules.len() >= MAX_RULES {
                    return Err(AccessPolicyError::Invalid(format!(
                        "an organization has at most {MAX_RULES} rules"
                    )));
                }
                if self.rules.get(&rule.name) == Some(&rule) {
                    return Ok(vec![]);
                }
                Ok(vec![AccessPolicyEvent::AccessRuleSet(AccessRuleSet {
                    rule,
                })])
            }
            AccessPolicyCommand::Remove { name } => {
                if !self.rules.contains_key(&name) {
                    return Err(AccessPolicyError::NoSuchRule(name));
                }
                Ok(vec![AccessPolicyEvent::AccessRuleRemoved(
                    AccessRuleRemoved { name },
                )])
            }
        }
    }
}

impl Aggregate for AccessPolicy {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = AccessPolicyCommand;
    type Event = AccessPolicyEvent;
    type Error = AccessPolicyError;
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
            AccessPolicyEvent::AccessRuleSet(e) => {
                self.rules.insert(e.rule.name.clone(), e.rule);
            }
            AccessPolicyEvent::AccessRuleRemoved(e) => {
                self.rules.remove(&e.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> AccessFacts {
        AccessFacts {
            ip: Some("198.51.100.7".parse().unwrap()),
            roles: [Role::Member].into(),
            groups: BTreeSet::new(),
            client_id: Some("console".into()),
            at: "2026-11-30T10:00:00Z".parse().unwrap(), // a Monday
            strength: Strength::Password,
            new_ip: false,
            recent_failures: 0,
        }
    }

    fn rule(name: &str, priority: u32, conditions: Conditions, outcome: Outcome) -> AccessRule {
        AccessRule {
            name: name.into(),
            priority,
            conditions,
            outcome,
        }
    }

    #[test]
    fn the_first_matching_rule_by_priority_decides() {
        let office = rule(
            "office",
            10,
            Conditions {
                ip_in: Some(vec!["198.51.100.0/24".into()]),
                ..Default::default()
            },
            Outcome::Allow,
        );
        let elsewhere = rule("elsewhere", 20, Conditions::default(), Outcome::RequireMfa);
        let d = evaluate([&elsewhere, &office], &facts());
        assert_eq!(d.outcome, Outcome::Allow);
        assert_eq!(d.policy.as_deref(), Some("office"));
        let mut away = facts();
        away.ip = Some("203.0.113.9".parse().unwrap());
        let d = evaluate([&elsewhere, &office], &away);
        assert_eq!(d.outcome, Outcome::RequireMfa);
        assert_eq!(d.policy.as_deref(), Some("elsewhere"));
        assert!(!d.satisfied_by(Strength::Password));
        assert!(d.satisfied_by(Strength::Mfa));
        assert!(d.satisfied_by(Strength::Passkey));
    }

    #[test]
    fn no_rule_allows() {
        let d = evaluate([], &facts());
        assert_eq!(d.outcome, Outcome::Allow);
        assert_eq!(d.policy, None);
    }

    #[test]
    fn each_condition_narrows() {
        let f = facts();
        let holds = |c: Conditions| c.matches(&f).is_some();
        assert!(holds(Conditions {
            roles: Some([Role::Member, Role::Admin].into()),
            ..Default::default()
        }));
        assert!(!holds(Conditions {
            roles: Some([Role::Admin].into()),
            ..Default::default()
        }));
        assert!(!holds(Conditions {
            clients: Some(["other".to_owned()].into()),
            ..Default::default()
        }));
        assert!(holds(Conditions {
            strength_below: Some(Strength::Mfa),
            ..Default::default()
        }));
        assert!(holds(Conditions {
            within: Some(TimeWindow {
                weekdays: [1, 2, 3, 4, 5].into(),
                from_minute: 8 * 60,
                to_minute: 18 * 60
            }),
            ..Default::default()
        }));
        // Night shift wraps past midnight.
        assert!(!holds(Conditions {
            within: Some(TimeWindow {
                weekdays: BTreeSet::new(),
                from_minute: 22 * 60,
                to_minute: 6 * 60
            }),
            ..Default::default()
        }));
        assert!(!holds(Conditions {
            new_ip: Some(true),
            ..Default::default()
        }));
        assert!(!holds(Conditions {
            recent_failures_at_least: Some(3),
            ..Default::default()
        }));
        assert!(!holds(Conditions {
            ip_not_in: Some(vec!["198.51.100.0/24".into()]),
            ..Default::default()
        }));
        assert!(holds(Conditions {
            ip_in: Some(vec!["2001:db8::/32".into(), "198.51.100.7/32".into()]),
            ..Default::default()
        }));
    }

    #[test]
    fn rules_are_validated() {
        let mut p = AccessPolicy::default();
        let bad = rule(
            "office",
            1,
            Conditions {
                ip_in: Some(vec!["10.0.0.0/33".into()]),
                ..Default::default()
            },
            Outcome::Block,
        );
        assert!(p.decide(AccessPolicyCommand::Set(bad)).is_err());
        let ok = rule("office", 1, Conditions::default(), Outcome::Block);
        let events = p.decide(AccessPolicyCommand::Set(ok.clone())).unwrap();
        p.apply(events[0].clone());
        assert!(p.decide(AccessPolicyCommand::Set(ok)).unwrap().is_empty());
        assert!(p
            .decide(AccessPolicyCommand::Remove {
                name: "nope".into()
            })
            .is_err());
    }

    #[test]
    fn strength_follows_amr_and_acr() {
        assert_eq!(Strength::of_amr(&["pwd".into()]), Strength::Password);
        assert_eq!(
            Strength::of_amr(&["pwd".into(), "otp".into(), "mfa".into()]),
            Strength::Mfa
        );
        assert_eq!(Strength::of_acr(ACR_MFA), Some(Strength::Mfa));
        assert_eq!(Strength::Mfa.acr(), ACR_MFA);
    }
}

/// One conditional-access decision, for the audit trail (recorded when the organization has
/// rules): who, at which stage, what was decided and by which rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessDecided {
    pub organization_id: String,
    /// The person's user id, or the service principal's client id.
    pub subject: String,
    pub client_id: Option<String>,
    /// `sign_in`, `authorize` or `token`.
    pub stage: String,
    pub outcome: Outcome,
    /// The rule that decided (none: no rule matched).
    pub policy: Option<String>,
    pub reason: String,
    pub strength: Strength,
    /// Whether the request went on (the outcome was satisfied by the strength it had).
    pub granted: bool,
    /// The peer address in clear: only in decisions recorded before issue 17.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The peer address sealed with the data key of `subject` (field `ip`): erasing the
    /// person shreds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_ip: Option<super::Sealed>,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum AccessDecisionEvent for "AccessDecision" {
        AccessDecided(AccessDecided),
    }
}

/// The aggregate of one decision (a fresh id each time), like a sign-in attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDecisionRecord {
    pub decided: Option<AccessDecided>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this decision is already recorded")]
pub struct AlreadyRecorded;

impl AccessDecisionRecord {
    fn decide(&self, command: AccessDecided) -> Result<Vec<AccessDecisionEvent>, AlreadyRecorded> {
        if self.decided.is_some() {
            return Err(AlreadyRecorded);
        }
        Ok(vec![AccessDecisionEvent::AccessDecided(command)])
    }
}

impl Aggregate for AccessDecisionRecord {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = AccessDecided;
    type Event = AccessDecisionEvent;
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
        let AccessDecisionEvent::AccessDecided(e) = event;
        self.decided = Some(e);
    }
}
