//! Signed log checkpoints: the RFC 9162 tree head over the whole log, signed with
//! QuantumLock's checkpoint key in the C2SP signed-note format, recorded as an event; and the
//! inclusion and consistency proofs against them.

use chrono::{DateTime, Utc};
use quantus_crypto::checkpoint::{note, Checkpoint, CHECKPOINT_CONTEXT};
use quantus_crypto::cosignature::cosigners;
use quantus_crypto::keys::Purpose;
use quantus_crypto::merkle::Hash;
use quantus_crypto::tiles;
use quantus_crypto::witness::AddCheckpoint;
use quantus_domain::audit::checkpoint::{
    checkpoint_id, LogCheckpoint, LogCheckpointError, LogCheckpointSigned,
};
use quantus_domain::CommandContext;
use quantus_infra::log_tiles::LogTiles;
use quantus_infra::witness::{
    Cosignatures, StoredCosignature, Submitted, WitnessClient, WitnessEndpoint,
};
use quantus_infra::InfraError;

use crate::licensing::Licensing;
use crate::{ClassifyError, CommandError};

impl ClassifyError for LogCheckpointError {
    fn classify(&self) -> CommandError {
        match self {
            LogCheckpointError::Empty => CommandError::Invalid(self.to_string()),
            LogCheckpointError::AlreadySigned => CommandError::Rejected(self.to_string()),
        }
    }
}

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

/// A recorded checkpoint and where it sits in the log.
#[derive(Debug, Clone)]
pub struct RecordedCheckpoint {
    pub position: u64,
    pub checkpoint: LogCheckpointSigned,
}

/// What a witness did with the latest checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Witnessed {
    /// It cosigned the tree of this size.
    Cosigned(u64),
    /// Its cosignature of the latest checkpoint is recent enough: not asked.
    Fresh,
    /// It refused, and why (an inconsistent or shorter log, an unknown log, a bad signature).
    Refused(String),
    /// It did not answer.
    Unreachable(String),
}

#[derive(Clone)]
pub struct Checkpoints {
    licensing: Licensing,
    origin: String,
}

/// The checkpoint origin line for an issuer URL: its host (and port) and `/log`, as C2SP asks
/// (a schema-less URL naming the log).
pub fn origin_of(issuer: &str) -> String {
    let host = issuer
        .split_once("://")
        .map_or(issuer, |(_, rest)| rest)
        .trim_end_matches('/');
    format!("{host}/log")
}

fn parse(position: u64, payload: serde_json::Value) -> Result<RecordedCheckpoint, CommandError> {
    Ok(RecordedCheckpoint {
        position,
        checkpoint: serde_json::from_value(payload).map_err(storage)?,
    })
}

impl Checkpoints {
    pub fn new(licensing: Licensing, issuer: &str) -> Self {
        Self {
            licensing,
            origin: origin_of(issuer),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub async fn latest(&self) -> Result<Option<RecordedCheckpoint>, CommandError> {
        self.licensing
            .bus()
            .repository()
            .latest_checkpoint()
            .await
            .map_err(storage)?
            .map(|(p, v)| parse(p, v))
            .transpose()
    }

    pub async fn list(
        &self,
        after_size: u64,
        limit: u32,
    ) -> Result<Vec<RecordedCheckpoint>, CommandError> {
        self.licensing
            .bus()
            .repository()
            .checkpoints(after_size, limit)
            .await
            .map_err(storage)?
            .into_iter()
            .map(|(p, v)| parse(p, v))
            .collect()
    }

    /// The witnesses' cosignatures gathered so far.
    pub fn cosignatures(&self) -> Cosignatures {
        Cosignatures::new(self.licensing.bus().repository().database().clone())
    }

    /// Submits the latest checkpoint to each witness that has not cosigned it, or whose
    /// cosignature of it is older than `refresh` (a fresh cosignature is what tells an auditor
    /// the log was not cut short since), and keeps what they sign.
    pub async fn witness_latest(
        &self,
        witnesses: &[WitnessEndpoint],
        client: &WitnessClient,
        refresh: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Witnessed)>, CommandError> {
        let Some(latest) = self.latest().await? else {
            return Ok(Vec::new());
        };
        let stored = self
            .cosignatures()
            .latest_by_witness()
            .await
            .map_err(storage)?;
        let mut outcomes = Vec::new();
        for witness in witnesses {
            let last = stored.get(&witness.key.name);
            let outcome = match last {
                Some(c)
                    if c.tree_size == latest.checkpoint.tree_size
                        && now - c.cosigned_at < refresh =>
                {
                    Witnessed::Fresh
                }
                _ => {
                    self.submit(
                        witness,
                        client,
                        &latest.checkpoint,
                        last.map_or(0, |c| c.tree_size),
                    )
                    .await?
                }
            };
            outcomes.push((witness.key.name.clone(), outcome));
        }
        Ok(outcomes)
    }

    async fn submit(
        &self,
        witness: &WitnessEndpoint,
        client: &WitnessClient,
        checkpoint: &LogCheckpointSigned,
        mut old: u64,
    ) -> Result<Witnessed, CommandError> {
        let size = checkpoint.tree_size;
        // A second try when the witness says it saw another size than our records (a lost
        // answer, or a witness that was reset).
        for _ in 0..2 {
            if old > size {
                return Ok(Witnessed::Refused(format!(
                    "it cosigned a tree of {old} entries, more than the latest checkpoint's {size}: the log was cut short or forked"
                )));
            }
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                self.consistency(old, size).await?.2
            };
            let request = AddCheckpoint {
                old_size: old,
                proof,
                note: checkpoint.note.clone(),
            };
            match client.submit(&witness.url, &request).await {
                Err(e) => return Ok(Witnessed::Unreachable(e.to_string())),
                Ok(Submitted::Conflict(known)) => old = known,
                Ok(Submitted::Refused(status, body)) => {
                    return Ok(Witnessed::Refused(format!("{status}: {}", body.trim())))
                }
                Ok(Submitted::Cosigned(lines)) => {
                    let cosigned = format!("{}{lines}", checkpoint.note);
                    let found = cosigners(&cosigned, std::slice::from_ref(&witness.key))
                        .map_err(|e| CommandError::Invalid(e.to_string()))?;
                    let Some(c) = found.into_iter().next() else {
                        return Ok(Witnessed::Refused(
                            "its answer carries no valid cosignature by its key".into(),
                        ));
                    };
                    self.cosignatures()
                        .record(&StoredCosignature {
                            tree_size: size,
                            checkpoint: checkpoint.note.clone(),
                            witness: c.witness,
                            line: lines,
                            cosigned_at: c.at,
                        })
                        .await
                        .map_err(storage)?;
                    return Ok(Witnessed::Cosigned(size));
                }
            }
        }
        Ok(Witnessed::Refused(format!(
            "it keeps answering that it saw another size (last: {old})"
        )))
    }

    /// The log's Merkle tree as stored tiles.
    pub fn tiles(&self) -> LogTiles {
        LogTiles::new(self.licensing.bus().repository().database().clone())
    }

    /// Computes over the tree of the first `size` events from its stored tiles (O(log n) of
    /// them), growing the tiles first if the log has grown past them.
    async fn over_tree<T>(
        &self,
        size: u64,
        compute: impl Fn(&mut dyn FnMut(u32, u64) -> Hash) -> T,
    ) -> Result<T, CommandError> {
        let tiles = self.tiles();
        tiles.grow_to(size).await.map_err(|e| match e {
            InfraError::NotFound(reason) => CommandError::NotFound(reason),
            e => storage(e),
        })?;
        let needed = tiles::tiles_needed(size, &compute);
        let set = tiles.load(size, &needed).await.map_err(storage)?;
        set.run(compute).map_err(storage)
    }

    /// Signs a checkpoint over the whole log now, unless nothing but the previous checkpoint
    /// was appended since. Another process signing the same size first is not an error.
    pub async fn sign_now(
        &self,
        ctx: &CommandContext,
    ) -> Result<Option<LogCheckpointSigned>, CommandError> {
        let db = self.licensing.bus().repository().database().clone();
        let head = db.head_position().await.map_err(storage)?;
        let latest = self.latest().await?;
        if head == 0 || latest.as_ref().is_some_and(|l| head <= l.position) {
            return Ok(None);
        }
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: head,
            root: self.over_tree(head, |n| tiles::tree_root(head, n)).await?,
        };
        let body = checkpoint.body();
        let signature = self
            .licensing
            .sign(Purpose::Checkpoint, body.as_bytes(), CHECKPOINT_CONTEXT)
            .await?;
        let ring = self.licensing.keyring(Purpose::Checkpoint).await?;
        let public = ring
            .trusted_keys()
            .into_iter()
            .find(|k| k.kid == signature.kid)
            .ok_or_else(|| CommandError::Storage("the signing key is not in its keyring".into()))?
            .public_key();
        let signed = LogCheckpointSigned {
            tree_size: head,
            root_hash: hex::encode(checkpoint.root),
            note: note(&checkpoint, &self.origin, &public, &signature.bytes),
            kid: signature.kid,
        };
        let result = self
            .licensing
            .bus()
            .execute::<LogCheckpoint>(ctx, &checkpoint_id(head), signed.clone(), None, &())
            .await;
        match result {
            Ok(_) => Ok(Some(signed)),
            Err(CommandError::Rejected(_) | CommandError::Concurrency(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a checkpoint is due: `every_events` new events, or `every` time with any.
    pub async fn due(
        &self,
        every_events: u64,
        every: chrono::Duration,
        now: DateTime<Utc>,
        last_signed: DateTime<Utc>,
    ) -> Result<bool, CommandError> {
        let head = self
            .licensing
            .bus()
            .repository()
            .database()
            .head_position()
            .await
            .map_err(storage)?;
        let (last_size, last_position) = match self.latest().await? {
            Some(l) => (l.checkpoint.tree_size, l.position),
            None => (0, 0),
        };
        let fresh = head > last_position;
        Ok(fresh && (head - last_size >= every_events || now - last_signed >= every))
    }

    /// The audit path of the event at `position` in the tree of `size` events.
    pub async fn inclusion(
        &self,
        position: u64,
        size: u64,
    ) -> Result<(Hash, Vec<Hash>, Hash), CommandError> {
        if position == 0 || position > size {
            return Err(CommandError::Invalid(format!(
                "position {position} is not in a tree of {size} events"
            )));
        }
        let index = position - 1;
        self.over_tree(size, |n| {
            (
                n(0, index),
                tiles::inclusion_path(index, size, n),
                tiles::tree_root(size, n),
            )
        })
        .await
    }

    /// Audit paths of several events in the tree of `size` events (one read of the log).
    pub async fn inclusion_many(
        &self,
        positions: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, CommandError> {
        if let Some(p) = positions.iter().find(|p| **p == 0 || **p > size) {
            return Err(CommandError::Invalid(format!(
                "position {p} is not in a tree of {size} events"
            )));
        }
        self.over_tree(size, |n| {
            positions
                .iter()
                .map(|p| tiles::inclusion_path(p - 1, size, n))
                .collect()
        })
        .await
    }

    /// The root of the tree of `size` events with the leaf hashes of positions `first..` given
    /// (recomputed by an auditor from the events) and every node outside them from the stored
    /// tiles: the signed root only if the stored log still holds exactly those events.
    pub async fn root_over(
        &self,
        size: u64,
        first: u64,
        leaves: &[Hash],
    ) -> Result<Hash, CommandError> {
        if first == 0 || first - 1 + leaves.len() as u64 > size {
            return Err(CommandError::Invalid(format!(
                "positions {first} to {} are not in a tree of {size} events",
                first - 1 + leaves.len() as u64
            )));
        }
        self.over_tree(size, |n| tiles::tree_root_over(size, first - 1, leaves, n))
            .await
    }

    /// The stored leaf hashes of positions `first..first + count` in the tree of `size` events:
    /// where a range that does not hash to the signed root differs from it.
    pub async fn stored_leaves(
        &self,
        size: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<Hash>, CommandError> {
        if first == 0 || first - 1 + count > size {
            return Err(CommandError::Invalid(format!(
                "positions {first} to {} are not in a tree of {size} events",
                first - 1 + count
            )));
        }
        self.over_tree(size, |n| {
            (first - 1..first - 1 + count).map(|i| n(0, i)).collect()
        })
        .await
    }

    /// The proof that the tree of `from` events is a prefix of the tree of `to` events.
    pub async fn consistency(
        &self,
        from: u64,
        to: u64,
    ) -> Result<(Hash, Hash, Vec<Hash>), CommandError> {
        if from == 0 || from > to {
            return Err(CommandError::Invalid(format!(
                "need 0 < from <= to, got from={from} to={to}"
            )));
        }
        self.over_tree(to, |n| {
            (
                tiles::tree_root(from, n),
                tiles::tree_root(to, n),
                tiles::consistency_path(from, to, n),
            )
        })
        .await
    }
}
