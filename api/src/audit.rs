//! Log checkpoints and Merkle proofs: `/v1/audit/checkpoints`, `/v1/audit/proofs/inclusion`,
//! `/v1/audit/proofs/consistency`. Hashes are base64, as in the checkpoint notes.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use quantus_domain::schema::PLATFORM_TENANT;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::problem::ApiQuery;
use crate::write::context;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit/checkpoints", get(list).post(sign))
        .route("/audit/proofs/inclusion", get(inclusion))
        .route("/audit/proofs/consistency", get(consistency))
}

fn b64(h: &[u8; 32]) -> String {
    STANDARD.encode(h)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CheckpointQuery {
    /// Only checkpoints of larger trees.
    after_size: Option<u64>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/audit/checkpoints", tag = "audit", params(CheckpointQuery),
    responses((status = 200, description = "{items: [{tree_size, root_hash, note, kid, position}], next_after_size}")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<CheckpointQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    principal.require("events:read")?;
    let limit = crate::paging::limit(q.limit)?;
    let items = state
        .checkpoints
        .list(q.after_size.unwrap_or(0), limit)
        .await?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|c| c.checkpoint.tree_size))
        .flatten();
    let items: Vec<serde_json::Value> = items
        .into_iter()
        .map(|c| {
            let mut v = serde_json::to_value(&c.checkpoint).unwrap_or_default();
            v["position"] = c.position.into();
            v
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "items": items, "next_after_size": next }),
    ))
}

/// Signs a checkpoint now (the scheduler also does, every N events or T seconds).
#[utoipa::path(post, path = "/v1/audit/checkpoints", tag = "audit",
    responses((status = 201, description = "the new checkpoint"), (status = 200, description = "nothing new to checkpoint")),
    security(("bearer" = [])))]
pub async fn sign(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("keys:manage")?;
    let ctx = context(&principal, &headers, PLATFORM_TENANT);
    Ok(match state.checkpoints.sign_now(&ctx).await? {
        Some(c) => (StatusCode::CREATED, Json(c)).into_response(),
        None => Json(serde_json::json!({ "signed": false })).into_response(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    event_id: String,
    /// The tree size (a checkpoint's); default: the latest checkpoint's.
    size: Option<u64>,
}

#[utoipa::path(get, path = "/v1/audit/proofs/inclusion", tag = "audit", params(InclusionQuery),
    responses((status = 200, description = "{position, leaf_index, tree_size, leaf_hash, root_hash, inclusion_path}"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    principal.require("events:read")?;
    let repo = state.bus.repository();
    let (position, tenant) = repo
        .locate_event(&q.event_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no event {}", q.event_id)))?;
    principal.tenant(&tenant, &format!("event {}", q.event_id))?;
    let size = match q.size {
        Some(s) => s,
        None => state
            .checkpoints
            .latest()
            .await?
            .map(|c| c.checkpoint.tree_size)
            .ok_or_else(|| Problem::not_found("no checkpoint yet"))?,
    };
    if position > size {
        return Err(Problem::not_found(format!(
            "event {} (position {position}) is not in a tree of {size} events",
            q.event_id
        )));
    }
    let (leaf, path, root) = state.checkpoints.inclusion(position, size).await?;
    Ok(Json(serde_json::json!({
        "position": position,
        "leaf_index": position - 1,
        "tree_size": size,
        "leaf_hash": b64(&leaf),
        "root_hash": b64(&root),
        "inclusion_path": path.iter().map(b64).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[utoipa::path(get, path = "/v1/audit/proofs/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, description = "{old_size, new_size, old_root, new_root, consistency_path}"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    principal.require("events:read")?;
    let (old_root, new_root, path) = state.checkpoints.consistency(q.from, q.to).await?;
    Ok(Json(serde_json::json!({
        "old_size": q.from,
        "new_size": q.to,
        "old_root": b64(&old_root),
        "new_root": b64(&new_root),
        "consistency_path": path.iter().map(b64).collect::<Vec<_>>(),
    })))
}
