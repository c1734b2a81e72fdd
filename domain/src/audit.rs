//! The auditor's check over a whole log, pure: feed it records in any order that keeps each
//! aggregate's events in sequence order (the store's position order, or Kafka partitions read
//! one after another), then ask for the verdict.

use std::collections::HashMap;

use uuid::Uuid;

use crate::envelope::{Envelope, GENESIS_HASH};

/// The first problem found, naming the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broken at position {position} (event {event_id}, {aggregate_type} {aggregate_id} #{sequence}): {reason}")]
pub struct AuditBreak {
    pub position: u64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub reason: String,
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
    chains: HashMap<(String, String), (u64, String)>,
    positions: HashMap<u64, Uuid>,
    duplicates: u64,
}

impl Audit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one event: its own hash, its link to its aggregate's previous event, and that
    /// its position holds no other event.
    pub fn observe(&mut self, position: u64, e: &Envelope) -> Result<(), AuditBreak> {
        let fail = |reason: String| AuditBreak {
            position,
            event_id: e.event_id,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: e.sequence,
            reason,
        };
        let computed = e.compute_hash().map_err(|x| fail(x.to_string()))?;
        if computed != e.hash {
            return Err(fail(format!(
                "hash mismatch: stored {}, recomputed {computed}",
                e.hash
            )));
        }
        if position == 0 {
            return Err(fail("position 0 is not a log position".into()));
        }
        match self.positions.get(&position) {
            Some(id) if *id == e.event_id => {
                self.duplicates += 1;
                return Ok(()); // The same event delivered twice.
            }
            Some(id) => return Err(fail(format!("position also holds event {id}"))),
            None => {}
        }
        let key = (e.aggregate_type.clone(), e.aggregate_id.clone());
        let (last_seq, last_hash) = self
            .chains
            .get(&key)
            .cloned()
            .unwrap_or((0, GENESIS_HASH.to_owned()));
        if e.sequence != last_seq + 1 {
            return Err(fail(format!("sequence {} follows {last_seq}", e.sequence)));
        }
        if e.prev_hash != last_hash {
            return Err(fail(format!(
                "prev_hash {} does not match the previous event's hash {last_hash}",
                e.prev_hash
            )));
        }
        self.positions.insert(position, e.event_id);
        self.chains.insert(key, (e.sequence, e.hash.clone()));
        Ok(())
    }

    /// Checks that positions run 1..=N with no gap, and summarises.
    pub fn finish(self) -> Result<AuditSummary, String> {
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
            event_id: Uuid::from_u128(n),
            aggregate_type: "Organization".into(),
            aggregate_id: aggregate.into(),
            sequence,
            event_type: "OrganizationCreated".into(),
            schema_version: 1,
            occurred_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            tenant_id: aggregate.into(),
            actor: Actor {
                kind: ActorKind::System,
                id: "test".into(),
            },
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
            payload: serde_json::json!({"name": format!("org {n}")}),
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
    }
}
