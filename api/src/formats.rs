//! The platform's signed documents as the OpenAPI document describes them
//! (docs/license-format.md). The routes serve these documents as the exact canonical bytes
//! their signatures cover (`quantus_crypto::document::SignedDocument`), never re-serialized,
//! so these types only describe those bodies to clients and nothing builds them.

#![allow(dead_code)]

use utoipa::ToSchema;

/// A signature over a document's canonical payload.
#[derive(ToSchema)]
pub struct DocumentSignature {
    kid: String,
    alg: String,
    /// base64url without padding.
    sig: String,
}

/// A signed licence file: its payload and one signature per signing algorithm in force.
#[derive(ToSchema)]
pub struct SignedLicenseFile {
    payload: LicenseFilePayload,
    signatures: Vec<DocumentSignature>,
}

/// The signed content of a licence file.
#[derive(ToSchema)]
pub struct LicenseFilePayload {
    format: String,
    license_id: String,
    organization_id: String,
    product: String,
    edition: String,
    features: Vec<String>,
    /// Quotas and limits by name.
    limits: std::collections::BTreeMap<String, i64>,
    max_activations: u32,
    /// When set, the licence is valid only on the machine with this fingerprint.
    machine_fingerprint: Option<String>,
    issued_at: chrono::DateTime<chrono::Utc>,
    not_before: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
    /// How long after `expires_at` the licence still works (with a warning).
    grace_period_seconds: u64,
    issuer: String,
}

/// A signed certificate revocation list.
#[derive(ToSchema)]
pub struct SignedCrl {
    payload: CrlPayload,
    signatures: Vec<DocumentSignature>,
}

/// The signed content of a revocation list.
#[derive(ToSchema)]
pub struct CrlPayload {
    format: String,
    issuer: String,
    /// Never decreases: the licences read model's highest applied log position.
    serial: u64,
    issued_at: chrono::DateTime<chrono::Utc>,
    next_update: chrono::DateTime<chrono::Utc>,
    entries: Vec<CrlEntry>,
}

#[derive(ToSchema)]
pub struct CrlEntry {
    license_id: String,
    reason: String,
    revoked_at: chrono::DateTime<chrono::Utc>,
}

/// A signed evidence manifest.
#[derive(ToSchema)]
pub struct SignedManifest {
    payload: Manifest,
    signatures: Vec<DocumentSignature>,
}

/// What an evidence bundle vouches for: the job, its artifacts' digests, and its events
/// with their inclusion in a signed checkpoint.
#[derive(ToSchema)]
pub struct Manifest {
    format: String,
    bundle_id: String,
    issuer: String,
    created_at: chrono::DateTime<chrono::Utc>,
    job_id: String,
    organization_id: String,
    /// The job as recorded: backend, workload, status, result, requester.
    #[schema(value_type = Object)]
    job: serde_json::Value,
    /// SHA-256 (hex) of the configuration snapshot's canonical JSON.
    config_sha256: String,
    artifacts: Vec<ManifestArtifact>,
    events: Vec<ManifestEvent>,
    checkpoint: ManifestCheckpoint,
    /// SHA-256 (hex) of `job-state.json`; absent in bundles made before it existed.
    job_state_sha256: Option<String>,
}

#[derive(ToSchema)]
pub struct ManifestArtifact {
    name: String,
    sha256: String,
    size: u64,
    media_type: String,
    /// Set when retention removed the bytes; the digest still says what they were.
    purged_by: Option<String>,
}

#[derive(ToSchema)]
pub struct ManifestEvent {
    position: u64,
    event_id: String,
    event_type: String,
    /// The event's chained hash (hex).
    hash: String,
    /// Audit path (base64) of the event in the checkpoint's tree.
    inclusion_path: Vec<String>,
}

#[derive(ToSchema)]
pub struct ManifestCheckpoint {
    /// The C2SP signed note.
    note: String,
    tree_size: u64,
    /// Hex.
    root_hash: String,
}

/// A Stripe event as Stripe posts it to a webhook (the fields this endpoint reads; Stripe
/// sends more). The body is checked byte for byte against `Stripe-Signature` before it is
/// read, so it is taken as the raw bytes Stripe signed.
#[derive(ToSchema)]
pub struct StripeEvent {
    /// `evt_...`
    id: String,
    /// e.g. `invoice.paid`, `invoice.payment_failed`.
    r#type: String,
    /// `{object: {...}}`: the object the event is about.
    #[schema(value_type = Object)]
    data: (),
}
