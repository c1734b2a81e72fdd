//! The catalogue of event types: their bounded context, topic, version and JSON Schema.
//!
//! `schemas/` at the repository root is generated from [`catalogue`] (`quantus schemas write`);
//! a test fails when the two disagree.

use std::collections::HashMap;
use std::sync::LazyLock;

use schemars::{JsonSchema, Schema};

use crate::checkpoint::LogCheckpointSigned;
use crate::contract::*;
use crate::crypto_policy::{AlgorithmRuleSet, PurposeSignerSet};
use crate::customer::*;
use crate::envelope::Envelope;
use crate::evidence::EvidenceBundleCreated;
use crate::identity::access_policy::*;
use crate::identity::client::*;
use crate::identity::grant::*;
use crate::identity::group::*;
use crate::identity::passkey::*;
use crate::identity::saml::*;
use crate::identity::scim_token::*;
use crate::identity::session::*;
use crate::identity::signin::*;
use crate::identity::totp::*;
use crate::identity::user::*;
use crate::invoice::*;
use crate::job::*;
use crate::keyring::*;
use crate::license::*;
use crate::organization::*;
use crate::retention::*;
use crate::usage::*;

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

fn entry<T: JsonSchema + serde::de::DeserializeOwned>(
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

/// Every event type and version the code can write or read.
pub fn catalogue() -> Vec<EventSchema> {
    vec![
        entry::<OrganizationCreated>("Organization", "OrganizationCreated", 1),
        entry::<OrganizationRenamed>("Organization", "OrganizationRenamed", 1),
        entry::<OrganizationSuspended>("Organization", "OrganizationSuspended", 1),
        entry::<OrganizationReactivated>("Organization", "OrganizationReactivated", 1),
        entry::<KeyGenerated>("Keyring", "KeyGenerated", 1),
        entry::<KeyActivated>("Keyring", "KeyActivated", 1),
        entry::<KeyRotated>("Keyring", "KeyRotated", 1),
        entry::<KeyRetired>("Keyring", "KeyRetired", 1),
        entry::<KeyCompromised>("Keyring", "KeyCompromised", 1),
        entry::<AlgorithmRuleSet>("CryptoPolicy", "AlgorithmRuleSet", 1),
        entry::<PurposeSignerSet>("CryptoPolicy", "PurposeSignerSet", 1),
        entry::<LicenseIssued>("License", "LicenseIssued", 1),
        entry::<LicenseActivated>("License", "LicenseActivated", 1),
        entry::<LicenseDeactivated>("License", "LicenseDeactivated", 1),
        entry::<LicenseSuspended>("License", "LicenseSuspended", 1),
        entry::<LicenseReinstated>("License", "LicenseReinstated", 1),
        entry::<LicenseRenewed>("License", "LicenseRenewed", 1),
        entry::<LicenseRevoked>("License", "LicenseRevoked", 1),
        entry::<UserRegistered>("User", "UserRegistered", 1),
        entry::<UserPasswordSet>("User", "UserPasswordSet", 1),
        entry::<UserRoleGranted>("User", "UserRoleGranted", 1),
        entry::<UserRoleRevoked>("User", "UserRoleRevoked", 1),
        entry::<UserDisabled>("User", "UserDisabled", 1),
        entry::<UserEnabled>("User", "UserEnabled", 1),
        entry::<UserErased>("User", "UserErased", 1),
        entry::<UserProfileChanged>("User", "UserProfileChanged", 1),
        entry::<UserEmailChanged>("User", "UserEmailChanged", 1),
        entry::<UserInvited>("User", "UserInvited", 1),
        entry::<UserInviteAccepted>("User", "UserInviteAccepted", 1),
        entry::<ScimTokenIssued>("ScimToken", "ScimTokenIssued", 1),
        entry::<ScimTokenRevoked>("ScimToken", "ScimTokenRevoked", 1),
        entry::<GroupCreated>("Group", "GroupCreated", 1),
        entry::<GroupRenamed>("Group", "GroupRenamed", 1),
        entry::<GroupMemberAdded>("Group", "GroupMemberAdded", 1),
        entry::<GroupMemberRemoved>("Group", "GroupMemberRemoved", 1),
        entry::<GroupDeleted>("Group", "GroupDeleted", 1),
        entry::<GroupExternalIdChanged>("Group", "GroupExternalIdChanged", 1),
        entry::<ClientRegistered>("Client", "ClientRegistered", 1),
        entry::<ClientSecretRotated>("Client", "ClientSecretRotated", 1),
        entry::<ClientDisabled>("Client", "ClientDisabled", 1),
        entry::<AuthorizationCodeIssued>("Grant", "AuthorizationCodeIssued", 1),
        entry::<DeviceAuthorizationStarted>("Grant", "DeviceAuthorizationStarted", 1),
        entry::<DeviceAuthorizationApproved>("Grant", "DeviceAuthorizationApproved", 1),
        entry::<DeviceAuthorizationDenied>("Grant", "DeviceAuthorizationDenied", 1),
        entry::<TokensIssued>("Grant", "TokensIssued", 1),
        entry::<TokensRefreshed>("Grant", "TokensRefreshed", 1),
        entry::<GrantRevoked>("Grant", "GrantRevoked", 1),
        entry::<SessionStarted>("Session", "SessionStarted", 1),
        entry::<SessionEnded>("Session", "SessionEnded", 1),
        entry::<SignInSucceeded>("SignInAttempt", "SignInSucceeded", 1),
        entry::<SignInFailed>("SignInAttempt", "SignInFailed", 1),
        entry::<ConsentGranted>("Consent", "ConsentGranted", 1),
        entry::<TotpEnrollmentStarted>("TotpAuthenticator", "TotpEnrollmentStarted", 1),
        entry::<TotpEnrolled>("TotpAuthenticator", "TotpEnrolled", 1),
        entry::<TotpCodeAccepted>("TotpAuthenticator", "TotpCodeAccepted", 1),
        entry::<TotpRecoveryCodeUsed>("TotpAuthenticator", "TotpRecoveryCodeUsed", 1),
        entry::<TotpRemoved>("TotpAuthenticator", "TotpRemoved", 1),
        entry::<AccessRuleSet>("AccessPolicy", "AccessRuleSet", 1),
        entry::<AccessRuleRemoved>("AccessPolicy", "AccessRuleRemoved", 1),
        entry::<AccessDecided>("AccessDecision", "AccessDecided", 1),
        entry::<PasskeyRegistered>("PasskeyCredentials", "PasskeyRegistered", 1),
        entry::<PasskeyUsed>("PasskeyCredentials", "PasskeyUsed", 1),
        entry::<PasskeyRemoved>("PasskeyCredentials", "PasskeyRemoved", 1),
        entry::<SamlServiceProviderRegistered>(
            "SamlServiceProvider",
            "SamlServiceProviderRegistered",
            1,
        ),
        entry::<SamlServiceProviderChanged>("SamlServiceProvider", "SamlServiceProviderChanged", 1),
        entry::<SamlServiceProviderRemoved>("SamlServiceProvider", "SamlServiceProviderRemoved", 1),
        entry::<SamlSigningKeyAdded>("SamlSigningKeys", "SamlSigningKeyAdded", 1),
        entry::<SamlSigningKeyRetired>("SamlSigningKeys", "SamlSigningKeyRetired", 1),
        entry::<SamlAssertionIssued>("SamlExchange", "SamlAssertionIssued", 1),
        entry::<SamlLogoutCompleted>("SamlExchange", "SamlLogoutCompleted", 1),
        entry::<LogCheckpointSigned>("LogCheckpoint", "LogCheckpointSigned", 1),
        entry::<JobSubmitted>("Job", "JobSubmitted", 1),
        entry::<JobStarted>("Job", "JobStarted", 1),
        entry::<JobCompleted>("Job", "JobCompleted", 1),
        entry::<JobFailed>("Job", "JobFailed", 1),
        entry::<JobCancelled>("Job", "JobCancelled", 1),
        entry::<ArtifactStored>("Job", "ArtifactStored", 1),
        entry::<ArtifactPurged>("Job", "ArtifactPurged", 1),
        entry::<EvidenceBundleCreated>("EvidenceBundle", "EvidenceBundleCreated", 1),
        entry::<RetentionRuleSet>("RetentionPolicy", "RetentionRuleSet", 1),
        entry::<LegalHoldPlaced>("RetentionPolicy", "LegalHoldPlaced", 1),
        entry::<LegalHoldReleased>("RetentionPolicy", "LegalHoldReleased", 1),
        entry::<CustomerRegistered>("Customer", "CustomerRegistered", 1),
        entry::<CustomerContactChanged>("Customer", "CustomerContactChanged", 1),
        entry::<ContractDrafted>("Contract", "ContractDrafted", 1),
        entry::<ContractRevised>("Contract", "ContractRevised", 1),
        entry::<ContractSent>("Contract", "ContractSent", 1),
        entry::<ContractSigned>("Contract", "ContractSigned", 1),
        entry::<ContractActivated>("Contract", "ContractActivated", 1),
        entry::<ContractAmended>("Contract", "ContractAmended", 1),
        entry::<ContractTerminated>("Contract", "ContractTerminated", 1),
        entry::<ContractExpired>("Contract", "ContractExpired", 1),
        entry::<ContractLicenseFailed>("Contract", "ContractLicenseFailed", 1),
        entry::<ContractLicensePending>("Contract", "ContractLicensePending", 1),
        entry::<ContractLicenseCarriedOut>("Contract", "ContractLicenseCarriedOut", 1),
        entry::<UsageRecorded>("UsageMeter", "UsageRecorded", 1),
        entry::<QuotaExceeded>("UsageMeter", "QuotaExceeded", 1),
        entry::<InvoiceIssued>("Invoice", "InvoiceIssued", 1),
        entry::<InvoiceSent>("Invoice", "InvoiceSent", 1),
        entry::<InvoicePaid>("Invoice", "InvoicePaid", 1),
        entry::<InvoicePaymentFailed>("Invoice", "InvoicePaymentFailed", 1),
        entry::<InvoiceVoided>("Invoice", "InvoiceVoided", 1),
    ]
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
