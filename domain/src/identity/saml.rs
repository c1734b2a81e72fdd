//! SAML 2.0: the service providers an organization registers with QSA (as identity provider),
//! the IdP's own signing certificates, and the audit trail of single sign-on and logout.
//!
//! Nothing personal and nothing secret is in these events: certificates are public, the audit
//! events name the user by id (never the NameID, which may be an email), and the IdP's RSA
//! private key lives only sealed outside the log (see docs/crypto.md, "SAML").

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

/// The id of the one aggregate holding the IdP's signing certificates.
pub const SIGNING_KEYS_ID: &str = "saml-idp";

/// The NameID formats QSA issues (SAML Core §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NameIdFormat {
    /// The user's email address.
    EmailAddress,
    /// An opaque identifier per user and service provider (pairwise, stable).
    Persistent,
    /// The user's QSA id.
    Unspecified,
}

impl NameIdFormat {
    pub fn urn(self) -> &'static str {
        match self {
            Self::EmailAddress => "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
            Self::Persistent => "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
            Self::Unspecified => "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
        }
    }

    pub const ALL: [NameIdFormat; 3] = [Self::EmailAddress, Self::Persistent, Self::Unspecified];
}

/// A user attribute an SP may receive.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UserAttribute {
    Email,
    Name,
    UserId,
    OrganizationId,
    /// One value per role in the organization.
    Roles,
    /// One value per group of the organization the user is a member of (the group's name).
    Groups,
}

/// How a service provider receives logout responses (SAML Bindings §3.4, §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SloBinding {
    /// `urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect`: a signed query string.
    HttpRedirect,
    /// `urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST`: an auto-submitting form.
    HttpPost,
}

/// What an organization registers for a service provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlServiceProviderSettings {
    /// Assertion consumer service URLs; the first is the default.
    pub acs_urls: Vec<String>,
    /// Where logout responses go; none: logout ends on QSA's own page.
    #[serde(default)]
    pub slo_url: Option<String>,
    /// The binding the SP registered for its SLO URL; none: the binding of its request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_binding: Option<SloBinding>,
    /// The SP's signing certificate (DER, base64); when set, AuthnRequests and LogoutRequests
    /// must be signed with it.
    #[serde(default)]
    pub certificate: Option<String>,
    pub name_id_format: NameIdFormat,
    /// SAML attribute name → the user attribute sent under it.
    #[serde(default)]
    pub attributes: BTreeMap<String, UserAttribute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlServiceProviderRegistered {
    pub organization_id: String,
    pub entity_id: String,
    pub name: String,
    pub settings: SamlServiceProviderSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlServiceProviderChanged {
    pub name: String,
    pub settings: SamlServiceProviderSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlServiceProviderRemoved {}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum SamlServiceProviderEvent for "SamlServiceProvider" {
        SamlServiceProviderRegistered(SamlServiceProviderRegistered),
        SamlServiceProviderChanged(SamlServiceProviderChanged),
        SamlServiceProviderRemoved(SamlServiceProviderRemoved),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SamlServiceProviderCommand {
    Register {
        organization_id: String,
        entity_id: String,
        name: String,
        settings: SamlServiceProviderSettings,
    },
    Change {
        name: String,
        settings: SamlServiceProviderSettings,
    },
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamlError {
    #[error("a service provider with this entity id is already registered")]
    AlreadyRegistered,
    #[error("no such service provider")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
}

impl SamlError {
    pub fn is_validation(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

/// A service provider; the aggregate id derives from its organization and entity id (see
/// [`provider_id_in`]), so an entity id is registered at most once per organization, and
/// several organizations may each register the same SP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlServiceProvider {
    pub organization_id: String,
    pub entity_id: String,
    pub name: String,
    pub settings: Option<SamlServiceProviderSettings>,
    pub removed: bool,
}

impl SamlServiceProvider {
    pub fn is_live(&self) -> bool {
        self.settings.is_some() && !self.removed
    }
}

/// The aggregate id a service provider registered before entity ids were per organization
/// had (UUID v5 in a fixed namespace); still found by [`provider_id_in`]'s lookups.
pub fn provider_id(entity_id: &str) -> String {
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x7a3c_51e2_0c4b_4f0e_9d7e_5a1b_2c3d_4e5f);
    uuid::Uuid::new_v5(&NS, entity_id.as_bytes()).to_string()
}

/// The aggregate id of the service provider `entity_id` registered by `organization_id`.
pub fn provider_id_in(organization_id: &str, entity_id: &str) -> String {
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x7a3c_51e2_0c4b_4f0e_9d7e_5a1b_2c3d_4e60);
    uuid::Uuid::new_v5(&NS, format!("{organization_id}\0{entity_id}").as_bytes()).to_string()
}

fn check_url(what: &str, url: &str) -> Result<(), SamlError> {
    let parsed = url::Url::parse(url)
        .map_err(|_| SamlError::Invalid(format!("{what} {url:?} is not a URL")))?;
    let local = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && local) {
        return Err(SamlError::Invalid(format!(
            "{what} {url:?} must be https (http only for localhost)"
        )));
    }
    if parsed.fragment().is_some() {
        return Err(SamlError::Invalid(format!("{what} {url:?} has a fragment")));
    }
    Ok(())
}

/// Checks what an organization registers.
pub fn validate(
    entity_id: &str,
    name: &str,
    s: &SamlServiceProviderSettings,
) -> Result<(), SamlError> {
    if entity_id.trim().is_empty() || entity_id.len() > 1024 {
        return Err(SamlError::Invalid(
            "entity_id must be 1 to 1024 characters".into(),
        ));
    }
    if name.trim().is_empty() || name.len() > 200 {
        return Err(SamlError::Invalid(
            "name must be 1 to 200 characters".into(),
        ));
    }
    if s.acs_urls.is_empty() || s.acs_urls.len() > 20 {
        return Err(SamlError::Invalid("acs_urls needs 1 to 20 URLs".into()));
    }
    for u in &s.acs_urls {
        check_url("ACS URL", u)?;
    }
    if let Some(u) = &s.slo_url {
        check_url("SLO URL", u)?;
    }
    if let Some(c) = &s.certificate {
        use base64::Engine as _;
        if base64::engine::general_purpose::STANDARD
            .decode(c.trim())
            .map_or(true, |b| b.is_empty())
        {
            return Err(SamlError::Invalid(
                "certificate must be a DER certificate in base64".into(),
            ));
        }
    }
    for k in s.attributes.keys() {
        if k.trim().is_empty() || k.len() > 256 || k.chars().any(char::is_control) {
            return Err(SamlError::Invalid(format!(
                "attribute name {k:?} must be 1 to 256 printable characters"
            )));
        }
    }
    Ok(())
}

impl SamlServiceProvider {
    fn decide(
        &self,
        command: SamlServiceProviderCommand,
    ) -> Result<Vec<SamlServiceProviderEvent>, SamlError> {
        let event = match command {
            SamlServiceProviderCommand::Register {
                organization_id,
                entity_id,
                name,
                settings,
            } => {
                if self.is_live() {
                    return Err(SamlError::AlreadyRegistered);
                }
                validate(&entity_id, &name, &settings)?;
                SamlServiceProviderEvent::SamlServiceProviderRegistered(
                    SamlServiceProviderRegistered {
                        organization_id,
                        entity_id,
                        name,
                        settings,
                    },
                )
            }
            SamlServiceProviderCommand::Change { name, settings } => {
                if !self.is_live() {
                    return Err(SamlError::NotFound);
                }
                validate(&self.entity_id, &name, &settings)?;
                if self.settings.as_ref() == Some(&settings) && self.name == name {
                    return Ok(vec![]);
                }
                SamlServiceProviderEvent::SamlServiceProviderChanged(SamlServiceProviderChanged {
                    name,
                    settings,
                })
            }
            SamlServiceProviderCommand::Remove => {
                if self.settings.is_none() {
                    return Err(SamlError::NotFound);
                }
                if self.removed {
                    return Ok(vec![]);
                }
                SamlServiceProviderEvent::SamlServiceProviderRemoved(SamlServiceProviderRemoved {})
            }
        };
        Ok(vec![event])
    }
}

impl Aggregate for SamlServiceProvider {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = SamlServiceProviderCommand;
    type Event = SamlServiceProviderEvent;
    type Error = SamlError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SamlServiceProviderEvent::SamlServiceProviderRegistered(e) => {
                self.organization_id = e.organization_id;
                self.entity_id = e.entity_id;
                self.name = e.name;
                self.settings = Some(e.settings);
                self.removed = false;
            }
            SamlServiceProviderEvent::SamlServiceProviderChanged(e) => {
                self.name = e.name;
                self.settings = Some(e.settings);
            }
            SamlServiceProviderEvent::SamlServiceProviderRemoved(_) => self.removed = true,
        }
    }
}

// ---- the IdP's signing certificates ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlSigningKeyAdded {
    /// First 16 bytes of SHA-256 of the certificate's SubjectPublicKeyInfo, hex.
    pub kid: String,
    /// Always `RSA-SHA256` (RSASSA-PKCS1-v1_5), the one algorithm SAML ecosystems share.
    pub alg: String,
    /// The self-signed X.509 certificate (DER, base64). Public.
    pub certificate: String,
    #[schemars(with = "String")]
    pub not_before: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlSigningKeyRetired {
    pub kid: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum SamlSigningKeysEvent for "SamlSigningKeys" {
        SamlSigningKeyAdded(SamlSigningKeyAdded),
        SamlSigningKeyRetired(SamlSigningKeyRetired),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SamlSigningKeysCommand {
    /// Adds a key and makes it the active one; the previous key stays published (so SPs can
    /// pick up the new certificate from the metadata) until it is retired.
    Add(SamlSigningKeyAdded),
    Retire {
        kid: String,
    },
}

/// The IdP's signing certificates: the newest signs; older ones stay in the metadata until
/// retired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlSigningKeys {
    pub keys: Vec<SamlSigningKeyAdded>,
}

impl SamlSigningKeys {
    pub fn active(&self) -> Option<&SamlSigningKeyAdded> {
        self.keys.last()
    }

    fn decide(
        &self,
        command: SamlSigningKeysCommand,
    ) -> Result<Vec<SamlSigningKeysEvent>, SamlError> {
        let event = match command {
            SamlSigningKeysCommand::Add(k) => {
                if self.keys.iter().any(|x| x.kid == k.kid) {
                    return Ok(vec![]);
                }
                if k.alg != "RSA-SHA256" {
                    return Err(SamlError::Invalid("SAML keys are RSA-SHA256".into()));
                }
                SamlSigningKeysEvent::SamlSigningKeyAdded(k)
            }
            SamlSigningKeysCommand::Retire { kid } => {
                match self.keys.iter().position(|k| k.kid == kid) {
                    None => return Err(SamlError::NotFound),
                    Some(i) if i + 1 == self.keys.len() => {
                        return Err(SamlError::Invalid(
                            "the active key cannot be retired; rotate first".into(),
                        ))
                    }
                    Some(_) => {
                        SamlSigningKeysEvent::SamlSigningKeyRetired(SamlSigningKeyRetired { kid })
                    }
                }
            }
        };
        Ok(vec![event])
    }
}

impl Aggregate for SamlSigningKeys {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = SamlSigningKeysCommand;
    type Event = SamlSigningKeysEvent;
    type Error = SamlError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SamlSigningKeysEvent::SamlSigningKeyAdded(k) => self.keys.push(k),
            SamlSigningKeysEvent::SamlSigningKeyRetired(r) => self.keys.retain(|k| k.kid != r.kid),
        }
    }
}

// ---- the audit trail: one aggregate per protocol exchange (id = the message id) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlAssertionIssued {
    pub service_provider_id: String,
    pub entity_id: String,
    pub user_id: String,
    pub session_id: String,
    /// The AuthnRequest's ID; none for IdP-initiated sign-on.
    pub in_response_to: Option<String>,
    pub acs_url: String,
    pub name_id_format: NameIdFormat,
    pub authn_context: String,
    /// The attribute names sent (never their values).
    pub attributes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlLogoutCompleted {
    pub service_provider_id: String,
    pub entity_id: String,
    /// The LogoutRequest's ID.
    pub in_response_to: String,
    /// The QSA session ended, if one was live.
    pub session_id: Option<String>,
    pub user_id: Option<String>,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum SamlExchangeEvent for "SamlExchange" {
        SamlAssertionIssued(SamlAssertionIssued),
        SamlLogoutCompleted(SamlLogoutCompleted),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SamlExchangeCommand {
    RecordAssertion(SamlAssertionIssued),
    RecordLogout(SamlLogoutCompleted),
}

/// One SAML exchange: a Response (with its assertion) or a logout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlExchange {
    pub recorded: bool,
}

impl SamlExchange {
    fn decide(&self, command: SamlExchangeCommand) -> Result<Vec<SamlExchangeEvent>, SamlError> {
        if self.recorded {
            return Err(SamlError::Invalid("this message id is already used".into()));
        }
        let event = match command {
            SamlExchangeCommand::RecordAssertion(a) => SamlExchangeEvent::SamlAssertionIssued(a),
            SamlExchangeCommand::RecordLogout(l) => SamlExchangeEvent::SamlLogoutCompleted(l),
        };
        Ok(vec![event])
    }
}

impl Aggregate for SamlExchange {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = SamlExchangeCommand;
    type Event = SamlExchangeEvent;
    type Error = SamlError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, _: Self::Event) {
        self.recorded = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn settings() -> SamlServiceProviderSettings {
        SamlServiceProviderSettings {
            acs_urls: vec!["https://sp.example.com/acs".into()],
            slo_url: None,
            slo_binding: None,
            certificate: None,
            name_id_format: NameIdFormat::EmailAddress,
            attributes: BTreeMap::from([("mail".into(), UserAttribute::Email)]),
        }
    }

    fn register() -> SamlServiceProviderCommand {
        SamlServiceProviderCommand::Register {
            organization_id: "org".into(),
            entity_id: "https://sp.example.com".into(),
            name: "SP".into(),
            settings: settings(),
        }
    }

    fn registered() -> SamlServiceProviderEvent {
        SamlServiceProviderEvent::SamlServiceProviderRegistered(SamlServiceProviderRegistered {
            organization_id: "org".into(),
            entity_id: "https://sp.example.com".into(),
            name: "SP".into(),
            settings: settings(),
        })
    }

    #[test]
    fn given_nothing_when_registered_then_registered_once() {
        TestFramework::<SamlServiceProvider>::with(())
            .given_no_previous_events()
            .when(register())
            .then_expect_events(vec![registered()]);
        TestFramework::<SamlServiceProvider>::with(())
            .given(vec![registered()])
            .when(register())
            .then_expect_error(SamlError::AlreadyRegistered);
    }

    #[test]
    fn an_entity_id_has_one_provider_id_per_organization() {
        let a = provider_id_in("org-a", "https://sp");
        assert_eq!(a, provider_id_in("org-a", "https://sp"));
        assert_ne!(a, provider_id_in("org-b", "https://sp"));
        assert_ne!(a, provider_id("https://sp"));
    }

    #[test]
    fn plain_http_acs_urls_and_empty_entity_ids_are_refused() {
        let mut s = settings();
        s.acs_urls = vec!["http://sp.example.com/acs".into()];
        assert!(validate("https://sp.example.com", "SP", &s).is_err());
        s.acs_urls = vec!["http://127.0.0.1:9/acs".into()];
        assert!(validate("https://sp.example.com", "SP", &s).is_ok());
        assert!(validate(" ", "SP", &s).is_err());
        s.acs_urls.clear();
        assert!(validate("https://sp.example.com", "SP", &s).is_err());
    }

    #[test]
    fn the_active_signing_key_cannot_be_retired() {
        let k = |kid: &str| SamlSigningKeyAdded {
            kid: kid.into(),
            alg: "RSA-SHA256".into(),
            certificate: "AA==".into(),
            not_before: DateTime::UNIX_EPOCH,
        };
        TestFramework::<SamlSigningKeys>::with(())
            .given(vec![SamlSigningKeysEvent::SamlSigningKeyAdded(k("a"))])
            .when(SamlSigningKeysCommand::Retire { kid: "a".into() })
            .then_expect_error(SamlError::Invalid(
                "the active key cannot be retired; rotate first".into(),
            ));
        TestFramework::<SamlSigningKeys>::with(())
            .given(vec![
                SamlSigningKeysEvent::SamlSigningKeyAdded(k("a")),
                SamlSigningKeysEvent::SamlSigningKeyAdded(k("b")),
            ])
            .when(SamlSigningKeysCommand::Retire { kid: "a".into() })
            .then_expect_events(vec![SamlSigningKeysEvent::SamlSigningKeyRetired(
                SamlSigningKeyRetired { kid: "a".into() },
            )]);
    }

    #[test]
    fn a_message_id_records_once() {
        let a = SamlAssertionIssued {
            service_provider_id: "sp".into(),
            entity_id: "e".into(),
            user_id: "u".into(),
            session_id: "s".into(),
            in_response_to: None,
            acs_url: "https://sp.example.com/acs".into(),
            name_id_format: NameIdFormat::Persistent,
            authn_context: "x".into(),
            attributes: vec![],
        };
        TestFramework::<SamlExchange>::with(())
            .given(vec![SamlExchangeEvent::SamlAssertionIssued(a.clone())])
            .when(SamlExchangeCommand::RecordAssertion(a))
            .then_expect_error(SamlError::Invalid("this message id is already used".into()));
    }
}
