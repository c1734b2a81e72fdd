//! Event enums: one declaration names every event of an aggregate, its wire name, its payload
//! type and its JSON Schema, and decodes it back from the log.
//!
//! An aggregate's events are declared with [`events!`](crate::events!). The variant's name is
//! the `event_type` on the wire (the log, Kafka, `schemas/`): serde tags the externally tagged
//! enum with it, [`EventEnum::name`] returns it, `DomainEvent::event_type` is that name, and
//! [`crate::schema::catalogue`] lists exactly the declared variants with their payload types.
//! Renaming a variant therefore changes a wire name, which old logs would no longer replay:
//! don't; add a new variant instead.
//!
//! Consumers of the log (projections, process managers) decode a record into the enum
//! ([`Envelope::decode`], `LogRecord::decode` in `quantus-infra`) and `match` on it, so the
//! compiler links every event to each consumer that handles it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::{tag_payload, Envelope};
use crate::schema::EventSchema;

/// The events of one aggregate type, as declared with [`events!`](crate::events!).
pub trait EventEnum: cqrs_es::DomainEvent + Serialize + DeserializeOwned {
    /// The aggregate type whose events these are (`Aggregate::TYPE`).
    const AGGREGATE: &'static str;
    /// Every event type (wire name) of the enum, in declaration order.
    const NAMES: &'static [&'static str];
    /// The schema version every event of the enum is written at.
    const VERSION: u32 = 1;

    /// This event's wire name (`event_type`).
    fn name(&self) -> &'static str;

    /// The catalogue entries of the enum's events: one per variant, from its payload type.
    fn schemas() -> Vec<EventSchema>;
}

/// One event type: the payload of one variant of an event enum (implemented by
/// [`events!`](crate::events!)), so that code asking for one event type names its type, not a
/// string.
pub trait EventPayload: Sized {
    /// The enum this payload is a variant of.
    type Enum: EventEnum;
    /// The event type's wire name.
    const NAME: &'static str;

    /// The payload, if `event` is of this type.
    fn from_event(event: Self::Enum) -> Option<Self>;
}

/// Why an envelope is not an event of the enum it was decoded as.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{event_type} is an event of {found}, not of {expected}")]
    OtherAggregate {
        expected: &'static str,
        found: String,
        event_type: String,
    },
    #[error("unknown event type {aggregate_type}/{event_type}")]
    UnknownType {
        aggregate_type: String,
        event_type: String,
    },
    #[error("{event_type} v{version} is not a version this code reads")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("{event_type} does not match its schema: {source}")]
    Payload {
        event_type: String,
        source: serde_json::Error,
    },
}

impl Envelope {
    /// Whether this envelope holds an event of type `P` (without decoding it).
    pub fn is<P: EventPayload>(&self) -> bool {
        self.aggregate_type == <P::Enum as EventEnum>::AGGREGATE && self.event_type == P::NAME
    }

    /// The event this envelope holds, as its aggregate's event enum. An event of another
    /// aggregate, an event type the enum does not declare, or a payload that does not have the
    /// type's shape is an error, never skipped.
    pub fn decode<E: EventEnum>(&self) -> Result<E, DecodeError> {
        decode(
            &self.aggregate_type,
            &self.event_type,
            self.schema_version,
            &self.payload,
        )
    }
}

/// [`Envelope::decode`] from an envelope's parts, for readers that hold only those (an API
/// client's view of the log).
pub fn decode<E: EventEnum>(
    aggregate_type: &str,
    event_type: &str,
    schema_version: u32,
    payload: &serde_json::Value,
) -> Result<E, DecodeError> {
    if aggregate_type != E::AGGREGATE {
        return Err(DecodeError::OtherAggregate {
            expected: E::AGGREGATE,
            found: aggregate_type.to_owned(),
            event_type: event_type.to_owned(),
        });
    }
    if !E::NAMES.contains(&event_type) {
        return Err(DecodeError::UnknownType {
            aggregate_type: aggregate_type.to_owned(),
            event_type: event_type.to_owned(),
        });
    }
    if schema_version != E::VERSION {
        return Err(DecodeError::UnknownVersion {
            event_type: event_type.to_owned(),
            version: schema_version,
        });
    }
    serde_json::from_value(tag_payload(event_type, payload.clone())).map_err(|source| {
        DecodeError::Payload {
            event_type: event_type.to_owned(),
            source,
        }
    })
}

/// Declares an aggregate's event enum and derives from it its `DomainEvent` names, its
/// [`EventEnum`] (wire names, catalogue entries) and thereby its typed decoding.
///
/// ```ignore
/// events! {
///     #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
///     pub enum LicenseEvent for "License" {
///         LicenseIssued(LicenseIssued),
///         LicenseRevoked(LicenseRevoked),
///     }
/// }
/// ```
///
/// Variants take no attributes: a `#[serde(rename)]` would part the wire name from the variant.
#[macro_export]
macro_rules! events {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident for $aggregate:literal {
            $($variant:ident($payload:ty)),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($variant($payload),)+
        }

        impl ::cqrs_es::DomainEvent for $name {
            fn event_type(&self) -> String {
                $crate::events::EventEnum::name(self).to_owned()
            }

            fn event_version(&self) -> String {
                <Self as $crate::events::EventEnum>::VERSION.to_string()
            }
        }

        impl $crate::events::EventEnum for $name {
            const AGGREGATE: &'static str = $aggregate;
            const NAMES: &'static [&'static str] = &[$(stringify!($variant)),+];

            fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)+
                }
            }

            fn schemas() -> Vec<$crate::schema::EventSchema> {
                vec![$(
                    $crate::schema::entry::<$payload>(
                        $aggregate,
                        stringify!($variant),
                        <Self as $crate::events::EventEnum>::VERSION,
                    ),
                )+]
            }
        }

        $(
            impl $crate::events::EventPayload for $payload {
                type Enum = $name;
                const NAME: &'static str = stringify!($variant);

                fn from_event(event: $name) -> Option<Self> {
                    #[allow(unreachable_patterns)]
                    match event {
                        $name::$variant(payload) => Some(payload),
                        _ => None,
                    }
                }
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::organization::{OrganizationEvent, OrganizationRenamed};
    use crate::{Actor, ActorKind};
    use cqrs_es::DomainEvent;

    fn envelope(aggregate_type: &str, event_type: &str, payload: serde_json::Value) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::nil(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: "o".into(),
            sequence: 2,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: chrono::DateTime::UNIX_EPOCH,
            tenant_id: "o".into(),
            actor: Actor {
                kind: ActorKind::System,
                id: "test".into(),
            },
            correlation_id: uuid::Uuid::nil(),
            causation_id: uuid::Uuid::nil(),
            payload,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn names_are_the_serde_tags_and_decode_reads_them_back() {
        let event = OrganizationEvent::OrganizationRenamed(OrganizationRenamed {
            name: "x".into(),
            previous_name: "w".into(),
        });
        assert_eq!(event.name(), "OrganizationRenamed");
        assert_eq!(event.event_type(), "OrganizationRenamed");
        assert_eq!(event.event_version(), "1");
        let tagged = serde_json::to_value(&event).unwrap();
        assert!(tagged.get(event.name()).is_some(), "{tagged}");
        let e = envelope(
            "Organization",
            "OrganizationRenamed",
            serde_json::json!({"name": "x", "previous_name": "w"}),
        );
        assert_eq!(e.decode::<OrganizationEvent>().unwrap(), event);
        assert!(e.is::<OrganizationRenamed>());
        assert!(!e.is::<crate::organization::OrganizationCreated>());
        assert_eq!(
            OrganizationRenamed::from_event(event),
            Some(OrganizationRenamed {
                name: "x".into(),
                previous_name: "w".into(),
            })
        );
    }

    #[test]
    fn decode_refuses_other_aggregates_unknown_types_and_wrong_shapes() {
        let other = envelope("License", "LicenseReinstated", serde_json::json!({}));
        assert!(matches!(
            other.decode::<OrganizationEvent>(),
            Err(DecodeError::OtherAggregate { .. })
        ));
        let unknown = envelope("Organization", "OrganizationDeleted", serde_json::json!({}));
        assert!(matches!(
            unknown.decode::<OrganizationEvent>(),
            Err(DecodeError::UnknownType { .. })
        ));
        let shape = envelope(
            "Organization",
            "OrganizationRenamed",
            serde_json::json!({"name": "x", "previous_name": "w", "extra": 1}),
        );
        assert!(matches!(
            shape.decode::<OrganizationEvent>(),
            Err(DecodeError::Payload { .. })
        ));
    }
}
