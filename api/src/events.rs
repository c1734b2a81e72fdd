//! `GET /v1/events`: the log for subscribers, in position order.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use quantus_infra::event_store::read_log;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::problem::ApiQuery;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new().route("/events", get(list))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events after this log position (default 0: from the start).
    pub after: Option<u64>,
    /// At most this many events, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// When there is nothing after `after`, wait up to this many milliseconds (at most 30000)
    /// for new events (long polling).
    pub wait_ms: Option<u64>,
}

/// One event and its global log position. `envelope` is exactly what was hashed (see
/// docs/event-log.md).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEntry {
    pub position: u64,
    #[schema(value_type = Object)]
    pub envelope: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<LogEntry>,
    /// Pass as `after` to continue.
    pub next_after: u64,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, Problem> {
    principal.require("events:read")?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 1000"));
    }
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0));
    if wait > Duration::from_secs(30) {
        return Err(Problem::bad_request("wait_ms must be at most 30000"));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let records = loop {
        let records = read_log(&state.db, after, limit).await?;
        let now = tokio::time::Instant::now();
        if !records.is_empty() || now >= deadline {
            break records;
        }
        state
            .db
            .wait_for_append(after, (deadline - now).min(Duration::from_millis(100)))
            .await;
    };
    let next_after = records.last().map_or(after, |r| r.position);
    // A tenant reads its own events only; `next_after` still moves past the others.
    let events = records
        .into_iter()
        .filter(|r| principal.may_access(&r.envelope.tenant_id))
        .map(|r| LogEntry {
            position: r.position,
            envelope: serde_json::to_value(r.envelope).unwrap_or_default(),
        })
        .collect();
    Ok(Json(EventPage { events, next_after }))
}
