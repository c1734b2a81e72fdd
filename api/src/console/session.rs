//! Signing in to a console through QSA, the server-side session, and signing out.
//!
//! Sign-in is the authorization code flow with PKCE (S256), `state` and `nonce` kept in a
//! short-lived sealed cookie; the code is redeemed by the console as a confidential client.
//! The tokens go into a [`ConsoleSessions`](quantus_infra::console_sessions::ConsoleSessions)
//! row; the browser gets `<id>.<secret>` in an HttpOnly, SameSite=Lax cookie scoped to the
//! console's path. Sign-out revokes the grant, deletes the row and ends the QSA session
//! (RP-initiated logout with `id_token_hint`).

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::ServiceExt as _;

use super::api::Api;
use super::{render, Chrome, Console, ConsoleClient, ConsoleInfo, Kit, Layout, PageError, UserBox};
use crate::AppState;

/// How long a console session lasts at most, whatever the refresh token would allow: a
/// working day, then QSA is asked again (which may need no typing if its session lives).
const SESSION_HOURS: i64 = 12;
/// How long a started sign-in may take.
const FLOW_SECONDS: i64 = 600;

pub fn routes<C: Console>() -> Router<AppState> {
    let base = C::info().base;
    Router::new()
        .route(&format!("{base}/sign-in"), get(sign_in::<C>))
        .route(&format!("{base}/callback"), get(callback::<C>))
        .route(&format!("{base}/sign-out"), post(sign_out::<C>))
        .route(&format!("{base}/signed-out"), get(signed_out::<C>))
}

/// What a session row holds (sealed): the person's tokens and who they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionData {
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    /// Unix seconds.
    access_expires_at: i64,
    pub sub: String,
    pub name: String,
    pub email: String,
    /// The organization the person acts in.
    pub organization: String,
    /// The scopes the access token carries (pages offer only what the API would allow).
    pub scopes: BTreeSet<String>,
    /// The synchronizer token every form of this session must echo.
    pub csrf: String,
    /// The person's roles in that organization (the access token's `roles`), so every
    /// console can offer the QSA console to its security administrators.
    #[serde(default)]
    pub roles: BTreeSet<String>,
}

/// A signed-in person of console `C`: the extractor redirects to sign-in when there is no
/// live session, and refreshes the access token when it is about to expire.
pub struct SignedIn<C: Console> {
    pub session: SessionData,
    id: String,
    kit: Kit,
    _console: PhantomData<C>,
}

impl<C: Console> SignedIn<C> {
    /// The `/v1` API as this person.
    pub fn api(&self) -> Api {
        let layout = self.layout("", "");
        Api::new(
            self.kit.api.clone(),
            self.session.access_token.clone(),
            C::info(),
            layout.user.map(|user| Chrome {
                user,
                scopes: layout.scopes,
            }),
        )
    }

    /// The claims of the ID token this session was signed in with (`amr`, `auth_time`, ...).
    pub fn id_claims(&self) -> serde_json::Value {
        self.session
            .id_token
            .as_deref()
            .and_then(claims_of)
            .unwrap_or_default()
    }

    /// QSA's public URL (the issuer).
    pub fn issuer(&self) -> &str {
        &self.kit.issuer
    }

    pub fn may(&self, scope: &str) -> bool {
        self.session.scopes.contains(scope)
    }

    /// The page chrome for this person.
    pub fn layout(&self, title: impl Into<String>, current: &'static str) -> Layout {
        Layout {
            title: title.into(),
            console: C::info(),
            current,
            user: Some(UserBox {
                name: if self.session.name.is_empty() {
                    self.session.email.clone()
                } else {
                    self.session.name.clone()
                },
                organization: self.session.organization.clone(),
                csrf: self.session.csrf.clone(),
                security_admin: super::is_security_admin(&self.session.roles),
            }),
            notice: None,
            scopes: self.session.scopes.clone(),
        }
    }

    fn check_csrf(&self, presented: Option<&str>) -> Result<(), PageError> {
        let ok = presented.is_some_and(|p| {
            p.len() == self.session.csrf.len()
                && bool::from(p.as_bytes().ct_eq(self.session.csrf.as_bytes()))
        });
        if ok {
            Ok(())
        } else {
            Err(PageError::new(
                C::info(),
                StatusCode::FORBIDDEN,
                "The form expired",
                "the form was not sent from this session; go back, reload the page and try again",
            ))
        }
    }
}

fn cookie_name<C: Console>() -> String {
    format!("quantus_{}", key::<C>())
}

fn flow_cookie_name<C: Console>() -> String {
    format!("quantus_{}_flow", key::<C>())
}

/// The console's short name (`portal`), from its base path.
fn key<C: Console>() -> &'static str {
    C::info().base.trim_start_matches('/')
}

fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie<C: Console>(
    response: &mut Response,
    kit: &Kit,
    name: &str,
    value: &str,
    max_age: i64,
) {
    let c = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        C::info().base,
        if kit.secure() { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        response.headers_mut().append(SET_COOKIE, v);
    }
}

pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// Only a path inside the console may be returned to (no open redirect).
fn safe_return<C: Console>(to: Option<&str>) -> String {
    let base = C::info().base;
    match to {
        Some(t)
            if (t == base || t.starts_with(&format!("{base}/")))
                && !t.contains("//")
                && !t.contains('\\') =>
        {
            t.to_owned()
        }
        _ => format!("{base}/"),
    }
}

fn kit_of(parts: &Parts, info: &'static ConsoleInfo) -> Result<Kit, PageError> {
    parts
        .extensions
        .get::<Kit>()
        .cloned()
        .ok_or_else(|| PageError::internal(info))
}

/// The browser's address and user agent, passed on to QSA so its audit events name them.
#[derive(Clone, Default)]
struct Origin {
    peer: Option<ConnectInfo<SocketAddr>>,
    user_agent: Option<HeaderValue>,
}

impl Origin {
    fn of(headers: &HeaderMap, extensions: &axum::http::Extensions) -> Self {
        Self {
            peer: extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
            user_agent: headers.get(USER_AGENT).cloned(),
        }
    }
}

impl<C: Console> FromRequestParts<AppState> for SignedIn<C> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Response> {
        let info = C::info();
        let kit = kit_of(parts, info).map_err(IntoResponse::into_response)?;
        // Back to this page after signing in (for reads; a form is posted again by hand).
        let here = (parts.method == Method::GET)
            .then(|| parts.uri.path_and_query().map(|p| p.as_str().to_owned()))
            .flatten();
        let to_sign_in = || {
            let mut url = format!("{}/sign-in", info.base);
            if let Some(h) = &here {
                url.push_str("?return_to=");
                url.extend(url::form_urlencoded::byte_serialize(h.as_bytes()));
            }
            redirect(&url)
        };
        let Some(cookie) = read_cookie(&parts.headers, &cookie_name::<C>()) else {
            return Err(to_sign_in());
        };
        let now = Utc::now();
        let stored = match kit.sessions.find(key::<C>(), &cookie, now).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(to_sign_in()),
            Err(e) => {
                tracing::error!(error = %e, "reading a console session failed");
                return Err(PageError::internal(info).into_response());
            }
        };
        let Ok(mut session) = serde_json::from_slice::<SessionData>(&stored.plain) else {
            return Err(to_sign_in());
        };
        if session.access_expires_at - kit.clients.refresh_early_seconds <= now.timestamp() {
            let origin = Origin::of(&parts.headers, &parts.extensions);
            session = match refresh::<C>(&kit, &stored, session, &origin).await {
                Some(s) => s,
                None => {
                    // The grant is gone (revoked, expired, signed out elsewhere).
                    let _ = kit.sessions.delete(&stored.id).await;
                    return Err(to_sign_in());
                }
            };
        }
        Ok(SignedIn {
            session,
            id: stored.id,
            kit,
            _console: PhantomData,
        })
    }
}

/// New tokens from the refresh token. Only the request that claims the row's next version
/// asks QSA (a refresh token works once; presenting it twice would revoke the grant); others
/// wait for its tokens.
async fn refresh<C: Console>(
    kit: &Kit,
    stored: &quantus_infra::console_sessions::StoredSession,
    session: SessionData,
    origin: &Origin,
) -> Option<SessionData> {
    match kit.sessions.claim(&stored.id, stored.version).await {
        Ok(true) => {}
        Ok(false) => return refreshed_by_another(kit, stored, session).await,
        Err(e) => {
            tracing::error!(error = %e, "claiming a console session's refresh failed");
            return None;
        }
    }
    let client = C::client(&kit.clients)?;
    let refresh_token = session.refresh_token.clone()?;
    let tokens = token_request(
        kit,
        client,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ],
        origin,
    )
    .await;
    let tokens = match tokens {
        Ok(t) => t,
        Err(e) => {
            // The grant is gone (revoked, expired, signed out elsewhere).
            tracing::info!(error = %e, "a console session's refresh was refused");
            return None;
        }
    };
    let updated = SessionData {
        access_expires_at: Utc::now().timestamp() + tokens.expires_in,
        scopes: scopes_of(&tokens.access_token).unwrap_or(session.scopes.clone()),
        roles: roles_of(&tokens.access_token).unwrap_or(session.roles.clone()),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token.or(session.refresh_token),
        id_token: tokens.id_token.or(session.id_token),
        ..session
    };
    let plain = serde_json::to_vec(&updated).ok()?;
    match kit
        .sessions
        .replace(&stored.id, stored.version + 1, &plain)
        .await
    {
        Ok(true) => Some(updated),
        Ok(false) => None,
        Err(e) => {
            tracing::error!(error = %e, "storing refreshed console tokens failed");
            None
        }
    }
}

/// Another request claimed the refresh: its tokens, once stored (a few seconds at most), or
/// this request's own while they still work.
async fn refreshed_by_another(
    kit: &Kit,
    stored: &quantus_infra::console_sessions::StoredSession,
    session: SessionData,
) -> Option<SessionData> {
    for _ in 0..100 {
        let again = kit.sessions.reload(&stored.id).await.ok()??;
        if again.version >= stored.version + 2 {
            return serde_json::from_slice(&again.plain).ok();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (session.access_expires_at > Utc::now().timestamp()).then_some(session)
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    expires_in: i64,
}

#[derive(Debug, Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// A request to QSA's token-style endpoints as the console's confidential client
/// (client_secret_basic), through the same router outside clients reach (in QSA's process) or
/// to QSA over HTTP (elsewhere).
async fn oauth_post(
    kit: &Kit,
    client: &ConsoleClient,
    endpoint: &str,
    form: &[(&str, &str)],
    origin: &Origin,
) -> Result<(StatusCode, axum::body::Bytes), String> {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = STANDARD.encode(format!(
        "{}:{}",
        enc(&client.client_id),
        enc(&client.client_secret.0)
    ));
    let mut request = axum::http::Request::builder()
        .method(Method::POST)
        .uri(endpoint)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::from(body))
        .map_err(|e| e.to_string())?;
    if let Some(ua) = &origin.user_agent {
        request.headers_mut().insert(USER_AGENT, ua.clone());
    }
    if let Some(peer) = origin.peer {
        request.extensions_mut().insert(peer);
    }
    let response = kit
        .oauth
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, bytes))
}

/// The token endpoint; an error is QSA's `error_description` (or `error`).
async fn token_request(
    kit: &Kit,
    client: &ConsoleClient,
    form: &[(&str, &str)],
    origin: &Origin,
) -> Result<TokenResponse, String> {
    let (status, bytes) = oauth_post(kit, client, "/oauth2/token", form, origin).await?;
    if status.is_success() {
        serde_json::from_slice(&bytes).map_err(|e| format!("QSA's answer was unreadable: {e}"))
    } else {
        let e: OAuthErrorBody =
            serde_json::from_slice(&bytes).map_err(|_| format!("QSA answered {status}"))?;
        Err(e.error_description.unwrap_or(e.error))
    }
}

/// The claims of a JWT this console received straight from QSA's token endpoint (over the
/// same process or TLS, so its origin is known: OIDC Core §3.1.3.7 lets a client skip the
/// signature there). The API checks access tokens fully on every call.
fn claims_of(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

fn scopes_of(access_token: &str) -> Option<BTreeSet<String>> {
    let claims = claims_of(access_token)?;
    Some(
        claims["scope"]
            .as_str()?
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

fn roles_of(access_token: &str) -> Option<BTreeSet<String>> {
    let claims = claims_of(access_token)?;
    Some(
        claims["roles"]
            .as_array()?
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect(),
    )
}

/// The sign-in in progress, sealed into a cookie for the trip to QSA and back.
#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    state: String,
    verifier: String,
    nonce: String,
    return_to: String,
    expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct SignInQuery {
    return_to: Option<String>,
}

async fn sign_in<C: Console>(
    State(state): State<AppState>,
    axum::Extension(kit): axum::Extension<Kit>,
    Query(q): Query<SignInQuery>,
) -> Response {
    let info = C::info();
    let Some(client) = C::client(&kit.clients) else {
        return PageError::internal(info).into_response();
    };
    let flow = Flow {
        state: quantus_infra::credentials::random_secret(),
        verifier: quantus_infra::credentials::random_secret(),
        nonce: quantus_infra::credentials::random_secret(),
        return_to: safe_return::<C>(q.return_to.as_deref()),
        expires_at: Utc::now().timestamp() + FLOW_SECONDS,
    };
    let sealed = match serde_json::to_vec(&flow)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            state
                .identity
                .subject_keys()
                .seal_blob(&format!("console-flow:{}", key::<C>()), &b)
                .map_err(|e| e.to_string())
        }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "sealing a console sign-in failed");
            return PageError::internal(info).into_response();
        }
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(flow.verifier.as_bytes()));
    let redirect_uri = format!("{}{}/callback", kit.public_url, info.base);
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", client.client_id.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("scope", client.scope.as_str()),
            ("state", flow.state.as_str()),
            ("nonce", flow.nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let mut response = redirect(&format!("{}/oauth2/authorize?{query}", kit.issuer));
    set_cookie::<C>(
        &mut response,
        &kit,
        &flow_cookie_name::<C>(),
        &sealed,
        FLOW_SECONDS,
    );
    response
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn sign_in_failed<C: Console>(status: StatusCode, detail: impl Into<String>) -> Response {
    let mut e = PageError::new(C::info(), status, "Sign-in did not complete", detail);
    e.sign_in = true;
    e.into_response()
}

async fn callback<C: Console>(
    State(state): State<AppState>,
    axum::Extension(kit): axum::Extension<Kit>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let info = C::info();
    let origin = Origin::of(&headers, request.extensions());
    let Ok(Query(q)) = Query::<CallbackQuery>::try_from_uri(request.uri()) else {
        return sign_in_failed::<C>(StatusCode::BAD_REQUEST, "the answer from QSA was malformed");
    };
    let Some(client) = C::client(&kit.clients) else {
        return PageError::internal(info).into_response();
    };
    let flow: Option<Flow> = read_cookie(&headers, &flow_cookie_name::<C>())
        .and_then(|sealed| {
            state
                .identity
                .subject_keys()
                .open_blob(&format!("console-flow:{}", key::<C>()), &sealed)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|f: &Flow| f.expires_at > Utc::now().timestamp());
    let Some(flow) = flow else {
        return sign_in_failed::<C>(
            StatusCode::BAD_REQUEST,
            "this sign-in expired or was started in another browser; sign in again",
        );
    };
    // The answer must be to the request this browser started (CSRF on the callback).
    let same_state = q.state.as_deref().is_some_and(|s| {
        s.len() == flow.state.len() && bool::from(s.as_bytes().ct_eq(flow.state.as_bytes()))
    });
    if !same_state {
        return sign_in_failed::<C>(
            StatusCode::BAD_REQUEST,
            "this answer belongs to another sign-in; sign in again",
        );
    }
    // RFC 9207: the answer names the issuer it came from.
    if q.iss.as_deref() != Some(kit.issuer.as_str()) {
        return sign_in_failed::<C>(
            StatusCode::BAD_REQUEST,
            "the answer did not come from this platform's QSA",
        );
    }
    if let Some(error) = q.error {
        return sign_in_failed::<C>(StatusCode::FORBIDDEN, q.error_description.unwrap_or(error));
    }
    let Some(code) = q.code else {
        return sign_in_failed::<C>(StatusCode::BAD_REQUEST, "QSA sent no code");
    };
    let redirect_uri = format!("{}{}/callback", kit.public_url, info.base);
    let tokens = match token_request(
        &kit,
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &flow.verifier),
        ],
        &origin,
    )
    .await
    {
        Ok(t) => t,
        Err(detail) => return sign_in_failed::<C>(StatusCode::BAD_GATEWAY, detail),
    };
    // The ID token must be for this console and this sign-in (nonce).
    let id_claims = tokens.id_token.as_deref().and_then(claims_of);
    let id_ok = id_claims.as_ref().is_some_and(|c| {
        c["iss"].as_str() == Some(kit.issuer.as_str())
            && (c["aud"].as_str() == Some(client.client_id.as_str())
                || c["aud"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(&client.client_id))))
            && c["nonce"].as_str() == Some(flow.nonce.as_str())
    });
    let access = claims_of(&tokens.access_token);
    let (Some(id_claims), true, Some(access)) = (id_claims, id_ok, access) else {
        return sign_in_failed::<C>(
            StatusCode::BAD_GATEWAY,
            "QSA's ID token did not match this sign-in",
        );
    };
    let who = userinfo(&kit, &tokens.access_token)
        .await
        .unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let session = SessionData {
        sub: text(&id_claims, "sub"),
        name: text(&who, "name"),
        email: text(&who, "email"),
        organization: text(&access, "org"),
        scopes: scopes_of(&tokens.access_token).unwrap_or_default(),
        roles: roles_of(&tokens.access_token).unwrap_or_default(),
        csrf: quantus_infra::credentials::random_secret(),
        access_expires_at: Utc::now().timestamp() + tokens.expires_in,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        id_token: tokens.id_token,
    };
    let expires = Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    let cookie = match serde_json::to_vec(&session) {
        Ok(plain) => kit.sessions.create(key::<C>(), &plain, expires).await,
        Err(e) => Err(quantus_infra::InfraError::Corrupt(e.to_string())),
    };
    let cookie = match cookie {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "storing a console session failed");
            return PageError::internal(info).into_response();
        }
    };
    // Now and then, drop sessions that ended (they would be refused anyway).
    let _ = kit.sessions.purge_expired(Utc::now()).await;
    let mut response = redirect(&flow.return_to);
    set_cookie::<C>(
        &mut response,
        &kit,
        &cookie_name::<C>(),
        &cookie,
        SESSION_HOURS * 3600,
    );
    set_cookie::<C>(&mut response, &kit, &flow_cookie_name::<C>(), "", 0);
    response
}

/// The person's name and email from QSA's userinfo endpoint.
async fn userinfo(kit: &Kit, access_token: &str) -> Option<serde_json::Value> {
    let request = axum::http::Request::builder()
        .uri("/oauth2/userinfo")
        .header(AUTHORIZATION, format!("Bearer {access_token}"))
        .body(Body::empty())
        .ok()?;
    let response = kit.oauth.clone().oneshot(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A form posted from a console page by a signed-in person: its CSRF synchronizer token is
/// checked against the session before the handler sees the fields.
pub struct Posted<C: Console, T> {
    pub signed_in: SignedIn<C>,
    pub form: T,
}

impl<C: Console, T: DeserializeOwned> FromRequest<AppState> for Posted<C, T> {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Response> {
        let info = C::info();
        let (mut parts, body) = request.into_parts();
        let signed_in = SignedIn::<C>::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, 64 * 1024).await.map_err(|_| {
            PageError::new(
                info,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "the form is too large",
            )
            .into_response()
        })?;
        let mut fields = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(&bytes) {
            fields.insert(k.into_owned(), serde_json::Value::String(v.into_owned()));
        }
        signed_in
            .check_csrf(fields.get("csrf").and_then(|v| v.as_str()))
            .map_err(IntoResponse::into_response)?;
        fields.remove("csrf");
        let form = serde_json::from_value(serde_json::Value::Object(fields.into_iter().collect()))
            .map_err(|e| {
                PageError::new(
                    info,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "The form is incomplete",
                    e.to_string(),
                )
                .into_response()
            })?;
        Ok(Posted { signed_in, form })
    }
}

#[derive(Debug, Deserialize)]
struct NoFields {}

async fn sign_out<C: Console>(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let info = C::info();
    let origin = Origin::of(&headers, request.extensions());
    let kit = match request.extensions().get::<Kit>() {
        Some(k) => k.clone(),
        None => return PageError::internal(info).into_response(),
    };
    let posted = match Posted::<C, NoFields>::from_request(request, &state).await {
        Ok(p) => p,
        // No live session (the extractor sends people to sign in): nothing to end here.
        Err(r) if r.status() == StatusCode::SEE_OTHER => {
            return redirect(&format!("{}/signed-out", info.base))
        }
        Err(r) => return r,
    };
    let session = posted.signed_in.session;
    if let (Some(client), Some(refresh)) = (C::client(&kit.clients), &session.refresh_token) {
        // Revoking the refresh token revokes its whole grant (RFC 7009), even if QSA's own
        // session cookie is gone by now.
        if let Err(e) = oauth_post(
            &kit,
            client,
            "/oauth2/revoke",
            &[("token", refresh), ("token_type_hint", "refresh_token")],
            &origin,
        )
        .await
        {
            tracing::warn!(error = %e, "revoking a console grant failed");
        }
    }
    if let Err(e) = kit.sessions.delete(&posted.signed_in.id).await {
        tracing::error!(error = %e, "deleting a console session failed");
        return PageError::internal(info).into_response();
    }
    let mut logout: Vec<(&str, String)> = vec![(
        "post_logout_redirect_uri",
        format!("{}{}/signed-out", kit.public_url, info.base),
    )];
    if let Some(client) = C::client(&kit.clients) {
        logout.push(("client_id", client.client_id.clone()));
    }
    if let Some(id_token) = &session.id_token {
        logout.push(("id_token_hint", id_token.clone()));
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(logout)
        .finish();
    let mut response = redirect(&format!("{}/oauth2/logout?{query}", kit.issuer));
    set_cookie::<C>(&mut response, &kit, &cookie_name::<C>(), "", 0);
    response
}

#[derive(askama::Template)]
#[template(path = "signed_out.html")]
struct SignedOutPage {
    layout: Layout,
}

async fn signed_out<C: Console>() -> Response {
    render(&SignedOutPage {
        layout: Layout {
            title: "Signed out".into(),
            console: C::info(),
            current: "",
            user: None,
            notice: None,
            scopes: Default::default(),
        },
    })
}
