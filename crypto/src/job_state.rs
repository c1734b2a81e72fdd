//! The submitter's state at job time, inside an evidence bundle (`job-state.json`): who
//! submitted the job (user or service principal), their roles in the job's organization and the
//! organization's licences, all as of the job's log position.
//!
//! The file carries the events that establish that state, each with its inclusion proof against
//! the bundle's checkpoint, and a summary derived from them. [`verify`] checks every proof and
//! every envelope's hash, the hash chain of each aggregate from its first event, and derives the
//! summary again: the stored summary is never trusted. The byte layout is in
//! `docs/event-log.md` ("Evidence bundles").

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::merkle::{decode_path, leaf_hash, verify_inclusion, Hash};

pub const JOB_STATE_FORMAT: &str = "quantus-job-state/1";
/// The file's name inside an evidence archive.
pub const JOB_STATE_FILE: &str = "job-state.json";
const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Event types that never change a submitter's or a licence's summary, so a bundle carries only
/// their hash (a sealed password hash, an invite's digest, a sealed profile, a rotated client
/// secret's digest or a machine fingerprint have no business in an auditor's archive).
pub const WITHHELD_TYPES: &[&str] = &[
    "UserPasswordSet",
    "UserProfileChanged",
    "UserEmailChanged",
    "UserInvited",
    "UserInviteAccepted",
    "ClientSecretRotated",
    "LicenseActivated",
    "LicenseDeactivated",
];

/// One event of the job state: always its place in the log and its proof; its whole envelope
/// unless its type is one of [`WITHHELD_TYPES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateEvent {
    pub position: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    /// The event's chained hash (hex): its Merkle leaf data.
    pub hash: String,
    /// Audit path (base64) of the event in the bundle's checkpoint.
    pub inclusion_path: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Value>,
}

/// The submitter as the log had it at the job's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submitter {
    /// `user` or `service` (the job event's actor).
    pub kind: String,
    pub id: String,
    /// The organization the principal belongs to (none when the log has no event of it).
    pub organization_id: Option<String>,
    /// A service principal's name; a person's name is sealed personal data and left out.
    pub name: Option<String>,
    pub name_sealed: bool,
    /// `active`, `disabled`, `erased`, or `unrecorded` (a principal with no events, such as
    /// the configured bootstrap administrator).
    pub status: String,
    /// Roles held in the job's organization.
    pub roles: Vec<String>,
}

/// One licence of the job's organization as of the job's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseAtJob {
    pub id: String,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    /// The terms as issued, `expires_at` moved by any renewal.
    pub terms: Value,
    /// Active, and the job's time within `not_before` .. `expires_at` + grace period.
    pub in_force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSummary {
    /// The job's submission event: everything here is as of this position.
    pub position: u64,
    /// The submission's `occurred_at`.
    pub as_of: String,
    pub organization_id: String,
    pub submitter: Submitter,
    pub licenses: Vec<LicenseAtJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobState {
    pub format: String,
    /// The job's `JobSubmitted` event, whole.
    pub job: StateEvent,
    /// The submitter's and the licences' events up to the job, by aggregate, in sequence.
    pub events: Vec<StateEvent>,
    pub summary: StateSummary,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobStateError {
    #[error("job-state.json is malformed: {0}")]
    Malformed(String),
    #[error("job-state.json: the event at position {0} is not included in the signed checkpoint")]
    NotIncluded(u64),
    #[error("job-state.json: the event at position {0} does not have the hash it claims ({1})")]
    HashMismatch(u64, String),
    #[error("job-state.json: {0}")]
    Chain(String),
    #[error("job-state.json: the job event is not the manifest's: {0}")]
    NotTheJob(String),
    #[error(
        "job-state.json: the summary's {path} is {stored}, but its events establish {derived}"
    )]
    SummaryMismatch {
        path: String,
        stored: String,
        derived: String,
    },
}

type Result<T> = std::result::Result<T, JobStateError>;

fn malformed(what: impl Into<String>) -> JobStateError {
    JobStateError::Malformed(what.into())
}

fn text<'a>(v: &'a Value, field: &str, at: u64) -> Result<&'a str> {
    v.get(field).and_then(Value::as_str).ok_or_else(|| {
        malformed(format!(
            "the event at position {at} has no string {field:?}"
        ))
    })
}

fn payload(e: &StateEvent) -> Result<&Value> {
    e.envelope
        .as_ref()
        .and_then(|v| v.get("payload"))
        .filter(|p| p.is_object())
        .ok_or_else(|| {
            malformed(format!(
                "the event at position {} has no payload",
                e.position
            ))
        })
}

fn roles_of(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn instant(v: &Value, field: &str, at: u64) -> Result<DateTime<Utc>> {
    let s = text(v, field, at)?;
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| malformed(format!("{field} of the event at position {at}: {e}")))
}

/// The summary the events establish. `job` is the whole `JobSubmitted` event; `events` the
/// submitter's and licences' events in sequence order per aggregate (only envelopes are read;
/// proofs are [`verify`]'s business).
pub fn summarize(job: &StateEvent, events: &[StateEvent]) -> Result<StateSummary> {
    let envelope = job
        .envelope
        .as_ref()
        .ok_or_else(|| malformed("the job event has no envelope"))?;
    let as_of_text = text(envelope, "occurred_at", job.position)?;
    let as_of = instant(envelope, "occurred_at", job.position)?;
    let organization_id = text(payload(job)?, "organization_id", job.position)?.to_owned();
    let actor = envelope
        .get("actor")
        .ok_or_else(|| malformed("the job event has no actor"))?;
    let kind = text(actor, "kind", job.position)?.to_owned();
    let id = text(actor, "id", job.position)?.to_owned();
    let submitter_type = match kind.as_str() {
        "user" => "User",
        "service" => "Client",
        _ => "",
    };

    let mut submitter = Submitter {
        kind,
        id: id.clone(),
        organization_id: None,
        name: None,
        name_sealed: false,
        status: "unrecorded".into(),
        roles: vec![],
    };
    // Roles by organization, as the user aggregate keeps them.
    let mut memberships: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut licenses: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for e in events {
        if e.envelope.is_none() {
            continue; // withheld: never shapes the summary (checked by `verify`)
        }
        let p = payload(e)?;
        let at = e.position;
        if e.aggregate_type == submitter_type && e.aggregate_id == id {
            match e.event_type.as_str() {
                "UserRegistered" => {
                    let org = text(p, "organization_id", at)?.to_owned();
                    memberships.insert(org.clone(), roles_of(p.get("roles")));
                    submitter.organization_id = Some(org);
                    submitter.name_sealed = true;
                    submitter.status = "active".into();
                }
                "UserRoleGranted" => {
                    memberships
                        .entry(text(p, "organization_id", at)?.to_owned())
                        .or_default()
                        .insert(text(p, "role", at)?.to_owned());
                }
                "UserRoleRevoked" => {
                    let org = text(p, "organization_id", at)?;
                    if let Some(roles) = memberships.get_mut(org) {
                        roles.remove(text(p, "role", at)?);
                    }
                }
                "UserDisabled" | "ClientDisabled" => submitter.status = "disabled".into(),
                "UserEnabled" => submitter.status = "active".into(),
                "UserErased" => {
                    memberships.clear();
                    submitter.status = "erased".into();
                    submitter.name_sealed = false;
                }
                "ClientRegistered" => {
                    let org = text(p, "organization_id", at)?.to_owned();
                    memberships.insert(org.clone(), roles_of(p.get("roles")));
                    submitter.organization_id = Some(org);
                    submitter.name = Some(text(p, "name", at)?.to_owned());
                    submitter.status = "active".into();
                }
                // Types added later that do not change roles or status.
                _ => {}
            }
        } else if e.aggregate_type == "License" {
            let entry = licenses.entry(e.aggregate_id.clone());
            match e.event_type.as_str() {
                "LicenseIssued" => {
                    let org = text(p, "organization_id", at)?;
                    if org != organization_id {
                        return Err(JobStateError::Chain(format!(
                            "licence {} belongs to organization {org}, not the job's",
                            e.aggregate_id
                        )));
                    }
                    entry.or_insert_with(|| ("active".into(), p.clone()));
                }
                kind => {
                    let (status, terms) = match entry {
                        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                        _ => {
                            return Err(JobStateError::Chain(format!(
                                "licence {} has events but no LicenseIssued",
                                e.aggregate_id
                            )))
                        }
                    };
                    match kind {
                        "LicenseSuspended" => *status = "suspended".into(),
                        "LicenseReinstated" => *status = "active".into(),
                        "LicenseRevoked" => *status = "revoked".into(),
                        "LicenseRenewed" => {
                            terms["expires_at"] = p
                                .get("expires_at")
                                .cloned()
                                .ok_or_else(|| malformed("a renewal without expires_at"))?;
                        }
                        _ => {}
                    }
                }
            }
        } else {
            return Err(JobStateError::Chain(format!(
                "{} {} is neither the submitter nor a licence",
                e.aggregate_type, e.aggregate_id
            )));
        }
    }
    submitter.roles = memberships
        .remove(&organization_id)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let licenses = licenses
        .into_iter()
        .map(|(id, (status, terms))| {
            let not_before = instant(&terms, "not_before", job.position)?;
            let expires_at = instant(&terms, "expires_at", job.position)?;
            let grace = terms
                .get("grace_period_seconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let until = expires_at
                .checked_add_signed(chrono::Duration::seconds(grace))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            Ok(LicenseAtJob {
                in_force: status == "active" && not_before <= as_of && as_of < until,
                id,
                status,
                terms,
            })
        })
        .collect::<Result<_>>()?;
    Ok(StateSummary {
        position: job.position,
        as_of: as_of_text.to_owned(),
        organization_id,
        submitter,
        licenses,
    })
}

fn hash32(hex_text: &str, at: u64) -> Result<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out)
        .map_err(|_| malformed(format!("the hash of the event at position {at} is not hex")))?;
    Ok(out)
}

/// Checks one event: its proof against the checkpoint and, when whole, its envelope.
fn check_event(e: &StateEvent, tree_size: u64, root: &Hash) -> Result<()> {
    let path = decode_path(&e.inclusion_path)
        .ok_or_else(|| malformed("an inclusion path hash is not 32 bytes of base64"))?;
    let leaf = leaf_hash(&hash32(&e.hash, e.position)?);
    if e.position == 0 || !verify_inclusion(&leaf, e.position - 1, tree_size, &path, root) {
        return Err(JobStateError::NotIncluded(e.position));
    }
    let Some(envelope) = &e.envelope else {
        return Ok(());
    };
    let claims = [
        ("aggregate_type", Value::from(e.aggregate_type.as_str())),
        ("aggregate_id", Value::from(e.aggregate_id.as_str())),
        ("sequence", Value::from(e.sequence)),
        ("event_type", Value::from(e.event_type.as_str())),
        ("hash", Value::from(e.hash.as_str())),
    ];
    for (field, value) in claims {
        if envelope.get(field) != Some(&value) {
            return Err(JobStateError::HashMismatch(
                e.position,
                format!("its envelope's {field} differs"),
            ));
        }
    }
    let mut unhashed = envelope.clone();
    if let Some(o) = unhashed.as_object_mut() {
        o.remove("hash");
    }
    let canonical = crate::document::canonical(&unhashed)
        .map_err(|e| malformed(format!("an envelope cannot be canonicalised: {e}")))?;
    let computed = hex::encode(Sha256::digest(canonical));
    if computed != e.hash {
        return Err(JobStateError::HashMismatch(
            e.position,
            format!("its envelope hashes to {computed}"),
        ));
    }
    Ok(())
}

/// The first place where two JSON values differ, as a dotted path.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b)),
        _ if a == b => None,
        _ => Some(path.to_owned()),
    }
}

fn at_path<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.trim_start_matches("summary").split('.').skip(1) {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = cur.get(name).unwrap_or(&Value::Null);
        if let Some(i) = index {
            cur = cur.get(i).unwrap_or(&Value::Null);
        }
    }
    cur
}

/// Verifies `job-state.json` against the bundle's checkpoint (`tree_size`, `root`) and the
/// manifest's job (`job_id`, and the hash the manifest lists at each of its events' positions),
/// and returns the summary its events establish.
pub fn verify(
    bytes: &[u8],
    tree_size: u64,
    root: &Hash,
    job_id: &str,
    manifest_hashes: &BTreeMap<u64, String>,
) -> Result<StateSummary> {
    let state: JobState = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    if state.format != JOB_STATE_FORMAT {
        return Err(malformed(format!("unknown format {:?}", state.format)));
    }
    let job = &state.job;
    check_event(job, tree_size, root)?;
    if job.envelope.is_none()
        || job.aggregate_type != "Job"
        || job.event_type != "JobSubmitted"
        || job.aggregate_id != job_id
    {
        return Err(JobStateError::NotTheJob(format!(
            "expected the whole JobSubmitted event of job {job_id}"
        )));
    }
    if manifest_hashes.get(&job.position) != Some(&job.hash) {
        return Err(JobStateError::NotTheJob(format!(
            "the manifest does not list it at position {}",
            job.position
        )));
    }
    // Each aggregate's events from its first, linked, all before the job.
    let mut last: BTreeMap<(&str, &str), (u64, u64, &str)> = BTreeMap::new();
    for e in &state.events {
        check_event(e, tree_size, root)?;
        let key = (e.aggregate_type.as_str(), e.aggregate_id.as_str());
        let what = format!("{} {}", e.aggregate_type, e.aggregate_id);
        if e.position >= job.position {
            return Err(JobStateError::Chain(format!(
                "{what}: the event at position {} is not before the job (position {})",
                e.position, job.position
            )));
        }
        let (expected, prev_hash) = match last.get(&key) {
            Some((sequence, position, hash)) => {
                if e.position <= *position {
                    return Err(JobStateError::Chain(format!(
                        "{what}: events are not in log order at position {}",
                        e.position
                    )));
                }
                (sequence + 1, *hash)
            }
            None => (1, GENESIS_HASH),
        };
        if e.sequence != expected {
            return Err(JobStateError::Chain(format!(
                "{what}: event {expected} is missing (the next one given is {})",
                e.sequence
            )));
        }
        match &e.envelope {
            Some(envelope) => {
                if envelope.get("prev_hash").and_then(Value::as_str) != Some(prev_hash) {
                    return Err(JobStateError::Chain(format!(
                        "{what}: event {} does not follow event {}",
                        e.sequence,
                        e.sequence - 1
                    )));
                }
            }
            None if WITHHELD_TYPES.contains(&e.event_type.as_str()) => {}
            None => {
                return Err(JobStateError::Chain(format!(
                    "{what}: event {} ({}) shapes the state but its envelope is left out",
                    e.sequence, e.event_type
                )))
            }
        }
        last.insert(key, (e.sequence, e.position, e.hash.as_str()));
    }
    let derived = summarize(job, &state.events)?;
    if derived != state.summary {
        let stored = serde_json::to_value(&state.summary).unwrap_or_default();
        let ours = serde_json::to_value(&derived).unwrap_or_default();
        let path = first_difference("summary", &stored, &ours).unwrap_or_else(|| "summary".into());
        return Err(JobStateError::SummaryMismatch {
            stored: at_path(&stored, &path).to_string(),
            derived: at_path(&ours, &path).to_string(),
            path,
        });
    }
    Ok(derived)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_difference_is_named_by_its_path() {
        let a = serde_json::json!({"submitter": {"roles": ["member"]}, "position": 3});
        let b = serde_json::json!({"submitter": {"roles": ["admin"]}, "position": 3});
        let path = first_difference("summary", &a, &b).unwrap();
        assert_eq!(path, "summary.submitter.roles[0]");
        assert_eq!(at_path(&a, &path), &Value::from("member"));
        assert_eq!(first_difference("summary", &a, &a), None);
    }
}
