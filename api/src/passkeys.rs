//! A person's passkeys: register one (WebAuthn `create()` options, then the authenticator's
//! answer), list them, remove one.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::problem::ApiJson;
use crate::write::{accepted, context};
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/passkeys/options", post(options))
        .route("/me/passkeys", post(register).get(list))
        .route("/me/passkeys/{id}", delete(remove))
}

/// Options for `navigator.credentials.create()` and the sealed ceremony to send back.
#[utoipa::path(post, path = "/v1/me/passkeys/options", tag = "qsa", responses((status = 200, body = PasskeyOptions)), security(("bearer" = [])))]
pub async fn options(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    let profile = state.identity.user_profile(&user).await?;
    let login = profile.email.clone().unwrap_or_else(|| user.clone());
    let display = profile.name.clone().unwrap_or_else(|| login.clone());
    let (options, ceremony) = state
        .identity
        .passkeys()
        .registration_options(&user, &login, &display, Utc::now())
        .await?;
    let mut r = Json(PasskeyOptions { options, ceremony }).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    ceremony: String,
    /// The `PublicKeyCredential` from `create()`, base64url fields (WebAuthn JSON).
    #[schema(value_type = Object)]
    credential: serde_json::Value,
    name: String,
}

#[utoipa::path(post, path = "/v1/me/passkeys", tag = "qsa", request_body(content = Register, description = "{ceremony, credential, name}"), responses((status = 201, body = crate::write::CommandAccepted), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn register(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Register>,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    let ctx = context(&principal, &headers, &principal.organization);
    let (id, outcome) = state
        .identity
        .passkeys()
        .register(&ctx, &user, &body.ceremony, body.credential, &body.name)
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/me/passkeys/{id}")),
    ))
}

#[utoipa::path(get, path = "/v1/me/passkeys", tag = "qsa", responses((status = 200, body = PasskeyList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    let creds = state.identity.passkeys().credentials(&user).await?;
    let items = creds
        .passkeys
        .into_iter()
        .map(|(id, p)| PasskeyListed {
            id,
            name: p.name,
            attestation_format: p.attestation_format,
            counter: p.counter,
        })
        .collect();
    Ok(Json(PasskeyList { items }).into_response())
}

#[utoipa::path(delete, path = "/v1/me/passkeys/{id}", tag = "qsa", operation_id = "remove_passkey", params(("id" = String, Path)), responses((status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let user = principal.person()?;
    let ctx = context(&principal, &headers, &principal.organization);
    let outcome = state.identity.passkeys().remove(&ctx, &user, &id).await?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

/// What `navigator.credentials.create()` needs, and the ceremony to send back with its answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyOptions {
    /// `PublicKeyCredentialCreationOptions` in WebAuthn's JSON form (base64url fields).
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    /// The sealed ceremony state: send it back unchanged with the credential.
    pub ceremony: String,
}

/// A person's passkeys (at most twenty), by credential id.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyList {
    pub items: Vec<PasskeyListed>,
}

/// One passkey; never its public key.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyListed {
    /// The credential id (base64url).
    pub id: String,
    pub name: String,
    /// The WebAuthn attestation statement format (`none`, `packed`, ...).
    pub attestation_format: String,
    /// The authenticator's signature counter at the last use.
    pub counter: u32,
}
