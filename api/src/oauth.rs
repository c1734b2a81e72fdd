//! The OpenID Provider: discovery, JWKS, the authorization endpoint with its login and consent
//! pages, the token endpoint (authorization_code + PKCE, refresh_token, client_credentials,
//! device_code), PAR, device authorization with its user-code page, userinfo, introspection,
//! revocation and RP-initiated logout.
//!
//! Errors follow RFC 6749 §5.2 at the token-style endpoints (JSON `error`), and are sent to a
//! client's redirect URI only once that URI is known to be registered (RFC 9700 §4.1).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::Utc;
use quantus_commands::identity::{
    AuthorizationRequest, ClientAuth, LiveSession, OAuthError, SignInRefusal,
};
use quantus_domain::identity::access_policy::{Outcome, Strength};
use quantus_domain::identity::client::{AuthMethod, ClientRegistered};
use quantus_domain::identity::grant::Grant;
use quantus_domain::identity::{parse_scope, RequestInfo};
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::AppState;

const SESSION_COOKIE: &str = "qsa_session";
const CSRF_COOKIE: &str = "qsa_csrf";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        .route("/oauth2/jwks", get(jwks))
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/par", post(par))
        .route("/oauth2/device_authorization", post(device_authorization))
        .route("/oauth2/userinfo", get(userinfo).post(userinfo))
        .route("/oauth2/authorize", get(authorize).post(authorize_form))
        .route("/oauth2/login", post(login))
        .route("/oauth2/login/second-factor", post(login_second_factor))
        .route("/oauth2/login/passkey", post(login_passkey))
        .route("/oauth2/passkey/options", post(passkey_options))
        .route("/oauth2/passkey.js", get(passkey_script))
        .route("/oauth2/invite", get(invite_page).post(invite_form))
        .route("/oauth2/invite.js", get(invite_script))
        .route("/oauth2/consent", post(consent))
        .route("/oauth2/logout", get(logout).post(logout_form))
        .route("/device", get(device_page).post(device_decision))
}

// ---- request plumbing ----

pub(crate) fn request_info(headers: &HeaderMap, peer: Option<SocketAddr>) -> RequestInfo {
    // In clear only until the identity service seals it for the person concerned.
    RequestInfo::clear(
        peer.map(|p| p.ip().to_string()),
        headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect()),
    )
}

/// The peer address when the server runs with connect info (the real server does).
pub struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

fn ctx(tenant: &str, actor: Actor) -> CommandContext {
    CommandContext {
        tenant_id: tenant.to_owned(),
        actor,
        occurred_at: quantus_domain::envelope::truncate_to_micros(Utc::now()),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    }
}

fn client_actor(client_id: &str) -> Actor {
    Actor {
        kind: ActorKind::Service,
        id: client_id.to_owned(),
    }
}

fn anonymous() -> Actor {
    Actor {
        kind: ActorKind::System,
        id: "qsa".into(),
    }
}

/// An OAuth error as JSON (RFC 6749 §5.2); `invalid_client` is 401.
fn oauth_error(e: OAuthError, basic_used: bool) -> Response {
    let status = match e.error {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = (
        status,
        Json(serde_json::json!({ "error": e.error, "error_description": e.description })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        axum::http::header::PRAGMA,
        HeaderValue::from_static("no-cache"),
    );
    if status == StatusCode::UNAUTHORIZED && basic_used {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"quantus\""),
        );
    }
    response
}

fn no_store_json(value: impl Serialize) -> Response {
    let mut response = Json(value).into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        axum::http::header::PRAGMA,
        HeaderValue::from_static("no-cache"),
    );
    response
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Client authentication from the request (RFC 6749 §2.3.1, RFC 7523 §2.2). More than one
/// method at once is refused.
fn client_auth(
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<ClientAuth, OAuthError> {
    let mut auth = ClientAuth::default();
    let mut methods = 0;
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some((scheme, value)) = v.split_once(' ') {
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = STANDARD
                    .decode(value.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
                let (id, secret) = decoded
                    .split_once(':')
                    .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
                auth.client_id = Some(form_decode(id));
                auth.secret = Some(form_decode(secret));
                auth.method = Some(AuthMethod::ClientSecretBasic);
                methods += 1;
            }
        }
    }
    if let Some(secret) = form.get("client_secret") {
        auth.secret = Some(secret.clone());
        auth.method = Some(AuthMethod::ClientSecretPost);
        methods += 1;
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(OAuthError::invalid_request(
                "unsupported client_assertion_type",
            ));
        }
        auth.assertion = Some(assertion.clone());
        auth.method = Some(AuthMethod::PrivateKeyJwt);
        methods += 1;
    }
    if methods > 1 {
        return Err(OAuthError::invalid_request(
            "use exactly one client authentication method",
        ));
    }
    match (&auth.client_id, form.get("client_id")) {
        (Some(a), Some(b)) if a != b => {
            return Err(OAuthError::invalid_request(
                "client_id differs from the Basic credentials",
            ))
        }
        (None, Some(b)) => auth.client_id = Some(b.clone()),
        _ => {}
    }
    Ok(auth)
}

/// Parses a form body; a repeated parameter is an error (RFC 6749 §3.1, §3.2).
fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>, OAuthError> {
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter {k} is repeated"
            )));
        }
    }
    Ok(out)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// A client's request to a token-style endpoint: its form (RFC 6749 form encoding, no
/// repeated parameters) and the client it authenticates as. Errors come back as the OAuth
/// error response to send.
async fn client_request(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    endpoint: &str,
) -> Result<(BTreeMap<String, String>, String, ClientRegistered), Response> {
    let form = parse_form(body).map_err(|e| oauth_error(e, false))?;
    let auth = client_auth(headers, &form).map_err(|e| oauth_error(e, false))?;
    let basic = auth.method == Some(AuthMethod::ClientSecretBasic);
    // A client assertion may name this endpoint, the token endpoint or the issuer
    // (RFC 9126 §2, OIDC Core §9).
    let audiences = [
        format!("{}{endpoint}", state.issuer),
        format!("{}/oauth2/token", state.issuer),
        state.issuer.clone(),
    ];
    let (client_id, client) = state
        .identity
        .authenticate_client(&auth, &audiences, Utc::now())
        .await
        .map_err(|e| oauth_error(e, basic))?;
    Ok((form, client_id, client))
}

// ---- metadata ----

/// OpenID Provider metadata (OpenID Connect Discovery 1.0, also served as RFC 8414
/// authorization-server metadata).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oauth",
    responses((status = 200, description = "the provider's metadata: endpoints, supported grants, scopes, algorithms", content_type = "application/json", body = Object)))]
pub async fn discovery(State(state): State<AppState>) -> Response {
    let i = &state.issuer;
    let mut scopes: Vec<&str> = quantus_domain::identity::OIDC_SCOPES.to_vec();
    scopes.extend(quantus_domain::identity::API_SCOPES);
    Json(serde_json::json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/oauth2/authorize"),
        "token_endpoint": format!("{i}/oauth2/token"),
        "jwks_uri": format!("{i}/oauth2/jwks"),
        "userinfo_endpoint": format!("{i}/oauth2/userinfo"),
        "introspection_endpoint": format!("{i}/oauth2/introspect"),
        "revocation_endpoint": format!("{i}/oauth2/revoke"),
        "pushed_authorization_request_endpoint": format!("{i}/oauth2/par"),
        "device_authorization_endpoint": format!("{i}/oauth2/device_authorization"),
        "end_session_endpoint": format!("{i}/oauth2/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "urn:ietf:params:oauth:grant-type:device_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "code_challenge_methods_supported": ["S256"],
        "dpop_signing_alg_values_supported": crate::dpop::ALGS,
        "scopes_supported": scopes,
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "acr", "at_hash", "sid", "email", "email_verified", "name", "org"],
        "acr_values_supported": [quantus_domain::identity::access_policy::ACR_PASSWORD, quantus_domain::identity::access_policy::ACR_MFA, quantus_domain::identity::access_policy::ACR_PHISHING_RESISTANT],
        "prompt_values_supported": ["none", "login", "consent"],
        "authorization_response_iss_parameter_supported": true,
        "require_pushed_authorization_requests": false,
        "request_parameter_supported": false,
        "claims_parameter_supported": false,
    }))
    .into_response()
}

/// The ID-token and access-token verification keys (RFC 7517 JWK Set).
#[utoipa::path(get, path = "/oauth2/jwks", tag = "oauth",
    responses((status = 200, description = "JWK Set; cached up to 60 s", content_type = "application/json", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    match state.identity.jwks(Utc::now()).await {
        Ok(set) => {
            let mut response = Json(set).into_response();
            // Short: clients pick up a rotation within a minute.
            response.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            );
            response
        }
        Err(e) => crate::Problem::from(e).into_response(),
    }
}

// ---- token endpoint ----

/// The token endpoint (RFC 6749 §3.2): authorization code with PKCE, refresh token (rotated),
/// client credentials, device code (RFC 8628). Client authentication: HTTP Basic (`client_secret_basic`), `client_id` and `client_secret` in the form (`client_secret_post`), or `private_key_jwt`, as the client was registered.
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth",
    request_body(content = wire::TokenRequest, content_type = "application/x-www-form-urlencoded"),
    params(("DPoP" = Option<String>, Header, description = "RFC 9449 proof JWT (typ dpop+jwt, ES256, EdDSA or Ed25519, public `jwk`; `htm` POST, `htu` this endpoint, `iat`, unique `jti`, and the server's `nonce`): the tokens are bound to its key (`token_type` DPoP, `cnf.jkt`); required for clients registered with `dpop_bound_access_tokens`, and for refreshing a public client's bound refresh token (same key)")),
    responses((status = 200, body = wire::TokenResponse, description = "tokens (never cached); to a DPoP client with a fresh `DPoP-Nonce` header"),
        (status = 400, body = wire::OAuthError, description = "RFC 6749 §5.2: invalid_request, invalid_grant, unsupported_grant_type, invalid_scope, authorization_pending, slow_down, expired_token; RFC 9449: invalid_dpop_proof, use_dpop_nonce (with the nonce to use in the `DPoP-Nonce` header)"),
        (status = 401, body = wire::OAuthError, description = "invalid_client"),
        (status = 415, body = wire::OAuthError, description = "the body is not a form")))]
pub async fn token(
    State(state): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Read from the raw form: a refusal before the form is parsed still counts.
    let grant = crate::metrics::Grant::of(
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "grant_type")
            .as_ref()
            .map(|(_, v)| v.as_ref()),
    );
    let response = token_answer(&state, peer, headers, body).await;
    state.metrics.token_answered(grant, response.status());
    response
}

async fn token_answer(
    state: &AppState,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let state = state.clone();
    if !is_form(&headers) {
        return oauth_error(
            OAuthError::invalid_request("send application/x-www-form-urlencoded"),
            false,
        );
    }
    let (form, client_id, client) =
        match client_request(&state, &headers, &body, "/oauth2/token").await {
            Ok(c) => c,
            Err(response) => return response,
        };
    // RFC 9449 §5: a DPoP proof binds the tokens to the client's key.
    let required = client.dpop_bound_access_tokens;
    let dpop_jkt = match dpop_proof(&state, &headers, "/oauth2/token", required) {
        Ok(j) => j,
        Err(response) => return response,
    };
    let dpop_jkt = dpop_jkt.as_deref();
    let request = request_info(&headers, peer);
    let ctx = ctx(&client.organization_id, client_actor(&client_id));
    let scope = match form.get("scope").map(|s| parse_scope(s)).transpose() {
        Ok(s) => s,
        Err(e) => return oauth_error(OAuthError::invalid_scope(e), false),
    };
    let need = |k: &str| {
        form.get(k)
            .cloned()
            .ok_or_else(|| OAuthError::invalid_request(format!("{k} is required")))
    };
    let id = &state.identity;
    let result = match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            id.token_client_credentials(&ctx, &client_id, &client, scope, request, dpop_jkt)
                .await
        }
        Some("authorization_code") => match need("code") {
            Ok(code) => {
                id.token_authorization_code(
                    &ctx,
                    &client_id,
                    &client,
                    &code,
                    form.get("redirect_uri").cloned(),
                    form.get("code_verifier").cloned(),
                    request,
                    dpop_jkt,
                )
                .await
            }
            Err(e) => Err(e),
        },
        Some("refresh_token") => match need("refresh_token") {
            Ok(rt) => {
                id.token_refresh(&ctx, &client_id, &client, &rt, scope, request, dpop_jkt)
                    .await
            }
            Err(e) => Err(e),
        },
        Some("urn:ietf:params:oauth:grant-type:device_code") => match need("device_code") {
            Ok(dc) => {
                id.token_device(&ctx, &client_id, &client, &dc, request, dpop_jkt)
                    .await
            }
            Err(e) => Err(e),
        },
        Some(other) => Err(OAuthError::new(
            "unsupported_grant_type",
            format!("grant_type {other} is not supported"),
        )),
        None => Err(OAuthError::invalid_request("grant_type is required")),
    };
    let mut response = match result {
        Ok(t) => no_store_json(t),
        Err(e) => oauth_error(e, false),
    };
    if dpop_jkt.is_some() {
        // A fresh nonce with every answer to a DPoP client (RFC 9449 §8.2).
        with_nonce(&state, &mut response);
    }
    response
}

fn with_nonce(state: &AppState, response: &mut Response) {
    let nonce = state.dpop.nonce(Utc::now().timestamp());
    if let Ok(v) = HeaderValue::from_str(&nonce) {
        response.headers_mut().insert("dpop-nonce", v);
    }
}

/// The DPoP proof of a request to the token or PAR endpoint (RFC 9449 §4.3, §8, §10.1): its
/// key's thumbprint, `None` without a proof (refused when `required`: a client registered
/// with `dpop_bound_access_tokens` at the token endpoint). The proof must carry the server's
/// nonce; without a current one the answer is `use_dpop_nonce` with a fresh nonce in
/// `DPoP-Nonce`.
#[allow(clippy::result_large_err)] // the refusal is the response to send
fn dpop_proof(
    state: &AppState,
    headers: &HeaderMap,
    endpoint: &str,
    required: bool,
) -> Result<Option<String>, Response> {
    let invalid = |why: &str| oauth_error(OAuthError::new("invalid_dpop_proof", why), false);
    let mut proofs = headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (None, _) if required => {
            return Err(invalid(
                "this client's tokens are DPoP-bound: send a DPoP proof",
            ))
        }
        (None, _) => return Ok(None),
        (Some(p), None) => p.to_str().map_err(|_| invalid("the proof is not a JWT"))?,
        (Some(_), Some(_)) => return Err(invalid("send exactly one DPoP proof")),
    };
    let url = format!("{}{endpoint}", state.issuer);
    let expected = crate::dpop::Expected {
        method: "POST",
        url: &url,
        access_token: None,
        nonce: true,
    };
    match state.dpop.verify(proof, &expected, Utc::now().timestamp()) {
        Ok(jkt) => Ok(Some(jkt)),
        Err(crate::dpop::ProofError::Invalid(why)) => Err(invalid(&why)),
        Err(crate::dpop::ProofError::UseNonce) => {
            let mut response = oauth_error(
                OAuthError::new(
                    "use_dpop_nonce",
                    "the DPoP proof needs the nonce in the DPoP-Nonce header",
                ),
                false,
            );
            with_nonce(state, &mut response);
            Err(response)
        }
    }
}

/// Token introspection (RFC 7662). Client authentication: HTTP Basic (`client_secret_basic`), `client_id` and `client_secret` in the form (`client_secret_post`), or `private_key_jwt`, as the client was registered.
#[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth",
    request_body(content = wire::TokenOnlyRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = wire::IntrospectionResponse, description = "`active` false for any token this client may not learn about"),
        (status = 400, body = wire::OAuthError), (status = 401, body = wire::OAuthError, description = "invalid_client")))]
pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (form, _, client) =
        match client_request(&state, &headers, &body, "/oauth2/introspect").await {
            Ok(c) => c,
            Err(response) => return response,
        };
    if client.auth_method == AuthMethod::None {
        return oauth_error(
            OAuthError::invalid_client("public clients may not introspect"),
            false,
        );
    }
    let Some(token) = form.get("token") else {
        return oauth_error(OAuthError::invalid_request("token is required"), false);
    };
    match state.identity.introspect(&client, token, Utc::now()).await {
        Ok(i) => no_store_json(i),
        Err(e) => oauth_error(e, false),
    }
}

/// Token revocation (RFC 7009): revokes the token's whole grant. Client authentication: HTTP Basic (`client_secret_basic`), `client_id` and `client_secret` in the form (`client_secret_post`), or `private_key_jwt`, as the client was registered.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth",
    request_body(content = wire::TokenOnlyRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "revoked, or the token was unknown (RFC 7009 §2.2)"),
        (status = 400, body = wire::OAuthError), (status = 401, body = wire::OAuthError, description = "invalid_client")))]
pub async fn revoke(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (form, client_id, client) =
        match client_request(&state, &headers, &body, "/oauth2/revoke").await {
            Ok(c) => c,
            Err(response) => return response,
        };
    let Some(token) = form.get("token") else {
        return oauth_error(OAuthError::invalid_request("token is required"), false);
    };
    let ctx = ctx(&client.organization_id, client_actor(&client_id));
    match state
        .identity
        .revoke(&ctx, &client_id, token, request_info(&headers, peer))
        .await
    {
        // RFC 7009 §2.2: 200 whether or not the token was valid.
        Ok(()) => no_store_json(serde_json::json!({})),
        Err(e) => oauth_error(e, false),
    }
}

/// Pushed authorization requests (RFC 9126): the authorization request's parameters, sent
/// back-channel; answered with a `request_uri` for `/oauth2/authorize`. Client authentication: HTTP Basic (`client_secret_basic`), `client_id` and `client_secret` in the form (`client_secret_post`), or `private_key_jwt`, as the client was registered.
#[utoipa::path(post, path = "/oauth2/par", tag = "oauth",
    request_body(content = wire::AuthorizationRequest, content_type = "application/x-www-form-urlencoded"),
    params(("DPoP" = Option<String>, Header, description = "RFC 9449 §10.1 proof JWT (`htm` POST, `htu` this endpoint, the server's `nonce`): the code will be bound to its key")),
    responses((status = 201, body = wire::ParResponse, description = "to a DPoP client with a fresh `DPoP-Nonce` header"),
        (status = 400, body = wire::OAuthError, description = "RFC 6749 §5.2 and RFC 9449: invalid_dpop_proof, use_dpop_nonce"), (status = 401, body = wire::OAuthError, description = "invalid_client")))]
pub async fn par(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (form, client_id, _) = match client_request(&state, &headers, &body, "/oauth2/par").await {
        Ok(c) => c,
        Err(response) => return response,
    };
    if form.contains_key("request_uri") {
        return oauth_error(
            OAuthError::invalid_request("request_uri may not be pushed"),
            false,
        );
    }
    let mut params = form.clone();
    params.insert("client_id".into(), client_id);
    let mut req = match state.identity.check_authorization_request(&params).await {
        Ok(Ok((req, _))) => req,
        Ok(Err(e)) | Err((e, _)) => return oauth_error(e, false),
    };
    // RFC 9449 §10.1: a proof with the pushed request binds the code to its key (and must be
    // by the key `dpop_jkt` names, when both are sent).
    let proven = match dpop_proof(&state, &headers, "/oauth2/par", false) {
        Ok(j) => j,
        Err(response) => return response,
    };
    if let Some(jkt) = &proven {
        if req.dpop_jkt.as_ref().is_some_and(|j| j != jkt) {
            return oauth_error(
                OAuthError::new(
                    "invalid_dpop_proof",
                    "dpop_jkt is not the thumbprint of the proof's key",
                ),
                false,
            );
        }
        req.dpop_jkt = Some(jkt.clone());
    }
    let mut response = match state.identity.par_uri(&req, Utc::now()) {
        Ok(uri) => {
            let mut r = no_store_json(
                serde_json::json!({ "request_uri": uri, "expires_in": quantus_commands::identity::PAR_SECONDS }),
            );
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        Err(e) => oauth_error(e.into(), false),
    };
    if proven.is_some() {
        with_nonce(&state, &mut response);
    }
    response
}

/// Device authorization (RFC 8628 §3.1). Client authentication: HTTP Basic (`client_secret_basic`), `client_id` and `client_secret` in the form (`client_secret_post`), or `private_key_jwt`, as the client was registered.
#[utoipa::path(post, path = "/oauth2/device_authorization", tag = "oauth",
    request_body(content = wire::DeviceAuthorizationRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = wire::DeviceAuthorizationResponse),
        (status = 400, body = wire::OAuthError), (status = 401, body = wire::OAuthError, description = "invalid_client")))]
pub async fn device_authorization(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (form, client_id, client) =
        match client_request(&state, &headers, &body, "/oauth2/device_authorization").await {
            Ok(c) => c,
            Err(response) => return response,
        };
    let scope = match form.get("scope").map(|s| parse_scope(s)).transpose() {
        Ok(s) => s,
        Err(e) => return oauth_error(OAuthError::invalid_scope(e), false),
    };
    let ctx = ctx(&client.organization_id, client_actor(&client_id));
    match state
        .identity
        .start_device(
            &ctx,
            &client_id,
            &client,
            scope,
            request_info(&headers, peer),
        )
        .await
    {
        Ok(d) => no_store_json(d),
        Err(e) => oauth_error(e, false),
    }
}

/// The UserInfo endpoint (OpenID Connect Core §5.3), for a person's access token with `openid`.
#[utoipa::path(method(get, post), path = "/oauth2/userinfo", tag = "oauth",
    params(("DPoP" = Option<String>, Header, description = "RFC 9449 proof JWT for a DPoP-bound token (sent as `Authorization: DPoP <token>`): `htm` and `htu` of this request, `ath` the base64url SHA-256 of the token")),
    responses((status = 200, description = "the person's claims, as the token's scopes allow", content_type = "application/json", body = Object)),
    security(("bearer" = [])))]
pub async fn userinfo(
    State(state): State<AppState>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    let identity = &state.identity;
    let verified = crate::auth::authenticate(
        &state,
        &method,
        "/oauth2/userinfo",
        &headers,
        |token| async move {
            identity
                .verify_access_token(&token, Utc::now())
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let claims = match verified {
        Ok(c) if c.is_user() && c.scopes().contains("openid") => c,
        // RFC 6750 §3.1: a valid token without the needed scope is 403 insufficient_scope.
        Ok(_) => {
            let mut r = crate::Problem::new(
                StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
                "userinfo needs a user's token with the openid scope",
            )
            .into_response();
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\", scope=\"openid\""),
            );
            return r;
        }
        Err(response) => return response,
    };
    match state.identity.userinfo(&claims).await {
        Ok(v) => no_store_json(v),
        Err(e) => crate::Problem::from(e).into_response(),
    }
}

// ---- browser flows ----

/// Where a browser goes after signing in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Continuation {
    Authorize(AuthorizationRequest),
    Device {
        user_code: String,
    },
    /// A SAML sign-on (api/src/saml.rs): back to `resume`, a `/saml/` path whose query holds
    /// the sealed, already checked request.
    Saml {
        resume: String,
        /// The service provider's organization: whose account the person signs in with.
        #[serde(default)]
        organization: Option<String>,
    },
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn secure(state: &AppState) -> &'static str {
    if state.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(response: &mut Response, state: &AppState, name: &str, value: &str, max_age: i64) {
    let c = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        secure(state)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        response.headers_mut().append(SET_COOKIE, v);
    }
}

pub(crate) async fn current_session(state: &AppState, headers: &HeaderMap) -> Option<LiveSession> {
    let c = cookie(headers, SESSION_COOKIE)?;
    state.identity.session(&c, Utc::now()).await.ok().flatten()
}

fn escape(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t} · Quantus</title><style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}\
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.5rem;box-sizing:border-box}}button{{margin:1rem .5rem 0 0;padding:.5rem 1rem}}\
.error{{color:#a00}}footer{{margin-top:3rem;font-size:.9rem}}</style></head><body><main><h1>{t}</h1>{body}</main>\
<footer><p><a href=\"/verify\">Verify a licence file or evidence archive</a></p></footer></body></html>",
        t = escape(title)
    )
}

/// A page that sets a fresh CSRF cookie whose value its form echoes (double submit).
fn html_with_csrf(
    state: &AppState,
    status: StatusCode,
    title: &str,
    body_with_csrf: impl FnOnce(&str) -> String,
) -> Response {
    let csrf = quantus_infra::credentials::random_secret();
    let mut response = (status, Html(page(title, &body_with_csrf(&csrf)))).into_response();
    set_cookie(&mut response, state, CSRF_COOKIE, &csrf, 3600);
    let h = response.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'"),
    );
    response
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let mut r = (
        status,
        Html(page(
            "Cannot continue",
            &format!("<p class=\"error\">{}</p>", escape(message)),
        )),
    )
        .into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn csrf_ok(headers: &HeaderMap, form: &BTreeMap<String, String>) -> bool {
    match (cookie(headers, CSRF_COOKIE), form.get("csrf")) {
        (Some(c), Some(f)) => c.len() == f.len() && bool::from(c.as_bytes().ct_eq(f.as_bytes())),
        _ => false,
    }
}

/// A form posted by one of the pages: parsed, with its CSRF double submit checked. The error
/// is the page to answer with.
#[allow(clippy::result_large_err)]
fn page_form(headers: &HeaderMap, body: &[u8]) -> Result<BTreeMap<String, String>, Response> {
    let Ok(form) = parse_form(body) else {
        return Err(error_page(StatusCode::BAD_REQUEST, "malformed form"));
    };
    if !csrf_ok(headers, &form) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            "the form expired; go back and try again",
        ));
    }
    Ok(form)
}

/// A sign-in step's form and where the browser goes after it.
#[allow(clippy::result_large_err)]
fn sign_in_form(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(BTreeMap<String, String>, Continuation), Response> {
    let form = page_form(headers, body)?;
    let Some(continuation) = form
        .get("continue")
        .and_then(|c| open_continuation(state, c))
    else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "the sign-in request is invalid",
        ));
    };
    Ok((form, continuation))
}

fn seal_continuation(state: &AppState, c: &Continuation) -> String {
    serde_json::to_vec(c)
        .ok()
        .and_then(|b| {
            state
                .identity
                .subject_keys()
                .seal_blob("continuation", &b)
                .ok()
        })
        .unwrap_or_default()
}

fn open_continuation(state: &AppState, sealed: &str) -> Option<Continuation> {
    let b = state
        .identity
        .subject_keys()
        .open_blob("continuation", sealed)
        .ok()?;
    serde_json::from_slice(&b).ok()
}

pub(crate) fn login_page(
    state: &AppState,
    continuation: &Continuation,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let sealed = seal_continuation(state, continuation);
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    html_with_csrf(state, status, "Sign in", |csrf| {
        format!(
            "{error}<form method=\"post\" action=\"/oauth2/login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"continue\" value=\"{c}\">\
<label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required>\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<details><summary>Your address is in more than one organization?</summary>\
<label for=\"organization\">Organization id (for applications of the whole platform)</label>\
<input id=\"organization\" name=\"organization\" autocomplete=\"off\"></details>\
<button type=\"submit\">Sign in</button></form>{passkey}",
            c = escape(&sealed),
            passkey = passkey_form("/oauth2/login/passkey", csrf, &sealed, None),
        )
    })
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A redirect to the client with `params`, `state` and `iss` (RFC 9207).
fn to_client(
    state: &AppState,
    redirect_uri: &str,
    params: &[(&str, &str)],
    st: Option<&str>,
) -> Response {
    let mut url = match url::Url::parse(redirect_uri) {
        Ok(u) => u,
        Err(_) => return error_page(StatusCode::BAD_REQUEST, "the redirect URI is invalid"),
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = st {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &state.issuer);
    }
    redirect(url.as_str())
}

fn error_to_client(state: &AppState, req: &AuthorizationRequest, e: OAuthError) -> Response {
    to_client(
        state,
        &req.redirect_uri,
        &[("error", e.error), ("error_description", &e.description)],
        req.state.as_deref(),
    )
}

/// The authorization endpoint (RFC 6749 §3.1, OpenID Connect Core §3.1.2) for a person's
/// browser: answers the sign-in, second-factor and consent pages, then redirects to the
/// client's `redirect_uri` with `code`, `state` and `iss` (RFC 9207), or an error.
#[utoipa::path(get, path = "/oauth2/authorize", tag = "oauth",
    params(wire::AuthorizationRequest),
    responses((status = 200, description = "a page for the person (sign-in, second factor, consent)", content_type = "text/html"),
        (status = 303, description = "back to the client's redirect_uri with the code or the error"),
        (status = 400, description = "an error page when the client or redirect_uri cannot be trusted (never redirected)", content_type = "text/html")))]
pub async fn authorize(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut map = BTreeMap::new();
    for (k, v) in params {
        if map.insert(k.clone(), v).is_some() {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("parameter {k} is repeated"),
            );
        }
    }
    authorize_params(state, peer, headers, map).await
}

pub async fn authorize_form(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match parse_form(&body) {
        Ok(map) => authorize_params(state, peer, headers, map).await,
        Err(e) => error_page(StatusCode::BAD_REQUEST, &e.description),
    }
}

async fn authorize_params(
    state: AppState,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    map: BTreeMap<String, String>,
) -> Response {
    let req = if let Some(uri) = map.get("request_uri") {
        let Some(client_id) = map.get("client_id") else {
            return error_page(StatusCode::BAD_REQUEST, "client_id is missing");
        };
        let req = match state.identity.open_par_uri(uri, client_id, Utc::now()) {
            Ok(r) => r,
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.description),
        };
        // One use per pushed request (RFC 9126 §4): its PKCE challenge belongs to one flow.
        let digest = quantus_domain::identity::grant::digest(uri);
        match state.bus.repository().claim_once("par", &digest).await {
            Ok(true) => req,
            Ok(false) => {
                return error_page(StatusCode::BAD_REQUEST, "request_uri was already used")
            }
            Err(e) => return crate::Problem::from(e).into_response(),
        }
    } else {
        let req = match state.identity.check_authorization_request(&map).await {
            Ok(Ok((req, client))) => {
                if client.require_par {
                    return error_to_client(
                        &state,
                        &req,
                        OAuthError::invalid_request(
                            "this client must use pushed authorization requests",
                        ),
                    );
                }
                req
            }
            Ok(Err(e)) => return error_page(StatusCode::BAD_REQUEST, &e.description),
            Err((e, st)) => {
                // Only reached once the redirect URI is known to be the client's.
                let redirect_uri = map.get("redirect_uri").cloned().unwrap_or_default();
                return to_client(
                    &state,
                    &redirect_uri,
                    &[("error", e.error), ("error_description", &e.description)],
                    st.as_deref(),
                );
            }
        };
        req
    };
    continue_authorization(&state, peer, &headers, req, false).await
}

/// After the request is valid: sign in if needed, ask consent if needed, then issue the code.
async fn continue_authorization(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    req: AuthorizationRequest,
    just_signed_in: bool,
) -> Response {
    let prompt: BTreeSet<&str> = req
        .prompt
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .collect();
    let session = current_session(state, headers).await;
    let too_old = |s: &LiveSession| {
        req.max_age
            .is_some_and(|m| (Utc::now() - s.auth_time).num_seconds() > m)
    };
    let session = match session {
        Some(s) if (!prompt.contains("login") || just_signed_in) && !too_old(&s) => s,
        _ if prompt.contains("none") => {
            return error_to_client(
                state,
                &req,
                OAuthError::new("login_required", "the user is not signed in"),
            )
        }
        _ => return login_page(state, &Continuation::Authorize(req), None, StatusCode::OK),
    };
    let client_org = match state.identity.client(&req.client_id).await {
        Ok((c, _)) => c
            .registration
            .map(|r| r.organization_id)
            .unwrap_or_default(),
        Err(e) => return crate::Problem::from(e).into_response(),
    };
    match state
        .identity
        .may_use_client(&session.user_id, &client_org)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return error_to_client(
                state,
                &req,
                OAuthError::new(
                    "access_denied",
                    "this application belongs to another organization",
                ),
            )
        }
        Err(e) => return crate::Problem::from(e).into_response(),
    }
    // Conditional access, and the authentication context the client asks for (acr_values):
    // a session too weak for either steps up with a second factor, if the person has one.
    let ctx_user = ctx(
        &session.organization_id,
        Actor {
            kind: ActorKind::User,
            id: session.user_id.clone(),
        },
    );
    let decision = match state
        .identity
        .decide_authorization(
            &ctx_user,
            &session,
            &req.client_id,
            &request_info(headers, peer),
        )
        .await
    {
        Ok(d) => d,
        Err(e) => return crate::Problem::from(e).into_response(),
    };
    if decision.outcome == Outcome::Block {
        return error_to_client(
            state,
            &req,
            OAuthError::new(
                "access_denied",
                format!(
                    "blocked by the organization's access policy ({})",
                    decision.reason
                ),
            ),
        );
    }
    let strength = Strength::of_amr(&session.amr);
    let asked = req
        .acr_values
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter_map(Strength::of_acr)
        .min();
    let by_policy = match decision.outcome {
        Outcome::RequireMfa => Some(Strength::Mfa),
        Outcome::RequirePasskey => Some(Strength::Passkey),
        _ => None,
    };
    let needed = asked.max(by_policy);
    if let Some(needed) = needed.filter(|n| strength < *n) {
        let has_totp = state
            .identity
            .mfa()
            .totp_enrolled(&session.user_id)
            .await
            .unwrap_or(false);
        if needed == Strength::Mfa && has_totp && !prompt.contains("none") {
            return match state.identity.step_up(&session, &req.client_id, Utc::now()) {
                Ok(pending) => second_factor_page(
                    state,
                    &Continuation::Authorize(req),
                    &pending,
                    None,
                    StatusCode::OK,
                ),
                Err(e) => crate::Problem::from(e).into_response(),
            };
        }
        let description = if by_policy.is_some_and(|p| strength < p) {
            format!(
                "the organization's access policy needs a stronger sign-in ({})",
                decision.reason
            )
        } else {
            format!("the sign-in cannot reach {}", needed.acr())
        };
        return error_to_client(
            state,
            &req,
            OAuthError::new("unmet_authentication_requirements", description),
        );
    }
    let consent = match state
        .identity
        .consent(&session.user_id, &req.client_id)
        .await
    {
        Ok(c) => c,
        Err(e) => return crate::Problem::from(e).into_response(),
    };
    if !consent.covers(&req.scope) || prompt.contains("consent") {
        if prompt.contains("none") {
            return error_to_client(
                state,
                &req,
                OAuthError::new("consent_required", "the user has not consented"),
            );
        }
        return consent_page(state, &req).await;
    }
    let ctx = ctx(
        &session.organization_id,
        Actor {
            kind: ActorKind::User,
            id: session.user_id.clone(),
        },
    );
    match state
        .identity
        .issue_code(&ctx, &req, &session, request_info(headers, peer))
        .await
    {
        Ok(code) => to_client(
            state,
            &req.redirect_uri,
            &[("code", &code)],
            req.state.as_deref(),
        ),
        Err(e) => crate::Problem::from(e).into_response(),
    }
}

async fn consent_page(state: &AppState, req: &AuthorizationRequest) -> Response {
    let name = state
        .identity
        .client(&req.client_id)
        .await
        .ok()
        .and_then(|(c, _)| c.registration.map(|r| r.name))
        .unwrap_or_else(|| req.client_id.clone());
    let sealed = seal_continuation(state, &Continuation::Authorize(req.clone()));
    let scopes: String = req
        .scope
        .iter()
        .map(|s| format!("<li>{}</li>", escape(s)))
        .collect();
    html_with_csrf(state, StatusCode::OK, "Allow access?", |csrf| {
        format!(
            "<p><strong>{n}</strong> asks to:</p><ul id=\"scopes\">{scopes}</ul>\
<form method=\"post\" action=\"/oauth2/consent\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"continue\" value=\"{c}\">\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
            n = escape(&name),
            c = escape(&sealed)
        )
    })
}

pub async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (form, continuation) = match sign_in_form(&state, &headers, &body) {
        Ok(f) => f,
        Err(response) => return response,
    };
    let email = form.get("email").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let organization = sign_in_organization(&state, &continuation, &form).await;
    let user_id = state
        .identity
        .find_sign_in(organization.as_deref(), &email)
        .await
        .ok()
        .flatten();
    let client_id = match &continuation {
        Continuation::Authorize(r) => Some(r.client_id.clone()),
        Continuation::Device { .. } | Continuation::Saml { .. } => None,
    };
    let ctx = ctx(PLATFORM_TENANT, anonymous());
    let outcome = state
        .identity
        .sign_in(
            &ctx,
            &email,
            user_id,
            password,
            client_id,
            request_info(&headers, peer),
        )
        .await;
    state
        .metrics
        .signed_in(crate::metrics::SignInMethod::Password, &outcome);
    let signed_in = match outcome {
        Ok(Ok(s)) => s,
        // One message for every failure: it must not tell whether the account exists.
        Ok(Err(SignInRefusal::Invalid)) => {
            return login_page(
                &state,
                &continuation,
                Some("Wrong email or password."),
                StatusCode::UNAUTHORIZED,
            )
        }
        Ok(Err(SignInRefusal::Locked(_))) => {
            return login_page(
                &state,
                &continuation,
                Some("Too many failed attempts. Try again later."),
                StatusCode::TOO_MANY_REQUESTS,
            )
        }
        Ok(Err(SignInRefusal::SecondFactor(pending))) => {
            return second_factor_page(&state, &continuation, &pending, None, StatusCode::OK)
        }
        Ok(Err(SignInRefusal::Blocked(reason))) => {
            return login_page(&state, &continuation, Some(&reason), StatusCode::FORBIDDEN)
        }
        Err(e) => return crate::Problem::from(e).into_response(),
    };
    finish_sign_in(&state, peer, &headers, continuation, signed_in).await
}

/// Which organization's account a password sign-in uses (emails are unique per
/// organization): the organization of the client the person signs in to (the OAuth client,
/// the device grant's client, the SAML service provider). A platform-wide client (the
/// consoles) takes the organization the person typed, or none: then the address must belong
/// to one account on the platform (see docs/identity.md, "Which account signs in").
async fn sign_in_organization(
    state: &AppState,
    continuation: &Continuation,
    form: &BTreeMap<String, String>,
) -> Option<String> {
    let client_org = |client_id: String| async move {
        state
            .identity
            .client(&client_id)
            .await
            .ok()
            .and_then(|(c, _)| c.registration.map(|r| r.organization_id))
    };
    let of_client = match continuation {
        Continuation::Authorize(r) => client_org(r.client_id.clone()).await,
        Continuation::Device { user_code } => {
            match state
                .identity
                .device_by_user_code(user_code, Utc::now())
                .await
            {
                Ok(Some((_, grant))) => client_org(grant.client_id).await,
                _ => None,
            }
        }
        Continuation::Saml { organization, .. } => organization.clone(),
    };
    match of_client {
        Some(org) if org != PLATFORM_TENANT => Some(org),
        _ => form
            .get("organization")
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty()),
    }
}

/// The page asking for the code of the person's authenticator app (or a recovery code).
fn second_factor_page(
    state: &AppState,
    continuation: &Continuation,
    pending: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let sealed = seal_continuation(state, continuation);
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    html_with_csrf(state, status, "Two-step verification", |csrf| {
        format!(
            "{error}<form method=\"post\" action=\"/oauth2/login/second-factor\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"continue\" value=\"{c}\">\
<input type=\"hidden\" name=\"pending\" value=\"{p}\">\
<label for=\"code\">Code from your authenticator app, or a recovery code</label>\
<input id=\"code\" name=\"code\" autocomplete=\"one-time-code\" required autofocus>\
<button type=\"submit\">Verify</button></form>{passkey}",
            c = escape(&sealed),
            p = escape(pending),
            passkey = passkey_form("/oauth2/login/second-factor", csrf, &sealed, Some(pending)),
        )
    })
}

/// A hidden form the passkey script fills with the authenticator's answer, and its button.
fn passkey_form(action: &str, csrf: &str, continuation: &str, pending: Option<&str>) -> String {
    let pending = pending
        .map(|p| {
            format!(
                "<input type=\"hidden\" name=\"pending\" value=\"{}\">",
                escape(p)
            )
        })
        .unwrap_or_default();
    format!(
        "<form id=\"passkey-form\" method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"continue\" value=\"{c}\">{pending}\
<input type=\"hidden\" name=\"ceremony\" value=\"\"><input type=\"hidden\" name=\"credential\" value=\"\">\
<button type=\"button\" data-passkey data-form=\"passkey-form\">Use a passkey</button></form>\
<p id=\"passkey-status\" class=\"error\" role=\"status\"></p><script src=\"/oauth2/passkey.js\"></script>",
        c = escape(continuation)
    )
}

pub async fn passkey_script() -> Response {
    let mut r = (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("passkey.js"),
    )
        .into_response();
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct PasskeyOptionsBody {
    /// The sealed second-factor state, when the passkey is the second factor.
    #[serde(default)]
    pending: Option<String>,
}

/// WebAuthn options for the sign-in pages: discoverable credentials for a passkey-only
/// sign-in, or the person's own passkeys as their second factor.
pub async fn passkey_options(
    State(state): State<AppState>,
    crate::problem::ApiJson(body): crate::problem::ApiJson<PasskeyOptionsBody>,
) -> Response {
    let now = Utc::now();
    let passkeys = state.identity.passkeys();
    let result = match body.pending.filter(|p| !p.is_empty()) {
        Some(pending) => match state.identity.second_factor_user(&pending, now) {
            Some(user) => passkeys.second_factor_options(&user, now).await,
            None => Err(quantus_commands::CommandError::Invalid(
                "the sign-in expired; start again".into(),
            )),
        },
        None => passkeys.sign_in_options(now),
    };
    match result {
        Ok((options, ceremony)) => {
            let mut r = Json(serde_json::json!({ "options": options, "ceremony": ceremony }))
                .into_response();
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => crate::Problem::from(e).into_response(),
    }
}

/// A passkey-only sign-in.
pub async fn login_passkey(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (form, continuation) = match sign_in_form(&state, &headers, &body) {
        Ok(f) => f,
        Err(response) => return response,
    };
    let credential = form
        .get("credential")
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or(serde_json::Value::Null);
    let ceremony = form.get("ceremony").cloned().unwrap_or_default();
    let client_id = match &continuation {
        Continuation::Authorize(r) => Some(r.client_id.clone()),
        Continuation::Device { .. } => None,
        #[allow(unreachable_patterns)]
        _ => None,
    };
    let ctx = ctx(PLATFORM_TENANT, anonymous());
    let outcome = state
        .identity
        .sign_in_passkey(
            &ctx,
            &ceremony,
            credential,
            client_id,
            request_info(&headers, peer),
        )
        .await;
    state
        .metrics
        .signed_in(crate::metrics::SignInMethod::Passkey, &outcome);
    let signed_in = match outcome {
        Ok(Ok(s)) => s,
        Ok(Err(SignInRefusal::Blocked(reason))) => {
            return login_page(&state, &continuation, Some(&reason), StatusCode::FORBIDDEN)
        }
        Ok(Err(_)) => {
            return login_page(
                &state,
                &continuation,
                Some("The passkey was not accepted."),
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(e) => return crate::Problem::from(e).into_response(),
    };
    finish_sign_in(&state, peer, &headers, continuation, signed_in).await
}

pub async fn login_second_factor(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (form, continuation) = match sign_in_form(&state, &headers, &body) {
        Ok(f) => f,
        Err(response) => return response,
    };
    let pending = form.get("pending").cloned().unwrap_or_default();
    // A passkey's answer, or a code typed in.
    let proof = match form.get("credential").filter(|c| !c.is_empty()) {
        Some(c) => quantus_commands::identity::SecondFactorProof::Passkey {
            ceremony: form.get("ceremony").cloned().unwrap_or_default(),
            credential: serde_json::from_str(c).unwrap_or(serde_json::Value::Null),
        },
        None => quantus_commands::identity::SecondFactorProof::Code(
            form.get("code").cloned().unwrap_or_default(),
        ),
    };
    let ctx = ctx(PLATFORM_TENANT, anonymous());
    let outcome = state
        .identity
        .sign_in_second_factor(&ctx, &pending, proof, request_info(&headers, peer))
        .await;
    state
        .metrics
        .signed_in(crate::metrics::SignInMethod::SecondFactor, &outcome);
    let signed_in = match outcome {
        Ok(Ok(s)) => s,
        Ok(Err(SignInRefusal::Locked(_))) => {
            return login_page(
                &state,
                &continuation,
                Some("Too many failed attempts. Try again later."),
                StatusCode::TOO_MANY_REQUESTS,
            )
        }
        Ok(Err(SignInRefusal::Blocked(reason))) => {
            return login_page(&state, &continuation, Some(&reason), StatusCode::FORBIDDEN)
        }
        // A wrong or reused code: ask again (the sealed state stays valid until it expires).
        Ok(Err(_)) => {
            return second_factor_page(
                &state,
                &continuation,
                &pending,
                Some("That code is not valid. Try the next one."),
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(e) => return crate::Problem::from(e).into_response(),
    };
    finish_sign_in(&state, peer, &headers, continuation, signed_in).await
}

/// After a complete sign-in: the session cookie, and on to where the person was going.
async fn finish_sign_in(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    continuation: Continuation,
    signed_in: quantus_commands::identity::SignedIn,
) -> Response {
    let state = state.clone();
    let mut headers_after = headers.clone();
    headers_after.insert(
        axum::http::header::COOKIE,
        HeaderValue::from_str(&format!("{SESSION_COOKIE}={}", signed_in.cookie))
            .unwrap_or(HeaderValue::from_static("")),
    );
    let mut response = match continuation {
        Continuation::Authorize(req) => {
            continue_authorization(&state, peer, &headers_after, req, true).await
        }
        Continuation::Device { user_code } => redirect(&format!(
            "/device?user_code={}",
            url::form_urlencoded::byte_serialize(user_code.as_bytes()).collect::<String>()
        )),
        // Sealed by us, so it is our own path; checked again anyway.
        Continuation::Saml { resume, .. } if resume.starts_with("/saml/") => redirect(&resume),
        Continuation::Saml { .. } => {
            error_page(StatusCode::BAD_REQUEST, "the sign-in request is invalid")
        }
    };
    set_cookie(
        &mut response,
        &state,
        SESSION_COOKIE,
        &signed_in.cookie,
        quantus_commands::identity::SESSION_SECONDS,
    );
    response
}

pub async fn consent(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = match page_form(&headers, &body) {
        Ok(f) => f,
        Err(response) => return response,
    };
    let Some(Continuation::Authorize(req)) = form
        .get("continue")
        .and_then(|c| open_continuation(&state, c))
    else {
        return error_page(StatusCode::BAD_REQUEST, "the consent request is invalid");
    };
    let Some(session) = current_session(&state, &headers).await else {
        return login_page(&state, &Continuation::Authorize(req), None, StatusCode::OK);
    };
    if form.get("decision").map(String::as_str) != Some("allow") {
        return error_to_client(
            &state,
            &req,
            OAuthError::new("access_denied", "the user denied the request"),
        );
    }
    let ctx = ctx(
        &session.organization_id,
        Actor {
            kind: ActorKind::User,
            id: session.user_id.clone(),
        },
    );
    if let Err(e) = state
        .identity
        .grant_consent(
            &ctx,
            &session.user_id,
            &req.client_id,
            req.scope.clone(),
            request_info(&headers, peer),
        )
        .await
    {
        return crate::Problem::from(e).into_response();
    }
    continue_authorization(&state, peer, &headers, req, false).await
}

#[derive(Debug, Deserialize)]
pub struct DeviceQuery {
    user_code: Option<String>,
}

pub async fn device_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DeviceQuery>,
) -> Response {
    let code = q.user_code.unwrap_or_default();
    if current_session(&state, &headers).await.is_none() {
        return login_page(
            &state,
            &Continuation::Device { user_code: code },
            None,
            StatusCode::OK,
        );
    }
    device_form(&state, &code, None).await
}

async fn device_form(state: &AppState, code: &str, message: Option<&str>) -> Response {
    let pending = if code.is_empty() {
        None
    } else {
        state
            .identity
            .device_by_user_code(code, Utc::now())
            .await
            .ok()
            .flatten()
    };
    let message = message
        .map(|m| format!("<p role=\"status\">{}</p>", escape(m)))
        .unwrap_or_default();
    match pending {
        Some((_, grant)) => {
            let details = device_details(state, &grant).await;
            html_with_csrf(state, StatusCode::OK, "Connect a device", |csrf| {
                format!(
                    "{message}{details}<form method=\"post\" action=\"/device\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"user_code\" value=\"{c}\">\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
                    c = escape(code)
                )
            })
        }
        None => {
            let error = if code.is_empty() {
                String::new()
            } else {
                "<p class=\"error\" role=\"alert\">That code is not valid or has expired.</p>"
                    .into()
            };
            html_with_csrf(state, StatusCode::OK, "Connect a device", |csrf| {
                format!(
                    "{message}{error}<form method=\"get\" action=\"/device\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"user_code\">Code shown on the device</label><input id=\"user_code\" name=\"user_code\" autocomplete=\"off\" required>\
<button type=\"submit\">Continue</button></form>"
                )
            })
        }
    }
}

async fn device_details(state: &AppState, grant: &Grant) -> String {
    let name = state
        .identity
        .client(&grant.client_id)
        .await
        .ok()
        .and_then(|(c, _)| c.registration.map(|r| r.name))
        .unwrap_or_else(|| grant.client_id.clone());
    let scopes: String = grant
        .scope
        .iter()
        .map(|s| format!("<li>{}</li>", escape(s)))
        .collect();
    format!(
        "<p><strong>{}</strong> asks to:</p><ul id=\"scopes\">{scopes}</ul>",
        escape(&name)
    )
}

pub async fn device_decision(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = match page_form(&headers, &body) {
        Ok(f) => f,
        Err(response) => return response,
    };
    let code = form.get("user_code").cloned().unwrap_or_default();
    let Some(session) = current_session(&state, &headers).await else {
        return login_page(
            &state,
            &Continuation::Device { user_code: code },
            None,
            StatusCode::OK,
        );
    };
    let Ok(Some((grant_id, _))) = state.identity.device_by_user_code(&code, Utc::now()).await
    else {
        return device_form(&state, &code, None).await;
    };
    let Ok(Some((_, grant))) = state.identity.device_by_user_code(&code, Utc::now()).await else {
        return device_form(&state, &code, None).await;
    };
    let client_org = match state.identity.client(&grant.client_id).await {
        Ok((c, _)) => c
            .registration
            .map(|r| r.organization_id)
            .unwrap_or_default(),
        Err(e) => return crate::Problem::from(e).into_response(),
    };
    if !matches!(
        state
            .identity
            .may_use_client(&session.user_id, &client_org)
            .await,
        Ok(true)
    ) {
        return error_page(
            StatusCode::FORBIDDEN,
            "this device's application belongs to another organization",
        );
    }
    let approve = form.get("decision").map(String::as_str) == Some("allow");
    let ctx = ctx(
        &session.organization_id,
        Actor {
            kind: ActorKind::User,
            id: session.user_id.clone(),
        },
    );
    if let Err(e) = state
        .identity
        .decide_device(
            &ctx,
            &grant_id,
            &session,
            approve,
            request_info(&headers, peer),
        )
        .await
    {
        return crate::Problem::from(e).into_response();
    }
    let text = if approve {
        "Device connected. You can return to it now."
    } else {
        "Access denied. The device was not connected."
    };
    let mut r = (
        StatusCode::OK,
        Html(page(
            "Connect a device",
            &format!("<p role=\"status\" id=\"done\">{text}</p>"),
        )),
    )
        .into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): ends the QSA session after a
/// confirmation, unless a valid `id_token_hint` names the person signed in.
#[utoipa::path(get, path = "/oauth2/logout", tag = "oauth",
    params(("id_token_hint" = Option<String>, Query, description = "an ID token QSA issued to the client"),
        ("post_logout_redirect_uri" = Option<String>, Query, description = "registered for the client"),
        ("state" = Option<String>, Query), ("client_id" = Option<String>, Query)),
    responses((status = 200, description = "the confirmation or signed-out page", content_type = "text/html"),
        (status = 303, description = "to the post-logout redirect URI"),
        (status = 400, description = "an error page: the hint, client or redirect URI cannot be trusted", content_type = "text/html")))]
pub async fn logout(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    end_session(state, peer, headers, q, false).await
}

pub async fn logout_form(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(q): Form<BTreeMap<String, String>>,
) -> Response {
    // The confirmation page's own form: its CSRF token shows the person pressed "Sign out".
    let confirmed = q.get("confirm").is_some_and(|v| v == "yes") && csrf_ok(&headers, &q);
    end_session(state, peer, headers, q, confirmed).await
}

/// RP-initiated logout (OIDC RP-Initiated Logout 1.0): ends the session, revokes its grants,
/// and returns to a registered post-logout URI only.
///
/// Without a valid `id_token_hint` for the signed-in person, any site could sign people out
/// with a link (the session cookie is SameSite=Lax), so the person is asked first (§2).
async fn end_session(
    state: AppState,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    q: BTreeMap<String, String>,
    confirmed: bool,
) -> Response {
    let hint =
        match q.get("id_token_hint") {
            Some(token) => match state.identity.verify_id_token_hint(token, Utc::now()).await {
                Ok(hint) => Some(hint),
                Err(_) => return error_page(
                    StatusCode::BAD_REQUEST,
                    "The sign-out request's id_token_hint is not an ID token this server issued.",
                ),
            },
            None => None,
        };
    // §2: when both are given, client_id must be the hint's audience.
    if let (Some(hint), Some(client_id)) = (&hint, q.get("client_id")) {
        if *client_id != hint.client_id {
            return error_page(
                StatusCode::BAD_REQUEST,
                "client_id does not match the id_token_hint's audience.",
            );
        }
    }
    let client_id = hint
        .as_ref()
        .map(|h| h.client_id.clone())
        .or_else(|| q.get("client_id").cloned());
    let target = match (q.get("post_logout_redirect_uri"), &client_id) {
        (Some(uri), Some(id)) => match state.identity.client(id).await {
            Ok((c, _))
                if c.registration
                    .as_ref()
                    .is_some_and(|r| r.post_logout_redirect_uris.contains(uri)) =>
            {
                Some(uri.clone())
            }
            _ => None,
        },
        _ => None,
    };

    let info = request_info(&headers, peer);
    if let Some(session) = current_session(&state, &headers).await {
        let hinted = hint.as_ref().is_some_and(|h| h.subject == session.user_id);
        if !hinted && !confirmed {
            return confirm_sign_out(&state, &q, client_id.as_deref());
        }
        let ctx = ctx(
            &session.organization_id,
            Actor {
                kind: ActorKind::User,
                id: session.user_id.clone(),
            },
        );
        if let Err(e) = state
            .identity
            .revoke_session_grants(&ctx, &session.id, info.clone())
            .await
        {
            return crate::Problem::from(e).into_response();
        }
        if let Err(e) = state.identity.end_session(&ctx, &session.id, info).await {
            return crate::Problem::from(e).into_response();
        }
    }
    let mut response = match target {
        Some(uri) => {
            let mut url = url::Url::parse(&uri)
                .unwrap_or_else(|_| url::Url::parse("about:blank").expect("static URL"));
            if let Some(s) = q.get("state") {
                url.query_pairs_mut().append_pair("state", s);
            }
            redirect(url.as_str())
        }
        None => (
            StatusCode::OK,
            Html(page(
                "Signed out",
                "<p role=\"status\">You are signed out.</p>",
            )),
        )
            .into_response(),
    };
    set_cookie(&mut response, &state, SESSION_COOKIE, "", 0);
    response
}

/// "Sign out of Quantus?": the request's own parameters carried through one form.
fn confirm_sign_out(
    state: &AppState,
    q: &BTreeMap<String, String>,
    client_id: Option<&str>,
) -> Response {
    let mut hidden = String::new();
    for (name, value) in [
        (
            "post_logout_redirect_uri",
            q.get("post_logout_redirect_uri").map(String::as_str),
        ),
        ("client_id", client_id),
        ("state", q.get("state").map(String::as_str)),
    ] {
        if let Some(v) = value {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape(v)
            ));
        }
    }
    html_with_csrf(state, StatusCode::OK, "Sign out?", |csrf| {
        format!(
            "<p>Do you want to sign out of Quantus?</p>\
<form method=\"post\" action=\"/oauth2/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"confirm\" value=\"yes\">{hidden}\
<button type=\"submit\">Sign out</button></form>"
        )
    })
}

// ---- set-password invites ----

fn invite_form_page(
    state: &AppState,
    status: StatusCode,
    token: &str,
    error: Option<&str>,
) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let token = escape(token);
    html_with_csrf(state, status, "Set your password", |csrf| {
        format!(
            "{error}<form method=\"post\" action=\"/oauth2/invite\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"token\">Invitation code</label><input id=\"token\" name=\"token\" value=\"{token}\" autocomplete=\"off\" required>\
<label for=\"password\">New password (12 characters or more)</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" minlength=\"12\" required>\
<button type=\"submit\">Set password</button></form><script src=\"/oauth2/invite.js\"></script>"
        )
    })
}

/// The page an invite link opens (`/oauth2/invite#<code>`; the script fills the code in).
pub async fn invite_page(State(state): State<AppState>) -> Response {
    invite_form_page(&state, StatusCode::OK, "", None)
}

/// Sets the password through an invite: once, before it expires.
pub async fn invite_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = match page_form(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(invites) = &state.invites else {
        return error_page(StatusCode::NOT_FOUND, "invites are not enabled here");
    };
    let token = form.get("token").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let ctx = ctx(PLATFORM_TENANT, anonymous());
    match invites.accept(&ctx, &token, password).await {
        Ok(Ok(_)) => {
            let mut r = (
                StatusCode::OK,
                Html(page(
                    "Password set",
                    "<p>Your password is set. You can now sign in with your email address and it.</p>",
                )),
            )
                .into_response();
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Ok(Err(quantus_commands::invites::InviteRefusal::Password(m))) => {
            invite_form_page(&state, StatusCode::BAD_REQUEST, &token, Some(&m))
        }
        Ok(Err(quantus_commands::invites::InviteRefusal::InvalidLink)) => error_page(
            StatusCode::BAD_REQUEST,
            "This invitation is not valid: it was used, replaced by a newer one, or has expired. Ask your administrator for a new one.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "invite acceptance failed");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request could not be completed",
            )
        }
    }
}

pub async fn invite_script() -> Response {
    let mut r = (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("invite.js"),
    )
        .into_response();
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

// ---- wire formats of the endpoints above, as the OpenAPI document describes them ----

/// Documentation types only: the handlers read their forms as RFC 6749 and its extensions say,
/// into the command layer's own types.
pub mod wire {

    /// A token request (RFC 6749 §4.1.3, §4.4.2, §6; RFC 8628 §3.4); which members apply depends
    /// on `grant_type`.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct TokenRequest {
        /// `authorization_code`, `refresh_token`, `client_credentials` or
        /// `urn:ietf:params:oauth:grant-type:device_code`.
        grant_type: String,
        code: Option<String>,
        redirect_uri: Option<String>,
        /// PKCE (RFC 7636), required with a code.
        code_verifier: Option<String>,
        refresh_token: Option<String>,
        device_code: Option<String>,
        scope: Option<String>,
        client_id: Option<String>,
        client_secret: Option<String>,
        client_assertion_type: Option<String>,
        client_assertion: Option<String>,
    }

    /// RFC 6749 §5.1.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct TokenResponse {
        access_token: String,
        /// `Bearer`, or `DPoP` when the request carried a DPoP proof (RFC 9449 §5).
        token_type: String,
        expires_in: u64,
        refresh_token: Option<String>,
        /// With the `openid` scope.
        id_token: Option<String>,
        scope: String,
    }

    /// RFC 6749 §5.2 (also RFC 8628 §3.5's codes).
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct OAuthError {
        error: String,
        error_description: Option<String>,
    }

    /// Introspection and revocation requests (RFC 7662 §2.1, RFC 7009 §2.1).
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct TokenOnlyRequest {
        token: String,
        /// `access_token` or `refresh_token`; a hint only.
        token_type_hint: Option<String>,
    }

    /// RFC 7662 §2.2.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct IntrospectionResponse {
        active: bool,
        scope: Option<String>,
        client_id: Option<String>,
        sub: Option<String>,
        exp: Option<u64>,
        iat: Option<u64>,
        iss: Option<String>,
        /// `Bearer`, `DPoP` (a DPoP-bound access token) or `refresh_token`.
        token_type: Option<String>,
        /// RFC 9449 §6.2: `{"jkt": …}`, the thumbprint of the key a DPoP-bound token is bound to.
        #[schema(value_type = Option<Object>)]
        cnf: Option<serde_json::Value>,
    }

    /// An authorization request's parameters (RFC 6749 §4.1.1, OpenID Connect Core §3.1.2.1).
    #[derive(utoipa::ToSchema, utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    #[allow(dead_code)]
    pub struct AuthorizationRequest {
        /// `code`.
        response_type: Option<String>,
        client_id: String,
        redirect_uri: Option<String>,
        scope: Option<String>,
        state: Option<String>,
        nonce: Option<String>,
        /// PKCE S256 challenge, required.
        code_challenge: Option<String>,
        code_challenge_method: Option<String>,
        prompt: Option<String>,
        max_age: Option<u64>,
        acr_values: Option<String>,
        login_hint: Option<String>,
        /// RFC 9449 §10: binds the code to the DPoP key with this JWK SHA-256 thumbprint; only
        /// a token request with a proof by that key redeems it.
        dpop_jkt: Option<String>,
        /// From `/oauth2/par`.
        request_uri: Option<String>,
    }

    /// RFC 9126 §2.2.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct ParResponse {
        request_uri: String,
        expires_in: u64,
    }

    /// RFC 8628 §3.1.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct DeviceAuthorizationRequest {
        client_id: Option<String>,
        scope: Option<String>,
    }

    /// RFC 8628 §3.2.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct DeviceAuthorizationResponse {
        device_code: String,
        user_code: String,
        verification_uri: String,
        verification_uri_complete: String,
        expires_in: u64,
        interval: u64,
    }
}
