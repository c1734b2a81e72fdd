//! HTTP: axum routers, authentication, problem+json errors, OpenAPI.
//!
//! Invariant: only this crate knows HTTP and wire shapes. Every write goes through
//! [`quantus_commands::CommandBus`]; every read goes to a read model, optionally waiting for a
//! log position first (read-your-writes).

mod audit;
mod auth;
mod consistency;
mod events;
mod evidence;
mod identity;
mod jobs;
mod licensing;
mod metrics;
mod oauth;
mod openapi;
mod organizations;
mod paging;
mod problem;
mod state;
mod write;

use axum::routing::get;
use axum::Router;

pub use auth::Principal;
pub use openapi::ApiDoc;
pub use problem::Problem;
pub use state::AppState;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .merge(organizations::routes())
        .merge(events::routes())
        .merge(licensing::routes())
        .merge(identity::routes())
        .merge(audit::routes())
        .merge(jobs::routes())
        .merge(jobs::retention_routes())
        .merge(evidence::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(openapi::serve))
        .nest("/v1", v1)
        .merge(oauth::routes())
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
        .with_state(state)
}
