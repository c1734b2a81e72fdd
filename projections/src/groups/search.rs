//! Searching an organization's groups over the indexed columns of the groups read model, for
//! SCIM's filters, sorting and paging: `id`, `name_lc` (`displayName` lower-cased),
//! `external_id`, `created_at` / `updated_at`, and the membership index (`members.value`).
//! The SQL is the users search's ([`crate::search`]), over `groups_view g`.

use quantus_infra::InfraError;
use sqlx::{AnyPool, Row};

use super::{row_to_group, GroupRow, SELECT};
use crate::search::{Condition, Order, Sql};

/// `SELECT … FROM groups_view g WHERE` the organization's groups and `condition`.
fn select(what: &str, organization_id: &str, condition: &Condition, postgres: bool) -> Sql {
    Sql::new(
        format!("SELECT {what} FROM groups_view g WHERE g.organization_id = $1 AND "),
        "g",
        organization_id,
        condition,
        postgres,
    )
}

fn columns() -> &'static str {
    // The model's own column list, qualified by the alias.
    SELECT
        .trim_start_matches("SELECT ")
        .trim_end_matches(" FROM groups_view")
}

fn rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<GroupRow>, InfraError> {
    rows.iter().map(row_to_group).collect()
}

/// How many of the organization's groups satisfy `condition`.
pub async fn count(
    pool: &AnyPool,
    organization_id: &str,
    condition: &Condition,
    postgres: bool,
) -> Result<u64, InfraError> {
    let sql = select("COUNT(*) AS n", organization_id, condition, postgres);
    let n: i64 = sql.query().fetch_one(pool).await?.try_get("n")?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// The groups satisfying `condition` in `order`, `offset` of them skipped, at most `limit`.
pub async fn page(
    pool: &AnyPool,
    organization_id: &str,
    condition: &Condition,
    order: Order,
    offset: u64,
    limit: u64,
    postgres: bool,
) -> Result<Vec<GroupRow>, InfraError> {
    let mut sql = select(columns(), organization_id, condition, postgres);
    sql.order_page(order, offset, limit);
    rows(&sql.query().fetch_all(pool).await?)
}

/// The groups satisfying `condition`, by id, at most `limit` of them.
pub async fn candidates(
    pool: &AnyPool,
    organization_id: &str,
    condition: &Condition,
    limit: u64,
    postgres: bool,
) -> Result<Vec<GroupRow>, InfraError> {
    let mut sql = select(columns(), organization_id, condition, postgres);
    let c = sql.collate;
    let limit = sql.bind_int(limit);
    sql.text
        .push_str(&format!(" ORDER BY g.id{c} LIMIT {limit}"));
    rows(&sql.query().fetch_all(pool).await?)
}
