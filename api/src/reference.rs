//! `/docs/api`: a browsable API reference (Swagger UI over `/openapi.json`), every asset in
//! the binary (vendored from npm by `scripts/vendor-assets.sh`), nothing fetched elsewhere.
//! Public, as `/openapi.json` is: it describes the API, it reads no data; trying a request
//! needs the caller's own bearer token.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/docs/api", get(page))
        .route("/docs/api/{asset}", get(asset))
}

/// Scripts only from this origin; Swagger UI sets element styles, hence inline styles.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

fn respond(body: &'static [u8], kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

async fn page() -> Response {
    respond(
        include_bytes!("../assets/api-reference.html"),
        "text/html; charset=utf-8",
    )
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &'static str) = match name.as_str() {
        "swagger-ui-bundle.js" => (
            include_bytes!("../assets/vendor/swagger-ui/swagger-ui-bundle.js"),
            "text/javascript; charset=utf-8",
        ),
        "swagger-ui.css" => (
            include_bytes!("../assets/vendor/swagger-ui/swagger-ui.css"),
            "text/css; charset=utf-8",
        ),
        "reference.js" => (
            include_bytes!("../assets/api-reference.js"),
            "text/javascript; charset=utf-8",
        ),
        "icon.svg" => (include_bytes!("../assets/icon.svg"), "image/svg+xml"),
        "reference.css" => (
            include_bytes!("../assets/api-reference.css"),
            "text/css; charset=utf-8",
        ),
        _ => return Problem::not_found(format!("no asset {name}")).into_response(),
    };
    respond(body, kind)
}
