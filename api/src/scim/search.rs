//! A SCIM filter as a search of the users or groups read model's indexed columns (issue 18
//! item 5).
//!
//! [`plan`] turns a parsed filter into a [`Condition`] and says whether it is exact (the
//! rows it selects are exactly those [`Filter::matches`]) or only narrows (a superset,
//! tested one by one afterwards). Exact: comparisons on `id`, `externalId`,
//! `meta.created` / `meta.lastModified` (but `co` and `ew`), a user's `userName` and
//! `active eq|ne true|false`, a group's `displayName`, presence of these, `eq` on a personal
//! attribute through its blind index, `eq` on membership (`groups.value`, `members.value`)
//! through the membership index, and `and`, `or`, `not` of exact terms. Everything else
//! (`co`/`sw`/`ew`/`gt`... on personal attributes, other attributes, value filters) narrows
//! through its indexed conjuncts only.

use quantus_commands::scim::filter::{case_exact, AttrPath, CompareOp, Filter};
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

/// Which read model a search runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    User,
    Group,
}

/// The search for `filter` (every resource when there is none) in `organization_id`.
pub fn plan(
    resource: Resource,
    filter: Option<&Filter>,
    organization_id: &str,
    keys: &SubjectKeys,
) -> Plan {
    match filter {
        None => Plan::all(true),
        Some(f) => Planner {
            resource,
            organization_id,
            keys,
        }
        .plan(f),
    }
}

/// The order of a page when SQL can give it as the in-memory sort would: `sortBy` absent
/// (id order; `sortOrder` alone sorts nothing) or a column never empty for a listed row.
pub fn order(resource: Resource, sort_by: Option<&AttrPath>, descending: bool) -> Option<Order> {
    let Some(path) = sort_by else {
        return Some(Order {
            by: Column::Id,
            descending: false,
        });
    };
    if path.extension().is_some() {
        return None;
    }
    let by = match (resource, path.dotted().as_str()) {
        (_, "id") => Column::Id,
        (Resource::User, "username") => Column::UserName,
        (Resource::Group, "displayname") => Column::GroupName,
        (_, "meta.created") => Column::Created,
        (_, "meta.lastmodified") => Column::LastModified,
        _ => return None,
    };
    Some(Order { by, descending })
}

struct Planner<'a> {
    resource: Resource,
    organization_id: &'a str,
    keys: &'a SubjectKeys,
}

/// A top-level attribute the read model has a column or an index for.
enum Target {
    Column(Column),
    Active,
    Blind(&'static str),
    /// Membership (a user's `groups`, a group's `members`); `case_exact` as SCIM compares
    /// the path (`members.value` exactly, bare `members` without case).
    Membership {
        case_exact: bool,
    },
}

fn target(resource: Resource, path: &AttrPath, scope: Option<&str>) -> Option<Target> {
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
    let membership = match resource {
        Resource::User => "groups",
        Resource::Group => "members",
    };
    if dotted == membership || dotted == format!("{membership}.value") {
        return Some(Target::Membership {
            case_exact: case_exact(&dotted),
        });
    }
    if resource == Resource::User {
        if let Some(b) = BLIND_ATTRIBUTES.iter().find(|b| **b == dotted) {
            return Some(Target::Blind(b));
        }
    }
    if scope.is_some() {
        return None;
    }
    Some(match (resource, dotted.as_str()) {
        (_, "id") => Target::Column(Column::Id),
        (Resource::User, "username") => Target::Column(Column::UserName),
        (Resource::Group, "displayname") => Target::Column(Column::GroupName),
        (_, "externalid") => Target::Column(Column::ExternalId),
        (_, "meta.created") => Target::Column(Column::Created),
        (_, "meta.lastmodified") => Target::Column(Column::LastModified),
        (Resource::User, "active") => Target::Active,
        _ => return None,
    })
}

/// The value as the column holds it, or `None` when SQL would not compare as SCIM does.
fn column_value(column: Column, value: &str) -> Option<String> {
    match column {
        Column::Id | Column::ExternalId => Some(value.to_owned()),
        Column::UserName | Column::GroupName => Some(value.to_lowercase()),
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
            Filter::Present(path) => match target(self.resource, path, None) {
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
                match target(self.resource, path, Some(scope)) {
                    Some(Target::Blind(attribute)) => self.blind(attribute, s),
                    Some(Target::Membership { case_exact }) => self.membership(case_exact, s),
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

    /// Members of the group `id` (users), or groups with the member `id` (groups).
    fn membership(&self, case_exact: bool, id: &str) -> Condition {
        // Ids are lower-case UUIDs: a case-insensitive comparison matches the lower-cased id.
        let id = if case_exact {
            id.to_owned()
        } else {
            id.to_lowercase()
        };
        match self.resource {
            Resource::User => Condition::MemberOf(id),
            Resource::Group => Condition::HasMember(id),
        }
    }

    fn compare(&self, path: &AttrPath, op: CompareOp, value: &Value, scope: Option<&str>) -> Plan {
        match (target(self.resource, path, scope), value) {
            (Some(Target::Membership { case_exact }), Value::String(s)) if op == CompareOp::Eq => {
                Plan::exact(self.membership(case_exact, s))
            }
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
