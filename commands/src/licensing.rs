//! QuantumLock's application service: keys, the crypto policy, licences, and signing.
//!
//! Private keys stay in the [`Keystore`]; the keyring aggregates hold public halves and the
//! lifecycle. Every signature goes through [`Licensing::sign`], which signs only with the
//! purpose's active key and only with an algorithm the policy lets sign.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use quantus_crypto::document::SignedDocument;
use quantus_crypto::keys::{Purpose, TrustedKeys};
use quantus_crypto::license::{License as LicenseFile, LICENSE_FORMAT};
use quantus_crypto::Algorithm;
use quantus_domain::licensing::crypto_policy::{CryptoPolicy, CryptoPolicyCommand, POLICY_ID};
use quantus_domain::licensing::keyring::{Keyring, KeyringCommand};
use quantus_domain::licensing::license::{License, LicenseCommand, LicenseStatus};
use quantus_domain::CommandContext;
use quantus_infra::keystore::{generate, Keystore};

use crate::{CommandBus, CommandError, CommandOutcome};

/// The default algorithm roadmap on a new platform: the composite signs; pure ML-DSA may
/// verify (for a future migration); Ed25519 alone verifies nothing.
pub const DEFAULT_RULES: [(Algorithm, bool, bool); 3] = [
    (Algorithm::MlDsa65Ed25519, true, true),
    (Algorithm::MlDsa87, false, true),
    (Algorithm::MlDsa65, false, true),
];

#[derive(Clone)]
pub struct Licensing {
    bus: CommandBus,
    keystore: Arc<dyn Keystore>,
    issuer: String,
}

/// A detached signature made by the signing service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub kid: String,
    pub alg: Algorithm,
    pub bytes: Vec<u8>,
}

fn keyring_id(purpose: Purpose) -> String {
    format!("keyring-{}", purpose.name())
}

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

impl Licensing {
    pub fn new(bus: CommandBus, keystore: Arc<dyn Keystore>, issuer: impl Into<String>) -> Self {
        Self {
            bus,
            keystore,
            issuer: issuer.into(),
        }
    }

    pub fn bus(&self) -> &CommandBus {
        &self.bus
    }

    /// The public base URL named as issuer in signed documents.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// On a new platform: the default crypto policy, and an active key for every purpose.
    /// Idempotent: it only fills what is missing.
    pub async fn bootstrap(&self, ctx: &CommandContext) -> Result<(), CommandError> {
        let (policy, _) = self.policy().await?;
        if policy.rules.is_empty() {
            for (algorithm, may_sign, may_verify) in DEFAULT_RULES {
                let command = CryptoPolicyCommand::SetRule {
                    algorithm,
                    may_sign,
                    may_verify,
                    verify_until: None,
                };
                self.bus
                    .execute::<CryptoPolicy>(ctx, POLICY_ID, command, None, &())
                    .await?;
            }
        }
        let (policy, _) = self.policy().await?;
        if !policy.purpose_signers.contains_key(&Purpose::Token) {
            let command = CryptoPolicyCommand::SetPurposeSigner {
                purpose: Purpose::Token,
                algorithm: Algorithm::Ed25519,
            };
            self.bus
                .execute::<CryptoPolicy>(ctx, POLICY_ID, command, None, &())
                .await?;
        }
        let (policy, _) = self.policy().await?;
        for purpose in Purpose::ALL {
            let ring = self.keyring(purpose).await?;
            let signs = ring
                .active
                .as_ref()
                .is_some_and(|kid| policy.may_sign_for(purpose, ring.keys[kid].algorithm));
            if !signs {
                self.rotate(ctx, purpose).await?;
            }
        }
        Ok(())
    }

    pub async fn policy(&self) -> Result<(CryptoPolicy, u64), CommandError> {
        self.bus.load::<CryptoPolicy>(POLICY_ID).await
    }

    pub async fn set_rule(
        &self,
        ctx: &CommandContext,
        algorithm: Algorithm,
        may_sign: bool,
        may_verify: bool,
        verify_until: Option<DateTime<Utc>>,
    ) -> Result<CommandOutcome, CommandError> {
        let command = CryptoPolicyCommand::SetRule {
            algorithm,
            may_sign,
            may_verify,
            verify_until,
        };
        self.bus
            .execute::<CryptoPolicy>(ctx, POLICY_ID, command, None, &())
            .await
    }

    pub async fn keyring(&self, purpose: Purpose) -> Result<Keyring, CommandError> {
        Ok(self.bus.load::<Keyring>(&keyring_id(purpose)).await?.0)
    }

    /// A keyring as of at most the log follower's staleness bound ago (for verifying, where a
    /// key marked compromised is refused within that bound; see `CommandBus::load_recent`).
    pub async fn keyring_recent(&self, purpose: Purpose) -> Result<Keyring, CommandError> {
        Ok(self
            .bus
            .load_recent::<Keyring>(&keyring_id(purpose))
            .await?
            .0)
    }

    /// The published key set: every key of every purpose, and the policy.
    pub async fn key_set(&self) -> Result<TrustedKeys, CommandError> {
        let mut keys = vec![];
        for purpose in Purpose::ALL {
            keys.extend(self.keyring(purpose).await?.trusted_keys());
        }
        Ok(TrustedKeys {
            keys,
            policy: self.policy().await?.0.published(),
        })
    }

    /// Which keyring holds `kid`.
    pub async fn purpose_of(&self, kid: &str) -> Result<Purpose, CommandError> {
        for purpose in Purpose::ALL {
            if self.keyring(purpose).await?.keys.contains_key(kid) {
                return Ok(purpose);
            }
        }
        Err(CommandError::NotFound(format!("no key {kid}")))
    }

    /// Generates a key with the policy's preferred signing algorithm, seals it, records its
    /// public half and makes it sign; the previous key keeps verifying.
    pub async fn rotate(
        &self,
        ctx: &CommandContext,
        purpose: Purpose,
    ) -> Result<(String, Algorithm, CommandOutcome), CommandError> {
        let (policy, _) = self.policy().await?;
        let algorithm = policy.signer_for(purpose).ok_or_else(|| {
            CommandError::Rejected("the crypto policy lets no algorithm sign".into())
        })?;
        // A fresh seed per key: composite halves are never shared with other keys.
        let key = generate(algorithm);
        let public = key.public_key();
        let kid = public.kid();
        self.keystore.seal(&kid, &key).map_err(storage)?;
        let id = keyring_id(purpose);
        let generate = KeyringCommand::Generate {
            purpose,
            kid: kid.clone(),
            algorithm,
            public_key: public.bytes,
            not_before: ctx.occurred_at,
        };
        self.bus
            .execute::<Keyring>(ctx, &id, generate, None, &())
            .await?;
        let outcome = self
            .bus
            .execute::<Keyring>(
                ctx,
                &id,
                KeyringCommand::Activate { kid: kid.clone() },
                None,
                &(),
            )
            .await?;
        Ok((kid, algorithm, outcome))
    }

    pub async fn retire(
        &self,
        ctx: &CommandContext,
        kid: &str,
        at: DateTime<Utc>,
    ) -> Result<CommandOutcome, CommandError> {
        let purpose = self.purpose_of(kid).await?;
        let command = KeyringCommand::Retire {
            kid: kid.to_owned(),
            at,
        };
        self.bus
            .execute::<Keyring>(ctx, &keyring_id(purpose), command, None, &())
            .await
    }

    /// Marks a key compromised; if it was signing, a new key takes over at once.
    pub async fn compromise(
        &self,
        ctx: &CommandContext,
        kid: &str,
        compromised_at: DateTime<Utc>,
        reason: String,
    ) -> Result<CommandOutcome, CommandError> {
        let purpose = self.purpose_of(kid).await?;
        let command = KeyringCommand::Compromise {
            kid: kid.to_owned(),
            compromised_at,
            reason,
        };
        let outcome = self
            .bus
            .execute::<Keyring>(ctx, &keyring_id(purpose), command, None, &())
            .await?;
        if self.keyring(purpose).await?.active.is_none() {
            return Ok(self.rotate(ctx, purpose).await?.2);
        }
        Ok(outcome)
    }

    /// Signs `message` under `context` with the purpose's active key.
    pub async fn sign(
        &self,
        purpose: Purpose,
        message: &[u8],
        context: &[u8],
    ) -> Result<Signature, CommandError> {
        let ring = self.keyring(purpose).await?;
        let kid = ring
            .active
            .clone()
            .ok_or_else(|| CommandError::Rejected(format!("no active {} key", purpose.name())))?;
        let alg = ring.keys[&kid].algorithm;
        if !self.policy().await?.0.may_sign_for(purpose, alg) {
            return Err(CommandError::Rejected(format!(
                "the crypto policy no longer lets {alg} sign: rotate the {} key",
                purpose.name()
            )));
        }
        let bytes = self
            .keystore
            .sign(&kid, alg, message, context)
            .map_err(storage)?;
        Ok(Signature { kid, alg, bytes })
    }

    /// Signs a JWS signing input with token key `kid` (JOSE EdDSA), if the policy lets it.
    pub async fn sign_jose(&self, kid: &str, input: &[u8]) -> Result<Vec<u8>, CommandError> {
        let ring = self.keyring(Purpose::Token).await?;
        let key = ring
            .keys
            .get(kid)
            .ok_or_else(|| CommandError::NotFound(format!("no token key {kid}")))?;
        if ring.active.as_deref() != Some(kid) {
            return Err(CommandError::Rejected(format!(
                "token key {kid} is not the active one"
            )));
        }
        if !self
            .policy()
            .await?
            .0
            .may_sign_for(Purpose::Token, key.algorithm)
        {
            return Err(CommandError::Rejected(format!(
                "the crypto policy does not let {} sign tokens",
                key.algorithm
            )));
        }
        self.keystore.sign_jose(kid, input).map_err(storage)
    }

    /// Signs a JSON payload as a [`SignedDocument`].
    pub async fn sign_document(
        &self,
        purpose: Purpose,
        payload: serde_json::Value,
        context: &[u8],
    ) -> Result<SignedDocument, CommandError> {
        use base64::Engine as _;
        let message = quantus_crypto::document::canonical(&payload)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        let s = self.sign(purpose, &message, context).await?;
        Ok(SignedDocument {
            payload,
            signatures: vec![quantus_crypto::document::DocumentSignature {
                kid: s.kid,
                alg: s.alg,
                sig: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.bytes),
            }],
        })
    }

    /// Runs a licence command. Issuing needs an active organization.
    pub async fn license_command(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: LicenseCommand,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        if let LicenseCommand::Issue(terms) = &command {
            self.bus.active_organization(&terms.organization_id).await?;
        }
        self.bus
            .execute::<License>(ctx, id, command, expected, &())
            .await
    }

    pub async fn license(&self, id: &str) -> Result<(License, u64), CommandError> {
        self.bus
            .load_existing::<License>(id, "licence", |license| {
                license.status != LicenseStatus::Absent
            })
            .await
    }

    /// The signed licence file, made now with the active licence key.
    pub async fn license_file(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<SignedDocument, CommandError> {
        let (license, _) = self.license(id).await?;
        match license.status {
            LicenseStatus::Revoked => {
                return Err(CommandError::Rejected("licence is revoked".into()))
            }
            LicenseStatus::Suspended => {
                return Err(CommandError::Rejected("licence is suspended".into()))
            }
            _ => {}
        }
        let t = license
            .terms
            .ok_or_else(|| CommandError::NotFound(format!("no licence {id}")))?;
        let file = LicenseFile {
            format: LICENSE_FORMAT.into(),
            license_id: id.to_owned(),
            organization_id: t.organization_id,
            product: t.product,
            edition: t.edition,
            features: t.features,
            limits: t.limits,
            max_activations: t.max_activations,
            machine_fingerprint: t.machine_fingerprint,
            issued_at: quantus_domain::envelope::truncate_to_micros(now),
            not_before: t.not_before,
            expires_at: t.expires_at,
            grace_period_seconds: t.grace_period_seconds,
            issuer: self.issuer.clone(),
        };
        let payload = serde_json::to_value(file).map_err(storage)?;
        self.sign_document(
            Purpose::License,
            payload,
            quantus_crypto::license::LICENSE_CONTEXT,
        )
        .await
    }
}
