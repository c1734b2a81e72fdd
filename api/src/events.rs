//! `GET /v1/events`: the log for subscribers, in position order.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use quantus_infra::event_store::{position_before, read_log};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::problem::ApiQuery;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/events", get(list))
        .route("/aggregates/{aggregate_type}/{id}/events", get(history))
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
    /// Only events of this tenant.
    pub tenant: Option<String>,
    /// Only events of this aggregate type (`Contract`, `License`, ...).
    pub aggregate_type: Option<String>,
    /// Only events of this type (`ContractSent`, ...).
    pub event_type: Option<String>,
    /// Only events appended at or after this instant (RFC 3339): the read starts after the last
    /// position appended before it, when that is later than `after`.
    pub from: Option<String>,
    /// Only events appended before this instant (RFC 3339): the read stops at the last position
    /// appended before it, and `head` is that position (a reader from the end starts there).
    pub to: Option<String>,
}

/// An instant of the `from` / `to` filters.
pub(crate) fn instant(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, Problem> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    Problem::bad_request(format!(
                        "{name} must be an RFC 3339 instant such as 2026-01-31T09:00:00Z"
                    ))
                })
        })
        .transpose()
}

impl EventsQuery {
    fn matches(&self, e: &quantus_domain::envelope::Envelope) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == e.tenant_id)
            && self
                .aggregate_type
                .as_ref()
                .is_none_or(|t| *t == e.aggregate_type)
            && self.event_type.as_ref().is_none_or(|t| *t == e.event_type)
    }
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
    /// The position this page read after: `after`, or later when `from` starts later.
    pub after: u64,
    /// Pass as `after` to continue.
    pub next_after: u64,
    /// The log's last position when this page was read, or with `to` the last one appended
    /// before it (readers start near the end with `after = head - n`, e.g. an audit trail
    /// showing the latest first).
    pub head: u64,
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
    let from = instant("from", q.from.as_deref())?;
    let to = instant("to", q.to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(Problem::bad_request("from must not be after to"));
        }
    }
    let mut after = q.after.unwrap_or(0);
    if let Some(from) = from {
        after = after.max(position_before(&state.db, from).await?);
    }
    let end = match to {
        Some(to) => Some(position_before(&state.db, to).await?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 1000"));
    }
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0));
    if wait > Duration::from_secs(30) {
        return Err(Problem::bad_request("wait_ms must be at most 30000"));
    }
    // A range that ends in the past has nothing to wait for.
    let deadline = tokio::time::Instant::now() + if end.is_some() { Duration::ZERO } else { wait };
    let records = loop {
        let mut records = read_log(&state.db, after, limit).await?;
        if let Some(end) = end {
            records.retain(|r| r.position <= end);
        }
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
    // A tenant reads its own events only, and the filters keep what they name; `next_after`
    // still moves past the others (a page may hold fewer than `limit`, or none).
    let events = records
        .into_iter()
        .filter(|r| principal.may_access(&r.envelope.tenant_id) && q.matches(&r.envelope))
        .map(|r| LogEntry {
            position: r.position,
            envelope: serde_json::to_value(r.envelope).unwrap_or_default(),
        })
        .collect();
    // Read after the page: the head is never behind `next_after`.
    let head = match end {
        Some(end) => end.max(next_after),
        None => state.db.head_position().await?.max(next_after),
    };
    Ok(Json(EventPage {
        after,
        events,
        next_after,
        head,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AggregateHistory {
    /// In sequence order; each `envelope.prev_hash` is the previous event's `hash`.
    pub events: Vec<LogEntry>,
}

/// One aggregate's events with their log positions, in sequence order: its hash chain.
#[utoipa::path(get, path = "/v1/aggregates/{aggregate_type}/{id}/events", tag = "events",
    params(("aggregate_type" = String, Path, description = "e.g. Contract"), ("id" = String, Path)),
    responses((status = 200, body = AggregateHistory), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    axum::extract::Path((aggregate_type, id)): axum::extract::Path<(String, String)>,
) -> Result<Json<AggregateHistory>, Problem> {
    principal.require("events:read")?;
    let records = state
        .bus
        .repository()
        .aggregate_records(&aggregate_type, &id)
        .await?;
    // Another tenant's aggregate is as absent as one that does not exist.
    if records.is_empty()
        || !records
            .iter()
            .all(|r| principal.may_access(&r.envelope.tenant_id))
    {
        return Err(Problem::not_found(format!("no {aggregate_type} {id}")));
    }
    Ok(Json(AggregateHistory {
        events: records
            .into_iter()
            .map(|r| LogEntry {
                position: r.position,
                envelope: serde_json::to_value(r.envelope).unwrap_or_default(),
            })
            .collect(),
    }))
}
