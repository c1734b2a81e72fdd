//! A witness's HTTP surface (C2SP tlog-witness): `POST /add-checkpoint`, served by
//! `quantus witness serve`. The protocol fixes the statuses: 200 with the cosignature lines,
//! 409 with the size the witness last cosigned (`text/x.tlog.size`), 400, 403, 404 and 422 for
//! the refusals of [`quantus_crypto::witness::Refusal`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use quantus_crypto::witness::Refusal;
use quantus_infra::witness::{Witness, MAX_REQUEST_BYTES};

use crate::problem::Problem;

/// The witness's routes: `add-checkpoint`, and its verifier key at `/` for operators.
pub fn witness_router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/", get(vkey))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(witness)
}

async fn vkey(State(witness): State<Arc<Witness>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", witness.vkey()),
    )
        .into_response()
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: Bytes) -> Response {
    let Ok(body) = std::str::from_utf8(&body) else {
        return Problem::bad_request("the request is not UTF-8").into_response();
    };
    match witness.add_checkpoint(body, chrono::Utc::now()).await {
        Ok(Ok(lines)) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], lines).into_response()
        }
        Ok(Err(Refusal::Conflict(size))) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/x.tlog.size")],
            format!("{size}\n"),
        )
            .into_response(),
        Ok(Err(refusal)) => {
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            tracing::info!(%refusal, "refused a checkpoint");
            Problem::new(
                status,
                "witness-refusal",
                "Checkpoint refused",
                refusal.to_string(),
            )
            .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "the witness failed");
            Problem::internal().into_response()
        }
    }
}
