//! The evidence plane's application service: jobs, their configuration snapshots and
//! artifacts in object storage.

use futures::Stream;
use quantus_domain::evidence::job::{
    check_artifact_name, ArtifactStored, Job, JobCommand, JobError, JobStatus, JobSubmitted,
};
use quantus_domain::organization::{Organization, OrganizationStatus};
use quantus_domain::CommandContext;
use quantus_infra::objects::{ObjectStorage, UploadError};
use sha2::{Digest, Sha256};

use quantus_crypto::document::SignedDocument;
use quantus_crypto::evidence::{
    dsse_pae, in_toto_statement, Manifest, ManifestArtifact, ManifestCheckpoint, ManifestEvent,
    DSSE_CONTEXT, EVIDENCE_CONTEXT, EVIDENCE_FORMAT, IN_TOTO_PAYLOAD_TYPE,
};
use quantus_crypto::job_state::{
    summarize, JobState, StateEvent, JOB_STATE_FILE, JOB_STATE_FORMAT, WITHHELD_TYPES,
};
use quantus_crypto::keys::Purpose;
use quantus_domain::evidence::bundle::{BundleExists, EvidenceBundle, EvidenceBundleCreated};

use crate::checkpoints::Checkpoints;
use crate::licensing::Licensing;
use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

impl ClassifyError for BundleExists {
    fn classify(&self) -> CommandError {
        CommandError::Rejected(self.to_string())
    }
}

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
    pub job_class: String,
    pub workload: serde_json::Value,
    /// The configuration snapshot, stored content-addressed.
    pub config: serde_json::Value,
    pub requested_by: String,
}

#[derive(Clone)]
pub struct Evidence {
    bus: CommandBus,
    objects: ObjectStorage,
    licensing: Licensing,
    checkpoints: Checkpoints,
}

/// Where a configuration snapshot lives.
pub fn config_path(digest: &str) -> String {
    format!("configs/{digest}.json")
}

impl Evidence {
    pub fn new(licensing: Licensing, checkpoints: Checkpoints, objects: ObjectStorage) -> Self {
        Self {
            bus: licensing.bus().clone(),
            objects,
            licensing,
            checkpoints,
        }
    }

    pub fn objects(&self) -> &ObjectStorage {
        &self.objects
    }

    /// Checks a submission without recording anything (so quota is taken only for a job that
    /// will be accepted).
    pub fn check(&self, new: &NewJob) -> Result<(), CommandError> {
        quantus_crypto::document::canonical(&new.config)
            .map_err(|e| CommandError::Invalid(format!("config: {e}")))?;
        Job::default()
            .decide(JobCommand::Submit(JobSubmitted {
                organization_id: new.organization_id.clone(),
                backend: new.backend.clone(),
                job_class: new.job_class.clone(),
                workload: new.workload.clone(),
                config_digest: "0".repeat(64),
                requested_by: new.requested_by.clone(),
            }))
            .map(|_| ())
            .map_err(|e| e.classify())
    }

    /// Submits a job: stores its configuration (canonical JSON, RFC 8785) under its SHA-256,
    /// then records the submission.
    pub async fn submit(
        &self,
        ctx: &CommandContext,
        id: &str,
        new: NewJob,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus.active_organization(&new.organization_id).await?;
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
            job_class: new.job_class,
            workload: new.workload,
            config_digest: digest,
            requested_by: new.requested_by,
        });
        self.bus
            .execute::<Job>(ctx, id, command, Some(0), &())
            .await
    }

    pub async fn job(&self, id: &str) -> Result<(Job, u64), CommandError> {
        self.bus
            .load_existing::<Job>(id, "job", |job| job.status != JobStatus::Absent)
            .await
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
                .take(quantus_domain::evidence::job::MAX_NAME_CHARS)
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

    /// Creates an evidence bundle for a job: a manifest of the job, its configuration digest,
    /// its artifacts' digests and its events, each with an inclusion proof in a signed log
    /// checkpoint (signed now if the latest does not cover the job yet), and the digest of
    /// `job-state.json` (the submitter's state at job time); signed with the evidence key and
    /// stored in object storage for good.
    pub async fn create_bundle(
        &self,
        ctx: &CommandContext,
        job_id: &str,
    ) -> Result<(String, SignedDocument, CommandOutcome), CommandError> {
        use base64::Engine as _;
        let (job, _) = self.job(job_id).await?;
        let submitted = job
            .submitted
            .clone()
            .ok_or_else(|| CommandError::NotFound(format!("no job {job_id}")))?;
        let records = self
            .bus
            .repository()
            .aggregate_records(<Job as cqrs_es::Aggregate>::TYPE, job_id)
            .await
            .map_err(storage)?;
        let last = records.iter().map(|r| r.position).max().unwrap_or(0);
        let platform = CommandContext {
            tenant_id: quantus_domain::schema::PLATFORM_TENANT.to_owned(),
            ..ctx.clone()
        };
        let covering = match self.checkpoints.latest().await? {
            Some(c) if c.checkpoint.tree_size >= last => c,
            _ => {
                self.checkpoints.sign_now(&platform).await?;
                self.checkpoints
                    .latest()
                    .await?
                    .filter(|c| c.checkpoint.tree_size >= last)
                    .ok_or_else(|| {
                        CommandError::Storage("no checkpoint covers the job's events".into())
                    })?
            }
        };
        let size = covering.checkpoint.tree_size;
        let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
        let paths = self.checkpoints.inclusion_many(&positions, size).await?;
        let bundle_id = uuid::Uuid::now_v7().to_string();
        let job_state = self.job_state(&records, size).await?;
        let job_state_location = format!("evidence/{bundle_id}/{JOB_STATE_FILE}");
        let job_state_sha256 = hex::encode(Sha256::digest(&job_state));
        self.objects
            .put_bytes(&job_state_location, job_state)
            .await
            .map_err(storage)?;
        let events = records
            .iter()
            .zip(paths)
            .map(|(r, path)| ManifestEvent {
                position: r.position,
                event_id: r.envelope.event_id.to_string(),
                event_type: r.envelope.event_type.clone(),
                hash: r.envelope.hash.clone(),
                inclusion_path: path
                    .iter()
                    .map(|h| base64::engine::general_purpose::STANDARD.encode(h))
                    .collect(),
            })
            .collect();
        let manifest = Manifest {
            format: EVIDENCE_FORMAT.into(),
            bundle_id: bundle_id.clone(),
            issuer: self.licensing_issuer(),
            created_at: ctx.occurred_at,
            job_id: job_id.to_owned(),
            organization_id: submitted.organization_id.clone(),
            job: serde_json::json!({
                "backend": submitted.backend,
                "workload": submitted.workload,
                "requested_by": submitted.requested_by,
                "status": job.status.name(),
                "result": job.completed,
                "error": job.error,
            }),
            config_sha256: submitted.config_digest.clone(),
            artifacts: job
                .artifacts
                .values()
                .map(|a| ManifestArtifact {
                    name: a.stored.name.clone(),
                    sha256: a.stored.sha256.clone(),
                    size: a.stored.size,
                    media_type: a.stored.media_type.clone(),
                    purged_by: a.purged_by.clone(),
                })
                .collect(),
            events,
            checkpoint: ManifestCheckpoint {
                note: covering.checkpoint.note.clone(),
                tree_size: size,
                root_hash: covering.checkpoint.root_hash.clone(),
            },
            job_state_sha256: Some(job_state_sha256),
        };
        let payload = serde_json::to_value(&manifest).map_err(storage)?;
        let document = self
            .licensing
            .sign_document(Purpose::Evidence, payload, EVIDENCE_CONTEXT)
            .await?;
        let bytes = document.to_canonical_json().map_err(storage)?;
        let location = format!("evidence/{bundle_id}/manifest.json");
        let manifest_sha256 = hex::encode(Sha256::digest(&bytes));
        self.objects
            .put_bytes(&location, bytes)
            .await
            .map_err(storage)?;
        let created = EvidenceBundleCreated {
            job_id: job_id.to_owned(),
            organization_id: submitted.organization_id,
            manifest_sha256,
            location,
            kid: document
                .signatures
                .first()
                .map(|s| s.kid.clone())
                .unwrap_or_default(),
            checkpoint_size: size,
        };
        let outcome = self
            .bus
            .execute::<EvidenceBundle>(ctx, &bundle_id, created, Some(0), &())
            .await?;
        Ok((bundle_id, document, outcome))
    }

    /// `job-state.json` (canonical JSON) for a job whose events are `job_records`: the
    /// submitter's events and those of every licence of the job's organization, all before the
    /// job's submission, proven in the tree of `size`, with the summary they establish.
    async fn job_state(
        &self,
        job_records: &[quantus_infra::event_store::LogRecord],
        size: u64,
    ) -> Result<Vec<u8>, CommandError> {
        use base64::Engine as _;
        let submitted = job_records
            .iter()
            .find(|r| r.envelope.event_type == "JobSubmitted")
            .ok_or_else(|| CommandError::Storage("the job has no JobSubmitted event".into()))?;
        let at = submitted.position;
        let organization = submitted.envelope.payload["organization_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let repository = self.bus.repository();
        let actor = &submitted.envelope.actor;
        let submitter_type = match actor.kind {
            quantus_domain::envelope::ActorKind::User => Some("User"),
            quantus_domain::envelope::ActorKind::Service => Some("Client"),
            quantus_domain::envelope::ActorKind::System => None,
        };
        let mut records = Vec::new();
        if let Some(kind) = submitter_type {
            records.extend(
                repository
                    .aggregate_records(kind, &actor.id)
                    .await
                    .map_err(storage)?
                    .into_iter()
                    .filter(|r| r.position < at),
            );
        }
        let licence_type =
            <quantus_domain::licensing::license::License as cqrs_es::Aggregate>::TYPE;
        for issued in repository
            .events_of_type(licence_type, "LicenseIssued")
            .await
            .map_err(storage)?
            .into_iter()
            .filter(|r| r.position < at && r.envelope.payload["organization_id"] == organization)
        {
            records.extend(
                repository
                    .aggregate_records(licence_type, &issued.envelope.aggregate_id)
                    .await
                    .map_err(storage)?
                    .into_iter()
                    .filter(|r| r.position < at),
            );
        }
        let mut positions: Vec<u64> = records.iter().map(|r| r.position).collect();
        positions.push(at);
        let paths = self.checkpoints.inclusion_many(&positions, size).await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut events: Vec<StateEvent> = records
            .iter()
            .chain(std::iter::once(submitted))
            .zip(paths)
            .map(|(r, path)| {
                let e = &r.envelope;
                Ok(StateEvent {
                    position: r.position,
                    aggregate_type: e.aggregate_type.clone(),
                    aggregate_id: e.aggregate_id.clone(),
                    sequence: e.sequence,
                    event_type: e.event_type.clone(),
                    hash: e.hash.clone(),
                    inclusion_path: path.iter().map(|h| b64.encode(h)).collect(),
                    envelope: if WITHHELD_TYPES.contains(&e.event_type.as_str()) {
                        None
                    } else {
                        Some(serde_json::to_value(e).map_err(storage)?)
                    },
                })
            })
            .collect::<Result<_, CommandError>>()?;
        let job = events
            .pop()
            .ok_or_else(|| CommandError::Storage("no proof for the job's event".into()))?;
        let summary = summarize(&job, &events).map_err(storage)?;
        let state = JobState {
            format: JOB_STATE_FORMAT.into(),
            job,
            events,
            summary,
        };
        quantus_crypto::document::canonical(&serde_json::to_value(&state).map_err(storage)?)
            .map_err(storage)
    }

    fn licensing_issuer(&self) -> String {
        self.licensing.issuer().to_owned()
    }

    /// A bundle's record and its signed manifest, checked against the recorded digest.
    pub async fn bundle(
        &self,
        id: &str,
    ) -> Result<(EvidenceBundleCreated, SignedDocument), CommandError> {
        let (bundle, _) = self.bus.load::<EvidenceBundle>(id).await?;
        let created = bundle
            .created
            .ok_or_else(|| CommandError::NotFound(format!("no evidence bundle {id}")))?;
        let bytes = self
            .objects
            .get_bytes(&created.location)
            .await
            .map_err(storage)?;
        if hex::encode(Sha256::digest(&bytes)) != created.manifest_sha256 {
            return Err(CommandError::Storage(format!(
                "the stored manifest of {id} no longer matches its digest"
            )));
        }
        let document = SignedDocument::from_canonical_json(&bytes).map_err(storage)?;
        Ok((created, document))
    }

    /// The bundle as a DSSE envelope around an in-toto Statement v1.
    pub async fn dsse(&self, id: &str) -> Result<serde_json::Value, CommandError> {
        use base64::Engine as _;
        let (_, document) = self.bundle(id).await?;
        let manifest: Manifest =
            serde_json::from_value(document.payload.clone()).map_err(storage)?;
        let statement = serde_json::to_vec(&in_toto_statement(&manifest)).map_err(storage)?;
        let signature = self
            .licensing
            .sign(
                Purpose::Evidence,
                &dsse_pae(IN_TOTO_PAYLOAD_TYPE, &statement),
                DSSE_CONTEXT,
            )
            .await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(serde_json::json!({
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "payload": b64.encode(&statement),
            "signatures": [{ "keyid": signature.kid, "sig": b64.encode(&signature.bytes) }],
        }))
    }

    /// One self-contained tar archive: the signed manifest, the public key set, the
    /// configuration snapshot, the DSSE envelope and, if asked, the artifacts still stored.
    pub async fn export(&self, id: &str, with_artifacts: bool) -> Result<Vec<u8>, CommandError> {
        let (created, document) = self.bundle(id).await?;
        let manifest: Manifest =
            serde_json::from_value(document.payload.clone()).map_err(storage)?;
        let keys = self.licensing.key_set().await?;
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "manifest.json".into(),
                document.to_canonical_json().map_err(storage)?,
            ),
            (
                "keys.json".into(),
                serde_json::to_vec_pretty(&keys).map_err(storage)?,
            ),
            (
                "statement.dsse.json".into(),
                serde_json::to_vec_pretty(&self.dsse(id).await?).map_err(storage)?,
            ),
        ];
        let config = self
            .objects
            .get_bytes(&config_path(&manifest.config_sha256))
            .await
            .map_err(storage)?;
        files.push(("config.json".into(), config.to_vec()));
        if manifest.job_state_sha256.is_some() {
            let location = format!("evidence/{id}/{JOB_STATE_FILE}");
            let state = self.objects.get_bytes(&location).await.map_err(storage)?;
            files.push((JOB_STATE_FILE.into(), state.to_vec()));
        }
        if with_artifacts {
            let (job, _) = self.job(&created.job_id).await?;
            for a in job.artifacts.values().filter(|a| a.purged_by.is_none()) {
                let bytes = self
                    .objects
                    .get_bytes(&a.stored.location)
                    .await
                    .map_err(storage)?;
                files.push((format!("artifacts/{}", a.stored.name), bytes.to_vec()));
            }
        }
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(manifest.created_at.timestamp().max(0) as u64);
            header.set_cksum();
            builder
                .append_data(
                    &mut header,
                    format!("evidence-{id}/{name}"),
                    bytes.as_slice(),
                )
                .map_err(storage)?;
        }
        builder.into_inner().map_err(storage)
    }
}

impl ClassifyError for quantus_domain::evidence::retention::RetentionError {
    fn classify(&self) -> CommandError {
        if self.is_validation() {
            CommandError::Invalid(self.to_string())
        } else {
            CommandError::Rejected(self.to_string())
        }
    }
}

impl Evidence {
    pub async fn retention(
        &self,
        organization_id: &str,
    ) -> Result<(quantus_domain::evidence::retention::RetentionPolicy, u64), CommandError> {
        self.bus
            .load::<quantus_domain::evidence::retention::RetentionPolicy>(
                &quantus_domain::evidence::retention::policy_id(organization_id),
            )
            .await
    }

    pub async fn retention_command(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        command: quantus_domain::evidence::retention::RetentionCommand,
    ) -> Result<CommandOutcome, CommandError> {
        let (org, _) = self.bus.load::<Organization>(organization_id).await?;
        if org.status == OrganizationStatus::Absent {
            return Err(CommandError::NotFound(format!(
                "no organization {organization_id}"
            )));
        }
        self.bus
            .execute::<quantus_domain::evidence::retention::RetentionPolicy>(
                ctx,
                &quantus_domain::evidence::retention::policy_id(organization_id),
                command,
                None,
                &(),
            )
            .await
    }

    /// Deletes the artifacts whose organization's policy says their time is up (unless a legal
    /// hold stands), then records each as purged. Deleting first means a crash in between
    /// leaves an artifact that a later sweep records, never bytes the log says are gone.
    /// Returns how many were purged.
    pub async fn sweep(
        &self,
        ctx: &CommandContext,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, CommandError> {
        use std::collections::HashMap;
        let stored = self
            .bus
            .repository()
            .events_of::<ArtifactStored>()
            .await
            .map_err(storage)?;
        let mut policies: HashMap<String, quantus_domain::evidence::retention::RetentionPolicy> =
            HashMap::new();
        let mut purged = 0;
        for (record, artifact) in stored {
            let e = &record.envelope;
            let policy = match policies.get(&e.tenant_id) {
                Some(p) => p.clone(),
                None => {
                    let (p, _) = self.retention(&e.tenant_id).await?;
                    policies.insert(e.tenant_id.clone(), p.clone());
                    p
                }
            };
            if policy.legal_hold.is_some() {
                continue;
            }
            let (job, _) = self.bus.load::<Job>(&e.aggregate_id).await?;
            let Some(submitted) = &job.submitted else {
                continue;
            };
            if job
                .artifacts
                .get(&artifact.name)
                .is_none_or(|a| a.purged_by.is_some())
            {
                continue;
            }
            let Some(days) = policy.keep_days(&submitted.job_class) else {
                continue;
            };
            if e.occurred_at + chrono::Duration::days(i64::from(days)) > now {
                continue;
            }
            self.objects
                .delete(&artifact.location)
                .await
                .map_err(storage)?;
            let command = JobCommand::PurgeArtifact {
                name: artifact.name.clone(),
                policy: policy.describe(&submitted.job_class),
            };
            let ctx = CommandContext {
                tenant_id: e.tenant_id.clone(),
                ..ctx.clone()
            };
            self.bus
                .execute::<Job>(&ctx, &e.aggregate_id, command, None, &())
                .await?;
            purged += 1;
        }
        Ok(purged)
    }
}

/// An exported archive's contents: the signed manifest, the key set it carries, and the
/// other files by their path inside the bundle folder (`config.json`, `artifacts/<name>`).
pub struct Unpacked {
    pub manifest: SignedDocument,
    pub keys: Option<quantus_crypto::keys::TrustedKeys>,
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Reads an archive made by [`Evidence::export`].
pub fn unpack(archive: &[u8]) -> Result<Unpacked, String> {
    use std::io::Read as _;
    let mut files = std::collections::BTreeMap::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("broken archive entry: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("bad path in archive: {e}"))?
            .to_string_lossy()
            .into_owned();
        // Paths are `evidence-<id>/<file>`; anything else is ignored.
        let Some((_, inner)) = path.split_once('/') else {
            continue;
        };
        if inner.is_empty() || inner.contains("..") {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {path}: {e}"))?;
        files.insert(inner.to_owned(), bytes);
    }
    let manifest = files
        .remove("manifest.json")
        .ok_or("the archive has no manifest.json")?;
    let manifest = SignedDocument::from_canonical_json(&manifest)
        .map_err(|e| format!("manifest.json: {e}"))?;
    let keys = match files.remove("keys.json") {
        Some(k) => Some(
            quantus_crypto::keys::TrustedKeys::from_json(&k)
                .map_err(|e| format!("keys.json: {e}"))?,
        ),
        None => None,
    };
    Ok(Unpacked {
        manifest,
        keys,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A tar archive holding `files` under `evidence-x/`.
    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("evidence-x/{name}"), *bytes)
                .unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn an_archive_without_a_valid_manifest_is_refused_with_a_reason() {
        assert!(unpack(b"")
            .err()
            .expect("refused")
            .contains("no manifest.json"));
        let no_manifest = archive(&[("config.json", b"{}")]);
        assert!(unpack(&no_manifest)
            .err()
            .expect("refused")
            .contains("no manifest.json"));
        let bad = archive(&[("manifest.json", b"{\"payload\":")]);
        assert!(unpack(&bad)
            .err()
            .expect("refused")
            .starts_with("manifest.json:"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_bytes_are_unpacked_or_refused_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let _ = unpack(&bytes);
        }

        #[test]
        fn any_corruption_of_an_archive_is_unpacked_or_refused(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = archive(&[
                ("manifest.json", br#"{"payload":{"a":1},"signatures":[]}"#),
                ("keys.json", br#"{"keys":[]}"#),
                ("artifacts/counts.json", br#"{"00":512}"#),
            ]);
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = unpack(&bytes);
        }
    }
}
