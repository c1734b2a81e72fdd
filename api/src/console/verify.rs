//! `/verify`: the public verify page. An auditor drops a licence file or an evidence archive
//! and the browser checks it against the published key set: the file never leaves the
//! machine (`assets/verify.js` reproduces what `quantus license verify` and
//! `quantus evidence verify` check, with the vendored noble libraries). No sign-in: the page
//! and the key set it reads are public, as a JWKS is; neither holds anyone's data.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{render, ConsoleInfo, Layout};
use crate::{AppState, Problem};

static INFO: ConsoleInfo = ConsoleInfo {
    name: "Verify",
    base: "/verify",
    nav: &[],
};

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyPage {
    layout: Layout,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/verify", get(page))
        .route("/verify/", get(page))
        .route("/verify/keys.json", get(keys))
        .route("/verify/crl", get(crl))
}

async fn page() -> Response {
    render(&VerifyPage {
        layout: Layout {
            title: "Verify a licence or an evidence archive".into(),
            console: &INFO,
            current: "",
            user: None,
            notice: None,
            scopes: Default::default(),
        },
    })
}

/// The published key set and crypto policy: what `GET /v1/keys` serves to API clients, here
/// without a token, for verifiers who have none. Public keys and the policy only.
async fn keys(State(state): State<AppState>) -> Result<Response, Problem> {
    Ok(Json(state.licensing.key_set().await?).into_response())
}

/// The signed revocation list, what `GET /v1/crl` serves, here without a token: the page
/// checks its signature against the key set before it trusts what it names.
async fn crl(State(state): State<AppState>) -> Result<Response, Problem> {
    crate::licensing::signed_crl(&state).await
}
