//! SCIM 2.0 (RFC 7643/7644) at `/scim/v2`, one organization per bearer token, and the
//! `/v1/organizations/{org}/scim-tokens` routes that issue and revoke those tokens.
//!
//! Writes go through [`quantus_commands::scim::Scim`] (the Identity service, the same events
//! as the REST API); reads come from the users and groups read models, filtered, sorted and
//! paged in memory (a `userName` prefix or equality narrows the rows in SQL first).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use quantus_commands::scim::filter::{
    compare_keys, sort_key, AttrPath, Filter, CORE_GROUP, CORE_USER, ENTERPRISE_USER,
};
use quantus_commands::scim::{
    fallback_profile, group_resource, user_resource, Scim, ScimCaller, ScimError, ScimErrorKind,
};
use quantus_commands::CommandOutcome;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_projections::groups::search as groups_search;
use quantus_projections::groups::GroupsView;
use quantus_projections::runner::ProjectionRunner;
use quantus_projections::users::search as users_search;
use quantus_projections::users::UsersView;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

mod search;

use crate::auth::Principal;
use crate::write::{accepted_with, context};
use crate::{AppState, Problem};

const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const SCIM_JSON: &str = "application/scim+json";
/// The most resources one list answer holds (ServiceProviderConfig `filter.maxResults`).
pub const MAX_RESULTS: usize = 1000;

// ---- token management (under /v1, with an access token) ----

pub fn token_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/organizations/{org}/scim-tokens",
            post(issue_token).get(list_tokens),
        )
        .route(
            "/organizations/{org}/scim-tokens/{id}",
            delete(revoke_token),
        )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    #[serde(default)]
    name: Option<String>,
}

fn scim_service(state: &AppState) -> Scim {
    let scim = Scim::new(state.identity.clone(), state.bus.clone());
    match &state.invites {
        Some(invites) => scim.with_invites(invites.clone()),
        None => scim,
    }
}

/// 201 with the bearer value, shown this once (`Cache-Control: no-store`).
#[utoipa::path(post, path = "/v1/organizations/{org}/scim-tokens", tag = "identity",
    params(("org" = String, Path)),
    request_body(content = Object, description = "{\"name\": \"Okta\"} (optional)"),
    responses((status = 201, body = IssuedScimToken), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn issue_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let body: IssueToken = crate::write::optional_json(&headers, &body)?;
    let ctx = context(&principal, &headers, &org);
    let name = body.name.unwrap_or_else(|| "SCIM".into());
    let (id, token, outcome) = scim_service(&state).issue_token(&ctx, &org, &name).await?;
    let body = IssuedScimToken {
        scim_base_url: format!("{}/scim/v2", state.issuer),
        version: outcome.version,
        position: outcome.position,
        id: id.clone(),
        token,
        organization_id: org.clone(),
    };
    let mut response = accepted_with(
        StatusCode::CREATED,
        body,
        outcome,
        Some(format!("/v1/organizations/{org}/scim-tokens/{id}")),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

/// An organization's SCIM tokens, by id, paged: never the token or its digest.
///
/// SCIM tokens have no read model: this reads every `ScimTokenIssued` event in the log, all
/// organizations' (the query walks the unique index over every `ScimToken` event and keeps
/// that one type), keeps the organization's, and loads each token of the page from its events
/// to tell whether it was revoked. The cost grows with the tokens of the whole log, not the
/// organization's (`docs/STATUS.md`, Known limits (QSA)).
#[utoipa::path(get, path = "/v1/organizations/{org}/scim-tokens", tag = "identity", operation_id = "list_scim_tokens",
    params(("org" = String, Path), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = crate::paging::Page<ScimTokenListed>, description = "never a token"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(org): Path<String>,
    crate::problem::ApiQuery(q): crate::problem::ApiQuery<TokenListQuery>,
) -> Result<axum::Json<crate::paging::Page<ScimTokenListed>>, Problem> {
    use quantus_domain::identity::scim_token::ScimTokenIssued;
    principal.require("identity:read")?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let limit = crate::paging::limit(q.limit)?;
    let issued = crate::paging::registered::<ScimTokenIssued>(
        &state.db,
        |e| e.organization_id == org,
        q.after.as_deref(),
        limit,
    )
    .await?
    .into_iter()
    .map(|(r, e)| {
        let created = r
            .envelope
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        (r.envelope.aggregate_id, e.name, created)
    });
    let scim = scim_service(&state);
    let mut rows = Vec::new();
    for (id, name, created_at) in issued {
        let token = scim.token(&id).await?;
        rows.push(ScimTokenListed {
            id,
            name,
            created_at,
            revoked: token.revoked,
        });
    }
    Ok(axum::Json(crate::paging::Page::of(rows, limit, |r| {
        r.id.as_str()
    })))
}

/// A new SCIM token: the bearer value is in this answer only (`Cache-Control: no-store`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedScimToken {
    pub id: String,
    /// The bearer value for the identity provider: shown this once, stored only as a digest.
    pub token: String,
    pub organization_id: String,
    /// The SCIM service's base URL to give the identity provider.
    pub scim_base_url: String,
    pub version: u64,
    pub position: u64,
}

/// An organization's SCIM token as the list shows it: never the token or its digest.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScimTokenListed {
    pub id: String,
    pub name: String,
    /// When it was issued (RFC 3339, seconds).
    pub created_at: String,
    pub revoked: bool,
}

#[utoipa::path(delete, path = "/v1/organizations/{org}/scim-tokens/{id}", tag = "identity",
    params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let scim = scim_service(&state);
    let token = scim.token(&id).await?;
    if token.organization_id != org {
        return Err(Problem::not_found(format!("no SCIM token {id}")));
    }
    let ctx = context(&principal, &headers, &org);
    let id = uuid::Uuid::parse_str(&id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found("no such SCIM token"))?;
    let outcome = scim.revoke_token(&ctx, &id).await?;
    Ok(crate::write::accepted(StatusCode::OK, &id, outcome, None))
}

// ---- the SCIM service provider ----

pub fn routes(state: AppState) -> Router<AppState> {
    let protected = Router::new()
        .route("/Users", get(list_users).post(create_user))
        .route("/Users/.search", post(search_users))
        .route(
            "/Users/{id}",
            get(show_user)
                .put(replace_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        .route("/Groups", get(list_groups).post(create_group))
        .route("/Groups/.search", post(search_groups))
        .route(
            "/Groups/{id}",
            get(show_group)
                .put(replace_group)
                .patch(patch_group)
                .delete(delete_group),
        )
        .route("/.search", post(search_all))
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{name}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            require_scim_token,
        ));
    protected.fallback(|| async { scim_error(ScimError::not_found("no such SCIM endpoint")) })
}

/// Every SCIM route needs a live SCIM token of an active organization.
async fn require_scim_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match crate::auth::bearer_token(request.headers()) {
        Some(token) => scim_service(&state).authenticate(token).await,
        None => None,
    };
    match caller {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            let mut r = scim_error(ScimError::new(
                ScimErrorKind::Unauthenticated,
                None,
                "a valid SCIM bearer token is required",
            ));
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// The HTTP status of each kind of SCIM error: the one place SCIM errors meet HTTP.
pub fn scim_status(kind: ScimErrorKind) -> StatusCode {
    match kind {
        ScimErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ScimErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ScimErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ScimErrorKind::NotFound => StatusCode::NOT_FOUND,
        ScimErrorKind::Conflict => StatusCode::CONFLICT,
        ScimErrorKind::VersionMismatch => StatusCode::PRECONDITION_FAILED,
        ScimErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ScimErrorKind::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An RFC 7644 §3.12 error answer.
pub fn scim_error(e: ScimError) -> Response {
    let status = scim_status(e.kind);
    let mut body = json!({
        "schemas": [ERROR_SCHEMA],
        "status": status.as_u16().to_string(),
        "detail": e.detail,
    });
    if let Some(t) = e.scim_type {
        body["scimType"] = t.into();
    }
    let mut response = scim_json(status, &body);
    if e.kind == ScimErrorKind::TimedOut {
        // The write happened; its read model shows it shortly.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    r
}

/// A SCIM handler's result.
pub struct Scimmed(Result<Response, ScimError>);

impl IntoResponse for Scimmed {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(r) => r,
            Err(e) => scim_error(e),
        }
    }
}

/// A problem from the shared HTTP helpers (`If-Match`, read-your-writes waits) as SCIM's error.
fn problem_to_scim(p: Problem) -> ScimError {
    let kind = match StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
        StatusCode::BAD_REQUEST => ScimErrorKind::Invalid,
        StatusCode::UNAUTHORIZED => ScimErrorKind::Unauthenticated,
        StatusCode::FORBIDDEN => ScimErrorKind::Forbidden,
        StatusCode::NOT_FOUND => ScimErrorKind::NotFound,
        StatusCode::CONFLICT => ScimErrorKind::Conflict,
        StatusCode::PRECONDITION_FAILED => ScimErrorKind::VersionMismatch,
        StatusCode::SERVICE_UNAVAILABLE => ScimErrorKind::TimedOut,
        _ => ScimErrorKind::Internal,
    };
    ScimError::new(kind, None, p.detail)
}

fn ctx_for(caller: &ScimCaller, headers: &HeaderMap) -> CommandContext {
    let principal_like = Actor {
        kind: ActorKind::Service,
        id: format!("scim-token:{}", caller.token_id),
    };
    let correlation_id = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .unwrap_or_else(uuid::Uuid::now_v7);
    CommandContext {
        tenant_id: caller.organization_id.clone(),
        actor: principal_like,
        occurred_at: quantus_domain::envelope::truncate_to_micros(chrono::Utc::now()),
        correlation_id,
        causation_id: uuid::Uuid::now_v7(),
    }
}

fn body_json(body: &Bytes) -> Result<Value, ScimError> {
    serde_json::from_slice(body)
        .map_err(|e| ScimError::invalid("invalidSyntax", format!("not JSON: {e}")))
}

/// `If-Match` as an aggregate version (`W/"3"`, `"3"`; `*` means any).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ScimError> {
    crate::write::expected_version(headers).map_err(problem_to_scim)
}

fn base_url(state: &AppState) -> String {
    format!("{}/scim/v2", state.issuer)
}

fn with_etag(mut r: Response, resource: &Value) -> Response {
    if let Some(v) = resource
        .pointer("/meta/version")
        .and_then(Value::as_str)
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

async fn wait_for(runner: &ProjectionRunner, outcome: &CommandOutcome) -> Result<(), ScimError> {
    crate::consistency::Consistency {
        min_position: Some(outcome.position),
        wait_ms: None,
    }
    .wait(runner)
    .await
    .map_err(problem_to_scim)
}

fn groups_runner(state: &AppState) -> ProjectionRunner {
    ProjectionRunner::new(state.db.clone(), Arc::new(GroupsView))
}

fn storage(e: impl std::fmt::Display) -> ScimError {
    tracing::error!(error = %e, "SCIM read failed");
    ScimError::internal()
}

// ---- users ----

/// Each user's groups (RFC 7643 §4.1.2 `groups`: value, `$ref`, display), from the groups read
/// model of the organization, by user id.
struct Memberships(HashMap<String, Vec<Value>>);

impl Memberships {
    async fn of(state: &AppState, organization_id: &str) -> Result<Self, ScimError> {
        let groups = GroupsView::by_organization(&state.db.pool, organization_id)
            .await
            .map_err(storage)?;
        Ok(Self::from_rows(&base_url(state), &groups))
    }

    /// The groups of `users` only (a page), from the membership index.
    async fn of_users(
        state: &AppState,
        organization_id: &str,
        users: &[String],
    ) -> Result<Self, ScimError> {
        let base = base_url(state);
        let mut by_user: HashMap<String, Vec<Value>> = HashMap::new();
        for (user, group, name) in
            GroupsView::memberships_of(&state.db.pool, organization_id, users)
                .await
                .map_err(storage)?
        {
            by_user.entry(user).or_default().push(json!({
                "value": group,
                "$ref": format!("{base}/Groups/{group}"),
                "display": name,
            }));
        }
        Ok(Self(by_user))
    }

    fn from_rows(base: &str, groups: &[quantus_projections::groups::GroupRow]) -> Self {
        let mut by_user: HashMap<String, Vec<Value>> = HashMap::new();
        for g in groups {
            for m in &g.members {
                by_user.entry(m.clone()).or_default().push(json!({
                    "value": g.id,
                    "$ref": format!("{base}/Groups/{}", g.id),
                    "display": g.name,
                }));
            }
        }
        Self(by_user)
    }

    fn of_user(&self, id: &str) -> &[Value] {
        self.0.get(id).map(Vec::as_slice).unwrap_or_default()
    }
}

fn row_resource(
    base: &str,
    row: &quantus_projections::users::UserRow,
    profile: Option<Value>,
    memberships: &Memberships,
) -> Value {
    let profile = match profile {
        Some(Value::Object(o)) => o,
        _ => fallback_profile(row.email.as_deref(), row.name.as_deref()),
    };
    let mut resource = user_resource(
        base,
        &row.id,
        &profile,
        row.status == "active",
        &row.created_at,
        &row.updated_at,
        row.version,
    );
    let groups = memberships.of_user(&row.id);
    if !groups.is_empty() {
        resource["groups"] = Value::Array(groups.to_vec());
    }
    resource
}

/// `If-None-Match` naming the resource's current ETag (or `*`): 304 with the ETag, no body
/// (RFC 7644 §3.14, RFC 9110 §13.1.2, weak comparison).
fn not_modified(headers: &HeaderMap, resource: &Value) -> Option<Response> {
    let current = resource.pointer("/meta/version").and_then(Value::as_str)?;
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == opaque(current));
    if !matches {
        return None;
    }
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(current) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Some(r)
}

async fn user_from_model(
    state: &AppState,
    caller: &ScimCaller,
    id: &str,
) -> Result<Value, ScimError> {
    let not_found = || ScimError::not_found(format!("no User {id}"));
    let id = uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| not_found())?;
    let (row, profile) = UsersView::one_with_profile(&state.db.pool, &id)
        .await
        .map_err(storage)?
        .ok_or_else(not_found)?;
    if row.organization_id != caller.organization_id || row.status == "erased" {
        return Err(not_found());
    }
    let memberships = Memberships::of(state, &caller.organization_id).await?;
    Ok(row_resource(&base_url(state), &row, profile, &memberships))
}

async fn created_or_updated_user(
    state: &AppState,
    caller: &ScimCaller,
    id: &str,
    outcome: &CommandOutcome,
    status: StatusCode,
) -> Result<Response, ScimError> {
    wait_for(&state.users, outcome).await?;
    let resource = user_from_model(state, caller, id).await?;
    let mut r = with_etag(scim_json(status, &resource), &resource);
    if status == StatusCode::CREATED {
        if let Some(loc) = resource
            .pointer("/meta/location")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            r.headers_mut().insert(header::LOCATION, loc);
        }
    }
    Ok(r)
}

#[utoipa::path(post, path = "/scim/v2/Users", tag = "scim", operation_id = "create_user",
    description = "Provisions a User (`UserRegistered`, sealed profile).",
    request_body(content((ScimUser = "application/scim+json"), (ScimUser = "application/json"))),
    responses((status = 201, body = ScimUser, content_type = "application/scim+json", description = "created; Location and ETag"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidValue (an unknown schema, a missing userName)"), (status = 409, body = ScimErrorBody, content_type = "application/scim+json", description = "uniqueness: the userName, email or displayName is taken"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    headers: HeaderMap,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let input = body_json(&body)?;
            let ctx = ctx_for(&caller, &headers);
            let (id, outcome) = scim_service(&state)
                .create_user(&ctx, &caller.organization_id, &input)
                .await?;
            created_or_updated_user(&state, &caller, &id, &outcome, StatusCode::CREATED).await
        }
        .await,
    )
}

#[utoipa::path(get, path = "/scim/v2/Users/{id}", tag = "scim", operation_id = "show_user",
    description = "One User.",
    params(("id" = String, Path), ("attributes" = Option<String>, Query, description = "comma-separated attribute paths to return"), ("excludedAttributes" = Option<String>, Query, description = "comma-separated attribute paths to leave out"), ("If-None-Match" = Option<String>, Header, description = "the current ETag answers 304")),
    responses((status = 200, body = ScimUser, content_type = "application/scim+json", description = "the User; ETag"), (status = 304, description = "not modified"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidValue: a malformed attribute path"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization")),
    security(("scim" = [])))]
pub async fn show_user(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Scimmed {
    Scimmed(
        async {
            let resource = user_from_model(&state, &caller, &id).await?;
            if let Some(r) = not_modified(&headers, &resource) {
                return Ok(r);
            }
            let projection = Projection::from_query(&q)?;
            let shown = projection.apply(&resource);
            Ok(with_etag(scim_json(StatusCode::OK, &shown), &resource))
        }
        .await,
    )
}

#[utoipa::path(put, path = "/scim/v2/Users/{id}", tag = "scim", operation_id = "replace_user",
    description = "Replaces a User's attributes.",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "an ETag (`W/\"3\"`) or `*`")),
    request_body(content((ScimUser = "application/scim+json"), (ScimUser = "application/json"))),
    responses((status = 200, body = ScimUser, content_type = "application/scim+json", description = "the User as replaced; ETag"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidValue, mutability"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization"), (status = 409, body = ScimErrorBody, content_type = "application/scim+json", description = "uniqueness: the userName, email or displayName is taken"), (status = 412, body = ScimErrorBody, content_type = "application/scim+json", description = "If-Match names another version"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn replace_user(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let input = body_json(&body)?;
            let ctx = ctx_for(&caller, &headers);
            let outcome = scim_service(&state)
                .replace_user(
                    &ctx,
                    &caller.organization_id,
                    &id,
                    &input,
                    if_match(&headers)?,
                )
                .await?;
            created_or_updated_user(&state, &caller, &id, &outcome, StatusCode::OK).await
        }
        .await,
    )
}

#[utoipa::path(patch, path = "/scim/v2/Users/{id}", tag = "scim", operation_id = "patch_user",
    description = "Changes a User by PatchOp operations.",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "an ETag (`W/\"3\"`) or `*`")),
    request_body(content((ScimPatchOp = "application/scim+json"), (ScimPatchOp = "application/json"))),
    responses((status = 200, body = ScimUser, content_type = "application/scim+json", description = "the User as patched; ETag"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidValue, invalidPath, noTarget"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization"), (status = 409, body = ScimErrorBody, content_type = "application/scim+json", description = "uniqueness: the userName, email or displayName is taken"), (status = 412, body = ScimErrorBody, content_type = "application/scim+json", description = "If-Match names another version"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn patch_user(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let input = body_json(&body)?;
            let ctx = ctx_for(&caller, &headers);
            let outcome = scim_service(&state)
                .patch_user(
                    &ctx,
                    &caller.organization_id,
                    &id,
                    &input,
                    if_match(&headers)?,
                )
                .await?;
            created_or_updated_user(&state, &caller, &id, &outcome, StatusCode::OK).await
        }
        .await,
    )
}

#[utoipa::path(delete, path = "/scim/v2/Users/{id}", tag = "scim", operation_id = "delete_user",
    description = "Erases a User (`UserErased`); they leave every group.",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "an ETag (`W/\"3\"`) or `*`")),
    responses((status = 204, description = "erased"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidValue: a malformed If-Match"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization"), (status = 412, body = ScimErrorBody, content_type = "application/scim+json", description = "If-Match names another version"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Scimmed {
    Scimmed(
        async {
            let ctx = ctx_for(&caller, &headers);
            let scim = scim_service(&state);
            if let Some(expected) = if_match(&headers)? {
                let (_, version, _) = scim.user_doc(&caller.organization_id, &id).await?;
                if version != expected {
                    return Err(ScimError::version_mismatch(format!(
                        "the User is at version {version}, not {expected}"
                    )));
                }
            }
            let outcome = scim.delete_user(&ctx, &caller.organization_id, &id).await?;
            wait_for(&state.users, &outcome).await?;
            // The erased user has left their groups (`GroupMemberRemoved`) by then.
            wait_for(&groups_runner(&state), &outcome).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// The most users or groups a list tests one by one (filters or sorts SQL cannot answer
/// alone): past it the request is refused with `tooMany` (RFC 7644 §3.12) rather than
/// scanning the organization. Testing 5,000 opened profiles takes about 100-250 ms on the
/// reference machine; see `docs/DECISIONS.md` (SCIM searches).
pub const MAX_TESTED: usize = 5_000;

fn too_many(what: &str, indexed: &str) -> ScimError {
    ScimError::invalid(
        "tooMany",
        format!(
            "this filter or sortBy leaves more than {MAX_TESTED} {what} to test one by one; \
             add a condition the indexes answer: {indexed}"
        ),
    )
}

const USERS_INDEXED: &str = "id, userName, externalId, meta.created or meta.lastModified (any \
     operator but co and ew), active, eq on groups.value, or eq on emails, phoneNumbers, \
     name.givenName, name.familyName or displayName; sort by id, userName, meta.created or \
     meta.lastModified";

const GROUPS_INDEXED: &str = "id, displayName, externalId, meta.created or meta.lastModified \
     (any operator but co and ew), or eq on members.value; sort by id, displayName, \
     meta.created or meta.lastModified";

fn is_postgres(state: &AppState) -> bool {
    state.db.dialect == quantus_infra::db::Dialect::Postgres
}

/// A page of users from SQL alone, as resources with their groups.
async fn users_page(
    state: &AppState,
    org: &str,
    condition: &users_search::Condition,
    order: users_search::Order,
    offset: u64,
    limit: u64,
) -> Result<Vec<Value>, ScimError> {
    if limit == 0 {
        return Ok(vec![]);
    }
    let rows = users_search::page(
        &state.db.pool,
        org,
        condition,
        order,
        offset,
        limit,
        is_postgres(state),
    )
    .await
    .map_err(storage)?;
    let ids: Vec<String> = rows.iter().map(|(r, _)| r.id.clone()).collect();
    let memberships = Memberships::of_users(state, org, &ids).await?;
    let base = base_url(state);
    Ok(rows
        .into_iter()
        .map(|(row, profile)| row_resource(&base, &row, profile, &memberships))
        .collect())
}

/// The users the indexes leave for `condition` (at most [`MAX_TESTED`]), as resources.
async fn users_to_test(
    state: &AppState,
    org: &str,
    condition: &users_search::Condition,
) -> Result<Vec<Value>, ScimError> {
    let rows = users_search::candidates(
        &state.db.pool,
        org,
        condition,
        MAX_TESTED as u64 + 1,
        is_postgres(state),
    )
    .await
    .map_err(storage)?;
    if rows.len() > MAX_TESTED {
        return Err(too_many("users", USERS_INDEXED));
    }
    let memberships = Memberships::of(state, org).await?;
    let base = base_url(state);
    Ok(rows
        .into_iter()
        .map(|(row, profile)| row_resource(&base, &row, profile, &memberships))
        .collect())
}

async fn groups_page(
    state: &AppState,
    org: &str,
    condition: &users_search::Condition,
    order: users_search::Order,
    offset: u64,
    limit: u64,
) -> Result<Vec<Value>, ScimError> {
    if limit == 0 {
        return Ok(vec![]);
    }
    let rows = groups_search::page(
        &state.db.pool,
        org,
        condition,
        order,
        offset,
        limit,
        is_postgres(state),
    )
    .await
    .map_err(storage)?;
    let base = base_url(state);
    Ok(rows.iter().map(|g| group_row_resource(&base, g)).collect())
}

async fn groups_to_test(
    state: &AppState,
    org: &str,
    condition: &users_search::Condition,
) -> Result<Vec<Value>, ScimError> {
    let rows = groups_search::candidates(
        &state.db.pool,
        org,
        condition,
        MAX_TESTED as u64 + 1,
        is_postgres(state),
    )
    .await
    .map_err(storage)?;
    if rows.len() > MAX_TESTED {
        return Err(too_many("groups", GROUPS_INDEXED));
    }
    let base = base_url(state);
    Ok(rows.iter().map(|g| group_row_resource(&base, g)).collect())
}

async fn list_users_with(
    state: &AppState,
    caller: &ScimCaller,
    q: ListQuery,
) -> Result<Response, ScimError> {
    let org = &caller.organization_id;
    let plan = search::plan(
        search::Resource::User,
        q.filter.as_ref(),
        org,
        state.identity.subject_keys(),
    );
    match search::order(search::Resource::User, q.sort_by.as_ref(), q.descending) {
        // The whole answer from the indexes: a count and one page.
        Some(order) if plan.exact => {
            let total =
                users_search::count(&state.db.pool, org, &plan.condition, is_postgres(state))
                    .await
                    .map_err(storage)?;
            let page = users_page(
                state,
                org,
                &plan.condition,
                order,
                q.offset(),
                q.count as u64,
            )
            .await?;
            Ok(q.page(total as usize, page))
        }
        // The indexes narrow; the rest is tested here, for a bounded number of users.
        _ => Ok(q.answer(users_to_test(state, org, &plan.condition).await?)),
    }
}

#[utoipa::path(get, path = "/scim/v2/Users", tag = "scim", operation_id = "list_users",
    description = "The organization's Users, filtered, sorted and paged.",
    params(("filter" = Option<String>, Query, description = "RFC 7644 §3.4.2.2: eq ne co sw ew pr gt ge lt le, and or not, value paths"), ("startIndex" = Option<i64>, Query, description = "1-based"), ("count" = Option<i64>, Query, description = "at most 1000"), ("sortBy" = Option<String>, Query), ("sortOrder" = Option<String>, Query, description = "ascending or descending"), ("attributes" = Option<String>, Query, description = "comma-separated attribute paths to return"), ("excludedAttributes" = Option<String>, Query, description = "comma-separated attribute paths to leave out")),
    responses((status = 200, body = ScimUserList, content_type = "application/scim+json", description = "a page of Users"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidFilter, invalidValue")),
    security(("scim" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Query(q): Query<HashMap<String, String>>,
) -> Scimmed {
    Scimmed(
        async {
            let q = ListQuery::from_query(&q)?;
            list_users_with(&state, &caller, q).await
        }
        .await,
    )
}

#[utoipa::path(post, path = "/scim/v2/Users/.search", tag = "scim", operation_id = "search_users",
    description = "The Users list with the query as a SearchRequest body.",
    request_body(content((ScimSearchRequest = "application/scim+json"), (ScimSearchRequest = "application/json"))),
    responses((status = 200, body = ScimUserList, content_type = "application/scim+json", description = "a page of Users"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidFilter, invalidValue")),
    security(("scim" = [])))]
pub async fn search_users(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let q = ListQuery::from_search(&body_json(&body)?)?;
            list_users_with(&state, &caller, q).await
        }
        .await,
    )
}

/// `POST /.search` at the root: users and groups together (RFC 7644 §3.4.3).
#[utoipa::path(post, path = "/scim/v2/.search", tag = "scim", operation_id = "search_all",
    description = "Users and Groups together (RFC 7644 §3.4.3).",
    request_body(content((ScimSearchRequest = "application/scim+json"), (ScimSearchRequest = "application/json"))),
    responses((status = 200, body = ScimListResponse, content_type = "application/scim+json", description = "a page of Users and Groups"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidFilter, invalidValue")),
    security(("scim" = [])))]
pub async fn search_all(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let q = ListQuery::from_search(&body_json(&body)?)?;
            search_all_with(&state, &caller, q).await
        }
        .await,
    )
}

/// Users then groups, each by id, as one list (what the in-memory evaluation of the root
/// `.search` lists): from the indexes when both filters are exact and both models can give
/// the order; otherwise tested in memory within the same bound as each list.
async fn search_all_with(
    state: &AppState,
    caller: &ScimCaller,
    q: ListQuery,
) -> Result<Response, ScimError> {
    use search::Resource;
    let org = &caller.organization_id;
    let keys = state.identity.subject_keys();
    let users = search::plan(Resource::User, q.filter.as_ref(), org, keys);
    let groups = search::plan(Resource::Group, q.filter.as_ref(), org, keys);
    let orders = (
        search::order(Resource::User, q.sort_by.as_ref(), q.descending),
        search::order(Resource::Group, q.sort_by.as_ref(), q.descending),
    );
    let (Some(user_order), Some(group_order)) = orders else {
        return in_memory_all(state, org, &users, &groups, q).await;
    };
    if !(users.exact && groups.exact) {
        return in_memory_all(state, org, &users, &groups, q).await;
    }
    let postgres = is_postgres(state);
    let pool = &state.db.pool;
    let user_total = users_search::count(pool, org, &users.condition, postgres)
        .await
        .map_err(storage)?;
    let group_total = groups_search::count(pool, org, &groups.condition, postgres)
        .await
        .map_err(storage)?;
    let total = (user_total + group_total) as usize;
    let (offset, count) = (q.offset(), q.count as u64);
    let page = if q.sort_by.is_none() {
        // Users first, then groups: the page is a slice of one, the other, or both.
        let mut page = users_page(state, org, &users.condition, user_order, offset, count).await?;
        let rest = count - page.len() as u64;
        let group_offset = offset.saturating_sub(user_total);
        page.extend(
            groups_page(
                state,
                org,
                &groups.condition,
                group_order,
                group_offset,
                rest,
            )
            .await?,
        );
        page
    } else {
        // Both sorted by the same attribute: the first offset + count of each, merged as a
        // stable sort of users then groups would, hold the page. Deep pages are bounded.
        let head = offset + count;
        if head > MAX_TESTED as u64 {
            return Err(too_many(
                "users and groups",
                "startIndex + count within it, or no sortBy",
            ));
        }
        let mut merged = users_page(state, org, &users.condition, user_order, 0, head).await?;
        merged.extend(groups_page(state, org, &groups.condition, group_order, 0, head).await?);
        q.sorted(&mut merged);
        merged
            .into_iter()
            .skip(offset as usize)
            .take(count as usize)
            .collect()
    };
    Ok(q.page(total, page))
}

async fn in_memory_all(
    state: &AppState,
    org: &str,
    users: &search::Plan,
    groups: &search::Plan,
    q: ListQuery,
) -> Result<Response, ScimError> {
    let mut all = users_to_test(state, org, &users.condition).await?;
    all.extend(groups_to_test(state, org, &groups.condition).await?);
    Ok(q.answer(all))
}

// ---- groups ----

fn group_row_resource(base: &str, g: &quantus_projections::groups::GroupRow) -> Value {
    group_resource(
        base,
        &g.id,
        &g.name,
        g.external_id.as_deref(),
        &g.members,
        &g.created_at,
        &g.updated_at,
        g.version,
    )
}

async fn group_from_model(
    state: &AppState,
    caller: &ScimCaller,
    id: &str,
) -> Result<Value, ScimError> {
    let not_found = || ScimError::not_found(format!("no Group {id}"));
    let id = uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| not_found())?;
    let g = GroupsView::one(&state.db.pool, &id)
        .await
        .map_err(storage)?
        .ok_or_else(not_found)?;
    if g.organization_id != caller.organization_id {
        return Err(not_found());
    }
    Ok(group_row_resource(&base_url(state), &g))
}

async fn created_or_updated_group(
    state: &AppState,
    caller: &ScimCaller,
    id: &str,
    outcome: &CommandOutcome,
    status: StatusCode,
) -> Result<Response, ScimError> {
    wait_for(&groups_runner(state), outcome).await?;
    let resource = group_from_model(state, caller, id).await?;
    let mut r = with_etag(scim_json(status, &resource), &resource);
    if status == StatusCode::CREATED {
        if let Some(loc) = resource
            .pointer("/meta/location")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            r.headers_mut().insert(header::LOCATION, loc);
        }
    }
    Ok(r)
}

#[utoipa::path(post, path = "/scim/v2/Groups", tag = "scim", operation_id = "create_group",
    description = "Creates a Group with its members.",
    request_body(content((ScimGroup = "application/scim+json"), (ScimGroup = "application/json"))),
    responses((status = 201, body = ScimGroup, content_type = "application/scim+json", description = "created; Location and ETag"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidValue (an unknown schema or member)"), (status = 409, body = ScimErrorBody, content_type = "application/scim+json", description = "uniqueness: the userName, email or displayName is taken"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn create_group(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    headers: HeaderMap,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let input = body_json(&body)?;
            let ctx = ctx_for(&caller, &headers);
            let (id, outcome) = scim_service(&state)
                .create_group(&ctx, &caller.organization_id, &input)
                .await?;
            created_or_updated_group(&state, &caller, &id, &outcome, StatusCode::CREATED).await
        }
        .await,
    )
}

#[utoipa::path(get, path = "/scim/v2/Groups/{id}", tag = "scim", operation_id = "show_group",
    description = "One Group.",
    params(("id" = String, Path), ("attributes" = Option<String>, Query, description = "comma-separated attribute paths to return"), ("excludedAttributes" = Option<String>, Query, description = "comma-separated attribute paths to leave out"), ("If-None-Match" = Option<String>, Header, description = "the current ETag answers 304")),
    responses((status = 200, body = ScimGroup, content_type = "application/scim+json", description = "the Group; ETag"), (status = 304, description = "not modified"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidValue: a malformed attribute path"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization")),
    security(("scim" = [])))]
pub async fn show_group(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Scimmed {
    Scimmed(
        async {
            let resource = group_from_model(&state, &caller, &id).await?;
            if let Some(r) = not_modified(&headers, &resource) {
                return Ok(r);
            }
            let projection = Projection::from_query(&q)?;
            let shown = projection.apply(&resource);
            Ok(with_etag(scim_json(StatusCode::OK, &shown), &resource))
        }
        .await,
    )
}

#[utoipa::path(put, path = "/scim/v2/Groups/{id}", tag = "scim", operation_id = "replace_group",
    description = "Replaces a Group's name and members.",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "an ETag (`W/\"3\"`) or `*`")),
    request_body(content((ScimGroup = "application/scim+json"), (ScimGroup = "application/json"))),
    responses((status = 200, body = ScimGroup, content_type = "application/scim+json", description = "the Group as replaced; ETag"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidValue"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization"), (status = 409, body = ScimErrorBody, content_type = "application/scim+json", description = "uniqueness: the userName, email or displayName is taken"), (status = 412, body = ScimErrorBody, content_type = "application/scim+json", description = "If-Match names another version"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn replace_group(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let input = body_json(&body)?;
            let ctx = ctx_for(&caller, &headers);
            let outcome = scim_service(&state)
                .replace_group(
                    &ctx,
                    &caller.organization_id,
                    &id,
                    &input,
                    if_match(&headers)?,
                )
                .await?;
            created_or_updated_group(&state, &caller, &id, &outcome, StatusCode::OK).await
        }
        .await,
    )
}

#[utoipa::path(patch, path = "/scim/v2/Groups/{id}", tag = "scim", operation_id = "patch_group",
    description = "Changes a Group (members added or removed) by PatchOp operations.",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "an ETag (`W/\"3\"`) or `*`")),
    request_body(content((ScimPatchOp = "application/scim+json"), (ScimPatchOp = "application/json"))),
    responses((status = 200, body = ScimGroup, content_type = "application/scim+json", description = "the Group as patched; ETag"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidValue, invalidPath, noTarget"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization"), (status = 409, body = ScimErrorBody, content_type = "application/scim+json", description = "uniqueness: the userName, email or displayName is taken"), (status = 412, body = ScimErrorBody, content_type = "application/scim+json", description = "If-Match names another version"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn patch_group(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let input = body_json(&body)?;
            let ctx = ctx_for(&caller, &headers);
            let outcome = scim_service(&state)
                .patch_group(
                    &ctx,
                    &caller.organization_id,
                    &id,
                    &input,
                    if_match(&headers)?,
                )
                .await?;
            created_or_updated_group(&state, &caller, &id, &outcome, StatusCode::OK).await
        }
        .await,
    )
}

#[utoipa::path(delete, path = "/scim/v2/Groups/{id}", tag = "scim", operation_id = "delete_group",
    description = "Deletes a Group.",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "an ETag (`W/\"3\"`) or `*`")),
    responses((status = 204, description = "deleted"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidValue: a malformed If-Match"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such resource in the token's organization"), (status = 412, body = ScimErrorBody, content_type = "application/scim+json", description = "If-Match names another version"), (status = 503, body = ScimErrorBody, content_type = "application/scim+json", description = "written, but the read model did not show it in time; retry after Retry-After")),
    security(("scim" = [])))]
pub async fn delete_group(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Scimmed {
    Scimmed(
        async {
            let ctx = ctx_for(&caller, &headers);
            let outcome = scim_service(&state)
                .delete_group(&ctx, &caller.organization_id, &id, if_match(&headers)?)
                .await?;
            wait_for(&groups_runner(&state), &outcome).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

async fn list_groups_with(
    state: &AppState,
    caller: &ScimCaller,
    q: ListQuery,
) -> Result<Response, ScimError> {
    let org = &caller.organization_id;
    let plan = search::plan(
        search::Resource::Group,
        q.filter.as_ref(),
        org,
        state.identity.subject_keys(),
    );
    match search::order(search::Resource::Group, q.sort_by.as_ref(), q.descending) {
        Some(order) if plan.exact => {
            let total =
                groups_search::count(&state.db.pool, org, &plan.condition, is_postgres(state))
                    .await
                    .map_err(storage)?;
            let page = groups_page(
                state,
                org,
                &plan.condition,
                order,
                q.offset(),
                q.count as u64,
            )
            .await?;
            Ok(q.page(total as usize, page))
        }
        _ => Ok(q.answer(groups_to_test(state, org, &plan.condition).await?)),
    }
}

#[utoipa::path(get, path = "/scim/v2/Groups", tag = "scim", operation_id = "list_groups",
    description = "The organization's Groups, filtered, sorted and paged.",
    params(("filter" = Option<String>, Query, description = "RFC 7644 §3.4.2.2: eq ne co sw ew pr gt ge lt le, and or not, value paths"), ("startIndex" = Option<i64>, Query, description = "1-based"), ("count" = Option<i64>, Query, description = "at most 1000"), ("sortBy" = Option<String>, Query), ("sortOrder" = Option<String>, Query, description = "ascending or descending"), ("attributes" = Option<String>, Query, description = "comma-separated attribute paths to return"), ("excludedAttributes" = Option<String>, Query, description = "comma-separated attribute paths to leave out")),
    responses((status = 200, body = ScimGroupList, content_type = "application/scim+json", description = "a page of Groups"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidFilter, invalidValue")),
    security(("scim" = [])))]
pub async fn list_groups(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    Query(q): Query<HashMap<String, String>>,
) -> Scimmed {
    Scimmed(
        async {
            let q = ListQuery::from_query(&q)?;
            list_groups_with(&state, &caller, q).await
        }
        .await,
    )
}

#[utoipa::path(post, path = "/scim/v2/Groups/.search", tag = "scim", operation_id = "search_groups",
    description = "The Groups list with the query as a SearchRequest body.",
    request_body(content((ScimSearchRequest = "application/scim+json"), (ScimSearchRequest = "application/json"))),
    responses((status = 200, body = ScimGroupList, content_type = "application/scim+json", description = "a page of Groups"), (status = 400, body = ScimErrorBody, content_type = "application/scim+json", description = "invalidSyntax, invalidFilter, invalidValue")),
    security(("scim" = [])))]
pub async fn search_groups(
    State(state): State<AppState>,
    Extension(caller): Extension<ScimCaller>,
    body: Bytes,
) -> Scimmed {
    Scimmed(
        async {
            let q = ListQuery::from_search(&body_json(&body)?)?;
            list_groups_with(&state, &caller, q).await
        }
        .await,
    )
}

// ---- list queries: filter, sort, page, attributes ----

/// `attributes` / `excludedAttributes` (RFC 7644 §3.4.2.5).
#[derive(Debug, Default)]
struct Projection {
    attributes: Option<Vec<AttrPath>>,
    excluded: Vec<AttrPath>,
}

fn parse_attr_list(raw: &str) -> Result<Vec<AttrPath>, ScimError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| AttrPath::parse(s).map_err(|e| ScimError::invalid_value(e.0)))
        .collect()
}

/// Always returned, whatever `attributes` says.
fn always_returned(key: &str) -> bool {
    ["schemas", "id", "meta"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key))
}

impl Projection {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ScimError> {
        let get = |name: &str| {
            q.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        Self::from_parts(
            get("attributes").as_deref(),
            get("excludedAttributes").as_deref(),
        )
    }

    fn from_parts(attributes: Option<&str>, excluded: Option<&str>) -> Result<Self, ScimError> {
        Ok(Self {
            attributes: attributes.map(parse_attr_list).transpose()?,
            excluded: excluded
                .map(parse_attr_list)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    fn apply(&self, resource: &Value) -> Value {
        let Some(obj) = resource.as_object() else {
            return resource.clone();
        };
        let mut out: Map<String, Value> = match &self.attributes {
            None => obj.clone(),
            Some(paths) => {
                let mut out = Map::new();
                for (k, v) in obj {
                    if always_returned(k) {
                        out.insert(k.clone(), v.clone());
                    }
                }
                for p in paths {
                    copy_path(obj, &mut out, p);
                }
                out
            }
        };
        for p in &self.excluded {
            remove_path(&mut out, p);
        }
        Value::Object(out)
    }
}

fn key_of(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

fn copy_path(from: &Map<String, Value>, to: &mut Map<String, Value>, p: &AttrPath) {
    let (src, dst) = match p.extension() {
        Some(urn) => {
            let Some(k) = key_of(from, urn) else { return };
            let Some(src) = from.get(&k).and_then(Value::as_object) else {
                return;
            };
            let dst = to
                .entry(k)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut();
            match dst {
                Some(d) => (src, d),
                None => return,
            }
        }
        None => (from, to),
    };
    let Some(k) = key_of(src, &p.name) else {
        return;
    };
    let value = &src[&k];
    match &p.sub {
        None => {
            dst.insert(k, value.clone());
        }
        Some(sub) => {
            let pick = |v: &Value| -> Option<Value> {
                let o = v.as_object()?;
                let sk = key_of(o, sub)?;
                let mut m = Map::new();
                m.insert(sk.clone(), o[&sk].clone());
                Some(Value::Object(m))
            };
            let picked = match value {
                Value::Array(items) => Some(Value::Array(items.iter().filter_map(pick).collect())),
                v => pick(v),
            };
            if let Some(v) = picked {
                match (dst.get_mut(&k), v) {
                    (Some(Value::Object(d)), Value::Object(n)) => d.extend(n),
                    (_, v) => {
                        dst.insert(k, v);
                    }
                }
            }
        }
    }
}

fn remove_path(obj: &mut Map<String, Value>, p: &AttrPath) {
    let target = match p.extension() {
        Some(urn) => match key_of(obj, urn).and_then(|k| obj.get_mut(&k)) {
            Some(Value::Object(o)) => o,
            _ => return,
        },
        None => obj,
    };
    let Some(k) = key_of(target, &p.name) else {
        return;
    };
    if p.extension().is_none() && p.sub.is_none() && always_returned(&k) {
        return;
    }
    match &p.sub {
        None => {
            target.remove(&k);
        }
        Some(sub) => match target.get_mut(&k) {
            Some(Value::Object(o)) => {
                if let Some(sk) = key_of(o, sub) {
                    o.remove(&sk);
                }
            }
            Some(Value::Array(items)) => {
                for i in items.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(sk) = key_of(i, sub) {
                        i.remove(&sk);
                    }
                }
            }
            _ => {}
        },
    }
}

struct ListQuery {
    filter: Option<Filter>,
    sort_by: Option<AttrPath>,
    descending: bool,
    start_index: usize,
    count: usize,
    projection: Projection,
}

fn invalid_filter(e: impl std::fmt::Display) -> ScimError {
    ScimError::invalid("invalidFilter", e.to_string())
}

impl ListQuery {
    fn build(
        filter: Option<&str>,
        sort_by: Option<&str>,
        sort_order: Option<&str>,
        start_index: Option<i64>,
        count: Option<i64>,
        projection: Projection,
    ) -> Result<Self, ScimError> {
        let filter = filter
            .filter(|f| !f.trim().is_empty())
            .map(Filter::parse)
            .transpose()
            .map_err(invalid_filter)?;
        let sort_by = sort_by
            .map(AttrPath::parse)
            .transpose()
            .map_err(|e| ScimError::invalid_value(e.0))?;
        let descending = match sort_order.map(str::to_ascii_lowercase).as_deref() {
            None | Some("ascending") => false,
            Some("descending") => true,
            Some(_) => {
                return Err(ScimError::invalid_value(
                    "sortOrder must be ascending or descending",
                ))
            }
        };
        Ok(Self {
            filter,
            sort_by,
            descending,
            // RFC 7644 §3.4.2.4: a startIndex below 1 means 1; a negative count means 0.
            start_index: start_index.unwrap_or(1).max(1) as usize,
            count: count
                .unwrap_or(MAX_RESULTS as i64)
                .clamp(0, MAX_RESULTS as i64) as usize,
            projection,
        })
    }

    fn from_query(q: &HashMap<String, String>) -> Result<Self, ScimError> {
        let get = |name: &str| {
            q.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let int = |name: &str| -> Result<Option<i64>, ScimError> {
            get(name)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| ScimError::invalid_value(format!("{name} must be an integer")))
                })
                .transpose()
        };
        Self::build(
            get("filter"),
            get("sortBy"),
            get("sortOrder"),
            int("startIndex")?,
            int("count")?,
            Projection::from_query(q)?,
        )
    }

    /// A `POST .search` body (RFC 7644 §3.4.3).
    fn from_search(body: &Value) -> Result<Self, ScimError> {
        let o = body
            .as_object()
            .ok_or_else(|| ScimError::invalid("invalidSyntax", "a SearchRequest"))?;
        let s = |k: &str| {
            quantus_commands::scim::filter::get_ci(o, k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let list = |k: &str| {
            quantus_commands::scim::filter::get_ci(o, k).map(|v| match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                Value::String(s) => s.clone(),
                _ => String::new(),
            })
        };
        let n = |k: &str| quantus_commands::scim::filter::get_ci(o, k).and_then(Value::as_i64);
        Self::build(
            s("filter").as_deref(),
            s("sortBy").as_deref(),
            s("sortOrder").as_deref(),
            n("startIndex"),
            n("count"),
            Projection::from_parts(
                list("attributes").as_deref(),
                list("excludedAttributes").as_deref(),
            )?,
        )
    }

    /// How many matching resources precede the page.
    fn offset(&self) -> u64 {
        (self.start_index - 1) as u64
    }

    /// `resources` in `sortBy` order (a stable sort; none without `sortBy`).
    fn sorted(&self, resources: &mut Vec<Value>) {
        if let Some(by) = &self.sort_by {
            let mut keyed: Vec<(Option<Value>, Value)> = std::mem::take(resources)
                .into_iter()
                .map(|r| (sort_key(&r, by), r))
                .collect();
            keyed.sort_by(|a, b| {
                let o = compare_keys(&a.0, &b.0);
                if self.descending {
                    o.reverse()
                } else {
                    o
                }
            });
            *resources = keyed.into_iter().map(|(_, r)| r).collect();
        }
    }

    fn answer(&self, mut resources: Vec<Value>) -> Response {
        if let Some(f) = &self.filter {
            resources.retain(|r| f.matches(r));
        }
        self.sorted(&mut resources);
        let total = resources.len();
        let page: Vec<Value> = resources
            .into_iter()
            .skip(self.start_index - 1)
            .take(self.count)
            .collect();
        self.page(total, page)
    }

    /// The list response of one page of `total` matching resources.
    fn page(&self, total: usize, page: Vec<Value>) -> Response {
        let page: Vec<Value> = page.iter().map(|r| self.projection.apply(r)).collect();
        let body = json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": self.start_index,
            "itemsPerPage": page.len(),
            "Resources": page,
        });
        scim_json(StatusCode::OK, &body)
    }
}

// ---- discovery (RFC 7643 §5-7, RFC 7644 §4) ----

fn attr(name: &str, kind: &str, multi: bool, description: &str) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert("name".into(), name.into());
    a.insert("type".into(), kind.into());
    a.insert("multiValued".into(), multi.into());
    a.insert("description".into(), description.into());
    a.insert("required".into(), false.into());
    if kind == "string" || kind == "reference" {
        a.insert("caseExact".into(), false.into());
    }
    a.insert("mutability".into(), "readWrite".into());
    a.insert("returned".into(), "default".into());
    a.insert("uniqueness".into(), "none".into());
    a
}

fn with(mut a: Map<String, Value>, key: &str, value: Value) -> Map<String, Value> {
    a.insert(key.into(), value);
    a
}

fn complex(name: &str, multi: bool, description: &str, subs: Vec<Map<String, Value>>) -> Value {
    Value::Object(with(
        attr(name, "complex", multi, description),
        "subAttributes",
        Value::Array(subs.into_iter().map(Value::Object).collect()),
    ))
}

fn s(name: &str, description: &str) -> Map<String, Value> {
    attr(name, "string", false, description)
}

fn multi_subs(types: &[&str]) -> Vec<Map<String, Value>> {
    vec![
        s("value", "The value."),
        s("display", "A human-readable name."),
        with(
            s("type", "A label for the value's function."),
            "canonicalValues",
            json!(types),
        ),
        attr("primary", "boolean", false, "The primary value."),
    ]
}

fn meta(resource_type: &str, id: &str, base: &str) -> Value {
    json!({"resourceType": resource_type, "location": format!("{base}/{resource_type}s/{id}")})
}

fn user_schema(base: &str) -> Value {
    let attributes = vec![
        Value::Object(with(
            with(
                with(
                    s("userName", "Unique identifier for the User."),
                    "required",
                    true.into(),
                ),
                "uniqueness",
                "server".into(),
            ),
            "caseExact",
            false.into(),
        )),
        complex(
            "name",
            false,
            "The components of the user's real name.",
            vec![
                s("formatted", "The full name."),
                s("familyName", "The family name."),
                s("givenName", "The given name."),
                s("middleName", "The middle name."),
                s("honorificPrefix", "The honorific prefix."),
                s("honorificSuffix", "The honorific suffix."),
            ],
        ),
        Value::Object(s("displayName", "The name displayed to end users.")),
        Value::Object(s("nickName", "The casual name.")),
        Value::Object(attr(
            "profileUrl",
            "reference",
            false,
            "A URI of the profile.",
        )),
        Value::Object(s("title", "The user's title.")),
        Value::Object(s("userType", "The relationship to the organization.")),
        Value::Object(s("preferredLanguage", "The preferred language.")),
        Value::Object(s("locale", "The default location.")),
        Value::Object(s("timezone", "The time zone (IANA).")),
        Value::Object(with(
            attr("active", "boolean", false, "Whether the user may sign in."),
            "required",
            true.into(),
        )),
        Value::Object(with(
            with(
                s("password", "The user's password (never returned)."),
                "mutability",
                "writeOnly".into(),
            ),
            "returned",
            "never".into(),
        )),
        complex(
            "emails",
            true,
            "Email addresses.",
            multi_subs(&["work", "home", "other"]),
        ),
        complex(
            "phoneNumbers",
            true,
            "Phone numbers.",
            multi_subs(&["work", "home", "mobile", "fax", "pager", "other"]),
        ),
        complex(
            "addresses",
            true,
            "Physical mailing addresses.",
            vec![
                s("formatted", "The full address."),
                s("streetAddress", "The street address."),
                s("locality", "The city."),
                s("region", "The state or region."),
                s("postalCode", "The postal code."),
                s("country", "The country (ISO 3166-1 alpha-2)."),
                with(
                    s("type", "A label for the address."),
                    "canonicalValues",
                    json!(["work", "home", "other"]),
                ),
                attr("primary", "boolean", false, "The primary address."),
            ],
        ),
        {
            let ro = |a: Map<String, Value>| with(a, "mutability", "readOnly".into());
            let mut g = ro(attr(
                "groups",
                "complex",
                true,
                "The groups the user belongs to (changed through the Group resource).",
            ));
            g.insert(
                "subAttributes".into(),
                json!([
                    ro(s("value", "The group's id.")),
                    ro(with(
                        attr("$ref", "reference", false, "The group's URI."),
                        "referenceTypes",
                        json!(["Group"]),
                    )),
                    ro(s("display", "The group's displayName.")),
                ]),
            );
            Value::Object(g)
        },
    ];
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": CORE_USER, "name": "User", "description": "User Account",
        "attributes": attributes,
        "meta": meta("Schema", CORE_USER, base),
    })
}

fn enterprise_schema(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ENTERPRISE_USER, "name": "EnterpriseUser", "description": "Enterprise User",
        "attributes": [
            s("employeeNumber", "The organization's identifier of the user."),
            s("costCenter", "The cost center."),
            s("organization", "The organization."),
            s("division", "The division."),
            s("department", "The department."),
            complex("manager", false, "The user's manager.", vec![
                s("value", "The id of the manager's User."),
                with(attr("$ref", "reference", false, "The URI of the manager's User."), "referenceTypes", json!(["User"])),
                with(s("displayName", "The manager's name."), "mutability", "readOnly".into()),
            ]),
        ],
        "meta": meta("Schema", ENTERPRISE_USER, base),
    })
}

fn group_schema(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": CORE_GROUP, "name": "Group", "description": "Group",
        "attributes": [
            with(s("displayName", "A human-readable name for the group."), "required", true.into()),
            complex("members", true, "The members of the group.", vec![
                with(with(s("value", "The id of a member User."), "mutability", "immutable".into()), "caseExact", true.into()),
                with(with(attr("$ref", "reference", false, "The URI of the member."), "referenceTypes", json!(["User"])), "mutability", "immutable".into()),
                with(with(s("type", "The member's resource type."), "canonicalValues", json!(["User"])), "mutability", "immutable".into()),
            ]),
        ],
        "meta": meta("Schema", CORE_GROUP, base),
    })
}

fn all_schemas(base: &str) -> Vec<Value> {
    vec![
        user_schema(base),
        enterprise_schema(base),
        group_schema(base),
    ]
}

fn all_resource_types(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users",
            "description": "User Account", "schema": CORE_USER,
            "schemaExtensions": [{"schema": ENTERPRISE_USER, "required": false}],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups",
            "description": "Group", "schema": CORE_GROUP,
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")},
        }),
    ]
}

fn list_of(items: Vec<Value>) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": items.len(),
            "startIndex": 1,
            "itemsPerPage": items.len(),
            "Resources": items,
        }),
    )
}

#[utoipa::path(get, path = "/scim/v2/ServiceProviderConfig", tag = "scim", operation_id = "service_provider_config",
    description = "What this service provider supports (RFC 7643 §5).",
    responses((status = 200, body = Object, content_type = "application/scim+json", description = "patch, filter (maxResults 1000), sort, etag and changePassword supported; bulk not")),
    security(("scim" = [])))]
pub async fn service_provider_config(State(state): State<AppState>) -> Response {
    let base = base_url(&state);
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": format!("{}/openapi.json", state.issuer),
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": true},
            "sort": {"supported": true},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "SCIM bearer token",
                "description": "A per-organization token from POST /v1/organizations/{org}/scim-tokens",
                "primary": true,
            }],
            "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")},
        }),
    )
}

#[utoipa::path(get, path = "/scim/v2/ResourceTypes", tag = "scim", operation_id = "resource_types",
    description = "User and Group (RFC 7643 §6).",
    responses((status = 200, body = ScimListResponse, content_type = "application/scim+json", description = "the ResourceTypes"), (status = 403, body = ScimErrorBody, content_type = "application/scim+json", description = "filtering is not supported here")),
    security(("scim" = [])))]
pub async fn resource_types(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.keys().any(|k| k.eq_ignore_ascii_case("filter")) {
        return scim_error(ScimError::new(
            ScimErrorKind::Forbidden,
            None,
            "filtering is not supported on /ResourceTypes",
        ));
    }
    list_of(all_resource_types(&base_url(&state)))
}

#[utoipa::path(get, path = "/scim/v2/ResourceTypes/{name}", tag = "scim", operation_id = "resource_type",
    description = "One ResourceType.",
    params(("name" = String, Path, description = "User or Group")),
    responses((status = 200, body = Object, content_type = "application/scim+json", description = "the ResourceType"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such ResourceType")),
    security(("scim" = [])))]
pub async fn resource_type(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match all_resource_types(&base_url(&state))
        .into_iter()
        .find(|r| r["id"] == name.as_str())
    {
        Some(r) => scim_json(StatusCode::OK, &r),
        None => scim_error(ScimError::not_found(format!("no ResourceType {name}"))),
    }
}

#[utoipa::path(get, path = "/scim/v2/Schemas", tag = "scim", operation_id = "schemas",
    description = "The User, EnterpriseUser and Group schemas (RFC 7643 §7).",
    responses((status = 200, body = ScimListResponse, content_type = "application/scim+json", description = "the Schemas"), (status = 403, body = ScimErrorBody, content_type = "application/scim+json", description = "filtering is not supported here")),
    security(("scim" = [])))]
pub async fn schemas(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.keys().any(|k| k.eq_ignore_ascii_case("filter")) {
        return scim_error(ScimError::new(
            ScimErrorKind::Forbidden,
            None,
            "filtering is not supported on /Schemas",
        ));
    }
    list_of(all_schemas(&base_url(&state)))
}

#[utoipa::path(get, path = "/scim/v2/Schemas/{id}", tag = "scim", operation_id = "schema",
    description = "One Schema, by its URN.",
    params(("id" = String, Path)),
    responses((status = 200, body = Object, content_type = "application/scim+json", description = "the Schema"), (status = 404, body = ScimErrorBody, content_type = "application/scim+json", description = "no such Schema")),
    security(("scim" = [])))]
pub async fn schema(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match all_schemas(&base_url(&state))
        .into_iter()
        .find(|s| s["id"] == id.as_str())
    {
        Some(s) => scim_json(StatusCode::OK, &s),
        None => scim_error(ScimError::not_found(format!("no Schema {id}"))),
    }
}

// ---- the OpenAPI description (`/openapi.json`) ----
//
// The handlers keep SCIM resources as JSON values (extension schemas, `attributes`
// projections, Okta's and Entra's variants all pass through `quantus_commands::scim`); these
// types only describe those bodies to clients, so nothing builds them.

/// A SCIM User (RFC 7643 §4.1) with the enterprise extension (§4.3). `userName` is required
/// to create one; an answer holds the attributes asked for (`attributes`,
/// `excludedAttributes`) and always `schemas`, `id` and `meta`. An unknown extension schema
/// is refused (400 `invalidValue`).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimUser {
    /// `urn:ietf:params:scim:schemas:core:2.0:User`, and the enterprise URN when present.
    schemas: Vec<String>,
    #[schema(read_only)]
    id: Option<String>,
    external_id: Option<String>,
    /// Unique in the organization (case-insensitive); a new one moves the login.
    user_name: Option<String>,
    name: Option<ScimName>,
    display_name: Option<String>,
    nick_name: Option<String>,
    profile_url: Option<String>,
    title: Option<String>,
    user_type: Option<String>,
    preferred_language: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
    /// Whether the user may sign in (`UserDisabled` / `UserEnabled`).
    active: Option<bool>,
    /// Never returned; without one a set-password link is sent when invites are configured.
    #[schema(write_only)]
    password: Option<String>,
    emails: Option<Vec<ScimMultiValued>>,
    phone_numbers: Option<Vec<ScimMultiValued>>,
    addresses: Option<Vec<ScimAddress>>,
    /// The groups the user belongs to, changed through the Group resource.
    #[schema(read_only)]
    groups: Option<Vec<ScimMember>>,
    #[schema(rename = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")]
    enterprise: Option<ScimEnterpriseUser>,
    #[schema(read_only)]
    meta: Option<ScimMeta>,
}

/// RFC 7643 §4.1.1 `name`.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimName {
    formatted: Option<String>,
    family_name: Option<String>,
    given_name: Option<String>,
    middle_name: Option<String>,
    honorific_prefix: Option<String>,
    honorific_suffix: Option<String>,
}

/// An email address or phone number (RFC 7643 §2.4).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct ScimMultiValued {
    value: Option<String>,
    display: Option<String>,
    /// `work`, `home`, `other` (and `mobile`, `fax`, `pager` for phone numbers).
    #[schema(rename = "type")]
    kind: Option<String>,
    primary: Option<bool>,
}

/// RFC 7643 §4.1.2 `addresses`.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimAddress {
    formatted: Option<String>,
    street_address: Option<String>,
    locality: Option<String>,
    region: Option<String>,
    postal_code: Option<String>,
    country: Option<String>,
    #[schema(rename = "type")]
    kind: Option<String>,
    primary: Option<bool>,
}

/// A Group's member or a User's group: `value` is the id; answers also carry `$ref`, the
/// resource's URI (not listed as a property: document tools read a `$ref` key as a reference).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct ScimMember {
    value: String,
    display: Option<String>,
    /// `User` for a member.
    #[schema(rename = "type")]
    kind: Option<String>,
}

/// RFC 7643 §4.3, keyed by `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimEnterpriseUser {
    employee_number: Option<String>,
    cost_center: Option<String>,
    organization: Option<String>,
    division: Option<String>,
    department: Option<String>,
    manager: Option<ScimManager>,
}

/// The enterprise `manager`: the manager's User id (and `$ref`, its URI).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimManager {
    value: Option<String>,
    #[schema(read_only)]
    display_name: Option<String>,
}

/// A SCIM Group (RFC 7643 §4.2); `displayName` is required to create one.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimGroup {
    /// `urn:ietf:params:scim:schemas:core:2.0:Group`.
    schemas: Vec<String>,
    #[schema(read_only)]
    id: Option<String>,
    external_id: Option<String>,
    display_name: Option<String>,
    members: Option<Vec<ScimMember>>,
    #[schema(read_only)]
    meta: Option<ScimMeta>,
}

/// RFC 7643 §3.1 `meta`; `version` is the ETag (`W/"<version>"`).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimMeta {
    resource_type: Option<String>,
    created: Option<String>,
    last_modified: Option<String>,
    location: Option<String>,
    version: Option<String>,
}

/// A page of Users (RFC 7644 §3.4.2).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimUserList {
    /// `urn:ietf:params:scim:api:messages:2.0:ListResponse`.
    schemas: Vec<String>,
    total_results: u64,
    start_index: u64,
    items_per_page: u64,
    #[schema(rename = "Resources")]
    resources: Vec<ScimUser>,
}

/// A page of Groups (RFC 7644 §3.4.2).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimGroupList {
    /// `urn:ietf:params:scim:api:messages:2.0:ListResponse`.
    schemas: Vec<String>,
    total_results: u64,
    start_index: u64,
    items_per_page: u64,
    #[schema(rename = "Resources")]
    resources: Vec<ScimGroup>,
}

/// A ListResponse of several resource types (root `.search`: Users and Groups;
/// `/ResourceTypes`; `/Schemas`), each resource as its own schema says.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimListResponse {
    /// `urn:ietf:params:scim:api:messages:2.0:ListResponse`.
    schemas: Vec<String>,
    total_results: u64,
    start_index: u64,
    items_per_page: u64,
    #[schema(rename = "Resources")]
    #[schema(value_type = Vec<Object>)]
    resources: Vec<Map<String, Value>>,
}

/// A SearchRequest (RFC 7644 §3.4.3), the query parameters of a list as a body.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimSearchRequest {
    /// `urn:ietf:params:scim:api:messages:2.0:SearchRequest`.
    schemas: Option<Vec<String>>,
    filter: Option<String>,
    sort_by: Option<String>,
    /// `ascending` or `descending`.
    sort_order: Option<String>,
    start_index: Option<i64>,
    count: Option<i64>,
    attributes: Option<Vec<String>>,
    excluded_attributes: Option<Vec<String>>,
}

/// A PatchOp (RFC 7644 §3.5.2).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct ScimPatchOp {
    /// `urn:ietf:params:scim:api:messages:2.0:PatchOp`.
    schemas: Vec<String>,
    #[schema(rename = "Operations")]
    operations: Vec<ScimPatchOperation>,
}

/// One PATCH operation; `op` is read case-insensitively (Entra sends `Replace`).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct ScimPatchOperation {
    /// `add`, `replace` or `remove`.
    op: String,
    /// An attribute path, with a value filter (`members[value eq "…"]`) or an extension URN;
    /// without one, `value` is an object of attributes.
    path: Option<String>,
    value: Option<Value>,
}

/// An error answer (RFC 7644 §3.12), in `application/scim+json`.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ScimErrorBody {
    /// `urn:ietf:params:scim:api:messages:2.0:Error`.
    schemas: Vec<String>,
    /// The HTTP status, as a string.
    status: String,
    /// `invalidFilter`, `invalidSyntax`, `invalidValue`, `invalidPath`, `noTarget`,
    /// `uniqueness`, `mutability`, `tooMany`.
    scim_type: Option<String>,
    detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_and_excluded_attributes_shape_the_answer() {
        let r = json!({
            "schemas": [CORE_USER], "id": "1", "meta": {"version": "W/\"1\""},
            "userName": "a", "title": "t",
            "name": {"givenName": "G", "familyName": "F"},
            "emails": [{"value": "a@x.io", "type": "work"}],
            ENTERPRISE_USER: {"department": "D", "costCenter": "C"},
        });
        let p = Projection::from_parts(
            Some(&format!(
                "userName,name.givenName,emails.value,{ENTERPRISE_USER}:department"
            )),
            None,
        )
        .unwrap();
        assert_eq!(
            p.apply(&r),
            json!({
                "schemas": [CORE_USER], "id": "1", "meta": {"version": "W/\"1\""},
                "userName": "a", "name": {"givenName": "G"}, "emails": [{"value": "a@x.io"}],
                ENTERPRISE_USER: {"department": "D"},
            })
        );
        let p = Projection::from_parts(None, Some("title,id,name.familyName")).unwrap();
        let shown = p.apply(&r);
        assert!(shown.get("title").is_none());
        assert_eq!(shown["id"], "1");
        assert_eq!(shown["name"], json!({"givenName": "G"}));
    }
}
