//! The evidence plane's application service: jobs, their configuration snapshots and
//! artifacts in object storage.

use futures::Stream;
use quantus_domain::job::{
    check_artifact_name, ArtifactStored, Job, JobCommand, JobError, JobStatus, JobSubmitted,
};
use quantus_domain::organization::{Organization, OrganizationStatus};
use quantus_domain::CommandContext;
use quantus_infra::objects::{ObjectStorage, UploadError};
use sha2::{Digest, Sha256};

use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

/// Largest artifact accepted (`PUT` bodies stream, so this bounds storage, not memory).
pub const MAX_ARTIFACT_BYTES: u64 = 10 * 1024 * 1024 * 1024;

impl ClassifyError for JobError {
    fn classify(&self) -> CommandError {
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            JobError::NotFound | JobError::NoArtifact(_) => {
                CommandError::NotFound(self.to_string())
            }
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

/// A job as submitted by a client.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub organization_id: String,
    pub backend: String,
    pub workload: serde_json::Value,
    /// The configuration snapshot, stored content-addressed.
    pub config: serde_json::Value,
    pub requested_by: String,
}

#[derive(Clone)]
pub struct Evidence {
    bus: CommandBus,
    objects: ObjectStorage,
}

/// Where a configuration snapshot lives.
pub fn config_path(digest: &str) -> String {
    format!("configs/{digest}.json")
}

impl Evidence {
    pub fn new(bus: CommandBus, objects: ObjectStorage) -> Self {
        Self { bus, objects }
    }

    pub fn objects(&self) -> &ObjectStorage {
        &self.objects
    }

    /// Submits a job: stores its configuration (canonical JSON, RFC 8785) under its SHA-256,
    /// then records the submission.
    pub async fn submit(
        &self,
        ctx: &CommandContext,
        id: &str,
        new: NewJob,
    ) -> Result<CommandOutcome, CommandError> {
        let (org, _) = self.bus.load::<Organization>(&new.organization_id).await?;
        match org.status {
            OrganizationStatus::Active => {}
            OrganizationStatus::Absent => {
                return Err(CommandError::Invalid(format!(
                    "no organization {}",
                    new.organization_id
                )))
            }
            OrganizationStatus::Suspended => {
                return Err(CommandError::Rejected(format!(
                    "organization {} is suspended",
                    new.organization_id
                )))
            }
        }
        let canonical = quantus_crypto::document::canonical(&new.config)
            .map_err(|e| CommandError::Invalid(format!("config: {e}")))?;
        let digest = hex::encode(Sha256::digest(&canonical));
        // Content-addressed: the same configuration is stored once, and never changes.
        self.objects
            .put_bytes(&config_path(&digest), canonical)
            .await
            .map_err(storage)?;
        let command = JobCommand::Submit(JobSubmitted {
            organization_id: new.organization_id,
            backend: new.backend,
            workload: new.workload,
            config_digest: digest,
            requested_by: new.requested_by,
        });
        self.bus
            .execute::<Job>(ctx, id, command, Some(0), &())
            .await
    }

    pub async fn job(&self, id: &str) -> Result<(Job, u64), CommandError> {
        let (job, version) = self.bus.load::<Job>(id).await?;
        if job.status == JobStatus::Absent {
            return Err(CommandError::NotFound(format!("no job {id}")));
        }
        Ok((job, version))
    }

    pub async fn job_command(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: JobCommand,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<Job>(ctx, id, command, expected, &())
            .await
    }

    /// Streams an artifact into object storage, hashing it on the way, then records it. Each
    /// upload gets its own object, so a refused or concurrent upload never overwrites a
    /// recorded artifact.
    pub async fn store_artifact<S, E>(
        &self,
        ctx: &CommandContext,
        job_id: &str,
        name: &str,
        media_type: &str,
        body: S,
    ) -> Result<(ArtifactStored, CommandOutcome), CommandError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        check_artifact_name(name).map_err(|e| e.classify())?;
        let (job, _) = self.job(job_id).await?;
        if job.artifacts.contains_key(name) {
            return Err(JobError::ArtifactExists(name.to_owned()).classify());
        }
        if job.status == JobStatus::Cancelled {
            return Err(CommandError::Rejected(
                "the job is cancelled; it cannot take artifacts".into(),
            ));
        }
        let location = format!("jobs/{job_id}/artifacts/{name}/{}", uuid::Uuid::now_v7());
        let (sha256, size) = match self
            .objects
            .put_stream(&location, body, MAX_ARTIFACT_BYTES)
            .await
        {
            Ok(done) => done,
            Err(UploadError::TooLarge(max)) => {
                return Err(CommandError::Invalid(format!(
                    "artifacts are at most {max} bytes"
                )))
            }
            Err(UploadError::Body(e)) => {
                return Err(CommandError::Invalid(format!(
                    "the upload was interrupted: {e}"
                )))
            }
            Err(UploadError::Storage(e)) => return Err(storage(e)),
        };
        let stored = ArtifactStored {
            name: name.to_owned(),
            sha256,
            size,
            media_type: media_type
                .chars()
                .take(quantus_domain::job::MAX_NAME_CHARS)
                .collect(),
            location: location.clone(),
        };
        match self
            .bus
            .execute::<Job>(
                ctx,
                job_id,
                JobCommand::StoreArtifact(stored.clone()),
                None,
                &(),
            )
            .await
        {
            Ok(outcome) => Ok((stored, outcome)),
            Err(e) => {
                // Nothing refers to the object: remove it rather than leave it half-recorded.
                let _ = self.objects.delete(&location).await;
                Err(e)
            }
        }
    }

    /// An artifact's record and its bytes as a stream. The stored object's digest is checked
    /// before anything is sent; the bytes sent are hashed again on the way and the stream ends
    /// in an error (the client sees a broken transfer) if they differ from the record.
    pub async fn read_artifact(
        &self,
        job_id: &str,
        name: &str,
    ) -> Result<
        (
            ArtifactStored,
            futures::stream::BoxStream<'static, Result<bytes::Bytes, CommandError>>,
        ),
        CommandError,
    > {
        use futures::StreamExt;
        let (job, _) = self.job(job_id).await?;
        let artifact = job
            .artifacts
            .get(name)
            .ok_or_else(|| CommandError::NotFound(format!("no artifact {name:?}")))?;
        if let Some(policy) = &artifact.purged_by {
            return Err(CommandError::Rejected(format!(
                "artifact {name:?} was purged by retention policy {policy}"
            )));
        }
        let stored = artifact.stored.clone();
        let (digest, size) = self
            .objects
            .digest(&stored.location)
            .await
            .map_err(storage)?;
        if digest != stored.sha256 || size != stored.size {
            return Err(CommandError::Storage(format!(
                "artifact {name:?} in object storage no longer matches its recorded SHA-256 ({digest} != {})",
                stored.sha256
            )));
        }
        let expected = stored.sha256.clone();
        let inner = self
            .objects
            .get_stream(&stored.location)
            .await
            .map_err(storage)?;
        let stream = futures::stream::unfold(
            (inner, Sha256::new(), Some(expected)),
            |(mut inner, mut hasher, expected)| async move {
                let expected = expected?;
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        Some((Ok(chunk), (inner, hasher, Some(expected))))
                    }
                    Some(Err(e)) => Some((Err(storage(e)), (inner, hasher, None))),
                    None => {
                        let actual = hex::encode(hasher.finalize_reset());
                        if actual == expected {
                            None
                        } else {
                            let e = CommandError::Storage(format!(
                                "the artifact changed while it was sent ({actual})"
                            ));
                            Some((Err(e), (inner, hasher, None)))
                        }
                    }
                }
            },
        )
        .boxed();
        Ok((stored, stream))
    }
}
