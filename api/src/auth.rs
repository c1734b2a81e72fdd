//! Bearer authentication for every `/v1` route: QSA-issued access tokens (RFC 9068), checked
//! against the token keys, and the caller's scopes, roles and tenant for authorisation.

use std::collections::BTreeSet;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
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
    let Some(token) = bearer_token(request.headers()) else {
        return unauthorized(None);
    };
    match state
        .identity
        .verify_access_token(token, chrono::Utc::now())
        .await
    {
        Ok(claims) => {
            request
                .extensions_mut()
                .insert(Principal::from_claims(claims));
            next.run(request).await
        }
        Err(e) => unauthorized(Some(e.to_string())),
    }
}
