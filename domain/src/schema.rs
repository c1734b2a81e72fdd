//! The catalogue of event types: their bounded context, topic, version and JSON Schema.
//!
//! `schemas/` at the repository root is generated from [`catalogue`] (`quantus schemas write`);
//! a test fails when the two disagree.

use std::collections::HashMap;
use std::sync::LazyLock;

use schemars::{JsonSchema, Schema};

use crate::envelope::Envelope;
use crate::events::EventEnum;

/// A bounded context owns aggregates and publishes to one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoundedContext {
    Identity,
    Licensing,
    Evidence,
    Commercial,
    Audit,
}

impl BoundedContext {
    pub const ALL: [BoundedContext; 5] = [
        Self::Identity,
        Self::Licensing,
        Self::Evidence,
        Self::Commercial,
        Self::Audit,
    ];

    pub fn topic(self) -> &'static str {
        match self {
            Self::Identity => "quantus.identity.v1",
            Self::Licensing => "quantus.licensing.v1",
            Self::Evidence => "quantus.evidence.v1",
            Self::Commercial => "quantus.commercial.v1",
            Self::Audit => "quantus.audit.v1",
        }
    }

    /// The context that owns an aggregate type; unknown types are refused, not guessed.
    pub fn of_aggregate(aggregate_type: &str) -> Option<Self> {
        match aggregate_type {
            "Organization"
            | "User"
            | "Client"
            | "Group"
            | "ScimToken"
            | "TotpAuthenticator"
            | "AccessPolicy"
            | "PasskeyCredentials"
            | "SamlServiceProvider"
            | "SamlSigningKeys" => Some(Self::Identity),
            "Grant" | "Session" | "SignInAttempt" | "Consent" | "LogCheckpoint"
            | "SamlExchange" | "AccessDecision" => Some(Self::Audit),
            "Keyring" | "CryptoPolicy" | "License" => Some(Self::Licensing),
            "Job" | "EvidenceBundle" | "RetentionPolicy" => Some(Self::Evidence),
            "Customer" | "Contract" | "UsageMeter" | "Invoice" => Some(Self::Commercial),
            _ => None,
        }
    }
}

/// One event type at one schema version.
pub struct EventSchema {
    pub aggregate_type: &'static str,
    pub event_type: &'static str,
    pub version: u32,
    pub schema: Schema,
    /// Checks a payload against the Rust type the schema was generated from.
    pub validate: fn(&serde_json::Value) -> Result<(), String>,
}

impl EventSchema {
    /// File name under `schemas/`.
    pub fn file_name(&self) -> String {
        format!("{}.v{}.json", self.event_type, self.version)
    }
}

/// The catalogue entry of event type `event_type` at `version`, whose payload is a `T`
/// (called by [`crate::events!`]).
pub fn entry<T: JsonSchema + serde::de::DeserializeOwned>(
    aggregate_type: &'static str,
    event_type: &'static str,
    version: u32,
) -> EventSchema {
    let mut schema = schemars::schema_for!(T);
    schema.insert(
        "$id".into(),
        format!("https://schemas.quantus.dev/events/{event_type}.v{version}.json").into(),
    );
    schema.insert("title".into(), event_type.into());
    EventSchema {
        aggregate_type,
        event_type,
        version,
        schema,
        // Deserializing from a borrowed value: no copy of the payload per check.
        validate: |payload| {
            T::deserialize(payload)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    }
}

/// Calls `$m!` with every event enum of the platform: the one list from which the catalogue
/// (and the test that every enum is in it) is derived.
macro_rules! for_every_event_enum {
    ($m:ident) => {
        $m!(
            crate::organization::OrganizationEvent,
            crate::licensing::keyring::KeyringEvent,
            crate::licensing::crypto_policy::CryptoPolicyEvent,
            crate::licensing::license::LicenseEvent,
            crate::identity::user::UserEvent,
            crate::identity::scim_token::ScimTokenEvent,
            crate::identity::group::GroupEvent,
            crate::identity::client::ClientEvent,
            crate::identity::grant::GrantEvent,
            crate::identity::session::SessionEvent,
            crate::identity::signin::SignInEvent,
            crate::identity::signin::ConsentEvent,
            crate::identity::totp::TotpEvent,
            crate::identity::access_policy::AccessPolicyEvent,
            crate::identity::access_policy::AccessDecisionEvent,
            crate::identity::passkey::PasskeyEvent,
            crate::identity::saml::SamlServiceProviderEvent,
            crate::identity::saml::SamlSigningKeysEvent,
            crate::identity::saml::SamlExchangeEvent,
            crate::audit::checkpoint::LogCheckpointEvent,
            crate::evidence::job::JobEvent,
            crate::evidence::bundle::EvidenceBundleEvent,
            crate::evidence::retention::RetentionEvent,
            crate::commercial::customer::CustomerEvent,
            crate::commercial::contract::ContractEvent,
            crate::commercial::usage::UsageEvent,
            crate::commercial::invoice::InvoiceEvent,
        )
    };
}

/// The aggregate type and event types of every event enum, in catalogue order.
pub fn event_enums() -> Vec<(&'static str, &'static [&'static str])> {
    macro_rules! names {
        ($($e:ty),+ $(,)?) => {
            vec![$((<$e as EventEnum>::AGGREGATE, <$e as EventEnum>::NAMES)),+]
        };
    }
    for_every_event_enum!(names)
}

/// Every event type and version the code can write or read: each event enum's variants with
/// their payload types (see [`crate::events!`]).
pub fn catalogue() -> Vec<EventSchema> {
    macro_rules! schemas {
        ($($e:ty),+ $(,)?) => {
            [$(<$e as EventEnum>::schemas()),+].into_iter().flatten().collect()
        };
    }
    for_every_event_enum!(schemas)
}

/// The catalogue, built once: generating the ~100 JSON Schemas costs far more than a check,
/// and the auditor checks every event of the log.
static CATALOGUE: LazyLock<Vec<EventSchema>> = LazyLock::new(catalogue);

/// The catalogue's entries by event type (names are unique; versions share a name).
static CATALOGUE_BY_TYPE: LazyLock<HashMap<&'static str, Vec<&'static EventSchema>>> =
    LazyLock::new(|| {
        let mut index: HashMap<&'static str, Vec<&'static EventSchema>> = HashMap::new();
        for e in CATALOGUE.iter() {
            index.entry(e.event_type).or_default().push(e);
        }
        index
    });

/// The tenant of platform-wide aggregates (keys, crypto policy).
pub const PLATFORM_TENANT: &str = "platform";

/// Checks that an event is of a known type and version for its aggregate, and that its payload
/// has exactly that type's shape.
pub fn check_payload(
    aggregate_type: &str,
    event_type: &str,
    version: u32,
    payload: &serde_json::Value,
) -> Result<(), String> {
    let entry = CATALOGUE_BY_TYPE
        .get(event_type)
        .into_iter()
        .flatten()
        .find(|e| e.aggregate_type == aggregate_type && e.version == version)
        .ok_or_else(|| format!("unknown event type {aggregate_type}/{event_type} v{version}"))?;
    (entry.validate)(payload)
        .map_err(|e| format!("payload does not match {}: {e}", entry.file_name()))
}

/// Whether `tenant_id` may own an event of this aggregate. An organization is its own tenant.
pub fn tenant_is_valid(aggregate_type: &str, aggregate_id: &str, tenant_id: &str) -> bool {
    match aggregate_type {
        "Organization" => tenant_id == aggregate_id,
        // Keys and the crypto policy belong to the platform, not to a customer.
        "Keyring" | "CryptoPolicy" | "LogCheckpoint" => tenant_id == PLATFORM_TENANT,
        // Everything else belongs to an organization, or to the platform itself (its own
        // administrators, service principals, their grants).
        _ => tenant_id == PLATFORM_TENANT || uuid::Uuid::parse_str(tenant_id).is_ok(),
    }
}

/// The envelope's own schema (`schemas/envelope.v1.json`).
pub fn envelope_schema() -> Schema {
    let mut schema = schemars::schema_for!(Envelope);
    schema.insert(
        "$id".into(),
        "https://schemas.quantus.dev/envelope.v1.json".into(),
    );
    schema
}

/// Every file `schemas/` should hold: (file name, pretty JSON with a final newline).
pub fn files() -> Vec<(String, String)> {
    let pretty = |s: &Schema| format!("{}\n", serde_json::to_string_pretty(s).unwrap_or_default());
    let mut out = vec![("envelope.v1.json".to_owned(), pretty(&envelope_schema()))];
    out.extend(
        catalogue()
            .iter()
            .map(|e| (e.file_name(), pretty(&e.schema))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_catalogue_lists_exactly_the_event_enums_variants() {
        let declared: BTreeSet<(&str, &str)> = event_enums()
            .into_iter()
            .flat_map(|(aggregate, names)| names.iter().map(move |n| (aggregate, *n)))
            .collect();
        let catalogue = catalogue();
        let catalogued: BTreeSet<(&str, &str)> = catalogue
            .iter()
            .map(|e| (e.aggregate_type, e.event_type))
            .collect();
        assert_eq!(declared, catalogued);
        assert_eq!(
            catalogue.len(),
            catalogued.len(),
            "an event type is catalogued twice"
        );
        let names: BTreeSet<&str> = catalogue.iter().map(|e| e.event_type).collect();
        assert_eq!(
            names.len(),
            catalogue.len(),
            "two aggregates share an event type"
        );
        let aggregates: BTreeSet<&str> = event_enums().iter().map(|(a, _)| *a).collect();
        assert_eq!(
            aggregates.len(),
            event_enums().len(),
            "an aggregate has two enums"
        );
    }

    #[test]
    fn every_catalogued_aggregate_has_a_context_and_schemas_are_2020_12() {
        for e in catalogue() {
            assert!(BoundedContext::of_aggregate(e.aggregate_type).is_some());
            assert_eq!(
                e.schema.get("$schema").and_then(|v| v.as_str()),
                Some("https://json-schema.org/draft/2020-12/schema")
            );
        }
    }
}
