//! QSA as a SAML 2.0 identity provider (HTTP side): metadata, single sign-on (HTTP-Redirect
//! and HTTP-POST bindings, and IdP-initiated), single logout, and the REST resources that
//! register service providers and rotate the SAML signing key.
//!
//! A browser without a QSA session goes through the login page (`Continuation::Saml`) and
//! comes back to `/saml/sso/continue` with the checked request sealed in the URL. Responses go
//! to the registered ACS URL in an auto-submitting HTML form (HTTP-POST binding).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use quantus_commands::saml::{
    xml as saml_xml, Binding, Outgoing, RedirectSignature, SsoRefusal, SsoRequest,
};
use quantus_commands::CommandError;
use quantus_domain::identity::access_policy::Strength;
use quantus_domain::identity::saml::SamlServiceProviderSettings;
use quantus_domain::identity::RequestInfo;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::oauth::{current_session, login_page, Continuation};
use crate::write::{context, expected_version, refusal};
use crate::{AppState, Principal, Problem};

/// How long a checked sign-on request waits for the person to sign in.
const PENDING_SECONDS: i64 = 600;

/// The browser-facing routes (top level, no bearer token).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/saml/metadata", get(metadata))
        .route("/saml/sso", get(sso_redirect).post(sso_post))
        .route("/saml/sso/idp-initiated", get(idp_initiated))
        .route("/saml/sso/continue", get(sso_continue))
        .route("/saml/slo", get(slo_redirect).post(slo_post))
        // An organization's own endpoints: needed when more than one organization registered
        // the same service provider (entity ids are unique per organization only).
        .route("/saml/o/{org}/metadata", get(org_metadata))
        .route(
            "/saml/o/{org}/sso",
            get(org_sso_redirect).post(org_sso_post),
        )
        .route(
            "/saml/o/{org}/slo",
            get(org_slo_redirect).post(org_slo_post),
        )
}

/// The REST resources (under `/v1`, behind the bearer middleware).
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/saml/service-providers",
            post(create_provider).get(list_providers),
        )
        .route(
            "/saml/service-providers/metadata",
            post(register_from_metadata),
        )
        .route(
            "/saml/service-providers/{id}",
            get(get_provider).put(put_provider).delete(delete_provider),
        )
        .route("/saml/signing-keys", get(list_keys))
        .route("/saml/signing-keys/rotate", post(rotate_key))
        .route("/saml/signing-keys/{kid}/retire", post(retire_key))
}

/// The peer address when the server runs with connect info.
pub struct Peer(Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

fn request_info(headers: &HeaderMap, peer: Option<std::net::SocketAddr>) -> RequestInfo {
    // In clear only until the identity service seals it for the person concerned.
    RequestInfo::clear(
        peer.map(|p| p.ip().to_string()),
        headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect()),
    )
}

fn system_ctx(tenant: &str, actor: Actor) -> CommandContext {
    CommandContext {
        tenant_id: tenant.to_owned(),
        actor,
        occurred_at: quantus_domain::envelope::truncate_to_micros(Utc::now()),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let t = html_escape::encode_text(title);
    let mut r = (
        status,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Quantus</title></head>\
<body><h1>{t}</h1>{body}</body></html>"
        )),
    )
        .into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A SAML error shown to the person (never sent to an SP that is not known to be registered).
fn refuse(e: &CommandError) -> Response {
    let status = match e {
        CommandError::Invalid(_) | CommandError::NotFound(_) => StatusCode::BAD_REQUEST,
        CommandError::Rejected(_) => StatusCode::FORBIDDEN,
        _ => return Problem::from(CommandError::Storage(e.to_string())).into_response(),
    };
    page(
        status,
        "Cannot sign in",
        &format!(
            "<p class=\"error\" role=\"alert\" id=\"saml-error\">{}</p>",
            html_escape::encode_text(&e.to_string())
        ),
    )
}

const AUTO_SUBMIT: &str = "document.forms[0].submit();";

/// The HTTP-POST binding: a form that submits itself to the SP.
fn post_to_sp(out: &Outgoing, field: &str) -> Response {
    let relay = out
        .relay_state
        .as_deref()
        .map(|r| {
            format!(
                "<input type=\"hidden\" name=\"RelayState\" value=\"{}\">",
                html_escape::encode_double_quoted_attribute(r)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<form method=\"post\" action=\"{url}\"><input type=\"hidden\" name=\"{field}\" value=\"{value}\">{relay}\
<noscript><button type=\"submit\">Continue</button></noscript></form><script>{AUTO_SUBMIT}</script>",
        url = html_escape::encode_double_quoted_attribute(&out.url),
        value = html_escape::encode_double_quoted_attribute(&out.saml_response),
    );
    let mut r = page(StatusCode::OK, "Signing you in", &body);
    let script_hash = STANDARD.encode(sha2::Sha256::digest(AUTO_SUBMIT.as_bytes()));
    let origin = url::Url::parse(&out.url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "'none'".into());
    if let Ok(v) = HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'sha256-{script_hash}'; form-action {origin}; frame-ancestors 'none'"
    )) {
        r.headers_mut().insert("content-security-policy", v);
    }
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
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

// ---- metadata ----

/// QSA's SAML 2.0 IdP metadata (SAML Metadata §2.4.3): entity id, SSO and SLO endpoints
/// for both bindings, signing certificates.
#[utoipa::path(get, path = "/saml/metadata", tag = "saml",
    responses((status = 200, description = "an EntityDescriptor", content_type = "application/samlmetadata+xml", body = String)))]
pub async fn metadata(State(state): State<AppState>) -> Response {
    metadata_of(&state, None).await
}

pub async fn org_metadata(State(state): State<AppState>, Path(org): Path<String>) -> Response {
    match state.bus.active_organization(&org).await {
        Ok(()) => {}
        Err(CommandError::Invalid(d)) => {
            return Problem::from(CommandError::NotFound(d)).into_response()
        }
        Err(e) => return Problem::from(e).into_response(),
    }
    metadata_of(&state, Some(&org)).await
}

async fn metadata_of(state: &AppState, org: Option<&str>) -> Response {
    match state.saml.metadata(Utc::now(), org).await {
        Ok(xml) => {
            let mut r = xml.into_response();
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/samlmetadata+xml"),
            );
            r.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            r
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

// ---- single sign-on ----

#[derive(Serialize, Deserialize)]
struct Pending {
    req: SsoRequest,
    expires_at: DateTime<Utc>,
}

fn seal(state: &AppState, req: &SsoRequest) -> String {
    let pending = Pending {
        req: req.clone(),
        expires_at: Utc::now() + chrono::Duration::seconds(PENDING_SECONDS),
    };
    serde_json::to_vec(&pending)
        .ok()
        .and_then(|b| state.identity.subject_keys().seal_blob("saml-sso", &b).ok())
        .unwrap_or_default()
}

fn open(state: &AppState, sealed: &str) -> Option<SsoRequest> {
    let b = state
        .identity
        .subject_keys()
        .open_blob("saml-sso", sealed)
        .ok()?;
    let p: Pending = serde_json::from_slice(&b).ok()?;
    (p.expires_at > Utc::now()).then_some(p.req)
}

fn resume_path(state: &AppState, req: &SsoRequest) -> String {
    format!(
        "/saml/sso/continue?r={}",
        url::form_urlencoded::byte_serialize(seal(state, req).as_bytes()).collect::<String>()
    )
}

/// Raw (still URL-encoded) query pairs, and their decoded values.
fn query_pairs(raw: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The HTTP-Redirect binding's signature, if the query carries one.
fn redirect_signature(
    raw: &str,
    q: &BTreeMap<String, String>,
    param: &str,
) -> Result<Option<RedirectSignature>, CommandError> {
    let Some(sig) = q.get("Signature") else {
        return Ok(None);
    };
    let signature = STANDARD
        .decode(sig.trim())
        .map_err(|_| CommandError::Invalid("Signature is not base64".into()))?;
    let sig_alg = q
        .get("SigAlg")
        .cloned()
        .ok_or_else(|| CommandError::Invalid("Signature without SigAlg".into()))?;
    let signed_octets = quantus_commands::saml::xml::redirect_signed_octets(raw, param)
        .ok_or_else(|| CommandError::Invalid("malformed signed query".into()))?;
    Ok(Some(RedirectSignature {
        signed_octets,
        sig_alg,
        signature,
    }))
}

/// Single sign-on, HTTP-Redirect binding (SAML Bindings §3.4): signs the person in, then
/// posts a signed Response to the SP's registered ACS, or a status Response where the spec
/// says so (NoPassive, RequestDenied, AuthnFailed...).
#[utoipa::path(get, path = "/saml/sso", tag = "saml", params(("SAMLRequest" = String, Query, description = "the DEFLATE-compressed, base64 AuthnRequest (HTTP-Redirect binding)"),
        ("RelayState" = Option<String>, Query), ("SigAlg" = Option<String>, Query), ("Signature" = Option<String>, Query)),
    responses((status = 200, description = "the sign-in page, or the auto-submitting form carrying the Response to the ACS", content_type = "text/html"),
        (status = 400, description = "an error page when the request or its SP cannot be trusted (nothing is sent to an unverified URL)", content_type = "text/html")))]
pub async fn sso_redirect(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    sso_redirect_in(&state, peer, &headers, raw, None).await
}

pub async fn org_sso_redirect(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Peer(peer): Peer,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    sso_redirect_in(&state, peer, &headers, raw, Some(&org)).await
}

/// A refusal: a page for the person, or a SAML status Response posted to the SP.
async fn refused(state: &AppState, r: SsoRefusal) -> Response {
    match r {
        SsoRefusal::Page(e) => refuse(&e),
        SsoRefusal::Status(answer) => match state.saml.status_response(&answer, Utc::now()).await {
            Ok(out) => post_to_sp(&out, "SAMLResponse"),
            Err(e) => refuse(&e),
        },
    }
}

async fn sso_redirect_in(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    raw: Option<String>,
    org: Option<&str>,
) -> Response {
    let raw = raw.unwrap_or_default();
    let q = query_pairs(&raw);
    let checked = async {
        let request = q
            .get("SAMLRequest")
            .ok_or_else(|| CommandError::Invalid("SAMLRequest is missing".into()))?;
        let xml = quantus_commands::saml::xml::inflate_redirect(request)
            .map_err(CommandError::Invalid)?;
        let binding = Binding::Redirect(redirect_signature(&raw, &q, "SAMLRequest")?);
        state
            .saml
            .check_authn_request(
                &xml,
                &binding,
                q.get("RelayState").cloned(),
                org,
                Utc::now(),
            )
            .await
    }
    .await;
    match checked {
        Ok(req) => proceed(state, peer, headers, req).await,
        Err(r) => refused(state, r).await,
    }
}

/// Single sign-on, HTTP-POST binding (SAML Bindings §3.5): `SAMLRequest` (base64) and
/// `RelayState` as a form.
#[utoipa::path(post, path = "/saml/sso", tag = "saml",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "SAMLRequest, RelayState"),
    responses((status = 200, description = "the sign-in page, or the form carrying the Response", content_type = "text/html"),
        (status = 400, description = "an error page when the request or its SP cannot be trusted", content_type = "text/html"),
        (status = 415, description = "the body is not a form", body = Problem, content_type = "application/problem+json")))]
pub async fn sso_post(
    State(state): State<AppState>,
    crate::problem::ApiForm(form): crate::problem::ApiForm<BTreeMap<String, String>>,
) -> Response {
    sso_post_in(&state, form, None).await
}

pub async fn org_sso_post(
    State(state): State<AppState>,
    Path(org): Path<String>,
    crate::problem::ApiForm(form): crate::problem::ApiForm<BTreeMap<String, String>>,
) -> Response {
    sso_post_in(&state, form, Some(&org)).await
}

async fn sso_post_in(
    state: &AppState,
    form: BTreeMap<String, String>,
    org: Option<&str>,
) -> Response {
    let checked = async {
        let request = form
            .get("SAMLRequest")
            .ok_or_else(|| CommandError::Invalid("SAMLRequest is missing".into()))?;
        let xml =
            quantus_commands::saml::xml::decode_post(request).map_err(CommandError::Invalid)?;
        state
            .saml
            .check_authn_request(
                &xml,
                &Binding::Post,
                form.get("RelayState").cloned(),
                org,
                Utc::now(),
            )
            .await
    }
    .await;
    match checked {
        // A cross-site POST carries no SameSite=Lax session cookie: continue with a top-level
        // GET, which does.
        Ok(req) => redirect(&resume_path(state, &req)),
        Err(r) => refused(state, r).await,
    }
}

#[derive(Deserialize)]
pub struct IdpInitiated {
    sp: String,
    /// The organization whose registration of `sp` to use (needed when several registered it).
    #[serde(default)]
    org: Option<String>,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

pub async fn idp_initiated(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(q): Query<IdpInitiated>,
) -> Response {
    match state
        .saml
        .idp_initiated(&q.sp, q.relay_state, q.org.as_deref())
        .await
    {
        Ok(req) => proceed(&state, peer, &headers, req).await,
        Err(e) => refuse(&e),
    }
}

#[derive(Deserialize)]
pub struct Resume {
    r: String,
}

pub async fn sso_continue(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(q): Query<Resume>,
) -> Response {
    match open(&state, &q.r) {
        Some(req) => proceed(&state, peer, &headers, req).await,
        None => refuse(&CommandError::Invalid(
            "the sign-on request is invalid or has expired; start again at the application".into(),
        )),
    }
}

/// With a session (one made after the request when it says ForceAuthn): the signed Response;
/// without one, the login page, which comes back here, or, for IsPassive, a `NoPassive`
/// status. Refusals after the request was checked go to the SP as SAML statuses.
async fn proceed(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    req: SsoRequest,
) -> Response {
    let sp = match state.saml.provider(&req.provider_id).await {
        Ok(sp) => sp,
        Err(e) => return refuse(&e),
    };
    let session = current_session(state, headers).await.filter(|s| {
        // ForceAuthn: the person authenticates anew for this request, whatever their
        // session: only a sign-in after QSA accepted the request counts.
        // (A request sealed by an older version carries no instant: a sign-in of the last
        // minute, as it had.)
        !req.force_authn
            || match req.requested_at {
                Some(at) => s.auth_time > at,
                None => (Utc::now() - s.auth_time).num_seconds() <= 60,
            }
    });
    let Some(session) = session else {
        if req.is_passive {
            return refused(
                state,
                req.refuse(
                    saml_xml::STATUS_RESPONDER,
                    Some(saml_xml::STATUS_NO_PASSIVE),
                    if req.force_authn {
                        "IsPassive and ForceAuthn together cannot be met without asking the person"
                    } else {
                        "the person is not signed in, and the request asked not to prompt them"
                    },
                ),
            )
            .await;
        }
        let resume = resume_path(state, &req);
        return login_page(
            state,
            &Continuation::Saml {
                resume,
                organization: Some(sp.organization_id.clone()),
            },
            None,
            StatusCode::OK,
        );
    };
    let ctx = system_ctx(
        &session.organization_id,
        Actor {
            kind: ActorKind::User,
            id: session.user_id.clone(),
        },
    );
    // The organization's conditional access applies to SAML sign-ons as to OIDC ones (the SP's
    // entity id stands for the client application). A session too weak for a rule is refused
    // with the reason; signing in again with the second factor satisfies it.
    let decision = match state
        .identity
        .decide_authorization(&ctx, &session, &req.entity_id, &request_info(headers, peer))
        .await
    {
        Ok(d) => d,
        Err(e) => return refuse(&e),
    };
    if !decision.satisfied_by(Strength::of_amr(&session.amr)) {
        return refused(
            state,
            req.refuse(
                saml_xml::STATUS_RESPONDER,
                Some(saml_xml::STATUS_REQUEST_DENIED),
                format!(
                    "the organization's access policy does not allow this sign-on with this session ({})",
                    decision.reason
                ),
            ),
        )
        .await;
    }
    let groups = if sp
        .settings
        .attributes
        .values()
        .any(|a| *a == quantus_domain::identity::saml::UserAttribute::Groups)
    {
        match quantus_projections::groups::GroupsView::by_organization(
            &state.db.pool,
            &sp.organization_id,
        )
        .await
        {
            Ok(rows) => rows
                .into_iter()
                .filter(|g| g.members.contains(&session.user_id))
                .map(|g| g.name)
                .collect(),
            Err(e) => {
                return Problem::from(quantus_commands::CommandError::Storage(e.to_string()))
                    .into_response()
            }
        }
    } else {
        Vec::new()
    };
    match state.saml.respond(&ctx, &req, &session, &groups).await {
        Ok(out) => post_to_sp(&out, "SAMLResponse"),
        // The person may not use this SP (another organization's): the SP hears AuthnFailed.
        Err(CommandError::Rejected(reason)) => {
            refused(
                state,
                req.refuse(
                    saml_xml::STATUS_RESPONDER,
                    Some(saml_xml::STATUS_AUTHN_FAILED),
                    reason,
                ),
            )
            .await
        }
        Err(e) => refuse(&e),
    }
}

// ---- single logout ----

/// Single logout, HTTP-Redirect binding: a LogoutRequest from an SP ends the person's
/// session; the LogoutResponse goes back over the binding the SP registered or used.
#[utoipa::path(get, path = "/saml/slo", tag = "saml",
    params(("SAMLRequest" = Option<String>, Query), ("SAMLResponse" = Option<String>, Query),
        ("RelayState" = Option<String>, Query), ("SigAlg" = Option<String>, Query), ("Signature" = Option<String>, Query)),
    responses((status = 200, description = "a form carrying the LogoutResponse, or the signed-out page", content_type = "text/html"),
        (status = 303, description = "the LogoutResponse over HTTP-Redirect"),
        (status = 400, description = "an error page", content_type = "text/html")))]
pub async fn slo_redirect(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    slo_redirect_in(&state, peer, &headers, raw, None).await
}

pub async fn org_slo_redirect(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Peer(peer): Peer,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    slo_redirect_in(&state, peer, &headers, raw, Some(&org)).await
}

async fn slo_redirect_in(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    raw: Option<String>,
    org: Option<&str>,
) -> Response {
    let raw = raw.unwrap_or_default();
    let q = query_pairs(&raw);
    let parsed = (|| {
        let request = q
            .get("SAMLRequest")
            .ok_or_else(|| CommandError::Invalid("SAMLRequest is missing".into()))?;
        let xml = quantus_commands::saml::xml::inflate_redirect(request)
            .map_err(CommandError::Invalid)?;
        Ok::<_, CommandError>((
            xml,
            Binding::Redirect(redirect_signature(&raw, &q, "SAMLRequest")?),
        ))
    })();
    match parsed {
        Ok((xml, binding)) => {
            logout(
                state,
                peer,
                headers,
                &xml,
                binding,
                q.get("RelayState").cloned(),
                org,
            )
            .await
        }
        Err(e) => refuse(&e),
    }
}

/// Single logout, HTTP-POST binding.
#[utoipa::path(post, path = "/saml/slo", tag = "saml",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "SAMLRequest or SAMLResponse, RelayState"),
    responses((status = 200, description = "a form carrying the LogoutResponse, or the signed-out page", content_type = "text/html"),
        (status = 303, description = "the LogoutResponse over HTTP-Redirect"),
        (status = 400, description = "an error page", content_type = "text/html"),
        (status = 415, description = "the body is not a form", body = Problem, content_type = "application/problem+json")))]
pub async fn slo_post(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    crate::problem::ApiForm(form): crate::problem::ApiForm<BTreeMap<String, String>>,
) -> Response {
    slo_post_in(&state, peer, &headers, form, None).await
}

pub async fn org_slo_post(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Peer(peer): Peer,
    headers: HeaderMap,
    crate::problem::ApiForm(form): crate::problem::ApiForm<BTreeMap<String, String>>,
) -> Response {
    slo_post_in(&state, peer, &headers, form, Some(&org)).await
}

async fn slo_post_in(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    form: BTreeMap<String, String>,
    org: Option<&str>,
) -> Response {
    let xml = match form
        .get("SAMLRequest")
        .ok_or_else(|| "SAMLRequest is missing".to_owned())
        .and_then(|r| quantus_commands::saml::xml::decode_post(r))
    {
        Ok(x) => x,
        Err(e) => return refuse(&CommandError::Invalid(e)),
    };
    logout(
        state,
        peer,
        headers,
        &xml,
        Binding::Post,
        form.get("RelayState").cloned(),
        org,
    )
    .await
}

async fn logout(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    xml: &str,
    binding: Binding,
    relay_state: Option<String>,
    org: Option<&str>,
) -> Response {
    let session = current_session(state, headers).await;
    let ctx = system_ctx(
        PLATFORM_TENANT,
        Actor {
            kind: ActorKind::System,
            id: "qsa".into(),
        },
    );
    let out = state
        .saml
        .logout(
            &ctx,
            xml,
            &binding,
            relay_state,
            session,
            request_info(headers, peer),
            org,
        )
        .await;
    let mut response = match out {
        // HTTP-Redirect binding: the signed query string.
        Ok(Some(Outgoing {
            redirect_url: Some(url),
            ..
        })) => redirect(&url),
        Ok(Some(out)) => post_to_sp(&out, "SAMLResponse"),
        Ok(None) => page(
            StatusCode::OK,
            "Signed out",
            "<p role=\"status\">You are signed out.</p>",
        ),
        Err(e) => return refuse(&e),
    };
    let secure = if state.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "qsa_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"
    )) {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
}

// ---- REST: service providers and signing keys ----

/// A service provider's registration as the API takes it (`POST` and `PUT`; `PUT` ignores
/// `organization_id` and `entity_id`, which never change).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderBody {
    #[serde(default)]
    pub organization_id: String,
    #[serde(default)]
    pub entity_id: String,
    pub name: String,
    pub acs_urls: Vec<String>,
    #[serde(default)]
    pub slo_url: Option<String>,
    /// `http_redirect` or `http_post`; none: the binding of each LogoutRequest.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub slo_binding: Option<quantus_domain::identity::saml::SloBinding>,
    /// PEM or bare base64 DER; with it, requests must be signed.
    #[serde(default)]
    pub certificate: Option<String>,
    /// `email_address`, `persistent` or `unspecified`.
    #[schema(value_type = String)]
    pub name_id_format: quantus_domain::identity::saml::NameIdFormat,
    /// SAML attribute name → `email`, `name`, `user_id`, `organization_id`, `roles` or
    /// `groups`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, quantus_domain::identity::saml::UserAttribute>,
}

impl ProviderBody {
    fn settings(&self) -> SamlServiceProviderSettings {
        SamlServiceProviderSettings {
            acs_urls: self.acs_urls.clone(),
            slo_url: self.slo_url.clone(),
            slo_binding: self.slo_binding,
            // PEM or bare base64 DER: keep the base64 only.
            certificate: self.certificate.as_deref().map(|c| {
                c.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .flat_map(|l| l.split_whitespace())
                    .collect()
            }),
            name_id_format: self.name_id_format,
            attributes: self.attributes.clone(),
        }
    }
}

fn created(id: String, outcome: quantus_commands::CommandOutcome) -> Response {
    let mut r = (
        StatusCode::CREATED,
        Json(
            serde_json::json!({"id": id, "version": outcome.version, "position": outcome.position}),
        ),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/saml/service-providers/{id}")) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::unprocessable(e.to_string()))
}

/// Registers a SAML service provider from its fields.
#[utoipa::path(post, path = "/v1/saml/service-providers", tag = "saml",
    request_body = ProviderBody,
    responses((status = 201, body = crate::write::CommandAccepted, description = "registered; `Location` names it"),
        (status = 409, body = Problem, description = "the organization already has this entity id"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_provider(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    let body: ProviderBody = json_body(&body)?;
    writable_organization(&state, &principal, &body.organization_id).await?;
    let settings = body.settings();
    register(
        &state,
        &principal,
        &headers,
        &body.organization_id,
        &body.entity_id,
        &body.name,
        settings,
    )
    .await
}

/// The caller may register providers in `organization`, and it is active.
async fn writable_organization(
    state: &AppState,
    principal: &Principal,
    organization: &str,
) -> Result<(), Problem> {
    principal.tenant(organization, &format!("organization {organization}"))?;
    state.bus.active_organization(organization).await?;
    Ok(())
}

/// Records a provider's registration; 201 with its `Location`.
async fn register(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    organization: &str,
    entity_id: &str,
    name: &str,
    settings: SamlServiceProviderSettings,
) -> Result<Response, Problem> {
    let ctx = context(principal, headers, organization);
    let (id, outcome) = state
        .saml
        .register(&ctx, organization, entity_id, name, settings)
        .await?;
    Ok(created(id, outcome))
}

/// A service provider's registration from its metadata (SAML Metadata §2.4.4), pasted.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataBody {
    pub organization_id: String,
    /// The SP's metadata: one `md:EntityDescriptor` with an `SPSSODescriptor` (at most
    /// 256 KiB, nested at most 32 levels, no DTD). QSA takes the entity id, the HTTP-POST
    /// AssertionConsumerService URLs (default first), the first SingleLogoutService of the
    /// HTTP-Redirect or HTTP-POST binding, and the signing certificate.
    pub metadata_xml: String,
    /// Defaults to the entity id.
    #[serde(default)]
    pub name: Option<String>,
    /// `email_address`, `persistent` or `unspecified`; defaults to the first NameIDFormat of
    /// the metadata QSA supports, else `email_address`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub name_id_format: Option<quantus_domain::identity::saml::NameIdFormat>,
    /// SAML attribute name → `email`, `name`, `user_id`, `organization_id`, `roles` or
    /// `groups`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, quantus_domain::identity::saml::UserAttribute>,
}

/// Registers a SAML service provider from its metadata XML.
#[utoipa::path(post, path = "/v1/saml/service-providers/metadata", tag = "saml",
    request_body = MetadataBody,
    responses((status = 201, body = crate::write::CommandAccepted, description = "registered; `Location` names it"),
        (status = 409, body = Problem), (status = 422, body = Problem, description = "the metadata cannot be read or holds no usable SP")),
    security(("bearer" = [])))]
pub async fn register_from_metadata(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    use quantus_domain::identity::saml::{NameIdFormat, SloBinding};
    principal.require("identity:write")?;
    let body: MetadataBody = json_body(&body)?;
    writable_organization(&state, &principal, &body.organization_id).await?;
    let md = saml_xml::parse_sp_metadata(&body.metadata_xml)
        .map_err(|e| Problem::unprocessable(format!("metadata_xml: {e}")))?;
    let name_id_format = body.name_id_format.unwrap_or_else(|| {
        md.name_id_formats
            .iter()
            .find_map(|f| NameIdFormat::ALL.into_iter().find(|n| n.urn() == f))
            .unwrap_or(NameIdFormat::EmailAddress)
    });
    let settings = SamlServiceProviderSettings {
        acs_urls: md.acs_urls.clone(),
        slo_binding: md.slo.as_ref().map(|(_, b)| {
            if b == saml_xml::BINDING_REDIRECT {
                SloBinding::HttpRedirect
            } else {
                SloBinding::HttpPost
            }
        }),
        slo_url: md.slo.map(|(l, _)| l),
        certificate: md.certificate,
        name_id_format,
        attributes: body.attributes,
    };
    let name = body.name.unwrap_or_else(|| md.entity_id.clone());
    register(
        &state,
        &principal,
        &headers,
        &body.organization_id,
        &md.entity_id,
        &name,
        settings,
    )
    .await
}

async fn provider_in_tenant(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<quantus_commands::saml::ProviderView, Problem> {
    let sp = state.saml.provider(id).await?;
    principal.tenant(&sp.organization_id, &format!("SAML service provider {id}"))?;
    Ok(sp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderListQuery {
    org: String,
    after: Option<String>,
    limit: Option<u32>,
}

/// An organization's registered (not removed) service providers, by id, paged.
///
/// Providers have no read model: this reads every `SamlServiceProviderRegistered` event in the
/// log, all organizations' (the query walks the unique index over every `SamlServiceProvider`
/// event and keeps that one type), keeps the organization's, and loads each provider of the
/// page from its events (removed ones are left out, so a page can hold fewer than `limit`;
/// `next_after` still goes on). The cost grows with the providers of the whole log, not the
/// organization's (`docs/STATUS.md`, Known limits (QSA)).
#[utoipa::path(get, path = "/v1/saml/service-providers", tag = "saml", operation_id = "list_service_providers",
    params(("org" = String, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = crate::paging::Page<ProviderListed>), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_providers(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    crate::problem::ApiQuery(q): crate::problem::ApiQuery<ProviderListQuery>,
) -> Result<Json<crate::paging::Page<ProviderListed>>, Problem> {
    use quantus_domain::identity::saml::SamlServiceProviderRegistered;
    principal.require("identity:read")?;
    principal.tenant(&q.org, &format!("organization {}", q.org))?;
    let limit = crate::paging::limit(q.limit)?;
    let ids: Vec<String> = crate::paging::registered::<SamlServiceProviderRegistered>(
        &state.db,
        |e| e.organization_id == q.org,
        q.after.as_deref(),
        limit,
    )
    .await?
    .into_iter()
    .map(|(r, _)| r.envelope.aggregate_id)
    .collect();
    // The cursor is the page's last id looked at, removed or not.
    let next_after = crate::paging::next_after(&ids, limit, |id| id.as_str());
    let mut rows = Vec::new();
    for id in &ids {
        match state.saml.provider(id).await {
            Ok(sp) if sp.organization_id == q.org => rows.push(ProviderListed {
                id: sp.id,
                entity_id: sp.entity_id,
                name: sp.name,
                acs_urls: sp.settings.acs_urls,
                name_id_format: sp.settings.name_id_format,
                version: sp.version,
            }),
            Ok(_) | Err(quantus_commands::CommandError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(crate::paging::Page {
        items: rows,
        next_after,
        as_of: None,
    }))
}

/// A registered service provider as the list shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderListed {
    pub id: String,
    pub entity_id: String,
    pub name: String,
    /// Where assertions are posted (HTTPS).
    pub acs_urls: Vec<String>,
    /// `email_address`, `persistent` or `unspecified`.
    #[schema(value_type = String)]
    pub name_id_format: quantus_domain::identity::saml::NameIdFormat,
    pub version: u64,
}

/// One service provider of the caller's organization (`ETag`: its version).
#[utoipa::path(get, path = "/v1/saml/service-providers/{id}", tag = "saml",
    params(("id" = String, Path)),
    responses((status = 200, description = "the provider", content_type = "application/json", body = Object), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_provider(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("identity:read")?;
    let sp = provider_in_tenant(&state, &principal, &id).await?;
    let mut r = Json(&sp).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", sp.version)) {
        r.headers_mut().insert(axum::http::header::ETAG, v);
    }
    Ok(r)
}

/// Changes a provider's settings (`If-Match` with its version, optional).
#[utoipa::path(put, path = "/v1/saml/service-providers/{id}", tag = "saml",
    params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path)), request_body = ProviderBody,
    responses((status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem),
        (status = 412, body = Problem, description = "If-Match names another version"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_provider(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    let sp = provider_in_tenant(&state, &principal, &id).await?;
    let body: ProviderBody = json_body(&body)?;
    let ctx = context(&principal, &headers, &sp.organization_id);
    let expected = expected_version(&headers)?;
    let outcome = state
        .saml
        .change(&ctx, &id, &body.name, body.settings(), expected)
        .await
        .map_err(refusal(expected))?;
    Ok(Json(
        serde_json::json!({"id": id, "version": outcome.version, "position": outcome.position}),
    )
    .into_response())
}

/// Removes a provider: its requests are refused from then on.
#[utoipa::path(delete, path = "/v1/saml/service-providers/{id}", tag = "saml",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_provider(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    let sp = provider_in_tenant(&state, &principal, &id).await?;
    let ctx = context(&principal, &headers, &sp.organization_id);
    let outcome = state.saml.remove(&ctx, &id).await?;
    Ok(Json(
        serde_json::json!({"id": id, "version": outcome.version, "position": outcome.position}),
    )
    .into_response())
}

/// QSA's SAML signing keys (certificates), current and retired.
#[utoipa::path(get, path = "/v1/saml/signing-keys", tag = "saml",
    responses((status = 200, description = "{keys: [{kid, certificate, active, ...}]}", content_type = "application/json", body = Object)),
    security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Problem> {
    principal.require("keys:manage")?;
    let (keys, version) = state.saml.signing_keys().await?;
    let active = keys.active().map(|k| k.kid.clone());
    Ok(Json(serde_json::json!({
        "active": active,
        "version": version,
        "keys": keys.keys.iter().map(|k| serde_json::json!({
            "kid": k.kid, "alg": k.alg, "certificate": k.certificate, "not_before": k.not_before,
        })).collect::<Vec<_>>(),
    }))
    .into_response())
}

fn require_platform_keys(principal: &Principal) -> Result<(), Problem> {
    principal.require("keys:manage")?;
    if !principal.is_platform() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "only platform administrators manage the SAML signing key",
        ));
    }
    Ok(())
}

/// Adds a new signing key; it signs from now on (the previous stays in metadata until retired).
#[utoipa::path(post, path = "/v1/saml/signing-keys/rotate", tag = "saml",
    responses((status = 201, description = "{kid, certificate}", content_type = "application/json", body = Object)),
    security(("bearer" = [])))]
pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    require_platform_keys(&principal)?;
    let ctx = context(&principal, &headers, PLATFORM_TENANT);
    let key = state.saml.rotate(&ctx).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"kid": key.kid, "certificate": key.certificate})),
    )
        .into_response())
}

/// Retires a signing key (it leaves the metadata).
#[utoipa::path(post, path = "/v1/saml/signing-keys/{kid}/retire", tag = "saml",
    params(("kid" = String, Path)),
    responses((status = 200, description = "retired", content_type = "application/json", body = Object), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn retire_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(kid): Path<String>,
) -> Result<Response, Problem> {
    require_platform_keys(&principal)?;
    let ctx = context(&principal, &headers, PLATFORM_TENANT);
    let outcome = state.saml.retire(&ctx, &kid).await?;
    Ok(Json(
        serde_json::json!({"kid": kid, "version": outcome.version, "position": outcome.position}),
    )
    .into_response())
}
