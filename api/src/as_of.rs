//! Time travel: `as_of` (an RFC 3339 instant) or `as_of_position` (a log position) on a read
//! model's list answers it as the model stood then, from its history
//! (`quantus_projections::history`). An instant is the last position appended before it
//! (`GET /v1/events?to=`'s search); the answer names both.

use chrono::{DateTime, Utc};
use quantus_domain::envelope::rfc3339_micros;
use quantus_infra::event_store::{appended_at, position_before};
use quantus_projections::runner::ProjectionRunner;
use serde::Serialize;
use utoipa::ToSchema;

use crate::consistency::Consistency;
use crate::{AppState, Problem};

/// The moment an as-of answer reflects.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AsOf {
    /// The last log position the answer includes (0: before the first event).
    pub position: u64,
    /// The instant asked for with `as_of`; with `as_of_position`, when that position was
    /// appended (absent for position 0).
    #[schema(format = DateTime)]
    pub instant: Option<String>,
    /// `instant` as a value (entitlements depend on the time as well as the position).
    #[serde(skip)]
    pub at: Option<DateTime<Utc>>,
}

/// The moment `as_of` / `as_of_position` name, once `model` has applied it; `None` when the
/// query names neither (the current state).
pub async fn resolve(
    state: &AppState,
    model: &ProjectionRunner,
    as_of: Option<&str>,
    as_of_position: Option<u64>,
    wait_ms: Option<u64>,
) -> Result<Option<AsOf>, Problem> {
    let Some(moment) = moment(state, as_of, as_of_position).await? else {
        return Ok(None);
    };
    // The history holds a position once the model has applied it (and all before it).
    Consistency {
        min_position: Some(moment.position),
        wait_ms,
    }
    .wait(model)
    .await?;
    Ok(Some(moment))
}

/// The moment `as_of` / `as_of_position` name, in the log itself: enough for an aggregate,
/// which is read from the log (a read model waits for it with [`resolve`]).
pub async fn moment(
    state: &AppState,
    as_of: Option<&str>,
    as_of_position: Option<u64>,
) -> Result<Option<AsOf>, Problem> {
    Ok(Some(match (as_of, as_of_position) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give as_of (an instant) or as_of_position, not both",
            ))
        }
        (Some(instant), None) => {
            let instant = crate::events::instant("as_of", Some(instant))?
                .ok_or_else(|| Problem::bad_request("as_of must not be empty"))?;
            AsOf {
                position: position_before(&state.db, instant).await?,
                instant: Some(rfc3339_micros::format(&instant)),
                at: Some(instant),
            }
        }
        (None, Some(position)) => {
            let head = state.db.head_position().await?;
            if position > head {
                return Err(Problem::bad_request(format!(
                    "as_of_position {position} is past the end of the log (position {head})"
                )));
            }
            let at = match position {
                0 => None,
                p => Some(appended_at(&state.db, p).await?),
            };
            AsOf {
                position,
                instant: at.as_ref().map(rfc3339_micros::format),
                at,
            }
        }
    }))
}

/// The rows a history returned, read as the current-state query's rows `R` (the history
/// keeps each row as that query serves it) and shown as `V`.
pub fn rows<R: serde::de::DeserializeOwned, V: From<R>>(
    rows: Vec<serde_json::Value>,
) -> Result<Vec<V>, Problem> {
    rows.into_iter()
        .map(|row| {
            serde_json::from_value::<R>(row).map(V::from).map_err(|e| {
                tracing::error!(error = %e, "a read model's history holds an unreadable row");
                Problem::internal()
            })
        })
        .collect()
}

/// The `id` of a row the history returned, for paging.
pub fn row_id(row: &serde_json::Value) -> &str {
    row.get("id").and_then(|v| v.as_str()).unwrap_or_default()
}
