//! `/v1/organizations`: commands and queries on the tenant aggregate.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use quantus_domain::organization::OrganizationCommand;
use quantus_projections::organizations::{OrganizationRow, OrganizationsView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::consistency::Consistency;
use crate::problem::{ApiJson, ApiQuery};
use crate::write::{accepted, context, expected_version, optional_json, refusal, CommandAccepted};
use crate::{paging, AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/organizations", post(create).get(list))
        .route("/organizations/{id}", get(show).patch(rename))
        .route("/organizations/{id}/suspend", post(suspend))
        .route("/organizations/{id}/reactivate", post(reactivate))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    /// 1 to 128 characters after trimming, no control characters.
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameOrganization {
    pub name: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendOrganization {
    /// Why the organization is suspended (at most 500 characters).
    #[serde(default)]
    pub reason: String,
}

/// An organization as the read model shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationView {
    pub id: String,
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    pub suspended_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

impl From<OrganizationRow> for OrganizationView {
    fn from(r: OrganizationRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            status: r.status,
            suspended_reason: r.suspended_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationPage {
    pub items: Vec<OrganizationView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Return organizations after this id.
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
    pub min_position: Option<u64>,
    pub wait_ms: Option<u64>,
}

/// Organization ids are UUIDs; anything else cannot name one.
fn parse_id(id: &str) -> Result<String, Problem> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found(format!("no organization {id:?}")))
}

#[utoipa::path(post, path = "/v1/organizations", tag = "organizations",
    request_body = CreateOrganization,
    responses((status = 201, body = CommandAccepted), (status = 401, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateOrganization>,
) -> Result<Response, Problem> {
    principal.require("organizations:write")?;
    let id = Uuid::now_v7().to_string();
    let ctx = context(&principal, &headers, &id);
    let outcome = state
        .bus
        .organization(
            &ctx,
            &id,
            OrganizationCommand::Create { name: body.name },
            Some(0),
        )
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/organizations/{id}")),
    ))
}

#[utoipa::path(patch, path = "/v1/organizations/{id}", tag = "organizations",
    request_body = RenameOrganization,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "version last seen")),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = CommandAccepted), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn rename(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RenameOrganization>,
) -> Result<Response, Problem> {
    principal.require("organizations:write")?;
    let id = parse_id(&id)?;
    let expected = expected_version(&headers)?;
    let ctx = context(&principal, &headers, &id);
    let outcome = state
        .bus
        .organization(
            &ctx,
            &id,
            OrganizationCommand::Rename { name: body.name },
            expected,
        )
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[utoipa::path(post, path = "/v1/organizations/{id}/suspend", tag = "organizations",
    request_body(content = SuspendOrganization, description = "optional"),
    params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path)),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn suspend(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    principal.require("organizations:write")?;
    let id = parse_id(&id)?;
    let body: SuspendOrganization = optional_json(&headers, &body)?;
    let expected = expected_version(&headers)?;
    let ctx = context(&principal, &headers, &id);
    let outcome = state
        .bus
        .organization(
            &ctx,
            &id,
            OrganizationCommand::Suspend {
                reason: body.reason,
            },
            expected,
        )
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[utoipa::path(post, path = "/v1/organizations/{id}/reactivate", tag = "organizations",
    params(("If-Match" = Option<String>, Header, description = "the version last seen (its ETag): another current version is 412"), ("id" = String, Path)),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn reactivate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("organizations:write")?;
    let id = parse_id(&id)?;
    let expected = expected_version(&headers)?;
    let ctx = context(&principal, &headers, &id);
    let outcome = state
        .bus
        .organization(&ctx, &id, OrganizationCommand::Reactivate, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

#[utoipa::path(get, path = "/v1/organizations/{id}", tag = "organizations",
    params(("id" = String, Path), Consistency),
    responses((status = 200, body = OrganizationView), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(consistency): ApiQuery<Consistency>,
) -> Result<Response, Problem> {
    principal.require("organizations:read")?;
    let id = parse_id(&id)?;
    principal.tenant(&id, &format!("organization {id}"))?;
    consistency.wait(&state.organizations).await?;
    let row = OrganizationsView::get(&state.db.pool, &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no organization {id}")))?;
    let etag = format!("\"{}\"", row.version);
    let mut response = Json(OrganizationView::from(row)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/organizations", tag = "organizations",
    params(ListQuery),
    responses((status = 200, body = OrganizationPage), (status = 400, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<OrganizationPage>, Problem> {
    principal.require("organizations:read")?;
    let limit = paging::limit(q.limit)?;
    Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.organizations)
    .await?;
    let rows = if principal.is_platform() {
        OrganizationsView::list(&state.db.pool, q.after.as_deref(), limit).await?
    } else {
        // A tenant sees its own organization only.
        OrganizationsView::get(&state.db.pool, &principal.organization)
            .await?
            .into_iter()
            .filter(|r| q.after.as_deref().is_none_or(|a| r.id.as_str() > a))
            .collect()
    };
    let next_after = paging::next_after(&rows, limit, |r| r.id.as_str());
    Ok(Json(OrganizationPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_after,
    }))
}
