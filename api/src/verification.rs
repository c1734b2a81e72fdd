//! `POST /v1/audit/verifications`: the auditor's checks over a bounded range of log positions,
//! run now against the store: each event's hash over its canonical form, its schema and form,
//! each aggregate's hash chain (continued from its last event before the range), no position
//! missing ([`quantus_domain::audit::range`], the checks of `quantus audit verify`), and the
//! range's Merkle leaves against the newest signed checkpoint, whose signature is checked with
//! the platform's published checkpoint keys.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use quantus_crypto::checkpoint::open as open_note;
use quantus_domain::audit::range::{RangeAudit, RangeBreak};
use quantus_domain::audit::{AuditBreak, BreakKind};
use quantus_infra::InfraError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::problem::ApiJson;
use crate::{AppState, Problem};

/// Positions one request may verify: a few seconds of work (the offline auditor checks some
/// ten thousand events a second per core); a longer stretch is several requests, or
/// `quantus audit verify` over the whole log.
pub const MAX_RANGE: u64 = 100_000;

/// Events read per query.
const BATCH: u64 = 5000;

/// A range of log positions to verify, both ends included.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeRequest {
    /// The first position checked (at least 1).
    pub from: u64,
    /// The last position checked, included: at most the log's head, and at most 100,000
    /// positions after `from`.
    pub to: u64,
}

/// What a range verification found.
#[derive(Debug, Serialize, ToSchema)]
pub struct RangeVerification {
    /// Every check passed.
    pub verified: bool,
    pub from: u64,
    /// Included.
    pub to: u64,
    /// Events checked (up to the failure, if there is one).
    pub events: u64,
    /// Aggregates with an event among them.
    pub aggregates: u64,
    /// The signed checkpoint the range was checked against: the newest one; null when no
    /// checkpoint covers any position of the range yet.
    pub checkpoint: Option<CheckedAgainst>,
    /// When the range reaches past the newest checkpoint: the first position no signed
    /// checkpoint covers yet. From there on the hashes, schemas and links were checked, but
    /// no signature vouches for the positions.
    pub unsigned_from: Option<u64>,
    /// How long the checks took.
    pub duration_ms: u64,
    /// The first problem found; null when verified.
    pub failure: Option<RangeFailure>,
    /// The outcome in plain words.
    pub summary: String,
}

/// The signed checkpoint a range was checked against.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckedAgainst {
    /// Events 1..=tree_size are in its tree.
    pub tree_size: u64,
    /// Its Merkle tree head, lower-case hex.
    pub root_hash: String,
    /// The checkpoint key that signed it (checked against the published key set).
    pub kid: String,
}

/// What broke first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// An event's stored hash is not the hash of its canonical form: it was altered.
    HashMismatch,
    /// An event's payload does not match its type's schema.
    Schema,
    /// An event breaks a rule of the envelope (event id, tenant, hash encoding).
    Form,
    /// An event does not continue its aggregate's hash chain (`sequence` or `prev_hash`).
    BrokenLink,
    /// A position holds two events, or an aggregate's events are out of order.
    Position,
    /// A position of the range holds no event: it was removed.
    MissingPosition,
    /// A stored event cannot be read as an envelope.
    Unreadable,
    /// The range's events are not the ones the signed checkpoint's tree holds.
    NotInSignedTree,
    /// The checkpoint's signature does not verify with the published checkpoint keys.
    CheckpointSignature,
}

/// The first problem a range verification found.
#[derive(Debug, Serialize, ToSchema)]
pub struct RangeFailure {
    pub kind: FailureKind,
    /// The position it is at (null when it is the checkpoint's).
    pub position: Option<u64>,
    pub event_id: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub sequence: Option<u64>,
    /// What broke, in plain words.
    pub reason: String,
}

impl RangeFailure {
    fn new(kind: FailureKind, position: Option<u64>, reason: String) -> Self {
        Self {
            kind,
            position,
            event_id: None,
            aggregate_type: None,
            aggregate_id: None,
            sequence: None,
            reason,
        }
    }
}

impl From<AuditBreak> for RangeFailure {
    fn from(b: AuditBreak) -> Self {
        Self {
            kind: match b.kind {
                BreakKind::HashMismatch => FailureKind::HashMismatch,
                BreakKind::Schema => FailureKind::Schema,
                BreakKind::Form => FailureKind::Form,
                BreakKind::BrokenLink => FailureKind::BrokenLink,
                BreakKind::Position => FailureKind::Position,
            },
            position: Some(b.position),
            event_id: Some(b.event_id.to_string()),
            aggregate_type: Some(b.aggregate_type),
            aggregate_id: Some(b.aggregate_id),
            sequence: Some(b.sequence),
            reason: b.reason,
        }
    }
}

impl From<RangeBreak> for RangeFailure {
    fn from(b: RangeBreak) -> Self {
        match b {
            RangeBreak::Event(b) => b.into(),
            RangeBreak::Missing {
                position,
                next_present,
            } => RangeFailure::new(
                FailureKind::MissingPosition,
                Some(position),
                match next_present {
                    Some(next) => format!(
                        "no event at position {position} (the next one present is at {next}): it was removed from the log"
                    ),
                    None => format!(
                        "no event at position {position} or after it in the range: it was removed from the log"
                    ),
                },
            ),
        }
    }
}

/// Who may verify any part of the log: the platform's administrators and auditors (the log
/// holds every tenant's events).
fn may_verify(principal: &Principal) -> Result<(), Problem> {
    principal.require("events:read")?;
    if crate::audit::reads_every_tenant(principal) {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "not-a-platform-auditor",
        "Not a platform auditor",
        "verifying the log needs the platform's admin or auditor role: the log holds every organization's events",
    ))
}

/// Verifies positions `from..=to` of the log now. A failed check is an answer (200 with
/// `verified: false` and the first failure), not an error.
#[utoipa::path(post, path = "/v1/audit/verifications", tag = "audit", request_body = RangeRequest,
    responses((status = 200, body = RangeVerification), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(range): ApiJson<RangeRequest>,
) -> Result<Json<RangeVerification>, Problem> {
    may_verify(&principal)?;
    let RangeRequest { from, to } = range;
    if from == 0 {
        return Err(Problem::bad_request(
            "from must be a log position: 1 or more",
        ));
    }
    if to < from {
        return Err(Problem::bad_request(format!(
            "to ({to}) must not be before from ({from})"
        )));
    }
    if to - from >= MAX_RANGE {
        return Err(Problem::bad_request(format!(
            "a verification covers at most {MAX_RANGE} positions; {from} to {to} are {}: split the range",
            to - from + 1
        )));
    }
    let head = state.db.head_position().await?;
    if to > head {
        return Err(Problem::bad_request(format!(
            "to ({to}) is past the end of the log, which ends at position {head}"
        )));
    }
    let started = Instant::now();
    let (checks, mut failure) = check_events(&state, from, to).await?;
    let summary = checks.summary();
    let mut checkpoint = None;
    let mut unsigned_from = None;
    if failure.is_none() {
        let latest = state.checkpoints.latest().await?;
        let size = latest.as_ref().map_or(0, |c| c.checkpoint.tree_size);
        if size < to {
            unsigned_from = Some(from.max(size + 1));
        }
        if let Some(c) = latest.filter(|_| from <= size) {
            failure =
                check_signed(&state, &c.checkpoint, from, to.min(size), checks.leaves()).await?;
            checkpoint = Some(CheckedAgainst {
                tree_size: size,
                root_hash: c.checkpoint.root_hash,
                kid: c.checkpoint.kid,
            });
        }
    }
    let summary_words = words(from, to, &summary, &checkpoint, unsigned_from, &failure);
    Ok(Json(RangeVerification {
        verified: failure.is_none(),
        from,
        to,
        events: summary.events,
        aggregates: summary.aggregates,
        checkpoint,
        unsigned_from,
        duration_ms: started.elapsed().as_millis() as u64,
        failure,
        summary: summary_words,
    }))
}

/// Reads positions `from..=to` in order through the range checks; the first failure.
async fn check_events(
    state: &AppState,
    from: u64,
    to: u64,
) -> Result<(RangeAudit, Option<RangeFailure>), Problem> {
    let repo = state.bus.repository();
    let mut checks = RangeAudit::new(from, to);
    let mut after = from - 1;
    while after < to {
        let limit = (to - after).min(BATCH) as u32;
        let records = match repo.read_log(after, limit).await {
            Ok(records) => records,
            Err(InfraError::Corrupt(reason)) => {
                let failure = RangeFailure::new(
                    FailureKind::Unreadable,
                    Some(after + 1),
                    format!("an event after position {after} cannot be read: {reason}"),
                );
                return Ok((checks, Some(failure)));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(last) = records.last().map(|r| r.position) else {
            break;
        };
        for r in records.iter().take_while(|r| r.position <= to) {
            let e = &r.envelope;
            if checks.needs_predecessor(e) {
                // Absent (removed) predecessors leave the chain unstarted: the link check
                // then names this event.
                if let Some(p) = repo
                    .aggregate_event(&e.aggregate_type, &e.aggregate_id, e.sequence - 1)
                    .await?
                {
                    checks.continue_after(p.position, &p.envelope);
                }
            }
            if let Err(b) = checks.observe(r.position, e) {
                return Ok((checks, Some(b.into())));
            }
        }
        after = last;
    }
    let failure = checks.finish().err().map(RangeFailure::from);
    Ok((checks, failure))
}

/// Checks the checkpoint's signature with the published keys, and that the leaves of positions
/// `from..=last` (recomputed from the events) with the stored tree around them hash to its root.
async fn check_signed(
    state: &AppState,
    c: &quantus_domain::audit::checkpoint::LogCheckpointSigned,
    from: u64,
    last: u64,
    leaves: &[[u8; 32]],
) -> Result<Option<RangeFailure>, Problem> {
    let size = c.tree_size;
    let keys = state.licensing.key_set().await?;
    let signed = match open_note(&c.note, &keys, chrono::Utc::now()) {
        Ok(opened) if opened.size == size && hex::encode(opened.root) == c.root_hash => opened,
        Ok(opened) => {
            return Ok(Some(RangeFailure::new(
                FailureKind::CheckpointSignature,
                None,
                format!(
                    "the checkpoint recorded as size {size} root {} signs size {} root {}",
                    c.root_hash,
                    opened.size,
                    hex::encode(opened.root)
                ),
            )))
        }
        Err(e) => {
            return Ok(Some(RangeFailure::new(
                FailureKind::CheckpointSignature,
                None,
                format!(
                    "the checkpoint of {size} events does not verify with the platform's published checkpoint keys: {e}"
                ),
            )))
        }
    };
    let leaves = &leaves[..(last - from + 1) as usize];
    let root = state.checkpoints.root_over(size, from, leaves).await?;
    if root == signed.root {
        return Ok(None);
    }
    // Name the first leaf that differs from the stored tree; if none does, the stored tree
    // itself was rewritten around the range.
    let stored = state
        .checkpoints
        .stored_leaves(size, from, leaves.len() as u64)
        .await?;
    let Some(i) = leaves.iter().zip(&stored).position(|(a, b)| a != b) else {
        return Ok(Some(RangeFailure::new(
            FailureKind::NotInSignedTree,
            None,
            format!(
                "positions {from} to {last} hash to a tree whose root is not the signed root {}: the stored tree was altered",
                c.root_hash
            ),
        )));
    };
    let position = from + i as u64;
    let mut failure = RangeFailure::new(
        FailureKind::NotInSignedTree,
        Some(position),
        format!(
            "the event at position {position} is not the one the signed checkpoint of {size} events holds: its hash was changed and its chain recomputed"
        ),
    );
    if let Some((t, id)) = state.bus.repository().aggregate_at(position).await? {
        failure.aggregate_type = Some(t);
        failure.aggregate_id = Some(id);
    }
    Ok(Some(failure))
}

/// The outcome in a sentence or two.
fn words(
    from: u64,
    to: u64,
    summary: &quantus_domain::audit::range::RangeSummary,
    checkpoint: &Option<CheckedAgainst>,
    unsigned_from: Option<u64>,
    failure: &Option<RangeFailure>,
) -> String {
    if let Some(f) = failure {
        return match f.position {
            Some(p) => format!("Broken at position {p}: {}.", f.reason),
            None => format!("Broken: {}.", f.reason),
        };
    }
    let mut out = format!(
        "Positions {from} to {to} are intact: {} events of {} aggregates, each hash, schema and chain link checked.",
        summary.events, summary.aggregates
    );
    if let Some(c) = checkpoint {
        out.push_str(&format!(
            " Positions {from} to {} are in the signed checkpoint of {} events (key {}).",
            to.min(c.tree_size),
            c.tree_size,
            c.kid
        ));
    }
    if let Some(u) = unsigned_from {
        out.push_str(&format!(
            " Positions {u} to {to} are not under a signed checkpoint yet."
        ));
    }
    out
}
