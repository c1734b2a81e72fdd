//! Searching an organization's users over the indexed columns of the users read model, for
//! SCIM's filters, sorting and paging (`api::scim` translates a filter into a [`Condition`]).
//!
//! Plain, indexed columns: `id`, `user_name_lc` (SCIM `userName`, lower-cased), `external_id`,
//! `status` (`active`), `created_at` / `updated_at` (`meta.created` / `meta.lastModified`).
//! Personal attributes (emails, name parts, display name, phone numbers) are only in
//! `user_blind_index`, as keyed digests ([`SubjectKeys::blind_index`]): equality finds them,
//! nothing else can. Every value is bound as a parameter, never spliced into the text.
//!
//! [`SubjectKeys::blind_index`]: quantus_infra::subject_keys::SubjectKeys::blind_index

use quantus_infra::InfraError;
use sqlx::AnyPool;

use super::{ProfiledColumns, UserRow};
use crate::search::Sql;
pub use crate::search::{Column, Condition, Order, TextOp};

/// The attributes kept as blind-index digests: a user's personal values SCIM clients look
/// people up by. The names are SCIM attribute paths, lower-case.
pub const BLIND_ATTRIBUTES: &[&str] = &[
    "emails.value",
    "phonenumbers.value",
    "name.familyname",
    "name.givenname",
    "displayname",
];

/// `SELECT … FROM users_view u … WHERE` the organization's listed users and `condition`.
fn select(what: &str, organization_id: &str, condition: &Condition, postgres: bool) -> Sql {
    Sql::new(
        format!(
            "SELECT {what} FROM users_view u LEFT JOIN user_profiles p ON p.id = u.id \
             WHERE u.organization_id = $1 AND u.status <> 'erased' AND "
        ),
        "u",
        organization_id,
        condition,
        postgres,
    )
}

const COLS: &str = "u.id, u.organization_id, u.status, u.email, u.name, u.memberships, u.created_at, u.updated_at, u.version, p.profile";

fn rows_with_profiles(
    rows: Vec<ProfiledColumns>,
) -> Result<Vec<(UserRow, Option<serde_json::Value>)>, InfraError> {
    rows.into_iter().map(ProfiledColumns::opened).collect()
}

/// How many of the organization's users satisfy `condition`.
pub async fn count(
    pool: &AnyPool,
    organization_id: &str,
    condition: &Condition,
    postgres: bool,
) -> Result<u64, InfraError> {
    let sql = select("COUNT(*) AS n", organization_id, condition, postgres);
    let (n,): (i64,) = sql.query_as().fetch_one(pool).await?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// The users satisfying `condition` in `order`, `offset` of them skipped, at most `limit`.
pub async fn page(
    pool: &AnyPool,
    organization_id: &str,
    condition: &Condition,
    order: Order,
    offset: u64,
    limit: u64,
    postgres: bool,
) -> Result<Vec<(UserRow, Option<serde_json::Value>)>, InfraError> {
    let mut sql = select(COLS, organization_id, condition, postgres);
    sql.order_page(order, offset, limit);
    rows_with_profiles(sql.query_as().fetch_all(pool).await?)
}

/// The users satisfying `condition`, by id, at most `limit` of them.
pub async fn candidates(
    pool: &AnyPool,
    organization_id: &str,
    condition: &Condition,
    limit: u64,
    postgres: bool,
) -> Result<Vec<(UserRow, Option<serde_json::Value>)>, InfraError> {
    let mut sql = select(COLS, organization_id, condition, postgres);
    let c = sql.collate;
    let limit = sql.bind_int(limit);
    sql.text
        .push_str(&format!(" ORDER BY u.id{c} LIMIT {limit}"));
    rows_with_profiles(sql.query_as().fetch_all(pool).await?)
}
