//! Job: one quantum/HPC workload run, from submission to its end, with the artifacts it left
//! in object storage. The evidence plane's unit of "what happened".

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

/// Longest backend name, artifact name, media type and error text accepted.
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_TEXT_CHARS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSubmitted {
    pub organization_id: String,
    pub backend: String,
    /// The job's class for retention rules (`default` unless the client names one).
    pub job_class: String,
    /// What runs, as the client describes it (JSON with integer numbers only).
    pub workload: serde_json::Value,
    /// SHA-256 (hex) of the configuration snapshot's canonical JSON (RFC 8785); the snapshot
    /// itself is stored content-addressed at `configs/<digest>.json`.
    pub config_digest: String,
    pub requested_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStarted {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCompleted {
    pub result_summary: serde_json::Value,
    pub metrics: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFailed {
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCancelled {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactStored {
    pub name: String,
    /// SHA-256 of the bytes, lower-case hex, computed by the server while it stored them.
    pub sha256: String,
    pub size: u64,
    pub media_type: String,
    /// Where in the object store (path within the bucket or folder).
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactPurged {
    pub name: String,
    /// The retention policy that removed it.
    pub policy: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum JobEvent for "Job" {
        JobSubmitted(JobSubmitted),
        JobStarted(JobStarted),
        JobCompleted(JobCompleted),
        JobFailed(JobFailed),
        JobCancelled(JobCancelled),
        ArtifactStored(ArtifactStored),
        ArtifactPurged(ArtifactPurged),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCommand {
    Submit(JobSubmitted),
    Start,
    Complete(JobCompleted),
    Fail { error: String },
    Cancel { reason: String },
    StoreArtifact(ArtifactStored),
    PurgeArtifact { name: String, policy: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job already exists")]
    AlreadyExists,
    #[error("job not found")]
    NotFound,
    #[error("the job is {0}; it cannot {1}")]
    WrongState(&'static str, &'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("artifact {0:?} already exists; artifacts are immutable")]
    ArtifactExists(String),
    #[error("no artifact {0:?}")]
    NoArtifact(String),
}

impl JobError {
    pub fn is_validation(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JobStatus {
    #[default]
    Absent,
    Submitted,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Submitted => "submitted",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// An artifact as the job knows it now (`purged_by` once retention removed the bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub stored: ArtifactStored,
    pub purged_by: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub status: JobStatus,
    pub submitted: Option<JobSubmitted>,
    pub completed: Option<JobCompleted>,
    pub error: Option<String>,
    pub artifacts: BTreeMap<String, Artifact>,
}

/// Whether every number in `v` is an integer a JSON reader keeps exact (see
/// docs/event-log.md): event payloads hold no floats.
pub fn numbers_are_exact(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .is_some_and(|i| i.unsigned_abs() <= crate::licensing::license::MAX_LIMIT as u64),
        serde_json::Value::Array(a) => a.iter().all(numbers_are_exact),
        serde_json::Value::Object(o) => o.values().all(numbers_are_exact),
        _ => true,
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<String, JobError> {
    let v = value.trim();
    if v.chars().count() > max || v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(JobError::Invalid(format!(
            "{field} must be at most {max} characters without control characters"
        )));
    }
    Ok(v.to_owned())
}

/// Artifact names become object paths: a conservative alphabet, no `..`, no leading dot.
pub fn check_artifact_name(name: &str) -> Result<(), JobError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(JobError::Invalid(
            "artifact names are 1 to 200 characters of A-Z a-z 0-9 - _ . (no leading dot, no ..)"
                .into(),
        ))
    }
}

impl Job {
    /// The pure decision (also used to check a submission before quota is taken for it).
    pub fn decide(&self, command: JobCommand) -> Result<Vec<JobEvent>, JobError> {
        use JobCommand as C;
        use JobEvent as E;
        use JobStatus as S;
        let state = self.status;
        match command {
            C::Submit(mut s) => {
                if state != S::Absent {
                    return Err(JobError::AlreadyExists);
                }
                s.backend = text("backend", &s.backend, MAX_NAME_CHARS)?;
                s.job_class = text("class", &s.job_class, MAX_NAME_CHARS)?;
                if s.job_class.is_empty() {
                    s.job_class = "default".into();
                }
                if s.backend.is_empty() {
                    return Err(JobError::Invalid("backend is required".into()));
                }
                if !numbers_are_exact(&s.workload) {
                    return Err(JobError::Invalid(
                        "workload numbers must be integers within ±(2^53-1); send decimals as strings".into(),
                    ));
                }
                Ok(vec![E::JobSubmitted(s)])
            }
            _ if state == S::Absent => Err(JobError::NotFound),
            C::Start => match state {
                S::Submitted => Ok(vec![E::JobStarted(JobStarted {})]),
                s => Err(JobError::WrongState(s.name(), "start")),
            },
            C::Complete(c) => match state {
                S::Running => {
                    if !numbers_are_exact(&c.result_summary) {
                        return Err(JobError::Invalid(
                            "result numbers must be integers within ±(2^53-1); send decimals as strings".into(),
                        ));
                    }
                    Ok(vec![E::JobCompleted(c)])
                }
                s => Err(JobError::WrongState(s.name(), "complete")),
            },
            C::Fail { error } => match state {
                S::Submitted | S::Running => Ok(vec![E::JobFailed(JobFailed {
                    error: text("error", &error, MAX_TEXT_CHARS)?,
                })]),
                s => Err(JobError::WrongState(s.name(), "fail")),
            },
            C::Cancel { reason } => match state {
                S::Submitted | S::Running => Ok(vec![E::JobCancelled(JobCancelled {
                    reason: text("reason", &reason, MAX_TEXT_CHARS)?,
                })]),
                s => Err(JobError::WrongState(s.name(), "be cancelled")),
            },
            C::StoreArtifact(a) => {
                if state == S::Cancelled {
                    return Err(JobError::WrongState(state.name(), "take artifacts"));
                }
                check_artifact_name(&a.name)?;
                if self.artifacts.contains_key(&a.name) {
                    return Err(JobError::ArtifactExists(a.name));
                }
                Ok(vec![E::ArtifactStored(a)])
            }
            C::PurgeArtifact { name, policy } => match self.artifacts.get(&name) {
                None => Err(JobError::NoArtifact(name)),
                Some(a) if a.purged_by.is_some() => Ok(vec![]),
                Some(_) => Ok(vec![E::ArtifactPurged(ArtifactPurged { name, policy })]),
            },
        }
    }
}

impl Aggregate for Job {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            JobEvent::JobSubmitted(s) => {
                self.status = JobStatus::Submitted;
                self.submitted = Some(s);
            }
            JobEvent::JobStarted(_) => self.status = JobStatus::Running,
            JobEvent::JobCompleted(c) => {
                self.status = JobStatus::Completed;
                self.completed = Some(c);
            }
            JobEvent::JobFailed(f) => {
                self.status = JobStatus::Failed;
                self.error = Some(f.error);
            }
            JobEvent::JobCancelled(_) => self.status = JobStatus::Cancelled,
            JobEvent::ArtifactStored(a) => {
                self.artifacts.insert(
                    a.name.clone(),
                    Artifact {
                        stored: a,
                        purged_by: None,
                    },
                );
            }
            JobEvent::ArtifactPurged(p) => {
                if let Some(a) = self.artifacts.get_mut(&p.name) {
                    a.purged_by = Some(p.policy);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use JobCommand as C;
    use JobEvent as E;

    fn submitted() -> E {
        E::JobSubmitted(JobSubmitted {
            organization_id: "org".into(),
            backend: "ibm_kyiv".into(),
            job_class: "default".into(),
            workload: serde_json::json!({"shots": 1024}),
            config_digest: "00".repeat(32),
            requested_by: "u1".into(),
        })
    }
    fn artifact(name: &str) -> ArtifactStored {
        ArtifactStored {
            name: name.into(),
            sha256: "11".repeat(32),
            size: 3,
            media_type: "application/json".into(),
            location: format!("jobs/j/{name}"),
        }
    }

    #[test]
    fn a_job_runs_from_submission_to_completion() {
        TestFramework::<Job>::with(())
            .given(vec![submitted()])
            .when(C::Start)
            .then_expect_events(vec![E::JobStarted(JobStarted {})]);
        TestFramework::<Job>::with(())
            .given(vec![submitted()])
            .when(C::Complete(JobCompleted {
                result_summary: serde_json::json!({}),
                metrics: BTreeMap::new(),
            }))
            .then_expect_error(JobError::WrongState("submitted", "complete"));
        TestFramework::<Job>::with(())
            .given(vec![
                submitted(),
                E::JobCancelled(JobCancelled { reason: "x".into() }),
            ])
            .when(C::Start)
            .then_expect_error(JobError::WrongState("cancelled", "start"));
    }

    #[test]
    fn floats_never_enter_the_log() {
        let mut s = match submitted() {
            E::JobSubmitted(s) => s,
            _ => unreachable!(),
        };
        s.workload = serde_json::json!({"angle": 0.5});
        TestFramework::<Job>::with(())
            .given_no_previous_events()
            .when(C::Submit(s))
            .then_expect_error(JobError::Invalid(
                "workload numbers must be integers within ±(2^53-1); send decimals as strings"
                    .into(),
            ));
    }

    #[test]
    fn artifacts_are_immutable_and_named_safely() {
        TestFramework::<Job>::with(())
            .given(vec![
                submitted(),
                E::ArtifactStored(artifact("counts.json")),
            ])
            .when(C::StoreArtifact(artifact("counts.json")))
            .then_expect_error(JobError::ArtifactExists("counts.json".into()));
        for bad in ["../etc/passwd", ".hidden", "a/b", ""] {
            assert!(check_artifact_name(bad).is_err(), "{bad}");
        }
        TestFramework::<Job>::with(())
            .given(vec![
                submitted(),
                E::ArtifactStored(artifact("counts.json")),
            ])
            .when(C::PurgeArtifact {
                name: "counts.json".into(),
                policy: "keep-30-days".into(),
            })
            .then_expect_events(vec![E::ArtifactPurged(ArtifactPurged {
                name: "counts.json".into(),
                policy: "keep-30-days".into(),
            })]);
    }
}
