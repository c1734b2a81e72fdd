//! The QSA console, for an organization's security administrators (people whose roles
//! manage identity): its people (create, disable / enable, reset second factors, erase),
//! groups, OAuth clients and service principals (secrets shown once), conditional-access
//! rules with the what-if evaluation, SCIM tokens, SAML service providers, and the sign-in
//! and access-decision audit trail. Every page is `/v1` calls with the administrator's
//! token, always for the organization the session acts in: another organization's people,
//! rules or clients are the API's 404.

use askama::Template;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use super::api::{query, segment, Page};
use super::session::{redirect, Posted};
use super::{day, pager, render, Console, ConsoleInfo, Layout, Pager};
use super::{PageError, SignedIn, QSA_CLIENT_ID};
use crate::AppState;
use quantus_domain::events::{self, EventEnum};
use quantus_domain::identity::access_policy::AccessDecisionEvent;
use quantus_domain::identity::signin::SignInEvent;

/// The QSA console.
pub struct Qsa;

static INFO: ConsoleInfo = ConsoleInfo {
    name: "Security console",
    base: "/qsa",
    nav: &[
        ("/", "People", "identity:read"),
        ("/groups", "Groups", "identity:read"),
        ("/access", "Access rules", "identity:read"),
        ("/clients", "Applications", "identity:write"),
        ("/provisioning", "SCIM and SAML", "identity:write"),
        ("/audit", "Sign-in audit", "events:read"),
    ],
};

impl Console for Qsa {
    fn info() -> &'static ConsoleInfo {
        &INFO
    }
    const CLIENT_ID: &'static str = QSA_CLIENT_ID;
    const SCOPES: &'static str =
        "openid profile email organizations:read identity:read identity:write events:read";
    fn pages() -> Router<AppState> {
        routes()
    }
}

type Me = SignedIn<Qsa>;

/// Rows per list page.
const PAGE: usize = 20;

/// The roles an organization's people may hold (the platform's own are not offered).
pub(super) const ROLES: [&str; 5] = ["member", "admin", "owner", "auditor", "billing"];

/// What a conditional-access rule may decide.
const OUTCOMES: [(&str, &str); 4] = [
    ("require_mfa", "require a second factor"),
    ("require_passkey", "require a passkey"),
    ("block", "block"),
    ("allow", "allow"),
];

fn routes() -> Router<AppState> {
    Router::new()
        .route("/qsa", get(|| async { redirect("/qsa/") }))
        .route("/qsa/", get(people))
        .route("/qsa/people/new", get(new_person))
        .route("/qsa/people", post(create_person))
        .route("/qsa/people/{id}", get(person))
        .route("/qsa/people/{id}/erase", get(confirm_erase).post(erase))
        .route("/qsa/people/{id}/roles", post(change_role))
        .route("/qsa/people/{id}/sessions/{session}/end", post(end_session))
        .route("/qsa/people/{id}/{action}", post(person_action))
        .route("/qsa/groups", get(groups).post(create_group))
        .route("/qsa/groups/{id}", get(group))
        .route("/qsa/groups/{id}/members", post(add_member))
        .route(
            "/qsa/groups/{id}/members/{user}/remove",
            post(remove_member),
        )
        .route("/qsa/access", get(access))
        .route("/qsa/access/rules", post(set_rule))
        .route("/qsa/access/rules/{name}/delete", post(delete_rule))
        .route("/qsa/access/what-if", get(what_if))
        .route("/qsa/clients", get(clients).post(create_client))
        .route("/qsa/clients/open", get(open_client))
        .route("/qsa/clients/{id}", get(client))
        .route("/qsa/clients/{id}/secret", post(rotate_secret))
        .route("/qsa/clients/{id}/disable", post(disable_client))
        .route("/qsa/provisioning", get(provisioning))
        .route("/qsa/scim-tokens", post(issue_scim_token))
        .route("/qsa/scim-tokens/revoke", post(revoke_scim_token))
        .route("/qsa/saml", post(register_saml))
        .route("/qsa/saml/metadata", post(register_saml_metadata))
        .route("/qsa/saml/open", get(open_saml))
        .route("/qsa/saml/{id}", get(saml_provider))
        .route("/qsa/saml/{id}/delete", post(delete_saml))
        .route("/qsa/audit", get(audit))
        .route("/qsa/{*rest}", get(not_found))
}

async fn not_found(_me: Me) -> PageError {
    PageError::not_found(&INFO, "there is no such page in the security console")
}

/// The organization the session acts in, as a path segment.
fn org(me: &Me) -> Result<String, PageError> {
    segment(&INFO, &me.session.organization).map(str::to_owned)
}

fn refused(detail: impl Into<String>) -> PageError {
    PageError::new(
        &INFO,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Nothing changed",
        detail,
    )
}

/// A list typed in a form: one item per line or comma, blanks dropped.
fn items(typed: &str) -> Vec<String> {
    typed
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

// ---- people ----

#[derive(Debug, Deserialize)]
struct UserRow {
    id: String,
    status: String,
    email: Option<String>,
    name: Option<String>,
    memberships: BTreeMap<String, BTreeSet<String>>,
    created_at: String,
}

impl UserRow {
    fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.email.clone())
            .unwrap_or_else(|| format!("erased person {}", self.id))
    }
}

struct PersonLine {
    id: String,
    name: String,
    email: String,
    status: String,
    roles: String,
    since: String,
}

#[derive(Debug, Default, Deserialize)]
struct PeopleParams {
    after: Option<String>,
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    done: Option<String>,
}

#[derive(Template)]
#[template(path = "qsa/people.html")]
struct PeoplePage {
    layout: Layout,
    people: Vec<PersonLine>,
    q: String,
    status: String,
    pager: Pager,
    may_write: bool,
}

/// Every person of the organization, in the API's pages of `limit` (for pickers).
async fn all_people(me: &Me, org: &str) -> Result<Vec<UserRow>, PageError> {
    let api = me.api();
    let mut out = vec![];
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page: Page<UserRow> = api
            .get(&format!(
                "/users{}",
                query(&[
                    ("org", Some(org)),
                    ("limit", Some("200")),
                    ("after", after.as_deref())
                ])
            ))
            .await?;
        out.extend(page.items);
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(out)
}

async fn people(me: Me, Query(p): Query<PeopleParams>) -> Result<Response, PageError> {
    let org = org(&me)?;
    let api = me.api();
    let needle = p.q.trim().to_lowercase();
    let status = p.status.trim().to_owned();
    let filtered = !needle.is_empty() || !status.is_empty();
    // The API pages by id; a filter keeps what matches while reading on (at most 10 of the
    // API's pages per console page), so a page holds up to 20 matches and "next" reads on
    // from the last person looked at.
    let limit = if filtered { "200" } else { "20" };
    let mut found = vec![];
    let mut after = p.after.clone();
    let mut next: Option<String> = None;
    'pages: for _ in 0..10 {
        let page: Page<UserRow> = api
            .get(&format!(
                "/users{}",
                query(&[
                    ("org", Some(&org)),
                    ("limit", Some(limit)),
                    ("after", after.as_deref())
                ])
            ))
            .await?;
        let count = page.items.len();
        for (i, u) in page.items.into_iter().enumerate() {
            after = Some(u.id.clone());
            let hay = format!(
                "{} {}",
                u.name.as_deref().unwrap_or_default(),
                u.email.as_deref().unwrap_or_default()
            )
            .to_lowercase();
            if (needle.is_empty() || hay.contains(&needle))
                && (status.is_empty() || u.status == status)
            {
                found.push(u);
            }
            if found.len() == PAGE {
                if i + 1 < count || page.next_after.is_some() {
                    next = after.clone();
                }
                break 'pages;
            }
        }
        if page.next_after.is_none() {
            next = None;
            break;
        }
        // Read ten pages without filling this one: offer to read on.
        next = after.clone();
    }
    let people = found
        .into_iter()
        .map(|u| PersonLine {
            name: u.label(),
            email: u.email.clone().unwrap_or_default(),
            roles: u
                .memberships
                .get(&org)
                .map(|r| r.iter().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            since: day(&u.created_at),
            status: u.status,
            id: u.id,
        })
        .collect();
    let base = format!(
        "/qsa/{}",
        query(&[
            ("q", (!p.q.trim().is_empty()).then_some(p.q.trim())),
            ("status", (!status.is_empty()).then_some(status.as_str())),
        ])
    );
    let mut layout = me.layout("People", "/");
    layout.notice = match p.done.as_deref() {
        Some("erased") => Some(
            "The person was erased: their personal data is unreadable across the whole log.".into(),
        ),
        _ => None,
    };
    Ok(render(&PeoplePage {
        layout,
        people,
        q: p.q.trim().to_owned(),
        status,
        pager: pager(&base, next, &p.after),
        may_write: me.may("identity:write"),
    }))
}

#[derive(Template)]
#[template(path = "qsa/person_new.html")]
struct NewPersonPage {
    layout: Layout,
    roles: &'static [&'static str],
    csrf: String,
}

async fn new_person(me: Me) -> Result<Response, PageError> {
    Ok(render(&NewPersonPage {
        layout: me.layout("Add a person", "/"),
        roles: &ROLES,
        csrf: me.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct PersonForm {
    name: String,
    email: String,
    #[serde(default)]
    password: String,
    role: String,
}

async fn create_person(posted: Posted<Qsa, PersonForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let password = form.password.trim();
    let created = me
        .api()
        .post(
            "/users",
            &serde_json::json!({
                "organization_id": org,
                "name": form.name.trim(),
                "email": form.email.trim(),
                "password": (!password.is_empty()).then_some(password),
                "roles": [form.role.trim()],
            }),
        )
        .await?;
    let id = created["id"].as_str().unwrap_or_default();
    let id = segment(&INFO, id)?;
    Ok(redirect(&format!("/qsa/people/{id}?done=created")))
}

#[derive(Debug, Deserialize)]
struct Profile {
    email: Option<String>,
    name: Option<String>,
    status: String,
    memberships: BTreeMap<String, BTreeSet<String>>,
    has_password: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Done {
    done: Option<String>,
}

#[derive(Template)]
#[template(path = "qsa/person.html")]
struct PersonPage {
    layout: Layout,
    id: String,
    p: Profile,
    roles: String,
    /// The roles held in the organization, and those that may be granted.
    held: Vec<String>,
    grantable: Vec<&'static str>,
    groups: Vec<GroupRow>,
    sessions: Vec<super::account::SessionRow>,
    csrf: String,
    may_write: bool,
}

async fn person(
    me: Me,
    Path(id): Path<String>,
    Query(d): Query<Done>,
) -> Result<Response, PageError> {
    let org = org(&me)?;
    let id = segment(&INFO, &id)?.to_owned();
    let api = me.api();
    let p: Profile = api.get(&format!("/users/{id}")).await?;
    let groups: Page<GroupRow> = api
        .get(&format!("/groups{}", query(&[("org", Some(&org))])))
        .await?;
    let title = p
        .name
        .clone()
        .or_else(|| p.email.clone())
        .unwrap_or_else(|| "Erased person".into());
    let mut layout = me.layout(title, "/");
    layout.notice = match d.done.as_deref() {
        Some("created") => Some("The person was added.".into()),
        Some("disable") => Some(
            "The person is disabled: they cannot sign in, and their tokens stop working.".into(),
        ),
        Some("enable") => Some("The person may sign in again.".into()),
        Some("reset-factors") => Some(
            "Their authenticator app was removed; they enrol a new one at their account page."
                .into(),
        ),
        Some("session-ended") => Some(
            "The session was ended; the applications it signed in to lost their tokens.".into(),
        ),
        Some("grant-role") => Some("The role was granted; it is in their next tokens.".into()),
        Some("revoke-role") => Some("The role was revoked; their next tokens lack it.".into()),
        _ => None,
    };
    let sessions: super::account::Sessions = if p.status == "erased" {
        super::account::Sessions { items: vec![] }
    } else {
        api.get(&format!("/users/{id}/sessions")).await?
    };
    let held: Vec<String> = p
        .memberships
        .get(&org)
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    Ok(render(&PersonPage {
        layout,
        grantable: ROLES
            .iter()
            .copied()
            .filter(|r| !held.iter().any(|h| h == r))
            .collect(),
        held,
        sessions: sessions.items,
        roles: p
            .memberships
            .get(&org)
            .map(|r| r.iter().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        groups: groups
            .items
            .into_iter()
            .filter(|g| g.members.contains(&id))
            .collect(),
        id,
        p,
        csrf: me.session.csrf.clone(),
        may_write: me.may("identity:write"),
    }))
}

#[derive(Debug, Deserialize)]
struct NoFields {}

async fn person_action(
    Path((id, action)): Path<(String, String)>,
    posted: Posted<Qsa, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let id = segment(&INFO, &id)?;
    let api = me.api();
    match action.as_str() {
        "disable" => {
            api.post(
                &format!("/users/{id}/disable"),
                &serde_json::json!({ "reason": "disabled in the security console" }),
            )
            .await?
        }
        "enable" => {
            api.post(&format!("/users/{id}/enable"), &serde_json::json!({}))
                .await?
        }
        "reset-factors" => api.delete(&format!("/users/{id}/totp")).await?,
        _ => return Err(PageError::not_found(&INFO, format!("no action {action:?}"))),
    };
    Ok(redirect(&format!("/qsa/people/{id}?done={action}")))
}

async fn end_session(
    Path((id, session)): Path<(String, String)>,
    posted: Posted<Qsa, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let id = segment(&INFO, &id)?;
    let session = segment(&INFO, &session)?;
    me.api()
        .delete(&format!("/users/{id}/sessions/{session}"))
        .await?;
    Ok(redirect(&format!("/qsa/people/{id}?done=session-ended")))
}

#[derive(Debug, Deserialize)]
struct RoleForm {
    role: String,
    /// `grant` or `revoke`.
    change: String,
}

async fn change_role(
    Path(id): Path<String>,
    posted: Posted<Qsa, RoleForm>,
) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let id = segment(&INFO, &id)?;
    let action = match form.change.as_str() {
        "grant" => "grant-role",
        "revoke" => "revoke-role",
        other => return Err(refused(format!("no change {other:?}"))),
    };
    me.api()
        .post(
            &format!("/users/{id}/{action}"),
            &serde_json::json!({ "organization_id": org, "role": form.role.trim() }),
        )
        .await?;
    Ok(redirect(&format!("/qsa/people/{id}?done={action}")))
}

#[derive(Template)]
#[template(path = "qsa/erase.html")]
struct ErasePage {
    layout: Layout,
    id: String,
    /// What the administrator types to confirm: the email, or the id when there is none.
    word: String,
    label: String,
    csrf: String,
}

async fn confirm_erase(me: Me, Path(id): Path<String>) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?.to_owned();
    let p: Profile = me.api().get(&format!("/users/{id}")).await?;
    let word = p.email.clone().unwrap_or_else(|| id.clone());
    Ok(render(&ErasePage {
        layout: me.layout("Erase a person", "/"),
        label: p.name.clone().unwrap_or_else(|| word.clone()),
        word,
        id,
        csrf: me.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct EraseForm {
    typed: String,
}

async fn erase(
    Path(id): Path<String>,
    posted: Posted<Qsa, EraseForm>,
) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let id = segment(&INFO, &id)?;
    let api = me.api();
    let p: Profile = api.get(&format!("/users/{id}")).await?;
    let word = p.email.unwrap_or_else(|| id.to_owned());
    if !form.typed.trim().eq_ignore_ascii_case(&word) {
        return Err(refused(
            "what was typed does not match the person's email; type it exactly to erase them",
        ));
    }
    api.delete(&format!("/users/{id}?erase=true")).await?;
    Ok(redirect("/qsa/?done=erased"))
}

// ---- groups ----

#[derive(Debug, Deserialize)]
struct GroupRow {
    id: String,
    name: String,
    members: Vec<String>,
}

#[derive(Template)]
#[template(path = "qsa/groups.html")]
struct GroupsPage {
    layout: Layout,
    groups: Vec<GroupRow>,
    pager: Pager,
    csrf: String,
    may_write: bool,
}

#[derive(Debug, Default, Deserialize)]
struct AfterParams {
    after: Option<String>,
}

async fn groups(me: Me, Query(p): Query<AfterParams>) -> Result<Response, PageError> {
    let org = org(&me)?;
    let page: Page<GroupRow> = me
        .api()
        .get(&format!(
            "/groups{}",
            query(&[
                ("org", Some(&org)),
                ("limit", Some("20")),
                ("after", p.after.as_deref())
            ])
        ))
        .await?;
    Ok(render(&GroupsPage {
        layout: me.layout("Groups", "/groups"),
        groups: page.items,
        pager: pager("/qsa/groups", page.next_after, &p.after),
        csrf: me.session.csrf.clone(),
        may_write: me.may("identity:write"),
    }))
}

#[derive(Debug, Deserialize)]
struct GroupForm {
    name: String,
}

async fn create_group(posted: Posted<Qsa, GroupForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let created = me
        .api()
        .post(
            "/groups",
            &serde_json::json!({ "organization_id": org, "name": form.name.trim() }),
        )
        .await?;
    let id = segment(&INFO, created["id"].as_str().unwrap_or_default())?;
    Ok(redirect(&format!("/qsa/groups/{id}?done=created")))
}

struct Member {
    id: String,
    label: String,
}

#[derive(Template)]
#[template(path = "qsa/group.html")]
struct GroupPage {
    layout: Layout,
    id: String,
    name: String,
    members: Vec<Member>,
    /// People who may be added (not members yet, not erased).
    others: Vec<Member>,
    csrf: String,
    may_write: bool,
}

#[derive(Debug, Deserialize)]
struct GroupDetail {
    name: String,
    members: Vec<String>,
}

async fn group(
    me: Me,
    Path(id): Path<String>,
    Query(d): Query<Done>,
) -> Result<Response, PageError> {
    let org = org(&me)?;
    let id = segment(&INFO, &id)?.to_owned();
    let g: GroupDetail = me.api().get(&format!("/groups/{id}")).await?;
    let people = all_people(&me, &org).await?;
    let label = |uid: &str| {
        people
            .iter()
            .find(|u| u.id == uid)
            .map(UserRow::label)
            .unwrap_or_else(|| uid.to_owned())
    };
    let members = g
        .members
        .iter()
        .map(|m| Member {
            id: m.clone(),
            label: label(m),
        })
        .collect();
    let others = people
        .iter()
        .filter(|u| u.status != "erased" && !g.members.contains(&u.id))
        .map(|u| Member {
            id: u.id.clone(),
            label: u.label(),
        })
        .collect();
    let mut layout = me.layout(g.name.clone(), "/groups");
    layout.notice = match d.done.as_deref() {
        Some("created") => Some("The group was created.".into()),
        Some("added") => Some("The person was added to the group.".into()),
        Some("removed") => Some("The person was removed from the group.".into()),
        _ => None,
    };
    Ok(render(&GroupPage {
        layout,
        id,
        name: g.name,
        members,
        others,
        csrf: me.session.csrf.clone(),
        may_write: me.may("identity:write"),
    }))
}

#[derive(Debug, Deserialize)]
struct MemberForm {
    user_id: String,
}

async fn add_member(
    Path(id): Path<String>,
    posted: Posted<Qsa, MemberForm>,
) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let id = segment(&INFO, &id)?;
    me.api()
        .post(
            &format!("/groups/{id}/members"),
            &serde_json::json!({ "user_id": form.user_id.trim() }),
        )
        .await?;
    Ok(redirect(&format!("/qsa/groups/{id}?done=added")))
}

async fn remove_member(
    Path((id, user)): Path<(String, String)>,
    posted: Posted<Qsa, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let id = segment(&INFO, &id)?;
    let user = segment(&INFO, &user)?;
    me.api()
        .delete(&format!("/groups/{id}/members/{user}"))
        .await?;
    Ok(redirect(&format!("/qsa/groups/{id}?done=removed")))
}

// ---- conditional access ----

#[derive(Debug, Deserialize)]
struct Policy {
    rules: Vec<RuleView>,
}

#[derive(Debug, Deserialize)]
struct RuleView {
    name: String,
    priority: u32,
    conditions: serde_json::Map<String, serde_json::Value>,
    outcome: String,
}

impl RuleView {
    /// The rule's conditions in words (none: every sign-in).
    fn when(&self) -> String {
        if self.conditions.is_empty() {
            return "every sign-in".into();
        }
        self.conditions
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().map(str::to_owned).unwrap_or(x.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{} {v}", k.replace('_', " "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn decides(&self) -> &str {
        OUTCOMES
            .iter()
            .find(|(k, _)| *k == self.outcome)
            .map_or(self.outcome.as_str(), |(_, words)| *words)
    }
}

#[derive(Debug, Default, Deserialize)]
struct WhatIfParams {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    authentication: String,
    #[serde(default)]
    new_ip: String,
    done: Option<String>,
}

struct Verdict {
    outcome: String,
    policy: String,
    reason: String,
    granted: bool,
}

#[derive(Template)]
#[template(path = "qsa/access.html")]
struct AccessPage {
    layout: Layout,
    rules: Vec<RuleView>,
    people: Vec<Member>,
    roles: &'static [&'static str],
    outcomes: &'static [(&'static str, &'static str)],
    w: WhatIfParams,
    verdict: Option<Verdict>,
    csrf: String,
    may_write: bool,
}

async fn access_page(me: Me, w: WhatIfParams) -> Result<Response, PageError> {
    let org = org(&me)?;
    let api = me.api();
    let policy: Policy = api.get(&format!("/access-policies/{org}")).await?;
    let people = all_people(&me, &org)
        .await?
        .into_iter()
        .filter(|u| u.status != "erased")
        .map(|u| Member {
            label: u.label(),
            id: u.id,
        })
        .collect();
    let asked = !w.user_id.trim().is_empty()
        || !w.client_id.trim().is_empty()
        || !w.ip.trim().is_empty()
        || !w.authentication.trim().is_empty();
    let verdict = if asked {
        let mut body = serde_json::json!({ "organization_id": org });
        let text = |v: &str| {
            let v = v.trim();
            (!v.is_empty()).then(|| serde_json::Value::String(v.to_owned()))
        };
        for (k, v) in [
            ("user_id", &w.user_id),
            ("client_id", &w.client_id),
            ("ip", &w.ip),
            ("authentication", &w.authentication),
        ] {
            if let Some(v) = text(v) {
                body[k] = v;
            }
        }
        if w.new_ip == "yes" {
            body["new_ip"] = true.into();
        }
        let d = api.post("/access-policies/evaluate", &body).await?;
        Some(Verdict {
            outcome: d["outcome"].as_str().unwrap_or_default().to_owned(),
            policy: d["policy"].as_str().unwrap_or_default().to_owned(),
            reason: d["reason"].as_str().unwrap_or_default().to_owned(),
            granted: d["granted"].as_bool().unwrap_or(false),
        })
    } else {
        None
    };
    let mut layout = me.layout("Access rules", "/access");
    layout.notice = match w.done.as_deref() {
        Some("saved") => Some("The rule was saved; it decides the next sign-ins.".into()),
        Some("deleted") => Some("The rule was deleted.".into()),
        _ => None,
    };
    Ok(render(&AccessPage {
        layout,
        rules: policy.rules,
        people,
        roles: &ROLES,
        outcomes: &OUTCOMES,
        w,
        verdict,
        csrf: me.session.csrf.clone(),
        may_write: me.may("identity:write"),
    }))
}

async fn access(me: Me, Query(w): Query<WhatIfParams>) -> Result<Response, PageError> {
    access_page(me, w).await
}

async fn what_if(me: Me, Query(w): Query<WhatIfParams>) -> Result<Response, PageError> {
    access_page(me, w).await
}

#[derive(Debug, Deserialize)]
struct RuleForm {
    name: String,
    priority: String,
    outcome: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    clients: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    ip_in: String,
    #[serde(default)]
    ip_not_in: String,
    #[serde(default)]
    new_ip: Option<String>,
}

async fn set_rule(posted: Posted<Qsa, RuleForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let name = form.name.trim().to_lowercase();
    let name = segment(&INFO, &name)
        .map_err(|_| refused("a rule's name is 1 to 64 of a-z, 0-9, '-' and '_'"))?;
    let priority: u32 = form
        .priority
        .trim()
        .parse()
        .map_err(|_| refused("the priority is a whole number (lower numbers decide first)"))?;
    let mut conditions = serde_json::Map::new();
    if !form.role.trim().is_empty() {
        conditions.insert("roles".into(), serde_json::json!([form.role.trim()]));
    }
    for (key, typed) in [
        ("clients", &form.clients),
        ("groups", &form.groups),
        ("ip_in", &form.ip_in),
        ("ip_not_in", &form.ip_not_in),
    ] {
        let list = items(typed);
        if !list.is_empty() {
            conditions.insert(key.into(), serde_json::json!(list));
        }
    }
    if form.new_ip.as_deref() == Some("yes") {
        conditions.insert("new_ip".into(), true.into());
    }
    me.api()
        .put(
            &format!("/access-policies/{org}/rules/{name}"),
            &serde_json::json!({
                "priority": priority,
                "conditions": conditions,
                "outcome": form.outcome.trim(),
            }),
        )
        .await?;
    Ok(redirect("/qsa/access?done=saved"))
}

async fn delete_rule(
    Path(name): Path<String>,
    posted: Posted<Qsa, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let org = org(&me)?;
    let name = segment(&INFO, &name)?;
    me.api()
        .delete(&format!("/access-policies/{org}/rules/{name}"))
        .await?;
    Ok(redirect("/qsa/access?done=deleted"))
}

// ---- applications: OAuth clients and service principals ----

/// One application in the list (`GET /v1/clients`: never a secret).
#[derive(Debug, Deserialize)]
pub(super) struct ClientRow {
    pub client_id: String,
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub grant_types: Vec<String>,
    pub disabled: bool,
}

impl ClientRow {
    pub fn kind_words(&self) -> &str {
        match self.kind.as_str() {
            "confidential" => "web application",
            "public" => "browser or native application",
            "service" => "service principal",
            other => other,
        }
    }

    pub fn grants(&self) -> String {
        self.grant_types.join(", ").replace('_', " ")
    }
}

#[derive(Template)]
#[template(path = "qsa/clients.html")]
struct ClientsPage {
    layout: Layout,
    clients: Vec<ClientRow>,
    pager: Pager,
    roles: &'static [&'static str],
    csrf: String,
}

async fn clients(me: Me, Query(p): Query<AfterParams>) -> Result<Response, PageError> {
    let org = org(&me)?;
    let page: Page<ClientRow> = me
        .api()
        .get(&format!(
            "/clients{}",
            query(&[
                ("org", Some(&org)),
                ("limit", Some("20")),
                ("after", p.after.as_deref())
            ])
        ))
        .await?;
    Ok(render(&ClientsPage {
        layout: me.layout("Applications", "/clients"),
        clients: page.items,
        pager: pager("/qsa/clients", page.next_after, &p.after),
        roles: &ROLES,
        csrf: me.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct ClientForm {
    /// `confidential`, `public` or `service`.
    kind: String,
    name: String,
    #[serde(default)]
    redirect_uris: String,
    #[serde(default)]
    scopes: String,
    #[serde(default)]
    role: String,
}

/// A secret, shown on this page once (the answer to the POST that made it: never a URL).
#[derive(Template)]
#[template(path = "qsa/secret.html")]
pub(super) struct SecretPage {
    pub layout: Layout,
    pub what: String,
    pub id_label: &'static str,
    pub id: String,
    pub secret_label: &'static str,
    pub secret: Option<String>,
    /// Where to go next (href, label).
    pub next: (String, &'static str),
    pub extra: Option<(&'static str, String)>,
}

async fn create_client(posted: Posted<Qsa, ClientForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let created = register_application(&me.api(), &INFO, &org, &form).await?;
    let name = form.name.trim();
    let id = created["client_id"].as_str().unwrap_or_default().to_owned();
    let id = segment(&INFO, &id)?.to_owned();
    Ok(render(&SecretPage {
        layout: me.layout("Application created", "/clients"),
        what: format!("{name} was registered."),
        id_label: "Client id",
        secret_label: "Client secret",
        secret: created["client_secret"].as_str().map(str::to_owned),
        next: (format!("/qsa/clients/{id}"), "Go to the application"),
        extra: None,
        id,
    }))
}

/// Registers an application of `org` as the form says (an OAuth client or a service
/// principal); answers the API's answer, with the secret to show once. The QSA console and
/// the Portal both register through this.
pub(super) async fn register_application(
    api: &super::api::Api,
    info: &'static ConsoleInfo,
    org: &str,
    form: &ClientForm,
) -> Result<serde_json::Value, PageError> {
    let refused = |detail: String| {
        PageError::new(
            info,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing changed",
            detail,
        )
    };
    let name = form.name.trim();
    Ok(match form.kind.as_str() {
        "service" => {
            if form.role.trim().is_empty() {
                return Err(refused("a service principal needs a role".into()));
            }
            api.post(
                "/service-principals",
                &serde_json::json!({
                    "organization_id": org, "name": name, "roles": [form.role.trim()],
                }),
            )
            .await?
        }
        kind @ ("confidential" | "public") => {
            let redirect_uris = items(&form.redirect_uris);
            let mut scopes: Vec<String> =
                form.scopes.split_whitespace().map(str::to_owned).collect();
            if scopes.is_empty() {
                scopes = vec!["openid".into(), "profile".into(), "email".into()];
            }
            api.post(
                "/clients",
                &serde_json::json!({
                    "organization_id": org, "name": name, "kind": kind,
                    "redirect_uris": redirect_uris,
                    "grant_types": ["authorization_code", "refresh_token"],
                    "scopes": scopes,
                }),
            )
            .await?
        }
        other => return Err(refused(format!("no kind of application {other:?}"))),
    })
}

#[derive(Debug, Deserialize)]
struct OpenParams {
    #[serde(default)]
    id: String,
}

async fn open_client(_me: Me, Query(p): Query<OpenParams>) -> Result<Response, PageError> {
    let id = segment(&INFO, p.id.trim())?;
    Ok(redirect(&format!("/qsa/clients/{id}")))
}

#[derive(Debug, Deserialize)]
struct ClientView {
    client_id: String,
    name: String,
    kind: String,
    status: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    grant_types: Vec<String>,
}

#[derive(Template)]
#[template(path = "qsa/client.html")]
struct ClientPage {
    layout: Layout,
    c: ClientView,
    csrf: String,
}

async fn client(
    me: Me,
    Path(id): Path<String>,
    Query(d): Query<Done>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let c: ClientView = me.api().get(&format!("/clients/{id}")).await?;
    let mut layout = me.layout(c.name.clone(), "/clients");
    layout.notice = match d.done.as_deref() {
        Some("disabled") => Some("The application is disabled: its tokens stop working.".into()),
        _ => None,
    };
    Ok(render(&ClientPage {
        layout,
        c,
        csrf: me.session.csrf.clone(),
    }))
}

async fn rotate_secret(
    Path(id): Path<String>,
    posted: Posted<Qsa, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let id = segment(&INFO, &id)?.to_owned();
    let rotated = me
        .api()
        .post(&format!("/clients/{id}/secret"), &serde_json::json!({}))
        .await?;
    Ok(render(&SecretPage {
        layout: me.layout("New secret", "/clients"),
        what: "A new secret was made; the previous one no longer works.".into(),
        id_label: "Client id",
        secret_label: "Client secret",
        secret: rotated["client_secret"].as_str().map(str::to_owned),
        next: (format!("/qsa/clients/{id}"), "Back to the application"),
        extra: None,
        id,
    }))
}

async fn disable_client(
    Path(id): Path<String>,
    posted: Posted<Qsa, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let id = segment(&INFO, &id)?;
    me.api()
        .post(
            &format!("/clients/{id}/disable"),
            &serde_json::json!({ "reason": "disabled in the security console" }),
        )
        .await?;
    Ok(redirect(&format!("/qsa/clients/{id}?done=disabled")))
}

// ---- provisioning: SCIM tokens and SAML service providers ----

/// One SCIM token in the list (`GET /v1/organizations/{org}/scim-tokens`: never the token).
#[derive(Debug, Deserialize)]
struct ScimTokenRow {
    id: String,
    name: String,
    created_at: String,
    revoked: bool,
}

impl ScimTokenRow {
    fn created(&self) -> String {
        moment(&self.created_at)
    }
}

/// One SAML service provider in the list (`GET /v1/saml/service-providers`).
#[derive(Debug, Deserialize)]
struct SamlRow {
    id: String,
    entity_id: String,
    name: String,
    #[serde(default)]
    acs_urls: Vec<String>,
}

#[derive(Template)]
#[template(path = "qsa/provisioning.html")]
struct ProvisioningPage {
    layout: Layout,
    tokens: Vec<ScimTokenRow>,
    tokens_pager: Pager,
    providers: Vec<SamlRow>,
    providers_pager: Pager,
    csrf: String,
}

#[derive(Debug, Default, Deserialize)]
struct ProvisioningParams {
    done: Option<String>,
    tokens_after: Option<String>,
    providers_after: Option<String>,
}

/// A pager over one of the page's two lists, its cursor in its own query parameter.
fn list_pager(param: &str, next_after: Option<String>, after: &Option<String>) -> Pager {
    Pager {
        next: next_after.map(|n| format!("/qsa/provisioning{}", query(&[(param, Some(&n))]))),
        later: after.is_some(),
        first: "/qsa/provisioning".into(),
    }
}

async fn provisioning(me: Me, Query(p): Query<ProvisioningParams>) -> Result<Response, PageError> {
    let org = org(&me)?;
    let tokens: Page<ScimTokenRow> = me
        .api()
        .get(&format!(
            "/organizations/{}/scim-tokens{}",
            segment(&INFO, &org)?,
            query(&[("limit", Some("20")), ("after", p.tokens_after.as_deref())])
        ))
        .await?;
    let providers: Page<SamlRow> = me
        .api()
        .get(&format!(
            "/saml/service-providers{}",
            query(&[
                ("org", Some(&org)),
                ("limit", Some("20")),
                ("after", p.providers_after.as_deref())
            ])
        ))
        .await?;
    let mut layout = me.layout("SCIM and SAML", "/provisioning");
    layout.notice = match p.done.as_deref() {
        Some("revoked") => Some("The SCIM token was revoked.".into()),
        Some("deleted") => Some("The service provider was deleted.".into()),
        _ => None,
    };
    Ok(render(&ProvisioningPage {
        layout,
        tokens: tokens.items,
        tokens_pager: list_pager("tokens_after", tokens.next_after, &p.tokens_after),
        providers: providers.items,
        providers_pager: list_pager("providers_after", providers.next_after, &p.providers_after),
        csrf: me.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct ScimForm {
    name: String,
}

async fn issue_scim_token(posted: Posted<Qsa, ScimForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let issued = me
        .api()
        .post(
            &format!("/organizations/{org}/scim-tokens"),
            &serde_json::json!({ "name": form.name.trim() }),
        )
        .await?;
    Ok(render(&SecretPage {
        layout: me.layout("SCIM token issued", "/provisioning"),
        what: format!(
            "A SCIM token for {} was issued; give it to the identity provider that provisions your people.",
            form.name.trim()
        ),
        id_label: "Token id (to revoke it)",
        id: issued["id"].as_str().unwrap_or_default().to_owned(),
        secret_label: "Bearer token",
        secret: issued["token"].as_str().map(str::to_owned),
        next: ("/qsa/provisioning".into(), "Back to SCIM and SAML"),
        extra: issued["scim_base_url"]
            .as_str()
            .map(|u| ("SCIM base URL", u.to_owned())),
    }))
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    id: String,
}

async fn revoke_scim_token(posted: Posted<Qsa, RevokeForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let id = segment(&INFO, form.id.trim())?;
    me.api()
        .delete(&format!("/organizations/{org}/scim-tokens/{id}"))
        .await?;
    Ok(redirect("/qsa/provisioning?done=revoked"))
}

#[derive(Debug, Deserialize)]
struct SamlForm {
    name: String,
    entity_id: String,
    acs_url: String,
    #[serde(default)]
    slo_url: String,
    #[serde(default)]
    certificate: String,
    name_id_format: String,
}

async fn register_saml(posted: Posted<Qsa, SamlForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let opt = |v: &str| {
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_owned())
    };
    let created = me
        .api()
        .post(
            "/saml/service-providers",
            &serde_json::json!({
                "organization_id": org,
                "entity_id": form.entity_id.trim(),
                "name": form.name.trim(),
                "acs_urls": items(&form.acs_url),
                "slo_url": opt(&form.slo_url),
                "certificate": opt(&form.certificate),
                "name_id_format": form.name_id_format.trim(),
            }),
        )
        .await?;
    let id = segment(&INFO, created["id"].as_str().unwrap_or_default())?;
    Ok(redirect(&format!("/qsa/saml/{id}?done=registered")))
}

#[derive(Debug, Deserialize)]
struct SamlMetadataForm {
    #[serde(default)]
    name: String,
    metadata_xml: String,
}

/// Registers a provider from its pasted metadata document (the API reads and bounds it).
async fn register_saml_metadata(
    posted: Posted<Qsa, SamlMetadataForm>,
) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = org(&me)?;
    let name = form.name.trim();
    let created = me
        .api()
        .post(
            "/saml/service-providers/metadata",
            &serde_json::json!({
                "organization_id": org,
                "metadata_xml": form.metadata_xml,
                "name": (!name.is_empty()).then_some(name),
            }),
        )
        .await?;
    let id = segment(&INFO, created["id"].as_str().unwrap_or_default())?;
    Ok(redirect(&format!("/qsa/saml/{id}?done=registered")))
}

async fn open_saml(_me: Me, Query(p): Query<OpenParams>) -> Result<Response, PageError> {
    let id = segment(&INFO, p.id.trim())?;
    Ok(redirect(&format!("/qsa/saml/{id}")))
}

#[derive(Debug, Deserialize)]
struct SamlView {
    entity_id: String,
    name: String,
    #[serde(default)]
    acs_urls: Vec<String>,
    #[serde(default)]
    slo_url: Option<String>,
    #[serde(default)]
    name_id_format: String,
    #[serde(default)]
    certificate: Option<String>,
}

#[derive(Template)]
#[template(path = "qsa/saml.html")]
struct SamlPage {
    layout: Layout,
    id: String,
    sp: SamlView,
    metadata_url: String,
    csrf: String,
}

async fn saml_provider(
    me: Me,
    Path(id): Path<String>,
    Query(d): Query<Done>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?.to_owned();
    let sp: SamlView = me
        .api()
        .get(&format!("/saml/service-providers/{id}"))
        .await?;
    let mut layout = me.layout(sp.name.clone(), "/provisioning");
    layout.notice = match d.done.as_deref() {
        Some("registered") => Some("The service provider was registered.".into()),
        _ => None,
    };
    Ok(render(&SamlPage {
        layout,
        metadata_url: format!("{}/saml/metadata", me.issuer().trim_end_matches('/')),
        id,
        sp,
        csrf: me.session.csrf.clone(),
    }))
}

async fn delete_saml(
    Path(id): Path<String>,
    posted: Posted<Qsa, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let id = segment(&INFO, &id)?;
    me.api()
        .delete(&format!("/saml/service-providers/{id}"))
        .await?;
    Ok(redirect("/qsa/provisioning?done=deleted"))
}

// ---- the sign-in and access-decision audit trail ----

#[derive(Debug, Deserialize)]
struct LogEntry {
    position: u64,
    envelope: Envelope,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    aggregate_type: String,
    event_type: String,
    schema_version: u32,
    occurred_at: String,
    payload: serde_json::Value,
}

impl Envelope {
    /// The event as its aggregate's enum (see `quantus_domain::events`).
    fn decode<E: EventEnum>(&self) -> Result<E, PageError> {
        events::decode(
            &self.aggregate_type,
            &self.event_type,
            self.schema_version,
            &self.payload,
        )
        .map_err(|error| {
            tracing::error!(%error, "an event of the log does not decode");
            PageError::internal(&INFO)
        })
    }
}

/// A value's serde name (`bad_password`), shown with spaces.
fn wire_words<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct EventPage {
    events: Vec<LogEntry>,
    next_after: u64,
    #[serde(default)]
    head: u64,
    #[serde(default)]
    after: u64,
}

#[derive(Debug, Default, Deserialize)]
struct AuditParams {
    /// `sign-ins`, `decisions` (every access decision, token requests too) or empty
    /// (sign-ins and the decisions at sign-in and authorization).
    #[serde(default)]
    kind: String,
    /// `failed`, `refused` or empty.
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    user_id: String,
    /// The time range (the form's UTC `datetime-local` values), as in the event explorer.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    after: Option<u64>,
}

struct AuditLine {
    position: u64,
    when: String,
    what: String,
    /// The person (a link to their page) and the label shown.
    who: Option<Member>,
    client: String,
    detail: String,
    bad: bool,
}

#[derive(Template)]
#[template(path = "qsa/audit.html")]
struct AuditPage {
    layout: Layout,
    f: AuditParams,
    people: Vec<Member>,
    lines: Vec<AuditLine>,
    from: u64,
    to: u64,
    /// The window before this one, the one after it, and the latest (when this is not it).
    earlier: Option<String>,
    later: Option<String>,
    latest: Option<String>,
}

/// Positions of the log read per page of the audit trail (the organization's sign-ins and
/// decisions among them are shown).
const AUDIT_WINDOW: u64 = 1000;

async fn audit(me: Me, Query(f): Query<AuditParams>) -> Result<Response, PageError> {
    let org = org(&me)?;
    let (from, to) = (
        super::admin::utc_instant(&f.from),
        super::admin::utc_instant(&f.to),
    );
    let range = [("from", from.as_deref()), ("to", to.as_deref())];
    // Without a position, the latest window of the log (where today's sign-ins are), or of
    // the time range (the API's `head` is then the last position before `to`).
    let start = match f.after {
        Some(after) => after,
        None => {
            let mut probe_query = range.to_vec();
            probe_query.push(("limit", Some("1")));
            let probe: EventPage = me
                .api()
                .get(&format!("/events{}", query(&probe_query)))
                .await?;
            probe.head.saturating_sub(AUDIT_WINDOW)
        }
    };
    let after = start.to_string();
    let window = AUDIT_WINDOW.to_string();
    let mut page_query = range.to_vec();
    page_query.extend([
        ("tenant", Some(org.as_str())),
        ("after", Some(after.as_str())),
        ("limit", Some(window.as_str())),
    ]);
    let page: EventPage = me
        .api()
        .get(&format!("/events{}", query(&page_query)))
        .await?;
    // `from` may start the read later than asked: nothing of the range comes before it.
    let start_of_range = page.after > start;
    let start = page.after;
    let people = all_people(&me, &org).await?;
    let label = |uid: &str| Member {
        id: uid.to_owned(),
        label: people
            .iter()
            .find(|u| u.id == uid)
            .map(UserRow::label)
            .unwrap_or_else(|| uid.to_owned()),
    };
    let mut lines = vec![];
    for e in &page.events {
        let (what, subject, client, detail, bad) = match e.envelope.aggregate_type.as_str() {
            SignInEvent::AGGREGATE if f.kind != "decisions" => {
                match e.envelope.decode::<SignInEvent>()? {
                    SignInEvent::SignInSucceeded(p) => (
                        "Signed in".to_owned(),
                        Some(p.user_id),
                        p.client_id,
                        p.amr.join(" + "),
                        false,
                    ),
                    SignInEvent::SignInFailed(p) => (
                        "Sign-in failed".to_owned(),
                        p.user_id,
                        p.client_id,
                        wire_words(&p.reason),
                        true,
                    ),
                }
            }
            AccessDecisionEvent::AGGREGATE => {
                let AccessDecisionEvent::AccessDecided(p) = e.envelope.decode()?;
                // Token requests (every refresh) are decided too: listed when decisions are
                // asked for, left out of the default view of sign-ins.
                if !(f.kind == "decisions" || (f.kind.is_empty() && p.stage != "token")) {
                    continue;
                }
                (
                    format!(
                        "Access {} at {}",
                        wire_words(&p.outcome),
                        p.stage.replace('_', " ")
                    ),
                    Some(p.subject),
                    p.client_id,
                    // The reason names the rule that decided (or says none matched).
                    format!(
                        "{} · {}",
                        if p.granted { "granted" } else { "not granted" },
                        Some(p.reason)
                            .filter(|r| !r.is_empty())
                            .or_else(|| p.policy.map(|r| format!("rule {r}")))
                            .unwrap_or_else(|| "no rule matched".into())
                    ),
                    !p.granted,
                )
            }
            _ => continue,
        };
        if f.outcome == "failed" && !bad {
            continue;
        }
        let uid = f.user_id.trim();
        if !uid.is_empty() && subject.as_deref() != Some(uid) {
            continue;
        }
        lines.push(AuditLine {
            position: e.position,
            when: moment(&e.envelope.occurred_at),
            what,
            who: subject.as_deref().map(label),
            client: client.unwrap_or_default(),
            detail,
            bad,
        });
    }
    let filters = [
        ("kind", (!f.kind.is_empty()).then_some(f.kind.as_str())),
        (
            "outcome",
            (!f.outcome.is_empty()).then_some(f.outcome.as_str()),
        ),
        (
            "user_id",
            (!f.user_id.trim().is_empty()).then_some(f.user_id.trim()),
        ),
        ("from", (!f.from.trim().is_empty()).then_some(f.from.trim())),
        ("to", (!f.to.trim().is_empty()).then_some(f.to.trim())),
    ];
    let link = |after: Option<u64>| {
        let a = after.map(|a| a.to_string());
        let mut q = filters.to_vec();
        q.push(("after", a.as_deref()));
        format!("/qsa/audit{}", query(&q))
    };
    // Newest first, as an audit trail is read.
    lines.reverse();
    let later = (page.next_after < page.head).then(|| link(Some(page.next_after)));
    let earlier =
        (start > 0 && !start_of_range).then(|| link(Some(start.saturating_sub(AUDIT_WINDOW))));
    let latest = later.as_ref().map(|_| link(None));
    let people = people
        .into_iter()
        .map(|u| Member {
            label: u.label(),
            id: u.id,
        })
        .collect();
    Ok(render(&AuditPage {
        layout: me.layout("Sign-in audit", "/audit"),
        from: start + 1,
        to: page.next_after,
        earlier,
        later,
        latest,
        people,
        lines,
        f,
    }))
}

/// An RFC 3339 timestamp to the second, for tables.
pub(super) fn moment(timestamp: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(timestamp) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        Err(_) => timestamp.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::items;

    #[test]
    fn typed_lists_split_on_commas_and_lines() {
        assert_eq!(
            items(" a, b\nc ,,\n"),
            vec!["a".to_owned(), "b".into(), "c".into()]
        );
        assert!(items("  ").is_empty());
    }
}
