//! Evidence bundles: create one for a job, read its signed manifest, export it as one archive
//! (or as a DSSE envelope for in-toto tooling), and verify an archive.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::problem::ApiQuery;
use crate::write::{accepted_with, context};
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs/{id}/evidence", post(create).get(of_job))
        // Archives with artifacts are large; they are checked in memory, so bounded by their
        // own limit (`crate::bodies`, `QUANTUS_MAX_ARCHIVE_BYTES`).
        .route("/evidence/verify", post(verify))
        .route("/evidence/{id}", get(show))
        .route("/evidence/{id}/export", get(export))
        .route("/evidence/{id}/dsse", get(dsse))
}

fn uuid(id: &str, what: &str) -> Result<String, Problem> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found(format!("no {what} {id:?}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesQuery {
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

/// The evidence bundles made for one job (so a job links to its proof).
#[utoipa::path(get, path = "/v1/jobs/{id}/evidence", tag = "evidence",
    params(("id" = String, Path), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query)),
    responses((status = 200, description = "{items: [{id, job_id, organization_id, manifest_sha256, created_at}], next_after}"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn of_job(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    crate::problem::ApiQuery(q): crate::problem::ApiQuery<BundlesQuery>,
) -> Result<Response, Problem> {
    principal.require("evidence:read")?;
    let job_id = uuid(&id, "job")?;
    let (job, _) = state.evidence.job(&job_id).await?;
    let org = job.submitted.map(|s| s.organization_id).unwrap_or_default();
    principal.tenant(&org, &format!("job {job_id}"))?;
    let limit = crate::paging::limit(q.limit)?;
    crate::consistency::Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.jobs)
    .await?;
    let rows = quantus_projections::jobs::JobsView::bundles_of_job(
        &state.db.pool,
        &job_id,
        q.after.as_deref(),
        limit,
    )
    .await?;
    let next_after = crate::paging::next_after(&rows, limit, |r| r.id.as_str());
    Ok(Json(serde_json::json!({ "items": rows, "next_after": next_after })).into_response())
}

#[utoipa::path(post, path = "/v1/jobs/{id}/evidence", tag = "evidence", params(("id" = String, Path)),
    responses((status = 201, description = "{id, manifest (signed), version, position}"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("evidence:write")?;
    let job_id = uuid(&id, "job")?;
    let (job, _) = state.evidence.job(&job_id).await?;
    let org = job.submitted.map(|s| s.organization_id).unwrap_or_default();
    principal.tenant(&org, &format!("job {job_id}"))?;
    let ctx = context(&principal, &headers, &org);
    let (bundle_id, document, outcome) = state.evidence.create_bundle(&ctx, &job_id).await?;
    let body = serde_json::json!({
        "id": bundle_id, "manifest": document,
        "version": outcome.version, "position": outcome.position,
    });
    Ok(accepted_with(
        StatusCode::CREATED,
        body,
        outcome,
        Some(format!("/v1/evidence/{bundle_id}")),
    ))
}

async fn bundle_in_tenant(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(String, quantus_crypto::document::SignedDocument), Problem> {
    principal.require("evidence:read")?;
    let id = uuid(id, "evidence bundle")?;
    let (created, document) = state.evidence.bundle(&id).await?;
    principal.tenant(&created.organization_id, &format!("evidence bundle {id}"))?;
    Ok((id, document))
}

#[utoipa::path(get, path = "/v1/evidence/{id}", tag = "evidence", params(("id" = String, Path)),
    responses((status = 200, description = "the signed manifest, canonical JSON"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (_, document) = bundle_in_tenant(&state, &principal, &id).await?;
    let bytes = document
        .to_canonical_json()
        .map_err(|_| Problem::internal())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    #[serde(default)]
    artifacts: bool,
}

#[utoipa::path(get, path = "/v1/evidence/{id}/export", tag = "evidence",
    params(("id" = String, Path), ("artifacts" = Option<bool>, Query, description = "include the artifacts' bytes")),
    responses((status = 200, description = "a tar archive: manifest.json, keys.json, config.json, statement.dsse.json, artifacts/"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, Problem> {
    let (id, _) = bundle_in_tenant(&state, &principal, &id).await?;
    let archive = state.evidence.export(&id, q.artifacts).await?;
    let mut response = archive.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"evidence-{id}.tar\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/evidence/{id}/dsse", tag = "evidence", params(("id" = String, Path)),
    responses((status = 200, description = "a DSSE envelope around an in-toto Statement v1"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn dsse(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let (id, _) = bundle_in_tenant(&state, &principal, &id).await?;
    Ok(Json(state.evidence.dsse(&id).await?))
}

/// Verifies an exported archive with the platform's published keys (not the ones inside it).
#[utoipa::path(post, path = "/v1/evidence/verify", tag = "evidence",
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "an archive from /export"),
    responses((status = 200, description = "{valid, reason?, artifacts, events_included, ...}"), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Problem> {
    principal.require("evidence:read")?;
    let unpacked = quantus_commands::evidence::unpack(&body).map_err(Problem::bad_request)?;
    let keys = state.licensing.key_set().await?;
    Ok(Json(
        match quantus_crypto::evidence::verify(
            &unpacked.manifest,
            &unpacked.files,
            &keys,
            chrono::Utc::now(),
        ) {
            Ok(report) => serde_json::json!({
                "valid": true,
                "bundle_id": report.manifest.bundle_id,
                "job_id": report.manifest.job_id,
                "signed_by": report.signed_by,
                "config_checked": report.config_checked,
                "events_included": report.events_included,
                "artifacts": report.artifacts.iter().map(|(name, check)| serde_json::json!({
                    "name": name, "check": crate::evidence::check_name(check),
                })).collect::<Vec<_>>(),
                "job_state": report.job_state,
            }),
            Err(e) => serde_json::json!({ "valid": false, "reason": e.to_string() }),
        },
    ))
}

/// How an artifact check reads in answers.
pub fn check_name(check: &quantus_crypto::evidence::ArtifactCheck) -> String {
    use quantus_crypto::evidence::ArtifactCheck as A;
    match check {
        A::Verified => "verified".into(),
        A::NotIncluded => "not included".into(),
        A::PurgedByPolicy(p) => format!("purged by policy {p}"),
    }
}
