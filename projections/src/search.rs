//! A SCIM search as SQL over a read model's indexed columns (issue 18 item 5), shared by the
//! users and the groups models: a [`Condition`] on one row, written with every value bound as
//! a parameter, never spliced into the text. `api::scim` translates a filter into it; each
//! model's `search` module says which table and columns it runs over.

use sqlx::any::AnyArguments;
use sqlx::query::{Query, QueryAs};
use sqlx::Any;

/// A plain, indexed column of a read model (users or groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    /// A user's `userName` lower-cased (str::to_lowercase).
    UserName,
    /// A group's `displayName` lower-cased (str::to_lowercase).
    GroupName,
    ExternalId,
    Created,
    LastModified,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::UserName => "user_name_lc",
            Column::GroupName => "name_lc",
            Column::ExternalId => "external_id",
            Column::Created => "created_at",
            Column::LastModified => "updated_at",
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

/// A condition on a row. A column without a value (NULL) satisfies no comparison, and its
/// negation does (as a missing attribute in SCIM's evaluation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Every row.
    All,
    Text(Column, TextOp, String),
    /// A non-empty value.
    Present(Column),
    /// A user's `active`.
    Active(bool),
    /// A user's personal attribute (one of `users::search::BLIND_ATTRIBUTES`) has a value
    /// whose blind index is `digest`.
    Blind {
        attribute: String,
        digest: String,
    },
    /// A user is a member of this group (the membership index, by group).
    MemberOf(String),
    /// A group has this user among its members (the membership index, by member).
    HasMember(String),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
}

/// The order of a page: a column (never NULL for a listed row), then `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub by: Column,
    pub descending: bool,
}

/// A parameter of the statement being written.
enum Param {
    Text(String),
    Int(i64),
}

/// A statement being written: `$1` is always the organization.
pub(crate) struct Sql {
    pub(crate) text: String,
    params: Vec<Param>,
    /// The alias of the searched table in `text`.
    alias: &'static str,
    /// `COLLATE "C"` on PostgreSQL: bytewise comparison whatever the database's locale.
    pub(crate) collate: &'static str,
}

impl Sql {
    /// `text` (ending in `WHERE … AND `, with `$1` the organization) then `condition`.
    pub(crate) fn new(
        text: String,
        alias: &'static str,
        organization_id: &str,
        condition: &Condition,
        postgres: bool,
    ) -> Sql {
        let mut sql = Sql {
            text,
            params: vec![Param::Text(organization_id.to_owned())],
            alias,
            collate: if postgres { " COLLATE \"C\"" } else { "" },
        };
        sql.condition(condition);
        sql
    }

    fn bind(&mut self, v: String) -> String {
        self.params.push(Param::Text(v));
        format!("${}", self.params.len())
    }

    pub(crate) fn bind_int(&mut self, n: u64) -> String {
        self.params
            .push(Param::Int(i64::try_from(n).unwrap_or(i64::MAX)));
        format!("${}", self.params.len())
    }

    fn column(&self, c: Column) -> String {
        format!("{}.{}", self.alias, c.name())
    }

    fn condition(&mut self, c: &Condition) {
        let a = self.alias;
        match c {
            Condition::All => self.text.push_str("1 = 1"),
            Condition::Text(col, op, value) => {
                let e = format!("{}{}", self.column(*col), self.collate);
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
                let e = self.column(*col);
                self.text
                    .push_str(&format!("({e} IS NOT NULL AND {e} <> '')"));
            }
            Condition::Active(true) => self.text.push_str(&format!("{a}.status = 'active'")),
            Condition::Active(false) => self.text.push_str(&format!("{a}.status <> 'active'")),
            Condition::Blind { attribute, digest } => {
                let at = self.bind(attribute.clone());
                let d = self.bind(digest.clone());
                self.text.push_str(&format!(
                    "{a}.id IN (SELECT b.user_id FROM user_blind_index b \
                     WHERE b.organization_id = $1 AND b.attribute = {at} AND b.digest = {d})"
                ));
            }
            Condition::MemberOf(group) => {
                let g = self.bind(group.clone());
                self.text.push_str(&format!(
                    "{a}.id IN (SELECT m.user_id FROM group_members m \
                     WHERE m.organization_id = $1 AND m.group_id = {g})"
                ));
            }
            Condition::HasMember(user) => {
                let u = self.bind(user.clone());
                self.text.push_str(&format!(
                    "{a}.id IN (SELECT m.group_id FROM group_members m \
                     WHERE m.organization_id = $1 AND m.user_id = {u})"
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

    /// ` ORDER BY` the order's column then id (ties in id order either way, as a stable sort
    /// of rows listed by id keeps them), `LIMIT`, `OFFSET`.
    pub(crate) fn order_page(&mut self, order: Order, offset: u64, limit: u64) {
        let dir = if order.descending { " DESC" } else { "" };
        let c = self.collate;
        let limit = self.bind_int(limit);
        let offset = self.bind_int(offset);
        let by = self.column(order.by);
        let id = self.column(Column::Id);
        self.text.push_str(&format!(
            " ORDER BY {by}{c}{dir}, {id}{c} LIMIT {limit} OFFSET {offset}"
        ));
    }

    /// The statement with its values bound, rows mapped by `T`'s `FromRow`.
    pub(crate) fn query_as<T>(&self) -> QueryAs<'_, Any, T, AnyArguments<'_>>
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

    pub(crate) fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for p in &self.params {
            q = match p {
                Param::Text(s) => q.bind(s.clone()),
                Param::Int(n) => q.bind(*n),
            };
        }
        q
    }
}
