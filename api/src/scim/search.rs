//! A SCIM filter as a search of the users read model's indexed columns (issue 18 item 5).
//!
//! [`plan`] turns a parsed filter into a [`Condition`] and says whether it is exact (the
//! rows it selects are exactly those [`Filter::matches`]) or only narrows (a superset,
//! tested one by one afterwards). Exact: comparisons on `id`, `userName`, `externalId`,
//! `meta.created` / `meta.lastModified` (but `co` and `ew`), `active eq|ne true|false`,
//! presence of these, `eq` on a personal attribute through its blind index, and `and`,
//! `or`, `not` of exact terms. Everything else (`co`/`sw`/`ew`/`gt`... on personal
//! attributes, other attributes, value filters) narrows through its indexed conjuncts only.

use quantus_commands::scim::filter::{AttrPath, CompareOp, Filter};
use quantus_infra::subject_keys::SubjectKeys;
use quantus_projections::users::search::{Column, Condition, Order, TextOp, BLIND_ATTRIBUTES};
use serde_json::Value;

/// A filter as a search: the condition, and whether it selects exactly the filter's users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub condition: Condition,
    pub exact: bool,
}

impl Plan {
    fn all(exact: bool) -> Plan {
        Plan {
            condition: Condition::All,
            exact,
        }
    }
    fn exact(condition: Condition) -> Plan {
        Plan {
            condition,
            exact: true,
        }
    }
}

/// The search for `filter` (every user when there is none) in `organization_id`.
pub fn plan(filter: Option<&Filter>, organization_id: &str, keys: &SubjectKeys) -> Plan {
    match filter {
        None => Plan::all(true),
        Some(f) => Planner {
            organization_id,
            keys,
        }
        .plan(f),
    }
}

/// The order of a page when SQL can give it as the in-memory sort would: `sortBy` absent
/// (id order; `sortOrder` alone sorts nothing) or a column never empty for a listed user.
pub fn order(sort_by: Option<&AttrPath>, descending: bool) -> Option<Order> {
    let Some(path) = sort_by else {
        return Some(Order {
            by: Column::Id,
            descending: false,
        });
    };
    if path.extension().is_some() {
        return None;
    }
    let by = match path.dotted().as_str() {
        "id" => Column::Id,
        "username" => Column::UserName,
        "meta.created" => Column::Created,
        "meta.lastmodified" => Column::LastModified,
        _ => return None,
    };
    Some(Order { by, descending })
}

struct Planner<'a> {
    organization_id: &'a str,
    keys: &'a SubjectKeys,
}

/// A top-level attribute the read model has a column or a blind index for.
enum Target {
    Column(Column),
    Active,
    Blind(&'static str),
}

fn target(path: &AttrPath, scope: Option<&str>) -> Option<Target> {
    if path.extension().is_some() {
        return None;
    }
    let dotted = match scope {
        Some(s) => format!("{s}.{}", path.dotted()),
        None => path.dotted(),
    };
    // A complex multi-valued attribute without a sub-attribute compares its `value`s.
    let dotted = match dotted.as_str() {
        "emails" | "phonenumbers" => format!("{dotted}.value"),
        _ => dotted,
    };
    if let Some(b) = BLIND_ATTRIBUTES.iter().find(|b| **b == dotted) {
        return Some(Target::Blind(b));
    }
    if scope.is_some() {
        return None;
    }
    Some(match dotted.as_str() {
        "id" => Target::Column(Column::Id),
        "username" => Target::Column(Column::UserName),
        "externalid" => Target::Column(Column::ExternalId),
        "meta.created" => Target::Column(Column::Created),
        "meta.lastmodified" => Target::Column(Column::LastModified),
        "active" => Target::Active,
        _ => return None,
    })
}

/// The value as the column holds it, or `None` when SQL would not compare as SCIM does.
fn column_value(column: Column, value: &str) -> Option<String> {
    match column {
        Column::Id | Column::ExternalId => Some(value.to_owned()),
        Column::UserName => Some(value.to_lowercase()),
        Column::Created | Column::LastModified => {
            // SCIM compares these lower-cased ("…t…z"); the column holds "…T…Z". Over
            // digits, `-:.+` and t/z, upper-casing t and z keeps every comparison's outcome.
            let lc = value.to_lowercase();
            lc.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '-' | ':' | '.' | '+' | 't' | 'z'))
                .then(|| lc.to_uppercase())
        }
    }
}

impl Planner<'_> {
    fn plan(&self, f: &Filter) -> Plan {
        match f {
            Filter::And(terms) => {
                let plans: Vec<Plan> = terms.iter().map(|t| self.plan(t)).collect();
                let exact = plans.iter().all(|p| p.exact);
                let conds: Vec<Condition> = plans
                    .into_iter()
                    .map(|p| p.condition)
                    .filter(|c| *c != Condition::All)
                    .collect();
                Plan {
                    condition: match conds.len() {
                        0 => Condition::All,
                        _ => Condition::And(conds),
                    },
                    exact,
                }
            }
            Filter::Or(terms) => {
                let plans: Vec<Plan> = terms.iter().map(|t| self.plan(t)).collect();
                if plans
                    .iter()
                    .any(|p| p.condition == Condition::All && p.exact)
                {
                    return Plan::all(true);
                }
                if plans.iter().any(|p| p.condition == Condition::All) {
                    return Plan::all(false);
                }
                let exact = plans.iter().all(|p| p.exact);
                Plan {
                    condition: Condition::Or(plans.into_iter().map(|p| p.condition).collect()),
                    exact,
                }
            }
            Filter::Not(inner) => match self.plan(inner) {
                Plan {
                    condition,
                    exact: true,
                } => Plan::exact(Condition::Not(Box::new(condition))),
                _ => Plan::all(false),
            },
            Filter::Present(path) => match target(path, None) {
                Some(Target::Column(c)) => Plan::exact(Condition::Present(c)),
                // Always a boolean.
                Some(Target::Active) => Plan::all(true),
                _ => Plan::all(false),
            },
            Filter::Compare(path, op, value) => self.compare(path, *op, value, None),
            Filter::ValuePath(path, inner) => {
                // `emails[type eq "work" and value eq "x"]`: the blind index finds the users
                // with such a value; which of their values has the type is tested afterwards.
                let scope = path.name.to_lowercase();
                Plan {
                    condition: self.narrow_within(inner, &scope),
                    exact: false,
                }
            }
        }
    }

    /// A condition every user matching `inner` (inside `scope[...]`) satisfies.
    fn narrow_within(&self, inner: &Filter, scope: &str) -> Condition {
        match inner {
            Filter::And(terms) => {
                let conds: Vec<Condition> = terms
                    .iter()
                    .map(|t| self.narrow_within(t, scope))
                    .filter(|c| *c != Condition::All)
                    .collect();
                if conds.is_empty() {
                    Condition::All
                } else {
                    Condition::And(conds)
                }
            }
            Filter::Or(terms) => {
                let conds: Vec<Condition> =
                    terms.iter().map(|t| self.narrow_within(t, scope)).collect();
                if conds.contains(&Condition::All) {
                    Condition::All
                } else {
                    Condition::Or(conds)
                }
            }
            Filter::Compare(path, CompareOp::Eq, Value::String(s)) => {
                match target(path, Some(scope)) {
                    Some(Target::Blind(attribute)) => self.blind(attribute, s),
                    _ => Condition::All,
                }
            }
            _ => Condition::All,
        }
    }

    fn blind(&self, attribute: &str, value: &str) -> Condition {
        Condition::Blind {
            attribute: attribute.to_owned(),
            digest: self
                .keys
                .blind_index(self.organization_id, attribute, value),
        }
    }

    fn compare(&self, path: &AttrPath, op: CompareOp, value: &Value, scope: Option<&str>) -> Plan {
        match (target(path, scope), value) {
            (Some(Target::Active), Value::Bool(b)) => match op {
                CompareOp::Eq => Plan::exact(Condition::Active(*b)),
                CompareOp::Ne => Plan::exact(Condition::Active(!*b)),
                _ => Plan::all(false),
            },
            (Some(Target::Blind(attribute)), Value::String(s)) if op == CompareOp::Eq => {
                // Exact: the digest is of the lower-cased value, as SCIM compares them.
                Plan::exact(self.blind(attribute, s))
            }
            (Some(Target::Column(column)), Value::String(s)) => {
                let op = match op {
                    CompareOp::Eq => TextOp::Eq,
                    CompareOp::Ne => TextOp::Ne,
                    CompareOp::Sw => TextOp::Sw,
                    CompareOp::Gt => TextOp::Gt,
                    CompareOp::Ge => TextOp::Ge,
                    CompareOp::Lt => TextOp::Lt,
                    CompareOp::Le => TextOp::Le,
                    CompareOp::Co | CompareOp::Ew => return Plan::all(false),
                };
                match column_value(column, s) {
                    Some(v) => Plan::exact(Condition::Text(column, op, v)),
                    None => Plan::all(false),
                }
            }
            _ => Plan::all(false),
        }
    }
}
