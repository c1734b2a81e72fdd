//! Log checkpoints and Merkle proofs: `/v1/audit/checkpoints`, `/v1/audit/proofs/inclusion`,
//! `/v1/audit/proofs/consistency`. Hashes are base64, as in the checkpoint notes.
//!
//! The same tree for tiles clients (C2SP tlog-tiles, prefix `/v1/audit/log`): `checkpoint`
//! (the latest signed note) and `tile/<L>/<N>[.p/<W>]`, `tile/entries/<N>[.p/<W>]`, so an
//! auditor's own tlog client can compute and check any proof itself.
//!
//! `/v1/audit/exports`: a tenant's events in a time range as a signed archive
//! (`quantus_commands::export`), streamed.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use quantus_crypto::tiles::{self, TilePath};
use quantus_domain::audit::checkpoint::LogCheckpointSigned;
use quantus_domain::schema::PLATFORM_TENANT;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::problem::ApiQuery;
use crate::write::context;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit/checkpoints", get(list).post(sign))
        .route("/audit/proofs/inclusion", get(inclusion))
        .route("/audit/proofs/consistency", get(consistency))
        .route("/audit/log/checkpoint", get(log_checkpoint))
        .route("/audit/log/tile/{*path}", get(log_tile))
        .route("/audit/exports", get(export))
        .route(
            "/audit/verifications",
            axum::routing::post(crate::verification::verify),
        )
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
    responses((status = 200, body = CheckpointPage)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<CheckpointQuery>,
) -> Result<Json<CheckpointPage>, Problem> {
    principal.require("events:read")?;
    let limit = crate::paging::limit(q.limit)?;
    let items = state
        .checkpoints
        .list(q.after_size.unwrap_or(0), limit)
        .await?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|c| c.checkpoint.tree_size))
        .flatten();
    let sizes = items.iter().map(|c| c.checkpoint.tree_size);
    let (from, to) = (sizes.clone().min().unwrap_or(0), sizes.max().unwrap_or(0));
    let cosignatures = state
        .checkpoints
        .cosignatures()
        .between(from, to)
        .await
        .map_err(quantus_commands::CommandError::from)?;
    let items = items
        .into_iter()
        .map(|c| {
            let cosignatures = cosignatures
                .iter()
                .filter(|s| s.tree_size == c.checkpoint.tree_size)
                .map(|s| CosignatureView {
                    witness: s.witness.clone(),
                    cosigned_at: s.cosigned_at,
                    line: s.line.clone(),
                })
                .collect();
            CheckpointView {
                checkpoint: c.checkpoint.into(),
                position: c.position,
                cosignatures,
            }
        })
        .collect();
    Ok(Json(CheckpointPage {
        items,
        next_after_size: next,
    }))
}

/// A signed checkpoint of the log's Merkle tree.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedCheckpoint {
    /// The number of log positions covered: events 1..=tree_size.
    tree_size: u64,
    /// The Merkle tree head, lower-case hex.
    root_hash: String,
    /// The C2SP signed note (origin, size, base64 root, signature line).
    note: String,
    /// The checkpoint key that signed it.
    kid: String,
}

impl From<LogCheckpointSigned> for SignedCheckpoint {
    fn from(c: LogCheckpointSigned) -> Self {
        Self {
            tree_size: c.tree_size,
            root_hash: c.root_hash,
            note: c.note,
            kid: c.kid,
        }
    }
}

/// A checkpoint, where its event is in the log, and the witnesses' cosignatures of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    #[serde(flatten)]
    checkpoint: SignedCheckpoint,
    position: u64,
    /// The witnesses' (C2SP tlog-cosignature) signature lines for this note.
    cosignatures: Vec<CosignatureView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CosignatureView {
    witness: String,
    cosigned_at: DateTime<Utc>,
    line: String,
}

/// A page of checkpoints, by tree size.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointPage {
    items: Vec<CheckpointView>,
    /// Pass as `after_size` for the next page; null on the last page.
    next_after_size: Option<u64>,
}

/// A checkpoint signing that found nothing new to sign.
#[derive(Debug, Serialize, ToSchema)]
pub struct NothingSigned {
    /// Always false.
    signed: bool,
}

/// Signs a checkpoint now (the scheduler also does, every N events or T seconds).
#[utoipa::path(post, path = "/v1/audit/checkpoints", tag = "audit",
    responses((status = 201, body = SignedCheckpoint, description = "the new checkpoint"), (status = 200, body = NothingSigned, description = "nothing new to checkpoint")),
    security(("bearer" = [])))]
pub async fn sign(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require("keys:manage")?;
    let ctx = context(&principal, &headers, PLATFORM_TENANT);
    Ok(match state.checkpoints.sign_now(&ctx).await? {
        Some(c) => (StatusCode::CREATED, Json(SignedCheckpoint::from(c))).into_response(),
        None => Json(NothingSigned { signed: false }).into_response(),
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
    responses((status = 200, body = InclusionProof), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, Problem> {
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
    Ok(Json(InclusionProof {
        position,
        leaf_index: position - 1,
        tree_size: size,
        leaf_hash: b64(&leaf),
        root_hash: b64(&root),
        inclusion_path: path.iter().map(b64).collect(),
    }))
}

/// An event's inclusion in a tree of `tree_size` events (RFC 9162 §2.1.3); hashes base64.
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionProof {
    position: u64,
    /// `position - 1`: the tree's leaves count from 0.
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: String,
    root_hash: String,
    inclusion_path: Vec<String>,
}

/// That the tree of `new_size` events extends the one of `old_size` (RFC 9162 §2.1.4);
/// hashes base64.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyProof {
    old_size: u64,
    new_size: u64,
    old_root: String,
    new_root: String,
    consistency_path: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[utoipa::path(get, path = "/v1/audit/proofs/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof), (status = 404, body = Problem, description = "the log is shorter than new_size"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, Problem> {
    principal.require("events:read")?;
    let (old_root, new_root, path) = state.checkpoints.consistency(q.from, q.to).await?;
    Ok(Json(ConsistencyProof {
        old_size: q.from,
        new_size: q.to,
        old_root: b64(&old_root),
        new_root: b64(&new_root),
        consistency_path: path.iter().map(b64).collect(),
    }))
}

/// The latest signed checkpoint as a C2SP signed note (tlog-tiles `<prefix>/checkpoint`), with
/// the cosignatures witnesses gave it appended as further signature lines.
#[utoipa::path(get, path = "/v1/audit/log/checkpoint", tag = "audit",
    responses((status = 200, description = "the signed note (text/plain)", content_type = "text/plain", body = String),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn log_checkpoint(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Problem> {
    principal.require("events:read")?;
    let latest = state
        .checkpoints
        .latest()
        .await?
        .ok_or_else(|| Problem::not_found("no checkpoint yet"))?;
    // Checkpoints signed before the tiles existed: their tiles are grown on first request.
    state
        .checkpoints
        .tiles()
        .grow_to(latest.checkpoint.tree_size)
        .await
        .map_err(quantus_commands::CommandError::from)?;
    let mut note = latest.checkpoint.note;
    for c in state
        .checkpoints
        .cosignatures()
        .of(latest.checkpoint.tree_size)
        .await
        .map_err(quantus_commands::CommandError::from)?
    {
        note.push_str(&c.line);
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        note,
    )
        .into_response())
}

/// One tile of the log's Merkle tree, or one bundle of its entries (each entry is the 32 bytes
/// of an event's chained hash, after a big-endian 2-byte length, as tlog-tiles frames them).
#[utoipa::path(get, path = "/v1/audit/log/tile/{path}", tag = "audit",
    params(("path" = String, Path, description = "`<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, N in x-prefixed groups of three digits")),
    responses((status = 200, description = "the tile's hashes, 32 bytes each", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn log_tile(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(path): Path<String>,
) -> Result<Response, Problem> {
    principal.require("events:read")?;
    let absent = || Problem::not_found(format!("no tile {path}"));
    let tiles = state.checkpoints.tiles();
    let body = match tiles::parse_path(&path).ok_or_else(absent)? {
        TilePath::Hashes(tile) => {
            let hashes = tiles
                .tile(tile.level, tile.index)
                .await
                .map_err(quantus_commands::CommandError::from)?
                .ok_or_else(absent)?;
            // A full tile only once it is full; a partial one as a prefix of what is stored.
            let hashes = hashes.get(..tile.width as usize).ok_or_else(absent)?;
            hashes.concat()
        }
        TilePath::Entries { index, width } => {
            let first = index.checked_mul(tiles::WIDTH).ok_or_else(absent)?;
            let last = first + width;
            let size = tiles
                .size()
                .await
                .map_err(quantus_commands::CommandError::from)?;
            if last > size {
                return Err(absent());
            }
            let hashes = state
                .bus
                .repository()
                .event_hashes_between(first, last)
                .await
                .map_err(quantus_commands::CommandError::from)?;
            let mut body = Vec::with_capacity(hashes.len() * 34);
            for h in hashes {
                body.extend_from_slice(&(h.len() as u16).to_be_bytes());
                body.extend_from_slice(&h);
            }
            body
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            // Tiles never change once served at a width (they only grow, as other paths).
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// The organization whose events are exported.
    tenant: String,
    /// Events appended at or after this instant (RFC 3339).
    from: String,
    /// Events appended before this instant (RFC 3339); at most 366 days after `from`.
    to: String,
}

fn instant(name: &str, value: &str) -> Result<chrono::DateTime<chrono::Utc>, Problem> {
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            Problem::bad_request(format!(
                "{name} must be an RFC 3339 instant such as 2026-01-31T09:00:00Z"
            ))
        })
}

/// The platform's administrators and auditors: they read every tenant's part of the log.
pub(crate) fn reads_every_tenant(principal: &Principal) -> bool {
    use quantus_domain::identity::Role;
    principal.organization == PLATFORM_TENANT
        && (principal.roles.contains(&Role::PlatformAdmin)
            || principal.roles.contains(&Role::Auditor))
}

/// Who may export a tenant's trail: the platform's administrators and auditors for any
/// tenant, an organization's owners and administrators for their own. Another tenant is as
/// absent as one that does not exist (404).
fn may_export(principal: &Principal, tenant: &str) -> Result<(), Problem> {
    use quantus_domain::identity::Role;
    if reads_every_tenant(principal) {
        return Ok(());
    }
    if principal.organization != tenant {
        return Err(Problem::not_found(format!("no organization {tenant}")));
    }
    if principal.roles.contains(&Role::Owner) || principal.roles.contains(&Role::Admin) {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "not-an-administrator",
        "Not an administrator",
        "exporting the organization's audit trail needs its owner or admin role",
    ))
}

/// A signed compliance export: the tenant's events appended in `[from, to)`, each with its
/// inclusion proof in a signed checkpoint, the key set, and a signed manifest, as one tar
/// archive (format: docs/event-log.md), streamed. Check it with `quantus audit verify-export`.
/// Personal data stays sealed as it is in the log.
#[utoipa::path(get, path = "/v1/audit/exports", tag = "audit", params(ExportQuery),
    responses((status = 200, description = "a tar archive: keys.json, checkpoint.note, events/NNNNNN.jsonl, manifest.json", content_type = "application/x-tar", body = Vec<u8>),
        (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, Problem> {
    principal.require("events:read")?;
    may_export(&principal, &q.tenant)?;
    let from = instant("from", &q.from)?;
    let to = instant("to", &q.to)?;
    let ctx = context(&principal, &headers, &q.tenant);
    let plan = state.exports.plan(&ctx, &q.tenant, from, to).await?;
    let disposition = format!("attachment; filename=\"{}\"", plan.file_name);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let exports = state.exports.clone();
    tokio::spawn(async move {
        if let Err(e) = exports.write(plan, tx).await {
            tracing::warn!(error = %e, "a compliance export broke off");
            let _ = failed_tx.send(());
        }
    });
    // A failure after the headers went out can only end the body early; the stream then
    // ends in an error so the client sees a broken transfer, not a short archive.
    let body = futures::stream::unfold((rx, Some(failed_rx)), |(mut rx, failed)| async move {
        match rx.recv().await {
            Some(bytes) => Some((Ok::<_, std::io::Error>(bytes), (rx, failed))),
            None => match failed {
                Some(f) => f.await.ok().map(|()| {
                    (
                        Err(std::io::Error::other("the export broke off")),
                        (rx, None),
                    )
                }),
                None => None,
            },
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
