//! Second factors of a person: enrol an authenticator app (TOTP), confirm it, remove it; an
//! administrator may reset a person's second factor.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::problem::ApiJson;
use crate::write::{accepted, context};
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/totp", post(start).get(status).delete(remove_own))
        .route("/me/totp/confirm", post(confirm))
        .route("/me/recovery-codes", post(regenerate_recovery_codes))
        .route("/users/{id}/totp", delete(reset))
}

/// Whether the person has an enrolled authenticator app.
#[utoipa::path(get, path = "/v1/me/totp", tag = "qsa", responses((status = 200, body = TotpStatus)), security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    let enrolled = state.identity.mfa().totp_enrolled(&user).await?;
    Ok(Json(TotpStatus { enrolled }).into_response())
}

/// Starts an enrolment: the `otpauth://` URI and the QR code to scan (a new call replaces an
/// unconfirmed enrolment; an enrolled app must be removed first).
#[utoipa::path(post, path = "/v1/me/totp", tag = "qsa", responses((status = 200, body = TotpEnrolment), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn start(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    let profile = state.identity.user_profile(&user).await?;
    let account = profile.email.clone().unwrap_or_else(|| user.clone());
    let ctx = context(&principal, &headers, &principal.organization);
    let e = state
        .identity
        .mfa()
        .start_totp(&ctx, &user, &account)
        .await?;
    let qr = base64::engine::general_purpose::STANDARD.encode(e.qr_svg.as_bytes());
    let mut response = Json(TotpEnrolment {
        otpauth_uri: e.uri,
        qr_code: format!("data:image/svg+xml;base64,{qr}"),
    })
    .into_response();
    // The seed is in this answer: no cache may keep it.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    code: String,
}

/// Confirms the enrolment with a first code; answers ten single-use recovery codes, once.
#[utoipa::path(post, path = "/v1/me/totp/confirm", tag = "qsa", request_body(content = Confirm, description = "{code}"), responses((status = 200, body = RecoveryCodes), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn confirm(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Confirm>,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    let ctx = context(&principal, &headers, &principal.organization);
    let codes = state
        .identity
        .mfa()
        .confirm_totp(&ctx, &user, &body.code)
        .await?;
    let mut response = Json(RecoveryCodes {
        recovery_codes: codes,
    })
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// Removes one's own authenticator app; only from a session that used it.
#[utoipa::path(delete, path = "/v1/me/totp", tag = "qsa", responses((status = 200, body = crate::write::CommandAccepted), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn remove_own(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    second_factor_used(&principal, "sign in with your second factor to remove it")?;
    let ctx = context(&principal, &headers, &principal.organization);
    let outcome = state
        .identity
        .mfa()
        .remove_totp(&ctx, &user, "removed by the person")
        .await?;
    Ok(accepted(StatusCode::OK, &user, outcome, None))
}

/// Changing one's second factor needs a session that proved it (`amr` holds `mfa`): a
/// stolen password alone must not replace or remove it.
fn second_factor_used(principal: &Principal, detail: &str) -> Result<(), Problem> {
    let amr = principal.claims.amr.as_deref().unwrap_or_default();
    if amr.iter().any(|m| m == "mfa") {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "step-up-required",
        "Step-up required",
        detail,
    ))
}

/// Replaces one's recovery codes with ten new ones, answered once (the old ones stop
/// working); only from a session that used the second factor.
#[utoipa::path(post, path = "/v1/me/recovery-codes", tag = "qsa", responses((status = 200, body = RecoveryCodes, description = "ten new single-use codes, shown once"), (status = 403, body = Problem, description = "this session did not use a second factor (step-up-required)"), (status = 404, body = Problem, description = "no authenticator app is enrolled")), security(("bearer" = [])))]
pub async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    second_factor_used(
        &principal,
        "sign in with your second factor to replace your recovery codes",
    )?;
    let ctx = context(&principal, &headers, &principal.organization);
    let codes = state
        .identity
        .mfa()
        .regenerate_recovery_codes(&ctx, &user)
        .await?;
    let mut response = Json(RecoveryCodes {
        recovery_codes: codes,
    })
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// An administrator resets a person's second factor (a lost phone).
#[utoipa::path(delete, path = "/v1/users/{id}/totp", tag = "qsa", params(("id" = String, Path)), responses((status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn reset(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    let (user, _) = state.identity.user(&id).await?;
    principal.tenant(&user.organization_id, &format!("user {id}"))?;
    let ctx = context(&principal, &headers, &user.organization_id);
    let outcome = state
        .identity
        .mfa()
        .remove_totp(&ctx, &id, "reset by an administrator")
        .await?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

/// Whether the person has an enrolled authenticator app.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpStatus {
    pub enrolled: bool,
}

/// An enrolment to confirm: what the authenticator app scans (answered once, never cached).
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// The `otpauth://totp/...` URI holding the seed.
    pub otpauth_uri: String,
    /// The same URI as a QR code: a `data:image/svg+xml;base64,...` URI.
    pub qr_code: String,
}

/// Single-use recovery codes, shown this once (never cached).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}
