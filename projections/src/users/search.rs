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
use sqlx::any::AnyArguments;
use sqlx::query::QueryAs;
use sqlx::{Any, AnyPool};

use super::{ProfiledColumns, UserRow};

/// The attributes kept as blind-index digests: a user's personal values SCIM clients look
/// people up by. The names are SCIM attribute paths, lower-case.
pub const BLIND_ATTRIBUTES: &[&str] = &[
    "emails.value",
    "phonenumbers.value",
    "name.familyname",
    "name.givenname",
    "displayname",
];

/// A plain column of the users read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    /// `userName` lower-cased (str::to_lowercase).
    UserName,
    ExternalId,
    Created,
    LastModified,
}

impl Column {
    fn sql(self) -> &'static str {
        match self {
            Column::Id => "u.id",
            Column::UserName => "u.user_name_lc",
            Column::ExternalId => "u.external_id",
            Column::Created => "u.created_at",
            Column::LastModified => "u.updated_at",
        }
    }
}

/// How a text column compares with a value, bytewise (the order of Rust's `str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextOp {
    Eq,
    Ne,
    /// Starts with: a range on the index.
    Sw,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A condition on a user's row. A column without a value (NULL) satisfies no comparison, and
/// its negation does (as a missing attribute in SCIM's evaluation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Every user.
    All,
    Text(Column, TextOp, String),
    /// A non-empty value.
    Present(Column),
    Active(bool),
    /// A personal attribute (one of [`BLIND_ATTRIBUTES`]) has a value whose blind index is
    /// `digest`.
    Blind {
        attribute: String,
        digest: String,
    },
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
}

/// A parameter of the statement being written.
enum Param {
    Text(String),
    Int(i64),
}

struct Sql {
    text: String,
    params: Vec<Param>,
    /// `COLLATE "C"` on PostgreSQL: bytewise comparison whatever the database's locale.
    collate: &'static str,
}

impl Sql {
    fn bind(&mut self, v: String) -> String {
        self.params.push(Param::Text(v));
        format!("${}", self.params.len())
    }

    fn bind_int(&mut self, n: u64) -> String {
        self.params
            .push(Param::Int(i64::try_from(n).unwrap_or(i64::MAX)));
        format!("${}", self.params.len())
    }

    fn condition(&mut self, c: &Condition) {
        match c {
            Condition::All => self.text.push_str("1 = 1"),
            Condition::Text(col, op, value) => {
                let e = format!("{}{}", col.sql(), self.collate);
                let cmp = match op {
                    TextOp::Sw => {
                        // Every string that starts with `value` sorts below value + U+10FFFF.
                        let low = self.bind(value.clone());
                        let high = self.bind(format!("{value}\u{10FFFF}"));
                        self.text.push_str(&format!(
                            "({e} IS NOT NULL AND {e} >= {low} AND {e} < {high})"
                        ));
                        return;
                    }
                    TextOp::Eq => "=",
                    TextOp::Ne => "<>",
                    TextOp::Gt => ">",
                    TextOp::Ge => ">=",
                    TextOp::Lt => "<",
                    TextOp::Le => "<=",
                };
                let p = self.bind(value.clone());
                self.text
                    .push_str(&format!("({e} IS NOT NULL AND {e} {cmp} {p})"));
            }
            Condition::Present(col) => {
                let e = col.sql();
                self.text
                    .push_str(&format!("({e} IS NOT NULL AND {e} <> '')"));
            }
            Condition::Active(true) => self.text.push_str("u.status = 'active'"),
            Condition::Active(false) => self.text.push_str("u.status <> 'active'"),
            Condition::Blind { attribute, digest } => {
                let org = "$1";
                let a = self.bind(attribute.clone());
                let d = self.bind(digest.clone());
                self.text.push_str(&format!(
                    "u.id IN (SELECT b.user_id FROM user_blind_index b \
                     WHERE b.organization_id = {org} AND b.attribute = {a} AND b.digest = {d})"
                ));
            }
            Condition::And(terms) | Condition::Or(terms) => {
                let join = if matches!(c, Condition::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                if terms.is_empty() {
                    self.text
                        .push_str(if join == " AND " { "1 = 1" } else { "1 = 0" });
                    return;
                }
                self.text.push('(');
                for (i, t) in terms.iter().enumerate() {
                    if i > 0 {
                        self.text.push_str(join);
                    }
                    self.condition(t);
                }
                self.text.push(')');
            }
            Condition::Not(inner) => {
                self.text.push_str("NOT (");
                self.condition(inner);
                self.text.push(')');
            }
        }
    }

    /// The statement with its parameters bound, each row mapped to a `T` by column name.
    fn query_as<T>(&self) -> QueryAs<'_, Any, T, AnyArguments<'_>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let mut q = sqlx::query_as(&self.text);
        for p in &self.params {
            q = match p {
                Param::Text(s) => q.bind(s.clone()),
                Param::Int(n) => q.bind(*n),
            };
        }
        q
    }
}

/// The order of a page: a column (never NULL for a listed user), then `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub by: Column,
    pub descending: bool,
}

/// `SELECT … FROM users_view u … WHERE` the organization's listed users and `condition`.
fn select(what: &str, organization_id: &str, condition: &Condition, postgres: bool) -> Sql {
    let mut sql = Sql {
        text: format!(
            "SELECT {what} FROM users_view u LEFT JOIN user_profiles p ON p.id = u.id \
             WHERE u.organization_id = $1 AND u.status <> 'erased' AND "
        ),
        params: vec![Param::Text(organization_id.to_owned())],
        collate: if postgres { " COLLATE \"C\"" } else { "" },
    };
    sql.condition(condition);
    sql
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
    let dir = if order.descending { " DESC" } else { "" };
    let c = sql.collate;
    let limit = sql.bind_int(limit);
    let offset = sql.bind_int(offset);
    // Ties keep id order either way, as a stable sort of rows listed by id does.
    sql.text.push_str(&format!(
        " ORDER BY {}{c}{dir}, u.id{c} LIMIT {limit} OFFSET {offset}",
        order.by.sql(),
    ));
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
