//! The auditor's checks over a bounded part of the log, positions `from..=to` read in position
//! order: each event's own checks ([`check_event`]), each aggregate's chain ([`Audit::link`],
//! continued from the aggregate's last event before the range), and that no position is
//! missing. The same checks `quantus audit verify` runs over a whole log; what this adds is where
//! a chain starts and which positions must be there.

use quantus_crypto::merkle::leaf_hash;

use super::{check_event, Audit, AuditBreak};
use crate::envelope::Envelope;

/// The first problem in a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeBreak {
    /// An event failed a check.
    Event(AuditBreak),
    /// No event holds `position` (deleted, or never written): the next one present, if any.
    Missing {
        position: u64,
        next_present: Option<u64>,
    },
}

/// What a clean range held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSummary {
    pub events: u64,
    /// Aggregates with at least one event in the range.
    pub aggregates: u64,
}

pub struct RangeAudit {
    audit: Audit,
    to: u64,
    /// The position the next event must hold.
    next: u64,
    /// The Merkle leaf of each position checked, from `from` on.
    leaves: Vec<[u8; 32]>,
}

impl RangeAudit {
    /// Checks of positions `from..=to` (`from` at least 1).
    pub fn new(from: u64, to: u64) -> Self {
        Self {
            audit: Audit::new(),
            to,
            next: from.max(1),
            leaves: Vec::new(),
        }
    }

    /// Whether `e` is the first event of its aggregate in the range and not its first event
    /// ever: its chain continues from an event before the range, which the caller reads from
    /// the store and hands to [`Self::continue_after`].
    pub fn needs_predecessor(&self, e: &Envelope) -> bool {
        e.sequence > 1 && !self.audit.knows(e)
    }

    /// The aggregate's event just before the range, as stored at `position`.
    pub fn continue_after(&mut self, position: u64, e: &Envelope) {
        self.audit.continue_after(position, e);
    }

    /// Checks the next event of the range; call in position order.
    pub fn observe(&mut self, position: u64, e: &Envelope) -> Result<(), RangeBreak> {
        if position != self.next {
            return Err(RangeBreak::Missing {
                position: self.next,
                next_present: Some(position),
            });
        }
        let leaf = check_event(position, e).map_err(RangeBreak::Event)?;
        self.audit
            .link(position, e, leaf)
            .map_err(RangeBreak::Event)?;
        self.leaves.push(leaf_hash(&leaf));
        self.next += 1;
        Ok(())
    }

    /// Once the store has nothing more up to `to`: every position was there.
    pub fn finish(&self) -> Result<RangeSummary, RangeBreak> {
        if self.next <= self.to {
            return Err(RangeBreak::Missing {
                position: self.next,
                next_present: None,
            });
        }
        Ok(self.summary())
    }

    /// What was checked so far.
    pub fn summary(&self) -> RangeSummary {
        RangeSummary {
            events: self.leaves.len() as u64,
            aggregates: self.audit.aggregates(),
        }
    }

    /// The Merkle leaf hashes (RFC 9162) of the positions checked, from `from` on.
    pub fn leaves(&self) -> &[[u8; 32]] {
        &self.leaves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::BreakKind;
    use crate::envelope::{Actor, ActorKind};
    use chrono::{TimeZone, Utc};

    fn event(sequence: u64, prev: &str, n: u128) -> Envelope {
        Envelope {
            event_id: uuid::Builder::from_unix_timestamp_millis(
                1_800_000_000_000,
                &n.to_le_bytes()[..10].try_into().unwrap(),
            )
            .into_uuid(),
            aggregate_type: "Organization".into(),
            aggregate_id: "org-1".into(),
            sequence,
            event_type: if sequence == 1 {
                "OrganizationCreated"
            } else {
                "OrganizationRenamed"
            }
            .into(),
            schema_version: 1,
            occurred_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            tenant_id: "org-1".into(),
            actor: Actor {
                kind: ActorKind::System,
                id: "test".into(),
            },
            correlation_id: uuid::Uuid::nil(),
            causation_id: uuid::Uuid::nil(),
            payload: if sequence == 1 {
                serde_json::json!({"name": format!("org {n}")})
            } else {
                serde_json::json!({"name": format!("org {n}"), "previous_name": "org"})
            },
            prev_hash: String::new(),
            hash: String::new(),
        }
        .seal(prev)
        .unwrap()
    }

    /// Four events of one aggregate at positions 1..=4.
    fn chain() -> Vec<Envelope> {
        let mut out: Vec<Envelope> = Vec::new();
        for s in 1..=4u64 {
            let prev = out
                .last()
                .map_or(crate::envelope::GENESIS_HASH.to_owned(), |e| e.hash.clone());
            out.push(event(s, &prev, s as u128));
        }
        out
    }

    #[test]
    fn a_range_continues_chains_from_before_it() {
        let log = chain();
        let mut range = RangeAudit::new(3, 4);
        assert!(range.needs_predecessor(&log[2]));
        range.continue_after(2, &log[1]);
        assert!(!range.needs_predecessor(&log[2]));
        range.observe(3, &log[2]).unwrap();
        range.observe(4, &log[3]).unwrap();
        assert_eq!(
            range.finish().unwrap(),
            RangeSummary {
                events: 2,
                aggregates: 1
            }
        );
        assert_eq!(range.leaves().len(), 2);
    }

    #[test]
    fn a_wrong_predecessor_is_a_broken_link() {
        let log = chain();
        let mut range = RangeAudit::new(4, 4);
        range.continue_after(2, &log[1]);
        let Err(RangeBreak::Event(b)) = range.observe(4, &log[3]) else {
            panic!("a chain continued from the wrong event passed");
        };
        assert_eq!((b.position, b.kind), (4, BreakKind::BrokenLink));
    }

    #[test]
    fn a_missing_position_is_named() {
        let log = chain();
        let mut range = RangeAudit::new(1, 4);
        range.observe(1, &log[0]).unwrap();
        assert_eq!(
            range.observe(3, &log[2]),
            Err(RangeBreak::Missing {
                position: 2,
                next_present: Some(3)
            })
        );
        let mut short = RangeAudit::new(1, 4);
        for (i, e) in log[..3].iter().enumerate() {
            short.observe(i as u64 + 1, e).unwrap();
        }
        assert_eq!(
            short.finish(),
            Err(RangeBreak::Missing {
                position: 4,
                next_present: None
            })
        );
    }

    #[test]
    fn an_altered_payload_is_a_hash_mismatch() {
        let mut log = chain();
        log[1].payload["name"] = serde_json::json!("forged");
        let mut range = RangeAudit::new(1, 2);
        range.observe(1, &log[0]).unwrap();
        let Err(RangeBreak::Event(b)) = range.observe(2, &log[1]) else {
            panic!("an altered payload passed");
        };
        assert_eq!((b.position, b.kind), (2, BreakKind::HashMismatch));
    }
}
