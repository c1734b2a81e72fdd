//! Evidence bundles, verifiable offline: a signed manifest (what ran, with what configuration,
//! which artifacts with which digests, and which log events, each proven included in a signed
//! log checkpoint), plus the files an archive carries.
//!
//! [`verify`] needs only the manifest, the files, a trusted key set and the time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, CheckpointError};
use crate::document::{DocumentError, SignedDocument};
use crate::job_state::{JobStateError, StateSummary, JOB_STATE_FILE};
use crate::keys::{Purpose, TrustedKeys};
use crate::merkle::{decode_path, leaf_hash, verify_inclusion, Hash};

pub const EVIDENCE_CONTEXT: &[u8] = b"quantus/evidence/v1";
pub const EVIDENCE_FORMAT: &str = "quantus-evidence/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestArtifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub media_type: String,
    /// Set when retention removed the bytes; the digest still says what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEvent {
    pub position: u64,
    pub event_id: String,
    pub event_type: String,
    /// The event's chained hash (hex): its Merkle leaf data.
    pub hash: String,
    /// Audit path (base64) of the event in the checkpoint's tree.
    pub inclusion_path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCheckpoint {
    /// The C2SP signed note.
    pub note: String,
    pub tree_size: u64,
    /// Hex.
    pub root_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub bundle_id: String,
    pub issuer: String,
    pub created_at: DateTime<Utc>,
    pub job_id: String,
    pub organization_id: String,
    /// The job as recorded: backend, workload, status, result, requester.
    pub job: serde_json::Value,
    /// SHA-256 (hex) of the configuration snapshot's canonical JSON.
    pub config_sha256: String,
    pub artifacts: Vec<ManifestArtifact>,
    pub events: Vec<ManifestEvent>,
    pub checkpoint: ManifestCheckpoint,
    /// SHA-256 (hex) of `job-state.json`, the submitter's state at job time. Absent in bundles
    /// made before it existed, which keep verifying as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_state_sha256: Option<String>,
}

/// What happened to each artifact during verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactCheck {
    /// The archive carries the bytes and they have the recorded digest.
    Verified,
    /// The archive does not carry the bytes (only the manifest vouches for the digest).
    NotIncluded,
    /// Retention removed the bytes, under this policy.
    PurgedByPolicy(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceReport {
    pub manifest: Manifest,
    pub signed_by: String,
    pub config_checked: bool,
    pub artifacts: Vec<(String, ArtifactCheck)>,
    pub events_included: usize,
    /// The submitter's state at job time, derived again from the bundle's proven events.
    pub job_state: Option<StateSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("the manifest is malformed: {0}")]
    Malformed(String),
    #[error("the manifest's signature: {0}")]
    Signature(#[from] DocumentError),
    #[error("the configuration snapshot does not have the recorded SHA-256")]
    ConfigMismatch,
    #[error("artifact {0:?} does not have the recorded SHA-256 or size")]
    ArtifactMismatch(String),
    #[error("the log checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the signed checkpoint does not match the manifest's tree size or root")]
    CheckpointMismatch,
    #[error("the event at position {0} is not included in the signed checkpoint")]
    EventNotIncluded(u64),
    #[error("the archive has no job-state.json, which the manifest names")]
    JobStateMissing,
    #[error("job-state.json does not have the recorded SHA-256")]
    JobStateDigestMismatch,
    #[error(transparent)]
    JobState(#[from] JobStateError),
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn hash32(hex_text: &str) -> Result<Hash, EvidenceError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out)
        .map_err(|_| EvidenceError::Malformed(format!("{hex_text:?} is not a 32-byte hex hash")))?;
    Ok(out)
}

/// Verifies a bundle: the manifest's signature (evidence purpose, under the crypto policy, by a
/// key not compromised when it was made), the files the archive carries (`config.json`,
/// `artifacts/<name>`), the checkpoint's signature, and each job event's inclusion proof.
pub fn verify(
    document: &SignedDocument,
    files: &BTreeMap<String, Vec<u8>>,
    keys: &TrustedKeys,
    now: DateTime<Utc>,
) -> Result<EvidenceReport, EvidenceError> {
    let manifest: Manifest = serde_json::from_value(document.payload.clone())
        .map_err(|e| EvidenceError::Malformed(e.to_string()))?;
    if manifest.format != EVIDENCE_FORMAT {
        return Err(EvidenceError::Malformed(format!(
            "unknown format {:?}",
            manifest.format
        )));
    }
    let signature = document.verify(
        keys,
        Purpose::Evidence,
        EVIDENCE_CONTEXT,
        manifest.created_at,
        now,
    )?;
    let signed_by = signature.kid.clone();

    let config_checked = match files.get("config.json") {
        Some(bytes) if sha256_hex(bytes) == manifest.config_sha256 => true,
        Some(_) => return Err(EvidenceError::ConfigMismatch),
        None => false,
    };
    let mut artifacts = Vec::new();
    for a in &manifest.artifacts {
        let check = match (&a.purged_by, files.get(&format!("artifacts/{}", a.name))) {
            (_, Some(bytes)) => {
                if sha256_hex(bytes) != a.sha256 || bytes.len() as u64 != a.size {
                    return Err(EvidenceError::ArtifactMismatch(a.name.clone()));
                }
                ArtifactCheck::Verified
            }
            (Some(policy), None) => ArtifactCheck::PurgedByPolicy(policy.clone()),
            (None, None) => ArtifactCheck::NotIncluded,
        };
        artifacts.push((a.name.clone(), check));
    }

    let cp = checkpoint::open(&manifest.checkpoint.note, keys, now)?;
    if cp.size != manifest.checkpoint.tree_size
        || hex::encode(cp.root) != manifest.checkpoint.root_hash
    {
        return Err(EvidenceError::CheckpointMismatch);
    }
    for e in &manifest.events {
        let path = decode_path(&e.inclusion_path).ok_or_else(|| {
            EvidenceError::Malformed("an inclusion path hash is not 32 bytes of base64".into())
        })?;
        let leaf = leaf_hash(&hash32(&e.hash)?);
        if e.position == 0 || !verify_inclusion(&leaf, e.position - 1, cp.size, &path, &cp.root) {
            return Err(EvidenceError::EventNotIncluded(e.position));
        }
    }
    let job_state = match &manifest.job_state_sha256 {
        None => None,
        Some(digest) => {
            let bytes = files
                .get(JOB_STATE_FILE)
                .ok_or(EvidenceError::JobStateMissing)?;
            if sha256_hex(bytes) != *digest {
                return Err(EvidenceError::JobStateDigestMismatch);
            }
            let hashes = manifest
                .events
                .iter()
                .map(|e| (e.position, e.hash.clone()))
                .collect();
            Some(crate::job_state::verify(
                bytes,
                cp.size,
                &cp.root,
                &manifest.job_id,
                &hashes,
            )?)
        }
    };
    Ok(EvidenceReport {
        job_state,
        events_included: manifest.events.len(),
        manifest,
        signed_by,
        config_checked,
        artifacts,
    })
}

/// DSSE's pre-authentication encoding (v1): what a DSSE signature covers.
pub fn dsse_pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

pub const DSSE_CONTEXT: &[u8] = b"quantus/dsse/v1";
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const PREDICATE_TYPE: &str = "https://quantus.dev/evidence/v1";

/// The in-toto Statement v1 of a manifest: its artifacts are the subjects, the manifest the
/// predicate.
pub fn in_toto_statement(manifest: &Manifest) -> serde_json::Value {
    let subjects: Vec<serde_json::Value> = manifest
        .artifacts
        .iter()
        .map(|a| serde_json::json!({ "name": a.name, "digest": { "sha256": a.sha256 } }))
        .collect();
    serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_follows_the_dsse_spec_example() {
        // DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            dsse_pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
