//! Grant: one authorization a client holds, from its start (an authorization code, a device
//! authorization, or client credentials) through token issuance, refresh-token rotation and
//! revocation. Its events are the token audit trail (`quantus.audit.v1`).
//!
//! Bearer values (codes, device codes, refresh tokens) are `<grant id>.<256 random bits>`; the
//! grant keeps only SHA-256 digests and compares them in constant time.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::client::GrantType;
use super::RequestInfo;

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationCodeIssued {
    pub client_id: String,
    pub user_id: String,
    pub organization_id: String,
    pub session_id: String,
    pub scope: BTreeSet<String>,
    pub redirect_uri: String,
    /// PKCE S256 challenge (RFC 7636), required for public clients.
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    #[schemars(with = "String")]
    pub auth_time: DateTime<Utc>,
    /// Authentication methods used (RFC 8176), e.g. `pwd`.
    pub amr: Vec<String>,
    pub code_sha256: String,
    #[schemars(with = "String")]
    pub expires_at: DateTime<Utc>,
    pub request: RequestInfo,
    /// RFC 9449 §10: the thumbprint of the DPoP key the code is bound to (`dpop_jkt` at the
    /// authorization endpoint, or the key of the proof sent with the pushed request); only a
    /// token request with a proof by that key may redeem it. Absent in events before DPoP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceAuthorizationStarted {
    pub client_id: String,
    pub scope: BTreeSet<String>,
    pub device_code_sha256: String,
    pub user_code_sha256: String,
    #[schemars(with = "String")]
    pub expires_at: DateTime<Utc>,
    pub interval_seconds: u32,
    pub request: RequestInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceAuthorizationApproved {
    pub user_id: String,
    pub organization_id: String,
    #[schemars(with = "String")]
    pub auth_time: DateTime<Utc>,
    pub amr: Vec<String>,
    pub request: RequestInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceAuthorizationDenied {
    pub user_id: String,
    pub request: RequestInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokensIssued {
    pub grant_type: GrantType,
    pub client_id: String,
    /// The user id, or the client id of a service principal.
    pub subject: String,
    pub organization_id: String,
    pub scope: BTreeSet<String>,
    pub access_token_id: String,
    #[schemars(with = "String")]
    pub access_expires_at: DateTime<Utc>,
    pub refresh_sha256: Option<String>,
    #[schemars(with = "Option<String>")]
    pub refresh_expires_at: Option<DateTime<Utc>>,
    pub request: RequestInfo,
    /// RFC 9449 §5: the JWK SHA-256 thumbprint (RFC 7638) of the DPoP key a public client's
    /// refresh tokens are bound to; every refresh of this grant needs a proof by that key.
    /// Absent for unbound grants and in events written before DPoP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_jkt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokensRefreshed {
    pub generation: u32,
    pub scope: BTreeSet<String>,
    pub access_token_id: String,
    #[schemars(with = "String")]
    pub access_expires_at: DateTime<Utc>,
    pub refresh_sha256: String,
    pub request: RequestInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// An authorization code was presented again (RFC 6749 §4.1.2).
    CodeReuse,
    /// A rotated-out refresh token was presented again (RFC 9700 §4.14.2).
    RefreshTokenReuse,
    /// The client revoked a token (RFC 7009).
    ClientRequest,
    /// The user signed out (RP-initiated logout).
    Logout,
    /// An administrator revoked it, or the subject was disabled or erased.
    Administrative,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRevoked {
    pub reason: RevocationReason,
    pub request: RequestInfo,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum GrantEvent for "Grant" {
        AuthorizationCodeIssued(AuthorizationCodeIssued),
        DeviceAuthorizationStarted(DeviceAuthorizationStarted),
        DeviceAuthorizationApproved(DeviceAuthorizationApproved),
        DeviceAuthorizationDenied(DeviceAuthorizationDenied),
        TokensIssued(TokensIssued),
        TokensRefreshed(TokensRefreshed),
        GrantRevoked(GrantRevoked),
    }
}

/// What the token endpoint mints when a grant is redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTokens {
    pub access_token_id: String,
    pub access_expires_at: DateTime<Utc>,
    pub refresh: Option<(String, DateTime<Utc>)>,
    /// The DPoP key the refresh token is bound to (public clients that sent a proof).
    pub refresh_jkt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantCommand {
    IssueCode(AuthorizationCodeIssued),
    StartDevice(DeviceAuthorizationStarted),
    ApproveDevice {
        user_id: String,
        organization_id: String,
        auth_time: DateTime<Utc>,
        amr: Vec<String>,
        now: DateTime<Utc>,
        request: RequestInfo,
    },
    DenyDevice {
        user_id: String,
        now: DateTime<Utc>,
        request: RequestInfo,
    },
    /// A new grant that is only tokens (client credentials).
    IssueClientCredentials(TokensIssued),
    RedeemCode {
        code_sha256: String,
        client_id: String,
        redirect_uri: Option<String>,
        code_verifier: Option<String>,
        now: DateTime<Utc>,
        tokens: NewTokens,
        request: RequestInfo,
    },
    RedeemDevice {
        device_code_sha256: String,
        client_id: String,
        now: DateTime<Utc>,
        tokens: NewTokens,
        request: RequestInfo,
    },
    Refresh {
        refresh_sha256: String,
        client_id: String,
        /// A narrower scope, if asked for (RFC 6749 §6).
        scope: Option<BTreeSet<String>>,
        now: DateTime<Utc>,
        tokens: NewTokens,
        request: RequestInfo,
    },
    Revoke {
        reason: RevocationReason,
        request: RequestInfo,
    },
}

impl GrantCommand {
    /// The request this command records, and the subject (user, or client of a service
    /// principal) the command itself names, if it does; otherwise the grant's.
    pub fn request_and_subject(&mut self) -> (&mut RequestInfo, Option<String>) {
        match self {
            GrantCommand::IssueCode(c) => (&mut c.request, Some(c.user_id.clone())),
            GrantCommand::StartDevice(c) => (&mut c.request, Some(c.client_id.clone())),
            GrantCommand::ApproveDevice {
                user_id, request, ..
            }
            | GrantCommand::DenyDevice {
                user_id, request, ..
            } => (request, Some(user_id.clone())),
            GrantCommand::IssueClientCredentials(t) => (&mut t.request, Some(t.subject.clone())),
            GrantCommand::RedeemCode { request, .. }
            | GrantCommand::RedeemDevice { request, .. }
            | GrantCommand::Refresh { request, .. }
            | GrantCommand::Revoke { request, .. } => (request, None),
        }
    }
}

/// Each maps to an OAuth error code at the token endpoint (mostly `invalid_grant`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant already exists")]
    AlreadyExists,
    #[error("no such grant")]
    NotFound,
    #[error("the code is invalid")]
    InvalidCode,
    #[error("the code has expired")]
    CodeExpired,
    #[error("the code was already used; the tokens it gave are revoked")]
    CodeReused,
    #[error("the grant belongs to another client")]
    ClientMismatch,
    #[error("redirect_uri does not match the authorization request")]
    RedirectMismatch,
    #[error("code_verifier is required (PKCE)")]
    PkceMissing,
    #[error("code_verifier does not match the code_challenge")]
    PkceMismatch,
    #[error("code_verifier was sent but the authorization request had no code_challenge")]
    PkceUnexpected,
    #[error("the grant is revoked")]
    Revoked,
    #[error("the refresh token is invalid")]
    InvalidRefresh,
    #[error("the refresh token was already used; the grant is revoked")]
    RefreshReused,
    #[error("the refresh token has expired")]
    RefreshExpired,
    #[error("the requested scope exceeds the granted scope")]
    ScopeWidened,
    #[error("the user has not yet approved the device")]
    AuthorizationPending,
    #[error("the user denied the device")]
    AccessDenied,
    #[error("the device code has expired")]
    DeviceExpired,
    #[error("the device authorization was already decided")]
    AlreadyDecided,
    #[error("this grant cannot be redeemed that way")]
    WrongGrant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum GrantStatus {
    #[default]
    Absent,
    CodeIssued,
    DevicePending,
    DeviceApproved,
    DeviceDenied,
    Active,
    Revoked,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub status: GrantStatus,
    pub grant_type: Option<GrantType>,
    pub client_id: String,
    pub subject: String,
    pub organization_id: String,
    pub scope: BTreeSet<String>,
    pub session_id: Option<String>,
    pub nonce: Option<String>,
    pub auth_time: Option<DateTime<Utc>>,
    pub amr: Vec<String>,
    pub code: Option<AuthorizationCodeIssued>,
    pub device: Option<DeviceAuthorizationStarted>,
    pub refresh_sha256: Option<String>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    pub generation: u32,
    /// Digests of rotated-out refresh tokens: presenting one is reuse.
    pub spent_refresh: BTreeSet<String>,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub revoked: Option<RevocationReason>,
    /// The DPoP key (RFC 7638 thumbprint) the grant's refresh tokens are bound to.
    pub refresh_jkt: Option<String>,
}

/// SHA-256 of a bearer value, lower-case hex.
pub fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn valid_code_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// RFC 7636 §4.6, method S256 (the only one accepted: `plain` is refused at authorize).
pub fn pkce_matches(challenge: &str, verifier: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    valid_code_verifier(verifier) && same(&computed, challenge)
}

impl Grant {
    fn issue(&self, grant_type: GrantType, tokens: NewTokens, request: RequestInfo) -> GrantEvent {
        let (refresh_sha256, refresh_expires_at) = match tokens.refresh {
            Some((sha, at)) => (Some(sha), Some(at)),
            None => (None, None),
        };
        GrantEvent::TokensIssued(TokensIssued {
            grant_type,
            client_id: self.client_id.clone(),
            subject: self.subject.clone(),
            organization_id: self.organization_id.clone(),
            scope: self.scope.clone(),
            access_token_id: tokens.access_token_id,
            access_expires_at: tokens.access_expires_at,
            refresh_sha256,
            refresh_expires_at,
            request,
            refresh_jkt: tokens.refresh_jkt,
        })
    }

    fn decide(&self, command: GrantCommand) -> Result<Vec<GrantEvent>, GrantError> {
        use GrantCommand as C;
        use GrantEvent as E;
        use GrantStatus as S;
        match command {
            C::IssueCode(e) => match self.status {
                S::Absent => Ok(vec![E::AuthorizationCodeIssued(e)]),
                _ => Err(GrantError::AlreadyExists),
            },
            C::StartDevice(e) => match self.status {
                S::Absent => Ok(vec![E::DeviceAuthorizationStarted(e)]),
                _ => Err(GrantError::AlreadyExists),
            },
            C::IssueClientCredentials(e) => match self.status {
                S::Absent => Ok(vec![E::TokensIssued(e)]),
                _ => Err(GrantError::AlreadyExists),
            },
            C::ApproveDevice {
                user_id,
                organization_id,
                auth_time,
                amr,
                now,
                request,
            } => {
                let device = self.pending_device(now)?;
                let _ = device;
                Ok(vec![E::DeviceAuthorizationApproved(
                    DeviceAuthorizationApproved {
                        user_id,
                        organization_id,
                        auth_time,
                        amr,
                        request,
                    },
                )])
            }
            C::DenyDevice {
                user_id,
                now,
                request,
            } => {
                self.pending_device(now)?;
                Ok(vec![E::DeviceAuthorizationDenied(
                    DeviceAuthorizationDenied { user_id, request },
                )])
            }
            C::RedeemCode {
                code_sha256,
                client_id,
                redirect_uri,
                code_verifier,
                now,
                tokens,
                request,
            } => {
                let code = self.code.as_ref().ok_or(match self.status {
                    S::Absent => GrantError::InvalidCode,
                    _ => GrantError::WrongGrant,
                })?;
                if !same(&code.code_sha256, &code_sha256) {
                    return Err(GrantError::InvalidCode);
                }
                if !same(&code.client_id, &client_id) {
                    return Err(GrantError::ClientMismatch);
                }
                match self.status {
                    S::CodeIssued => {}
                    // A code is single-use: whoever presents it again may have stolen it.
                    S::Active | S::Revoked => return Err(GrantError::CodeReused),
                    _ => return Err(GrantError::WrongGrant),
                }
                if now >= code.expires_at {
                    return Err(GrantError::CodeExpired);
                }
                // RFC 6749 §4.1.3: required, and identical, if it was in the request.
                if redirect_uri.as_deref() != Some(code.redirect_uri.as_str()) {
                    return Err(GrantError::RedirectMismatch);
                }
                match (&code.code_challenge, code_verifier) {
                    (Some(c), Some(v)) if pkce_matches(c, &v) => {}
                    (Some(_), Some(_)) => return Err(GrantError::PkceMismatch),
                    (Some(_), None) => return Err(GrantError::PkceMissing),
                    (None, Some(_)) => return Err(GrantError::PkceUnexpected),
                    (None, None) => {}
                }
                Ok(vec![self.issue(
                    GrantType::AuthorizationCode,
                    tokens,
                    request,
                )])
            }
            C::RedeemDevice {
                device_code_sha256,
                client_id,
                now,
                tokens,
                request,
            } => {
                let device = self.device.as_ref().ok_or(GrantError::WrongGrant)?;
                if !same(&device.device_code_sha256, &device_code_sha256) {
                    return Err(GrantError::InvalidCode);
                }
                if !same(&device.client_id, &client_id) {
                    return Err(GrantError::ClientMismatch);
                }
                match self.status {
                    S::DevicePending if now >= device.expires_at => Err(GrantError::DeviceExpired),
                    S::DevicePending => Err(GrantError::AuthorizationPending),
                    S::DeviceDenied => Err(GrantError::AccessDenied),
                    S::DeviceApproved if now >= device.expires_at => Err(GrantError::DeviceExpired),
                    S::DeviceApproved => {
                        Ok(vec![self.issue(GrantType::DeviceCode, tokens, request)])
                    }
                    S::Active | S::Revoked => Err(GrantError::CodeReused),
                    _ => Err(GrantError::WrongGrant),
                }
            }
            C::Refresh {
                refresh_sha256,
                client_id,
                scope,
                now,
                tokens,
                request,
            } => {
                if self.status == S::Absent {
                    return Err(GrantError::InvalidRefresh);
                }
                if !same(&self.client_id, &client_id) {
                    return Err(GrantError::ClientMismatch);
                }
                if self.spent_refresh.iter().any(|s| same(s, &refresh_sha256)) {
                    return Err(if self.status == S::Revoked {
                        GrantError::Revoked
                    } else {
                        GrantError::RefreshReused
                    });
                }
                let current = self.refresh_sha256.as_deref().unwrap_or_default();
                if current.is_empty() || !same(current, &refresh_sha256) {
                    return Err(GrantError::InvalidRefresh);
                }
                if self.status == S::Revoked {
                    return Err(GrantError::Revoked);
                }
                if self.refresh_expires_at.is_some_and(|at| now >= at) {
                    return Err(GrantError::RefreshExpired);
                }
                let scope = match scope {
                    Some(s) if !s.is_subset(&self.scope) => return Err(GrantError::ScopeWidened),
                    Some(s) if !s.is_empty() => s,
                    _ => self.scope.clone(),
                };
                let (refresh_sha256, _) = tokens.refresh.ok_or(GrantError::WrongGrant)?;
                Ok(vec![E::TokensRefreshed(TokensRefreshed {
                    generation: self.generation + 1,
                    scope,
                    access_token_id: tokens.access_token_id,
                    access_expires_at: tokens.access_expires_at,
                    refresh_sha256,
                    request,
                })])
            }
            C::Revoke { reason, request } => match self.status {
                S::Absent => Err(GrantError::NotFound),
                S::Revoked => Ok(vec![]),
                _ => Ok(vec![E::GrantRevoked(GrantRevoked { reason, request })]),
            },
        }
    }

    fn pending_device(
        &self,
        now: DateTime<Utc>,
    ) -> Result<&DeviceAuthorizationStarted, GrantError> {
        let device = self.device.as_ref().ok_or(GrantError::WrongGrant)?;
        match self.status {
            GrantStatus::DevicePending if now < device.expires_at => Ok(device),
            GrantStatus::DevicePending => Err(GrantError::DeviceExpired),
            _ => Err(GrantError::AlreadyDecided),
        }
    }
}

impl Aggregate for Grant {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = GrantCommand;
    type Event = GrantEvent;
    type Error = GrantError;
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
            GrantEvent::AuthorizationCodeIssued(e) => {
                self.status = GrantStatus::CodeIssued;
                self.grant_type = Some(GrantType::AuthorizationCode);
                self.client_id = e.client_id.clone();
                self.subject = e.user_id.clone();
                self.organization_id = e.organization_id.clone();
                self.scope = e.scope.clone();
                self.session_id = Some(e.session_id.clone());
                self.nonce = e.nonce.clone();
                self.auth_time = Some(e.auth_time);
                self.amr = e.amr.clone();
                self.code = Some(e);
            }
            GrantEvent::DeviceAuthorizationStarted(e) => {
                self.status = GrantStatus::DevicePending;
                self.grant_type = Some(GrantType::DeviceCode);
                self.client_id = e.client_id.clone();
                self.scope = e.scope.clone();
                self.device = Some(e);
            }
            GrantEvent::DeviceAuthorizationApproved(e) => {
                self.status = GrantStatus::DeviceApproved;
                self.subject = e.user_id;
                self.organization_id = e.organization_id;
                self.auth_time = Some(e.auth_time);
                self.amr = e.amr;
            }
            GrantEvent::DeviceAuthorizationDenied(_) => self.status = GrantStatus::DeviceDenied,
            GrantEvent::TokensIssued(e) => {
                self.status = GrantStatus::Active;
                self.grant_type.get_or_insert(e.grant_type);
                self.client_id = e.client_id;
                self.subject = e.subject;
                self.organization_id = e.organization_id;
                self.scope = e.scope;
                self.refresh_sha256 = e.refresh_sha256;
                self.refresh_expires_at = e.refresh_expires_at;
                self.access_expires_at = Some(e.access_expires_at);
                self.generation = 1;
                self.refresh_jkt = e.refresh_jkt;
            }
            GrantEvent::TokensRefreshed(e) => {
                if let Some(old) = self.refresh_sha256.replace(e.refresh_sha256) {
                    self.spent_refresh.insert(old);
                }
                self.generation = e.generation;
                self.scope = e.scope;
                self.access_expires_at = Some(e.access_expires_at);
            }
            GrantEvent::GrantRevoked(e) => {
                self.status = GrantStatus::Revoked;
                self.revoked = Some(e.reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    type Spec = TestFramework<Grant>;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn code_issued() -> GrantEvent {
        GrantEvent::AuthorizationCodeIssued(AuthorizationCodeIssued {
            client_id: "app".into(),
            user_id: "u1".into(),
            organization_id: "org".into(),
            session_id: "s1".into(),
            scope: ["openid".to_owned()].into(),
            redirect_uri: "https://app.example/cb".into(),
            code_challenge: Some(CHALLENGE.into()),
            nonce: Some("n".into()),
            auth_time: t0(),
            amr: vec!["pwd".into()],
            code_sha256: digest("g.code"),
            expires_at: t0() + Duration::seconds(60),
            request: RequestInfo::default(),
            dpop_jkt: None,
        })
    }
    fn tokens(refresh: &str) -> NewTokens {
        NewTokens {
            access_token_id: "at1".into(),
            access_expires_at: t0() + Duration::minutes(5),
            refresh: Some((digest(refresh), t0() + Duration::days(30))),
            refresh_jkt: None,
        }
    }
    fn redeem(verifier: Option<&str>, at: DateTime<Utc>) -> GrantCommand {
        GrantCommand::RedeemCode {
            code_sha256: digest("g.code"),
            client_id: "app".into(),
            redirect_uri: Some("https://app.example/cb".into()),
            code_verifier: verifier.map(str::to_owned),
            now: at,
            tokens: tokens("g.r1"),
            request: RequestInfo::default(),
        }
    }
    fn issued() -> GrantEvent {
        let mut g = Grant::default();
        g.apply(code_issued());
        g.issue(
            GrantType::AuthorizationCode,
            tokens("g.r1"),
            RequestInfo::default(),
        )
    }

    #[test]
    fn pkce_follows_rfc_7636_appendix_b() {
        assert!(pkce_matches(CHALLENGE, VERIFIER));
        assert!(!pkce_matches(CHALLENGE, &VERIFIER.replace('d', "e")));
        assert!(!valid_code_verifier("short"));
    }

    #[test]
    fn a_code_is_redeemed_once_with_its_verifier_before_it_expires() {
        Spec::with(())
            .given(vec![code_issued()])
            .when(redeem(Some(VERIFIER), t0()))
            .then_expect_events(vec![issued()]);
        Spec::with(())
            .given(vec![code_issued()])
            .when(redeem(None, t0()))
            .then_expect_error(GrantError::PkceMissing);
        Spec::with(())
            .given(vec![code_issued()])
            .when(redeem(Some(&"a".repeat(43)), t0()))
            .then_expect_error(GrantError::PkceMismatch);
        Spec::with(())
            .given(vec![code_issued()])
            .when(redeem(Some(VERIFIER), t0() + Duration::seconds(60)))
            .then_expect_error(GrantError::CodeExpired);
        Spec::with(())
            .given(vec![code_issued(), issued()])
            .when(redeem(Some(VERIFIER), t0()))
            .then_expect_error(GrantError::CodeReused);
    }

    #[test]
    fn the_redirect_uri_must_match_exactly() {
        let mut cmd = redeem(Some(VERIFIER), t0());
        if let GrantCommand::RedeemCode { redirect_uri, .. } = &mut cmd {
            *redirect_uri = Some("https://app.example/cb/".into());
        }
        Spec::with(())
            .given(vec![code_issued()])
            .when(cmd)
            .then_expect_error(GrantError::RedirectMismatch);
    }

    #[test]
    fn refresh_tokens_rotate_and_a_spent_one_is_reuse() {
        let refresh = |token: &str, next: &str| GrantCommand::Refresh {
            refresh_sha256: digest(token),
            client_id: "app".into(),
            scope: None,
            now: t0(),
            tokens: tokens(next),
            request: RequestInfo::default(),
        };
        let rotated = GrantEvent::TokensRefreshed(TokensRefreshed {
            generation: 2,
            scope: ["openid".to_owned()].into(),
            access_token_id: "at1".into(),
            access_expires_at: t0() + Duration::minutes(5),
            refresh_sha256: digest("g.r2"),
            request: RequestInfo::default(),
        });
        Spec::with(())
            .given(vec![code_issued(), issued()])
            .when(refresh("g.r1", "g.r2"))
            .then_expect_events(vec![rotated.clone()]);
        Spec::with(())
            .given(vec![code_issued(), issued(), rotated.clone()])
            .when(refresh("g.r1", "g.r3"))
            .then_expect_error(GrantError::RefreshReused);
        Spec::with(())
            .given(vec![code_issued(), issued()])
            .when(refresh("g.other", "g.r3"))
            .then_expect_error(GrantError::InvalidRefresh);
        Spec::with(())
            .given(vec![
                code_issued(),
                issued(),
                GrantEvent::GrantRevoked(GrantRevoked {
                    reason: RevocationReason::ClientRequest,
                    request: RequestInfo::default(),
                }),
            ])
            .when(refresh("g.r1", "g.r2"))
            .then_expect_error(GrantError::Revoked);
    }
}
