//! What every command route shares: the command context, optimistic concurrency through
//! If-Match, the answer's shape, and optional JSON bodies.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use quantus_commands::{CommandError, CommandOutcome};
use quantus_domain::envelope::truncate_to_micros;
use quantus_domain::CommandContext;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::Problem;

/// The answer to every command: where its events are in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAccepted {
    pub id: String,
    /// The aggregate's version after the command (also the ETag).
    pub version: u64,
    /// Log position to pass as `min_position` to read your own write.
    pub position: u64,
}

pub fn context(principal: &Principal, headers: &HeaderMap, tenant: &str) -> CommandContext {
    let correlation_id = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::now_v7);
    CommandContext {
        tenant_id: tenant.to_owned(),
        actor: principal.actor.clone(),
        occurred_at: truncate_to_micros(Utc::now()),
        correlation_id,
        causation_id: Uuid::now_v7(),
    }
}

/// `If-Match: "N"` (or `*`): the version the client last saw.
pub fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Problem::bad_request("If-Match is not ASCII"))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| Problem::bad_request("If-Match must be an ETag from this API, such as \"3\""))
}

/// A refused command's problem, given the `If-Match` version the client sent: a concurrency
/// refusal is 412 when the client named the version it last saw (its precondition failed,
/// RFC 9110 §13.1.1), 409 when it named none (writers racing).
pub fn refusal(if_match: Option<u64>) -> impl FnOnce(CommandError) -> Problem {
    move |e| match (e, if_match) {
        (CommandError::Concurrency(detail), Some(_)) => Problem::precondition_failed(detail),
        (e, _) => e.into(),
    }
}

/// The answer to a command; `location` is set for a created resource (201).
pub fn accepted(
    status: StatusCode,
    id: &str,
    outcome: CommandOutcome,
    location: Option<String>,
) -> Response {
    let body = CommandAccepted {
        id: id.to_owned(),
        version: outcome.version,
        position: outcome.position,
    };
    accepted_with(status, body, outcome, location)
}

/// As [`accepted`], with a body of the route's own (which should carry `version` and
/// `position` too).
pub fn accepted_with(
    status: StatusCode,
    body: impl Serialize,
    outcome: CommandOutcome,
    location: Option<String>,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", outcome.version)) {
        headers.insert(header::ETAG, v);
    }
    headers.insert("quantus-log-position", HeaderValue::from(outcome.position));
    if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, v);
    }
    response
}

/// An empty body means the defaults; a non-empty one must be valid JSON without unknown fields.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as application/json",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = T::deserialize(&mut de).map_err(|e| {
        if e.is_data() {
            Problem::unprocessable(e.to_string())
        } else {
            Problem::bad_request(e.to_string())
        }
    })?;
    de.end().map_err(|e| Problem::bad_request(e.to_string()))?;
    Ok(value)
}
