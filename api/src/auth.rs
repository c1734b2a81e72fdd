//! Bearer authentication for every `/v1` route.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use quantus_domain::{Actor, ActorKind};
use quantus_infra::credentials::token_matches;

use crate::{AppState, Problem};

/// Who is calling; put into request extensions by [`require_bearer`].
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
}

pub async fn require_bearer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, Problem> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(Problem::unauthorized)?;
    if !token_matches(token, &state.token_hashes) {
        return Err(Problem::unauthorized());
    }
    request.extensions_mut().insert(Principal {
        actor: Actor {
            kind: ActorKind::Service,
            id: "bootstrap-admin".into(),
        },
    });
    Ok(next.run(request).await)
}
