//! The one event envelope used by every bounded context, and its hash chain.
//!
//! The byte recipe is specified in `docs/event-log.md`; [`Envelope::compute_hash`] is its
//! reference implementation.

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `prev_hash` of the first event of every aggregate: 64 ASCII zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who caused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Service,
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Service => "service",
            ActorKind::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "service" => Some(Self::Service),
            "system" => Some(Self::System),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

/// One immutable fact in the log. Field order here is irrelevant to the hash: the hash is taken
/// over the RFC 8785 canonical form, which sorts keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// UUIDv7, unique across the whole log.
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// 1-based, contiguous per aggregate.
    pub sequence: u64,
    pub event_type: String,
    pub schema_version: u32,
    /// RFC 3339, UTC, microsecond precision, `Z` suffix.
    #[serde(with = "rfc3339_micros")]
    #[schemars(with = "String")]
    pub occurred_at: DateTime<Utc>,
    /// The organization the event belongs to (for an Organization, its own id).
    pub tenant_id: String,
    pub actor: Actor,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    /// The event's own fields, as described by `schemas/<event_type>.v<schema_version>.json`.
    pub payload: Value,
    /// Lower-case hex SHA-256 of the previous event of the same aggregate.
    pub prev_hash: String,
    /// Lower-case hex SHA-256 of the canonical form of this envelope without `hash`.
    pub hash: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("payload cannot be canonicalized (RFC 8785): {0}")]
    NotCanonicalizable(String),
    #[error("hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch { stored: String, computed: String },
    #[error("broken chain: prev_hash {found} but previous event's hash is {expected}")]
    BrokenChain { expected: String, found: String },
    #[error("sequence gap: expected {expected}, found {found}")]
    SequenceGap { expected: u64, found: u64 },
}

/// Values a command carries into the events it produces: who, when, and why.
/// Built by the shell (api/commands), read by the pure core.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    pub tenant_id: String,
    pub actor: Actor,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    /// The id of the command (or of the event) that caused the new events.
    pub causation_id: Uuid,
}

impl Envelope {
    /// The canonical bytes the hash is taken over: RFC 8785 JSON of every field but `hash`.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut value = serde_json::to_value(self)
            .map_err(|e| EnvelopeError::NotCanonicalizable(e.to_string()))?;
        if let Value::Object(map) = &mut value {
            map.remove("hash");
        }
        serde_json_canonicalizer::to_vec(&value)
            .map_err(|e| EnvelopeError::NotCanonicalizable(e.to_string()))
    }

    /// SHA-256 of [`Self::canonical_bytes`], lower-case hex.
    pub fn compute_hash(&self) -> Result<String, EnvelopeError> {
        Ok(hex::encode(Sha256::digest(self.canonical_bytes()?)))
    }

    /// Fills `prev_hash` and `hash`: the last step before an envelope is appended.
    pub fn seal(mut self, prev_hash: &str) -> Result<Self, EnvelopeError> {
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.compute_hash()?;
        Ok(self)
    }

    /// Checks this envelope's own hash and its link to the previous event of its aggregate
    /// (`None` for the first event).
    pub fn verify_link(&self, previous: Option<&Envelope>) -> Result<(), EnvelopeError> {
        let computed = self.compute_hash()?;
        if computed != self.hash {
            return Err(EnvelopeError::HashMismatch {
                stored: self.hash.clone(),
                computed,
            });
        }
        let (expected_seq, expected_prev) = match previous {
            Some(prev) => (prev.sequence + 1, prev.hash.as_str()),
            None => (1, GENESIS_HASH),
        };
        if self.sequence != expected_seq {
            return Err(EnvelopeError::SequenceGap {
                expected: expected_seq,
                found: self.sequence,
            });
        }
        if self.prev_hash != expected_prev {
            return Err(EnvelopeError::BrokenChain {
                expected: expected_prev.to_owned(),
                found: self.prev_hash.clone(),
            });
        }
        Ok(())
    }
}

/// Events are stored by cqrs-es as externally tagged enums (`{"Variant": {..}}`); the envelope
/// keeps only the variant's content, since `event_type` already names it.
pub fn untag_payload(event_type: &str, tagged: Value) -> Value {
    match tagged {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            map.remove(event_type).unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// Inverse of [`untag_payload`].
pub fn tag_payload(event_type: &str, payload: Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(event_type.to_owned(), payload);
    Value::Object(map)
}

/// Truncates to the precision the envelope keeps, so a timestamp survives a round trip exactly.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

pub mod rfc3339_micros {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sequence: u64) -> Envelope {
        Envelope {
            event_id: Uuid::parse_str("01936b2e-0000-7000-8000-000000000001").unwrap(),
            aggregate_type: "Organization".into(),
            aggregate_id: "org-1".into(),
            sequence,
            event_type: "OrganizationCreated".into(),
            schema_version: 1,
            occurred_at: DateTime::parse_from_rfc3339("2026-11-29T14:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            tenant_id: "org-1".into(),
            actor: Actor {
                kind: ActorKind::Service,
                id: "bootstrap".into(),
            },
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
            payload: serde_json::json!({"name": "Acme Quantum", "b": 1, "a": [true, null]}),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn canonical_bytes_sort_keys_and_omit_hash() {
        let e = sample(1).seal(GENESIS_HASH).unwrap();
        let text = String::from_utf8(e.canonical_bytes().unwrap()).unwrap();
        assert!(text
            .starts_with(r#"{"actor":{"id":"bootstrap","kind":"service"},"aggregate_id":"org-1""#));
        assert!(text.contains(r#""payload":{"a":[true,null],"b":1,"name":"Acme Quantum"}"#));
        assert!(!text.contains(r#""hash""#));
        assert!(text.contains(r#""occurred_at":"2026-11-29T14:00:00.123456Z""#));
    }

    /// A fixed vector, also checked by the independent Python auditor in `tests/auditor/`.
    #[test]
    fn hash_of_the_reference_envelope_is_stable() {
        let e = sample(1).seal(GENESIS_HASH).unwrap();
        let expected = hex::encode(Sha256::digest(e.canonical_bytes().unwrap()));
        assert_eq!(e.hash, expected);
        assert_eq!(e.hash.len(), 64);
        // Key order in memory does not matter, only content.
        let reparsed: Envelope = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(reparsed.compute_hash().unwrap(), e.hash);
    }

    #[test]
    fn chain_links_are_checked() {
        let first = sample(1).seal(GENESIS_HASH).unwrap();
        let second = sample(2).seal(&first.hash).unwrap();
        assert_eq!(first.verify_link(None), Ok(()));
        assert_eq!(second.verify_link(Some(&first)), Ok(()));

        let forged = sample(2).seal(GENESIS_HASH).unwrap();
        assert!(matches!(
            forged.verify_link(Some(&first)),
            Err(EnvelopeError::BrokenChain { .. })
        ));

        let mut tampered = second.clone();
        tampered.payload = serde_json::json!({"name": "Evil Corp"});
        assert!(matches!(
            tampered.verify_link(Some(&first)),
            Err(EnvelopeError::HashMismatch { .. })
        ));

        let skipped = sample(3).seal(&first.hash).unwrap();
        assert!(matches!(
            skipped.verify_link(Some(&first)),
            Err(EnvelopeError::SequenceGap {
                expected: 2,
                found: 3
            })
        ));
    }

    #[test]
    fn payload_tagging_round_trips() {
        let tagged = serde_json::json!({"OrganizationRenamed": {"name": "x"}});
        let untagged = untag_payload("OrganizationRenamed", tagged.clone());
        assert_eq!(untagged, serde_json::json!({"name": "x"}));
        assert_eq!(tag_payload("OrganizationRenamed", untagged), tagged);
    }
}

/// Keys under which a [`CommandContext`] travels through cqrs-es' per-command metadata map.
pub mod metadata_keys {
    pub const TENANT_ID: &str = "tenant_id";
    pub const ACTOR_KIND: &str = "actor_kind";
    pub const ACTOR_ID: &str = "actor_id";
    pub const OCCURRED_AT: &str = "occurred_at";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
}

impl CommandContext {
    pub fn to_metadata(&self) -> std::collections::HashMap<String, String> {
        use metadata_keys::*;
        [
            (TENANT_ID, self.tenant_id.clone()),
            (ACTOR_KIND, self.actor.kind.as_str().to_owned()),
            (ACTOR_ID, self.actor.id.clone()),
            (OCCURRED_AT, rfc3339_micros::format(&self.occurred_at)),
            (CORRELATION_ID, self.correlation_id.to_string()),
            (CAUSATION_ID, self.causation_id.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Reads a context back; `None` names the first missing or malformed key.
    pub fn from_metadata(meta: &serde_json::Map<String, Value>) -> Result<Self, &'static str> {
        use metadata_keys::*;
        let get = |key: &'static str| meta.get(key).and_then(Value::as_str).ok_or(key);
        let uuid = |key: &'static str| get(key).and_then(|s| Uuid::parse_str(s).map_err(|_| key));
        Ok(Self {
            tenant_id: get(TENANT_ID)?.to_owned(),
            actor: Actor {
                kind: ActorKind::parse(get(ACTOR_KIND)?).ok_or(ACTOR_KIND)?,
                id: get(ACTOR_ID)?.to_owned(),
            },
            occurred_at: DateTime::parse_from_rfc3339(get(OCCURRED_AT)?)
                .map_err(|_| OCCURRED_AT)?
                .with_timezone(&Utc),
            correlation_id: uuid(CORRELATION_ID)?,
            causation_id: uuid(CAUSATION_ID)?,
        })
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn a_command_context_round_trips_through_metadata() {
        let ctx = CommandContext {
            tenant_id: "t".into(),
            actor: Actor {
                kind: ActorKind::User,
                id: "u1".into(),
            },
            occurred_at: truncate_to_micros(
                DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap(),
            ),
            correlation_id: Uuid::from_u128(7),
            causation_id: Uuid::from_u128(9),
        };
        let meta = serde_json::to_value(ctx.to_metadata()).unwrap();
        assert_eq!(
            CommandContext::from_metadata(meta.as_object().unwrap()),
            Ok(ctx)
        );
        assert_eq!(
            CommandContext::from_metadata(&serde_json::Map::new()),
            Err(metadata_keys::TENANT_ID)
        );
    }
}
