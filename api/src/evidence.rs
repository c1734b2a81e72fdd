//! Evidence bundles: create one for a job, read its signed manifest, export it as one archive
//! (or as a DSSE envelope for in-toto tooling), and verify an archive.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use quantus_crypto::document::SignedDocument;
use quantus_projections::jobs::BundleRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::paging::Page;
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
    responses((status = 200, body = Page<BundleView>), (status = 404, body = Problem)),
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
    let page = Page::of(
        rows.into_iter().map(BundleView::from).collect(),
        limit,
        |r| r.id.as_str(),
    );
    Ok(Json(page).into_response())
}

/// An evidence bundle made for a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleView {
    pub id: String,
    pub job_id: String,
    pub organization_id: String,
    /// SHA-256 (hex) of the signed manifest's canonical JSON.
    pub manifest_sha256: String,
    pub created_at: String,
}

impl From<BundleRow> for BundleView {
    fn from(r: BundleRow) -> Self {
        Self {
            id: r.id,
            job_id: r.job_id,
            organization_id: r.organization_id,
            manifest_sha256: r.manifest_sha256,
            created_at: r.created_at,
        }
    }
}

/// A new evidence bundle and its signed manifest.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleCreated {
    id: String,
    #[schema(value_type = crate::formats::SignedManifest)]
    manifest: SignedDocument,
    /// The bundle's version (also the ETag).
    version: u64,
    /// Log position to pass as `min_position` to read your own write.
    position: u64,
}

#[utoipa::path(post, path = "/v1/jobs/{id}/evidence", tag = "evidence", params(("id" = String, Path)),
    responses((status = 201, body = BundleCreated), (status = 404, body = Problem)),
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
    let body = BundleCreated {
        id: bundle_id.clone(),
        manifest: document,
        version: outcome.version,
        position: outcome.position,
    };
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
    responses((status = 200, body = crate::formats::SignedManifest, description = "the signed manifest, canonical JSON"), (status = 404, body = Problem)),
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
    responses((status = 200, body = DsseEnvelope, description = "a DSSE envelope around an in-toto Statement v1"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn dsse(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<DsseEnvelope>, Problem> {
    let (id, _) = bundle_in_tenant(&state, &principal, &id).await?;
    let envelope = serde_json::from_value(state.evidence.dsse(&id).await?).map_err(|e| {
        tracing::error!(error = %e, "a DSSE envelope of an unexpected shape");
        Problem::internal()
    })?;
    Ok(Json(envelope))
}

/// A DSSE envelope (github.com/secure-systems-lab/dsse, envelope.md).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DsseEnvelope {
    /// `application/vnd.in-toto+json`.
    #[serde(rename = "payloadType")]
    payload_type: String,
    /// The in-toto Statement, base64.
    payload: String,
    signatures: Vec<DsseSignature>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DsseSignature {
    keyid: String,
    /// base64.
    sig: String,
}

/// Verifies an exported archive with the platform's published keys (not the ones inside it).
#[utoipa::path(post, path = "/v1/evidence/verify", tag = "evidence",
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "an archive from /export"),
    responses((status = 200, body = EvidenceVerdict), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Json<EvidenceVerdict>, Problem> {
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
            Ok(report) => EvidenceVerdict::Valid(Box::new(VerifiedBundle {
                valid: true,
                bundle_id: report.manifest.bundle_id,
                job_id: report.manifest.job_id,
                signed_by: report.signed_by,
                config_checked: report.config_checked,
                events_included: report.events_included,
                artifacts: report
                    .artifacts
                    .iter()
                    .map(|(name, check)| ArtifactVerdict {
                        name: name.clone(),
                        check: check_name(check),
                    })
                    .collect(),
                job_state: report.job_state,
            })),
            Err(e) => EvidenceVerdict::Invalid(RefusedBundle {
                valid: false,
                reason: e.to_string(),
            }),
        },
    ))
}

/// Whether an evidence archive verifies with the platform's published keys.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EvidenceVerdict {
    Valid(Box<VerifiedBundle>),
    Invalid(RefusedBundle),
}

/// An archive that verifies, and what was checked.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifiedBundle {
    /// Always true.
    valid: bool,
    bundle_id: String,
    job_id: String,
    /// The key whose signature on the manifest verified.
    signed_by: String,
    config_checked: bool,
    events_included: usize,
    artifacts: Vec<ArtifactVerdict>,
    /// The submitter's state at job time, derived again from the bundle's proven events
    /// (null for bundles made before `job-state.json` existed).
    #[schema(value_type = Option<Object>)]
    job_state: Option<quantus_crypto::job_state::StateSummary>,
}

/// An archive that does not verify, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefusedBundle {
    /// Always false.
    valid: bool,
    reason: String,
}

/// One artifact's check: `verified`, `not included` or `purged by policy <policy>`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactVerdict {
    name: String,
    check: String,
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
