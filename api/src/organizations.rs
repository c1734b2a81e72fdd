//! `/v1/organizations`: commands and queries on the tenant aggregate.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use quantus_commands::CommandOutcome;
use quantus_domain::envelope::truncate_to_micros;
use quantus_domain::organization::OrganizationCommand;
use quantus_domain::CommandContext;
use quantus_projections::organizations::{OrganizationRow, OrganizationsView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::consistency::Consistency;
use crate::problem::{ApiJson, ApiQuery};
use crate::{AppState, Problem};

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

/// The answer to every command: where its events are in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAccepted {
    pub id: String,
    /// The aggregate's version after the command (also the ETag).
    pub version: u64,
    /// Log position to pass as `min_position` to read your own write.
    pub position: u64,
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
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Return organizations after this id.
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
    pub min_position: Option<u64>,
    pub wait_ms: Option<u64>,
}

fn context(principal: &Principal, headers: &HeaderMap, tenant: &str) -> CommandContext {
    let correlation_id = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::now_v7);
    CommandContext {
        tenant_id: tenant.to_owned(),
        actor: principal.actor.clone(),
        occurred_at: truncate_to_micros(Utc::now()),
        correlation_id,
        causation_id: Uuid::now_v7(),
    }
}

/// Organization ids are UUIDs; anything else cannot name one.
fn parse_id(id: &str) -> Result<String, Problem> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found(format!("no organization {id:?}")))
}

/// `If-Match: "N"` (or `*`): the version the client last saw.
fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Problem::bad_request("If-Match is not ASCII"))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| Problem::bad_request("If-Match must be an ETag from this API, such as \"3\""))
}

fn accepted(status: StatusCode, id: &str, outcome: CommandOutcome) -> Response {
    let mut response = (
        status,
        Json(CommandAccepted {
            id: id.to_owned(),
            version: outcome.version,
            position: outcome.position,
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", outcome.version)) {
        headers.insert(header::ETAG, v);
    }
    headers.insert("quantus-log-position", HeaderValue::from(outcome.position));
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/organizations/{id}")) {
            headers.insert(header::LOCATION, v);
        }
    }
    response
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
    state.metrics.command("Organization.Create");
    Ok(accepted(StatusCode::CREATED, &id, outcome))
}

#[utoipa::path(patch, path = "/v1/organizations/{id}", tag = "organizations",
    request_body = RenameOrganization,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "version last seen")),
    responses((status = 200, body = CommandAccepted), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn rename(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RenameOrganization>,
) -> Result<Response, Problem> {
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
        .await?;
    state.metrics.command("Organization.Rename");
    Ok(accepted(StatusCode::OK, &id, outcome))
}

#[utoipa::path(post, path = "/v1/organizations/{id}/suspend", tag = "organizations",
    request_body(content = SuspendOrganization, description = "optional"),
    params(("id" = String, Path)),
    responses((status = 200, body = CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn suspend(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
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
        .await?;
    state.metrics.command("Organization.Suspend");
    Ok(accepted(StatusCode::OK, &id, outcome))
}

#[utoipa::path(post, path = "/v1/organizations/{id}/reactivate", tag = "organizations",
    params(("id" = String, Path)),
    responses((status = 200, body = CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn reactivate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let expected = expected_version(&headers)?;
    let ctx = context(&principal, &headers, &id);
    let outcome = state
        .bus
        .organization(&ctx, &id, OrganizationCommand::Reactivate, expected)
        .await?;
    state.metrics.command("Organization.Reactivate");
    Ok(accepted(StatusCode::OK, &id, outcome))
}

/// An empty body means the defaults; a non-empty one must be valid JSON without unknown fields.
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as application/json",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = T::deserialize(&mut de).map_err(|e| {
        if e.is_data() {
            Problem::unprocessable(e.to_string())
        } else {
            Problem::bad_request(e.to_string())
        }
    })?;
    de.end().map_err(|e| Problem::bad_request(e.to_string()))?;
    Ok(value)
}

#[utoipa::path(get, path = "/v1/organizations/{id}", tag = "organizations",
    params(("id" = String, Path), Consistency),
    responses((status = 200, body = OrganizationView), (status = 404, body = Problem), (status = 504, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(consistency): ApiQuery<Consistency>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
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
    responses((status = 200, body = OrganizationPage), (status = 400, body = Problem), (status = 504, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<OrganizationPage>, Problem> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 200"));
    }
    Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.organizations)
    .await?;
    let rows = OrganizationsView::list(&state.db.pool, q.after.as_deref(), limit).await?;
    let next_after = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(OrganizationPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_after,
    }))
}
