//! The Admin console's range verification: the event log explorer's "Verify a range" form posts
//! here, and the page shows what `POST /v1/audit/verifications` found with the operator's
//! token: the counts and the signed checkpoint the range was checked against, or the first
//! failure with a link to its aggregate's history.

use askama::Template;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::admin::{correctable, operator, Admin, Operator};
use super::session::Posted;
use super::{render, Layout};
use super::{PageError, SignedIn};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/admin/events/verify", get(form).post(verify))
}

/// The positions as typed (kept when refused).
#[derive(Debug, Default, Deserialize)]
struct RangeForm {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// What `POST /v1/audit/verifications` answers (the fields this page shows).
#[derive(Debug, Deserialize)]
struct Verification {
    verified: bool,
    from: u64,
    to: u64,
    events: u64,
    aggregates: u64,
    checkpoint: Option<Checked>,
    unsigned_from: Option<u64>,
    duration_ms: u64,
    failure: Option<Failure>,
}

#[derive(Debug, Deserialize)]
struct Checked {
    tree_size: u64,
    root_hash: String,
    kid: String,
}

#[derive(Debug, Deserialize)]
struct Failure {
    kind: String,
    position: Option<u64>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    sequence: Option<u64>,
    reason: String,
}

impl Failure {
    /// What broke, as a heading says it.
    fn what(&self) -> &'static str {
        match self.kind.as_str() {
            "hash_mismatch" => "an event was altered (hash mismatch)",
            "schema" => "an event does not match its schema",
            "form" => "an event breaks the envelope's rules",
            "broken_link" => "an aggregate's hash chain is broken",
            "position" => "events are out of order",
            "missing_position" => "an event was removed (a gap in positions)",
            "unreadable" => "a stored event cannot be read",
            "not_in_signed_tree" => "the events are not the ones the signed checkpoint holds",
            "checkpoint_signature" => "the checkpoint's signature does not verify",
            _ => "a check failed",
        }
    }

    /// The aggregate's history page, when the failure names one.
    fn history(&self) -> Option<String> {
        match (&self.aggregate_type, &self.aggregate_id) {
            (Some(t), Some(id)) => Some(format!("/admin/events/{t}/{id}")),
            _ => None,
        }
    }
}

impl Checked {
    /// The root's first 16 hex digits, for the summary line.
    fn short_root(&self) -> &str {
        self.root_hash.get(..16).unwrap_or(&self.root_hash)
    }

    /// The last position of a range ending at `to` that this checkpoint covers.
    /// (By reference: templates pass fields so.)
    fn signed_to(&self, to: &u64) -> u64 {
        (*to).min(self.tree_size)
    }
}

#[derive(Template)]
#[template(path = "admin/verify.html")]
struct VerifyPage {
    layout: Layout,
    csrf: String,
    form: RangeForm,
    /// Why the range was refused (the API's problem `detail`).
    refused: Option<String>,
    result: Option<Verification>,
}

fn page(
    op: &Operator,
    form: RangeForm,
    refused: Option<String>,
    result: Option<Verification>,
) -> Response {
    let status = if refused.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut shown = render(&VerifyPage {
        layout: op.0.layout("Verify a range", "/events"),
        csrf: op.0.session.csrf.clone(),
        form,
        refused,
        result,
    });
    *shown.status_mut() = status;
    shown
}

/// The form alone, prefilled from the explorer's window (`?from=&to=`).
async fn form(me: SignedIn<Admin>, Query(f): Query<RangeForm>) -> Result<Response, PageError> {
    let op = operator(me)?;
    Ok(page(&op, f, None, None))
}

fn position(name: &str, typed: &str) -> Result<u64, String> {
    typed
        .trim()
        .parse()
        .map_err(|_| format!("{name} must be a log position: a whole number, 1 or more"))
}

async fn verify(posted: Posted<Admin, RangeForm>) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let (from, to) = match (
        position("From position", &form.from),
        position("To position", &form.to),
    ) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(detail), _) | (_, Err(detail)) => return Ok(page(&op, form, Some(detail), None)),
    };
    // The API checks the rest (order, size, the log's end) and says why in its detail.
    let answer =
        op.0.api()
            .post(
                "/audit/verifications",
                &serde_json::json!({ "from": from, "to": to }),
            )
            .await;
    let answer = match answer {
        Ok(v) => v,
        Err(e) => {
            let detail = correctable(e)?;
            return Ok(page(&op, form, Some(detail), None));
        }
    };
    let result: Verification = serde_json::from_value(answer).map_err(|e| {
        tracing::error!(error = %e, "the console could not read a range verification");
        PageError::internal(&super::admin::INFO)
    })?;
    Ok(page(&op, form, None, Some(result)))
}
