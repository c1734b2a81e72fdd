//! Keyset paging shared by list routes: `?after=ID&limit=N`, answered with `next_after`.

use crate::Problem;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

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
