//! HTTP: axum routers, authentication, problem+json errors, OpenAPI.
//!
//! Invariant: only this crate knows HTTP and wire shapes. Every write goes through
//! [`quantus_commands::CommandBus`]; every read goes to a read model, optionally waiting for a
//! log position first (read-your-writes).

mod access;
mod as_of;
mod audit;
mod auth;
mod bodies;
mod commercial;
mod consistency;
pub mod console;
pub mod dpop;
mod events;
mod evidence;
mod formats;
mod idempotency;
mod identity;
mod jobs;
mod licensing;
mod metrics;
mod oauth;
mod openapi;
mod organizations;
mod paging;
mod passkeys;
mod problem;
mod reference;
mod saml;
mod scim;
mod server;
mod state;
mod totp;
mod verification;
mod witness;
mod write;

use axum::routing::get;
use axum::Router;

pub use auth::Principal;
pub use metrics::Readiness;
pub use openapi::ApiDoc;
pub use problem::Problem;
pub use server::serve;
pub use state::AppState;
pub use witness::witness_router;

const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// The whole HTTP surface (every service in one process).
pub fn router(state: AppState) -> Router {
    let routes = routes(&state, Surface::Everything);
    let api = finish(routes.clone(), &state);
    // The consoles call the API above in-process, QSA's OAuth endpoints included.
    finish(
        routes.merge(console::routes(&state, api.clone(), api)),
        &state,
    )
}

/// The Portal's routes (`--role portal`): it trusts QSA's JWKS and calls QuantumLock. Its
/// consoles (those whose clients it knows) call every other `/v1` route in-process, kept
/// inside: outside callers reach only the Portal's own routes here.
pub fn portal_router(state: AppState) -> Router {
    let own = routes(&state, Surface::Portal);
    if state.consoles.is_empty() {
        return finish(own, &state);
    }
    let api = finish(routes(&state, Surface::ConsoleBackend), &state);
    // Sign-in, refresh, userinfo and sign-out are QSA's own business: over HTTP to QSA.
    let oauth = console::qsa_over_http(&state.gateway.issuer);
    finish(own.merge(console::routes(&state, api, oauth)), &state)
}

/// What a process that serves no API (`--role relay`, `--role projector`) answers over HTTP:
/// `/metrics`, `/healthz` and `/readyz`, so its publish errors and lags can be scraped and
/// probed. Nothing else: every other path is 404.
pub fn operations_router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::scrape));
    finish(routes, &state)
}

/// Which routes a router holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// Every service: QSA, QuantumLock, the evidence plane and the Portal.
    Everything,
    /// The Portal's routes alone.
    Portal,
    /// Every `/v1` route, QSA's tokens checked against its JWKS (the Portal role's consoles
    /// call it in-process; QSA's OAuth, SCIM and SAML endpoints stay with QSA).
    ConsoleBackend,
}

fn routes(state: &AppState, surface: Surface) -> Router<AppState> {
    // Inside authentication (route layers added later run first): it needs the caller.
    let idempotent = axum::middleware::from_fn_with_state(
        idempotency::Idempotency::new(state.db.clone(), &state.limits),
        idempotency::idempotent,
    );
    let portal = commercial::routes()
        .route_layer(idempotent.clone())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            commercial::require_qsa_token,
        ));
    let mut v1 = Router::new();
    if surface != Surface::Portal {
        v1 = v1
            .merge(organizations::routes())
            .merge(events::routes())
            .merge(licensing::routes())
            .merge(identity::routes())
            .merge(totp::routes())
            .merge(access::routes())
            .merge(passkeys::routes())
            .merge(audit::routes())
            .merge(jobs::routes())
            .merge(jobs::retention_routes())
            .merge(evidence::routes())
            .merge(scim::token_routes())
            .merge(saml::api_routes())
            .route_layer(idempotent);
        v1 = if surface == Surface::Everything {
            v1.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_bearer,
            ))
        } else {
            v1.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                commercial::require_qsa_token,
            ))
        };
    }
    let v1 = v1.merge(portal).merge(commercial::webhook_routes());
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(openapi::serve))
        .merge(reference::routes())
        .nest("/v1", v1);
    if surface == Surface::Everything {
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
            bodies::bound,
        ))
        // `bodies::bound` is the one size limit, for every extractor alike.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                // Every line logged while serving a request carries its id; the path only,
                // never the query (an authorization code travels there).
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
            })
            // A shed write (503) is the overload working as designed: one error line per shed
            // request would cost the CPU shedding is meant to save. The rest stay errors.
            .on_failure(
                |class: tower_http::classify::ServerErrorsFailureClass,
                 latency: std::time::Duration,
                 _: &tracing::Span| {
                    let ms = latency.as_millis();
                    match class {
                        tower_http::classify::ServerErrorsFailureClass::StatusCode(code)
                            if code == axum::http::StatusCode::SERVICE_UNAVAILABLE =>
                        {
                            tracing::debug!(latency_ms = ms, "request shed (503)")
                        }
                        other => {
                            tracing::error!(classification = %other, latency_ms = ms, "response failed")
                        }
                    }
                },
            ),
        )
        // A caller's own `x-request-id` is kept; otherwise one is made. Either way it is sent
        // back, so a client can quote it when reporting a problem.
        .layer(tower_http::request_id::PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(tower_http::request_id::SetRequestIdLayer::new(
            REQUEST_ID,
            tower_http::request_id::MakeRequestUuid,
        ))
        .layer(contain_panics())
        .with_state(state.clone())
}

/// A bug that panics in one request answers that request with a 500 problem and leaves
/// every other request (and tenant) served; the panic itself is logged.
fn contain_panics() -> tower_http::catch_panic::CatchPanicLayer<
    fn(Box<dyn std::any::Any + Send>) -> axum::response::Response,
> {
    tower_http::catch_panic::CatchPanicLayer::custom(panicked as fn(_) -> _)
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "a request handler panicked");
    Problem::internal().into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn boom() -> &'static str {
        panic!("a bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_problem_and_the_router_keeps_serving() {
        let app: Router = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "ok" }))
            .layer(super::contain_panics());
        let boom = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(boom.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(boom.headers()["content-type"], "application/problem+json");
        let body = boom.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("a bug"), "the panic message leaked: {text}");
        let fine = app
            .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(fine.status(), StatusCode::OK);
    }
}
