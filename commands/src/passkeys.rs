//! Passkeys (WebAuthn Level 2/3) with webauthn-rs: registration, passkey-only sign-in with
//! discoverable credentials, and passkeys as a second factor. User verification is required;
//! attestation `none` and `packed` (self or CA-less) are accepted; the signature counter must
//! grow. Ceremony state travels sealed and is used once (claimed in the store), as webauthn-rs
//! asks: a captured response cannot be replayed against a new ceremony or the same one twice.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use quantus_domain::identity::passkey::{
    PasskeyCommand, PasskeyCredentials, PasskeyError, PasskeyRegistered, PasskeyUsed,
};
use quantus_domain::CommandContext;
use quantus_infra::subject_keys::SubjectKeys;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::*;

use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

impl ClassifyError for PasskeyError {
    fn classify(&self) -> CommandError {
        match self {
            PasskeyError::Invalid(d) => CommandError::Invalid(d.clone()),
            PasskeyError::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

/// How long a person has to answer a ceremony.
pub const CEREMONY_SECONDS: i64 = 300;
const CREDENTIAL_FIELD: &str = "passkey";
/// Index kinds: ceremonies already finished; credential ids already registered.
const CEREMONIES: &str = "webauthn-ceremony";
const CREDENTIALS: &str = "passkey-credential";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Register,
    SignIn,
    SecondFactor,
}

/// A ceremony's server state, sealed while the browser holds it.
#[derive(Serialize, Deserialize)]
struct Ceremony {
    id: String,
    kind: Kind,
    user_id: Option<String>,
    state: serde_json::Value,
    expires_at: DateTime<Utc>,
}

/// Why a passkey was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasskeyRefusal {
    /// The ceremony expired, was used already, or belongs to something else.
    Ceremony,
    /// The credential is unknown or its signature, origin or flags are wrong.
    Invalid(String),
    /// The counter did not grow (a cloned authenticator?).
    Cloned,
}

#[derive(Clone)]
pub struct Passkeys {
    bus: CommandBus,
    keys: SubjectKeys,
    webauthn: Option<Arc<Webauthn>>,
    /// Why passkeys are off, when they are.
    off: String,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

impl Passkeys {
    /// Passkeys for the relying party at `issuer` (its host is the RP id). Browsers accept
    /// WebAuthn on https origins and on http://localhost only.
    pub fn new(bus: CommandBus, keys: SubjectKeys, issuer: &str) -> Self {
        let built = Url::parse(issuer)
            .map_err(|e| e.to_string())
            .and_then(|origin| {
                let host = origin.host_str().unwrap_or_default().to_owned();
                if host.parse::<std::net::IpAddr>().is_ok() {
                    return Err(format!(
                        "the public URL's host {host} is an IP address; WebAuthn needs a domain name (or localhost)"
                    ));
                }
                WebauthnBuilder::new(&host, &origin)
                    .and_then(|b| b.rp_name("Quantus").build())
                    .map_err(|e| e.to_string())
            });
        match built {
            Ok(w) => Self {
                bus,
                keys,
                webauthn: Some(Arc::new(w)),
                off: String::new(),
            },
            Err(off) => Self {
                bus,
                keys,
                webauthn: None,
                off,
            },
        }
    }

    fn webauthn(&self) -> Result<&Webauthn, CommandError> {
        self.webauthn
            .as_deref()
            .ok_or_else(|| CommandError::Rejected(format!("passkeys are off: {}", self.off)))
    }

    pub async fn credentials(&self, user_id: &str) -> Result<PasskeyCredentials, CommandError> {
        Ok(self.bus.load::<PasskeyCredentials>(user_id).await?.0)
    }

    async fn passkeys_of(&self, user_id: &str) -> Result<Vec<(String, Passkey)>, CommandError> {
        let mut out = vec![];
        for (id, stored) in self.credentials(user_id).await?.passkeys {
            let Some(json) = self
                .keys
                .open_text(&stored.credential, CREDENTIAL_FIELD)
                .await
                .map_err(storage)?
            else {
                continue; // erased
            };
            out.push((id, serde_json::from_str(&json).map_err(storage)?));
        }
        Ok(out)
    }

    fn seal(&self, c: &Ceremony) -> Result<String, CommandError> {
        let b = serde_json::to_vec(c).map_err(storage)?;
        self.keys.seal_blob("webauthn", &b).map_err(storage)
    }

    /// Opens a ceremony of `kind` and claims it (single use).
    async fn open(
        &self,
        sealed: &str,
        kind: Kind,
        now: DateTime<Utc>,
    ) -> Result<Option<Ceremony>, CommandError> {
        let Some(c) = self
            .keys
            .open_blob("webauthn", sealed)
            .ok()
            .and_then(|b| serde_json::from_slice::<Ceremony>(&b).ok())
        else {
            return Ok(None);
        };
        if c.kind != kind || now >= c.expires_at {
            return Ok(None);
        }
        if !self.bus.repository().claim_once(CEREMONIES, &c.id).await? {
            return Ok(None);
        }
        Ok(Some(c))
    }

    fn ceremony(
        kind: Kind,
        user_id: Option<&str>,
        state: impl Serialize,
        now: DateTime<Utc>,
    ) -> Result<Ceremony, CommandError> {
        Ok(Ceremony {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            user_id: user_id.map(str::to_owned),
            state: serde_json::to_value(state).map_err(storage)?,
            expires_at: now + Duration::seconds(CEREMONY_SECONDS),
        })
    }

    /// Options for `navigator.credentials.create()`, and the sealed ceremony.
    pub async fn registration_options(
        &self,
        user_id: &str,
        user_name: &str,
        display_name: &str,
        now: DateTime<Utc>,
    ) -> Result<(serde_json::Value, String), CommandError> {
        let w = self.webauthn()?;
        let user = Uuid::parse_str(user_id).map_err(storage)?;
        let existing: Vec<CredentialID> = self
            .passkeys_of(user_id)
            .await?
            .into_iter()
            .map(|(_, p)| p.cred_id().clone())
            .collect();
        let (options, state) = w
            .start_passkey_registration(user, user_name, display_name, Some(existing))
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        let mut options = serde_json::to_value(options).map_err(storage)?;
        // Ask for a discoverable credential where the authenticator can keep one, so that the
        // person can later sign in with the passkey alone.
        if let Some(sel) = options.pointer_mut("/publicKey/authenticatorSelection") {
            sel["residentKey"] = "preferred".into();
        }
        let sealed = self.seal(&Self::ceremony(Kind::Register, Some(user_id), state, now)?)?;
        Ok((options, sealed))
    }

    /// Verifies the authenticator's answer and records the passkey.
    pub async fn register(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        ceremony: &str,
        credential: serde_json::Value,
        name: &str,
    ) -> Result<(String, CommandOutcome), CommandError> {
        let w = self.webauthn()?;
        let c = self
            .open(ceremony, Kind::Register, ctx.occurred_at)
            .await?
            .filter(|c| c.user_id.as_deref() == Some(user_id))
            .ok_or_else(|| {
                CommandError::Invalid("the registration expired or was already used".into())
            })?;
        let state: PasskeyRegistration = serde_json::from_value(c.state).map_err(storage)?;
        let reg: RegisterPublicKeyCredential = serde_json::from_value(credential)
            .map_err(|e| CommandError::Invalid(format!("credential: {e}")))?;
        let passkey = w
            .finish_passkey_registration(&reg, &state)
            .map_err(|e| CommandError::Invalid(format!("the passkey was not accepted: {e}")))?;
        let id = b64(passkey.cred_id().as_ref());
        // A credential belongs to one account (WebAuthn §7.1 step 22).
        if !self.bus.repository().claim_once(CREDENTIALS, &id).await? {
            return Err(CommandError::Rejected(
                "this passkey is already registered".into(),
            ));
        }
        let json = serde_json::to_value(&passkey).map_err(storage)?;
        let format = json
            .pointer("/cred/attestation_format")
            .and_then(|v| v.as_str())
            .unwrap_or("none")
            .to_ascii_lowercase();
        let counter = json
            .pointer("/cred/counter")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        let sealed = self
            .keys
            .seal(user_id, CREDENTIAL_FIELD, json.to_string().as_bytes())
            .await
            .map_err(storage)?;
        let outcome = self
            .bus
            .execute::<PasskeyCredentials>(
                ctx,
                user_id,
                PasskeyCommand::Register(PasskeyRegistered {
                    credential_id: id.clone(),
                    name: name.to_owned(),
                    credential: sealed,
                    attestation_format: format,
                    counter,
                }),
                None,
                &(),
            )
            .await?;
        Ok((id, outcome))
    }

    pub async fn remove(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        credential_id: &str,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<PasskeyCredentials>(
                ctx,
                user_id,
                PasskeyCommand::Remove {
                    credential_id: credential_id.to_owned(),
                },
                None,
                &(),
            )
            .await
    }

    /// Options for a passkey-only sign-in (discoverable credentials: no user name first).
    pub fn sign_in_options(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(serde_json::Value, String), CommandError> {
        let w = self.webauthn()?;
        let (options, state) = w
            .start_discoverable_authentication()
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        let mut options = serde_json::to_value(options).map_err(storage)?;
        // A button starts it, not autofill.
        if let Some(o) = options.as_object_mut() {
            o.remove("mediation");
        }
        let sealed = self.seal(&Self::ceremony(Kind::SignIn, None, state, now)?)?;
        Ok((options, sealed))
    }

    /// Options for a passkey as the second factor of `user_id`.
    pub async fn second_factor_options(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(serde_json::Value, String), CommandError> {
        let w = self.webauthn()?;
        let passkeys: Vec<Passkey> = self
            .passkeys_of(user_id)
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        if passkeys.is_empty() {
            return Err(CommandError::NotFound("no passkey is registered".into()));
        }
        let (options, state) = w
            .start_passkey_authentication(&passkeys)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        let options = serde_json::to_value(options).map_err(storage)?;
        let sealed = self.seal(&Self::ceremony(
            Kind::SecondFactor,
            Some(user_id),
            state,
            now,
        )?)?;
        Ok((options, sealed))
    }

    /// Whether the person has any passkey.
    pub async fn has_passkeys(&self, user_id: &str) -> Result<bool, CommandError> {
        Ok(!self.credentials(user_id).await?.passkeys.is_empty())
    }

    /// Records the use (new counter) after a verified assertion.
    async fn record_use(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        mut passkey: Passkey,
        result: &AuthenticationResult,
    ) -> Result<Result<(), PasskeyRefusal>, CommandError> {
        passkey.update_credential(result);
        let json = serde_json::to_value(&passkey).map_err(storage)?;
        let sealed = self
            .keys
            .seal(user_id, CREDENTIAL_FIELD, json.to_string().as_bytes())
            .await
            .map_err(storage)?;
        let used = PasskeyUsed {
            credential_id: b64(result.cred_id().as_ref()),
            counter: result.counter(),
            credential: sealed,
        };
        match self
            .bus
            .execute::<PasskeyCredentials>(ctx, user_id, PasskeyCommand::Use(used), None, &())
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(CommandError::Rejected(_)) | Err(CommandError::Concurrency(_)) => {
                Ok(Err(PasskeyRefusal::Cloned))
            }
            Err(e) => Err(e),
        }
    }

    /// A passkey-only sign-in: answers the person it proves.
    pub async fn verify_sign_in(
        &self,
        ctx: &CommandContext,
        ceremony: &str,
        credential: serde_json::Value,
    ) -> Result<Result<String, PasskeyRefusal>, CommandError> {
        let w = self.webauthn()?;
        let Some(c) = self.open(ceremony, Kind::SignIn, ctx.occurred_at).await? else {
            return Ok(Err(PasskeyRefusal::Ceremony));
        };
        let state: DiscoverableAuthentication = serde_json::from_value(c.state).map_err(storage)?;
        let Ok(response) = serde_json::from_value::<PublicKeyCredential>(credential) else {
            return Ok(Err(PasskeyRefusal::Invalid("malformed credential".into())));
        };
        let (user, cred_id) = match w.identify_discoverable_authentication(&response) {
            Ok((u, id)) => (u.to_string(), b64(id)),
            Err(e) => return Ok(Err(PasskeyRefusal::Invalid(e.to_string()))),
        };
        let Some((_, passkey)) = self
            .passkeys_of(&user)
            .await?
            .into_iter()
            .find(|(id, _)| *id == cred_id)
        else {
            return Ok(Err(PasskeyRefusal::Invalid("unknown passkey".into())));
        };
        let result = match w.finish_discoverable_authentication(
            &response,
            state,
            &[DiscoverableKey::from(&passkey)],
        ) {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                return Ok(Err(PasskeyRefusal::Cloned))
            }
            Err(e) => return Ok(Err(PasskeyRefusal::Invalid(e.to_string()))),
        };
        if !result.user_verified() {
            return Ok(Err(PasskeyRefusal::Invalid(
                "user verification is required".into(),
            )));
        }
        Ok(self
            .record_use(ctx, &user, passkey, &result)
            .await?
            .map(|()| user))
    }

    /// A passkey as the second factor of `user_id`.
    pub async fn verify_second_factor(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        ceremony: &str,
        credential: serde_json::Value,
    ) -> Result<Result<(), PasskeyRefusal>, CommandError> {
        let w = self.webauthn()?;
        let Some(c) = self
            .open(ceremony, Kind::SecondFactor, ctx.occurred_at)
            .await?
            .filter(|c| c.user_id.as_deref() == Some(user_id))
        else {
            return Ok(Err(PasskeyRefusal::Ceremony));
        };
        let state: PasskeyAuthentication = serde_json::from_value(c.state).map_err(storage)?;
        let Ok(response) = serde_json::from_value::<PublicKeyCredential>(credential) else {
            return Ok(Err(PasskeyRefusal::Invalid("malformed credential".into())));
        };
        let result = match w.finish_passkey_authentication(&response, &state) {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                return Ok(Err(PasskeyRefusal::Cloned))
            }
            Err(e) => return Ok(Err(PasskeyRefusal::Invalid(e.to_string()))),
        };
        let id = b64(result.cred_id().as_ref());
        let Some((_, passkey)) = self
            .passkeys_of(user_id)
            .await?
            .into_iter()
            .find(|(i, _)| *i == id)
        else {
            return Ok(Err(PasskeyRefusal::Invalid("unknown passkey".into())));
        };
        self.record_use(ctx, user_id, passkey, &result).await
    }
}
