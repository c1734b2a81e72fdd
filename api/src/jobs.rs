//! The evidence plane's REST resources: jobs and their artifacts.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use quantus_commands::evidence::NewJob;
use quantus_domain::evidence::job::{JobCommand, JobCompleted};
use quantus_projections::jobs::JobRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::paging::Page;
use crate::problem::ApiJson;
use crate::write::{accepted, accepted_with, context, expected_version, optional_json, refusal};
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(submit).get(list))
        .route("/jobs/{id}", get(show))
        .route("/jobs/{id}/{action}", post(transition))
        .route("/jobs/{id}/artifacts/{name}", get(download).put(upload))
}

fn job_id(id: &str) -> Result<String, Problem> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found(format!("no job {id:?}")))
}

/// The job, if the caller may see its organization's data.
async fn job_in_tenant(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(quantus_domain::evidence::job::Job, u64), Problem> {
    let (job, version) = state.evidence.job(id).await?;
    let org = job
        .submitted
        .as_ref()
        .map(|s| s.organization_id.as_str())
        .unwrap_or_default();
    principal.tenant(org, &format!("job {id}"))?;
    Ok((job, version))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    pub organization_id: String,
    /// The quantum or HPC backend it runs on.
    pub backend: String,
    /// The job's class, which retention rules name (default `default`).
    #[serde(default)]
    pub class: Option<String>,
    /// What runs (integers only: send decimals as strings).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub workload: serde_json::Value,
    /// The configuration snapshot; stored content-addressed, its SHA-256 recorded.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

#[utoipa::path(post, path = "/v1/jobs", tag = "evidence", request_body = SubmitJob,
    responses((status = 201, body = crate::write::CommandAccepted), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SubmitJob>,
) -> Result<Response, Problem> {
    principal.require("jobs:write")?;
    principal.tenant(
        &body.organization_id,
        &format!("organization {}", body.organization_id),
    )?;
    let id = Uuid::now_v7().to_string();
    let ctx = context(&principal, &headers, &body.organization_id);
    let new = NewJob {
        organization_id: body.organization_id,
        backend: body.backend,
        job_class: body.class.unwrap_or_default(),
        workload: if body.workload.is_null() {
            serde_json::json!({})
        } else {
            body.workload
        },
        config: if body.config.is_null() {
            serde_json::json!({})
        } else {
            body.config
        },
        requested_by: principal.actor.id.clone(),
    };
    // Checked first, then admitted against the organization's hard quotas (which counts it),
    // then recorded: quota is only taken for a job that will be accepted.
    state.evidence.check(&new)?;
    state
        .portal
        .admit_job(&ctx, &new.organization_id, &id)
        .await?;
    let outcome = state.evidence.submit(&ctx, &id, new).await?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/jobs/{id}")),
    ))
}

/// A job as its aggregate stands: what was submitted, its result, its artifacts.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    id: String,
    /// `submitted`, `running`, `completed`, `failed` or `cancelled`.
    status: String,
    organization_id: Option<String>,
    backend: Option<String>,
    class: Option<String>,
    #[schema(value_type = Option<Object>)]
    workload: Option<serde_json::Value>,
    /// SHA-256 (hex) of the configuration snapshot's canonical JSON.
    config_digest: Option<String>,
    requested_by: Option<String>,
    /// Set once the job completed.
    result: Option<JobResult>,
    /// Set when the job failed.
    error: Option<String>,
    artifacts: Vec<ArtifactView>,
    version: u64,
}

/// A completed job's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResult {
    #[schema(value_type = Object)]
    result_summary: serde_json::Value,
    metrics: BTreeMap<String, i64>,
}

impl From<JobCompleted> for JobResult {
    fn from(c: JobCompleted) -> Self {
        Self {
            result_summary: c.result_summary,
            metrics: c.metrics,
        }
    }
}

/// An artifact of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactView {
    name: String,
    /// SHA-256 of the bytes, lower-case hex.
    sha256: String,
    size: u64,
    media_type: String,
    /// The retention policy that removed the bytes, once one did.
    purged_by: Option<String>,
}

fn view(id: &str, job: quantus_domain::evidence::job::Job, version: u64) -> JobView {
    let artifacts = job
        .artifacts
        .into_values()
        .map(|a| ArtifactView {
            name: a.stored.name,
            sha256: a.stored.sha256,
            size: a.stored.size,
            media_type: a.stored.media_type,
            purged_by: a.purged_by,
        })
        .collect();
    let s = job.submitted;
    JobView {
        id: id.to_owned(),
        status: job.status.name().to_owned(),
        organization_id: s.as_ref().map(|s| s.organization_id.clone()),
        backend: s.as_ref().map(|s| s.backend.clone()),
        class: s.as_ref().map(|s| s.job_class.clone()),
        workload: s.as_ref().map(|s| s.workload.clone()),
        config_digest: s.as_ref().map(|s| s.config_digest.clone()),
        requested_by: s.map(|s| s.requested_by),
        result: job.completed.map(Into::into),
        error: job.error,
        artifacts,
        version,
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "evidence", operation_id = "show_job", params(("id" = String, Path)),
    responses((status = 200, body = JobView, description = "the job, its result and artifacts"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("jobs:read")?;
    let id = job_id(&id)?;
    let (job, version) = job_in_tenant(&state, &principal, &id).await?;
    let mut response = Json(view(&id, job, version)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    org: String,
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "evidence",
    params(("org" = String, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query)),
    responses((status = 200, body = Page<JobRowView>)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    crate::problem::ApiQuery(q): crate::problem::ApiQuery<JobList>,
) -> Result<Json<Page<JobRowView>>, Problem> {
    principal.require("jobs:read")?;
    principal.tenant(&q.org, &format!("organization {}", q.org))?;
    let limit = crate::paging::limit(q.limit)?;
    crate::consistency::Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.jobs)
    .await?;
    let rows = quantus_projections::jobs::JobsView::by_organization(
        &state.db.pool,
        &q.org,
        q.after.as_deref(),
        limit,
    )
    .await?;
    Ok(Json(Page::of(
        rows.into_iter().map(JobRowView::from).collect(),
        limit,
        |r| r.id.as_str(),
    )))
}

/// A job as the jobs read model lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobRowView {
    pub id: String,
    pub organization_id: String,
    pub backend: String,
    /// `submitted`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// How many artifacts it has.
    pub artifacts: i64,
    pub submitted_at: String,
    pub updated_at: String,
    pub version: u64,
}

impl From<JobRow> for JobRowView {
    fn from(r: JobRow) -> Self {
        Self {
            id: r.id,
            organization_id: r.organization_id,
            backend: r.backend,
            status: r.status,
            artifacts: r.artifacts,
            submitted_at: r.submitted_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobTransition {
    #[serde(default)]
    #[schema(value_type = Object)]
    result_summary: Option<serde_json::Value>,
    #[serde(default)]
    metrics: Option<std::collections::BTreeMap<String, i64>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/jobs/{id}/{action}", tag = "evidence",
    request_body(content = JobTransition, description = "result_summary and metrics (complete), error (fail), reason (cancel)"),
    params(("id" = String, Path), ("action" = String, Path, description = "start, complete, fail or cancel"), ("If-Match" = Option<String>, Header)),
    responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn transition(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require("jobs:write")?;
    let id = job_id(&id)?;
    let body: JobTransition = optional_json(&headers, &body)?;
    let (job, _) = job_in_tenant(&state, &principal, &id).await?;
    let org = job.submitted.map(|s| s.organization_id).unwrap_or_default();
    let command = match action.as_str() {
        "start" => JobCommand::Start,
        "complete" => JobCommand::Complete(JobCompleted {
            result_summary: body.result_summary.unwrap_or_else(|| serde_json::json!({})),
            metrics: body.metrics.unwrap_or_default(),
        }),
        "fail" => JobCommand::Fail {
            error: body
                .error
                .ok_or_else(|| Problem::unprocessable("error is required"))?,
        },
        "cancel" => JobCommand::Cancel {
            reason: body.reason.unwrap_or_default(),
        },
        _ => return Err(Problem::not_found(format!("no job action {action:?}"))),
    };
    let ctx = context(&principal, &headers, &org);
    let expected = expected_version(&headers)?;
    let outcome = state
        .evidence
        .job_command(&ctx, &id, command, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

/// An artifact as stored, and where its event is in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactUploaded {
    name: String,
    /// SHA-256 of the bytes as the server received them, lower-case hex.
    sha256: String,
    size: u64,
    media_type: String,
    /// The job's version after the upload (also the ETag).
    version: u64,
    /// Log position to pass as `min_position` to read your own write.
    position: u64,
}

/// Streams the body into object storage; the server computes the SHA-256.
#[utoipa::path(put, path = "/v1/jobs/{id}/artifacts/{name}", tag = "evidence",
    params(("id" = String, Path), ("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the artifact; Content-Type is recorded as its media type"),
    responses((status = 201, body = ArtifactUploaded), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    principal.require("jobs:write")?;
    let id = job_id(&id)?;
    let (job, _) = job_in_tenant(&state, &principal, &id).await?;
    let org = job.submitted.map(|s| s.organization_id).unwrap_or_default();
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let ctx = context(&principal, &headers, &org);
    let stream = body.into_data_stream();
    let (stored, outcome) = state
        .evidence
        .store_artifact(&ctx, &id, &name, &media_type, stream)
        .await?;
    let answer = ArtifactUploaded {
        name: stored.name,
        sha256: stored.sha256,
        size: stored.size,
        media_type: stored.media_type,
        version: outcome.version,
        position: outcome.position,
    };
    Ok(accepted_with(
        StatusCode::CREATED,
        answer,
        outcome,
        Some(format!("/v1/jobs/{id}/artifacts/{name}")),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{name}", tag = "evidence",
    params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "the bytes, checked against the recorded SHA-256 (Digest header)"), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, Problem> {
    use base64::Engine as _;
    principal.require("jobs:read")?;
    let id = job_id(&id)?;
    job_in_tenant(&state, &principal, &id).await?;
    let (stored, stream) = state.evidence.read_artifact(&id, &name).await?;
    let body =
        Body::from_stream(stream.map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))));
    let mut response = body.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&stored.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.size));
    // RFC 9530 Repr-Digest: the client can check the bytes itself.
    let digest = base64::engine::general_purpose::STANDARD
        .encode(hex::decode(&stored.sha256).unwrap_or_default());
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{digest}:")) {
        h.insert("repr-digest", v);
    }
    Ok(response)
}

pub fn retention_routes() -> Router<AppState> {
    Router::new()
        .route("/retention/sweep", post(sweep))
        .route("/retention/{org}", get(retention))
        .route(
            "/retention/{org}/rules/{job_class}",
            axum::routing::put(set_rule),
        )
        .route(
            "/retention/{org}/legal-hold",
            post(place_hold).delete(release_hold),
        )
}

/// Retention decisions are an organization administrator's (or the platform's).
fn retention_admin(principal: &Principal, org: &str) -> Result<(), Problem> {
    use quantus_domain::identity::Role;
    principal.require("evidence:write")?;
    principal.tenant(org, &format!("organization {org}"))?;
    if principal.is_platform()
        || principal
            .roles
            .iter()
            .any(|r| matches!(r, Role::Owner | Role::Admin))
    {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "retention is set by an organization's owner or admin",
        ))
    }
}

#[utoipa::path(get, path = "/v1/retention/{org}", tag = "evidence", params(("org" = String, Path)),
    responses((status = 200, body = RetentionView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn retention(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(org): Path<String>,
) -> Result<Json<RetentionView>, Problem> {
    principal.require("jobs:read")?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let (policy, version) = state.evidence.retention(&org).await?;
    Ok(Json(RetentionView {
        organization_id: org,
        rules: policy.rules,
        legal_hold: policy.legal_hold,
        version,
    }))
}

/// An organization's retention policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionView {
    organization_id: String,
    /// Days artifacts are kept, by job class (`*`: every class without a rule of its own).
    rules: BTreeMap<String, u32>,
    /// Why artifacts are held whatever the rules say (null: no hold).
    legal_hold: Option<String>,
    version: u64,
}

/// What a retention sweep did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SweepReport {
    /// How many artifacts it removed.
    purged: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub keep_artifacts_days: u32,
}

#[utoipa::path(put, path = "/v1/retention/{org}/rules/{job_class}", tag = "evidence", request_body = RetentionRule,
    params(("org" = String, Path), ("job_class" = String, Path, description = "a job class, or * for all others")),
    responses((status = 200, body = crate::write::CommandAccepted), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_rule(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((org, job_class)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RetentionRule>,
) -> Result<Response, Problem> {
    use quantus_domain::evidence::retention::{RetentionCommand, RetentionRuleSet};
    retention_admin(&principal, &org)?;
    let ctx = context(&principal, &headers, &org);
    let command = RetentionCommand::SetRule(RetentionRuleSet {
        organization_id: org.clone(),
        job_class,
        keep_artifacts_days: body.keep_artifacts_days,
    });
    let outcome = state
        .evidence
        .retention_command(&ctx, &org, command)
        .await?;
    Ok(accepted(StatusCode::OK, &org, outcome, None))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegalHold {
    pub reason: String,
}

#[utoipa::path(post, path = "/v1/retention/{org}/legal-hold", tag = "evidence", request_body = LegalHold,
    params(("org" = String, Path)),
    responses((status = 200, body = crate::write::CommandAccepted), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn place_hold(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LegalHold>,
) -> Result<Response, Problem> {
    use quantus_domain::evidence::retention::RetentionCommand;
    retention_admin(&principal, &org)?;
    let ctx = context(&principal, &headers, &org);
    let outcome = state
        .evidence
        .retention_command(
            &ctx,
            &org,
            RetentionCommand::PlaceHold {
                reason: body.reason,
            },
        )
        .await?;
    Ok(accepted(StatusCode::OK, &org, outcome, None))
}

#[utoipa::path(delete, path = "/v1/retention/{org}/legal-hold", tag = "evidence", params(("org" = String, Path)),
    responses((status = 200, body = crate::write::CommandAccepted), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn release_hold(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    use quantus_domain::evidence::retention::RetentionCommand;
    retention_admin(&principal, &org)?;
    let ctx = context(&principal, &headers, &org);
    let outcome = state
        .evidence
        .retention_command(&ctx, &org, RetentionCommand::ReleaseHold)
        .await?;
    Ok(accepted(StatusCode::OK, &org, outcome, None))
}

/// Runs the retention sweep now (the scheduler runs it every `QUANTUS_RETENTION_SECONDS`).
#[utoipa::path(post, path = "/v1/retention/sweep", tag = "evidence",
    responses((status = 200, body = SweepReport)),
    security(("bearer" = [])))]
pub async fn sweep(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Json<SweepReport>, Problem> {
    principal.require("keys:manage")?;
    let ctx = context(
        &principal,
        &headers,
        quantus_domain::schema::PLATFORM_TENANT,
    );
    let purged = state.evidence.sweep(&ctx, chrono::Utc::now()).await?;
    Ok(Json(SweepReport { purged }))
}
