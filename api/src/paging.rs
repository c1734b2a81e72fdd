//! Keyset paging shared by list routes: `?after=ID&limit=N`, answered with `next_after`.

use serde::Serialize;
use utoipa::ToSchema;

use crate::as_of::AsOf;
use crate::Problem;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// One page of a list: its items and the cursor of the next page. Every paged list answers
/// this shape, so one generic type describes them all (`Page_UserView`, ... in the document).
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<String>,
    /// The moment the page reflects, when asked with `as_of` / `as_of_position`; absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOf>,
}

impl<T: ToSchema> Page<T> {
    /// A page of the current state: `next_after` from a full page's last id.
    pub fn of(items: Vec<T>, limit: u32, id: impl Fn(&T) -> &str) -> Self {
        let next_after = next_after(&items, limit, id);
        Self {
            items,
            next_after,
            as_of: None,
        }
    }
}

/// The page size a client asked for, checked.
pub fn limit(requested: Option<u32>) -> Result<u32, Problem> {
    let limit = requested.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )))
    }
}

/// The cursor of the next page: the last id of a full page, none after the last page.
pub fn next_after<T>(rows: &[T], limit: u32, id: impl Fn(&T) -> &str) -> Option<String> {
    (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| id(r).to_owned()))
        .flatten()
}

/// One page of the aggregates a `P` event registered, for lists that have no read model yet:
/// every `P` in the log is read (the cost grows with the whole log's, not the caller's), `keep`
/// picks the caller's, and the page is their first registrations after `after`, in id order,
/// at most `limit`. Read from the log itself, a page holds every write already answered.
pub async fn registered<P: quantus_domain::events::EventPayload>(
    db: &quantus_infra::Database,
    keep: impl Fn(&P) -> bool,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<(quantus_infra::LogRecord, P)>, Problem> {
    let mut page: Vec<_> = quantus_infra::SqlEventRepository::new(db.clone())
        .events_of::<P>()
        .await?
        .into_iter()
        .filter(|(r, e)| keep(e) && after.is_none_or(|a| r.envelope.aggregate_id.as_str() > a))
        .collect();
    // Stable: the first registration of an id stays first.
    page.sort_by(|a, b| a.0.envelope.aggregate_id.cmp(&b.0.envelope.aggregate_id));
    page.dedup_by(|a, b| a.0.envelope.aggregate_id == b.0.envelope.aggregate_id);
    page.truncate(limit as usize);
    Ok(page)
}
