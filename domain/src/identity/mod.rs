//! Identity (QSA): users, OAuth clients and service principals, and the audit trail of
//! authentication (grants, sessions, sign-in attempts, consents).
//!
//! Personal data and secret-derived values are never in clear in an event: they arrive here as
//! [`Sealed`] values, encrypted by the application layer with a per-subject data key, so that
//! destroying the key erases them across the whole log (crypto-shredding). High-entropy bearer
//! values (client secrets, codes, refresh tokens: 256 random bits) appear only as SHA-256 digests.

pub mod access_policy;
pub mod client;
pub mod grant;
pub mod group;
pub mod passkey;
pub mod saml;
pub mod scim_token;
pub mod session;
pub mod signin;
pub mod totp;
pub mod user;

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::PLATFORM_TENANT;

/// A field encrypted with the data key of `subject` (XChaCha20-Poly1305; see docs/identity.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Whose data key sealed it: erasing that subject makes this unreadable.
    pub subject: String,
    /// base64url, 24 bytes.
    pub nonce: String,
    /// base64url.
    pub ciphertext: String,
}

/// Where a request came from, recorded with authentication outcomes (never a secret).
///
/// The peer address and user agent are personal data: the application layer seals them
/// ([`RequestInfo::sealed`], the JSON of [`RequestDetails`] under the data key of the person
/// the event is about, field `request`) before they enter an event, so erasing the person
/// shreds them. Events recorded before issue 17 hold `ip` and `user_agent` in clear; both forms
/// decode. A command carries the clear form until it is sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestInfo {
    /// In clear only in events recorded before issue 17.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// In clear only in events recorded before issue 17.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `ip` and `user_agent` sealed together ([`RequestDetails`] as JSON, field `request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
}

/// The clear contents of a sealed [`RequestInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestDetails {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl RequestInfo {
    /// The sealed field's name (authenticated with the subject).
    pub const SEALED_FIELD: &'static str = "request";

    /// A request as the HTTP layer sees it, not yet sealed.
    pub fn clear(ip: Option<String>, user_agent: Option<String>) -> Self {
        Self {
            ip,
            user_agent,
            sealed: None,
        }
    }

    /// Whether it holds anything in clear.
    pub fn has_clear(&self) -> bool {
        self.ip.is_some() || self.user_agent.is_some()
    }
}

/// A role in an organization. `platform_admin` exists only in the platform tenant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Auditor,
    Billing,
    PlatformAdmin,
    /// The Portal's own service principal: reads and issues licences for every organization,
    /// as contracts say (platform tenant only).
    LicenseIssuer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// The API scopes the role may hold. Platform scopes (issuing licences, managing keys,
    /// signing, creating organizations) belong to the platform admin alone: a customer never
    /// issues its own licences.
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            Role::PlatformAdmin => API_SCOPES,
            Role::LicenseIssuer => &["licenses:read", "licenses:write"],
            Role::Owner => &[
                "organizations:read",
                "identity:read",
                "identity:write",
                "licenses:read",
                "licenses:activate",
                "events:read",
                "signatures:verify",
                "jobs:read",
                "jobs:write",
                "evidence:read",
                "evidence:write",
                "contracts:read",
                "contracts:sign",
                "billing:read",
                "entitlements:read",
            ],
            Role::Admin => &[
                "organizations:read",
                "identity:read",
                "identity:write",
                "licenses:read",
                "licenses:activate",
                "events:read",
                "signatures:verify",
                "jobs:read",
                "jobs:write",
                "evidence:read",
                "evidence:write",
                "contracts:read",
                "billing:read",
                "entitlements:read",
            ],
            Role::Member => &[
                "organizations:read",
                "licenses:read",
                "licenses:activate",
                "signatures:verify",
                "jobs:read",
                "jobs:write",
                "evidence:read",
                "evidence:write",
                "entitlements:read",
            ],
            Role::Auditor => &[
                "organizations:read",
                "identity:read",
                "licenses:read",
                "events:read",
                "signatures:verify",
                "jobs:read",
                "evidence:read",
                "contracts:read",
                "billing:read",
                "entitlements:read",
            ],
            Role::Billing => &[
                "organizations:read",
                "licenses:read",
                "contracts:read",
                "billing:read",
                "entitlements:read",
            ],
        }
    }
}

/// Every API scope. Access tokens carry a subset; routes require one each.
pub const API_SCOPES: &[&str] = &[
    "organizations:read",
    "organizations:write",
    "identity:read",
    "identity:write",
    "licenses:read",
    "licenses:write",
    "licenses:activate",
    "events:read",
    "keys:manage",
    "signatures:sign",
    "signatures:verify",
    "jobs:read",
    "jobs:write",
    "evidence:read",
    "evidence:write",
    "contracts:read",
    "contracts:write",
    "contracts:sign",
    "billing:read",
    "billing:write",
    "entitlements:read",
];

/// OpenID Connect scopes (RFC 6749 scope tokens defined by OIDC Core).
pub const OIDC_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

pub fn is_known_scope(s: &str) -> bool {
    API_SCOPES.contains(&s) || OIDC_SCOPES.contains(&s)
}

/// The API scopes a holder of `roles` may be given.
pub fn scopes_of_roles<'a>(roles: impl IntoIterator<Item = &'a Role>) -> BTreeSet<String> {
    roles
        .into_iter()
        .flat_map(|r| r.scopes().iter().map(|s| (*s).to_owned()))
        .collect()
}

/// Parses a space-separated scope string (RFC 6749 §3.3) into a set, refusing unknown scopes.
pub fn parse_scope(text: &str) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    for s in text.split(' ').filter(|s| !s.is_empty()) {
        if !is_known_scope(s) {
            return Err(format!("unknown scope {s:?}"));
        }
        out.insert(s.to_owned());
    }
    Ok(out)
}

pub fn scope_string(scopes: &BTreeSet<String>) -> String {
    scopes.iter().cloned().collect::<Vec<_>>().join(" ")
}

/// Whether `role` may be held in `organization_id`.
pub fn role_allowed_in(role: Role, organization_id: &str) -> bool {
    !matches!(role, Role::PlatformAdmin | Role::LicenseIssuer) || organization_id == PLATFORM_TENANT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_scopes_belong_to_the_platform_admin_alone() {
        for role in [
            Role::Owner,
            Role::Admin,
            Role::Member,
            Role::Auditor,
            Role::Billing,
        ] {
            for s in [
                "licenses:write",
                "keys:manage",
                "signatures:sign",
                "organizations:write",
            ] {
                assert!(!role.scopes().contains(&s), "{role:?} has {s}");
            }
        }
        assert!(!role_allowed_in(Role::PlatformAdmin, "some-org"));
        assert!(role_allowed_in(Role::PlatformAdmin, PLATFORM_TENANT));
    }

    #[test]
    fn scopes_parse_from_the_oauth_form() {
        assert_eq!(parse_scope("openid  licenses:read").unwrap().len(), 2);
        assert!(parse_scope("openid admin:everything").is_err());
        assert_eq!(Role::parse("platform_admin"), Some(Role::PlatformAdmin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn requests_recorded_in_clear_before_and_sealed_now_both_decode() {
        // As events written before issue 17 hold it.
        let old: RequestInfo =
            serde_json::from_str(r#"{"ip":"198.51.100.7","user_agent":"curl/8"}"#).unwrap();
        assert_eq!(old.ip.as_deref(), Some("198.51.100.7"));
        assert!(old.has_clear() && old.sealed.is_none());
        let none: RequestInfo = serde_json::from_str(r#"{"ip":null,"user_agent":null}"#).unwrap();
        assert_eq!(none, RequestInfo::default());
        // As they are written now: sealed only, nothing in clear.
        let sealed = RequestInfo {
            sealed: Some(Sealed {
                subject: "u-1".into(),
                nonce: "bm9uY2U".into(),
                ciphertext: "Y2lwaGVy".into(),
            }),
            ..RequestInfo::default()
        };
        let text = serde_json::to_string(&sealed).unwrap();
        assert_eq!(
            text,
            r#"{"sealed":{"subject":"u-1","nonce":"bm9uY2U","ciphertext":"Y2lwaGVy"}}"#
        );
        assert_eq!(serde_json::from_str::<RequestInfo>(&text).unwrap(), sealed);
        assert!(serde_json::from_str::<RequestInfo>(r#"{"address":"x"}"#).is_err());
    }
}
