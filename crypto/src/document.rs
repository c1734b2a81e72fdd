//! A signed document: a JSON payload, signed over its RFC 8785 canonical bytes, with a list of
//! signatures (so a document can carry a post-quantum and a classical signature during a
//! migration, or old and new keys during a rotation).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::algorithm::{Algorithm, SecretKey, SignatureError};
use crate::keys::{KeyRejection, Purpose, TrustedKeys};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentSignature {
    pub kid: String,
    pub alg: Algorithm,
    /// base64url without padding.
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDocument {
    pub payload: Value,
    pub signatures: Vec<DocumentSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("not a signed document: {0}")]
    Malformed(String),
    #[error("no signature is by a trusted key (kids: {0})")]
    UnknownKey(String),
    #[error("signature by {kid} claims {claimed} but the key is {actual}")]
    AlgorithmMismatch {
        kid: String,
        claimed: Algorithm,
        actual: Algorithm,
    },
    #[error("{0}")]
    KeyRejected(KeyRejection),
    #[error("bad signature by {kid}: {reason}")]
    BadSignature { kid: String, reason: SignatureError },
    #[error("signing failed: {0}")]
    Signing(SignatureError),
}

/// The canonical bytes a document's signatures cover.
pub fn canonical(payload: &Value) -> Result<Vec<u8>, DocumentError> {
    serde_json_canonicalizer::to_vec(payload).map_err(|e| DocumentError::Malformed(e.to_string()))
}

impl SignedDocument {
    /// Parses a document from its JSON text, which must be exactly the document's canonical
    /// form (RFC 8785), optionally followed by one line feed: a document has one encoding, so
    /// no byte of a file can change without the file being refused.
    pub fn from_canonical_json(text: &[u8]) -> Result<Self, DocumentError> {
        let body = text.strip_suffix(b"\n").unwrap_or(text);
        let document: Self =
            serde_json::from_slice(body).map_err(|e| DocumentError::Malformed(e.to_string()))?;
        if document.to_canonical_json()? != body {
            return Err(DocumentError::Malformed(
                "not in canonical form (RFC 8785)".into(),
            ));
        }
        Ok(document)
    }

    /// The one encoding of this document (RFC 8785), as served and stored.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, DocumentError> {
        serde_json_canonicalizer::to_vec(self).map_err(|e| DocumentError::Malformed(e.to_string()))
    }

    /// Signs `payload` under `context` with each key; `rnd` gives 32 random bytes per key.
    pub fn sign(
        payload: Value,
        context: &[u8],
        keys: &[(&SecretKey, [u8; 32])],
    ) -> Result<Self, DocumentError> {
        let message = canonical(&payload)?;
        let signatures = keys
            .iter()
            .map(|(key, rnd)| {
                let sig = key
                    .sign(&message, context, rnd)
                    .map_err(DocumentError::Signing)?;
                Ok(DocumentSignature {
                    kid: key.public_key().kid(),
                    alg: key.algorithm(),
                    sig: URL_SAFE_NO_PAD.encode(sig),
                })
            })
            .collect::<Result<_, DocumentError>>()?;
        Ok(Self {
            payload,
            signatures,
        })
    }

    /// Checks that at least one signature is by a key trusted for `purpose`, with an algorithm
    /// the policy allows at `now`, made by a key that was not compromised at `signed_at`, and
    /// that it verifies. Returns the signature that did. Signatures by unknown keys are ignored;
    /// when none verifies, the first reason found is returned.
    pub fn verify(
        &self,
        keys: &TrustedKeys,
        purpose: Purpose,
        context: &[u8],
        signed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<&DocumentSignature, DocumentError> {
        let message = canonical(&self.payload)?;
        let mut first_error = None;
        for s in &self.signatures {
            let Some(key) = keys.find(&s.kid) else {
                continue;
            };
            let result = (|| {
                if key.alg != s.alg {
                    return Err(DocumentError::AlgorithmMismatch {
                        kid: s.kid.clone(),
                        claimed: s.alg,
                        actual: key.alg,
                    });
                }
                keys.accepts(key, purpose, signed_at, now)
                    .map_err(DocumentError::KeyRejected)?;
                let sig = URL_SAFE_NO_PAD.decode(&s.sig).map_err(|_| {
                    DocumentError::Malformed(format!("signature by {} is not base64url", s.kid))
                })?;
                key.public_key()
                    .verify(&message, context, &sig)
                    .map_err(|reason| DocumentError::BadSignature {
                        kid: s.kid.clone(),
                        reason,
                    })
            })();
            match result {
                Ok(()) => return Ok(s),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            DocumentError::UnknownKey(
                self.signatures
                    .iter()
                    .map(|s| s.kid.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }))
    }
}
