//! QSA's application service: users (personal data sealed per subject), clients and service
//! principals, password sign-in with lockout, SSO sessions, and the OAuth grants with the
//! tokens they mint.
//!
//! Decisions live in the aggregates of `quantus_domain::identity`; this layer adds what needs
//! effects: randomness, hashing (argon2id), sealing (the subject keys), signing (QuantumLock's
//! token key through the keystore) and the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use quantus_crypto::keys::{Purpose, TrustedKey};
use quantus_domain::identity::access_policy::Strength;
use quantus_domain::identity::client::{
    AuthMethod, Client, ClientCommand, ClientKind, ClientRegistered, ClientStatus, GrantType,
};
use quantus_domain::identity::grant::{
    digest, AuthorizationCodeIssued, DeviceAuthorizationStarted, Grant, GrantCommand, GrantError,
    GrantStatus, NewTokens, RevocationReason, TokensIssued,
};
use quantus_domain::identity::session::{Session, SessionCommand, SessionStarted};
use quantus_domain::identity::signin::{
    Consent, ConsentGranted, SignInAttempt, SignInEvent, SignInFailed, SignInFailure,
    SignInSucceeded,
};
use quantus_domain::identity::user::{User, UserCommand, UserStatus};
use quantus_domain::identity::{scopes_of_roles, RequestDetails, RequestInfo, Role};
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::CommandContext;
use quantus_infra::credentials::{random_secret, secret_digest, secret_matches};
use quantus_infra::subject_keys::{SignInThrottle, SubjectKeys};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::licensing::Licensing;
use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

mod register;
pub use register::{Registration, RegistrationError};

/// Lifetimes, in seconds. Access tokens are short so that a stolen one is worth little and a
/// revoked grant stops working soon even where nobody introspects.
pub const ACCESS_TOKEN_SECONDS: i64 = 600;
pub const ID_TOKEN_SECONDS: i64 = 600;
pub const REFRESH_TOKEN_SECONDS: i64 = 30 * 86400;
pub const CODE_SECONDS: i64 = 60;
pub const DEVICE_CODE_SECONDS: i64 = 600;
pub const DEVICE_POLL_SECONDS: u32 = 5;
pub const SESSION_SECONDS: i64 = 8 * 3600;
pub const PAR_SECONDS: i64 = 60;

/// Passwords: 12 to 256 characters (NIST SP 800-63B allows long passphrases; no composition
/// rules).
pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 256;

/// argon2id with OWASP's first recommended setting: m = 19 MiB, t = 2, p = 1.
pub fn argon2() -> Argon2<'static> {
    let params = argon2::Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

impl ClassifyError for quantus_domain::identity::user::UserError {
    fn classify(&self) -> CommandError {
        use quantus_domain::identity::user::UserError as E;
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            E::NotFound | E::Erased => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

impl ClassifyError for quantus_domain::identity::client::ClientError {
    fn classify(&self) -> CommandError {
        use quantus_domain::identity::client::ClientError as E;
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            E::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

impl ClassifyError for quantus_domain::identity::group::GroupError {
    fn classify(&self) -> CommandError {
        use quantus_domain::identity::group::GroupError as E;
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            E::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

impl ClassifyError for GrantError {
    fn classify(&self) -> CommandError {
        CommandError::Rejected(self.to_string())
    }
}

impl ClassifyError for quantus_domain::identity::session::SessionError {
    fn classify(&self) -> CommandError {
        CommandError::Rejected(self.to_string())
    }
}

impl ClassifyError for quantus_domain::identity::signin::AlreadyRecorded {
    fn classify(&self) -> CommandError {
        CommandError::Rejected(self.to_string())
    }
}

/// An OAuth 2.0 error response (RFC 6749 §5.2, RFC 8628 §3.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new("invalid_client", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new("invalid_scope", d)
    }
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new("unauthorized_client", d)
    }
    pub fn server_error(d: impl Into<String>) -> Self {
        Self::new("server_error", d)
    }
}

impl From<CommandError> for OAuthError {
    fn from(e: CommandError) -> Self {
        tracing::error!(error = %e, "identity command failed");
        OAuthError::server_error("the request could not be completed")
    }
}

/// RFC 9449 §5: refresh tokens of public clients that prove a DPoP key are bound to it (a
/// confidential client's refresh tokens are already bound to its credentials).
fn public_binding<'a>(client: &ClientRegistered, dpop_jkt: Option<&'a str>) -> Option<&'a str> {
    dpop_jkt.filter(|_| client.auth_method == AuthMethod::None)
}

fn grant_error(e: &GrantError) -> OAuthError {
    match e {
        GrantError::AuthorizationPending => OAuthError::new("authorization_pending", e.to_string()),
        GrantError::AccessDenied => OAuthError::new("access_denied", e.to_string()),
        GrantError::DeviceExpired => OAuthError::new("expired_token", e.to_string()),
        GrantError::ScopeWidened => OAuthError::invalid_scope(e.to_string()),
        GrantError::ClientMismatch => {
            OAuthError::invalid_grant("the grant was issued to another client")
        }
        _ => OAuthError::invalid_grant(e.to_string()),
    }
}

/// Claims of an access token (RFC 9068) plus Quantus's own: `org`, `roles`, `gid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    /// The organization (tenant) the token acts in.
    pub org: String,
    pub roles: BTreeSet<Role>,
    /// The grant this token came from: revoking the grant voids the token.
    pub gid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
    /// The authentication context class the person reached (people only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// RFC 9449 §6.1: the token is bound to the DPoP key with this thumbprint; it is good
    /// only with a proof signed by that key (`Authorization: DPoP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// Confirmation claim (RFC 7800) of a DPoP-bound token: `jkt`, the RFC 7638 JWK SHA-256
/// thumbprint (base64url) of the client's DPoP public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub jkt: String,
}

impl AccessClaims {
    pub fn scopes(&self) -> BTreeSet<String> {
        self.scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn is_user(&self) -> bool {
        self.sub != self.client_id
    }

    /// The thumbprint of the DPoP key the token is bound to, if it is bound.
    pub fn jkt(&self) -> Option<&str> {
        self.cnf.as_ref().map(|c| c.jkt.as_str())
    }
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    pub scope: String,
}

/// Why an access token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token is not an access token (typ {0:?})")]
    WrongType(Option<String>),
    #[error("the token names no key Quantus knows")]
    UnknownKey,
    #[error("the token's key may not vouch for it: {0}")]
    KeyRefused(String),
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token's grant was revoked")]
    Revoked,
    #[error("the token's subject is disabled or erased")]
    SubjectInactive,
}

/// A client at the token endpoint, as it presented itself.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    pub client_id: Option<String>,
    pub secret: Option<String>,
    /// How the secret came: `client_secret_basic` or `client_secret_post`.
    pub method: Option<AuthMethod>,
    /// A `private_key_jwt` client assertion (RFC 7523).
    pub assertion: Option<String>,
}

/// A new user, as an administrator or SCIM describes it.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub organization_id: String,
    pub email: String,
    pub name: String,
    pub password: Option<String>,
    pub roles: BTreeSet<Role>,
}

/// A user as the API shows it; personal fields are `None` once erased.
#[derive(Debug, Clone, Serialize)]
pub struct UserProfile {
    pub id: String,
    pub organization_id: String,
    pub status: &'static str,
    pub email: Option<String>,
    pub name: Option<String>,
    pub memberships: BTreeMap<String, BTreeSet<Role>>,
    pub has_password: bool,
    pub version: u64,
}

/// A new client or service principal.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub organization_id: String,
    pub kind: ClientKind,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub grant_types: BTreeSet<GrantType>,
    pub scopes: BTreeSet<String>,
    pub roles: BTreeSet<Role>,
    pub auth_method: AuthMethod,
    pub require_par: bool,
    pub jwks: Option<serde_json::Value>,
    /// RFC 9449 §5.2: every token request of this client must carry a DPoP proof.
    pub dpop_bound_access_tokens: bool,
}

/// A live SSO session.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub id: String,
    pub user_id: String,
    pub organization_id: String,
    pub amr: Vec<String>,
    pub auth_time: DateTime<Utc>,
}

/// A signed-in person: the session and the cookie value that proves it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: LiveSession,
    pub cookie: String,
}

/// Why a sign-in failed. The API shows both the same way, so that nobody learns whether an
/// account exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInRefusal {
    Invalid,
    Locked(DateTime<Utc>),
    /// The password was right and the person has a second factor: the sealed state to hand
    /// back with the code (valid for [`SECOND_FACTOR_SECONDS`]).
    SecondFactor(String),
    /// The organization's conditional access refused it (the reason names the rule).
    Blocked(String),
}

/// The proof offered as the second factor.
#[derive(Debug, Clone)]
pub enum SecondFactorProof {
    /// A TOTP code or a recovery code.
    Code(String),
    /// A passkey assertion for a ceremony started with `Passkeys::second_factor_options`.
    Passkey {
        ceremony: String,
        credential: serde_json::Value,
    },
}

/// How long a person has to enter their second factor after their password.
pub const SECOND_FACTOR_SECONDS: i64 = 300;

/// What the password step proved, sealed while the second factor is asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecondFactorPending {
    user_id: String,
    organization_id: String,
    login: String,
    client_id: Option<String>,
    expires_at: DateTime<Utc>,
}

/// An authorization request that passed every check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: BTreeSet<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    /// Seconds; a session older than this must sign in again (OIDC Core §3.1.2.1).
    pub max_age: Option<i64>,
    pub prompt: Option<String>,
    /// Requested authentication context classes, in order of preference (OIDC Core §3.1.2.1).
    #[serde(default)]
    pub acr_values: Option<String>,
    /// Unix time after which a pushed request is void.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// RFC 9449 §10: the DPoP key (thumbprint) the code will be bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// The answer to a device authorization request (RFC 8628 §3.2).
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: i64,
    pub interval: u32,
}

/// Token introspection (RFC 7662 §2.2).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Introspection {
    pub active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
}

#[derive(Clone)]
pub struct Identity {
    bus: CommandBus,
    licensing: Licensing,
    keys: SubjectKeys,
    throttle: SignInThrottle,
    issuer: String,
    /// Device grants' last poll, for `slow_down` (RFC 8628 §3.5). Per process: a client that
    /// alternates between processes polls at most twice as often.
    polls: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    mfa: crate::totp::Mfa,
    access: crate::access::AccessControl,
    passkeys: crate::passkeys::Passkeys,
}

/// The index kind listing a person's sessions (in the grant index: kind, lookup, id).
const USER_SESSIONS: &str = "user-session";
/// Marker rows of the index backfills done once per store (lookup: the index's kind).
const INDEX_MIGRATIONS: &str = "index-migration";

/// One live session of a person at QSA, as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: String,
    /// How it was signed in (RFC 8176 method references).
    pub amr: Vec<String>,
    pub auth_time: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

/// A user's email as stored and compared: trimmed and lower-cased.
pub fn normalize_email(raw: &str) -> Result<String, CommandError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split('@').count() == 2
        && email.split('@').all(|part| {
            !part.is_empty() && !part.chars().any(|c| c.is_whitespace() || c.is_control())
        })
        && email
            .rsplit('@')
            .next()
            .is_some_and(|d| d.contains('.') || d == "localhost");
    if !valid {
        return Err(CommandError::Invalid("email is not a valid address".into()));
    }
    Ok(email)
}

fn check_password(password: &str) -> Result<(), CommandError> {
    let n = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        return Err(CommandError::Invalid(format!(
            "password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

/// The throttle account of a login name: a digest, so unknown names lock out exactly like
/// known ones and the table holds no email in clear.
fn throttle_account(login: &str) -> String {
    format!(
        "login:{}",
        hex::encode(Sha256::digest(login.trim().to_lowercase().as_bytes()))
    )
}

/// Hashes a password with argon2id off the async threads.
pub async fn hash_password(password: String) -> Result<String, CommandError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(storage)
    })
    .await
    .map_err(storage)?
}

/// Verifies a password against a PHC string; with no hash it does the same work against a
/// dummy one, so that timing does not tell whether the account exists.
/// Why a JWT was refused, in words of the protocol: the library's own messages name its
/// internals (`unknown variant none, expected one of HS256, ...`) and must not reach clients.
fn jwt_refusal(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "the signature does not verify".into(),
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet".into(),
        K::InvalidIssuer => "the token has another issuer".into(),
        K::InvalidAudience => "the token is meant for another audience".into(),
        K::InvalidSubject => "the token has another subject".into(),
        K::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            "the token's algorithm is not accepted".into()
        }
        K::InvalidKeyFormat | K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) => {
            "the key is unusable".into()
        }
        _ => "not a well-formed JWT".into(),
    }
}

/// What a verified `id_token_hint` says: who signed in, to which client, in which session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTokenHint {
    pub client_id: String,
    pub subject: String,
    pub session_id: Option<String>,
}

pub async fn verify_password(hash: Option<String>, password: String) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let dummy = DUMMY.get_or_init(|| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2()
                .hash_password(b"not a password anyone has", &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        });
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy.clone());
        let ok = PasswordHash::new(&hash)
            .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        ok && known
    })
    .await
    .unwrap_or(false)
}

/// `<id>.<256 random bits>`: the id finds the grant or session, the digest proves the rest.
fn bearer(id: &str) -> String {
    format!("{id}.{}", random_secret())
}

fn id_of(bearer: &str) -> Option<&str> {
    let (id, secret) = bearer.split_once('.')?;
    (!id.is_empty() && secret.len() == 43).then_some(id)
}

/// OIDC Core §3.1.3.6: the left half of the hash of the access token; for EdDSA with Ed25519,
/// SHA-512.
pub fn at_hash(access_token: &str) -> String {
    let h = Sha512::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&h[..32])
}

/// User codes: 8 letters from an alphabet without vowels or look-alikes (RFC 8628 §6.1),
/// shown as `XXXX-XXXX`.
fn user_code() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rngs::OsRng;
    let c: String = (0..8)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{}-{}", &c[..4], &c[4..])
}

/// A user code as typed: upper-cased, without separators.
pub fn normalize_user_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl Identity {
    pub fn new(
        bus: CommandBus,
        licensing: Licensing,
        keys: SubjectKeys,
        throttle: SignInThrottle,
        issuer: impl Into<String>,
    ) -> Self {
        let issuer: String = issuer.into();
        Self {
            mfa: crate::totp::Mfa::new(bus.clone(), keys.clone()),
            access: crate::access::AccessControl::new(bus.clone(), throttle.clone(), keys.clone()),
            passkeys: crate::passkeys::Passkeys::new(bus.clone(), keys.clone(), &issuer),
            bus,
            licensing,
            keys,
            throttle,
            issuer,
            polls: Arc::default(),
        }
    }

    /// Second factors (TOTP and recovery codes).
    pub fn mfa(&self) -> &crate::totp::Mfa {
        &self.mfa
    }

    /// Conditional access.
    pub fn access(&self) -> &crate::access::AccessControl {
        &self.access
    }

    /// Passkeys (WebAuthn).
    pub fn passkeys(&self) -> &crate::passkeys::Passkeys {
        &self.passkeys
    }

    /// Whether a sign-in of `user_id` needs a second factor after the password.
    pub async fn has_second_factor(&self, user_id: &str) -> Result<bool, CommandError> {
        Ok(self.mfa.totp_enrolled(user_id).await? || self.passkeys.has_passkeys(user_id).await?)
    }

    /// The person a sealed second-factor state is for (to offer their passkeys).
    pub fn second_factor_user(&self, pending: &str, now: DateTime<Utc>) -> Option<String> {
        self.keys
            .open_blob("second-factor", pending)
            .ok()
            .and_then(|b| serde_json::from_slice::<SecondFactorPending>(&b).ok())
            .filter(|p| now < p.expires_at)
            .map(|p| p.user_id)
    }

    /// A passkey-only sign-in (discoverable credential, user verification): the session's
    /// `amr` is `hwk` and `mfa` (possession plus the authenticator's verification).
    pub async fn sign_in_passkey(
        &self,
        ctx: &CommandContext,
        ceremony: &str,
        credential: serde_json::Value,
        client_id: Option<String>,
        request: RequestInfo,
    ) -> Result<Result<SignedIn, SignInRefusal>, CommandError> {
        let verdict = self
            .passkeys
            .verify_sign_in(ctx, ceremony, credential)
            .await?;
        let user_id = match verdict {
            Ok(u) => u,
            Err(refusal) => {
                let reason = match refusal {
                    crate::passkeys::PasskeyRefusal::Cloned => SignInFailure::ClonedPasskey,
                    _ => SignInFailure::BadPasskey,
                };
                self.audit_sign_in(
                    ctx,
                    SignInEvent::SignInFailed(SignInFailed {
                        user_id: None,
                        client_id,
                        reason,
                        locked_until: None,
                        request,
                    }),
                )
                .await?;
                return Ok(Err(SignInRefusal::Invalid));
            }
        };
        let (user, _) = self.bus.load::<User>(&user_id).await?;
        let audit_ctx = CommandContext {
            tenant_id: user.organization_id.clone(),
            ..ctx.clone()
        };
        if user.status != UserStatus::Active {
            self.audit_sign_in(
                &audit_ctx,
                SignInEvent::SignInFailed(SignInFailed {
                    user_id: Some(user_id),
                    client_id,
                    reason: SignInFailure::Disabled,
                    locked_until: None,
                    request,
                }),
            )
            .await?;
            return Ok(Err(SignInRefusal::Invalid));
        }
        let amr = vec!["hwk".to_owned(), "mfa".to_owned()];
        let account = format!("user:{user_id}");
        if let Err(refusal) = self
            .admit_sign_in(
                &audit_ctx, &user_id, &user, &amr, &client_id, &request, &account,
            )
            .await?
        {
            return Ok(Err(refusal));
        }
        self.complete_sign_in(
            &audit_ctx,
            &user_id,
            &user.organization_id,
            amr,
            client_id,
            request,
        )
        .await
        .map(Ok)
    }

    /// A second-factor step for a person already signed in whose session is too weak for what
    /// a client or a rule asks (step-up); the new session replaces it.
    pub fn step_up(
        &self,
        session: &LiveSession,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<String, CommandError> {
        let pending = SecondFactorPending {
            user_id: session.user_id.clone(),
            organization_id: session.organization_id.clone(),
            login: format!("user:{}", session.user_id),
            client_id: Some(client_id.to_owned()),
            expires_at: now + Duration::seconds(SECOND_FACTOR_SECONDS),
        };
        let b = serde_json::to_vec(&pending).map_err(storage)?;
        self.keys.seal_blob("second-factor", &b).map_err(storage)
    }

    /// Conditional access for a person's session at the authorization endpoint.
    pub async fn decide_authorization(
        &self,
        ctx: &CommandContext,
        session: &LiveSession,
        client_id: &str,
        request: &RequestInfo,
    ) -> Result<quantus_domain::identity::access_policy::AccessDecision, CommandError> {
        let (user, _) = self.bus.load::<User>(&session.user_id).await?;
        let requester = crate::access::Requester {
            organization_id: session.organization_id.clone(),
            subject: session.user_id.clone(),
            is_person: true,
            roles: user.roles_in(&session.organization_id),
            client_id: Some(client_id.to_owned()),
            ip: request.ip.clone(),
            strength: Strength::of_amr(&session.amr),
            throttle_account: None,
        };
        self.access
            .decide(ctx, crate::access::Stage::Authorize, &requester)
            .await
    }

    /// Conditional access at sign-in, once the person has authenticated with `amr`: Ok when the
    /// organization's rules let the session start; otherwise the refusal is audited.
    #[allow(clippy::too_many_arguments)]
    async fn admit_sign_in(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        user: &User,
        amr: &[String],
        client_id: &Option<String>,
        request: &RequestInfo,
        account: &str,
    ) -> Result<Result<(), SignInRefusal>, CommandError> {
        use quantus_domain::identity::access_policy::{Outcome, Strength};
        let strength = Strength::of_amr(amr);
        let requester = crate::access::Requester {
            organization_id: user.organization_id.clone(),
            subject: user_id.to_owned(),
            is_person: true,
            roles: user.roles_in(&user.organization_id),
            client_id: client_id.clone(),
            ip: request.ip.clone(),
            strength,
            throttle_account: Some(account.to_owned()),
        };
        let decision = self
            .access
            .decide(ctx, crate::access::Stage::SignIn, &requester)
            .await?;
        if decision.satisfied_by(strength) {
            return Ok(Ok(()));
        }
        let why = match decision.outcome {
            Outcome::RequireMfa => {
                "your organization requires a second factor: enrol an authenticator app"
            }
            Outcome::RequirePasskey => "your organization requires a passkey for this sign-in",
            _ => "your organization's access policy blocks this sign-in",
        };
        self.audit_sign_in(
            ctx,
            SignInEvent::SignInFailed(SignInFailed {
                user_id: Some(user_id.to_owned()),
                client_id: client_id.clone(),
                reason: SignInFailure::BlockedByPolicy,
                locked_until: None,
                request: request.clone(),
            }),
        )
        .await?;
        Ok(Err(SignInRefusal::Blocked(format!(
            "{why} ({})",
            decision.reason
        ))))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience of every access token: the Quantus API.
    pub fn api_audience(&self) -> String {
        format!("{}/v1", self.issuer)
    }

    pub fn subject_keys(&self) -> &SubjectKeys {
        &self.keys
    }

    /// The user a password sign-in names: the email in `organization` (an OAuth client's or a
    /// SAML service provider's, or the one the person typed), or, with none (a platform-wide
    /// client such as the consoles), the one account holding the address on the platform.
    /// None when there is no such account, or several and no organization was named: the
    /// sign-in then fails with the one message every failure gets.
    pub async fn find_sign_in(
        &self,
        organization: Option<&str>,
        email: &str,
    ) -> Result<Option<String>, CommandError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        match organization {
            Some(org) => {
                if let Some(user) = self.keys.find_email(org, &email).await.map_err(storage)? {
                    return Ok(Some(user));
                }
                // A person of another organization holding a role in this one (`grant-role`)
                // signs in with their own account, when exactly one such account exists.
                let mut members = Vec::new();
                for (_, user_id) in self.keys.discover_email(&email).await.map_err(storage)? {
                    let (user, _) = self.bus.load::<User>(&user_id).await?;
                    if user.memberships.contains_key(org) {
                        members.push(user_id);
                    }
                }
                Ok(match members.len() {
                    1 => members.pop(),
                    _ => None,
                })
            }
            None => {
                let mut found = self.keys.discover_email(&email).await.map_err(storage)?;
                Ok(match found.len() {
                    1 => found.pop().map(|(_, user)| user),
                    _ => None,
                })
            }
        }
    }

    /// Moves the login-index rows written when emails were unique across the whole platform
    /// (keyed by the address alone) to per-organization rows, once; run at start.
    pub async fn move_platform_wide_logins(&self) -> Result<usize, CommandError> {
        let Some(rows) = self.keys.unmoved_logins().await.map_err(storage)? else {
            return Ok(0);
        };
        let mut moved = 0;
        for (login, user_id) in rows {
            if user_id.is_empty() {
                continue;
            }
            let Ok(profile) = self.user_profile(&user_id).await else {
                continue;
            };
            let Some(email) = profile.email else {
                continue;
            };
            // SCIM userName rows and rows already per organization do not match this digest.
            if self.keys.login_digest(&email) != login {
                continue;
            }
            self.keys
                .claim_email(&profile.organization_id, &email, &user_id)
                .await
                .map_err(storage)?;
            self.keys.release_login(&login).await.map_err(storage)?;
            moved += 1;
        }
        self.keys.logins_moved().await.map_err(storage)?;
        Ok(moved)
    }

    async fn organization_is_active(&self, organization_id: &str) -> Result<(), CommandError> {
        // The platform's own principals belong to no Organization aggregate.
        if organization_id == PLATFORM_TENANT {
            return Ok(());
        }
        self.bus.active_organization(organization_id).await
    }

    // ---- users ----

    /// Registers a user; the email (normalised), name and password hash are sealed with the
    /// user's own data key before they reach the log.
    pub async fn register_user(
        &self,
        ctx: &CommandContext,
        id: &str,
        new: NewUser,
    ) -> Result<CommandOutcome, CommandError> {
        let email = normalize_email(&new.email)?;
        let name = new.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(CommandError::Invalid(
                "name must be 1 to 128 characters without control characters".into(),
            ));
        }
        self.organization_is_active(&new.organization_id).await?;
        let password_hash = match new.password {
            Some(p) => {
                check_password(&p)?;
                let phc = hash_password(p).await?;
                Some(
                    self.keys
                        .seal(id, "password_hash", phc.as_bytes())
                        .await
                        .map_err(storage)?,
                )
            }
            None => None,
        };
        let command = UserCommand::Register {
            organization_id: new.organization_id,
            email: self
                .keys
                .seal(id, "email", email.as_bytes())
                .await
                .map_err(storage)?,
            name: self
                .keys
                .seal(id, "name", name.as_bytes())
                .await
                .map_err(storage)?,
            roles: new.roles,
            password_hash,
        };
        self.bus.execute::<User>(ctx, id, command, None, &()).await
    }

    /// A password checked against the rules, hashed (argon2id) and sealed with the user's key.
    pub async fn sealed_password(
        &self,
        id: &str,
        password: String,
    ) -> Result<quantus_domain::identity::Sealed, CommandError> {
        check_password(&password)?;
        let phc = hash_password(password).await?;
        self.keys
            .seal(id, "password_hash", phc.as_bytes())
            .await
            .map_err(storage)
    }

    pub async fn set_password(
        &self,
        ctx: &CommandContext,
        id: &str,
        password: String,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        check_password(&password)?;
        let phc = hash_password(password).await?;
        let sealed = self
            .keys
            .seal(id, "password_hash", phc.as_bytes())
            .await
            .map_err(storage)?;
        self.bus
            .execute::<User>(
                ctx,
                id,
                UserCommand::SetPassword {
                    password_hash: sealed,
                },
                expected,
                &(),
            )
            .await
    }

    pub async fn user_command(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: UserCommand,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<User>(ctx, id, command, expected, &())
            .await
    }

    pub async fn user(&self, id: &str) -> Result<(User, u64), CommandError> {
        self.bus
            .load_existing::<User>(id, "user", |user| user.status != UserStatus::Absent)
            .await
    }

    /// The user with personal fields opened (absent once erased).
    pub async fn user_profile(&self, id: &str) -> Result<UserProfile, CommandError> {
        let (user, version) = self.user(id).await?;
        let open = |s: &Option<quantus_domain::identity::Sealed>, field: &'static str| {
            let s = s.clone();
            async move {
                match s {
                    Some(s) => self.keys.open_text(&s, field).await.map_err(storage),
                    None => Ok(None),
                }
            }
        };
        Ok(UserProfile {
            id: id.to_owned(),
            organization_id: user.organization_id.clone(),
            status: match user.status {
                UserStatus::Active => "active",
                UserStatus::Disabled => "disabled",
                UserStatus::Erased => "erased",
                UserStatus::Absent => "absent",
            },
            email: open(&user.email, "email").await?,
            name: open(&user.name, "name").await?,
            memberships: user.memberships.clone(),
            has_password: user.password_hash.is_some(),
            version,
        })
    }

    /// Erases a user: records it, then destroys the data key, which shreds every sealed field
    /// of theirs in the whole log. Running it again finishes an interrupted erasure.
    pub async fn erase_user(
        &self,
        ctx: &CommandContext,
        id: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let (user, version) = self.user(id).await?;
        let outcome = if user.status == UserStatus::Erased {
            CommandOutcome {
                position: self
                    .bus
                    .repository()
                    .aggregate_head("User", id)
                    .await
                    .map_err(storage)?,
                version,
                events: 0,
            }
        } else {
            self.bus
                .execute::<User>(ctx, id, UserCommand::Erase, None, &())
                .await?
        };
        self.keys.erase(id).await.map_err(storage)?;
        // The addresses they signed in from (the conditional-access "new address" signal)
        // are personal data outside the log: erased with them.
        self.bus
            .repository()
            .forget_indexed(crate::access::KNOWN_ADDRESS, &format!("{id}/"))
            .await
            .map_err(storage)?;
        let left = self.leave_every_group(ctx, id).await?;
        Ok(CommandOutcome {
            position: outcome.position.max(left),
            ..outcome
        })
    }

    /// Takes an erased user out of every group that still lists them (`GroupMemberRemoved`,
    /// one per group): the groups are found in the log itself, not a read model that may lag.
    /// Adding an erased user is refused, so after this no group gains them again. Answers the
    /// log position of the last removal (0 when there was none).
    async fn leave_every_group(&self, ctx: &CommandContext, id: &str) -> Result<u64, CommandError> {
        use quantus_domain::identity::group::{Group, GroupCommand, GroupMemberAdded};
        let added = self
            .bus
            .repository()
            .events_of::<GroupMemberAdded>()
            .await
            .map_err(storage)?;
        let groups: BTreeSet<String> = added
            .into_iter()
            .filter(|(_, added)| added.user_id == id)
            .map(|(r, _)| r.envelope.aggregate_id)
            .collect();
        let mut last = 0;
        for group_id in groups {
            let (group, _) = self.bus.load::<Group>(&group_id).await?;
            if !group.exists || group.deleted || !group.members.contains(id) {
                continue;
            }
            let ctx = CommandContext {
                tenant_id: group.organization_id.clone(),
                ..ctx.clone()
            };
            let outcome = self
                .bus
                .execute::<Group>(
                    &ctx,
                    &group_id,
                    GroupCommand::RemoveMember {
                        user_id: id.to_owned(),
                    },
                    None,
                    &(),
                )
                .await?;
            last = last.max(outcome.position);
        }
        Ok(last)
    }

    // ---- groups ----

    /// Runs a group command; adding a member checks the user's organizations first.
    pub async fn group_command(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: quantus_domain::identity::group::GroupCommand,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        use quantus_domain::identity::group::{Group, GroupCommand};
        let command = match command {
            GroupCommand::AddMember { user_id, .. } => {
                let (user, _) = self.bus.load::<User>(&user_id).await?;
                if !matches!(user.status, UserStatus::Active | UserStatus::Disabled) {
                    return Err(CommandError::Invalid(format!("no user {user_id}")));
                }
                GroupCommand::AddMember {
                    user_id,
                    member_of: user.memberships.keys().cloned().collect(),
                }
            }
            GroupCommand::Create {
                organization_id,
                name,
            } => {
                self.organization_is_active(&organization_id).await?;
                GroupCommand::Create {
                    organization_id,
                    name,
                }
            }
            other => other,
        };
        self.bus
            .execute::<Group>(ctx, id, command, expected, &())
            .await
    }

    pub async fn group(
        &self,
        id: &str,
    ) -> Result<(quantus_domain::identity::group::Group, u64), CommandError> {
        self.bus
            .load_existing::<quantus_domain::identity::group::Group>(id, "group", |group| {
                group.exists && !group.deleted
            })
            .await
    }

    // ---- sign-in and sessions ----

    /// Seals the peer address and user agent a command carries with the data key of
    /// `subject` (the person the event is about), so that erasing the person shreds them; the
    /// event then holds neither in clear (docs/identity.md, "Personal data").
    async fn seal_request(
        &self,
        subject: &str,
        request: &mut RequestInfo,
    ) -> Result<(), CommandError> {
        if !request.has_clear() {
            return Ok(());
        }
        let details = RequestDetails {
            ip: request.ip.take(),
            user_agent: request.user_agent.take(),
        };
        let plain =
            serde_json::to_vec(&details).map_err(|e| CommandError::Storage(e.to_string()))?;
        request.sealed = Some(
            self.keys
                .seal(subject, RequestInfo::SEALED_FIELD, &plain)
                .await
                .map_err(storage)?,
        );
        Ok(())
    }

    /// Where a recorded request came from, opened: the clear form of events recorded before
    /// issue 17 as it is, the sealed form with its subject's data key; `None` once that subject
    /// was erased (its key is gone).
    pub async fn open_request(
        &self,
        request: &RequestInfo,
    ) -> Result<Option<RequestDetails>, CommandError> {
        let Some(sealed) = &request.sealed else {
            return Ok(Some(RequestDetails {
                ip: request.ip.clone(),
                user_agent: request.user_agent.clone(),
            }));
        };
        match self
            .keys
            .open(sealed, RequestInfo::SEALED_FIELD)
            .await
            .map_err(storage)?
        {
            None => Ok(None),
            Some(plain) => serde_json::from_slice(&plain)
                .map(Some)
                .map_err(|e| CommandError::Storage(format!("a sealed request: {e}"))),
        }
    }

    /// A Grant command, its request sealed for the grant's person (or service principal).
    async fn execute_grant(
        &self,
        ctx: &CommandContext,
        grant_id: &str,
        mut command: GrantCommand,
        expected_version: Option<u64>,
        services: &(),
    ) -> Result<crate::CommandOutcome, CommandError> {
        let named = command.request_and_subject().1;
        let subject = match named {
            Some(subject) => subject,
            None => {
                let (grant, _) = self.bus.load::<Grant>(grant_id).await?;
                if grant.subject.is_empty() {
                    grant.client_id
                } else {
                    grant.subject
                }
            }
        };
        self.seal_request(&subject, command.request_and_subject().0)
            .await?;
        self.bus
            .execute::<Grant>(ctx, grant_id, command, expected_version, services)
            .await
    }

    /// A Session command, its request sealed for the session's person.
    async fn execute_session(
        &self,
        ctx: &CommandContext,
        session_id: &str,
        mut command: SessionCommand,
        expected_version: Option<u64>,
        services: &(),
    ) -> Result<crate::CommandOutcome, CommandError> {
        let user_id = match &command {
            SessionCommand::Start(started) => started.user_id.clone(),
            SessionCommand::End { .. } => self
                .bus
                .load::<Session>(session_id)
                .await?
                .0
                .started
                .map(|s| s.user_id)
                .unwrap_or_default(),
        };
        if !user_id.is_empty() {
            self.seal_request(&user_id, command.request_mut()).await?;
        }
        self.bus
            .execute::<Session>(ctx, session_id, command, expected_version, services)
            .await
    }

    /// A consent, its request sealed for the person who gave it.
    async fn execute_consent(
        &self,
        ctx: &CommandContext,
        id: &str,
        mut command: ConsentGranted,
        expected_version: Option<u64>,
        services: &(),
    ) -> Result<crate::CommandOutcome, CommandError> {
        let user_id = command.user_id.clone();
        self.seal_request(&user_id, &mut command.request).await?;
        self.bus
            .execute::<Consent>(ctx, id, command, expected_version, services)
            .await
    }

    /// Records a sign-in attempt, its request sealed for the person whose account it named;
    /// an attempt naming no known account has no person, and its request is sealed under the
    /// attempt's own id (docs/identity.md).
    async fn audit_sign_in(
        &self,
        ctx: &CommandContext,
        mut event: SignInEvent,
    ) -> Result<(), CommandError> {
        let id = uuid::Uuid::now_v7().to_string();
        let (request, user) = event.request_and_user();
        let subject = user.unwrap_or_else(|| format!("sign-in-attempt:{id}"));
        self.seal_request(&subject, request).await?;
        self.bus
            .execute::<SignInAttempt>(ctx, &id, event, None, &())
            .await?;
        Ok(())
    }

    /// Password sign-in. `user_id` is what the login name resolved to (None when unknown).
    /// Every outcome is an audit event; failures count towards a lockout of the login name.
    pub async fn sign_in(
        &self,
        ctx: &CommandContext,
        login: &str,
        user_id: Option<String>,
        password: String,
        client_id: Option<String>,
        request: RequestInfo,
    ) -> Result<Result<SignedIn, SignInRefusal>, CommandError> {
        let now = ctx.occurred_at;
        let account = throttle_account(login);
        let fail = |user_id: Option<String>, reason, locked_until| {
            SignInEvent::SignInFailed(SignInFailed {
                user_id,
                client_id: client_id.clone(),
                reason,
                locked_until,
                request: request.clone(),
            })
        };
        if let Some(until) = self
            .throttle
            .locked_until(&account, now)
            .await
            .map_err(storage)?
        {
            self.audit_sign_in(ctx, fail(user_id, SignInFailure::LockedOut, None))
                .await?;
            return Ok(Err(SignInRefusal::Locked(until)));
        }
        let user = match &user_id {
            Some(id) => self.bus.load::<User>(id).await?.0,
            None => User::default(),
        };
        let hash = match &user.password_hash {
            Some(sealed) => self
                .keys
                .open_text(sealed, "password_hash")
                .await
                .map_err(storage)?,
            None => None,
        };
        let has_hash = hash.is_some();
        let ok = verify_password(hash, password).await;
        let reason = match (user.status, ok) {
            (UserStatus::Active, true) => None,
            (UserStatus::Disabled, true) => Some(SignInFailure::Disabled),
            (UserStatus::Active | UserStatus::Disabled, false) if !has_hash => {
                Some(SignInFailure::NoPassword)
            }
            (UserStatus::Active | UserStatus::Disabled, false) => Some(SignInFailure::BadPassword),
            _ => Some(SignInFailure::UnknownUser),
        };
        let audit_ctx = CommandContext {
            tenant_id: if user.organization_id.is_empty() {
                PLATFORM_TENANT.to_owned()
            } else {
                user.organization_id.clone()
            },
            ..ctx.clone()
        };
        if let Some(reason) = reason {
            let locked = self
                .throttle
                .failure(&account, now)
                .await
                .map_err(storage)?;
            let known = user_id.filter(|_| reason != SignInFailure::UnknownUser);
            self.audit_sign_in(&audit_ctx, fail(known, reason, locked))
                .await?;
            return Ok(Err(match locked {
                Some(until) => SignInRefusal::Locked(until),
                None => SignInRefusal::Invalid,
            }));
        }
        let user_id = user_id.unwrap_or_default();
        if self.has_second_factor(&user_id).await? {
            // The throttle is not reset yet: only a complete sign-in resets it, so the second
            // factor cannot be guessed by signing in with the password again and again.
            let pending = SecondFactorPending {
                user_id,
                organization_id: user.organization_id.clone(),
                login: login.to_owned(),
                client_id,
                expires_at: now + Duration::seconds(SECOND_FACTOR_SECONDS),
            };
            let sealed = serde_json::to_vec(&pending)
                .map_err(storage)
                .and_then(|b| self.keys.seal_blob("second-factor", &b).map_err(storage))?;
            return Ok(Err(SignInRefusal::SecondFactor(sealed)));
        }
        let amr = vec!["pwd".to_owned()];
        if let Err(refusal) = self
            .admit_sign_in(
                &audit_ctx, &user_id, &user, &amr, &client_id, &request, &account,
            )
            .await?
        {
            return Ok(Err(refusal));
        }
        self.throttle.success(&account).await.map_err(storage)?;
        self.complete_sign_in(
            &audit_ctx,
            &user_id,
            &user.organization_id,
            amr,
            client_id,
            request,
        )
        .await
        .map(Ok)
    }

    /// The second step of a sign-in: a TOTP code (accepted once) or a recovery code, for the
    /// state [`SignInRefusal::SecondFactor`] handed out. Failures count towards the lockout of
    /// the login name like wrong passwords do.
    pub async fn sign_in_second_factor(
        &self,
        ctx: &CommandContext,
        pending: &str,
        proof: SecondFactorProof,
        request: RequestInfo,
    ) -> Result<Result<SignedIn, SignInRefusal>, CommandError> {
        let now = ctx.occurred_at;
        let Some(p) = self
            .keys
            .open_blob("second-factor", pending)
            .ok()
            .and_then(|b| serde_json::from_slice::<SecondFactorPending>(&b).ok())
        else {
            return Ok(Err(SignInRefusal::Invalid));
        };
        let audit_ctx = CommandContext {
            tenant_id: p.organization_id.clone(),
            ..ctx.clone()
        };
        let fail = |reason, locked_until| {
            SignInEvent::SignInFailed(SignInFailed {
                user_id: Some(p.user_id.clone()),
                client_id: p.client_id.clone(),
                reason,
                locked_until,
                request: request.clone(),
            })
        };
        if now >= p.expires_at {
            self.audit_sign_in(&audit_ctx, fail(SignInFailure::SecondFactorExpired, None))
                .await?;
            return Ok(Err(SignInRefusal::Invalid));
        }
        let account = throttle_account(&p.login);
        if let Some(until) = self
            .throttle
            .locked_until(&account, now)
            .await
            .map_err(storage)?
        {
            self.audit_sign_in(&audit_ctx, fail(SignInFailure::LockedOut, None))
                .await?;
            return Ok(Err(SignInRefusal::Locked(until)));
        }
        let (user, _) = self.bus.load::<User>(&p.user_id).await?;
        let verdict: Result<&'static str, SignInFailure> = if user.status != UserStatus::Active {
            Err(SignInFailure::BadSecondFactor)
        } else {
            match proof {
                SecondFactorProof::Code(code) => {
                    match self.mfa.verify(&audit_ctx, &p.user_id, &code).await? {
                        Ok(m) => Ok(m),
                        Err(crate::totp::SecondFactorRefusal::Replayed) => {
                            Err(SignInFailure::ReplayedSecondFactor)
                        }
                        Err(crate::totp::SecondFactorRefusal::Wrong) => {
                            Err(SignInFailure::BadSecondFactor)
                        }
                    }
                }
                SecondFactorProof::Passkey {
                    ceremony,
                    credential,
                } => match self
                    .passkeys
                    .verify_second_factor(&audit_ctx, &p.user_id, &ceremony, credential)
                    .await?
                {
                    Ok(()) => Ok("hwk"),
                    Err(crate::passkeys::PasskeyRefusal::Cloned) => {
                        Err(SignInFailure::ClonedPasskey)
                    }
                    Err(_) => Err(SignInFailure::BadPasskey),
                },
            }
        };
        let method = match verdict {
            Ok(method) => method,
            Err(reason) => {
                let locked = self
                    .throttle
                    .failure(&account, now)
                    .await
                    .map_err(storage)?;
                self.audit_sign_in(&audit_ctx, fail(reason, locked)).await?;
                return Ok(Err(match locked {
                    Some(until) => SignInRefusal::Locked(until),
                    None => SignInRefusal::Invalid,
                }));
            }
        };
        let amr = vec!["pwd".to_owned(), method.to_owned(), "mfa".to_owned()];
        if let Err(refusal) = self
            .admit_sign_in(
                &audit_ctx,
                &p.user_id,
                &user,
                &amr,
                &p.client_id,
                &request,
                &account,
            )
            .await?
        {
            return Ok(Err(refusal));
        }
        self.throttle.success(&account).await.map_err(storage)?;
        self.complete_sign_in(
            &audit_ctx,
            &p.user_id,
            &p.organization_id,
            amr,
            p.client_id,
            request,
        )
        .await
        .map(Ok)
    }

    /// The end of every successful sign-in: remember the address (for the new-address
    /// signal), start the session, audit the success.
    async fn complete_sign_in(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        organization_id: &str,
        amr: Vec<String>,
        client_id: Option<String>,
        request: RequestInfo,
    ) -> Result<SignedIn, CommandError> {
        self.access
            .remember_address(user_id, request.ip.as_deref())
            .await?;
        let signed_in = self
            .start_session(ctx, user_id, organization_id, amr, request.clone())
            .await?;
        self.audit_sign_in(
            ctx,
            SignInEvent::SignInSucceeded(SignInSucceeded {
                user_id: user_id.to_owned(),
                client_id,
                session_id: signed_in.session.id.clone(),
                amr: signed_in.session.amr.clone(),
                request,
            }),
        )
        .await?;
        Ok(signed_in)
    }

    async fn start_session(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        organization_id: &str,
        amr: Vec<String>,
        request: RequestInfo,
    ) -> Result<SignedIn, CommandError> {
        let id = uuid::Uuid::now_v7().to_string();
        let cookie = bearer(&id);
        let started = SessionStarted {
            user_id: user_id.to_owned(),
            organization_id: organization_id.to_owned(),
            amr: amr.clone(),
            auth_time: ctx.occurred_at,
            expires_at: ctx.occurred_at + Duration::seconds(SESSION_SECONDS),
            secret_sha256: digest(&cookie),
            request,
        };
        // The person's sessions, for listing and ending them (same index as grants').
        self.bus
            .repository()
            .index_grant(USER_SESSIONS, user_id, &id)
            .await
            .map_err(storage)?;
        self.execute_session(ctx, &id, SessionCommand::Start(started), None, &())
            .await?;
        Ok(SignedIn {
            session: LiveSession {
                id,
                user_id: user_id.to_owned(),
                organization_id: organization_id.to_owned(),
                amr,
                auth_time: ctx.occurred_at,
            },
            cookie,
        })
    }

    /// The live session a cookie proves, if any (and if its user may still sign in).
    pub async fn session(
        &self,
        cookie: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LiveSession>, CommandError> {
        let Some(id) = id_of(cookie) else {
            return Ok(None);
        };
        let (session, _) = self.bus.load::<Session>(id).await?;
        let Some(s) = session.started.as_ref().filter(|_| session.is_live(now)) else {
            return Ok(None);
        };
        if !secret_matches(cookie, &s.secret_sha256) {
            return Ok(None);
        }
        let (user, _) = self.bus.load::<User>(&s.user_id).await?;
        if user.status != UserStatus::Active {
            return Ok(None);
        }
        Ok(Some(LiveSession {
            id: id.to_owned(),
            user_id: s.user_id.clone(),
            organization_id: s.organization_id.clone(),
            amr: s.amr.clone(),
            auth_time: s.auth_time,
        }))
    }

    /// Indexes by person the sessions started before sessions were indexed by person, from
    /// their `SessionStarted` in the log, so that they are listed and ended like the others.
    /// Once per store (a marker row in the same index), and idempotent (rows it has are left):
    /// a start that crashes half-way does it again. Answers how many live ones it indexed.
    pub async fn index_earlier_sessions(&self, now: DateTime<Utc>) -> Result<usize, CommandError> {
        let repo = self.bus.repository();
        if !repo
            .indexed_grants(INDEX_MIGRATIONS, USER_SESSIONS)
            .await
            .map_err(storage)?
            .is_empty()
        {
            return Ok(0);
        }
        let mut indexed = 0;
        for (record, started) in repo.events_of::<SessionStarted>().await.map_err(storage)? {
            // An expired session is never listed: nothing to index.
            if started.expires_at <= now {
                continue;
            }
            repo.index_grant(
                USER_SESSIONS,
                &started.user_id,
                &record.envelope.aggregate_id,
            )
            .await
            .map_err(storage)?;
            indexed += 1;
        }
        repo.index_grant(INDEX_MIGRATIONS, USER_SESSIONS, "done")
            .await
            .map_err(storage)?;
        Ok(indexed)
    }

    /// A person's live sessions at QSA, newest first (those started since sessions were
    /// indexed by person).
    pub async fn sessions_of(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionView>, CommandError> {
        let mut out = vec![];
        for id in self
            .bus
            .repository()
            .indexed_grants(USER_SESSIONS, user_id)
            .await
            .map_err(storage)?
        {
            let (session, _) = self.bus.load::<Session>(&id).await?;
            if let Some(s) = session
                .started
                .as_ref()
                .filter(|s| session.is_live(now) && s.user_id == user_id)
            {
                out.push(SessionView {
                    id,
                    amr: s.amr.clone(),
                    auth_time: s.auth_time,
                    expires_at: s.expires_at,
                });
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.auth_time));
        Ok(out)
    }

    /// The session a grant was issued in (for "this session" among a person's).
    pub async fn session_of_grant(&self, grant_id: &str) -> Result<Option<String>, CommandError> {
        Ok(self.bus.load::<Grant>(grant_id).await?.0.session_id)
    }

    /// Ends one of a person's live sessions and revokes every grant issued in it, so the
    /// applications it signed in to lose their tokens too. Another person's session, or one
    /// already over, is not found.
    pub async fn revoke_session_of(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        session_id: &str,
        reason: &str,
        request: RequestInfo,
    ) -> Result<(), CommandError> {
        let now = ctx.occurred_at;
        if !self
            .sessions_of(user_id, now)
            .await?
            .iter()
            .any(|s| s.id == session_id)
        {
            return Err(CommandError::NotFound(format!("no session {session_id}")));
        }
        self.revoke_session_grants(ctx, session_id, request.clone())
            .await?;
        let command = SessionCommand::End {
            reason: reason.into(),
            request,
        };
        self.execute_session(ctx, session_id, command, None, &())
            .await?;
        Ok(())
    }

    pub async fn end_session(
        &self,
        ctx: &CommandContext,
        session_id: &str,
        request: RequestInfo,
    ) -> Result<(), CommandError> {
        let command = SessionCommand::End {
            reason: "logout".into(),
            request,
        };
        self.execute_session(ctx, session_id, command, None, &())
            .await?;
        Ok(())
    }

    pub async fn consent(&self, user_id: &str, client_id: &str) -> Result<Consent, CommandError> {
        Ok(self
            .bus
            .load::<Consent>(&format!("{user_id}:{client_id}"))
            .await?
            .0)
    }

    pub async fn grant_consent(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        client_id: &str,
        scope: BTreeSet<String>,
        request: RequestInfo,
    ) -> Result<(), CommandError> {
        let command = ConsentGranted {
            user_id: user_id.to_owned(),
            client_id: client_id.to_owned(),
            scope,
            request,
        };
        self.execute_consent(ctx, &format!("{user_id}:{client_id}"), command, None, &())
            .await?;
        Ok(())
    }

    // ---- clients and service principals ----

    /// Registers a client; returns its id and, for secret-based authentication, the secret
    /// (shown once: only its digest is kept).
    pub async fn register_client(
        &self,
        ctx: &CommandContext,
        new: NewClient,
    ) -> Result<(String, Option<String>, CommandOutcome), CommandError> {
        self.register_client_with_id(ctx, &uuid::Uuid::now_v7().to_string(), new, None)
            .await
    }

    /// As [`register_client`](Self::register_client) with a chosen id (and optionally secret).
    pub async fn register_client_with_id(
        &self,
        ctx: &CommandContext,
        client_id: &str,
        new: NewClient,
        secret: Option<String>,
    ) -> Result<(String, Option<String>, CommandOutcome), CommandError> {
        self.organization_is_active(&new.organization_id).await?;
        let secret = matches!(
            new.auth_method,
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
        )
        .then(|| secret.unwrap_or_else(random_secret));
        let registered = ClientRegistered {
            organization_id: new.organization_id,
            kind: new.kind,
            name: new.name,
            redirect_uris: new.redirect_uris,
            post_logout_redirect_uris: new.post_logout_redirect_uris,
            grant_types: new.grant_types,
            scopes: new.scopes,
            roles: new.roles,
            auth_method: new.auth_method,
            require_par: new.require_par,
            jwks: new.jwks,
            secret_sha256: secret.as_deref().map(secret_digest),
            dpop_bound_access_tokens: new.dpop_bound_access_tokens,
        };
        let outcome = self
            .bus
            .execute::<Client>(
                ctx,
                client_id,
                ClientCommand::Register(registered),
                None,
                &(),
            )
            .await?;
        Ok((client_id.to_owned(), secret, outcome))
    }

    pub async fn client(&self, id: &str) -> Result<(Client, u64), CommandError> {
        self.bus
            .load_existing::<Client>(id, "client", |client| client.status != ClientStatus::Absent)
            .await
    }

    pub async fn rotate_client_secret(
        &self,
        ctx: &CommandContext,
        id: &str,
    ) -> Result<(String, CommandOutcome), CommandError> {
        let secret = random_secret();
        let command = ClientCommand::RotateSecret {
            secret_sha256: secret_digest(&secret),
        };
        let outcome = self
            .bus
            .execute::<Client>(ctx, id, command, None, &())
            .await?;
        Ok((secret, outcome))
    }

    pub async fn disable_client(
        &self,
        ctx: &CommandContext,
        id: &str,
        reason: String,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<Client>(ctx, id, ClientCommand::Disable { reason }, None, &())
            .await
    }

    /// Authenticates a client at the token, introspection, revocation or PAR endpoint.
    /// `audiences`: what a client assertion may name as `aud` at this endpoint.
    pub async fn authenticate_client(
        &self,
        auth: &ClientAuth,
        audiences: &[String],
        now: DateTime<Utc>,
    ) -> Result<(String, ClientRegistered), OAuthError> {
        let assertion_sub = match &auth.assertion {
            Some(jwt) => Some(
                jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(jwt)
                    .ok()
                    .and_then(|d| {
                        d.claims
                            .get("sub")
                            .and_then(|s| s.as_str())
                            .map(str::to_owned)
                    })
                    .ok_or_else(|| {
                        OAuthError::invalid_client("the client assertion is malformed")
                    })?,
            ),
            None => None,
        };
        let client_id = match (&auth.client_id, &assertion_sub) {
            (Some(a), Some(b)) if a != b => {
                return Err(OAuthError::invalid_client(
                    "client_id and the assertion's subject differ",
                ))
            }
            (Some(a), _) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => {
                return Err(OAuthError::invalid_client(
                    "client authentication is required",
                ))
            }
        };
        let unknown = || OAuthError::invalid_client("client authentication failed");
        let (client, _) = self.bus.load_recent::<Client>(&client_id).await?;
        let (Some(reg), ClientStatus::Active) = (client.registration.clone(), client.status) else {
            // Same work as a real check, so timing does not reveal which ids exist.
            let _ = secret_matches(auth.secret.as_deref().unwrap_or_default(), &"0".repeat(64));
            return Err(unknown());
        };
        match reg.auth_method {
            AuthMethod::None => {
                if auth.secret.is_some() || auth.assertion.is_some() {
                    return Err(OAuthError::invalid_client(
                        "this public client does not authenticate",
                    ));
                }
            }
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
                let (Some(secret), Some(digest)) = (&auth.secret, &client.secret_sha256) else {
                    return Err(unknown());
                };
                if !secret_matches(secret, digest) {
                    return Err(unknown());
                }
                if auth.method != Some(reg.auth_method) {
                    return Err(OAuthError::invalid_client(format!(
                        "this client authenticates with {}",
                        serde_json::to_value(reg.auth_method)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    )));
                }
            }
            AuthMethod::PrivateKeyJwt => {
                let jwt = auth.assertion.as_deref().ok_or_else(unknown)?;
                self.check_client_assertion(jwt, &client_id, &reg, audiences, now)
                    .await?;
            }
        }
        Ok((client_id, reg))
    }

    /// RFC 7523 §3 with OIDC Core §9: signed by one of the client's keys, iss = sub = client,
    /// an accepted audience, not before `nbf`, not expired, at most ten minutes long, and a
    /// `jti` used once (a replayed assertion is refused).
    async fn check_client_assertion(
        &self,
        jwt: &str,
        client_id: &str,
        reg: &ClientRegistered,
        audiences: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), OAuthError> {
        use jsonwebtoken::{Algorithm as Alg, DecodingKey, Validation};
        let bad =
            |why: &str| OAuthError::invalid_client(format!("client assertion refused: {why}"));
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| bad("malformed header"))?;
        if !matches!(
            header.alg,
            Alg::RS256 | Alg::PS256 | Alg::ES256 | Alg::EdDSA
        ) {
            return Err(bad("algorithm not accepted"));
        }
        let set: jsonwebtoken::jwk::JwkSet = reg
            .jwks
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| bad("the client has no usable keys"))?;
        let jwk = match &header.kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }
        .ok_or_else(|| bad("no key of the client matches"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| bad("the client's key is unusable"))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[client_id]);
        v.sub = Some(client_id.to_owned());
        v.set_audience(audiences);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        v.validate_nbf = true;
        v.leeway = 5;
        let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
            .map_err(|e| bad(&jwt_refusal(&e)))?;
        let exp = data.claims.get("exp").and_then(|e| e.as_i64()).unwrap_or(0);
        if exp - now.timestamp() > 600 {
            return Err(bad("the assertion lives longer than ten minutes"));
        }
        let jti = data
            .claims
            .get("jti")
            .and_then(|j| j.as_str())
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| bad("jti is required"))?;
        let first_use = self
            .bus
            .repository()
            .claim_once("assertion", &format!("{client_id}:{jti}"))
            .await
            .map_err(|e| OAuthError::server_error(e.to_string()))?;
        if !first_use {
            return Err(bad("this assertion was already used"));
        }
        Ok(())
    }

    // ---- tokens ----

    /// Signs a JWT with the token key (EdDSA) through the keystore.
    pub async fn sign_jwt(
        &self,
        typ: &str,
        claims: &impl Serialize,
    ) -> Result<String, CommandError> {
        let kid = self
            .licensing
            .keyring(Purpose::Token)
            .await?
            .active
            .ok_or_else(|| CommandError::Rejected("no active token key".into()))?;
        let header = serde_json::json!({ "alg": "EdDSA", "kid": kid, "typ": typ });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(storage)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(storage)?)
        );
        let sig = self.licensing.sign_jose(&kid, input.as_bytes()).await?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Token keys that verify now: the active key and those not yet retired or compromised.
    pub async fn token_keys(&self, now: DateTime<Utc>) -> Result<Vec<TrustedKey>, CommandError> {
        Ok(self
            .licensing
            .keyring_recent(Purpose::Token)
            .await?
            .trusted_keys()
            .into_iter()
            .filter(|k| {
                k.retired_at.is_none_or(|r| r > now)
                    && k.compromised_at.is_none()
                    && k.not_before <= now
            })
            .collect())
    }

    /// The JWK Set (RFC 7517) of the token keys, as OKP/Ed25519 keys (RFC 8037).
    pub async fn jwks(&self, now: DateTime<Utc>) -> Result<serde_json::Value, CommandError> {
        let keys: Vec<serde_json::Value> = self
            .token_keys(now)
            .await?
            .into_iter()
            .filter(|k| k.alg == quantus_crypto::Algorithm::Ed25519)
            .map(|k| serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": k.public_key, "kid": k.kid, "alg": "EdDSA", "use": "sig" }))
            .collect();
        Ok(serde_json::json!({ "keys": keys }))
    }

    async fn verify_jwt(
        &self,
        token: &str,
        typ: &str,
        audience: &str,
        now: DateTime<Utc>,
        check_exp: bool,
    ) -> Result<serde_json::Value, TokenRejection> {
        use jsonwebtoken::{Algorithm as Alg, DecodingKey, Validation};
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenRejection::Malformed(jwt_refusal(&e)))?;
        if header.alg != Alg::EdDSA {
            return Err(TokenRejection::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let header_typ = header.typ.clone().map(|t| t.to_ascii_lowercase());
        if header_typ.as_deref() != Some(typ)
            && header_typ.as_deref() != Some(&format!("application/{typ}"))
        {
            return Err(TokenRejection::WrongType(header.typ));
        }
        let kid = header.kid.ok_or(TokenRejection::UnknownKey)?;
        let keys = self
            .token_keys(now)
            .await
            .map_err(|e| TokenRejection::Malformed(e.to_string()))?;
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenRejection::UnknownKey)?;
        let decoding = DecodingKey::from_ed_components(&key.public_key)
            .map_err(|e| TokenRejection::KeyRefused(e.to_string()))?;
        let mut v = Validation::new(Alg::EdDSA);
        v.set_issuer(&[self.issuer.as_str()]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat"]);
        v.validate_exp = check_exp;
        v.validate_nbf = true;
        v.leeway = 5;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &v)
            .map_err(|e| TokenRejection::Invalid(jwt_refusal(&e)))?;
        let iat = data.claims.get("iat").and_then(|i| i.as_i64()).unwrap_or(0);
        if iat < key.not_before.timestamp() - 5 {
            return Err(TokenRejection::KeyRefused(
                "signed before the key existed".into(),
            ));
        }
        Ok(data.claims)
    }

    /// Verifies an `id_token_hint` (OIDC RP-Initiated Logout 1.0 §2): an ID token this
    /// issuer signed for the client it names. An expired one is still a valid hint.
    pub async fn verify_id_token_hint(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<IdTokenHint, TokenRejection> {
        // The audience names the client; the signature check below then covers it.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token)
            .map_err(|_| TokenRejection::Malformed("not a JWT".into()))?;
        let client_id = unverified
            .claims
            .get("aud")
            .and_then(|a| a.as_str())
            .ok_or_else(|| TokenRejection::Malformed("the ID token names no client".into()))?
            .to_owned();
        let claims = self
            .verify_jwt(token, "jwt", &client_id, now, false)
            .await?;
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(IdTokenHint {
            client_id,
            subject: text("sub").unwrap_or_default(),
            session_id: text("sid"),
        })
    }

    /// Verifies an access token: signature by a live token key, `typ` at+jwt, issuer,
    /// audience, lifetime, and that its grant is not revoked.
    pub async fn verify_access_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, TokenRejection> {
        let claims = self
            .verify_jwt(token, "at+jwt", &self.api_audience(), now, true)
            .await?;
        let claims: AccessClaims =
            serde_json::from_value(claims).map_err(|e| TokenRejection::Malformed(e.to_string()))?;
        self.check_live(&claims).await?;
        Ok(claims)
    }

    /// The part of access-token verification a signature cannot show: the grant is not
    /// revoked and the subject (person or client) is still active. Resource servers that
    /// verify signatures against the JWKS (the Portal) call it too.
    pub async fn check_live(&self, claims: &AccessClaims) -> Result<(), TokenRejection> {
        let (grant, _) = self
            .bus
            .load_recent::<Grant>(&claims.gid)
            .await
            .map_err(|e| TokenRejection::Malformed(e.to_string()))?;
        if grant.status != GrantStatus::Active {
            return Err(TokenRejection::Revoked);
        }
        // A disabled or erased person, or a disabled client, loses access at once, not when
        // the token expires.
        let live = if claims.is_user() {
            let (user, _) = self
                .bus
                .load_recent::<User>(&claims.sub)
                .await
                .map_err(|e| TokenRejection::Malformed(e.to_string()))?;
            user.status == UserStatus::Active
        } else {
            let (client, _) = self
                .bus
                .load_recent::<Client>(&claims.client_id)
                .await
                .map_err(|e| TokenRejection::Malformed(e.to_string()))?;
            client.status == ClientStatus::Active
        };
        if !live {
            return Err(TokenRejection::SubjectInactive);
        }
        Ok(())
    }

    /// Roles and effective scopes of a grant's subject, now.
    async fn subject_roles(
        &self,
        grant_type: GrantType,
        subject: &str,
        organization_id: &str,
        client: &ClientRegistered,
    ) -> Result<BTreeSet<Role>, OAuthError> {
        if grant_type == GrantType::ClientCredentials {
            return Ok(client.roles.clone());
        }
        let (user, _) = self.bus.load::<User>(subject).await?;
        if user.status != UserStatus::Active {
            return Err(OAuthError::invalid_grant("the user can no longer sign in"));
        }
        Ok(user.roles_in(organization_id))
    }

    /// The scopes a token may carry: asked ∩ the client's ∩ what the subject's roles allow
    /// (OIDC scopes pass when the client may ask for them).
    fn effective_scope(
        asked: &BTreeSet<String>,
        client: &ClientRegistered,
        roles: &BTreeSet<Role>,
    ) -> BTreeSet<String> {
        let by_roles = scopes_of_roles(roles);
        asked
            .iter()
            .filter(|s| client.scopes.contains(*s))
            .filter(|s| {
                quantus_domain::identity::OIDC_SCOPES.contains(&s.as_str()) || by_roles.contains(*s)
            })
            .cloned()
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn mint(
        &self,
        grant_id: &str,
        grant: &Grant,
        scope: &BTreeSet<String>,
        roles: BTreeSet<Role>,
        jti: &str,
        now: DateTime<Utc>,
        refresh: Option<String>,
        jkt: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let is_user = grant.grant_type != Some(GrantType::ClientCredentials);
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: grant.subject.clone(),
            aud: self.api_audience(),
            exp: (now + Duration::seconds(ACCESS_TOKEN_SECONDS)).timestamp(),
            iat: now.timestamp(),
            jti: jti.to_owned(),
            client_id: grant.client_id.clone(),
            scope: quantus_domain::identity::scope_string(scope),
            org: grant.organization_id.clone(),
            roles,
            gid: grant_id.to_owned(),
            auth_time: grant.auth_time.filter(|_| is_user).map(|t| t.timestamp()),
            amr: is_user.then(|| grant.amr.clone()),
            acr: is_user.then(|| Strength::of_amr(&grant.amr).acr().to_owned()),
            cnf: jkt.map(|j| Confirmation { jkt: j.to_owned() }),
        };
        let access_token = self.sign_jwt("at+jwt", &claims).await?;
        let id_token = if scope.contains("openid") && is_user {
            let mut id = serde_json::json!({
                "iss": self.issuer,
                "sub": grant.subject,
                "aud": grant.client_id,
                "azp": grant.client_id,
                "exp": (now + Duration::seconds(ID_TOKEN_SECONDS)).timestamp(),
                "iat": now.timestamp(),
                "auth_time": grant.auth_time.map(|t| t.timestamp()),
                "amr": grant.amr,
                "acr": Strength::of_amr(&grant.amr).acr(),
                "at_hash": at_hash(&access_token),
                "sid": grant.session_id,
                "org": grant.organization_id,
            });
            // The nonce goes only into the ID token of the code exchange, as OIDC Core asks.
            if grant.generation <= 1 {
                if let Some(nonce) = &grant.nonce {
                    id["nonce"] = nonce.clone().into();
                }
            }
            Some(self.sign_jwt("JWT", &id).await?)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token,
            // RFC 9449 §5: a DPoP-bound token is of type DPoP.
            token_type: if jkt.is_some() { "DPoP" } else { "Bearer" },
            expires_in: ACCESS_TOKEN_SECONDS,
            refresh_token: refresh,
            id_token,
            scope: claims.scope,
        })
    }

    fn new_tokens(
        grant_id: &str,
        now: DateTime<Utc>,
        with_refresh: bool,
        refresh_jkt: Option<&str>,
    ) -> (NewTokens, String, Option<String>) {
        let jti = uuid::Uuid::now_v7().to_string();
        let refresh = with_refresh.then(|| bearer(grant_id));
        (
            NewTokens {
                access_token_id: jti.clone(),
                access_expires_at: now + Duration::seconds(ACCESS_TOKEN_SECONDS),
                refresh: refresh
                    .as_ref()
                    .map(|r| (digest(r), now + Duration::seconds(REFRESH_TOKEN_SECONDS))),
                refresh_jkt: refresh.as_ref().and(refresh_jkt.map(str::to_owned)),
            },
            jti,
            refresh,
        )
    }

    /// client_credentials (RFC 6749 §4.4): a service principal's own token.
    pub async fn token_client_credentials(
        &self,
        ctx: &CommandContext,
        client_id: &str,
        client: &ClientRegistered,
        scope: Option<BTreeSet<String>>,
        request: RequestInfo,
        dpop_jkt: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.grant_types.contains(&GrantType::ClientCredentials) {
            return Err(OAuthError::unauthorized_client(
                "this client may not use client_credentials",
            ));
        }
        let now = ctx.occurred_at;
        // Without a `scope`, the client gets what it may have (RFC 6749 §3.3): for a client
        // that also signs people in, its registered API scopes belong to their tokens.
        let asked = scope
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| Self::effective_scope(&client.scopes, client, &client.roles));
        let scope = Self::effective_scope(&asked, client, &client.roles);
        if scope.len() < asked.len() {
            return Err(OAuthError::invalid_scope(
                "the client may not have every scope asked for",
            ));
        }
        // Conditional access applies to service principals too (source ranges, roles).
        let requester = crate::access::Requester {
            organization_id: client.organization_id.clone(),
            subject: client_id.to_owned(),
            is_person: false,
            roles: client.roles.clone(),
            client_id: Some(client_id.to_owned()),
            ip: request.ip.clone(),
            strength: Strength::Password,
            throttle_account: None,
        };
        let decision = self
            .access
            .decide(ctx, crate::access::Stage::Token, &requester)
            .await?;
        if !decision.satisfied_by(Strength::Password) {
            return Err(OAuthError::unauthorized_client(format!(
                "the organization's access policy refuses this client: {}",
                decision.reason
            )));
        }
        let grant_id = uuid::Uuid::now_v7().to_string();
        let (tokens, jti, _) = Self::new_tokens(&grant_id, now, false, None);
        let issued = TokensIssued {
            grant_type: GrantType::ClientCredentials,
            client_id: client_id.to_owned(),
            subject: client_id.to_owned(),
            organization_id: client.organization_id.clone(),
            scope: scope.clone(),
            access_token_id: tokens.access_token_id,
            access_expires_at: tokens.access_expires_at,
            refresh_sha256: None,
            refresh_expires_at: None,
            request,
            refresh_jkt: None,
        };
        let ctx = CommandContext {
            tenant_id: client.organization_id.clone(),
            ..ctx.clone()
        };
        self.execute_grant(
            &ctx,
            &grant_id,
            GrantCommand::IssueClientCredentials(issued),
            None,
            &(),
        )
        .await?;
        let (grant, _) = self.bus.load::<Grant>(&grant_id).await?;
        self.mint(
            &grant_id,
            &grant,
            &scope,
            client.roles.clone(),
            &jti,
            now,
            None,
            dpop_jkt,
        )
        .await
    }

    /// Checks an authorization request against the client (OIDC Core §3.1.2.2, RFC 9700).
    /// `Err((error, description))` is for the client's redirect URI; a bad client or redirect
    /// URI is `Ok(Err(..))` — never redirect to an unverified URI.
    pub async fn check_authorization_request(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<
        Result<(AuthorizationRequest, ClientRegistered), OAuthError>,
        (OAuthError, Option<String>),
    > {
        let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
        let Some(client_id) = get("client_id") else {
            return Ok(Err(OAuthError::invalid_request("client_id is missing")));
        };
        let client = match self.bus.load::<Client>(&client_id).await {
            Ok((c, _)) if c.status == ClientStatus::Active => c
                .registration
                .unwrap_or_else(|| unreachable!("active clients are registered")),
            Ok(_) => return Ok(Err(OAuthError::invalid_request("unknown client_id"))),
            Err(e) => return Ok(Err(OAuthError::from(e))),
        };
        let Some(redirect_uri) = get("redirect_uri") else {
            return Ok(Err(OAuthError::invalid_request("redirect_uri is missing")));
        };
        if !quantus_domain::identity::client::redirect_uri_registered(
            &client.redirect_uris,
            &redirect_uri,
        ) {
            return Ok(Err(OAuthError::invalid_request(
                "redirect_uri is not registered for this client",
            )));
        }
        let state = get("state");
        let fail = |e: OAuthError| Err((e, state.clone()));
        if params.contains_key("request") {
            return fail(OAuthError::new(
                "request_not_supported",
                "request objects are not supported; use pushed authorization requests",
            ));
        }
        if get("response_mode").is_some_and(|m| m != "query") {
            return fail(OAuthError::invalid_request(
                "only response_mode=query is supported",
            ));
        }
        if get("response_type").as_deref() != Some("code") {
            return fail(OAuthError::new(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        if !client.grant_types.contains(&GrantType::AuthorizationCode) {
            return fail(OAuthError::unauthorized_client(
                "this client may not use the authorization code flow",
            ));
        }
        let scope = match quantus_domain::identity::parse_scope(&get("scope").unwrap_or_default()) {
            Ok(s) if !s.is_empty() => s,
            Ok(_) => return fail(OAuthError::invalid_scope("scope is required")),
            Err(e) => return fail(OAuthError::invalid_scope(e)),
        };
        if let Some(s) = scope.iter().find(|s| !client.scopes.contains(*s)) {
            return fail(OAuthError::invalid_scope(format!(
                "this client may not ask for {s}"
            )));
        }
        let code_challenge = get("code_challenge");
        match (get("code_challenge_method").as_deref(), &code_challenge) {
            (Some("S256"), Some(c))
                if c.len() == 43
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {}
            (None, None) if client.kind != ClientKind::Public => {}
            (None, None) => {
                return fail(OAuthError::invalid_request(
                    "PKCE (code_challenge with S256) is required for public clients",
                ))
            }
            (Some("plain"), _) => {
                return fail(OAuthError::invalid_request(
                    "code_challenge_method plain is not allowed; use S256",
                ))
            }
            _ => {
                return fail(OAuthError::invalid_request(
                    "code_challenge must be a S256 challenge with code_challenge_method=S256",
                ))
            }
        }
        // RFC 9449 §10: a JWK SHA-256 thumbprint, 32 bytes in base64url.
        let dpop_jkt = get("dpop_jkt");
        if dpop_jkt.as_ref().is_some_and(|j| {
            URL_SAFE_NO_PAD
                .decode(j)
                .map_or(true, |bytes| bytes.len() != 32)
        }) {
            return fail(OAuthError::invalid_request(
                "dpop_jkt must be a JWK SHA-256 thumbprint (base64url)",
            ));
        }
        let max_age = match get("max_age") {
            Some(m) => match m.parse::<i64>() {
                Ok(v) if v >= 0 => Some(v),
                _ => {
                    return fail(OAuthError::invalid_request(
                        "max_age must be a non-negative integer",
                    ))
                }
            },
            None => None,
        };
        let prompt = get("prompt");
        if let Some(p) = &prompt {
            if !p
                .split(' ')
                .all(|x| matches!(x, "none" | "login" | "consent"))
            {
                return fail(OAuthError::invalid_request(
                    "prompt may be none, login or consent",
                ));
            }
        }
        Ok(Ok((
            AuthorizationRequest {
                client_id,
                redirect_uri,
                scope,
                state,
                nonce: get("nonce"),
                code_challenge,
                max_age,
                prompt,
                acr_values: get("acr_values"),
                expires_at: None,
                dpop_jkt,
            },
            client,
        )))
    }

    /// Whether a person of `organization_id` may use a client of `client_org`: a client serves
    /// its own organization's people, and the platform's clients (the portal, the CLI) serve
    /// everyone.
    pub async fn may_use_client(
        &self,
        user_id: &str,
        client_org: &str,
    ) -> Result<bool, CommandError> {
        if client_org == PLATFORM_TENANT {
            return Ok(true);
        }
        let (user, _) = self.bus.load::<User>(user_id).await?;
        Ok(user.memberships.contains_key(client_org))
    }

    /// Issues an authorization code for a signed-in user who consented.
    pub async fn issue_code(
        &self,
        ctx: &CommandContext,
        req: &AuthorizationRequest,
        session: &LiveSession,
        request: RequestInfo,
    ) -> Result<String, CommandError> {
        let grant_id = uuid::Uuid::now_v7().to_string();
        let code = bearer(&grant_id);
        let issued = AuthorizationCodeIssued {
            client_id: req.client_id.clone(),
            user_id: session.user_id.clone(),
            organization_id: session.organization_id.clone(),
            session_id: session.id.clone(),
            scope: req.scope.clone(),
            redirect_uri: req.redirect_uri.clone(),
            code_challenge: req.code_challenge.clone(),
            nonce: req.nonce.clone(),
            auth_time: session.auth_time,
            amr: session.amr.clone(),
            code_sha256: digest(&code),
            expires_at: ctx.occurred_at + Duration::seconds(CODE_SECONDS),
            request,
            dpop_jkt: req.dpop_jkt.clone(),
        };
        let ctx = CommandContext {
            tenant_id: session.organization_id.clone(),
            ..ctx.clone()
        };
        self.bus
            .repository()
            .index_grant("session", &session.id, &grant_id)
            .await
            .map_err(storage)?;
        self.execute_grant(&ctx, &grant_id, GrantCommand::IssueCode(issued), None, &())
            .await?;
        Ok(code)
    }

    /// Runs a redeeming command, mapping the domain's refusal to the OAuth error and revoking
    /// the grant on reuse.
    async fn run_grant(
        &self,
        ctx: &CommandContext,
        grant_id: &str,
        command: GrantCommand,
        request: &RequestInfo,
    ) -> Result<Grant, OAuthError> {
        let (mut grant, version) = self.bus.load::<Grant>(grant_id).await?;
        let tenant = if grant.organization_id.is_empty() {
            PLATFORM_TENANT.to_owned()
        } else {
            grant.organization_id.clone()
        };
        let ctx = CommandContext {
            tenant_id: tenant,
            ..ctx.clone()
        };
        // Decide first on the loaded state to learn the precise refusal; the sink applies the
        // accepted events to `grant`, which is then the state the commit below produces.
        let sink = cqrs_es::event_sink::EventSink::default();
        if let Err(e) = cqrs_es::Aggregate::handle(&mut grant, command.clone(), &(), &sink).await {
            if matches!(e, GrantError::CodeReused | GrantError::RefreshReused) {
                let revoke = GrantCommand::Revoke {
                    reason: if e == GrantError::CodeReused {
                        RevocationReason::CodeReuse
                    } else {
                        RevocationReason::RefreshTokenReuse
                    },
                    request: request.clone(),
                };
                self.execute_grant(&ctx, grant_id, revoke, None, &())
                    .await?;
            }
            return Err(grant_error(&e));
        }
        match self
            .execute_grant(&ctx, grant_id, command, Some(version), &())
            .await
        {
            Ok(_) => Ok(grant),
            // Changed between the decision and the commit: someone redeemed it concurrently.
            Err(CommandError::Rejected(_) | CommandError::Concurrency(_)) => {
                Err(OAuthError::invalid_grant("the grant was used concurrently"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Commits a redeeming grant command and mints tokens for what the grant now holds: its
    /// subject's current roles, and the scope those still allow.
    #[allow(clippy::too_many_arguments)]
    async fn redeem_and_mint(
        &self,
        ctx: &CommandContext,
        grant_id: &str,
        command: GrantCommand,
        request: &RequestInfo,
        client: &ClientRegistered,
        jti: &str,
        refresh: Option<String>,
        dpop_jkt: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let grant = self.run_grant(ctx, grant_id, command, request).await?;
        let grant_type = grant.grant_type.unwrap_or(GrantType::AuthorizationCode);
        let roles = self
            .subject_roles(grant_type, &grant.subject, &grant.organization_id, client)
            .await?;
        let scope = Self::effective_scope(&grant.scope, client, &roles);
        self.mint(
            grant_id,
            &grant,
            &scope,
            roles,
            jti,
            ctx.occurred_at,
            refresh,
            dpop_jkt,
        )
        .await
    }

    /// authorization_code (RFC 6749 §4.1.3 with PKCE, RFC 7636).
    #[allow(clippy::too_many_arguments)]
    pub async fn token_authorization_code(
        &self,
        ctx: &CommandContext,
        client_id: &str,
        client: &ClientRegistered,
        code: &str,
        redirect_uri: Option<String>,
        code_verifier: Option<String>,
        request: RequestInfo,
        dpop_jkt: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.grant_types.contains(&GrantType::AuthorizationCode) {
            return Err(OAuthError::unauthorized_client(
                "this client may not use authorization_code",
            ));
        }
        let grant_id = id_of(code)
            .ok_or_else(|| OAuthError::invalid_grant("the code is invalid"))?
            .to_owned();
        // RFC 9449 §10: a code bound to a DPoP key is redeemed only with a proof by that key
        // (checked before the code is spent, so a thief cannot burn it).
        let (grant, _) = self.bus.load::<Grant>(&grant_id).await?;
        if let Some(bound) = grant.code.as_ref().and_then(|c| c.dpop_jkt.as_deref()) {
            if dpop_jkt != Some(bound) {
                return Err(OAuthError::new(
                    "invalid_dpop_proof",
                    "the code is bound to another DPoP key",
                ));
            }
        }
        let now = ctx.occurred_at;
        let with_refresh = client.grant_types.contains(&GrantType::RefreshToken);
        let (tokens, jti, refresh) = Self::new_tokens(
            &grant_id,
            now,
            with_refresh,
            public_binding(client, dpop_jkt),
        );
        let command = GrantCommand::RedeemCode {
            code_sha256: digest(code),
            client_id: client_id.to_owned(),
            redirect_uri,
            code_verifier,
            now,
            tokens,
            request: request.clone(),
        };
        self.redeem_and_mint(
            ctx, &grant_id, command, &request, client, &jti, refresh, dpop_jkt,
        )
        .await
    }

    /// refresh_token (RFC 6749 §6) with rotation: each refresh token works once; presenting
    /// a spent one revokes the grant (RFC 9700 §4.14.2).
    #[allow(clippy::too_many_arguments)]
    pub async fn token_refresh(
        &self,
        ctx: &CommandContext,
        client_id: &str,
        client: &ClientRegistered,
        refresh_token: &str,
        scope: Option<BTreeSet<String>>,
        request: RequestInfo,
        dpop_jkt: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.grant_types.contains(&GrantType::RefreshToken) {
            return Err(OAuthError::unauthorized_client(
                "this client may not use refresh_token",
            ));
        }
        let grant_id = id_of(refresh_token)
            .ok_or_else(|| OAuthError::invalid_grant("the refresh token is invalid"))?
            .to_owned();
        let now = ctx.occurred_at;
        // A rule added since the sign-in applies to refreshes too: a session too weak for it
        // must sign in again (the refresh token is not spent by the refusal).
        let (grant, _) = self.bus.load::<Grant>(&grant_id).await?;
        // RFC 9449 §5: a public client's bound refresh token needs a proof by the same key
        // (a stolen refresh token is useless without the private key). Checked before the
        // token is spent, so a refusal does not cost the rightful holder their grant.
        if let Some(bound) = &grant.refresh_jkt {
            if dpop_jkt != Some(bound.as_str()) {
                return Err(OAuthError::new(
                    "invalid_dpop_proof",
                    "the refresh token is bound to another DPoP key",
                ));
            }
        }
        if !grant.subject.is_empty() && grant.grant_type != Some(GrantType::ClientCredentials) {
            let (user, _) = self.bus.load::<User>(&grant.subject).await?;
            let strength = Strength::of_amr(&grant.amr);
            let requester = crate::access::Requester {
                organization_id: grant.organization_id.clone(),
                subject: grant.subject.clone(),
                is_person: true,
                roles: user.roles_in(&grant.organization_id),
                client_id: Some(client_id.to_owned()),
                ip: request.ip.clone(),
                strength,
                throttle_account: None,
            };
            let decision = self
                .access
                .decide(ctx, crate::access::Stage::Token, &requester)
                .await?;
            if !decision.satisfied_by(strength) {
                return Err(OAuthError::invalid_grant(format!(
                    "the organization's access policy needs a new sign-in: {}",
                    decision.reason
                )));
            }
        }
        let (tokens, jti, refresh) = Self::new_tokens(&grant_id, now, true, None);
        let command = GrantCommand::Refresh {
            refresh_sha256: digest(refresh_token),
            client_id: client_id.to_owned(),
            scope,
            now,
            tokens,
            request: request.clone(),
        };
        self.redeem_and_mint(
            ctx, &grant_id, command, &request, client, &jti, refresh, dpop_jkt,
        )
        .await
    }

    /// Device authorization (RFC 8628 §3.1–3.2).
    pub async fn start_device(
        &self,
        ctx: &CommandContext,
        client_id: &str,
        client: &ClientRegistered,
        scope: Option<BTreeSet<String>>,
        request: RequestInfo,
    ) -> Result<DeviceStart, OAuthError> {
        if !client.grant_types.contains(&GrantType::DeviceCode) {
            return Err(OAuthError::unauthorized_client(
                "this client may not use the device flow",
            ));
        }
        let scope = scope
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| client.scopes.clone());
        if let Some(s) = scope.iter().find(|s| !client.scopes.contains(*s)) {
            return Err(OAuthError::invalid_scope(format!(
                "this client may not ask for {s}"
            )));
        }
        let now = ctx.occurred_at;
        let grant_id = uuid::Uuid::now_v7().to_string();
        let device_code = bearer(&grant_id);
        let code = user_code();
        let code_sha = digest(&normalize_user_code(&code));
        self.bus
            .repository()
            .index_grant("user_code", &code_sha, &grant_id)
            .await
            .map_err(storage)?;
        let started = DeviceAuthorizationStarted {
            client_id: client_id.to_owned(),
            scope,
            device_code_sha256: digest(&device_code),
            user_code_sha256: code_sha,
            expires_at: now + Duration::seconds(DEVICE_CODE_SECONDS),
            interval_seconds: DEVICE_POLL_SECONDS,
            request,
        };
        let ctx = CommandContext {
            tenant_id: client.organization_id.clone(),
            ..ctx.clone()
        };
        self.execute_grant(
            &ctx,
            &grant_id,
            GrantCommand::StartDevice(started),
            None,
            &(),
        )
        .await?;
        let verification_uri = format!("{}/device", self.issuer);
        Ok(DeviceStart {
            verification_uri_complete: format!("{verification_uri}?user_code={code}"),
            verification_uri,
            device_code,
            user_code: code,
            expires_in: DEVICE_CODE_SECONDS,
            interval: DEVICE_POLL_SECONDS,
        })
    }

    /// The pending device grant a user code names, with the client's name and scope.
    pub async fn device_by_user_code(
        &self,
        user_code: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, Grant)>, CommandError> {
        let sha = digest(&normalize_user_code(user_code));
        let Some(grant_id) = self
            .bus
            .repository()
            .indexed_grants("user_code", &sha)
            .await
            .map_err(storage)?
            .pop()
        else {
            return Ok(None);
        };
        let (grant, _) = self.bus.load::<Grant>(&grant_id).await?;
        let pending = grant.status == GrantStatus::DevicePending
            && grant.device.as_ref().is_some_and(|d| now < d.expires_at);
        Ok(pending.then_some((grant_id, grant)))
    }

    pub async fn decide_device(
        &self,
        ctx: &CommandContext,
        grant_id: &str,
        session: &LiveSession,
        approve: bool,
        request: RequestInfo,
    ) -> Result<(), CommandError> {
        let now = ctx.occurred_at;
        let command = if approve {
            GrantCommand::ApproveDevice {
                user_id: session.user_id.clone(),
                organization_id: session.organization_id.clone(),
                auth_time: session.auth_time,
                amr: session.amr.clone(),
                now,
                request,
            }
        } else {
            GrantCommand::DenyDevice {
                user_id: session.user_id.clone(),
                now,
                request,
            }
        };
        self.execute_grant(ctx, grant_id, command, None, &())
            .await?;
        Ok(())
    }

    /// device_code grant (RFC 8628 §3.4–3.5), with `slow_down` for clients that poll faster
    /// than the interval.
    pub async fn token_device(
        &self,
        ctx: &CommandContext,
        client_id: &str,
        client: &ClientRegistered,
        device_code: &str,
        request: RequestInfo,
        dpop_jkt: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.grant_types.contains(&GrantType::DeviceCode) {
            return Err(OAuthError::unauthorized_client(
                "this client may not use the device flow",
            ));
        }
        let grant_id = id_of(device_code)
            .ok_or_else(|| OAuthError::invalid_grant("the device code is invalid"))?
            .to_owned();
        let now = ctx.occurred_at;
        {
            let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
            polls.retain(|_, at| now - *at < Duration::seconds(DEVICE_CODE_SECONDS));
            if let Some(last) = polls.insert(grant_id.clone(), now) {
                if now - last < Duration::seconds(i64::from(DEVICE_POLL_SECONDS)) {
                    return Err(OAuthError::new(
                        "slow_down",
                        "poll no faster than the interval",
                    ));
                }
            }
        }
        let with_refresh = client.grant_types.contains(&GrantType::RefreshToken);
        let (tokens, jti, refresh) = Self::new_tokens(
            &grant_id,
            now,
            with_refresh,
            public_binding(client, dpop_jkt),
        );
        let command = GrantCommand::RedeemDevice {
            device_code_sha256: digest(device_code),
            client_id: client_id.to_owned(),
            now,
            tokens,
            request: request.clone(),
        };
        self.redeem_and_mint(
            ctx, &grant_id, command, &request, client, &jti, refresh, dpop_jkt,
        )
        .await
    }

    /// Which grant a token belongs to, if it is one of ours and was issued to `client_id`.
    async fn grant_of_token(
        &self,
        token: &str,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, Grant)>, CommandError> {
        if token.matches('.').count() == 2 {
            // An access token: signature must verify; expiry does not matter for revocation.
            let Ok(claims) = self
                .verify_jwt(token, "at+jwt", &self.api_audience(), now, false)
                .await
            else {
                return Ok(None);
            };
            let gid = claims
                .get("gid")
                .and_then(|g| g.as_str())
                .unwrap_or_default()
                .to_owned();
            let (grant, _) = self.bus.load::<Grant>(&gid).await?;
            return Ok((grant.client_id == client_id).then_some((gid, grant)));
        }
        let Some(gid) = id_of(token) else {
            return Ok(None);
        };
        let (grant, _) = self.bus.load::<Grant>(gid).await?;
        let sha = digest(token);
        let ours = grant.refresh_sha256.as_deref() == Some(sha.as_str())
            || grant.spent_refresh.contains(&sha);
        Ok((ours && grant.client_id == client_id).then(|| (gid.to_owned(), grant)))
    }

    /// Token revocation (RFC 7009): revokes the whole grant. Unknown tokens are not an error.
    pub async fn revoke(
        &self,
        ctx: &CommandContext,
        client_id: &str,
        token: &str,
        request: RequestInfo,
    ) -> Result<(), OAuthError> {
        if let Some((gid, grant)) = self
            .grant_of_token(token, client_id, ctx.occurred_at)
            .await?
        {
            if grant.status != GrantStatus::Revoked {
                let ctx = CommandContext {
                    tenant_id: grant.organization_id.clone(),
                    ..ctx.clone()
                };
                let command = GrantCommand::Revoke {
                    reason: RevocationReason::ClientRequest,
                    request,
                };
                self.execute_grant(&ctx, &gid, command, None, &()).await?;
            }
        }
        Ok(())
    }

    /// Revokes every live grant of a session (RP-initiated logout).
    pub async fn revoke_session_grants(
        &self,
        ctx: &CommandContext,
        session_id: &str,
        request: RequestInfo,
    ) -> Result<(), CommandError> {
        for gid in self
            .bus
            .repository()
            .indexed_grants("session", session_id)
            .await
            .map_err(storage)?
        {
            let (grant, _) = self.bus.load::<Grant>(&gid).await?;
            if matches!(grant.status, GrantStatus::Active | GrantStatus::CodeIssued) {
                let ctx = CommandContext {
                    tenant_id: grant.organization_id.clone(),
                    ..ctx.clone()
                };
                let command = GrantCommand::Revoke {
                    reason: RevocationReason::Logout,
                    request: request.clone(),
                };
                self.execute_grant(&ctx, &gid, command, None, &()).await?;
            }
        }
        Ok(())
    }

    /// Token introspection (RFC 7662). A caller learns about tokens of its own organization
    /// only (the platform's callers about all); anything else is `active: false`.
    pub async fn introspect(
        &self,
        caller: &ClientRegistered,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Introspection, OAuthError> {
        let inactive = Introspection::default();
        let visible =
            |org: &str| caller.organization_id == PLATFORM_TENANT || caller.organization_id == org;
        if token.matches('.').count() == 2 {
            return Ok(match self.verify_access_token(token, now).await {
                Ok(c) if visible(&c.org) => {
                    let mut v = serde_json::to_value(&c)
                        .map_err(|e| OAuthError::server_error(e.to_string()))?;
                    v["token_type"] = if c.cnf.is_some() { "DPoP" } else { "Bearer" }.into();
                    Introspection {
                        active: true,
                        claims: Some(v),
                    }
                }
                _ => inactive,
            });
        }
        let Some(gid) = id_of(token) else {
            return Ok(inactive);
        };
        let (grant, _) = self.bus.load_recent::<Grant>(gid).await?;
        let current = grant
            .refresh_sha256
            .as_deref()
            .is_some_and(|s| secret_matches(token, s));
        let live = grant.status == GrantStatus::Active
            && grant.refresh_expires_at.is_some_and(|at| now < at);
        if !(current && live && visible(&grant.organization_id)) {
            return Ok(inactive);
        }
        let mut claims = serde_json::json!({
                "token_type": "refresh_token",
                "client_id": grant.client_id,
                "sub": grant.subject,
                "org": grant.organization_id,
                "scope": quantus_domain::identity::scope_string(&grant.scope),
                "exp": grant.refresh_expires_at.map(|t| t.timestamp()),
                "iss": self.issuer,
        });
        if let Some(jkt) = &grant.refresh_jkt {
            claims["cnf"] = serde_json::json!({ "jkt": jkt });
        }
        Ok(Introspection {
            active: true,
            claims: Some(claims),
        })
    }

    /// OIDC UserInfo (OIDC Core §5.3) for a verified access token with `openid`.
    pub async fn userinfo(&self, claims: &AccessClaims) -> Result<serde_json::Value, CommandError> {
        let profile = self.user_profile(&claims.sub).await?;
        let scopes = claims.scopes();
        let mut out = serde_json::json!({ "sub": claims.sub, "org": profile.organization_id });
        if scopes.contains("email") {
            out["email"] = profile.email.clone().into();
            out["email_verified"] = false.into();
        }
        if scopes.contains("profile") {
            out["name"] = profile.name.clone().into();
        }
        Ok(out)
    }

    /// Sealing for pushed authorization requests: their parameters travel inside the
    /// `request_uri`, encrypted and authenticated under a key derived from the master key, so
    /// no storage is needed and nobody can forge or read one.
    pub fn par_uri(
        &self,
        req: &AuthorizationRequest,
        now: DateTime<Utc>,
    ) -> Result<String, CommandError> {
        let mut req = req.clone();
        req.expires_at = Some(now.timestamp() + PAR_SECONDS);
        let plain = serde_json::to_vec(&req).map_err(storage)?;
        let sealed = self.keys.seal_blob("par", &plain).map_err(storage)?;
        Ok(format!("urn:ietf:params:oauth:request_uri:{sealed}"))
    }

    pub fn open_par_uri(
        &self,
        uri: &str,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<AuthorizationRequest, OAuthError> {
        let bad = || OAuthError::invalid_request("request_uri is invalid or expired");
        let sealed = uri
            .strip_prefix("urn:ietf:params:oauth:request_uri:")
            .ok_or_else(bad)?;
        let plain = self.keys.open_blob("par", sealed).map_err(|_| bad())?;
        let req: AuthorizationRequest = serde_json::from_slice(&plain).map_err(|_| bad())?;
        if req.client_id != client_id || req.expires_at.is_none_or(|e| now.timestamp() >= e) {
            return Err(bad());
        }
        Ok(req)
    }
}
