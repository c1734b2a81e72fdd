//! HTTP: axum routers, authentication, problem+json errors, OpenAPI.
//!
//! Invariant: only this crate knows HTTP and wire shapes. Every write goes through
//! [`quantus_commands::CommandBus`]; every read goes to a read model, optionally waiting for a
//! log position first (read-your-writes).

mod access;
mod audit;
mod auth;
mod consistency;
pub mod console;
mod events;
mod evidence;
mod identity;
mod jobs;
mod licensing;
mod metrics;
mod mfa;
mod oauth;
mod openapi;
mod organizations;
mod paging;
mod passkeys;
mod portal;
mod problem;
mod saml;
mod scim;
mod state;
mod write;

use axum::routing::get;
use axum::Router;

pub use auth::Principal;
pub use openapi::ApiDoc;
pub use problem::Problem;
pub use state::AppState;

/// The whole HTTP surface (every service in one process).
pub fn router(state: AppState) -> Router {
    app(state, true)
}

/// The Portal's routes alone (`--role portal`): it trusts QSA's JWKS and calls QuantumLock.
pub fn portal_router(state: AppState) -> Router {
    app(state, false)
}

fn app(state: AppState, everything: bool) -> Router {
    let routes = routes(&state, everything);
    let api = finish(routes.clone(), &state);
    // The consoles call the API above in-process; they are served where every /v1 route is.
    if everything {
        finish(routes.merge(console::routes(&state, api)), &state)
    } else {
        api
    }
}

fn routes(state: &AppState, everything: bool) -> Router<AppState> {
    let portal = portal::routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        portal::require_qsa_token,
    ));
    let mut v1 = Router::new();
    if everything {
        v1 = v1
            .merge(organizations::routes())
            .merge(events::routes())
            .merge(licensing::routes())
            .merge(identity::routes())
            .merge(mfa::routes())
            .merge(access::routes())
            .merge(passkeys::routes())
            .merge(audit::routes())
            .merge(jobs::routes())
            .merge(jobs::retention_routes())
            .merge(evidence::routes())
            .merge(scim::token_routes())
            .merge(saml::api_routes())
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_bearer,
            ));
    }
    let v1 = v1.merge(portal).merge(portal::webhook_routes());
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(openapi::serve))
        .nest("/v1", v1);
    if everything {
        app = app
            .merge(oauth::routes())
            .merge(saml::routes())
            .nest("/scim/v2", scim::routes(state.clone()));
    }
    app
}

/// The fallbacks and the middleware every route gets.
fn finish(routes: Router<AppState>, state: &AppState) -> Router {
    routes
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this route does not accept that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state.clone())
}
