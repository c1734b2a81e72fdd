//! SCIM 2.0 provisioning (RFC 7643/7644): per-organization bearer tokens, and users and groups
//! written through the Identity service, so that SCIM produces exactly the events the REST API
//! does (`UserRegistered`, `UserDisabled`, `GroupMemberAdded`...), plus the sealed
//! `UserProfileChanged` for the attributes the REST API has no field for.
//!
//! The documents here are SCIM JSON; [`filter`] and [`patch`] are pure.

pub mod filter;
pub mod patch;

use std::collections::BTreeSet;

use quantus_domain::identity::group::GroupCommand;
use quantus_domain::identity::scim_token::{ScimToken, ScimTokenCommand};
use quantus_domain::identity::user::{User, UserCommand, UserStatus};
use quantus_domain::identity::Role;
use quantus_domain::CommandContext;
use quantus_infra::credentials::{random_secret, secret_digest, secret_matches};
use serde_json::{json, Map, Value};

use crate::identity::{normalize_email, Identity, NewUser, Registration, RegistrationError};
use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};
use filter::{get_ci, CORE_GROUP, CORE_USER, ENTERPRISE_USER};

impl ClassifyError for quantus_domain::identity::scim_token::ScimTokenError {
    fn classify(&self) -> CommandError {
        use quantus_domain::identity::scim_token::ScimTokenError as E;
        match self {
            E::NotFound => CommandError::NotFound(self.to_string()),
            E::AlreadyExists => CommandError::Rejected(self.to_string()),
            e => CommandError::Invalid(e.to_string()),
        }
    }
}

/// What kind of failure a SCIM error is. `api/` maps each kind to its HTTP status, once
/// (RFC 7644 §3.12); the command layer knows no status numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimErrorKind {
    /// The request is malformed or breaks a rule (400; `scim_type` says how).
    Invalid,
    /// No valid SCIM credential (401).
    Unauthenticated,
    /// Allowed to no one, or over the organization's quota (403).
    Forbidden,
    /// No such resource, or not the caller's (404).
    NotFound,
    /// A value that must be unique is taken (409).
    Conflict,
    /// `If-Match` names another version than the resource's (412).
    VersionMismatch,
    /// The service failed (500).
    Internal,
    /// The read model did not reach the write in time (503, retry).
    TimedOut,
}

/// An error as SCIM reports it (RFC 7644 §3.12).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} {scim_type:?}: {detail}")]
pub struct ScimError {
    pub kind: ScimErrorKind,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn new(
        kind: ScimErrorKind,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            scim_type,
            detail: detail.into(),
        }
    }
    /// A request that breaks a rule, `scimType` `scim_type`.
    pub fn invalid(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ScimErrorKind::Invalid, Some(scim_type), detail)
    }
    pub fn invalid_value(detail: impl Into<String>) -> Self {
        Self::invalid("invalidValue", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ScimErrorKind::NotFound, None, detail)
    }
    pub fn uniqueness(detail: impl Into<String>) -> Self {
        Self::new(ScimErrorKind::Conflict, Some("uniqueness"), detail)
    }
    pub fn version_mismatch(detail: impl Into<String>) -> Self {
        Self::new(ScimErrorKind::VersionMismatch, None, detail)
    }
    pub fn internal() -> Self {
        Self::new(
            ScimErrorKind::Internal,
            None,
            "the request could not be completed",
        )
    }
}

impl From<CommandError> for ScimError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(d) => ScimError::invalid_value(d),
            CommandError::NotFound(d) => ScimError::not_found(d),
            CommandError::Rejected(d) => ScimError::invalid_value(d),
            CommandError::Concurrency(d) => ScimError::version_mismatch(d),
            CommandError::QuotaExceeded(d) => ScimError::new(ScimErrorKind::Forbidden, None, d),
            other => {
                tracing::error!(error = %other, "SCIM command failed");
                ScimError::internal()
            }
        }
    }
}

impl From<patch::PatchError> for ScimError {
    fn from(e: patch::PatchError) -> Self {
        use patch::PatchError as P;
        match e {
            P::Syntax(d) => ScimError::invalid("invalidSyntax", d),
            P::Path(d) => ScimError::invalid("invalidPath", d),
            P::NoTarget(d) => ScimError::invalid("noTarget", d),
            P::Value(d) => ScimError::invalid_value(d),
        }
    }
}

fn storage(e: impl std::fmt::Display) -> ScimError {
    ScimError::from(CommandError::Storage(e.to_string()))
}

/// A SCIM token that authenticated: the organization it provisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimCaller {
    pub token_id: String,
    pub organization_id: String,
}

/// Core User attributes kept in the profile (the canonical spelling; input is
/// case-insensitive). `active`, `password`, `id`, `meta` and `groups` are handled apart.
const USER_ATTRIBUTES: &[&str] = &[
    "userName",
    "externalId",
    "name",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "emails",
    "phoneNumbers",
    "addresses",
];
const NAME_SUBS: &[&str] = &[
    "formatted",
    "familyName",
    "givenName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
];
const MULTI_SUBS: &[&str] = &[
    "value",
    "display",
    "type",
    "primary",
    "formatted",
    "streetAddress",
    "locality",
    "region",
    "postalCode",
    "country",
];
const ENTERPRISE_ATTRIBUTES: &[&str] = &[
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
    "manager",
];
const MANAGER_SUBS: &[&str] = &["value", "$ref", "displayName"];

fn canonical(known: &[&'static str], key: &str) -> Option<&'static str> {
    known.iter().copied().find(|k| k.eq_ignore_ascii_case(key))
}

/// `true`/`false`, also as strings in any case (Entra sends `"False"`).
pub fn scim_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn canonical_object(
    attr: &str,
    v: &Value,
    subs: &[&'static str],
) -> Result<Map<String, Value>, ScimError> {
    let o = v
        .as_object()
        .ok_or_else(|| ScimError::invalid_value(format!("{attr} must be an object")))?;
    let mut out = Map::new();
    for (k, v) in o {
        let Some(k) = canonical(subs, k) else {
            continue;
        };
        let v = match (k, v) {
            (_, Value::Null) => continue,
            ("primary", v) => Value::Bool(scim_bool(v).ok_or_else(|| {
                ScimError::invalid_value(format!("{attr}.primary must be a boolean"))
            })?),
            (_, Value::String(s)) => Value::String(s.clone()),
            _ => {
                return Err(ScimError::invalid_value(format!(
                    "{attr}.{k} must be a string"
                )))
            }
        };
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

/// A user as a SCIM client describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDoc {
    /// Canonical attributes (core, and the enterprise extension under its URN).
    pub profile: Map<String, Value>,
    pub active: Option<bool>,
    pub password: Option<String>,
}

impl UserDoc {
    pub fn user_name(&self) -> &str {
        self.profile
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Refuses schemas this service does not implement, named in `schemas` or as a URN-keyed
/// attribute (RFC 7643 §3: extensions are URN-keyed objects): dropping them silently would let
/// a client believe they were stored.
fn check_schemas(obj: &Map<String, Value>, known: &[&str]) -> Result<(), ScimError> {
    let is_known = |urn: &str| known.iter().any(|k| k.eq_ignore_ascii_case(urn.trim()));
    if let Some(v) = get_ci(obj, "schemas") {
        let items = v
            .as_array()
            .ok_or_else(|| ScimError::invalid_value("schemas must be an array of URIs"))?;
        for item in items {
            let urn = item
                .as_str()
                .ok_or_else(|| ScimError::invalid_value("schemas must be an array of URIs"))?;
            if !is_known(urn) {
                return Err(ScimError::invalid_value(format!(
                    "schema {urn:?} is not supported"
                )));
            }
        }
    }
    for key in obj.keys() {
        let urn_keyed = key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"));
        if urn_keyed && !is_known(key) {
            return Err(ScimError::invalid_value(format!(
                "schema {key:?} is not supported"
            )));
        }
    }
    Ok(())
}

/// Checks and canonicalises a User document. Unknown attributes of the core schema are ignored
/// (clients such as Entra send attributes of their own); read-only ones (`id`, `meta`,
/// `groups`) too. Unknown schemas (extensions) are refused with `invalidValue`.
pub fn normalize_user(input: &Value) -> Result<UserDoc, ScimError> {
    let obj = input
        .as_object()
        .ok_or_else(|| ScimError::invalid("invalidSyntax", "a User must be an object"))?;
    check_schemas(obj, &[CORE_USER, ENTERPRISE_USER])?;
    let mut profile = Map::new();
    let mut active = None;
    let mut password = None;
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        if k.eq_ignore_ascii_case("active") {
            active = Some(
                scim_bool(v).ok_or_else(|| ScimError::invalid_value("active must be a boolean"))?,
            );
            continue;
        }
        if k.eq_ignore_ascii_case("password") {
            password = Some(
                v.as_str()
                    .ok_or_else(|| ScimError::invalid_value("password must be a string"))?
                    .to_owned(),
            );
            continue;
        }
        if k.eq_ignore_ascii_case(ENTERPRISE_USER) {
            let o = v.as_object().ok_or_else(|| {
                ScimError::invalid_value("the enterprise extension must be an object")
            })?;
            let mut ext = Map::new();
            for (ek, ev) in o {
                let Some(ek) = canonical(ENTERPRISE_ATTRIBUTES, ek) else {
                    continue;
                };
                match (ek, ev) {
                    (_, Value::Null) => {}
                    ("manager", Value::String(s)) => {
                        ext.insert(ek.into(), json!({ "value": s }));
                    }
                    ("manager", m) => {
                        let m = canonical_object("manager", m, MANAGER_SUBS)?;
                        if !m.is_empty() {
                            ext.insert(ek.into(), Value::Object(m));
                        }
                    }
                    (_, Value::String(s)) => {
                        ext.insert(ek.into(), Value::String(s.clone()));
                    }
                    _ => return Err(ScimError::invalid_value(format!("{ek} must be a string"))),
                }
            }
            if !ext.is_empty() {
                profile.insert(ENTERPRISE_USER.into(), Value::Object(ext));
            }
            continue;
        }
        let Some(attr) = canonical(USER_ATTRIBUTES, k) else {
            continue;
        };
        let value = match attr {
            "name" => Value::Object(canonical_object("name", v, NAME_SUBS)?),
            "emails" | "phoneNumbers" | "addresses" => {
                let items = v
                    .as_array()
                    .ok_or_else(|| ScimError::invalid_value(format!("{attr} must be an array")))?;
                let mut out = vec![];
                for i in items {
                    out.push(Value::Object(canonical_object(attr, i, MULTI_SUBS)?));
                }
                if out
                    .iter()
                    .filter(|i| i.get("primary") == Some(&Value::Bool(true)))
                    .count()
                    > 1
                {
                    return Err(ScimError::invalid_value(format!(
                        "at most one of {attr} may be primary"
                    )));
                }
                Value::Array(out)
            }
            _ => match v {
                Value::String(s) => Value::String(s.clone()),
                _ => return Err(ScimError::invalid_value(format!("{attr} must be a string"))),
            },
        };
        profile.insert(attr.to_owned(), value);
    }
    let user_name = profile
        .get("userName")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if user_name.is_empty() {
        return Err(ScimError::invalid_value("userName is required"));
    }
    if user_name.chars().count() > 256 || user_name.chars().any(char::is_control) {
        return Err(ScimError::invalid_value(
            "userName must be at most 256 characters without control characters",
        ));
    }
    profile.insert("userName".into(), Value::String(user_name));
    Ok(UserDoc {
        profile,
        active,
        password,
    })
}

/// The profile of a user that SCIM never described (made through the REST API).
pub fn fallback_profile(email: Option<&str>, name: Option<&str>) -> Map<String, Value> {
    let mut p = Map::new();
    if let Some(e) = email {
        p.insert("userName".into(), e.into());
        p.insert(
            "emails".into(),
            json!([{ "value": e, "type": "work", "primary": true }]),
        );
    }
    if let Some(n) = name {
        p.insert("displayName".into(), n.into());
    }
    p
}

/// The weak ETag of an aggregate version.
pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// A User resource: the profile, `active`, `id` and `meta`.
pub fn user_resource(
    base: &str,
    id: &str,
    profile: &Map<String, Value>,
    active: bool,
    created: &str,
    modified: &str,
    version: u64,
) -> Value {
    let mut r = Map::new();
    let mut schemas = vec![Value::from(CORE_USER)];
    if profile.contains_key(ENTERPRISE_USER) {
        schemas.push(ENTERPRISE_USER.into());
    }
    r.insert("schemas".into(), Value::Array(schemas));
    r.insert("id".into(), id.into());
    for (k, v) in profile {
        r.insert(k.clone(), v.clone());
    }
    r.insert("active".into(), active.into());
    r.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": created,
            "lastModified": modified,
            "location": format!("{base}/Users/{id}"),
            "version": etag(version),
        }),
    );
    Value::Object(r)
}

/// A Group resource.
#[allow(clippy::too_many_arguments)]
pub fn group_resource(
    base: &str,
    id: &str,
    name: &str,
    external_id: Option<&str>,
    members: &[String],
    created: &str,
    modified: &str,
    version: u64,
) -> Value {
    let mut r = Map::new();
    r.insert("schemas".into(), json!([CORE_GROUP]));
    r.insert("id".into(), id.into());
    if let Some(x) = external_id {
        r.insert("externalId".into(), x.into());
    }
    r.insert("displayName".into(), name.into());
    r.insert(
        "members".into(),
        Value::Array(
            members
                .iter()
                .map(|m| json!({"value": m, "$ref": format!("{base}/Users/{m}"), "type": "User"}))
                .collect(),
        ),
    );
    r.insert(
        "meta".into(),
        json!({
            "resourceType": "Group",
            "created": created,
            "lastModified": modified,
            "location": format!("{base}/Groups/{id}"),
            "version": etag(version),
        }),
    );
    Value::Object(r)
}

/// A group as a SCIM client describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDoc {
    pub display_name: String,
    pub external_id: Option<String>,
    pub members: BTreeSet<String>,
}

pub fn normalize_group(input: &Value) -> Result<GroupDoc, ScimError> {
    let obj = input
        .as_object()
        .ok_or_else(|| ScimError::invalid("invalidSyntax", "a Group must be an object"))?;
    check_schemas(obj, &[CORE_GROUP])?;
    let display_name = get_ci(obj, "displayName")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ScimError::invalid_value("displayName is required"))?
        .to_owned();
    let external_id = match get_ci(obj, "externalId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ScimError::invalid_value("externalId must be a string")),
    };
    let mut members = BTreeSet::new();
    match get_ci(obj, "members") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for m in items {
                let value = m
                    .as_object()
                    .and_then(|o| get_ci(o, "value"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| ScimError::invalid_value("each member needs a value"))?;
                members.insert(value.to_owned());
            }
        }
        Some(_) => return Err(ScimError::invalid_value("members must be an array")),
    }
    Ok(GroupDoc {
        display_name,
        external_id,
        members,
    })
}

/// The service: tokens, and users and groups of the caller's organization.
#[derive(Clone)]
pub struct Scim {
    identity: Identity,
    bus: CommandBus,
    invites: Option<crate::invites::Invites>,
}

fn user_name_login(organization_id: &str, user_name: &str) -> String {
    format!("scim-user-name\0{organization_id}\0{}", user_name.trim())
}

/// The address a user without a usable email gets: it cannot receive mail (RFC 2606
/// `.invalid`) and is never claimed as a login.
fn unusable_email(id: &str) -> String {
    format!("{id}@scim.invalid")
}

fn is_unusable(id: &str, email: &str) -> bool {
    email == unusable_email(id)
}

fn parse_id(id: &str) -> Option<String> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.to_string())
}

impl Scim {
    pub fn new(identity: Identity, bus: CommandBus) -> Self {
        Self {
            identity,
            bus,
            invites: None,
        }
    }

    /// Users created without a password get a set-password invite (when they have an email).
    pub fn with_invites(mut self, invites: crate::invites::Invites) -> Self {
        self.invites = Some(invites);
        self
    }

    // ---- tokens ----

    /// Issues a token for `organization_id`: `(token id, bearer value, outcome)`. The bearer
    /// value is shown once; only the digest of its secret is recorded.
    pub async fn issue_token(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        name: &str,
    ) -> Result<(String, String, CommandOutcome), CommandError> {
        self.bus.active_organization(organization_id).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let secret = random_secret();
        let outcome = self
            .bus
            .execute::<ScimToken>(
                ctx,
                &id,
                ScimTokenCommand::Issue {
                    organization_id: organization_id.to_owned(),
                    name: name.to_owned(),
                    secret_sha256: secret_digest(&secret),
                },
                Some(0),
                &(),
            )
            .await?;
        Ok((id.clone(), format!("{id}.{secret}"), outcome))
    }

    /// The token (for its organization), or NotFound.
    pub async fn token(&self, id: &str) -> Result<ScimToken, CommandError> {
        let not_found = || CommandError::NotFound(format!("no SCIM token {id}"));
        let id = parse_id(id).ok_or_else(not_found)?;
        let (token, _) = self.bus.load::<ScimToken>(&id).await?;
        if !token.issued {
            return Err(not_found());
        }
        Ok(token)
    }

    pub async fn revoke_token(
        &self,
        ctx: &CommandContext,
        id: &str,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<ScimToken>(ctx, id, ScimTokenCommand::Revoke, None, &())
            .await
    }

    /// Who a bearer value is, if it is a live token of an active organization.
    pub async fn authenticate(&self, bearer: &str) -> Option<ScimCaller> {
        let (id, secret) = bearer.split_once('.')?;
        let id = parse_id(id)?;
        let (token, _) = self.bus.load::<ScimToken>(&id).await.ok()?;
        if !token.is_live() || !secret_matches(secret, &token.secret_sha256) {
            return None;
        }
        self.bus
            .active_organization(&token.organization_id)
            .await
            .ok()?;
        Some(ScimCaller {
            token_id: id,
            organization_id: token.organization_id,
        })
    }

    // ---- users ----

    /// The user `id` of `organization_id` (404 for erased users and other organizations'),
    /// with its profile opened and its version.
    pub async fn user_doc(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<(User, u64, Map<String, Value>), ScimError> {
        let not_found = || ScimError::not_found(format!("no User {id}"));
        let id = parse_id(id).ok_or_else(not_found)?;
        let (user, version) = self.bus.load::<User>(&id).await?;
        if !matches!(user.status, UserStatus::Active | UserStatus::Disabled)
            || user.organization_id != organization_id
        {
            return Err(not_found());
        }
        let keys = self.identity.subject_keys();
        let profile = match &user.profile {
            Some(s) => {
                let text = keys
                    .open_text(s, "profile")
                    .await
                    .map_err(storage)?
                    .ok_or_else(not_found)?;
                match serde_json::from_str::<Value>(&text).map_err(storage)? {
                    Value::Object(o) => o,
                    _ => return Err(storage("a profile is not an object")),
                }
            }
            None => {
                let email = match &user.email {
                    Some(s) => keys.open_text(s, "email").await.map_err(storage)?,
                    None => None,
                };
                let name = match &user.name {
                    Some(s) => keys.open_text(s, "name").await.map_err(storage)?,
                    None => None,
                };
                fallback_profile(email.as_deref(), name.as_deref())
            }
        };
        Ok((user, version, profile))
    }

    /// Creates a user through `Identity::register_person_then` (the userName and the login
    /// email claimed, released if anything fails): `UserRegistered` (email and name sealed as
    /// the REST API does), then `UserProfileChanged`, then `UserDisabled` when `active` is
    /// false.
    pub async fn create_user(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        input: &Value,
    ) -> Result<(String, CommandOutcome), ScimError> {
        let doc = normalize_user(input)?;
        let id = uuid::Uuid::now_v7().to_string();
        // The login email: the primary (or first) email, else a userName that is one.
        let email = login_email(&doc);
        let registration = Registration {
            user: NewUser {
                organization_id: organization_id.to_owned(),
                // A user without a usable email gets an address that cannot receive mail
                // (RFC 2606 `.invalid`) and is not claimed as a login.
                email: email.clone().unwrap_or_else(|| unusable_email(&id)),
                name: display_name(&doc),
                password: doc.password.clone(),
                roles: [Role::Member].into(),
            },
            // Unique in the organization only: another organization's user with the same
            // address neither blocks this one nor shows through the answer.
            claim_email: email.is_some(),
            login: Some(user_name_login(organization_id, doc.user_name())),
        };
        let outcome = self
            .identity
            .register_person_then(ctx, &id, registration, |outcome| {
                self.after_register(ctx, organization_id, &id, &doc, email.as_deref(), outcome)
            })
            .await
            .map_err(|e| match e {
                RegistrationError::LoginTaken => ScimError::uniqueness(format!(
                    "userName {:?} is already taken",
                    doc.user_name()
                )),
                RegistrationError::EmailTaken => ScimError::uniqueness(format!(
                    "a user with the email {:?} already exists",
                    email.as_deref().unwrap_or_default()
                )),
                RegistrationError::Failed(e) => e,
            })?;
        Ok((id, outcome))
    }

    /// What SCIM records after `UserRegistered`: the profile, `active`, a set-password invite.
    async fn after_register(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        doc: &UserDoc,
        email: Option<&str>,
        registered: CommandOutcome,
    ) -> Result<CommandOutcome, ScimError> {
        let mut outcome = self
            .set_profile(ctx, id, &doc.profile, Some(registered.version))
            .await?
            .unwrap_or(registered);
        if doc.active == Some(false) {
            outcome = self
                .identity
                .user_command(
                    ctx,
                    id,
                    UserCommand::Disable {
                        reason: "SCIM active=false".into(),
                    },
                    Some(outcome.version),
                )
                .await?;
        }
        // Without a password the person needs a way in: a one-time set-password link.
        if let (None, Some(invites), Some(email)) = (&doc.password, &self.invites, email) {
            outcome = invites
                .invite(ctx, id, organization_id, email, Some(outcome.version))
                .await?;
        }
        Ok(outcome)
    }

    async fn set_profile(
        &self,
        ctx: &CommandContext,
        id: &str,
        profile: &Map<String, Value>,
        expected: Option<u64>,
    ) -> Result<Option<CommandOutcome>, ScimError> {
        let text = serde_json::to_string(profile).map_err(storage)?;
        let sealed = self
            .identity
            .subject_keys()
            .seal(id, "profile", text.as_bytes())
            .await
            .map_err(storage)?;
        let outcome = self
            .identity
            .user_command(
                ctx,
                id,
                UserCommand::SetProfile { profile: sealed },
                expected,
            )
            .await?;
        Ok(Some(outcome))
    }

    /// Replaces a user (PUT) with `input`; `expected` is the If-Match version.
    pub async fn replace_user(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        input: &Value,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, ScimError> {
        let doc = normalize_user(input)?;
        self.update_user(ctx, organization_id, id, doc, expected)
            .await
    }

    /// Applies a PatchOp to a user.
    pub async fn patch_user(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        request: &Value,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, ScimError> {
        let (user, _, profile) = self.user_doc(organization_id, id).await?;
        let mut doc = Value::Object(profile);
        doc["active"] = Value::Bool(user.status == UserStatus::Active);
        patch::apply(&mut doc, request)?;
        let doc = normalize_user(&doc)?;
        if doc.active.is_none() {
            // `active` is required here: a user is either active or not.
            return Err(ScimError::invalid_value("active cannot be removed"));
        }
        self.update_user(ctx, organization_id, id, doc, expected)
            .await
    }

    async fn update_user(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        doc: UserDoc,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, ScimError> {
        let (user, version, old) = self.user_doc(organization_id, id).await?;
        let id = parse_id(id).ok_or_else(|| ScimError::not_found(format!("no User {id}")))?;
        if let Some(e) = expected {
            if e != version {
                return Err(ScimError::version_mismatch(format!(
                    "the User is at version {version}, not {e}"
                )));
            }
        }
        let keys = self.identity.subject_keys();
        let old_name = old
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let renamed = !old_name.trim().eq_ignore_ascii_case(doc.user_name().trim());
        let new_claim = keys.login_digest(&user_name_login(organization_id, doc.user_name()));
        if renamed && !keys.claim_login(&new_claim, &id).await.map_err(storage)? {
            return Err(ScimError::uniqueness(format!(
                "userName {:?} is already taken",
                doc.user_name()
            )));
        }
        // The login email follows the userName / work email: the new address is claimed in the
        // login index first, the old one released only once the change is recorded.
        let old_email = match &user.email {
            Some(s) => keys.open_text(s, "email").await.map_err(storage)?,
            None => None,
        };
        let new_email = login_email(&doc).unwrap_or_else(|| unusable_email(&id));
        let email_moves = old_email.as_deref() != Some(new_email.as_str());
        let mut email_claim = None;
        if email_moves && !is_unusable(&id, &new_email) {
            let claimed = keys
                .claim_email(organization_id, &new_email, &id)
                .await
                .map_err(storage)?;
            if claimed {
                email_claim = Some(new_email.clone());
            } else if keys
                .find_email(organization_id, &new_email)
                .await
                .map_err(storage)?
                != Some(id.clone())
            {
                if renamed {
                    keys.release_login(&new_claim).await.map_err(storage)?;
                }
                // Says no more than that: not who holds it, nor in which organization.
                return Err(ScimError::uniqueness("the email is already in use"));
            }
        }
        let result = async {
            let mut outcome = CommandOutcome {
                position: self
                    .bus
                    .repository()
                    .aggregate_head("User", &id)
                    .await
                    .map_err(storage)?,
                version,
                events: 0,
            };
            if doc.profile != old {
                if let Some(o) = self
                    .set_profile(ctx, &id, &doc.profile, Some(outcome.version))
                    .await?
                {
                    outcome = o;
                }
            }
            if email_moves {
                let sealed = keys
                    .seal(&id, "email", new_email.as_bytes())
                    .await
                    .map_err(storage)?;
                outcome = self
                    .identity
                    .user_command(
                        ctx,
                        &id,
                        UserCommand::ChangeEmail { email: sealed },
                        Some(outcome.version),
                    )
                    .await?;
            }
            if let Some(p) = doc.password.clone() {
                outcome = self
                    .identity
                    .set_password(ctx, &id, p, Some(outcome.version))
                    .await?;
            }
            let command = match (user.status, doc.active) {
                (UserStatus::Active, Some(false)) => Some(UserCommand::Disable {
                    reason: "SCIM active=false".into(),
                }),
                (UserStatus::Disabled, Some(true)) => Some(UserCommand::Enable),
                _ => None,
            };
            if let Some(c) = command {
                outcome = self
                    .identity
                    .user_command(ctx, &id, c, Some(outcome.version))
                    .await?;
            }
            Ok::<_, ScimError>(outcome)
        }
        .await;
        match result {
            Ok(outcome) => {
                let mut released = vec![];
                if renamed {
                    released.push(keys.login_digest(&user_name_login(organization_id, &old_name)));
                }
                if email_moves {
                    if let Some(old) = old_email.as_deref().filter(|e| !is_unusable(&id, e)) {
                        keys.release_email(organization_id, old, &id)
                            .await
                            .map_err(storage)?;
                    }
                }
                for claim in released {
                    if keys.find_login(&claim).await.map_err(storage)? == Some(id.clone()) {
                        keys.release_login(&claim).await.map_err(storage)?;
                    }
                }
                Ok(outcome)
            }
            Err(e) => {
                if renamed {
                    keys.release_login(&new_claim).await.map_err(storage)?;
                }
                if let Some(e) = email_claim {
                    keys.release_email(organization_id, &e, &id)
                        .await
                        .map_err(storage)?;
                }
                Err(e)
            }
        }
    }

    /// DELETE: the user is erased (crypto-shredded), as `DELETE /v1/users/{id}?erase=true`
    /// does; its logins (email and SCIM userName) are released.
    pub async fn delete_user(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
    ) -> Result<CommandOutcome, ScimError> {
        let (user, _, profile) = self.user_doc(organization_id, id).await?;
        let id = parse_id(id).ok_or_else(|| ScimError::not_found(format!("no User {id}")))?;
        let keys = self.identity.subject_keys();
        if let Some(s) = &user.email {
            if let Some(email) = keys.open_text(s, "email").await.map_err(storage)? {
                keys.release_email(organization_id, &email, &id)
                    .await
                    .map_err(storage)?;
            }
        }
        if let Some(name) = profile.get("userName").and_then(Value::as_str) {
            let claim = keys.login_digest(&user_name_login(organization_id, name));
            if keys.find_login(&claim).await.map_err(storage)? == Some(id.clone()) {
                keys.release_login(&claim).await.map_err(storage)?;
            }
        }
        Ok(self.identity.erase_user(ctx, &id).await?)
    }

    // ---- groups ----

    pub async fn group(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<(quantus_domain::identity::group::Group, u64, String), ScimError> {
        let not_found = || ScimError::not_found(format!("no Group {id}"));
        let id = parse_id(id).ok_or_else(not_found)?;
        let (group, version) = self.identity.group(&id).await.map_err(|e| match e {
            CommandError::NotFound(_) => not_found(),
            e => e.into(),
        })?;
        if group.organization_id != organization_id {
            return Err(not_found());
        }
        Ok((group, version, id))
    }

    /// Checks that every member is a user of the organization (400 otherwise: a token never
    /// reaches another organization's users).
    async fn check_members(
        &self,
        organization_id: &str,
        members: &BTreeSet<String>,
    ) -> Result<(), ScimError> {
        for m in members {
            if self.user_doc(organization_id, m).await.is_err() {
                return Err(ScimError::invalid_value(format!(
                    "member {m:?} is not a User of this organization"
                )));
            }
        }
        Ok(())
    }

    pub async fn create_group(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        input: &Value,
    ) -> Result<(String, CommandOutcome), ScimError> {
        let doc = normalize_group(input)?;
        self.check_members(organization_id, &doc.members).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let mut outcome = self
            .identity
            .group_command(
                ctx,
                &id,
                GroupCommand::Create {
                    organization_id: organization_id.to_owned(),
                    name: doc.display_name.clone(),
                },
                Some(0),
            )
            .await?;
        outcome = self
            .sync_group(ctx, &id, &Default::default(), None, &doc, outcome)
            .await?;
        Ok((id, outcome))
    }

    /// Brings the group from its current members and externalId to `doc`'s.
    async fn sync_group(
        &self,
        ctx: &CommandContext,
        id: &str,
        members: &BTreeSet<String>,
        external_id: Option<&String>,
        doc: &GroupDoc,
        mut outcome: CommandOutcome,
    ) -> Result<CommandOutcome, ScimError> {
        let mut commands = vec![];
        if external_id != doc.external_id.as_ref() {
            commands.push(GroupCommand::SetExternalId {
                external_id: doc.external_id.clone(),
            });
        }
        for m in doc.members.difference(members) {
            commands.push(GroupCommand::AddMember {
                user_id: m.clone(),
                member_of: Default::default(),
            });
        }
        for m in members.difference(&doc.members) {
            commands.push(GroupCommand::RemoveMember { user_id: m.clone() });
        }
        for c in commands {
            let o = self
                .identity
                .group_command(ctx, id, c, Some(outcome.version))
                .await?;
            if o.events > 0 {
                outcome = o;
            }
        }
        Ok(outcome)
    }

    async fn update_group(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        doc: GroupDoc,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, ScimError> {
        let (group, version, id) = self.group(organization_id, id).await?;
        if let Some(e) = expected {
            if e != version {
                return Err(ScimError::version_mismatch(format!(
                    "the Group is at version {version}, not {e}"
                )));
            }
        }
        let added: BTreeSet<String> = doc.members.difference(&group.members).cloned().collect();
        self.check_members(organization_id, &added).await?;
        let mut outcome = CommandOutcome {
            position: self
                .bus
                .repository()
                .aggregate_head("Group", &id)
                .await
                .map_err(storage)?,
            version,
            events: 0,
        };
        if doc.display_name != group.name {
            let o = self
                .identity
                .group_command(
                    ctx,
                    &id,
                    GroupCommand::Rename {
                        name: doc.display_name.clone(),
                    },
                    Some(version),
                )
                .await?;
            if o.events > 0 {
                outcome = o;
            }
        }
        self.sync_group(
            ctx,
            &id,
            &group.members,
            group.external_id.as_ref(),
            &doc,
            outcome,
        )
        .await
    }

    pub async fn replace_group(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        input: &Value,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, ScimError> {
        let doc = normalize_group(input)?;
        self.update_group(ctx, organization_id, id, doc, expected)
            .await
    }

    pub async fn patch_group(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        request: &Value,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, ScimError> {
        let (group, _, gid) = self.group(organization_id, id).await?;
        let mut doc = group_resource(
            "",
            &gid,
            &group.name,
            group.external_id.as_deref(),
            &group.members.iter().cloned().collect::<Vec<_>>(),
            "",
            "",
            0,
        );
        patch::apply(&mut doc, request)?;
        let doc = normalize_group(&doc)?;
        self.update_group(ctx, organization_id, id, doc, expected)
            .await
    }

    pub async fn delete_group(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        id: &str,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, ScimError> {
        let (_, _, id) = self.group(organization_id, id).await?;
        Ok(self
            .identity
            .group_command(ctx, &id, GroupCommand::Delete, expected)
            .await?)
    }
}

fn login_email(doc: &UserDoc) -> Option<String> {
    let emails = doc.profile.get("emails").and_then(Value::as_array);
    let from_emails = emails.and_then(|items| {
        items
            .iter()
            .find(|i| i.get("primary") == Some(&Value::Bool(true)))
            .or_else(|| items.first())
            .and_then(|i| i.get("value"))
            .and_then(Value::as_str)
            .and_then(|e| normalize_email(e).ok())
    });
    from_emails.or_else(|| normalize_email(doc.user_name()).ok())
}

/// The name the User aggregate records: displayName, name.formatted, given + family name, or
/// the userName, at most 128 characters.
fn display_name(doc: &UserDoc) -> String {
    let p = &doc.profile;
    let s = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let name = p.get("name");
    let given_family = {
        let parts: Vec<String> = ["givenName", "familyName"]
            .iter()
            .filter_map(|k| s(name.and_then(|n| n.get(k))))
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    };
    let raw = s(p.get("displayName"))
        .or_else(|| s(name.and_then(|n| n.get("formatted"))))
        .or(given_family)
        .unwrap_or_else(|| doc.user_name().to_owned());
    raw.chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_documents_are_canonicalised_and_checked() {
        let doc = normalize_user(&json!({
            "schemas": [CORE_USER, ENTERPRISE_USER],
            "USERNAME": " bjensen ",
            "Active": "False",
            "name": {"GivenName": "Barbara", "x": "dropped"},
            "emails": [{"Value": "B@Example.com", "type": "work", "primary": "True"}],
            ENTERPRISE_USER: {"Department": "R&D", "manager": {"value": "m1"}},
            "unknownAttribute": 1,
            "title": null,
        }))
        .unwrap();
        assert_eq!(doc.user_name(), "bjensen");
        assert_eq!(doc.active, Some(false));
        assert_eq!(doc.profile["name"], json!({"givenName": "Barbara"}));
        assert_eq!(doc.profile["emails"][0]["primary"], true);
        assert_eq!(
            doc.profile[ENTERPRISE_USER],
            json!({"department": "R&D", "manager": {"value": "m1"}})
        );
        assert!(!doc.profile.contains_key("unknownAttribute"));
        assert_eq!(login_email(&doc).as_deref(), Some("b@example.com"));
        assert_eq!(display_name(&doc), "Barbara");
        assert!(normalize_user(&json!({"name": {}})).is_err());
        assert!(normalize_user(&json!({"userName": "a", "active": "maybe"})).is_err());
        assert!(normalize_user(&json!({"userName": "a", "emails": [
            {"value": "a@x.io", "primary": true}, {"value": "b@x.io", "primary": true}]}))
        .is_err());
    }

    #[test]
    fn unknown_schemas_are_refused_not_dropped() {
        let refused = |doc: Value| {
            let e = normalize_user(&doc).unwrap_err();
            assert_eq!(
                (e.kind, e.scim_type),
                (ScimErrorKind::Invalid, Some("invalidValue")),
                "{doc}"
            );
        };
        refused(
            json!({"schemas": [CORE_USER, "urn:acme:params:scim:schemas:extension:acme:2.0:User"],
                       "userName": "a"}),
        );
        refused(json!({"schemas": [CORE_USER], "userName": "a",
                       "urn:acme:params:scim:schemas:extension:acme:2.0:User": {"badge": "7"}}));
        refused(json!({"schemas": "not an array", "userName": "a"}));
        let ok = normalize_user(&json!({
            "schemas": [CORE_USER.to_uppercase(), ENTERPRISE_USER],
            "userName": "a",
            ENTERPRISE_USER: {"department": "R&D"},
        }))
        .unwrap();
        assert_eq!(ok.profile[ENTERPRISE_USER]["department"], "R&D");
        let e =
            normalize_group(&json!({"schemas": [CORE_USER], "displayName": "Eng"})).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidValue"));
        assert!(normalize_group(&json!({"schemas": [CORE_GROUP], "displayName": "Eng"})).is_ok());
    }

    #[test]
    fn group_documents_need_a_display_name() {
        let g =
            normalize_group(&json!({"displayName": "Eng", "members": [{"value": "u1"}]})).unwrap();
        assert_eq!(g.members.len(), 1);
        assert!(normalize_group(&json!({"members": []})).is_err());
    }
}
