//! QuantumLock over HTTP: the crypto policy, keys, licences, licence files, the CRL, and the
//! signing service.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use quantus_crypto::document::SignedDocument;
use quantus_crypto::instant;
use quantus_crypto::keys::{CryptoPolicy, Purpose, TrustedKey, TrustedKeys, VerifyRule};
use quantus_crypto::license::{Crl, CrlEntry, CRL_CONTEXT, CRL_FORMAT};
use quantus_crypto::{Algorithm, PublicKey};
use quantus_domain::licensing::license::{LicenseCommand, LicenseIssued, LicenseStatus};
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_projections::licenses::{LicenseRow, LicensesView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::consistency::Consistency;
use crate::paging::{self, Page};
use crate::problem::{ApiJson, ApiQuery};
use crate::write::{
    accepted, accepted_with, context, expected_version, optional_json, refusal, CommandAccepted,
};
use crate::{AppState, Problem};

/// Context string of the signing service's detached digest signatures.
pub const DIGEST_CONTEXT: &[u8] = b"quantus/digest/v1";
/// How long a CRL served now is meant to be used before fetching the next.
const CRL_VALIDITY_HOURS: i64 = 24;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/crypto/policy", get(policy))
        .route("/crypto/policy/{algorithm}", put(set_rule))
        .route("/keys", get(keys))
        .route("/keys/rotate", post(rotate))
        .route("/keys/{kid}/retire", post(retire))
        .route("/keys/{kid}/compromise", post(compromise))
        .route("/licenses", post(issue).get(list))
        .route("/licenses/{id}", get(show).put(issue_with_id))
        .route("/licenses/{id}/status", get(status))
        .route("/licenses/{id}/file", get(file))
        .route("/licenses/{id}/{action}", post(transition))
        .route("/crl", get(crl))
        .route("/signatures", post(sign_digest))
        .route("/signatures/verify", post(verify_digest))
}

fn platform(principal: &Principal, headers: &HeaderMap) -> quantus_domain::CommandContext {
    context(principal, headers, PLATFORM_TENANT)
}

fn parse_algorithm(name: &str) -> Result<Algorithm, Problem> {
    Algorithm::parse(name).ok_or_else(|| {
        let known: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        Problem::not_found(format!(
            "no algorithm {name:?} (known: {})",
            known.join(", ")
        ))
    })
}

/// One algorithm's rule in the policy's roadmap.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    #[schema(value_type = String)]
    algorithm: Algorithm,
    may_sign: bool,
    may_verify: bool,
    /// Until when its signatures verify (null: no end set).
    verify_until: Option<DateTime<Utc>>,
}

/// A rule of the published policy: signatures by `alg` verify (until `until`, if given).
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyRuleView {
    #[schema(value_type = String)]
    alg: Algorithm,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<DateTime<Utc>>,
}

impl From<VerifyRule> for VerifyRuleView {
    fn from(r: VerifyRule) -> Self {
        Self {
            alg: r.alg,
            until: r.until,
        }
    }
}

/// The crypto policy as offline verifiers take it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedPolicyView {
    /// Algorithms new signatures are made with, by preference.
    #[schema(value_type = Vec<String>)]
    sign: Vec<Algorithm>,
    verify: Vec<VerifyRuleView>,
}

impl From<CryptoPolicy> for PublishedPolicyView {
    fn from(p: CryptoPolicy) -> Self {
        Self {
            sign: p.sign,
            verify: p.verify.into_iter().map(Into::into).collect(),
        }
    }
}

/// The algorithm roadmap: the published policy, each algorithm's rule, and the policy's
/// version.
#[derive(Debug, Serialize, ToSchema)]
pub struct CryptoPolicyView {
    #[schema(value_type = Vec<String>)]
    sign: Vec<Algorithm>,
    verify: Vec<VerifyRuleView>,
    rules: Vec<RuleView>,
    version: u64,
}

#[utoipa::path(get, path = "/v1/crypto/policy", tag = "quantumlock", responses((status = 200, body = CryptoPolicyView, description = "the algorithm roadmap: which algorithms sign and verify, until when")), security(("bearer" = [])))]
pub async fn policy(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Problem> {
    principal
        .require("licenses:read")
        .or_else(|_| principal.require("keys:manage"))?;
    let (policy, version) = state.licensing.policy().await?;
    let published = policy.published();
    let rules: Vec<RuleView> = policy
        .rules
        .iter()
        .map(|(a, r)| RuleView {
            algorithm: *a,
            may_sign: r.may_sign,
            may_verify: r.may_verify,
            verify_until: r.verify_until,
        })
        .collect();
    Ok(Json(CryptoPolicyView {
        sign: published.sign,
        verify: published.verify.into_iter().map(Into::into).collect(),
        rules,
        version,
    })
    .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRule {
    may_sign: bool,
    may_verify: bool,
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    verify_until: Option<DateTime<Utc>>,
}

#[utoipa::path(put, path = "/v1/crypto/policy/{algorithm}", tag = "quantumlock", request_body = SetRule, params(("algorithm" = String, Path, description = "e.g. ML-DSA-65-Ed25519")), responses((status = 200, body = CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn set_rule(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(algorithm): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetRule>,
) -> Result<Response, Problem> {
    principal.require("keys:manage")?;
    let algorithm = parse_algorithm(&algorithm)?;
    let ctx = platform(&principal, &headers);
    let outcome = state
        .licensing
        .set_rule(
            &ctx,
            algorithm,
            body.may_sign,
            body.may_verify,
            body.verify_until,
        )
        .await?;
    Ok(accepted(
        StatusCode::OK,
        quantus_domain::licensing::crypto_policy::POLICY_ID,
        outcome,
        None,
    ))
}

/// A trusted public key.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrustedKeyView {
    kid: String,
    #[schema(value_type = String)]
    alg: Algorithm,
    /// `license`, `evidence`, `token` or `checkpoint`.
    #[schema(value_type = String)]
    purpose: Purpose,
    /// base64url without padding.
    public_key: String,
    not_before: DateTime<Utc>,
    /// After this instant the key verifies nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    retired_at: Option<DateTime<Utc>>,
    /// Signatures made at or after this instant are void.
    #[serde(skip_serializing_if = "Option::is_none")]
    compromised_at: Option<DateTime<Utc>>,
}

impl From<TrustedKey> for TrustedKeyView {
    fn from(k: TrustedKey) -> Self {
        Self {
            kid: k.kid,
            alg: k.alg,
            purpose: k.purpose,
            public_key: k.public_key,
            not_before: k.not_before,
            retired_at: k.retired_at,
            compromised_at: k.compromised_at,
        }
    }
}

/// The trusted key set and the crypto policy (docs/license-format.md).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeySetView {
    keys: Vec<TrustedKeyView>,
    policy: PublishedPolicyView,
}

impl From<TrustedKeys> for KeySetView {
    fn from(k: TrustedKeys) -> Self {
        Self {
            keys: k.keys.into_iter().map(Into::into).collect(),
            policy: k.policy.into(),
        }
    }
}

#[utoipa::path(get, path = "/v1/keys", tag = "quantumlock", responses((status = 200, body = KeySetView, description = "the trusted key set and crypto policy, as offline verifiers take it (docs/license-format.md)")), security(("bearer" = [])))]
pub async fn keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Problem> {
    let _ = &principal;
    Ok(Json(KeySetView::from(state.licensing.key_set().await?)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// `license`, `evidence`, `token` or `checkpoint`.
    #[schema(value_type = String)]
    purpose: Purpose,
}

/// The key a rotation made active.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    kid: String,
    #[schema(value_type = String)]
    algorithm: Algorithm,
    #[schema(value_type = String)]
    purpose: Purpose,
    /// The keyring's version after the rotation.
    version: u64,
    /// Log position to pass as `min_position` to read your own write.
    position: u64,
}

#[utoipa::path(post, path = "/v1/keys/rotate", tag = "quantumlock", request_body = Rotate, responses((status = 201, body = RotatedKey), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Rotate>,
) -> Result<Response, Problem> {
    principal.require("keys:manage")?;
    let ctx = platform(&principal, &headers);
    let (kid, alg, outcome) = state.licensing.rotate(&ctx, body.purpose).await?;
    let answer = RotatedKey {
        kid,
        algorithm: alg,
        purpose: body.purpose,
        version: outcome.version,
        position: outcome.position,
    };
    Ok(accepted_with(StatusCode::CREATED, answer, outcome, None))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retire {
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    at: Option<DateTime<Utc>>,
}

#[utoipa::path(post, path = "/v1/keys/{kid}/retire", tag = "quantumlock", request_body(content = Retire, description = "optional"), params(("kid" = String, Path)), responses((status = 200, body = CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn retire(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(kid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require("keys:manage")?;
    let body: Retire = optional_json(&headers, &body)?;
    let ctx = platform(&principal, &headers);
    let at = body.at.unwrap_or(ctx.occurred_at);
    let outcome = state.licensing.retire(&ctx, &kid, at).await?;
    Ok(accepted(StatusCode::OK, &kid, outcome, None))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Compromise {
    #[serde(deserialize_with = "instant::deserialize")]
    compromised_at: DateTime<Utc>,
    reason: String,
}

#[utoipa::path(post, path = "/v1/keys/{kid}/compromise", tag = "quantumlock", request_body = Compromise, params(("kid" = String, Path)), responses((status = 200, body = CommandAccepted), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn compromise(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(kid): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Compromise>,
) -> Result<Response, Problem> {
    principal.require("keys:manage")?;
    let ctx = platform(&principal, &headers);
    let outcome = state
        .licensing
        .compromise(&ctx, &kid, body.compromised_at, body.reason)
        .await?;
    Ok(accepted(StatusCode::OK, &kid, outcome, None))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueLicense {
    organization_id: String,
    product: String,
    edition: String,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    limits: std::collections::BTreeMap<String, i64>,
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    not_before: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "instant::deserialize")]
    expires_at: DateTime<Utc>,
    #[serde(default)]
    grace_period_seconds: u64,
    max_activations: u32,
    #[serde(default)]
    machine_fingerprint: Option<String>,
}

/// 404 unless the caller may see the licence's organization.
fn tenant_of(
    principal: &Principal,
    license: &quantus_domain::licensing::license::License,
    id: &str,
) -> Result<(), Problem> {
    let org = license
        .terms
        .as_ref()
        .map(|t| t.organization_id.as_str())
        .unwrap_or_default();
    principal.tenant(org, &format!("licence {id}"))
}

fn license_id(id: &str) -> Result<String, Problem> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found(format!("no licence {id:?}")))
}

#[utoipa::path(post, path = "/v1/licenses", tag = "quantumlock", request_body = IssueLicense, responses((status = 201, body = CommandAccepted), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn issue(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<IssueLicense>,
) -> Result<Response, Problem> {
    principal.require("licenses:write")?;
    let id = Uuid::now_v7().to_string();
    let ctx = context(&principal, &headers, &body.organization_id);
    let terms = LicenseIssued {
        organization_id: body.organization_id,
        product: body.product,
        edition: body.edition,
        features: body.features,
        limits: body.limits,
        not_before: body.not_before.unwrap_or(ctx.occurred_at),
        expires_at: body.expires_at,
        grace_period_seconds: body.grace_period_seconds,
        max_activations: body.max_activations,
        machine_fingerprint: body.machine_fingerprint,
    };
    let outcome = state
        .licensing
        .license_command(&ctx, &id, LicenseCommand::Issue(terms), Some(0))
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/licenses/{id}")),
    ))
}

/// Issues a licence under an id the caller chose (a process manager's deterministic id):
/// 201 when it is new, 200 when a licence with exactly these terms is already there (a retry),
/// 409 when the id holds other terms.
#[utoipa::path(put, path = "/v1/licenses/{id}", tag = "quantumlock", request_body = IssueLicense, params(("id" = String, Path)), responses((status = 201, body = CommandAccepted), (status = 200, body = CommandAccepted), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn issue_with_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<IssueLicense>,
) -> Result<Response, Problem> {
    principal.require("licenses:write")?;
    let id = license_id(&id)?;
    principal.tenant(
        &body.organization_id,
        &format!("organization {}", body.organization_id),
    )?;
    let ctx = context(&principal, &headers, &body.organization_id);
    let not_before_given = body.not_before.is_some();
    let terms = LicenseIssued {
        organization_id: body.organization_id,
        product: body.product,
        edition: body.edition,
        features: body.features,
        limits: body.limits,
        not_before: body.not_before.unwrap_or(ctx.occurred_at),
        expires_at: body.expires_at,
        grace_period_seconds: body.grace_period_seconds,
        max_activations: body.max_activations,
        machine_fingerprint: body.machine_fingerprint,
    };
    // An omitted `not_before` means "valid from the moment of issue". For a retry that moment
    // is when the licence was first issued, not now: so the default is taken from the log.
    let same = |existing: &quantus_domain::licensing::license::License,
                issued_at: Option<DateTime<Utc>>| {
        existing.terms.as_ref().is_some_and(|t| {
            let mut mine = terms.clone();
            if !not_before_given {
                match issued_at {
                    Some(at) => mine.not_before = at,
                    None => return false,
                }
            }
            // Normalised like the aggregate does (trimmed, sorted), then compared.
            mine.features.sort();
            mine.features.dedup();
            let mut theirs = t.clone();
            theirs.features.sort();
            theirs.features.dedup();
            mine.product = mine.product.trim().to_owned();
            mine.edition = mine.edition.trim().to_owned();
            mine == theirs
        })
    };
    match state
        .licensing
        .license_command(&ctx, &id, LicenseCommand::Issue(terms.clone()), Some(0))
        .await
    {
        Ok(outcome) => Ok(accepted(
            StatusCode::CREATED,
            &id,
            outcome,
            Some(format!("/v1/licenses/{id}")),
        )),
        Err(quantus_commands::CommandError::Concurrency(_)) => {
            let (existing, version) = state.licensing.license(&id).await?;
            principal.tenant(
                &existing
                    .terms
                    .as_ref()
                    .map(|t| t.organization_id.clone())
                    .unwrap_or_default(),
                &format!("licence {id}"),
            )?;
            let issued_at = if not_before_given {
                None
            } else {
                state
                    .bus
                    .repository()
                    .aggregate_records("License", &id)
                    .await?
                    .first()
                    .map(|r| r.envelope.occurred_at)
            };
            if !same(&existing, issued_at) {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "Conflict",
                    format!("licence {id} already exists with other terms"),
                ));
            }
            let position = state
                .bus
                .repository()
                .aggregate_head("License", &id)
                .await?;
            Ok(accepted(
                StatusCode::OK,
                &id,
                quantus_commands::CommandOutcome {
                    position,
                    version,
                    events: 0,
                },
                Some(format!("/v1/licenses/{id}")),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(post, path = "/v1/licenses/{id}/{action}", tag = "quantumlock", request_body(content = TransitionBody, description = "fingerprint (activate, deactivate), reason (suspend, revoke), expires_at (renew)"), params(("id" = String, Path), ("action" = String, Path, description = "activate, deactivate, suspend, reinstate, renew or revoke"), ("If-Match" = Option<String>, Header)), responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn transition(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let id = license_id(&id)?;
    let body: TransitionBody = optional_json(&headers, &body)?;
    let (license, _) = state.licensing.license(&id).await?;
    let org = license.terms.map(|t| t.organization_id).unwrap_or_default();
    principal.tenant(&org, &format!("licence {id}"))?;
    // Customers activate their licences on machines; only the vendor changes terms.
    principal.require(match action.as_str() {
        "activate" | "deactivate" => "licenses:activate",
        _ => "licenses:write",
    })?;
    let ctx = context(&principal, &headers, &org);
    let need = |v: Option<String>, field: &str| {
        v.ok_or_else(|| Problem::unprocessable(format!("{field} is required")))
    };
    let command = match action.as_str() {
        "activate" => LicenseCommand::Activate {
            fingerprint: need(body.fingerprint, "fingerprint")?,
            now: ctx.occurred_at,
        },
        "deactivate" => LicenseCommand::Deactivate {
            fingerprint: need(body.fingerprint, "fingerprint")?,
        },
        "suspend" => LicenseCommand::Suspend {
            reason: need(body.reason, "reason")?,
        },
        "reinstate" => LicenseCommand::Reinstate,
        "renew" => LicenseCommand::Renew {
            expires_at: body
                .expires_at
                .ok_or_else(|| Problem::unprocessable("expires_at is required"))?,
        },
        "revoke" => LicenseCommand::Revoke {
            reason: need(body.reason, "reason")?,
            now: ctx.occurred_at,
        },
        _ => return Err(Problem::not_found(format!("no licence action {action:?}"))),
    };
    let expected = expected_version(&headers)?;
    let outcome = state
        .licensing
        .license_command(&ctx, &id, command, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

fn status_name(status: LicenseStatus) -> &'static str {
    match status {
        LicenseStatus::Absent => "absent",
        LicenseStatus::Active => "active",
        LicenseStatus::Suspended => "suspended",
        LicenseStatus::Revoked => "revoked",
    }
}

/// A licence's terms, as issued.
#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseTermsView {
    organization_id: String,
    product: String,
    edition: String,
    features: Vec<String>,
    limits: BTreeMap<String, i64>,
    not_before: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    grace_period_seconds: u64,
    max_activations: u32,
    machine_fingerprint: Option<String>,
}

impl From<LicenseIssued> for LicenseTermsView {
    fn from(t: LicenseIssued) -> Self {
        Self {
            organization_id: t.organization_id,
            product: t.product,
            edition: t.edition,
            features: t.features,
            limits: t.limits,
            not_before: t.not_before,
            expires_at: t.expires_at,
            grace_period_seconds: t.grace_period_seconds,
            max_activations: t.max_activations,
            machine_fingerprint: t.machine_fingerprint,
        }
    }
}

/// A licence as its aggregate stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseDetail {
    id: String,
    /// `absent`, `active`, `suspended` or `revoked`.
    status: String,
    terms: Option<LicenseTermsView>,
    /// The machine fingerprints it is activated on.
    activations: BTreeSet<String>,
    version: u64,
}

/// The licence as its aggregate stands now (strongly consistent).
#[utoipa::path(get, path = "/v1/licenses/{id}", tag = "quantumlock", params(("id" = String, Path)), responses((status = 200, body = LicenseDetail, description = "the licence, its terms and activations"), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("licenses:read")?;
    let id = license_id(&id)?;
    let (license, version) = state.licensing.license(&id).await?;
    tenant_of(&principal, &license, &id)?;
    let mut response = Json(LicenseDetail {
        status: status_name(license.status).to_owned(),
        terms: license.terms.map(Into::into),
        activations: license.activations,
        version,
        id,
    })
    .into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

/// Whether a licence may be used now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseStanding {
    id: String,
    /// `valid`, `in_grace`, `expired`, `not_yet_valid`, `suspended` or `revoked`.
    standing: String,
    /// `active`, `suspended` or `revoked`.
    status: String,
    not_before: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// The end of the grace period (null: the licence cannot be used at all).
    usable_until: Option<DateTime<Utc>>,
    /// How many machines it is activated on.
    activations: usize,
    max_activations: u32,
}

/// Whether the licence may be used right now, and why.
#[utoipa::path(get, path = "/v1/licenses/{id}/status", tag = "quantumlock", params(("id" = String, Path)), responses((status = 200, body = LicenseStanding, description = "standing: valid, in_grace, expired, not_yet_valid, suspended or revoked"), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("licenses:read")?;
    let id = license_id(&id)?;
    let (license, _) = state.licensing.license(&id).await?;
    tenant_of(&principal, &license, &id)?;
    let now = Utc::now();
    let terms = license
        .terms
        .as_ref()
        .ok_or_else(|| Problem::not_found(format!("no licence {id}")))?;
    let usable_until = license.usable_until();
    let standing = match license.status {
        LicenseStatus::Revoked => "revoked",
        LicenseStatus::Suspended => "suspended",
        _ if now < terms.not_before => "not_yet_valid",
        _ if now < terms.expires_at => "valid",
        _ if usable_until.is_some_and(|u| now < u) => "in_grace",
        _ => "expired",
    };
    Ok(Json(LicenseStanding {
        id,
        standing: standing.to_owned(),
        status: status_name(license.status).to_owned(),
        not_before: terms.not_before,
        expires_at: terms.expires_at,
        usable_until,
        activations: license.activations.len(),
        max_activations: terms.max_activations,
    })
    .into_response())
}

fn canonical_response(document: &SignedDocument, filename: &str) -> Result<Response, Problem> {
    let bytes = document
        .to_canonical_json()
        .map_err(|_| Problem::internal())?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// The signed licence file (canonical JSON), made now with the active licence key.
#[utoipa::path(get, path = "/v1/licenses/{id}/file", tag = "quantumlock", params(("id" = String, Path)), responses((status = 200, body = crate::formats::SignedLicenseFile, description = "the signed licence file, canonical JSON"), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("licenses:read")?;
    let id = license_id(&id)?;
    let (license, _) = state.licensing.license(&id).await?;
    tenant_of(&principal, &license, &id)?;
    let document = state.licensing.license_file(&id, Utc::now()).await?;
    canonical_response(&document, &format!("license-{id}.json"))
}

/// A licence as the licences read model lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseView {
    pub id: String,
    pub organization_id: String,
    pub product: String,
    pub edition: String,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    pub status_reason: Option<String>,
    pub expires_at: String,
    pub activations: i64,
    pub revoked_at: Option<String>,
    pub issued_at: String,
    pub version: u64,
}

impl From<LicenseRow> for LicenseView {
    fn from(r: LicenseRow) -> Self {
        Self {
            id: r.id,
            organization_id: r.organization_id,
            product: r.product,
            edition: r.edition,
            status: r.status,
            status_reason: r.status_reason,
            expires_at: r.expires_at,
            activations: r.activations,
            revoked_at: r.revoked_at,
            issued_at: r.issued_at,
            version: r.version,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The organization; without it, the caller's own (a platform principal: every one's).
    org: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
    as_of: Option<String>,
    as_of_position: Option<u64>,
}

#[utoipa::path(get, path = "/v1/licenses", tag = "quantumlock", params(("org" = Option<String>, Query, description = "the organization; without it the caller's own, or every organization's for the platform's principals"), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query), ("as_of" = Option<String>, Query, description = "the model as it stood at this instant (RFC 3339): after the last log position appended before it; the answer's `as_of` names that position and the instant"), ("as_of_position" = Option<u64>, Query, description = "the model as it stood at this log position (after its event); the answer's `as_of` names it and when it was appended")), responses((status = 200, body = Page<LicenseView>, description = "as_of: the moment the page reflects, when asked for one"), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    principal.require("licenses:read")?;
    let org = match &q.org {
        Some(org) => {
            principal.tenant(org, &format!("organization {org}"))?;
            Some(org.clone())
        }
        None if principal.is_platform() => None,
        None => Some(principal.organization.clone()),
    };
    let limit = paging::limit(q.limit)?;
    Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.licenses)
    .await?;
    if let Some(moment) = crate::as_of::resolve(
        &state,
        &state.licenses,
        q.as_of.as_deref(),
        q.as_of_position,
        q.wait_ms,
    )
    .await?
    {
        let rows = quantus_projections::history::as_of(
            &state.db.pool,
            LicensesView::NAME,
            org.as_deref(),
            moment.position,
            q.after.as_deref(),
            limit,
        )
        .await?;
        let rows = crate::as_of::rows::<LicenseRow, LicenseView>(rows)?;
        let mut page = Page::of(rows, limit, |r| r.id.as_str());
        page.as_of = Some(moment);
        return Ok(Json(page).into_response());
    }
    let rows: Vec<LicenseRow> =
        LicensesView::by_organization(&state.db.pool, org.as_deref(), q.after.as_deref(), limit)
            .await?;
    let page = Page::of(
        rows.into_iter().map(LicenseView::from).collect(),
        limit,
        |r| r.id.as_str(),
    );
    Ok(Json(page).into_response())
}

/// The signed revocation list, made now from the licences read model. Its serial is the
/// model's highest applied log position, so it never decreases.
#[utoipa::path(get, path = "/v1/crl", tag = "quantumlock", params(Consistency), responses((status = 200, body = crate::formats::SignedCrl, description = "the signed revocation list, canonical JSON"), (status = 409, body = Problem, description = "the crypto policy no longer lets the licence key sign: rotate it"), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn crl(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(consistency): ApiQuery<Consistency>,
) -> Result<Response, Problem> {
    let _ = &principal;
    consistency.wait(&state.licenses).await?;
    signed_crl(&state).await
}

/// The revocation list signed now: served to API clients here and without a token on the
/// public verify page (`/verify/crl`), as a CRL is public by nature (ids and reasons only).
pub(crate) async fn signed_crl(state: &AppState) -> Result<Response, Problem> {
    let serial = LicensesView::high_water(&state.db.pool).await?;
    let revoked = LicensesView::revoked(&state.db.pool).await?;
    let now = quantus_domain::envelope::truncate_to_micros(Utc::now());
    let entries = revoked
        .into_iter()
        .map(|r| {
            let revoked_at = r
                .revoked_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            CrlEntry {
                license_id: r.id,
                reason: r.status_reason.unwrap_or_default(),
                revoked_at: revoked_at.unwrap_or(now),
            }
        })
        .collect();
    let list = Crl {
        format: CRL_FORMAT.into(),
        issuer: state.issuer.clone(),
        serial,
        issued_at: now,
        next_update: now + Duration::hours(CRL_VALIDITY_HOURS),
        entries,
    };
    let payload = serde_json::to_value(list).map_err(|_| Problem::internal())?;
    let document = state
        .licensing
        .sign_document(Purpose::License, payload, CRL_CONTEXT)
        .await?;
    canonical_response(&document, "crl.json")
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignDigest {
    /// `evidence`, `token` or `checkpoint` (licence keys sign licences only).
    #[schema(value_type = String)]
    purpose: Purpose,
    /// `sha-256` or `sha-512`.
    digest_algorithm: String,
    /// Lower-case hex.
    digest: String,
}

/// The message a digest signature covers: the digest algorithm's name, a zero byte, the digest.
fn digest_message(algorithm: &str, digest_hex: &str) -> Result<Vec<u8>, Problem> {
    let len = match algorithm {
        "sha-256" => 32,
        "sha-512" => 64,
        other => {
            return Err(Problem::unprocessable(format!(
                "digest_algorithm {other:?} is not sha-256 or sha-512"
            )))
        }
    };
    let digest =
        hex::decode(digest_hex).map_err(|_| Problem::unprocessable("digest must be hex"))?;
    if digest.len() != len {
        return Err(Problem::unprocessable(format!(
            "a {algorithm} digest is {len} bytes"
        )));
    }
    Ok([algorithm.as_bytes(), &[0], &digest].concat())
}

/// A signature over a digest.
#[derive(Debug, Serialize, ToSchema)]
pub struct DigestSignature {
    /// The signing key.
    kid: String,
    #[schema(value_type = String)]
    alg: Algorithm,
    /// base64url, no padding.
    signature: String,
    /// The signature context the digest was signed in.
    context: String,
}

#[utoipa::path(post, path = "/v1/signatures", tag = "quantumlock", request_body = SignDigest, responses((status = 200, body = DigestSignature), (status = 403, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn sign_digest(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<SignDigest>,
) -> Result<Response, Problem> {
    principal.require("signatures:sign")?;
    if body.purpose == Purpose::License {
        // Licence keys sign licence files and CRLs only.
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "licence keys do not sign arbitrary digests",
        ));
    }
    let message = digest_message(&body.digest_algorithm, &body.digest)?;
    let s = state
        .licensing
        .sign(body.purpose, &message, DIGEST_CONTEXT)
        .await?;
    Ok(Json(DigestSignature {
        kid: s.kid,
        alg: s.alg,
        signature: URL_SAFE_NO_PAD.encode(s.bytes),
        context: String::from_utf8_lossy(DIGEST_CONTEXT).into_owned(),
    })
    .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyDigest {
    #[schema(value_type = String)]
    purpose: Purpose,
    digest_algorithm: String,
    digest: String,
    kid: String,
    signature: String,
    /// When the signature was made (default: now); compromised keys void later signatures.
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    signed_at: Option<DateTime<Utc>>,
}

/// Whether a signature over a digest holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct DigestVerdict {
    valid: bool,
    /// Why it does not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/signatures/verify", tag = "quantumlock", request_body = VerifyDigest, responses((status = 200, body = DigestVerdict), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn verify_digest(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<VerifyDigest>,
) -> Result<Response, Problem> {
    principal.require("signatures:verify")?;
    let message = digest_message(&body.digest_algorithm, &body.digest)?;
    let keys = state.licensing.key_set().await?;
    let now = Utc::now();
    let verdict = (|| {
        let key = keys
            .find(&body.kid)
            .ok_or_else(|| format!("unknown key {}", body.kid))?;
        keys.accepts(key, body.purpose, body.signed_at.unwrap_or(now), now)
            .map_err(|e| e.to_string())?;
        let sig = URL_SAFE_NO_PAD
            .decode(&body.signature)
            .map_err(|_| "signature is not base64url".to_owned())?;
        PublicKey::new(key.alg, key.public_key().bytes)
            .and_then(|pk| pk.verify(&message, DIGEST_CONTEXT, &sig))
            .map_err(|e| e.to_string())
    })();
    Ok(Json(DigestVerdict {
        valid: verdict.is_ok(),
        reason: verdict.err(),
    })
    .into_response())
}
