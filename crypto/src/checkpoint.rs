//! Signed log checkpoints in the C2SP `tlog-checkpoint` / `signed-note` text format:
//!
//! ```text
//! <origin>\n<tree size, decimal>\n<root hash, base64>\n
//! \n
//! — <key name> <base64(key id (4 bytes) || signature)>\n
//! ```
//!
//! The signature covers the body (the first three lines) under the context string
//! [`CHECKPOINT_CONTEXT`], with QuantumLock's checkpoint key (by default the composite
//! ML-DSA-65 + Ed25519). signed-note has no registered type for it, so its key id uses the
//! reserved type byte 0xff followed by the algorithm's name (docs/event-log.md,
//! "Checkpoints"); an Ed25519 key uses the registered type 0x01.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::keys::{Purpose, TrustedKey, TrustedKeys};
use crate::merkle::Hash;
use crate::{Algorithm, PublicKey};

pub const CHECKPOINT_CONTEXT: &[u8] = b"quantus/checkpoint/v1";
const DASH: &str = "\u{2014} ";

/// A tree head: the log's origin line, its size, its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("no signature on the checkpoint is by a trusted checkpoint key")]
    NoTrustedSignature,
    #[error("the checkpoint's signature does not verify")]
    BadSignature,
}

impl Checkpoint {
    /// The signed body: three lines, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let bad = |w: &str| CheckpointError::Malformed(w.to_owned());
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size = lines
            .next()
            .and_then(|s| {
                (!s.starts_with('0') || s == "0")
                    .then(|| s.parse::<u64>().ok())
                    .flatten()
            })
            .ok_or_else(|| bad("the size is not a decimal number"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the root is not 32 bytes of base64"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// The 4-byte signed-note key id of a key named `name`.
pub fn key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    match key.alg {
        Algorithm::Ed25519 => h.update([0x01]),
        other => {
            h.update([0xff]);
            h.update(other.name().as_bytes());
            h.update([0x00]);
        }
    }
    h.update(&key.bytes);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The note: body, blank line, one signature line.
pub fn note(checkpoint: &Checkpoint, key_name: &str, key: &PublicKey, signature: &[u8]) -> String {
    let mut blob = key_id(key_name, key).to_vec();
    blob.extend_from_slice(signature);
    format!(
        "{}\n{DASH}{key_name} {}\n",
        checkpoint.body(),
        STANDARD.encode(blob)
    )
}

fn usable(keys: &TrustedKeys, key: &TrustedKey, now: DateTime<Utc>) -> bool {
    // A checkpoint carries no signing time, so a key compromised at any time vouches for none.
    key.compromised_at.is_none() && keys.accepts(key, Purpose::Checkpoint, now, now).is_ok()
}

/// Parses a signed checkpoint and verifies it with a trusted checkpoint key.
pub fn open(
    text: &str,
    keys: &TrustedKeys,
    now: DateTime<Utc>,
) -> Result<Checkpoint, CheckpointError> {
    let (body, sigs) = text
        .split_once("\n\n")
        .ok_or_else(|| CheckpointError::Malformed("no blank line before the signatures".into()))?;
    let body = format!("{body}\n");
    let checkpoint = Checkpoint::parse_body(&body)?;
    if body.matches('\n').count() != 3 {
        return Err(CheckpointError::Malformed(
            "the body has extension lines".into(),
        ));
    }
    let mut matched = false;
    for line in sigs.lines() {
        let rest = line
            .strip_prefix(DASH)
            .ok_or_else(|| CheckpointError::Malformed("a signature line lacks the dash".into()))?;
        let (name, blob) = rest.split_once(' ').ok_or_else(|| {
            CheckpointError::Malformed("a signature line lacks its key name".into())
        })?;
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| CheckpointError::Malformed("a signature is not base64".into()))?;
        if blob.len() < 5 {
            return Err(CheckpointError::Malformed(
                "a signature is too short".into(),
            ));
        }
        let (id, sig) = blob.split_at(4);
        for key in keys
            .keys
            .iter()
            .filter(|k| k.purpose == Purpose::Checkpoint)
        {
            let public = key.public_key();
            if key_id(name, &public) != id {
                continue;
            }
            if !usable(keys, key, now) {
                continue;
            }
            matched = true;
            if public
                .verify(body.as_bytes(), CHECKPOINT_CONTEXT, sig)
                .is_ok()
            {
                return Ok(checkpoint);
            }
        }
    }
    Err(if matched {
        CheckpointError::BadSignature
    } else {
        CheckpointError::NoTrustedSignature
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{CryptoPolicy, VerifyRule};
    use crate::SecretKey;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A key set trusting `key` alone, as a checkpoint key, under a policy that lets its
    /// algorithm sign and verify.
    pub(crate) fn trusting(key: &SecretKey) -> TrustedKeys {
        let public = key.public_key();
        let alg = key.algorithm();
        TrustedKeys {
            keys: vec![TrustedKey {
                kid: public.kid(),
                alg,
                purpose: Purpose::Checkpoint,
                public_key: URL_SAFE_NO_PAD.encode(&public.bytes),
                not_before: DateTime::from_timestamp(0, 0).unwrap(),
                retired_at: None,
                compromised_at: None,
            }],
            policy: CryptoPolicy {
                sign: vec![alg],
                verify: vec![VerifyRule { alg, until: None }],
            },
        }
    }

    fn setup() -> (SecretKey, TrustedKeys) {
        let key = SecretKey::from_seed(Algorithm::MlDsa65Ed25519, &[9u8; 64]).unwrap();
        let keys = trusting(&key);
        (key, keys)
    }

    #[test]
    fn a_signed_checkpoint_opens_and_any_change_is_refused() {
        let (key, keys) = setup();
        let cp = Checkpoint {
            origin: "quantus.example/log".into(),
            size: 42,
            root: [7u8; 32],
        };
        let sig = key
            .sign(cp.body().as_bytes(), CHECKPOINT_CONTEXT, &[1; 32])
            .unwrap();
        let text = note(&cp, "quantus.example/log", &key.public_key(), &sig);
        assert!(text.starts_with("quantus.example/log\n42\n"));
        let now = Utc::now();
        assert_eq!(open(&text, &keys, now).unwrap(), cp);
        let grown = text.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(open(&grown, &keys, now), Err(CheckpointError::BadSignature));
        let renamed = text.replace("\u{2014} quantus.example/log", "\u{2014} other");
        assert_eq!(
            open(&renamed, &keys, now),
            Err(CheckpointError::NoTrustedSignature)
        );
        let mut compromised = keys.clone();
        compromised.keys[0].compromised_at = Some(now);
        assert_eq!(
            open(&text, &compromised, now),
            Err(CheckpointError::NoTrustedSignature)
        );
        assert!(matches!(
            open("nonsense", &keys, now),
            Err(CheckpointError::Malformed(_))
        ));
    }
}
