//! Conditional-access rules of an organization, and the what-if explanation of a decision.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use quantus_crypto::instant;
use quantus_domain::identity::access_policy::{
    AccessFacts, AccessRule, Conditions, Outcome, Strength,
};
use quantus_domain::identity::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::problem::{ApiJson, ApiQuery};
use crate::write::{accepted, context};
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/access-policies/evaluate", post(evaluate))
        .route("/access-policies/{org}", get(show))
        .route(
            "/access-policies/{org}/rules/{name}",
            put(set).delete(remove),
        )
}

/// An organization's conditional-access rules, in the order they decide.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessPolicyView {
    pub organization_id: String,
    /// By priority (lower first), then name.
    pub rules: Vec<AccessRuleView>,
    pub version: u64,
    /// The moment the rules reflect, when asked with `as_of` / `as_of_position`; absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<crate::as_of::AsOf>,
}

/// One rule: the first matching rule (by priority) decides.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessRuleView {
    pub name: String,
    /// Lower first.
    pub priority: u32,
    /// Every condition given must hold: ip_in, ip_not_in, roles, groups, clients, within,
    /// outside, strength_below, new_ip, recent_failures_at_least (none: always matches).
    #[schema(value_type = Object)]
    pub conditions: Conditions,
    /// `allow`, `require_mfa`, `require_passkey` or `block`.
    #[schema(value_type = String)]
    pub outcome: Outcome,
}

impl From<&AccessRule> for AccessRuleView {
    fn from(r: &AccessRule) -> Self {
        Self {
            name: r.name.clone(),
            priority: r.priority,
            conditions: r.conditions.clone(),
            outcome: r.outcome,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyQuery {
    as_of: Option<String>,
    as_of_position: Option<u64>,
}

/// The organization's rules, now or (with `as_of` / `as_of_position`) as they stood then:
/// the AccessPolicy aggregate loaded from the log up to that position.
#[utoipa::path(get, path = "/v1/access-policies/{org}", tag = "qsa", params(("org" = String, Path), ("as_of" = Option<String>, Query, description = "the rules as they stood at this instant (RFC 3339): after the last log position appended before it; the answer's `as_of` names that position and the instant"), ("as_of_position" = Option<u64>, Query, description = "the rules as they stood at this log position (after its event); the answer's `as_of` names it and when it was appended")), responses((status = 200, body = AccessPolicyView), (status = 400, body = Problem, description = "a bad as_of or as_of_position"), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<PolicyQuery>,
) -> Result<Response, Problem> {
    principal.require("identity:read")?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let moment = crate::as_of::moment(&state, q.as_of.as_deref(), q.as_of_position).await?;
    let (policy, version) = match &moment {
        Some(m) => {
            state
                .identity
                .access()
                .policy_as_of(&org, m.position)
                .await?
        }
        None => state.identity.access().policy(&org).await?,
    };
    let mut rules: Vec<&AccessRule> = policy.rules.values().collect();
    rules.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    Ok(Json(AccessPolicyView {
        organization_id: org,
        rules: rules.into_iter().map(AccessRuleView::from).collect(),
        version,
        as_of: moment,
    })
    .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    priority: u32,
    #[serde(default)]
    #[schema(value_type = Object)]
    conditions: Conditions,
    #[schema(value_type = String)]
    outcome: Outcome,
}

/// Creates or replaces rule `name` (lower priority numbers decide first).
#[utoipa::path(put, path = "/v1/access-policies/{org}/rules/{name}", tag = "qsa", params(("org" = String, Path), ("name" = String, Path)), request_body(content = RuleBody, description = "{priority, conditions: {ip_in, ip_not_in, roles, groups, clients, within, outside, strength_below, new_ip, recent_failures_at_least}, outcome: allow|require_mfa|require_passkey|block}"), responses((status = 200, body = crate::write::CommandAccepted), (status = 409, body = Problem, description = "the organization is suspended"), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn set(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((org, name)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let ctx = context(&principal, &headers, &org);
    let rule = AccessRule {
        name: name.clone(),
        priority: body.priority,
        conditions: body.conditions,
        outcome: body.outcome,
    };
    let outcome = state.identity.access().set_rule(&ctx, &org, rule).await?;
    Ok(accepted(StatusCode::OK, &name, outcome, None))
}

#[utoipa::path(delete, path = "/v1/access-policies/{org}/rules/{name}", tag = "qsa", params(("org" = String, Path), ("name" = String, Path)), responses((status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((org, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let ctx = context(&principal, &headers, &org);
    let outcome = state
        .identity
        .access()
        .remove_rule(&ctx, &org, &name)
        .await?;
    Ok(accepted(StatusCode::OK, &name, outcome, None))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatIf {
    organization_id: String,
    /// A person of the organization (their roles are used), or none.
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    roles: BTreeSet<Role>,
    #[serde(default)]
    groups: BTreeSet<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    ip: Option<std::net::IpAddr>,
    /// When (default: now).
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    at: Option<DateTime<Utc>>,
    /// `password`, `mfa` or `passkey` (default: password).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    authentication: Option<Strength>,
    #[serde(default)]
    new_ip: bool,
    #[serde(default)]
    recent_failures: u32,
}

/// Explains the decision for a hypothetical sign-in, without signing anyone in or recording
/// anything.
#[utoipa::path(post, path = "/v1/access-policies/evaluate", tag = "qsa", request_body(content = WhatIf, description = "{organization_id, user_id?, roles?, groups?, client_id?, ip?, at?, authentication?, new_ip?, recent_failures?}"), responses((status = 200, body = AccessExplanation), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn evaluate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<WhatIf>,
) -> Result<Response, Problem> {
    principal.require("identity:read")?;
    let org = body.organization_id;
    principal.tenant(&org, &format!("organization {org}"))?;
    let mut roles = body.roles;
    if let Some(user_id) = &body.user_id {
        let (user, _) = state.identity.user(user_id).await?;
        if user.organization_id != org {
            return Err(Problem::not_found(format!("no user {user_id}")));
        }
        roles.extend(user.roles_in(&org));
    }
    let strength = body.authentication.unwrap_or(Strength::Password);
    let facts = AccessFacts {
        ip: body.ip,
        roles,
        groups: body.groups,
        client_id: body.client_id,
        at: body.at.unwrap_or_else(Utc::now),
        strength,
        new_ip: body.new_ip,
        recent_failures: body.recent_failures,
    };
    let decision = state.identity.access().explain(&org, &facts).await?;
    Ok(Json(AccessExplanation {
        granted: decision.satisfied_by(strength),
        outcome: decision.outcome,
        policy: decision.policy,
        reason: decision.reason,
    })
    .into_response())
}

/// The decision for a hypothetical sign-in, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessExplanation {
    /// `allow`, `require_mfa`, `require_passkey` or `block`.
    #[schema(value_type = String)]
    pub outcome: Outcome,
    /// The rule that decided; null when no rule matched (allowed).
    pub policy: Option<String>,
    pub reason: String,
    /// Whether the sign-in's authentication satisfies the outcome.
    pub granted: bool,
}
