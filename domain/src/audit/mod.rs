//! Audit: the log's signed checkpoints ([`checkpoint`]) and the auditor's check over a whole
//! log, pure: feed it records in any order that keeps each aggregate's events in sequence order
//! (the store's position order, or Kafka partitions read one after another), then ask for the
//! verdict. (The authentication trail the Audit topic also carries, grants, sessions, sign-in
//! attempts and consents, is written by Identity's aggregates in `identity/`.)

pub mod checkpoint;
pub mod range;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use quantus_crypto::checkpoint::open as open_note;
use quantus_crypto::keys::{CryptoPolicy, Purpose, TrustedKey, TrustedKeys, VerifyRule};
use quantus_crypto::merkle::{leaf_hash, Frontier};
use uuid::Uuid;

use crate::envelope::{Envelope, GENESIS_HASH};
use crate::events::EventEnum;
use crate::licensing::keyring::KeyringEvent;
use checkpoint::{LogCheckpointEvent, LogCheckpointSigned};

/// The first problem found, naming the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broken at position {position} (event {event_id}, {aggregate_type} {aggregate_id} #{sequence}): {reason}")]
pub struct AuditBreak {
    pub position: u64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub kind: BreakKind,
    pub reason: String,
}

/// What kind of check an event failed, for programs (the reason says it for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// Its stored hash is not the hash of its canonical form: it was altered.
    HashMismatch,
    /// Its payload does not match its type's schema.
    Schema,
    /// A rule of the event's form: position, event id, tenant, hash encoding.
    Form,
    /// Its `sequence` or `prev_hash` does not continue its aggregate's chain.
    BrokenLink,
    /// Its position holds another event too, or comes before its predecessor's.
    Position,
}

impl AuditBreak {
    fn at(position: u64, e: &Envelope, kind: BreakKind, reason: String) -> Self {
        Self {
            position,
            event_id: e.event_id,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: e.sequence,
            kind,
            reason,
        }
    }
}

/// The checks one event passes on its own: its hash recomputed from its canonical form, the
/// form rules (a forger who recomputes the hash of an aggregate's last event breaks no link,
/// so what an event may contain is checked too), its payload against its type's schema, and
/// its tenant. They need no other event, so an auditor may run them in parallel and then
/// [`Audit::link`] the results in log order. Returns the event's Merkle leaf.
pub fn check_event(position: u64, e: &Envelope) -> Result<[u8; 32], AuditBreak> {
    let fail = |reason: String| AuditBreak::at(position, e, BreakKind::Form, reason);
    let computed = e.compute_hash().map_err(|x| fail(x.to_string()))?;
    if computed != e.hash {
        return Err(AuditBreak::at(
            position,
            e,
            BreakKind::HashMismatch,
            format!("hash mismatch: stored {}, recomputed {computed}", e.hash),
        ));
    }
    if position == 0 {
        return Err(fail("position 0 is not a log position".into()));
    }
    if e.event_id.get_version_num() != 7 {
        return Err(fail(format!("event_id {} is not a UUIDv7", e.event_id)));
    }
    crate::schema::check_payload(
        &e.aggregate_type,
        &e.event_type,
        e.schema_version,
        &e.payload,
    )
    .map_err(|reason| AuditBreak::at(position, e, BreakKind::Schema, reason))?;
    if !crate::schema::tenant_is_valid(&e.aggregate_type, &e.aggregate_id, &e.tenant_id) {
        return Err(fail(format!(
            "tenant_id {:?} cannot own this aggregate",
            e.tenant_id
        )));
    }
    let mut leaf = [0u8; 32];
    hex::decode_to_slice(&e.hash, &mut leaf)
        .map_err(|_| fail("the event hash is not 32 bytes of hex".into()))?;
    Ok(leaf)
}

/// What a clean log contained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSummary {
    pub events: u64,
    pub aggregates: u64,
    pub first_position: Option<u64>,
    pub last_position: Option<u64>,
    /// Copies of events seen more than once (at-least-once delivery), ignored.
    pub duplicates: u64,
}

#[derive(Default)]
pub struct Audit {
    /// Per aggregate: last sequence, its hash, its position.
    chains: HashMap<(String, String), (u64, String, u64)>,
    positions: HashMap<u64, Uuid>,
    duplicates: u64,
    /// Each position's event hash: the Merkle leaves.
    hashes: HashMap<u64, [u8; 32]>,
    /// Signed checkpoints found in the log.
    checkpoints: Vec<LogCheckpointSigned>,
    /// Checkpoint keys as the log's own keyring events describe them.
    log_keys: Vec<TrustedKey>,
}

/// What the checkpoint checks found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// Checkpoints in the log whose root matches the log and whose signature verifies.
    pub verified: u64,
    /// The largest tree size vouched for.
    pub largest: Option<u64>,
    /// The largest outside checkpoint (a witness's) found intact in the log.
    pub witness: Option<u64>,
}

impl Audit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one event: its own hash, its form, its link to its aggregate's previous event,
    /// and that its position holds no other event.
    pub fn observe(&mut self, position: u64, e: &Envelope) -> Result<(), AuditBreak> {
        let leaf = check_event(position, e)?;
        self.link(position, e, leaf)
    }

    /// The checks that depend on the events before this one: its aggregate's chain and its
    /// position. `leaf` is what [`check_event`] returned for it; call in log order.
    pub fn link(&mut self, position: u64, e: &Envelope, leaf: [u8; 32]) -> Result<(), AuditBreak> {
        let fail = |reason: String| AuditBreak::at(position, e, BreakKind::BrokenLink, reason);
        match self.positions.get(&position) {
            Some(id) if *id == e.event_id => {
                self.duplicates += 1;
                return Ok(()); // The same event delivered twice.
            }
            Some(id) => {
                return Err(AuditBreak::at(
                    position,
                    e,
                    BreakKind::Position,
                    format!("position also holds event {id}"),
                ))
            }
            None => {}
        }
        let key = (e.aggregate_type.clone(), e.aggregate_id.clone());
        let (last_seq, last_hash, last_position) =
            self.chains
                .get(&key)
                .cloned()
                .unwrap_or((0, GENESIS_HASH.to_owned(), 0));
        if e.sequence != last_seq + 1 {
            return Err(fail(format!("sequence {} follows {last_seq}", e.sequence)));
        }
        if e.prev_hash != last_hash {
            return Err(fail(format!(
                "prev_hash {} does not match the previous event's hash {last_hash}",
                e.prev_hash
            )));
        }
        if position <= last_position {
            return Err(AuditBreak::at(
                position,
                e,
                BreakKind::Position,
                format!(
                "position {position} is not after the aggregate's previous event at {last_position}"
            ),
            ));
        }
        self.positions.insert(position, e.event_id);
        self.chains
            .insert(key, (e.sequence, e.hash.clone(), position));
        self.hashes.insert(position, leaf);
        self.remember(e);
        Ok(())
    }

    /// Continues an aggregate's chain from an event before the part of the log being checked
    /// (its hash as stored): a range's first event of that aggregate must link to it.
    pub(crate) fn continue_after(&mut self, position: u64, e: &Envelope) {
        self.chains.insert(
            (e.aggregate_type.clone(), e.aggregate_id.clone()),
            (e.sequence, e.hash.clone(), position),
        );
    }

    /// Whether the checks have seen an event of `e`'s aggregate (or continue its chain).
    pub(crate) fn knows(&self, e: &Envelope) -> bool {
        self.chains
            .contains_key(&(e.aggregate_type.clone(), e.aggregate_id.clone()))
    }

    /// Aggregates seen.
    pub(crate) fn aggregates(&self) -> u64 {
        self.chains.len() as u64
    }

    /// Keeps what the checkpoint checks need: checkpoints, and the checkpoint keys' lifecycle.
    fn remember(&mut self, e: &Envelope) {
        // An event that does not decode is not remembered; `check_payload` reports it.
        match e.aggregate_type.as_str() {
            LogCheckpointEvent::AGGREGATE => {
                if let Ok(LogCheckpointEvent::LogCheckpointSigned(c)) = e.decode() {
                    self.checkpoints.push(c);
                }
            }
            KeyringEvent::AGGREGATE => match e.decode::<KeyringEvent>() {
                Ok(KeyringEvent::KeyGenerated(k)) if k.purpose == Purpose::Checkpoint => {
                    self.log_keys.push(TrustedKey {
                        kid: k.kid,
                        alg: k.algorithm,
                        purpose: k.purpose,
                        public_key: k.public_key,
                        not_before: k.not_before,
                        retired_at: None,
                        compromised_at: None,
                    });
                }
                Ok(KeyringEvent::KeyRetired(r)) => {
                    if let Some(k) = self.log_keys.iter_mut().find(|k| k.kid == r.kid) {
                        k.retired_at = Some(r.retired_at);
                    }
                }
                Ok(KeyringEvent::KeyCompromised(c)) => {
                    if let Some(k) = self.log_keys.iter_mut().find(|k| k.kid == c.kid) {
                        k.compromised_at = Some(c.compromised_at);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// The checkpoint keys the log itself describes, as a key set (weaker than a published
    /// key set obtained elsewhere: someone who rewrites the log can add keys too).
    pub fn keys_from_log(&self) -> TrustedKeys {
        let mut algs: Vec<_> = self.log_keys.iter().map(|k| k.alg).collect();
        algs.sort();
        algs.dedup();
        TrustedKeys {
            keys: self.log_keys.clone(),
            policy: CryptoPolicy {
                sign: vec![],
                verify: algs
                    .into_iter()
                    .map(|alg| VerifyRule { alg, until: None })
                    .collect(),
            },
        }
    }

    /// Checks every checkpoint in the log against the log (its root is the Merkle tree head
    /// of the events up to its size) and its signature (by a checkpoint key of `keys`); and,
    /// checkpoints obtained outside the log (`outside`: a label for messages and a signed note
    /// each, e.g. a witness's copy), so that a log rewritten or cut short after one of them is
    /// caught even if the attacker recomputed every hash. Call after the last `observe`.
    pub fn check_checkpoints(
        &self,
        keys: &TrustedKeys,
        outside: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> Result<CheckpointSummary, String> {
        let mut wanted: Vec<(u64, String, Option<String>)> = Vec::new();
        for c in &self.checkpoints {
            let opened = open_note(&c.note, keys, now)
                .map_err(|e| format!("checkpoint of size {}: {e}", c.tree_size))?;
            if opened.size != c.tree_size || hex::encode(opened.root) != c.root_hash {
                return Err(format!(
                    "checkpoint of size {}: the signed note says size {} root {}",
                    c.tree_size,
                    opened.size,
                    hex::encode(opened.root)
                ));
            }
            wanted.push((c.tree_size, c.root_hash.clone(), None));
        }
        let mut summary = CheckpointSummary {
            verified: self.checkpoints.len() as u64,
            ..Default::default()
        };
        for (label, note) in outside {
            let opened = open_note(note, keys, now).map_err(|e| format!("{label}: {e}"))?;
            summary.witness = summary.witness.max(Some(opened.size));
            wanted.push((
                opened.size,
                hex::encode(opened.root),
                Some((*label).to_owned()),
            ));
        }
        wanted.sort_by_key(|w| w.0);
        let size = self.hashes.len() as u64;
        let mut frontier = Frontier::new();
        let mut next = wanted.iter().peekable();
        for position in 1..=size {
            let Some(h) = self.hashes.get(&position) else {
                return Err(format!("log position {position} is missing"));
            };
            frontier.push(leaf_hash(h));
            while let Some((s, root, label)) = next.peek() {
                if *s != position {
                    break;
                }
                let actual = hex::encode(frontier.root());
                if actual != *root {
                    let what = label
                        .clone()
                        .unwrap_or_else(|| format!("checkpoint of size {s}"));
                    return Err(format!(
                        "{what} signed root {root}, but the log's first {s} events hash to {actual}: the log was rewritten"
                    ));
                }
                next.next();
            }
        }
        if let Some((s, _, label)) = next.next() {
            let what = label
                .clone()
                .unwrap_or_else(|| format!("checkpoint of size {s}"));
            return Err(format!(
                "{what} covers {s} events, but the log has only {size}: the log was cut short"
            ));
        }
        summary.largest = self.checkpoints.iter().map(|c| c.tree_size).max();
        Ok(summary)
    }

    /// The signed checkpoints found in the log, in log order.
    pub fn checkpoints(&self) -> &[LogCheckpointSigned] {
        &self.checkpoints
    }

    /// The Merkle leaves of the first `size` events (`None` if one is missing): what a
    /// consistency proof for a witness is computed from.
    pub fn leaves(&self, size: u64) -> Option<Vec<[u8; 32]>> {
        (1..=size)
            .map(|p| self.hashes.get(&p).map(|h| leaf_hash(h)))
            .collect()
    }

    /// Checks that positions run 1..=N with no gap, and summarises.
    pub fn finish(&self) -> Result<AuditSummary, String> {
        let mut positions: Vec<u64> = self.positions.keys().copied().collect();
        positions.sort_unstable();
        for (i, p) in positions.iter().enumerate() {
            let expected = i as u64 + 1;
            if *p != expected {
                return Err(format!(
                    "log position {expected} is missing (next present: {p})"
                ));
            }
        }
        Ok(AuditSummary {
            events: positions.len() as u64,
            aggregates: self.chains.len() as u64,
            first_position: positions.first().copied(),
            last_position: positions.last().copied(),
            duplicates: self.duplicates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Actor, ActorKind};
    use chrono::{TimeZone, Utc};

    fn event(aggregate: &str, sequence: u64, prev: &str, n: u128) -> Envelope {
        Envelope {
            event_id: uuid::Builder::from_unix_timestamp_millis(
                1_800_000_000_000,
                &n.to_le_bytes()[..10].try_into().unwrap(),
            )
            .into_uuid(),
            aggregate_type: "Organization".into(),
            aggregate_id: aggregate.into(),
            sequence,
            event_type: if sequence == 1 {
                "OrganizationCreated"
            } else {
                "OrganizationSuspended"
            }
            .into(),
            schema_version: 1,
            occurred_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            tenant_id: aggregate.into(),
            actor: Actor {
                kind: ActorKind::System,
                id: "test".into(),
            },
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
            payload: if sequence == 1 {
                serde_json::json!({"name": format!("org {n}")})
            } else {
                serde_json::json!({"reason": format!("reason {n}")})
            },
            prev_hash: String::new(),
            hash: String::new(),
        }
        .seal(prev)
        .unwrap()
    }

    #[test]
    fn a_clean_log_passes_and_duplicates_are_tolerated() {
        let a1 = event("a", 1, GENESIS_HASH, 1);
        let b1 = event("b", 1, GENESIS_HASH, 2);
        let a2 = event("a", 2, &a1.hash, 3);
        let mut audit = Audit::new();
        for (p, e) in [(1, &a1), (2, &b1), (3, &a2), (3, &a2)] {
            audit.observe(p, e).unwrap();
        }
        let summary = audit.finish().unwrap();
        assert_eq!(summary.events, 3);
        assert_eq!(summary.aggregates, 2);
        assert_eq!(summary.duplicates, 1);
        assert_eq!(
            (summary.first_position, summary.last_position),
            (Some(1), Some(3))
        );
    }

    #[test]
    fn tampering_removal_and_gaps_are_named() {
        let a1 = event("a", 1, GENESIS_HASH, 1);
        let a2 = event("a", 2, &a1.hash, 2);
        let a3 = event("a", 3, &a2.hash, 3);

        let mut tampered = a2.clone();
        tampered.payload = serde_json::json!({"name": "forged"});
        let mut audit = Audit::new();
        audit.observe(1, &a1).unwrap();
        let err = audit.observe(2, &tampered).unwrap_err();
        assert_eq!((err.position, err.sequence), (2, 2));
        assert!(err.reason.contains("hash mismatch"));

        // An event removed: the next one's chain no longer links.
        let mut audit = Audit::new();
        audit.observe(1, &a1).unwrap();
        assert!(audit
            .observe(3, &a3)
            .unwrap_err()
            .reason
            .contains("sequence 3 follows 1"));

        // A position missing from the log as a whole.
        let b1 = event("b", 1, GENESIS_HASH, 4);
        let mut audit = Audit::new();
        audit.observe(1, &a1).unwrap();
        audit.observe(3, &b1).unwrap();
        assert!(audit
            .finish()
            .unwrap_err()
            .contains("position 2 is missing"));

        // Two different events claiming one position.
        let mut audit = Audit::new();
        audit.observe(1, &a1).unwrap();
        assert!(audit
            .observe(1, &b1)
            .unwrap_err()
            .reason
            .contains("also holds"));

        // A later event of an aggregate at an earlier position.
        let mut audit = Audit::new();
        audit.observe(5, &a1).unwrap();
        assert!(audit
            .observe(4, &a2)
            .unwrap_err()
            .reason
            .contains("not after"));
    }

    #[test]
    fn a_forged_last_event_with_a_recomputed_hash_is_caught_by_the_form_rules() {
        let a1 = event("a", 1, GENESIS_HASH, 1);
        let base = event("a", 2, &a1.hash, 2);
        type Forge = Box<dyn Fn(&mut Envelope)>;
        let forgeries: [(&str, Forge); 4] = [
            ("UUIDv7", Box::new(|e| e.event_id = Uuid::from_u128(42))),
            (
                "payload does not match",
                Box::new(|e| e.payload = serde_json::json!({"reason": 1.5})),
            ),
            (
                "unknown event type",
                Box::new(|e| e.event_type = "OrganizationDeleted".into()),
            ),
            (
                "cannot own",
                Box::new(|e| e.tenant_id = "someone-else".into()),
            ),
        ];
        for (expected, forge) in forgeries {
            let mut forged = base.clone();
            forge(&mut forged);
            let forged = forged.seal(&a1.hash).unwrap();
            let mut audit = Audit::new();
            audit.observe(1, &a1).unwrap();
            let err = audit.observe(2, &forged).unwrap_err();
            assert!(err.reason.contains(expected), "{expected}: {err}");
        }
    }
}
