//! QSA's REST resources: users, OAuth clients and service principals.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use quantus_commands::identity::{NewClient, NewUser, Registration};
use quantus_commands::CommandError;
use quantus_domain::identity::client::{AuthMethod, ClientKind, GrantType};
use quantus_domain::identity::user::UserCommand;
use quantus_domain::identity::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::paging::Page;
use crate::problem::ApiJson;
use crate::problem::ApiQuery;
use crate::write::{accepted, accepted_with, context, expected_version, optional_json, refusal};
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/{id}", get(show_user).delete(delete_user))
        .route("/users/{id}/{action}", post(user_action))
        .route("/users/{id}/sessions", get(user_sessions))
        .route(
            "/users/{id}/sessions/{session}",
            axum::routing::delete(revoke_user_session),
        )
        .route("/me/sessions", get(my_sessions))
        .route(
            "/me/sessions/{session}",
            axum::routing::delete(revoke_my_session),
        )
        .route("/groups", post(create_group).get(list_groups))
        .route("/groups/{id}", get(show_group).delete(delete_group))
        .route("/groups/{id}/members", post(add_member))
        .route(
            "/groups/{id}/members/{user_id}",
            axum::routing::delete(remove_member),
        )
        .route("/service-principals", post(create_service_principal))
        .route("/clients", post(create_client).get(list_clients))
        .route("/clients/{id}", get(show_client))
        .route("/clients/{id}/secret", post(rotate_secret))
        .route("/clients/{id}/disable", post(disable_client))
}

fn parse_uuid(id: &str, what: &str) -> Result<String, Problem> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found(format!("no {what} {id:?}")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub organization_id: String,
    pub email: String,
    pub name: String,
    /// 12 to 256 characters; omit for a user who will sign in otherwise.
    #[serde(default)]
    pub password: Option<String>,
    /// Defaults to `member`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub roles: Option<BTreeSet<Role>>,
}

#[utoipa::path(post, path = "/v1/users", tag = "identity", request_body = CreateUser,
    responses((status = 201, body = crate::write::CommandAccepted), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    principal.tenant(
        &body.organization_id,
        &format!("organization {}", body.organization_id),
    )?;
    let id = Uuid::now_v7().to_string();
    let ctx = context(&principal, &headers, &body.organization_id);
    // The use case claims the email in the organization (unique at once, tenants isolated),
    // registers the user and releases the claim if that fails.
    let new = NewUser {
        organization_id: body.organization_id,
        email: body.email,
        name: body.name,
        password: body.password,
        roles: body.roles.unwrap_or_else(|| [Role::Member].into()),
    };
    let outcome = state
        .identity
        .register_person(&ctx, &id, Registration::with_email(new))
        .await
        .map_err(CommandError::from)?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/users/{id}")),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserListQuery {
    org: String,
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
    as_of: Option<String>,
    as_of_position: Option<u64>,
}

impl UserListQuery {
    /// With `as_of` / `as_of_position`: the page of model `kind`'s history at that moment,
    /// naming it.
    async fn as_of<R: serde::de::DeserializeOwned, V: From<R> + ToSchema>(
        &self,
        state: &AppState,
        model: &quantus_projections::runner::ProjectionRunner,
        kind: &'static str,
        limit: u32,
    ) -> Result<Option<Page<V>>, Problem> {
        let Some(moment) = crate::as_of::resolve(
            state,
            model,
            self.as_of.as_deref(),
            self.as_of_position,
            self.wait_ms,
        )
        .await?
        else {
            return Ok(None);
        };
        let rows = quantus_projections::history::as_of(
            &state.db.pool,
            kind,
            Some(&self.org),
            moment.position,
            self.after.as_deref(),
            limit,
        )
        .await?;
        let next_after = crate::paging::next_after(&rows, limit, crate::as_of::row_id);
        Ok(Some(Page {
            items: crate::as_of::rows::<R, V>(rows)?,
            next_after,
            as_of: Some(moment),
        }))
    }
}

/// A user as the users read model lists it; email and name are null once erased.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    /// The organization the user was registered in.
    pub organization_id: String,
    /// `active`, `disabled` or `erased`.
    pub status: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The user's roles in each organization they are a member of, by organization id.
    #[schema(value_type = BTreeMap<String, Vec<String>>)]
    pub memberships: BTreeMap<String, BTreeSet<Role>>,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

impl From<quantus_projections::users::UserRow> for UserView {
    fn from(r: quantus_projections::users::UserRow) -> Self {
        Self {
            id: r.id,
            organization_id: r.organization_id,
            status: r.status,
            email: r.email,
            name: r.name,
            memberships: r.memberships,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// One user as its events have it (`ETag`: its version); email and name are null once erased.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserProfileView {
    pub id: String,
    pub organization_id: String,
    /// `active`, `disabled` or `erased`.
    pub status: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The user's roles in each organization they are a member of, by organization id.
    #[schema(value_type = BTreeMap<String, Vec<String>>)]
    pub memberships: BTreeMap<String, BTreeSet<Role>>,
    /// Whether the user can sign in with a password.
    pub has_password: bool,
    pub version: u64,
}

impl From<quantus_commands::identity::UserProfile> for UserProfileView {
    fn from(p: quantus_commands::identity::UserProfile) -> Self {
        Self {
            id: p.id,
            organization_id: p.organization_id,
            status: p.status.to_owned(),
            email: p.email,
            name: p.name,
            memberships: p.memberships,
            has_password: p.has_password,
            version: p.version,
        }
    }
}

/// The users read model: erased users are listed without personal data.
#[utoipa::path(get, path = "/v1/users", tag = "identity",
    params(("org" = String, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query), ("as_of" = Option<String>, Query, description = "the model as it stood at this instant (RFC 3339): after the last log position appended before it; the answer's `as_of` names that position and the instant"), ("as_of_position" = Option<u64>, Query, description = "the model as it stood at this log position (after its event); the answer's `as_of` names it and when it was appended")),
    responses((status = 200, body = Page<UserView>, description = "with `as_of` or `as_of_position`, the page also names the moment it reflects"), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    crate::problem::ApiQuery(q): crate::problem::ApiQuery<UserListQuery>,
) -> Result<Json<Page<UserView>>, Problem> {
    principal.require("identity:read")?;
    principal.tenant(&q.org, &format!("organization {}", q.org))?;
    let limit = crate::paging::limit(q.limit)?;
    crate::consistency::Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.users)
    .await?;
    if let Some(page) = q
        .as_of::<quantus_projections::users::UserRow, UserView>(
            &state,
            &state.users,
            quantus_projections::users::UsersView::NAME,
            limit,
        )
        .await?
    {
        return Ok(Json(page));
    }
    let rows = quantus_projections::users::UsersView::by_organization(
        &state.db.pool,
        &q.org,
        q.after.as_deref(),
        limit,
    )
    .await?;
    let rows: Vec<UserView> = rows.into_iter().map(UserView::from).collect();
    Ok(Json(Page::of(rows, limit, |r| r.id.as_str())))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "identity", params(("id" = String, Path)),
    responses((status = 200, body = UserProfileView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_uuid(&id, "user")?;
    // People may always read themselves.
    if principal.actor.id != id {
        principal.require("identity:read")?;
    }
    let profile = state.identity.user_profile(&id).await?;
    principal.tenant(&profile.organization_id, &format!("user {id}"))?;
    let version = profile.version;
    let mut response =
        axum::response::IntoResponse::into_response(Json(UserProfileView::from(profile)));
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(axum::http::header::ETAG, v);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    erase: bool,
}

/// 409 when a principal would lock itself out (disable or erase the account, or the client, its
/// token was issued to; give up its own roles): another administrator does that, so a platform
/// is never left with no one able to sign in. A fuzzer holding the bootstrap admin's token
/// found the hole by disabling that client.
fn refuse_self(principal: &Principal, subject: &str, what: &str) -> Result<(), Problem> {
    if principal.actor.id == subject || principal.claims.client_id == subject {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "self-lockout",
            "Cannot lock yourself out",
            format!("a principal cannot {what} itself; another administrator can"),
        ));
    }
    Ok(())
}

/// Without `erase=true` the user is disabled; with it, crypto-shredded for good.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "identity",
    params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path), ("erase" = Option<bool>, Query, description = "destroy the user's data key: personal data becomes unreadable across the whole log")),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem, description = "the caller's own account")),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    let id = parse_uuid(&id, "user")?;
    let profile = state.identity.user_profile(&id).await?;
    principal.tenant(&profile.organization_id, &format!("user {id}"))?;
    refuse_self(&principal, &id, "delete")?;
    let ctx = context(&principal, &headers, &profile.organization_id);
    let outcome = if q.erase {
        let keys = state.identity.subject_keys();
        if let Some(email) = &profile.email {
            keys.release_email(&profile.organization_id, email, &id)
                .await?;
        }
        state.identity.erase_user(&ctx, &id).await?
    } else {
        let command = UserCommand::Disable {
            reason: "deleted".into(),
        };
        let expected = expected_version(&headers)?;
        state
            .identity
            .user_command(&ctx, &id, command, expected)
            .await
            .map_err(refusal(expected))?
    };
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserActionBody {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    organization_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    role: Option<Role>,
}

#[utoipa::path(post, path = "/v1/users/{id}/{action}", tag = "identity",
    request_body(content = UserActionBody, description = "password (password), reason (disable), organization_id + role (grant-role, revoke-role)"),
    params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path), ("action" = String, Path, description = "password, disable, enable, grant-role or revoke-role")),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn user_action(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let id = parse_uuid(&id, "user")?;
    let body: UserActionBody = optional_json(&headers, &body)?;
    let (user, _) = state.identity.user(&id).await?;
    principal.tenant(&user.organization_id, &format!("user {id}"))?;
    // A person may change their own password; everything else is an administrator's.
    if !(action == "password" && principal.actor.id == id) {
        principal.require("identity:write")?;
    }
    if matches!(action.as_str(), "disable" | "revoke-role") {
        refuse_self(&principal, &id, &action.replace('-', " "))?;
    }
    let ctx = context(&principal, &headers, &user.organization_id);
    let expected = expected_version(&headers)?;
    let need = |v: Option<String>, f: &str| {
        v.ok_or_else(|| Problem::unprocessable(format!("{f} is required")))
    };
    let outcome = match action.as_str() {
        "password" => state
            .identity
            .set_password(&ctx, &id, need(body.password, "password")?, expected)
            .await
            .map_err(refusal(expected))?,
        "disable" | "enable" | "grant-role" | "revoke-role" => {
            let command = match action.as_str() {
                "disable" => UserCommand::Disable {
                    reason: body.reason.unwrap_or_default(),
                },
                "enable" => UserCommand::Enable,
                other => {
                    let organization_id = need(body.organization_id, "organization_id")?;
                    principal
                        .tenant(&organization_id, &format!("organization {organization_id}"))?;
                    let role = body
                        .role
                        .ok_or_else(|| Problem::unprocessable("role is required"))?;
                    if other == "grant-role" {
                        UserCommand::GrantRole {
                            organization_id,
                            role,
                        }
                    } else {
                        UserCommand::RevokeRole {
                            organization_id,
                            role,
                        }
                    }
                }
            };
            state
                .identity
                .user_command(&ctx, &id, command, expected)
                .await
                .map_err(refusal(expected))?
        }
        _ => return Err(Problem::not_found(format!("no user action {action:?}"))),
    };
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServicePrincipal {
    pub organization_id: String,
    pub name: String,
    #[schema(value_type = Vec<String>)]
    pub roles: BTreeSet<Role>,
    /// Scopes it may ask for; default: every scope its roles allow.
    #[serde(default)]
    pub scopes: Option<BTreeSet<String>>,
    /// RFC 9449 §5.2: the token endpoint refuses this client's requests without a DPoP proof,
    /// so every access token it gets is sender-constrained.
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
}

/// The one answer that carries a client secret: it is not stored anywhere readable.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientCreated {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    pub version: u64,
    pub position: u64,
}

/// 201 with the client's id and its secret, which is shown this once and never cached.
fn client_created(
    client_id: String,
    client_secret: Option<String>,
    outcome: quantus_commands::CommandOutcome,
) -> Response {
    let location = Some(format!("/v1/clients/{client_id}"));
    let body = ClientCreated {
        client_id,
        client_secret,
        version: outcome.version,
        position: outcome.position,
    };
    no_store(accepted_with(StatusCode::CREATED, body, outcome, location))
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

#[utoipa::path(post, path = "/v1/service-principals", tag = "identity", request_body = CreateServicePrincipal,
    responses((status = 201, body = ClientCreated), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_service_principal(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateServicePrincipal>,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    principal.tenant(
        &body.organization_id,
        &format!("organization {}", body.organization_id),
    )?;
    let scopes = body
        .scopes
        .unwrap_or_else(|| quantus_domain::identity::scopes_of_roles(&body.roles));
    let ctx = context(&principal, &headers, &body.organization_id);
    let new = NewClient {
        organization_id: body.organization_id,
        kind: ClientKind::Service,
        name: body.name,
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes,
        roles: body.roles,
        auth_method: AuthMethod::ClientSecretBasic,
        require_par: false,
        jwks: None,
        dpop_bound_access_tokens: body.dpop_bound_access_tokens,
    };
    let (client_id, client_secret, outcome) = state.identity.register_client(&ctx, new).await?;
    Ok(client_created(client_id, client_secret, outcome))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    pub organization_id: String,
    pub name: String,
    /// `confidential` or `public`.
    #[schema(value_type = String)]
    pub kind: ClientKind,
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[schema(value_type = Vec<String>)]
    pub grant_types: BTreeSet<GrantType>,
    pub scopes: BTreeSet<String>,
    /// Default: `client_secret_basic` (confidential), `none` (public).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub token_endpoint_auth_method: Option<AuthMethod>,
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// Public keys for `private_key_jwt`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// RFC 9449 §5.2: the token endpoint refuses this client's requests without a DPoP proof,
    /// so every access token it gets is sender-constrained.
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
}

#[utoipa::path(post, path = "/v1/clients", tag = "identity", request_body = CreateClient,
    responses((status = 201, body = ClientCreated), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_client(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateClient>,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    principal.tenant(
        &body.organization_id,
        &format!("organization {}", body.organization_id),
    )?;
    if body.kind == ClientKind::Service {
        return Err(Problem::unprocessable(
            "create service principals at /v1/service-principals",
        ));
    }
    let auth_method = body.token_endpoint_auth_method.unwrap_or(match body.kind {
        ClientKind::Public => AuthMethod::None,
        _ => AuthMethod::ClientSecretBasic,
    });
    let ctx = context(&principal, &headers, &body.organization_id);
    let new = NewClient {
        organization_id: body.organization_id,
        kind: body.kind,
        name: body.name,
        redirect_uris: body.redirect_uris,
        post_logout_redirect_uris: body.post_logout_redirect_uris,
        grant_types: body.grant_types,
        scopes: body.scopes,
        roles: BTreeSet::new(),
        auth_method,
        require_par: body.require_pushed_authorization_requests,
        jwks: body.jwks,
        dpop_bound_access_tokens: body.dpop_bound_access_tokens,
    };
    let (client_id, client_secret, outcome) = state.identity.register_client(&ctx, new).await?;
    Ok(client_created(client_id, client_secret, outcome))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientListQuery {
    org: String,
    after: Option<String>,
    limit: Option<u32>,
}

/// One application (OAuth client or service principal) in a list: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientListed {
    pub client_id: String,
    pub name: String,
    /// `confidential`, `public` or `service`.
    #[schema(value_type = String)]
    pub kind: ClientKind,
    #[schema(value_type = Vec<String>)]
    pub grant_types: BTreeSet<GrantType>,
    pub disabled: bool,
}

/// An organization's applications (OAuth clients and service principals), by client id, paged.
///
/// Clients have no read model: this reads every `ClientRegistered` event in the log, all
/// organizations' (the query walks the unique index over every `Client` event and keeps that
/// one type), keeps the organization's, and loads each client of the page from its events to
/// tell whether it is disabled. The cost grows with the clients of the whole log, not the
/// organization's (`docs/STATUS.md`, Known limits (QSA)).
/// Read from the log itself, the list already holds every write that was answered.
#[utoipa::path(get, path = "/v1/clients", tag = "identity", operation_id = "list_clients",
    params(("org" = String, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = Page<ClientListed>, description = "never a secret"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_clients(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    crate::problem::ApiQuery(q): crate::problem::ApiQuery<ClientListQuery>,
) -> Result<Json<Page<ClientListed>>, Problem> {
    use quantus_domain::identity::client::{ClientRegistered, ClientStatus};
    principal.require("identity:read")?;
    principal.tenant(&q.org, &format!("organization {}", q.org))?;
    let limit = crate::paging::limit(q.limit)?;
    let ids = crate::paging::registered::<ClientRegistered>(
        &state.db,
        |e| e.organization_id == q.org,
        q.after.as_deref(),
        limit,
    )
    .await?
    .into_iter()
    .map(|(r, _)| r.envelope.aggregate_id);
    let mut rows = Vec::new();
    for id in ids {
        let (client, _) = state.identity.client(&id).await?;
        if let Some(r) = client.registration {
            rows.push(ClientListed {
                client_id: id,
                name: r.name,
                kind: r.kind,
                grant_types: r.grant_types,
                disabled: client.status == ClientStatus::Disabled,
            });
        }
    }
    Ok(Json(Page::of(rows, limit, |r| r.client_id.as_str())))
}

/// A client's registration as the API shows it: never its secret (nor the secret's digest).
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub organization_id: String,
    /// `confidential`, `public` or `service`.
    #[schema(value_type = String)]
    pub kind: ClientKind,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    #[schema(value_type = Vec<String>)]
    pub grant_types: BTreeSet<GrantType>,
    /// Scopes the client may ask for.
    pub scopes: BTreeSet<String>,
    /// Roles of a service principal in its organization (empty for other kinds).
    #[schema(value_type = Vec<String>)]
    pub roles: BTreeSet<Role>,
    /// Token endpoint authentication: `client_secret_basic`, `client_secret_post`,
    /// `private_key_jwt` or `none`.
    #[schema(value_type = String)]
    pub auth_method: AuthMethod,
    /// Pushed authorization requests (RFC 9126) are the only way in.
    pub require_par: bool,
    /// Public keys for `private_key_jwt` (a JWK Set).
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// RFC 9449 §5.2: the token endpoint refuses this client's requests without a DPoP proof.
    pub dpop_bound_access_tokens: bool,
    /// `active` or `disabled`.
    pub status: String,
}

async fn client_in_tenant(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<quantus_domain::identity::client::Client, Problem> {
    let not_found = || Problem::not_found(format!("no client {id}"));
    let (client, _) = state.identity.client(id).await.map_err(|e| match e {
        CommandError::NotFound(_) => not_found(),
        e => e.into(),
    })?;
    let org = client
        .registration
        .as_ref()
        .map(|r| r.organization_id.clone())
        .unwrap_or_default();
    principal.tenant(&org, &format!("client {id}"))?;
    Ok(client)
}

#[utoipa::path(get, path = "/v1/clients/{id}", tag = "identity", params(("id" = String, Path)),
    responses((status = 200, body = ClientView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show_client(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ClientView>, Problem> {
    principal.require("identity:read")?;
    let client = client_in_tenant(&state, &principal, &id).await?;
    // A client's first event registers it: one without a registration does not exist.
    let r = client
        .registration
        .ok_or_else(|| Problem::not_found(format!("no client {id}")))?;
    Ok(Json(ClientView {
        client_id: id,
        organization_id: r.organization_id,
        kind: r.kind,
        name: r.name,
        redirect_uris: r.redirect_uris,
        post_logout_redirect_uris: r.post_logout_redirect_uris,
        grant_types: r.grant_types,
        scopes: r.scopes,
        roles: r.roles,
        auth_method: r.auth_method,
        require_par: r.require_par,
        jwks: r.jwks,
        dpop_bound_access_tokens: r.dpop_bound_access_tokens,
        status: format!("{:?}", client.status).to_lowercase(),
    }))
}

#[utoipa::path(post, path = "/v1/clients/{id}/secret", tag = "identity", request_body = (), params(("id" = String, Path)),
    responses((status = 200, body = ClientCreated), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    let client = client_in_tenant(&state, &principal, &id).await?;
    let org = client
        .registration
        .map(|r| r.organization_id)
        .unwrap_or_default();
    let ctx = context(&principal, &headers, &org);
    let (secret, outcome) = state.identity.rotate_client_secret(&ctx, &id).await?;
    let body = ClientCreated {
        client_id: id,
        client_secret: Some(secret),
        version: outcome.version,
        position: outcome.position,
    };
    Ok(no_store(accepted_with(StatusCode::OK, body, outcome, None)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableBody {
    #[serde(default)]
    reason: String,
}

#[utoipa::path(post, path = "/v1/clients/{id}/disable", tag = "identity", request_body = DisableBody, params(("id" = String, Path)),
    responses((status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem, description = "the client the caller's token was issued to")),
    security(("bearer" = [])))]
pub async fn disable_client(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require("identity:write")?;
    let body: DisableBody = optional_json(&headers, &body)?;
    let client = client_in_tenant(&state, &principal, &id).await?;
    refuse_self(&principal, &id, "disable")?;
    let org = client
        .registration
        .map(|r| r.organization_id)
        .unwrap_or_default();
    let ctx = context(&principal, &headers, &org);
    let outcome = state
        .identity
        .disable_client(&ctx, &id, body.reason)
        .await?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub organization_id: String,
    pub name: String,
}

#[utoipa::path(post, path = "/v1/groups", tag = "identity", request_body = CreateGroup,
    responses((status = 201, body = crate::write::CommandAccepted), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateGroup>,
) -> Result<Response, Problem> {
    use quantus_domain::identity::group::GroupCommand;
    principal.require("identity:write")?;
    principal.tenant(
        &body.organization_id,
        &format!("organization {}", body.organization_id),
    )?;
    let id = Uuid::now_v7().to_string();
    let ctx = context(&principal, &headers, &body.organization_id);
    let command = GroupCommand::Create {
        organization_id: body.organization_id,
        name: body.name,
    };
    let outcome = state
        .identity
        .group_command(&ctx, &id, command, Some(0))
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/groups/{id}")),
    ))
}

async fn group_in_tenant(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(quantus_domain::identity::group::Group, u64), Problem> {
    let id = parse_uuid(id, "group")?;
    let (group, version) = state.identity.group(&id).await?;
    principal.tenant(&group.organization_id, &format!("group {id}"))?;
    Ok((group, version))
}

/// One live session of a person at QSA (a browser signed in).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionListed {
    pub id: String,
    /// How it was signed in (RFC 8176 method references).
    pub amr: Vec<String>,
    pub auth_time: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The session the caller's token was issued in.
    pub current: bool,
}

/// A person's live sessions, newest first (all of them: a person has few).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionListed>,
}

/// The answer to ending a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionEnded {
    /// The session.
    pub id: String,
    /// Always true: the session and the grants issued in it are revoked.
    pub ended: bool,
}

/// The sessions of `user` as the API lists them; `current` marks the one the caller's token
/// was issued in.
async fn sessions_answer(
    state: &AppState,
    principal: &Principal,
    user: &str,
) -> Result<Json<SessionList>, Problem> {
    let now = chrono::Utc::now();
    let current = state
        .identity
        .session_of_grant(&principal.claims.gid)
        .await
        .ok()
        .flatten();
    let items = state
        .identity
        .sessions_of(user, now)
        .await?
        .into_iter()
        .map(|s| SessionListed {
            current: current.as_deref() == Some(s.id.as_str()),
            id: s.id,
            amr: s.amr,
            auth_time: s.auth_time,
            expires_at: s.expires_at,
        })
        .collect();
    Ok(Json(SessionList { items }))
}

/// The caller's own live sessions at QSA (each a browser signed in), newest first.
#[utoipa::path(get, path = "/v1/me/sessions", tag = "qsa",
    responses((status = 200, body = SessionList), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn my_sessions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<SessionList>, Problem> {
    let user = principal.person()?;
    sessions_answer(&state, &principal, &user).await
}

/// Ends one of the caller's own sessions and revokes the grants issued in it.
#[utoipa::path(delete, path = "/v1/me/sessions/{session}", tag = "qsa", operation_id = "revoke_my_session",
    params(("session" = String, Path)),
    responses((status = 200, body = SessionEnded), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_my_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(session): Path<String>,
    headers: HeaderMap,
    peer: crate::oauth::Peer,
) -> Result<Json<SessionEnded>, Problem> {
    let user = principal.person()?;
    let ctx = context(&principal, &headers, &principal.organization);
    state
        .identity
        .revoke_session_of(
            &ctx,
            &user,
            &session,
            "logout",
            crate::oauth::request_info(&headers, peer.0),
        )
        .await?;
    Ok(Json(SessionEnded {
        id: session,
        ended: true,
    }))
}

/// A person's live sessions, for their organization's administrators.
#[utoipa::path(get, path = "/v1/users/{id}/sessions", tag = "identity",
    params(("id" = String, Path)),
    responses((status = 200, body = SessionList), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn user_sessions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SessionList>, Problem> {
    principal.require("identity:read")?;
    let id = parse_uuid(&id, "user")?;
    let (user, _) = state.identity.user(&id).await?;
    principal.tenant(&user.organization_id, &format!("user {id}"))?;
    sessions_answer(&state, &principal, &id).await
}

/// An administrator ends a person's session (and the grants issued in it).
#[utoipa::path(delete, path = "/v1/users/{id}/sessions/{session}", tag = "identity",
    params(("id" = String, Path), ("session" = String, Path)),
    responses((status = 200, body = SessionEnded), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_user_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, session)): Path<(String, String)>,
    headers: HeaderMap,
    peer: crate::oauth::Peer,
) -> Result<Json<SessionEnded>, Problem> {
    principal.require("identity:write")?;
    let id = parse_uuid(&id, "user")?;
    let (user, _) = state.identity.user(&id).await?;
    principal.tenant(&user.organization_id, &format!("user {id}"))?;
    let ctx = context(&principal, &headers, &user.organization_id);
    state
        .identity
        .revoke_session_of(
            &ctx,
            &id,
            &session,
            "administrative",
            crate::oauth::request_info(&headers, peer.0),
        )
        .await?;
    Ok(Json(SessionEnded {
        id: session,
        ended: true,
    }))
}

/// An organization's groups (the groups read model), by id, paged.
#[utoipa::path(get, path = "/v1/groups", tag = "identity",
    params(("org" = String, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query), ("as_of" = Option<String>, Query, description = "the model as it stood at this instant (RFC 3339): after the last log position appended before it; the answer's `as_of` names that position and the instant"), ("as_of_position" = Option<u64>, Query, description = "the model as it stood at this log position (after its event); the answer's `as_of` names it and when it was appended")),
    responses((status = 200, body = Page<GroupView>, description = "with `as_of` or `as_of_position`, the page also names the moment it reflects"), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_groups(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    crate::problem::ApiQuery(q): crate::problem::ApiQuery<UserListQuery>,
) -> Result<Json<Page<GroupView>>, Problem> {
    use quantus_projections::groups::{GroupRow, GroupsView};
    principal.require("identity:read")?;
    principal.tenant(&q.org, &format!("organization {}", q.org))?;
    let limit = crate::paging::limit(q.limit)?;
    let runner = quantus_projections::runner::ProjectionRunner::new(
        state.db.clone(),
        std::sync::Arc::new(GroupsView),
    );
    crate::consistency::Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&runner)
    .await?;
    if let Some(page) = q
        .as_of::<GroupRow, GroupView>(&state, &runner, GroupsView::NAME, limit)
        .await?
    {
        return Ok(Json(page));
    }
    // Ordered by id: the page after `after` is the next `limit` of them, from the index.
    let rows: Vec<GroupView> =
        GroupsView::page_after(&state.db.pool, &q.org, q.after.as_deref(), limit)
            .await?
            .into_iter()
            .map(GroupView::from)
            .collect();
    Ok(Json(Page::of(rows, limit, |r| r.id.as_str())))
}

/// A group as the groups read model lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// The members' user ids.
    pub members: Vec<String>,
    /// The identity provider's id of a group provisioned by SCIM.
    pub external_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

impl From<quantus_projections::groups::GroupRow> for GroupView {
    fn from(r: quantus_projections::groups::GroupRow) -> Self {
        Self {
            id: r.id,
            organization_id: r.organization_id,
            name: r.name,
            members: r.members,
            external_id: r.external_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// One group as its events have it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDetail {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// The members' user ids.
    pub members: BTreeSet<String>,
    pub version: u64,
}

#[utoipa::path(get, path = "/v1/groups/{id}", tag = "identity", params(("id" = String, Path)),
    responses((status = 200, body = GroupDetail), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<GroupDetail>, Problem> {
    principal.require("identity:read")?;
    let (group, version) = group_in_tenant(&state, &principal, &id).await?;
    Ok(Json(GroupDetail {
        id,
        organization_id: group.organization_id,
        name: group.name,
        members: group.members,
        version,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub user_id: String,
}

#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "identity", request_body = AddMember,
    params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path)),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn add_member(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddMember>,
) -> Result<Response, Problem> {
    use quantus_domain::identity::group::GroupCommand;
    principal.require("identity:write")?;
    let (group, _) = group_in_tenant(&state, &principal, &id).await?;
    let ctx = context(&principal, &headers, &group.organization_id);
    let command = GroupCommand::AddMember {
        user_id: body.user_id,
        member_of: Default::default(),
    };
    let expected = expected_version(&headers)?;
    let outcome = state
        .identity
        .group_command(&ctx, &id, command, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[utoipa::path(delete, path = "/v1/groups/{id}/members/{user_id}", tag = "identity",
    params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    use quantus_domain::identity::group::GroupCommand;
    principal.require("identity:write")?;
    let (group, _) = group_in_tenant(&state, &principal, &id).await?;
    let ctx = context(&principal, &headers, &group.organization_id);
    let expected = expected_version(&headers)?;
    let outcome = state
        .identity
        .group_command(&ctx, &id, GroupCommand::RemoveMember { user_id }, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "identity", params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path)),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    use quantus_domain::identity::group::GroupCommand;
    principal.require("identity:write")?;
    let (group, _) = group_in_tenant(&state, &principal, &id).await?;
    let ctx = context(&principal, &headers, &group.organization_id);
    let expected = expected_version(&headers)?;
    let outcome = state
        .identity
        .group_command(&ctx, &id, GroupCommand::Delete, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}
