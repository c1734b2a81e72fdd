//! The Admin console's "show this organization as of ...": an organization's people, groups,
//! licences, contracts, entitlements and access rules as they stood at a moment (a UTC date and
//! time, or a log position from the event explorer), from the API's `as_of` queries with the
//! operator's token. The access rules' answer names the position; every other section is
//! asked for that same position, so the page shows one consistent moment of the log.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::admin::{operator, utc_instant, Admin, Operator, INFO};
use super::api::{query, segment, Page};
use super::{day, render, Layout};
use super::{PageError, SignedIn};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/admin/organizations/{org}/as-of", get(as_of))
}

/// Rows asked for per section (the API's largest page); more are announced, not paged.
const ROWS: u32 = 200;

#[derive(Debug, Default, Deserialize)]
struct AsOfParams {
    /// As typed: `2026-11-30 00:00:00` (UTC; a `T` for the space and no seconds do too), or
    /// RFC 3339.
    #[serde(default)]
    at: String,
    /// A log position (the event explorer's links); kept as text so that the API judges it.
    #[serde(default)]
    position: String,
}

// ---- what the API answers ----

#[derive(Debug, Deserialize)]
struct Organization {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Moment {
    position: u64,
    instant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Policy {
    rules: Vec<RuleRow>,
    as_of: Moment,
}

#[derive(Debug, Deserialize)]
struct RuleRow {
    name: String,
    priority: u32,
    outcome: String,
    #[serde(default)]
    conditions: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct UserRow {
    id: String,
    status: String,
    email: Option<String>,
    name: Option<String>,
    #[serde(default)]
    memberships: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct GroupRow {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct LicenseRow {
    id: String,
    product: String,
    edition: String,
    status: String,
    expires_at: String,
}

#[derive(Debug, Deserialize)]
struct ItemName {
    product: String,
    edition: String,
}

#[derive(Debug, Deserialize)]
struct ContractRow {
    id: String,
    status: String,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    line_items: Vec<ItemName>,
}

#[derive(Debug, Deserialize)]
struct QuotaView {
    amount: i64,
    enforcement: String,
    used: i64,
}

#[derive(Debug, Deserialize)]
struct EntitlementsView {
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    quotas: BTreeMap<String, QuotaView>,
    #[serde(default)]
    limits: BTreeMap<String, i64>,
}

// ---- the page ----

struct Person {
    name: String,
    email: String,
    status: String,
    roles: String,
}

struct Group {
    name: String,
    members: String,
}

struct Contract {
    id: String,
    status: String,
    term: String,
    products: String,
}

struct Rule {
    name: String,
    priority: u32,
    outcome: String,
    conditions: String,
}

/// What the organization was at the moment.
struct Then {
    position: u64,
    /// The instant the moment stands for, as people read it (none before the first event).
    instant: Option<String>,
    /// Asked by position (the explorer), not by instant.
    by_position: bool,
    people: Vec<Person>,
    groups: Vec<Group>,
    licenses: Vec<LicenseRow>,
    contracts: Vec<Contract>,
    features: String,
    quotas: Vec<String>,
    limits: Vec<String>,
    rules: Vec<Rule>,
    /// Sections with more rows than the page shows.
    truncated: Vec<&'static str>,
}

#[derive(Template)]
#[template(path = "admin/as_of.html")]
struct AsOfPageView {
    layout: Layout,
    org: String,
    name: String,
    /// The organization is a customer (its page exists).
    customer: bool,
    /// The form's value (`datetime-local`, UTC).
    at: String,
    /// The API's `detail` when it refused the moment.
    refused: Option<String>,
    then: Option<Then>,
}

async fn as_of(
    me: SignedIn<Admin>,
    Path(org): Path<String>,
    Query(p): Query<AsOfParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let org = segment(&INFO, &org)?.to_owned();
    let api = op.0.api();
    let o: Organization = api.get(&format!("/organizations/{org}")).await?;
    let customer = api
        .find::<serde_json::Value>(&format!("/customers/{org}"))
        .await?
        .is_some();
    let position = p.position.trim();
    // A text field rather than the browser's date picker, which shows local 12-hour clocks in
    // some locales next to a moment meant in UTC.
    let instant = utc_instant(&typed_instant(&p.at));
    let mut view = AsOfPageView {
        layout: op.0.layout(format!("{} as of a moment", o.name), "/"),
        org,
        name: o.name,
        customer,
        at: p.at.trim().to_owned(),
        refused: None,
        then: None,
    };
    let asked = if !position.is_empty() {
        ("as_of_position", position)
    } else if let Some(instant) = instant.as_deref() {
        ("as_of", instant)
    } else {
        // No moment yet: the form alone.
        return Ok(render(&view));
    };
    match then(&op, &view.org, asked).await {
        Ok(then) => {
            // The form shows the moment shown, to move on from it.
            if let Some(instant) = then.instant.as_deref() {
                view.at = form_value(instant);
            }
            view.then = Some(then);
            Ok(render(&view))
        }
        // A moment the API refuses: its detail, on the form to correct it.
        Err(e) if e.status == StatusCode::BAD_REQUEST => {
            view.refused = Some(e.detail);
            let mut shown = render(&view);
            *shown.status_mut() = StatusCode::BAD_REQUEST;
            Ok(shown)
        }
        Err(e) => Err(e),
    }
}

/// The organization at the moment `asked` names (`as_of` or `as_of_position`, as given).
async fn then(op: &Operator, org: &str, asked: (&str, &str)) -> Result<Then, PageError> {
    let api = op.0.api();
    let policy: Policy = api
        .get(&format!(
            "/access-policies/{org}{}",
            query(&[(asked.0, Some(asked.1))])
        ))
        .await?;
    let position = policy.as_of.position.to_string();
    let at = [("as_of_position", Some(position.as_str()))];
    let list = |path: &str| {
        let limit = ROWS.to_string();
        format!(
            "/{path}{}",
            query(&[("org", Some(org)), at[0], ("limit", Some(limit.as_str()))])
        )
    };
    let users: Page<UserRow> = api.get(&list("users")).await?;
    let groups: Page<GroupRow> = api.get(&list("groups")).await?;
    let licenses: Page<LicenseRow> = api.get(&list("licenses")).await?;
    let contracts: Page<ContractRow> = api.get(&list("contracts")).await?;
    // Entitlements depend on the time as well (contracts in force, the month's usage): asked
    // as the operator asked, which the API maps to the same position.
    let entitlements: EntitlementsView = api
        .get(&format!(
            "/entitlements{}",
            query(&[("org", Some(org)), (asked.0, Some(asked.1))])
        ))
        .await?;

    let mut truncated = Vec::new();
    for (more, section) in [
        (users.next_after.is_some(), "people"),
        (groups.next_after.is_some(), "groups"),
        (licenses.next_after.is_some(), "licences"),
        (contracts.next_after.is_some(), "contracts"),
    ] {
        if more {
            truncated.push(section);
        }
    }
    let names: BTreeMap<&str, String> = users
        .items
        .iter()
        .map(|u| (u.id.as_str(), person_name(u)))
        .collect();
    Ok(Then {
        position: policy.as_of.position,
        instant: policy.as_of.instant.as_deref().map(readable),
        by_position: asked.0 == "as_of_position",
        people: users
            .items
            .iter()
            .map(|u| Person {
                name: person_name(u),
                email: u.email.clone().unwrap_or_default(),
                status: u.status.clone(),
                roles: u
                    .memberships
                    .get(org)
                    .map(|r| r.join(", "))
                    .unwrap_or_default(),
            })
            .collect(),
        groups: groups
            .items
            .iter()
            .map(|g| Group {
                name: g.name.clone(),
                members: g
                    .members
                    .iter()
                    .map(|m| names.get(m.as_str()).cloned().unwrap_or_else(|| m.clone()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect(),
        licenses: licenses
            .items
            .into_iter()
            .map(|l| LicenseRow {
                expires_at: day(&l.expires_at),
                ..l
            })
            .collect(),
        contracts: contracts
            .items
            .iter()
            .map(|c| Contract {
                id: c.id.clone(),
                status: c.status.to_lowercase(),
                term: format!("{} – {}", day(&c.starts_at), day(&c.ends_at)),
                products: c
                    .line_items
                    .iter()
                    .map(|i| format!("{} {}", i.product, i.edition))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect(),
        features: entitlements.features.join(", "),
        quotas: entitlements
            .quotas
            .iter()
            .map(|(metric, q)| {
                format!(
                    "{metric}: {} a month ({}), {} used",
                    q.amount, q.enforcement, q.used
                )
            })
            .collect(),
        limits: entitlements
            .limits
            .iter()
            .map(|(name, v)| format!("{name}: {v}"))
            .collect(),
        rules: policy
            .rules
            .into_iter()
            .map(|r| Rule {
                conditions: conditions(&r.conditions),
                name: r.name,
                priority: r.priority,
                outcome: r.outcome.replace('_', " "),
            })
            .collect(),
        truncated,
    })
}

/// A person as the page names them (an erased person has no name any more).
fn person_name(u: &UserRow) -> String {
    match (&u.name, u.status.as_str()) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, "erased") => "(erased)".into(),
        _ => u.email.clone().unwrap_or_else(|| u.id.clone()),
    }
}

/// A rule's conditions in one line: `ip_not_in 10.0.0.0/8; roles admin`, or "always".
fn conditions(c: &serde_json::Map<String, serde_json::Value>) -> String {
    let shown: Vec<String> = c
        .iter()
        .filter(|(_, v)| match v {
            serde_json::Value::Null | serde_json::Value::Bool(false) => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            _ => true,
        })
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", "),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{} {value}", k.replace('_', " "))
        })
        .collect();
    if shown.is_empty() {
        "always".into()
    } else {
        shown.join("; ")
    }
}

/// An RFC 3339 instant as `2026-12-07 20:31:05.123456 UTC`.
fn readable(instant: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(instant)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S%.f UTC")
                .to_string()
        })
        .unwrap_or_else(|_| instant.to_owned())
}

/// A readable instant as the form shows it (whole seconds, UTC).
fn form_value(readable: &str) -> String {
    readable.get(..19).unwrap_or_default().to_owned()
}

/// `2026-11-30 00:00:00` as `2026-11-30T00:00:00`, which [`utc_instant`] reads as UTC;
/// anything else as typed (the API judges it).
fn typed_instant(typed: &str) -> String {
    let typed = typed.trim();
    match typed.split_once(' ') {
        Some((date, time)) if date.len() == 10 && !time.contains(' ') => format!("{date}T{time}"),
        _ => typed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_as_one_line() {
        let c = serde_json::json!({
            "ip_not_in": ["10.0.0.0/8"], "roles": [], "new_ip": false, "within": null,
            "recent_failures_at_least": 3
        });
        assert_eq!(
            conditions(c.as_object().unwrap()),
            "ip not in 10.0.0.0/8; recent failures at least 3"
        );
        assert_eq!(conditions(&serde_json::Map::new()), "always");
    }

    #[test]
    fn an_instant_fills_the_form_in_utc() {
        let r = readable("2026-12-07T21:31:05.123456+01:00");
        assert_eq!(r, "2026-12-07 20:31:05.123456 UTC");
        assert_eq!(form_value(&r), "2026-12-07 20:31:05");
        assert_eq!(
            typed_instant(" 2026-12-07 20:31:05 "),
            "2026-12-07T20:31:05"
        );
        assert_eq!(
            utc_instant(&typed_instant("2026-12-07 20:31")).as_deref(),
            Some("2026-12-07T20:31:00Z")
        );
        assert_eq!(typed_instant("yesterday"), "yesterday");
    }
}
