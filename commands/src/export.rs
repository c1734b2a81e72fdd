//! Signed compliance exports: one tenant's events between two instants, as a tar archive an
//! auditor checks offline with public keys alone (`docs/event-log.md`, "Compliance exports").
//!
//! The archive is written in order `keys.json`, `checkpoint.note`, `events/NNNNNN.jsonl`...,
//! `manifest.json`, so it streams: each events file is one chunk of at most [`CHUNK`] events
//! held in memory, and the manifest, signed last, commits to every chunk's digest, count and
//! positions. Completeness is the signed position list: the manifest states the log positions
//! the range covers and the export holds every event of the tenant among them (see
//! `docs/DECISIONS.md`).

use std::collections::HashMap;
use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use quantus_crypto::checkpoint;
use quantus_crypto::cosignature::{cosigners, WitnessKey};
use quantus_crypto::document::SignedDocument;
use quantus_crypto::keys::{Purpose, TrustedKeys};
use quantus_crypto::merkle::{leaf_hash, verify_inclusion, Hash};
use quantus_domain::audit::check_event;
use quantus_domain::envelope::Envelope;
use quantus_domain::organization::{Organization, OrganizationStatus};
use quantus_domain::CommandContext;
use quantus_infra::event_store::{position_before, read_log};
use quantus_infra::witness::{WitnessClient, WitnessEndpoint};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;

use crate::checkpoints::{Checkpoints, RecordedCheckpoint};
use crate::licensing::Licensing;
use crate::CommandError;

pub const EXPORT_CONTEXT: &[u8] = b"quantus/export/v1";
pub const EXPORT_FORMAT: &str = "quantus-export/1";
/// Events per `events/NNNNNN.jsonl` file: what the writer holds in memory at once.
pub const CHUNK: usize = 1000;
/// The longest range one export may cover; longer periods are exported in parts.
pub const MAX_RANGE_DAYS: i64 = 366;

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportChunk {
    /// Path inside the archive's folder, `events/000001.jsonl`.
    pub name: String,
    /// SHA-256 (hex) of the file's bytes.
    pub sha256: String,
    pub events: u64,
    pub first_position: u64,
    pub last_position: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportCheckpoint {
    /// The log's signed note (without witness cosignatures; those are in `checkpoint.note`).
    pub note: String,
    pub tree_size: u64,
    /// Hex.
    pub root_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportManifest {
    pub format: String,
    pub export_id: String,
    pub issuer: String,
    pub created_at: DateTime<Utc>,
    pub tenant: String,
    /// The range asked for: events appended at or after `from` and before `to`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The range as log positions: `after_position` < p <= `through_position`.
    pub after_position: u64,
    pub through_position: u64,
    /// How many events of the tenant those positions hold: all of them are in the archive.
    pub events: u64,
    pub chunks: Vec<ExportChunk>,
    /// SHA-256 (hex) of `keys.json` as exported.
    pub keys_sha256: String,
    pub checkpoint: ExportCheckpoint,
}

/// One line of an events file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportLine {
    position: u64,
    envelope: serde_json::Value,
    /// Audit path (base64) of the event in the checkpoint's tree.
    inclusion_path: Vec<String>,
}

/// What [`ComplianceExport::plan`] settled before a byte is sent: errors after it can only cut
/// the stream short (which the verifier reports as a truncated archive).
pub struct ExportPlan {
    tenant: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: u64,
    through: u64,
    checkpoint: RecordedCheckpoint,
    /// The note with the witnesses' cosignature lines appended.
    witnessed_note: String,
    keys: Vec<u8>,
    pub file_name: String,
}

#[derive(Clone)]
pub struct ComplianceExport {
    licensing: Licensing,
    checkpoints: Checkpoints,
    /// Asked to cosign the export's checkpoint before it is written (`QUANTUS_WITNESSES`).
    witnesses: Vec<WitnessEndpoint>,
}

impl ComplianceExport {
    pub fn new(licensing: Licensing, checkpoints: Checkpoints) -> Self {
        Self {
            licensing,
            checkpoints,
            witnesses: Vec::new(),
        }
    }

    pub fn with_witnesses(self, witnesses: Vec<WitnessEndpoint>) -> Self {
        Self { witnesses, ..self }
    }

    /// Checks the range and the tenant, finds the range's positions and a checkpoint that
    /// covers them (signing one when the latest does not). `ctx` is the caller's.
    pub async fn plan(
        &self,
        ctx: &CommandContext,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<ExportPlan, CommandError> {
        if from >= to {
            return Err(CommandError::Invalid("from must be before to".into()));
        }
        if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
            return Err(CommandError::Invalid(format!(
                "an export covers at most {MAX_RANGE_DAYS} days; export longer periods in parts"
            )));
        }
        let bus = self.licensing.bus();
        bus.load_existing::<Organization>(tenant, "organization", |org| {
            org.status != OrganizationStatus::Absent
        })
        .await?;
        let db = bus.repository().database().clone();
        let after = position_before(&db, from).await.map_err(storage)?;
        let through = position_before(&db, to).await.map_err(storage)?.max(after);
        let checkpoint = match self.checkpoints.latest().await? {
            Some(c) if c.checkpoint.tree_size >= through => c,
            _ => {
                let platform = CommandContext {
                    tenant_id: quantus_domain::schema::PLATFORM_TENANT.to_owned(),
                    ..ctx.clone()
                };
                self.checkpoints.sign_now(&platform).await?;
                self.checkpoints
                    .latest()
                    .await?
                    .filter(|c| c.checkpoint.tree_size >= through)
                    .ok_or_else(|| storage("no checkpoint covers the range"))?
            }
        };
        if !self.witnesses.is_empty() {
            // The checkpoint is the latest: witnesses that have not cosigned it yet are asked
            // now, so the archive carries their cosignatures. One that refuses or is away is
            // left out; `verify-export --quorum` decides whether enough cosigned.
            let never = chrono::Duration::days(36500);
            let outcomes = self
                .checkpoints
                .witness_latest(
                    &self.witnesses,
                    &WitnessClient::default(),
                    never,
                    Utc::now(),
                )
                .await?;
            for (witness, outcome) in outcomes {
                tracing::info!(%witness, ?outcome, "witness asked for a compliance export");
            }
        }
        let mut witnessed_note = checkpoint.checkpoint.note.clone();
        for c in self
            .checkpoints
            .cosignatures()
            .of(checkpoint.checkpoint.tree_size)
            .await
            .map_err(storage)?
        {
            witnessed_note.push_str(&c.line);
        }
        let keys = self.licensing.key_set().await?;
        Ok(ExportPlan {
            file_name: format!(
                "export-{tenant}-{}-{}.tar",
                from.format("%Y%m%dT%H%M%SZ"),
                to.format("%Y%m%dT%H%M%SZ")
            ),
            tenant: tenant.to_owned(),
            from,
            to,
            after,
            through,
            checkpoint,
            witnessed_note,
            keys: serde_json::to_vec_pretty(&keys).map_err(storage)?,
        })
    }

    /// Writes the archive into `out`, a bounded channel (the HTTP body or a file writer):
    /// memory stays at one chunk plus what the channel holds. Dropping the receiver stops it.
    pub async fn write(&self, plan: ExportPlan, out: Sender<Vec<u8>>) -> Result<(), CommandError> {
        let export_id = uuid::Uuid::now_v7().to_string();
        let folder = format!("export-{export_id}");
        let mtime = Utc::now();
        let mut tar = Tar::new(folder, mtime, out);
        tar.put("keys.json", &plan.keys).await?;
        tar.put("checkpoint.note", plan.witnessed_note.as_bytes())
            .await?;
        let db = self.licensing.bus().repository().database().clone();
        let size = plan.checkpoint.checkpoint.tree_size;
        let mut chunks = Vec::new();
        let mut pending: Vec<(u64, Envelope)> = Vec::with_capacity(CHUNK);
        let mut cursor = plan.after;
        let mut total = 0;
        loop {
            let records = read_log(&db, cursor, 5000).await.map_err(storage)?;
            let done = records.last().is_none_or(|r| r.position >= plan.through);
            for r in records {
                if r.position > plan.through {
                    break;
                }
                cursor = r.position;
                if r.envelope.tenant_id == plan.tenant {
                    pending.push((r.position, r.envelope));
                }
                if pending.len() == CHUNK {
                    total += pending.len() as u64;
                    let chunk = self
                        .chunk(&mut tar, chunks.len() + 1, &pending, size)
                        .await?;
                    chunks.push(chunk);
                    pending.clear();
                }
            }
            if done {
                break;
            }
        }
        if !pending.is_empty() {
            total += pending.len() as u64;
            let chunk = self
                .chunk(&mut tar, chunks.len() + 1, &pending, size)
                .await?;
            chunks.push(chunk);
        }
        let c = &plan.checkpoint.checkpoint;
        let manifest = ExportManifest {
            format: EXPORT_FORMAT.into(),
            export_id,
            issuer: self.licensing.issuer().to_owned(),
            created_at: mtime,
            tenant: plan.tenant,
            from: plan.from,
            to: plan.to,
            after_position: plan.after,
            through_position: plan.through,
            events: total,
            chunks,
            keys_sha256: hex::encode(Sha256::digest(&plan.keys)),
            checkpoint: ExportCheckpoint {
                note: c.note.clone(),
                tree_size: c.tree_size,
                root_hash: c.root_hash.clone(),
            },
        };
        let document = self
            .licensing
            .sign_document(
                Purpose::Evidence,
                serde_json::to_value(&manifest).map_err(storage)?,
                EXPORT_CONTEXT,
            )
            .await?;
        tar.put(
            "manifest.json",
            &document.to_canonical_json().map_err(storage)?,
        )
        .await?;
        tar.finish().await
    }

    async fn chunk(
        &self,
        tar: &mut Tar,
        number: usize,
        events: &[(u64, Envelope)],
        size: u64,
    ) -> Result<ExportChunk, CommandError> {
        let positions: Vec<u64> = events.iter().map(|(p, _)| *p).collect();
        let paths = self.checkpoints.inclusion_many(&positions, size).await?;
        let mut bytes = Vec::new();
        for ((position, envelope), path) in events.iter().zip(paths) {
            let line = ExportLine {
                position: *position,
                envelope: serde_json::to_value(envelope).map_err(storage)?,
                inclusion_path: path.iter().map(|h| STANDARD.encode(h)).collect(),
            };
            serde_json::to_writer(&mut bytes, &line).map_err(storage)?;
            bytes.push(b'\n');
        }
        let name = format!("events/{number:06}.jsonl");
        tar.put(&name, &bytes).await?;
        Ok(ExportChunk {
            name,
            sha256: hex::encode(Sha256::digest(&bytes)),
            events: events.len() as u64,
            first_position: positions[0],
            last_position: positions[positions.len() - 1],
        })
    }
}

/// Tar entries written one at a time with the `tar` crate's writer, each sent on at once.
struct Tar {
    builder: tar::Builder<Vec<u8>>,
    folder: String,
    mtime: DateTime<Utc>,
    out: Sender<Vec<u8>>,
}

impl Tar {
    fn new(folder: String, mtime: DateTime<Utc>, out: Sender<Vec<u8>>) -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
            folder,
            mtime,
            out,
        }
    }

    async fn put(&mut self, name: &str, bytes: &[u8]) -> Result<(), CommandError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(self.mtime.timestamp().max(0) as u64);
        header.set_cksum();
        self.builder
            .append_data(&mut header, format!("{}/{name}", self.folder), bytes)
            .map_err(storage)?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), CommandError> {
        let bytes = std::mem::take(self.builder.get_mut());
        self.out
            .send(bytes)
            .await
            .map_err(|_| storage("the export's reader went away"))
    }

    async fn finish(mut self) -> Result<(), CommandError> {
        self.builder.finish().map_err(storage)?;
        self.flush().await
    }
}

/// What `verify-export` established.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub tenant: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub after_position: u64,
    pub through_position: u64,
    pub events: u64,
    pub aggregates: u64,
    pub tree_size: u64,
    pub signed_by: String,
    /// `the given key set` or `the archive's own key set`.
    pub keys_from: &'static str,
    /// The witnesses whose cosignatures of the checkpoint verified.
    pub cosigned_by: Vec<String>,
}

/// How the verifier is to trust: the key set (`None`: the archive's own `keys.json`, which
/// proves only that the archive is self-consistent) and the witnesses.
pub struct Trust {
    pub keys: Option<TrustedKeys>,
    pub witnesses: Vec<WitnessKey>,
    pub quorum: usize,
    pub now: DateTime<Utc>,
}

/// One tar entry: its path inside the export's folder and its bytes.
fn entries<R: Read>(
    reader: R,
    mut each: impl FnMut(&str, &mut dyn Read) -> Result<bool, String>,
) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| format!("a broken archive entry (the archive is truncated?): {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a bad path in the archive: {e}"))?
            .to_string_lossy()
            .into_owned();
        let Some((_, inner)) = path.split_once('/') else {
            continue;
        };
        if !each(inner, &mut entry)? {
            break;
        }
    }
    Ok(())
}

fn read_all(r: &mut dyn Read, name: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes)
        .map_err(|e| format!("reading {name} (the archive is truncated?): {e}"))?;
    Ok(bytes)
}

/// Verifies an archive offline. `open` gives the archive from its start; it is read twice,
/// streaming: first for the manifest and key set (the manifest comes last so the writer can
/// stream), then the events against the verified manifest, one chunk in memory at a time.
pub fn verify_archive<R: Read>(
    open: impl Fn() -> std::io::Result<R>,
    trust: &Trust,
) -> Result<ExportReport, String> {
    let reopen = || open().map_err(|e| format!("cannot read the archive: {e}"));
    let mut manifest_bytes = None;
    let mut archive_keys = None;
    entries(reopen()?, |name, r| {
        match name {
            "manifest.json" => manifest_bytes = Some(read_all(r, name)?),
            "keys.json" => archive_keys = Some(read_all(r, name)?),
            _ => {}
        }
        Ok(true)
    })?;
    let manifest_bytes = manifest_bytes
        .ok_or("the archive has no manifest.json: it is truncated or not an export")?;
    let document = SignedDocument::from_canonical_json(&manifest_bytes)
        .map_err(|e| format!("manifest.json: {e}"))?;
    let (keys, keys_from) = match (&trust.keys, &archive_keys) {
        (Some(k), _) => (k.clone(), "the given key set"),
        (None, Some(bytes)) => (
            TrustedKeys::from_json(bytes).map_err(|e| format!("keys.json: {e}"))?,
            "the archive's own key set (pass --keys for an independent one)",
        ),
        (None, None) => return Err("the archive has no keys.json; pass --keys".into()),
    };
    let manifest: ExportManifest = serde_json::from_value(document.payload.clone())
        .map_err(|e| format!("the manifest is malformed: {e}"))?;
    if manifest.format != EXPORT_FORMAT {
        return Err(format!("unknown export format {:?}", manifest.format));
    }
    let signed_by = document
        .verify(
            &keys,
            Purpose::Evidence,
            EXPORT_CONTEXT,
            manifest.created_at,
            trust.now,
        )
        .map_err(|e| format!("the manifest's signature: {e}"))?
        .kid
        .clone();
    if archive_keys
        .as_ref()
        .is_some_and(|k| hex::encode(Sha256::digest(k)) != manifest.keys_sha256)
    {
        return Err("keys.json is not the key set the manifest was signed with".into());
    }
    let cp = checkpoint::open(&manifest.checkpoint.note, &keys, trust.now)
        .map_err(|e| format!("the log checkpoint: {e}"))?;
    if cp.size != manifest.checkpoint.tree_size
        || hex::encode(cp.root) != manifest.checkpoint.root_hash
        || cp.size < manifest.through_position
    {
        return Err(
            "the signed checkpoint does not match the manifest's tree size or root, or does not cover the range"
                .into(),
        );
    }

    let mut check = EventCheck {
        manifest: &manifest,
        root: cp.root,
        size: cp.size,
        last_position: manifest.after_position,
        aggregates: HashMap::new(),
    };
    let mut chunk = 0usize;
    let mut cosigned_by = Vec::new();
    entries(reopen()?, |name, r| {
        if name == "checkpoint.note" {
            let note = String::from_utf8(read_all(r, name)?)
                .map_err(|_| "checkpoint.note is not UTF-8")?;
            if !note.starts_with(&manifest.checkpoint.note) {
                return Err("checkpoint.note is not the checkpoint the manifest names".into());
            }
            if !trust.witnesses.is_empty() {
                cosigned_by = cosigners(&note, &trust.witnesses)
                    .map_err(|e| format!("checkpoint.note: {e}"))?
                    .into_iter()
                    .map(|c| c.witness)
                    .collect();
            }
            return Ok(true);
        }
        if !name.starts_with("events/") {
            return Ok(true);
        }
        let listed = manifest
            .chunks
            .get(chunk)
            .ok_or_else(|| format!("{name} is not listed in the signed manifest: it was added"))?;
        if listed.name != name {
            return Err(format!(
                "{name} is not the next events file the manifest lists ({}): files were removed or reordered",
                listed.name
            ));
        }
        chunk += 1;
        let bytes = read_all(r, name)?;
        let mut count = 0u64;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            count += 1;
            check.line(name, line)?;
        }
        if count != listed.events {
            return Err(format!(
                "{name} holds {count} events, the signed manifest lists {}: events are missing or were added",
                listed.events
            ));
        }
        if check.last_position != listed.last_position {
            return Err(format!(
                "{name} ends at position {}, the signed manifest says {}: events are missing",
                check.last_position, listed.last_position
            ));
        }
        if hex::encode(Sha256::digest(&bytes)) != listed.sha256 {
            return Err(format!(
                "{name} does not have the SHA-256 the signed manifest records: it was changed"
            ));
        }
        Ok(true)
    })?;
    if chunk < manifest.chunks.len() {
        return Err(format!(
            "{} listed by the signed manifest is missing from the archive: the archive is truncated",
            manifest.chunks[chunk].name
        ));
    }
    let listed: u64 = manifest.chunks.iter().map(|c| c.events).sum();
    if listed != manifest.events {
        return Err(format!(
            "the manifest's files hold {listed} events but it counts {}",
            manifest.events
        ));
    }
    if trust.quorum > 0 && cosigned_by.len() < trust.quorum {
        return Err(format!(
            "the checkpoint carries valid cosignatures of {} of the given witnesses, {} needed",
            cosigned_by.len(),
            trust.quorum
        ));
    }
    Ok(ExportReport {
        tenant: manifest.tenant.clone(),
        from: manifest.from,
        to: manifest.to,
        after_position: manifest.after_position,
        through_position: manifest.through_position,
        events: manifest.events,
        aggregates: check.aggregates.len() as u64,
        tree_size: cp.size,
        signed_by,
        keys_from,
        cosigned_by,
    })
}

/// The per-event checks, in archive order.
struct EventCheck<'a> {
    manifest: &'a ExportManifest,
    root: Hash,
    size: u64,
    last_position: u64,
    /// (aggregate type, id) -> (last sequence, last hash) seen in the export.
    aggregates: HashMap<(String, String), (u64, String)>,
}

impl EventCheck<'_> {
    fn line(&mut self, file: &str, line: &[u8]) -> Result<(), String> {
        let line: ExportLine =
            serde_json::from_slice(line).map_err(|e| format!("{file}: a malformed line: {e}"))?;
        let p = line.position;
        let at = |reason: String| format!("the event at position {p}: {reason}");
        let envelope: Envelope = serde_json::from_value(line.envelope)
            .map_err(|e| at(format!("not an event envelope: {e}")))?;
        if envelope.tenant_id != self.manifest.tenant {
            return Err(at(format!(
                "it belongs to tenant {}, not to the exported tenant {}: it was injected",
                envelope.tenant_id, self.manifest.tenant
            )));
        }
        if p <= self.last_position || p > self.manifest.through_position {
            return Err(at(format!(
                "its position is not after {} and within the range {}..={}",
                self.last_position,
                self.manifest.after_position + 1,
                self.manifest.through_position
            )));
        }
        self.last_position = p;
        let hash = check_event(p, &envelope)
            .map_err(|b| at(format!("{}: the event was altered", b.reason)))?;
        let key = (
            envelope.aggregate_type.clone(),
            envelope.aggregate_id.clone(),
        );
        if let Some((sequence, prev)) = self.aggregates.get(&key) {
            if envelope.sequence != sequence + 1 || envelope.prev_hash != *prev {
                return Err(at(format!(
                    "{} {} #{} follows #{sequence} in the export: an event of the aggregate is missing",
                    key.0, key.1, envelope.sequence
                )));
            }
        }
        let path: Vec<Hash> = line
            .inclusion_path
            .iter()
            .map(|h| STANDARD.decode(h).ok().and_then(|b| b.try_into().ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| at("an inclusion path hash is not 32 bytes of base64".into()))?;
        if !verify_inclusion(&leaf_hash(&hash), p - 1, self.size, &path, &self.root) {
            return Err(at(format!(
                "it is not included in the signed checkpoint of {} events: the event or the log was rewritten",
                self.size
            )));
        }
        self.aggregates
            .insert(key, (envelope.sequence, envelope.hash.clone()));
        Ok(())
    }
}
