//! Client: an OAuth 2.0 client application, or a service principal (a machine identity that
//! gets tokens with client credentials and holds roles in its organization).

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_known_scope, role_allowed_in, scopes_of_roles, Role, OIDC_SCOPES};

use crate::decision::record_decision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A web application that keeps a secret (or a private key).
    Confidential,
    /// A browser or native application: no secret, PKCE required.
    Public,
    /// A service principal: client credentials only, acts as itself.
    Service,
}

/// Token endpoint client authentication (OIDC Core §9; RFC 6749 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    None,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:device_code")]
    DeviceCode,
}

impl GrantType {
    pub fn name(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
            Self::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientRegistered {
    pub organization_id: String,
    pub kind: ClientKind,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub grant_types: BTreeSet<GrantType>,
    /// Scopes the client may ask for.
    pub scopes: BTreeSet<String>,
    /// Roles of a service principal in its organization (empty for other kinds).
    pub roles: BTreeSet<Role>,
    pub auth_method: AuthMethod,
    /// Pushed authorization requests (RFC 9126) are the only way in.
    pub require_par: bool,
    /// Public keys for `private_key_jwt` (a JWK Set).
    pub jwks: Option<serde_json::Value>,
    /// SHA-256 (hex) of the client secret: 256 random bits, so a fast digest is enough.
    pub secret_sha256: Option<String>,
    /// RFC 9449 §5.2 `dpop_bound_access_tokens`: the token endpoint refuses this client's
    /// requests without a DPoP proof. Absent in events written before DPoP: false.
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientSecretRotated {
    pub secret_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientDisabled {
    pub reason: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(clippy::large_enum_variant)] // Registered once per client; boxing buys nothing.
    pub enum ClientEvent for "Client" {
        ClientRegistered(ClientRegistered),
        ClientSecretRotated(ClientSecretRotated),
        ClientDisabled(ClientDisabled),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum ClientCommand {
    Register(ClientRegistered),
    RotateSecret { secret_sha256: String },
    Disable { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("client already exists")]
    AlreadyExists,
    #[error("client not found")]
    NotFound,
    #[error("client is disabled")]
    Disabled,
    #[error("name must be 1 to 128 characters without control characters")]
    BadName,
    #[error("invalid redirect URI {0:?}: {1}")]
    BadRedirectUri(String, &'static str),
    #[error("unknown scope {0:?}")]
    UnknownScope(String),
    #[error("role {0:?} exists only in the platform organization")]
    RoleNotAllowed(Role),
    #[error("scope {0:?} can never be granted: a client that only uses client_credentials gets no more than its own roles allow")]
    ScopeUnreachable(String),
    #[error("{0}")]
    Inconsistent(&'static str),
}

impl ClientError {
    pub fn is_validation(&self) -> bool {
        !matches!(self, Self::AlreadyExists | Self::NotFound | Self::Disabled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClientStatus {
    #[default]
    Absent,
    Active,
    Disabled,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub status: ClientStatus,
    pub registration: Option<ClientRegistered>,
    pub secret_sha256: Option<String>,
}

/// Exact-match redirect URIs (RFC 9700 §4.1): absolute, no fragment; `https`, or `http` on a
/// loopback host (RFC 8252 §7.3), or a private-use scheme with a dot (RFC 8252 §7.1).
pub fn check_redirect_uri(uri: &str) -> Result<(), ClientError> {
    let bad = |why| Err(ClientError::BadRedirectUri(uri.to_owned(), why));
    let Ok(parsed) = url::Url::parse(uri) else {
        return bad("not an absolute URI");
    };
    if parsed.fragment().is_some() {
        return bad("a redirect URI has no fragment");
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => match parsed.host_str() {
            Some("localhost" | "127.0.0.1" | "[::1]") => Ok(()),
            _ => bad("http is allowed on loopback hosts only"),
        },
        s if s.contains('.') => Ok(()),
        _ => bad("use https, loopback http, or a reverse-domain private-use scheme"),
    }
}

/// Whether `given` (an authorization request's `redirect_uri`) is one of `registered`:
/// character for character (RFC 9700 §4.1), except that an `http` loopback IP address may
/// name any port, because a native app listens on whatever port it gets (RFC 8252 §7.3).
pub fn redirect_uri_registered(registered: &[String], given: &str) -> bool {
    if registered.iter().any(|r| r == given) {
        return true;
    }
    let Ok(given) = url::Url::parse(given) else {
        return false;
    };
    let loopback = |u: &url::Url| {
        u.scheme() == "http" && matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || u.scheme() == "http"
                && matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
    };
    if !loopback(&given) || given.fragment().is_some() {
        return false;
    }
    registered
        .iter()
        .filter_map(|r| url::Url::parse(r).ok())
        .any(|mut r| {
            loopback(&r)
                && r.host() == given.host()
                && r.set_port(given.port()).is_ok()
                && r.as_str() == given.as_str()
        })
}

fn validate(r: &ClientRegistered) -> Result<(), ClientError> {
    use ClientError::Inconsistent as I;
    let name = r.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ClientError::BadName);
    }
    for u in r.redirect_uris.iter().chain(&r.post_logout_redirect_uris) {
        check_redirect_uri(u)?;
    }
    if let Some(s) = r.scopes.iter().find(|s| !is_known_scope(s)) {
        return Err(ClientError::UnknownScope(s.clone()));
    }
    if let Some(role) = r
        .roles
        .iter()
        .find(|x| !role_allowed_in(**x, &r.organization_id))
    {
        return Err(ClientError::RoleNotAllowed(*role));
    }
    // A client whose only grant is client_credentials receives the scopes of its own roles
    // and nothing else: registering more would succeed and then fail every token request.
    if r.grant_types
        .iter()
        .all(|g| *g == GrantType::ClientCredentials)
    {
        let by_roles = scopes_of_roles(&r.roles);
        if let Some(s) = r
            .scopes
            .iter()
            .find(|s| !OIDC_SCOPES.contains(&s.as_str()) && !by_roles.contains(*s))
        {
            return Err(ClientError::ScopeUnreachable(s.clone()));
        }
    }
    let redirects = r.grant_types.contains(&GrantType::AuthorizationCode);
    if redirects && r.redirect_uris.is_empty() {
        return Err(I(
            "the authorization_code grant needs at least one redirect URI",
        ));
    }
    if r.grant_types.is_empty() {
        return Err(I("a client needs at least one grant type"));
    }
    match r.kind {
        ClientKind::Public => {
            if r.auth_method != AuthMethod::None || r.secret_sha256.is_some() {
                return Err(I(
                    "a public client has no secret (token_endpoint_auth_method none)",
                ));
            }
            if r.grant_types.contains(&GrantType::ClientCredentials) {
                return Err(I("a public client cannot use client_credentials"));
            }
        }
        ClientKind::Confidential | ClientKind::Service => match r.auth_method {
            AuthMethod::None => return Err(I("a confidential client must authenticate")),
            AuthMethod::PrivateKeyJwt if r.jwks.is_none() => {
                return Err(I("private_key_jwt needs the client's public keys (jwks)"))
            }
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
                if r.secret_sha256.is_none() =>
            {
                return Err(I("a client secret is required for this auth method"))
            }
            _ => {}
        },
    }
    if r.kind == ClientKind::Service {
        if r.grant_types
            .iter()
            .any(|g| *g != GrantType::ClientCredentials)
        {
            return Err(I("a service principal uses client_credentials only"));
        }
        if !r.redirect_uris.is_empty() {
            return Err(I("a service principal has no redirect URIs"));
        }
        if r.roles.is_empty() {
            return Err(I("a service principal needs at least one role"));
        }
    } else if !r.roles.is_empty() {
        return Err(I("only service principals hold roles of their own"));
    }
    Ok(())
}

impl Client {
    fn decide(&self, command: ClientCommand) -> Result<Vec<ClientEvent>, ClientError> {
        let event = match (self.status, command) {
            (ClientStatus::Absent, ClientCommand::Register(mut r)) => {
                r.name = r.name.trim().to_owned();
                validate(&r)?;
                ClientEvent::ClientRegistered(r)
            }
            (_, ClientCommand::Register(_)) => return Err(ClientError::AlreadyExists),
            (ClientStatus::Absent, _) => return Err(ClientError::NotFound),
            (ClientStatus::Disabled, _) => return Err(ClientError::Disabled),
            (_, ClientCommand::RotateSecret { secret_sha256 }) => {
                let r = self.registration.as_ref().ok_or(ClientError::NotFound)?;
                if r.kind == ClientKind::Public {
                    return Err(ClientError::Inconsistent("a public client has no secret"));
                }
                ClientEvent::ClientSecretRotated(ClientSecretRotated { secret_sha256 })
            }
            (_, ClientCommand::Disable { reason }) => ClientEvent::ClientDisabled(ClientDisabled {
                reason: reason.trim().chars().take(500).collect(),
            }),
        };
        Ok(vec![event])
    }
}

impl Aggregate for Client {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = ClientCommand;
    type Event = ClientEvent;
    type Error = ClientError;
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
            ClientEvent::ClientRegistered(r) => {
                self.status = ClientStatus::Active;
                self.secret_sha256 = r.secret_sha256.clone();
                self.registration = Some(r);
            }
            ClientEvent::ClientSecretRotated(e) => self.secret_sha256 = Some(e.secret_sha256),
            ClientEvent::ClientDisabled(_) => self.status = ClientStatus::Disabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn web() -> ClientRegistered {
        ClientRegistered {
            organization_id: "org".into(),
            kind: ClientKind::Confidential,
            name: "App".into(),
            redirect_uris: vec!["https://app.example/cb".into()],
            post_logout_redirect_uris: vec![],
            grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
            scopes: ["openid".to_owned()].into(),
            roles: BTreeSet::new(),
            auth_method: AuthMethod::ClientSecretBasic,
            require_par: false,
            jwks: None,
            secret_sha256: Some("00".repeat(32)),
            dpop_bound_access_tokens: false,
        }
    }

    #[test]
    fn redirect_uris_follow_the_security_bcp() {
        for ok in [
            "https://app.example/cb",
            "http://127.0.0.1:8123/cb",
            "http://localhost/cb",
            "com.example.app:/cb",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.example/cb",
            "https://app.example/cb#frag",
            "/relative",
            "javascript:alert(1)",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_redirect_uris_match_on_any_port_and_nothing_else_loosens() {
        let registered = vec![
            "http://127.0.0.1/cb".to_owned(),
            "http://[::1]:8000/cb".to_owned(),
            "https://app.example/cb".to_owned(),
            "http://localhost/cb".to_owned(),
        ];
        let ok = |u: &str| redirect_uri_registered(&registered, u);
        assert!(ok("http://127.0.0.1/cb"));
        assert!(ok("http://127.0.0.1:51004/cb"));
        assert!(ok("http://[::1]:9/cb"));
        assert!(ok("http://[::1]/cb"));
        assert!(ok("https://app.example/cb"));
        assert!(!ok("https://app.example:8443/cb"), "only loopback IPs");
        assert!(
            !ok("http://localhost:8080/cb"),
            "localhost is a name, not an IP (§8.3)"
        );
        assert!(!ok("http://127.0.0.1:51004/other"));
        assert!(!ok("http://127.0.0.1:51004/cb?x=1"));
        assert!(!ok("http://127.0.0.1:51004/cb#frag"));
        assert!(!ok("http://127.0.0.2:51004/cb"), "another address");
        assert!(!ok("https://127.0.0.1:51004/cb"), "another scheme");
        assert!(!ok("not a uri"));
    }

    #[test]
    fn registration_rules() {
        TestFramework::<Client>::with(())
            .given_no_previous_events()
            .when(ClientCommand::Register(web()))
            .then_expect_events(vec![ClientEvent::ClientRegistered(web())]);
        let mut public_with_secret = web();
        public_with_secret.kind = ClientKind::Public;
        TestFramework::<Client>::with(())
            .given_no_previous_events()
            .when(ClientCommand::Register(public_with_secret))
            .then_expect_error(ClientError::Inconsistent(
                "a public client has no secret (token_endpoint_auth_method none)",
            ));
        let mut sp = web();
        sp.kind = ClientKind::Service;
        sp.redirect_uris.clear();
        sp.grant_types = [GrantType::ClientCredentials].into();
        sp.roles = [Role::PlatformAdmin].into();
        TestFramework::<Client>::with(())
            .given_no_previous_events()
            .when(ClientCommand::Register(sp))
            .then_expect_error(ClientError::RoleNotAllowed(Role::PlatformAdmin));
    }

    #[test]
    fn a_client_credentials_only_client_may_ask_only_for_what_its_roles_grant() {
        let mut machine = web();
        machine.redirect_uris.clear();
        machine.grant_types = [GrantType::ClientCredentials].into();
        machine.scopes = ["licenses:read".to_owned()].into();
        TestFramework::<Client>::with(())
            .given_no_previous_events()
            .when(ClientCommand::Register(machine.clone()))
            .then_expect_error(ClientError::ScopeUnreachable("licenses:read".into()));
        // A service principal whose role grants the scope registers.
        machine.kind = ClientKind::Service;
        machine.roles = [Role::Owner].into();
        TestFramework::<Client>::with(())
            .given_no_previous_events()
            .when(ClientCommand::Register(machine.clone()))
            .then_expect_events(vec![ClientEvent::ClientRegistered(machine.clone())]);
        // A client that also signs people in may hold the scope for their tokens.
        let mut both = web();
        both.grant_types.insert(GrantType::ClientCredentials);
        both.scopes = ["openid".to_owned(), "licenses:read".to_owned()].into();
        TestFramework::<Client>::with(())
            .given_no_previous_events()
            .when(ClientCommand::Register(both.clone()))
            .then_expect_events(vec![ClientEvent::ClientRegistered(both)]);
    }
}
