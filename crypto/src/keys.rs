//! The key set a verifier trusts: public keys with their purpose and validity, and the crypto
//! policy (which algorithms may still verify, until when). Published by `GET /v1/keys`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::algorithm::{Algorithm, PublicKey};

/// What a key is for; a key signs for one purpose only.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    License,
    Evidence,
    Token,
    Checkpoint,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Self::License, Self::Evidence, Self::Token, Self::Checkpoint];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::License => "license",
            Self::Evidence => "evidence",
            Self::Token => "token",
            Self::Checkpoint => "checkpoint",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    pub kid: String,
    pub alg: Algorithm,
    pub purpose: Purpose,
    /// base64url without padding.
    pub public_key: String,
    pub not_before: DateTime<Utc>,
    /// After this instant the key verifies nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
    /// Signatures made at or after this instant are void.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromised_at: Option<DateTime<Utc>>,
}

impl TrustedKey {
    pub fn public_key(&self) -> PublicKey {
        // Checked when the key set is loaded; an undecodable key verifies nothing.
        let bytes = URL_SAFE_NO_PAD.decode(&self.public_key).unwrap_or_default();
        PublicKey {
            alg: self.alg,
            bytes,
        }
    }
}

/// One algorithm the policy lets verify, optionally only until an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRule {
    pub alg: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoPolicy {
    /// Algorithms new signatures are made with, by preference.
    pub sign: Vec<Algorithm>,
    pub verify: Vec<VerifyRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeys {
    pub keys: Vec<TrustedKey>,
    pub policy: CryptoPolicy,
}

/// Why a trusted key may not vouch for a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("key {kid} is for {actual:?}, not {wanted:?}")]
    WrongPurpose {
        kid: String,
        wanted: Purpose,
        actual: Purpose,
    },
    #[error("algorithm {alg} is not allowed to verify by the crypto policy")]
    AlgorithmNotAllowed { alg: Algorithm },
    #[error("algorithm {alg} stopped being allowed to verify at {until}")]
    AlgorithmExpired {
        alg: Algorithm,
        until: DateTime<Utc>,
    },
    #[error("key {kid} is not valid before {not_before}")]
    KeyNotYetValid {
        kid: String,
        not_before: DateTime<Utc>,
    },
    #[error("key {kid} was retired at {retired_at}")]
    KeyRetired {
        kid: String,
        retired_at: DateTime<Utc>,
    },
    #[error("key {kid} is compromised since {compromised_at}; this was signed at {signed_at}")]
    KeyCompromised {
        kid: String,
        compromised_at: DateTime<Utc>,
        signed_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key set: {0}")]
pub struct KeySetError(pub String);

impl TrustedKeys {
    /// Parses and checks a key set (every key decodes, has its algorithm's size and its kid).
    pub fn from_json(text: &[u8]) -> Result<Self, KeySetError> {
        let keys: Self = serde_json::from_slice(text).map_err(|e| KeySetError(e.to_string()))?;
        for k in &keys.keys {
            let bytes = URL_SAFE_NO_PAD
                .decode(&k.public_key)
                .map_err(|_| KeySetError(format!("key {} is not base64url", k.kid)))?;
            let pk = PublicKey::new(k.alg, bytes)
                .map_err(|e| KeySetError(format!("key {}: {e}", k.kid)))?;
            if pk.kid() != k.kid {
                return Err(KeySetError(format!(
                    "key {} does not match its kid ({})",
                    k.kid,
                    pk.kid()
                )));
            }
        }
        Ok(keys)
    }

    pub fn find(&self, kid: &str) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Whether `key` may vouch, at `now`, for something signed at `signed_at` for `purpose`.
    pub fn accepts(
        &self,
        key: &TrustedKey,
        purpose: Purpose,
        signed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), KeyRejection> {
        if key.purpose != purpose {
            return Err(KeyRejection::WrongPurpose {
                kid: key.kid.clone(),
                wanted: purpose,
                actual: key.purpose,
            });
        }
        let rule = self
            .policy
            .verify
            .iter()
            .find(|r| r.alg == key.alg)
            .ok_or(KeyRejection::AlgorithmNotAllowed { alg: key.alg })?;
        if let Some(until) = rule.until {
            if now >= until {
                return Err(KeyRejection::AlgorithmExpired {
                    alg: key.alg,
                    until,
                });
            }
        }
        if signed_at < key.not_before {
            return Err(KeyRejection::KeyNotYetValid {
                kid: key.kid.clone(),
                not_before: key.not_before,
            });
        }
        if let Some(retired_at) = key.retired_at {
            if now >= retired_at {
                return Err(KeyRejection::KeyRetired {
                    kid: key.kid.clone(),
                    retired_at,
                });
            }
        }
        if let Some(compromised_at) = key.compromised_at {
            if signed_at >= compromised_at {
                return Err(KeyRejection::KeyCompromised {
                    kid: key.kid.clone(),
                    compromised_at,
                    signed_at,
                });
            }
        }
        Ok(())
    }
}
