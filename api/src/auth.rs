//! Bearer authentication for every `/v1` route: QSA-issued access tokens (RFC 9068), checked
//! against the token keys, and the caller's scopes, roles and tenant for authorisation.
//!
//! Sender-constrained tokens (DPoP, RFC 9449) are checked here too, once, for every resource
//! (the `/v1` routes, the Portal's and userinfo): a token bound to a key (`cnf.jkt`) is good
//! only as `Authorization: DPoP <token>` with a fresh proof by that key for this very request;
//! a bound token presented as `Bearer` is refused (no downgrade). Unbound tokens work as
//! `Bearer` as before.

use std::collections::BTreeSet;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quantus_commands::identity::AccessClaims;
use quantus_domain::identity::Role;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind};

use crate::{AppState, Problem};

/// Who is calling; put into request extensions by [`require_bearer`].
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    /// The organization the token acts in (`platform` for the platform's own principals).
    pub organization: String,
    pub scopes: BTreeSet<String>,
    pub roles: BTreeSet<Role>,
    pub claims: AccessClaims,
}

impl Principal {
    pub fn from_claims(claims: AccessClaims) -> Self {
        Self {
            actor: Actor {
                kind: if claims.is_user() {
                    ActorKind::User
                } else {
                    ActorKind::Service
                },
                id: claims.sub.clone(),
            },
            organization: claims.org.clone(),
            scopes: claims.scopes(),
            roles: claims.roles.clone(),
            claims,
        }
    }

    /// A platform administrator: may act in every tenant.
    pub fn is_platform(&self) -> bool {
        self.organization == PLATFORM_TENANT && self.roles.contains(&Role::PlatformAdmin)
    }

    /// 403 unless the token carries `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.scopes.contains(scope) {
            return Ok(());
        }
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "insufficient-scope",
            "Insufficient scope",
            format!("this needs the {scope} scope"),
        ))
    }

    /// The signed-in person's user id: 403 for a service principal (second factors and
    /// passkeys belong to people).
    pub fn person(&self) -> Result<String, Problem> {
        if self.actor.kind != ActorKind::User {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "not-a-person",
                "Not a person",
                "this belongs to people; sign in as one",
            ));
        }
        Ok(self.actor.id.clone())
    }

    /// Whether the caller may see or change data of organization `org`.
    pub fn may_access(&self, org: &str) -> bool {
        self.is_platform()
            || self.organization == org
            // The Portal's licence issuer acts for every organization (its scopes bound what).
            || (self.organization == PLATFORM_TENANT && self.roles.contains(&Role::LicenseIssuer))
    }

    /// 404 (not 403: another tenant's data does not exist for the caller) unless the caller
    /// may access `org`.
    pub fn tenant(&self, org: &str, what: &str) -> Result<(), Problem> {
        if self.may_access(org) {
            Ok(())
        } else {
            Err(Problem::not_found(format!("no {what}")))
        }
    }
}

/// How an access token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// RFC 9449 §7.1: `Authorization: DPoP <token>` with a `DPoP` proof header.
    Dpop,
}

/// The token of an `Authorization: Bearer` or `Authorization: DPoP` header.
pub fn presented_token(headers: &HeaderMap) -> Option<(Scheme, &str)> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Some((Scheme::Bearer, token))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Some((Scheme::Dpop, token))
    } else {
        None
    }
}

/// `algs` of the DPoP challenge.
fn dpop_algs() -> String {
    crate::dpop::ALGS.join(" ")
}

/// A 401 for a request without usable credentials: both schemes are offered.
pub fn unauthorized_any(detail: Option<String>) -> Response {
    let mut response = unauthorized(detail);
    if let Ok(v) = HeaderValue::from_str(&format!("DPoP algs=\"{}\"", dpop_algs())) {
        response.headers_mut().append(WWW_AUTHENTICATE, v);
    }
    response
}

/// RFC 9449 §7.1: a 401 with a DPoP challenge, `error` being `invalid_token` or
/// `invalid_dpop_proof`.
pub fn unauthorized_dpop(error: &str, detail: &str) -> Response {
    let mut problem = Problem::unauthorized();
    problem.detail = detail.to_owned();
    let mut response = problem.into_response();
    let header = format!(
        "DPoP error=\"{error}\", error_description=\"{}\", algs=\"{}\"",
        detail.replace(['"', '\\'], "'"),
        dpop_algs()
    );
    if let Ok(v) = HeaderValue::from_str(&header) {
        response.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    response
}

/// Authenticates a request to a resource at `path` (the full path, `/v1/...`): the token, as
/// `verify` checks it, then its sender constraint. Errors are the 401 to send.
pub async fn authenticate<F, Fut>(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    verify: F,
) -> Result<AccessClaims, Response>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<AccessClaims, String>>,
{
    let Some((scheme, token)) = presented_token(headers) else {
        return Err(unauthorized_any(None));
    };
    let claims = match verify(token.to_owned()).await {
        Ok(c) => c,
        Err(detail) if scheme == Scheme::Dpop => {
            return Err(unauthorized_dpop("invalid_token", &detail))
        }
        Err(detail) => return Err(unauthorized_any(Some(detail))),
    };
    match (scheme, claims.jkt()) {
        (Scheme::Bearer, None) => Ok(claims),
        (Scheme::Bearer, Some(_)) => Err(unauthorized_dpop(
            "invalid_token",
            "the token is DPoP-bound: present it as Authorization: DPoP with a proof",
        )),
        (Scheme::Dpop, None) => Err(unauthorized_dpop(
            "invalid_token",
            "the token is not DPoP-bound: present it as a Bearer token",
        )),
        (Scheme::Dpop, Some(jkt)) => {
            let mut proofs = headers.get_all("dpop").iter();
            let (Some(proof), None) = (proofs.next(), proofs.next()) else {
                return Err(unauthorized_dpop(
                    "invalid_dpop_proof",
                    "send exactly one DPoP proof",
                ));
            };
            let Ok(proof) = proof.to_str() else {
                return Err(unauthorized_dpop(
                    "invalid_dpop_proof",
                    "the proof is not a JWT",
                ));
            };
            let url = format!("{}{path}", state.issuer);
            let expected = crate::dpop::Expected {
                method: method.as_str(),
                url: &url,
                access_token: Some(token),
                nonce: false,
            };
            match state
                .dpop
                .verify(proof, &expected, chrono::Utc::now().timestamp())
            {
                Ok(key) if key == jkt => Ok(claims),
                Ok(_) => Err(unauthorized_dpop(
                    "invalid_dpop_proof",
                    "the proof is signed by another key than the token is bound to",
                )),
                Err(crate::dpop::ProofError::Invalid(why)) => {
                    Err(unauthorized_dpop("invalid_dpop_proof", &why))
                }
                Err(crate::dpop::ProofError::UseNonce) => Err(unauthorized_dpop(
                    "use_dpop_nonce",
                    "the proof needs the server's nonce",
                )),
            }
        }
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
}

/// RFC 6750 §3: a 401 names the scheme and, for a bad token, `invalid_token`.
pub fn unauthorized(detail: Option<String>) -> Response {
    let mut problem = Problem::unauthorized();
    let header = match &detail {
        Some(d) => {
            problem.detail = d.clone();
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                d.replace(['"', '\\'], "'")
            )
        }
        None => "Bearer".to_owned(),
    };
    let mut response = problem.into_response();
    if let Ok(v) = HeaderValue::from_str(&header) {
        response.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    response
}

pub async fn require_bearer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // Mounted under `/v1` (nesting strips the prefix from what this layer sees).
    let path = format!("/v1{}", request.uri().path());
    let identity = &state.identity;
    let verified = authenticate(
        &state,
        request.method(),
        &path,
        request.headers(),
        |token| async move {
            identity
                .verify_access_token(&token, chrono::Utc::now())
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    match verified {
        Ok(claims) => {
            request
                .extensions_mut()
                .insert(Principal::from_claims(claims));
            next.run(request).await
        }
        Err(response) => response,
    }
}
