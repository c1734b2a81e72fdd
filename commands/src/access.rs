//! Conditional access: an organization's rules (events on its `AccessPolicy`), the facts of a
//! request gathered from the log, the decision (pure, in the domain), and its audit record.

use std::collections::BTreeSet;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use quantus_domain::identity::access_policy::{
    evaluate, AccessDecided, AccessDecision, AccessDecisionRecord, AccessFacts, AccessPolicy,
    AccessPolicyCommand, AccessPolicyError, AccessRule, AlreadyRecorded, Outcome, Strength,
};
use quantus_domain::identity::client::Client;
use quantus_domain::identity::group::Group;
use quantus_domain::identity::saml::{provider_id, provider_id_in, SamlServiceProvider};
use quantus_domain::identity::Role;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::CommandContext;
use quantus_infra::subject_keys::{SignInThrottle, SubjectKeys};

use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

impl ClassifyError for AccessPolicyError {
    fn classify(&self) -> CommandError {
        match self {
            AccessPolicyError::Invalid(d) => CommandError::Invalid(d.clone()),
            AccessPolicyError::NoSuchRule(_) => CommandError::NotFound(self.to_string()),
        }
    }
}

impl ClassifyError for AlreadyRecorded {
    fn classify(&self) -> CommandError {
        CommandError::Rejected(self.to_string())
    }
}

/// Index kind of the (user, address) pairs a person has signed in from.
pub(crate) const KNOWN_ADDRESS: &str = "known-address";

/// Where in the flow a decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    SignIn,
    Authorize,
    Token,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::SignIn => "sign_in",
            Stage::Authorize => "authorize",
            Stage::Token => "token",
        }
    }
}

/// Who is asking, as the flow knows it.
#[derive(Debug, Clone)]
pub struct Requester {
    pub organization_id: String,
    /// A user id, or a service principal's client id.
    pub subject: String,
    pub is_person: bool,
    pub roles: BTreeSet<Role>,
    pub client_id: Option<String>,
    pub ip: Option<String>,
    pub strength: Strength,
    /// The throttle account of the login name (people only), for recent failures.
    pub throttle_account: Option<String>,
}

#[derive(Clone)]
pub struct AccessControl {
    bus: CommandBus,
    throttle: SignInThrottle,
    keys: SubjectKeys,
}

impl AccessControl {
    pub fn new(bus: CommandBus, throttle: SignInThrottle, keys: SubjectKeys) -> Self {
        Self {
            bus,
            throttle,
            keys,
        }
    }

    pub async fn policy(&self, organization_id: &str) -> Result<(AccessPolicy, u64), CommandError> {
        self.bus.load::<AccessPolicy>(organization_id).await
    }

    /// The organization's rules and their version as they stood at log position `position`.
    pub async fn policy_as_of(
        &self,
        organization_id: &str,
        position: u64,
    ) -> Result<(AccessPolicy, u64), CommandError> {
        self.bus
            .load_as_of::<AccessPolicy>(organization_id, position)
            .await
    }

    pub async fn set_rule(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        rule: AccessRule,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus.active_organization(organization_id).await?;
        self.check_own_ids(organization_id, &rule).await?;
        self.bus
            .execute::<AccessPolicy>(
                ctx,
                organization_id,
                AccessPolicyCommand::Set(rule),
                None,
                &(),
            )
            .await
    }

    /// A rule may name only its own organization's groups and client applications (OAuth
    /// clients, or the entity ids of its SAML service providers), and the platform's own
    /// clients (the consoles), which every organization's people sign in to. Another
    /// organization's id gets the same answer as an id that does not exist, so a rule cannot
    /// probe for them.
    async fn check_own_ids(
        &self,
        organization_id: &str,
        rule: &AccessRule,
    ) -> Result<(), CommandError> {
        for id in rule.conditions.groups.iter().flatten() {
            let (g, _) = self.bus.load::<Group>(id).await?;
            if !g.exists || g.deleted || g.organization_id != organization_id {
                return Err(CommandError::Invalid(format!(
                    "groups: {id:?} is not a group of organization {organization_id}"
                )));
            }
        }
        for id in rule.conditions.clients.iter().flatten() {
            let (c, _) = self.bus.load::<Client>(id).await?;
            let own_client = c.registration.as_ref().is_some_and(|r| {
                r.organization_id == organization_id || r.organization_id == PLATFORM_TENANT
            });
            let own_sp = !own_client && {
                let mut found = false;
                for pid in [provider_id_in(organization_id, id), provider_id(id)] {
                    let (sp, _) = self.bus.load::<SamlServiceProvider>(&pid).await?;
                    if sp.is_live() && sp.organization_id == organization_id {
                        found = true;
                        break;
                    }
                }
                found
            };
            if !own_client && !own_sp {
                return Err(CommandError::Invalid(format!(
                    "clients: {id:?} is not a client or SAML service provider of organization {organization_id}"
                )));
            }
        }
        Ok(())
    }

    pub async fn remove_rule(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        name: &str,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<AccessPolicy>(
                ctx,
                organization_id,
                AccessPolicyCommand::Remove {
                    name: name.to_owned(),
                },
                None,
                &(),
            )
            .await
    }

    /// The facts of a request: the groups (among those the rules name) the person is in, whether
    /// the address is new for them, recent failed sign-ins.
    pub async fn facts(
        &self,
        policy: &AccessPolicy,
        r: &Requester,
        at: DateTime<Utc>,
    ) -> Result<AccessFacts, CommandError> {
        let named: BTreeSet<&String> = policy
            .rules
            .values()
            .filter_map(|rule| rule.conditions.groups.as_ref())
            .flatten()
            .collect();
        let mut groups = BTreeSet::new();
        if r.is_person {
            for id in named {
                let (g, _) = self.bus.load::<Group>(id).await?;
                if g.members.contains(&r.subject) {
                    groups.insert(id.clone());
                }
            }
        }
        let new_ip = match (&r.ip, r.is_person) {
            (Some(ip), true) => self
                .bus
                .repository()
                .indexed_grants(KNOWN_ADDRESS, &format!("{}/{ip}", r.subject))
                .await?
                .is_empty(),
            _ => false,
        };
        let recent_failures = match &r.throttle_account {
            Some(account) => self
                .throttle
                .recent_failures(account, at)
                .await
                .map_err(|e| CommandError::Storage(e.to_string()))?,
            None => 0,
        };
        Ok(AccessFacts {
            ip: r.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()),
            roles: r.roles.clone(),
            groups,
            client_id: r.client_id.clone(),
            at,
            strength: r.strength,
            new_ip,
            recent_failures: u32::try_from(recent_failures).unwrap_or(u32::MAX),
        })
    }

    /// Decides a request and, when the organization has rules, records the decision naming
    /// the rule that made it.
    pub async fn decide(
        &self,
        ctx: &CommandContext,
        stage: Stage,
        r: &Requester,
    ) -> Result<AccessDecision, CommandError> {
        let (policy, _) = self.policy(&r.organization_id).await?;
        if policy.rules.is_empty() {
            return Ok(evaluate(
                [],
                &self.facts(&policy, r, ctx.occurred_at).await?,
            ));
        }
        let facts = self.facts(&policy, r, ctx.occurred_at).await?;
        // A service principal cannot step up: only the rules that allow or block apply to it.
        let decision = evaluate(
            policy.rules.values().filter(|rule| {
                r.is_person || matches!(rule.outcome, Outcome::Allow | Outcome::Block)
            }),
            &facts,
        );
        let record = AccessDecided {
            organization_id: r.organization_id.clone(),
            subject: r.subject.clone(),
            client_id: r.client_id.clone(),
            stage: stage.name().to_owned(),
            outcome: decision.outcome,
            policy: decision.policy.clone(),
            reason: decision.reason.clone(),
            strength: r.strength,
            granted: decision.satisfied_by(r.strength),
            ip: None,
            // Personal data enters the log only sealed for the person (or service principal).
            sealed_ip: match &r.ip {
                Some(ip) => Some(
                    self.keys
                        .seal(&r.subject, "ip", ip.as_bytes())
                        .await
                        .map_err(|e| CommandError::Storage(e.to_string()))?,
                ),
                None => None,
            },
        };
        let ctx = CommandContext {
            tenant_id: r.organization_id.clone(),
            ..ctx.clone()
        };
        self.bus
            .execute::<AccessDecisionRecord>(
                &ctx,
                &uuid::Uuid::now_v7().to_string(),
                record,
                None,
                &(),
            )
            .await?;
        Ok(decision)
    }

    /// A what-if: the decision for hypothetical facts, recording nothing.
    pub async fn explain(
        &self,
        organization_id: &str,
        facts: &AccessFacts,
    ) -> Result<AccessDecision, CommandError> {
        let (policy, _) = self.policy(organization_id).await?;
        Ok(evaluate(policy.rules.values(), facts))
    }

    /// Remembers that a person signed in from `ip` (for the new-address signal).
    pub async fn remember_address(
        &self,
        user_id: &str,
        ip: Option<&str>,
    ) -> Result<(), CommandError> {
        if let Some(ip) = ip {
            self.bus
                .repository()
                .claim_once(KNOWN_ADDRESS, &format!("{user_id}/{ip}"))
                .await?;
        }
        Ok(())
    }
}
