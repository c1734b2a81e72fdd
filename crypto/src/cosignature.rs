//! Witness cosignatures on log checkpoints (C2SP `tlog-cosignature`, type `cosignature/v1`).
//!
//! A witness that has checked a checkpoint is consistent with every earlier one it saw adds a
//! signed-note line to it:
//!
//! ```text
//! — <witness name> base64(key id (4 bytes) || timestamp (8 bytes, big-endian) || Ed25519 signature)
//! ```
//!
//! The key id is `SHA-256(name || "\n" || 0x04 || public key)[:4]`; the signature covers
//! `"cosignature/v1\ntime <timestamp>\n" || checkpoint body`. A witness's public key travels as
//! a signed-note verifier key (`vkey`): `<name>+<key id, 8 hex digits>+base64(0x04 || key)`.
//!
//! Pure: the time to sign at is passed in, as everywhere in this crate.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, CheckpointError};

/// The signed-note key type byte of `cosignature/v1`.
const COSIGNATURE_V1: u8 = 0x04;
const DASH: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    #[error("the witness key is malformed: {0}")]
    MalformedKey(String),
    #[error("the note is malformed: {0}")]
    MalformedNote(String),
}

/// A witness's name and Ed25519 public key: what an auditor trusts it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    pub name: String,
    pub key: VerifyingKey,
}

/// A cosignature found valid on a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    pub witness: String,
    /// When the witness signed, by its own clock.
    pub at: DateTime<Utc>,
}

/// Names are schema-less URLs: non-empty, no white space, no `+` (signed-note).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

impl WitnessKey {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, CosignatureError> {
        if !valid_name(name) {
            return Err(CosignatureError::MalformedKey(
                "a witness name is non-empty, with no spaces and no '+'".into(),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// A witness from its name and the 32 bytes of its Ed25519 public key.
    pub fn from_bytes(name: &str, key: &[u8]) -> Result<Self, CosignatureError> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| CosignatureError::MalformedKey("an Ed25519 key is 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| CosignatureError::MalformedKey("not an Ed25519 point".into()))?;
        Self::new(name, key)
    }

    /// The 4-byte key id its signature lines carry.
    pub fn key_id(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update(b"\n");
        h.update([COSIGNATURE_V1]);
        h.update(self.key.as_bytes());
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// The signed-note verifier key: `<name>+<key id hex>+base64(0x04 || key)`.
    pub fn vkey(&self) -> String {
        let mut blob = vec![COSIGNATURE_V1];
        blob.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            STANDARD.encode(blob)
        )
    }

    /// Parses a verifier key, checking its key id against its name and key.
    pub fn from_vkey(vkey: &str) -> Result<Self, CosignatureError> {
        let bad = |w: &str| CosignatureError::MalformedKey(w.to_owned());
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(blob)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("a vkey is <name>+<key id>+<base64 key>"));
        };
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| bad("the key is not base64"))?;
        let Some((&COSIGNATURE_V1, key)) = blob.split_first() else {
            return Err(bad("not a cosignature/v1 (type 0x04) key"));
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad("not an Ed25519 point"))?;
        let witness = Self::new(name, key)?;
        if id.len() != 8 || hex::encode(witness.key_id()) != id.to_ascii_lowercase() {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(witness)
    }

    fn verify(&self, body: &str, signature: &[u8]) -> Option<DateTime<Utc>> {
        let (time, sig) = signature.split_first_chunk::<8>()?;
        let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
        let time = u64::from_be_bytes(*time);
        self.key
            .verify_strict(message(body, time).as_bytes(), &sig)
            .ok()?;
        DateTime::from_timestamp(i64::try_from(time).ok()?, 0)
    }
}

/// What a `cosignature/v1` signature covers.
fn message(body: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{body}")
}

/// A witness's signature line over `checkpoint` at `at` (whole seconds, as the format has).
/// `sign` makes a plain Ed25519 signature with the witness's private key, wherever it is kept.
pub fn cosign<E>(
    witness: &WitnessKey,
    checkpoint: &Checkpoint,
    at: DateTime<Utc>,
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], E>,
) -> Result<String, E> {
    let time = u64::try_from(at.timestamp()).unwrap_or(0);
    let signature = sign(message(&checkpoint.body(), time).as_bytes())?;
    let mut blob = witness.key_id().to_vec();
    blob.extend_from_slice(&time.to_be_bytes());
    blob.extend_from_slice(&signature);
    Ok(format!(
        "{DASH}{} {}\n",
        witness.name,
        STANDARD.encode(blob)
    ))
}

/// Splits a signed note into its body (ending in a newline) and its signature lines.
pub fn split_note(note: &str) -> Result<(&str, Vec<&str>), CheckpointError> {
    let cut = note
        .find("\n\n")
        .ok_or_else(|| CheckpointError::Malformed("no blank line before the signatures".into()))?;
    let (body, sigs) = (&note[..=cut], &note[cut + 2..]);
    Ok((body, sigs.lines().filter(|l| !l.is_empty()).collect()))
}

/// The witnesses among `trusted` with a valid cosignature on the note's checkpoint, each once
/// (its newest). Lines of unknown keys are ignored, as signed-note asks; a line that names a
/// trusted key but does not verify is ignored too (it proves nothing).
pub fn cosigners(note: &str, trusted: &[WitnessKey]) -> Result<Vec<Cosigned>, CosignatureError> {
    let (body, lines) =
        split_note(note).map_err(|e| CosignatureError::MalformedNote(e.to_string()))?;
    let mut found: Vec<Cosigned> = Vec::new();
    for line in lines {
        let Some((name, blob)) = line.strip_prefix(DASH).and_then(|l| l.split_once(' ')) else {
            return Err(CosignatureError::MalformedNote(
                "a signature line is not '— <name> <base64>'".into(),
            ));
        };
        let Ok(blob) = STANDARD.decode(blob) else {
            continue;
        };
        let Some((id, signature)) = blob.split_first_chunk::<4>() else {
            continue;
        };
        for witness in trusted
            .iter()
            .filter(|w| w.name == name && w.key_id() == *id)
        {
            if let Some(at) = witness.verify(body, signature) {
                match found.iter_mut().find(|c| c.witness == witness.name) {
                    Some(c) if c.at >= at => {}
                    Some(c) => c.at = at,
                    None => found.push(Cosigned {
                        witness: witness.name.clone(),
                        at,
                    }),
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "quantus.example/log".into(),
            size: 7,
            root: [3u8; 32],
        }
    }

    fn witness(seed: u8, name: &str) -> (SigningKey, WitnessKey) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let public = WitnessKey::new(name, key.verifying_key()).unwrap();
        (key, public)
    }

    fn cosign(name: &str, key: &SigningKey, cp: &Checkpoint, when: DateTime<Utc>) -> String {
        let witness = WitnessKey::new(name, key.verifying_key()).unwrap();
        super::cosign(&witness, cp, when, |m| {
            Ok::<_, std::convert::Infallible>(key.sign(m).to_bytes())
        })
        .unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_vkey_round_trips_and_its_key_id_is_checked() {
        let (_, w) = witness(1, "witness.example/w1");
        let vkey = w.vkey();
        assert!(vkey.starts_with("witness.example/w1+"));
        assert_eq!(WitnessKey::from_vkey(&vkey).unwrap(), w);
        let renamed = vkey.replacen("w1+", "w2+", 1);
        assert!(WitnessKey::from_vkey(&renamed).is_err());
        for bad in ["", "a+b", "a+00000000+AQ==", "a b+00000000+BA=="] {
            assert!(WitnessKey::from_vkey(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cosignature_verifies_for_its_witness_only_and_over_its_checkpoint_only() {
        let (k1, w1) = witness(1, "witness.example/w1");
        let (_, w2) = witness(2, "witness.example/w2");
        let cp = checkpoint();
        let note = format!(
            "{}\n— quantus.example/log AAAAAA==\n{}",
            cp.body(),
            cosign("witness.example/w1", &k1, &cp, at(1_700_000_000))
        );
        assert_eq!(
            cosigners(&note, &[w1.clone(), w2.clone()]).unwrap(),
            vec![Cosigned {
                witness: "witness.example/w1".into(),
                at: at(1_700_000_000)
            }]
        );
        assert!(cosigners(&note, &[w2]).unwrap().is_empty());
        let grown = note.replacen("\n7\n", "\n8\n", 1);
        assert!(cosigners(&grown, std::slice::from_ref(&w1))
            .unwrap()
            .is_empty());
        // The timestamp is signed: moving it forward breaks the signature.
        let line = cosign("witness.example/w1", &k1, &cp, at(1_700_000_000));
        let mut blob = STANDARD
            .decode(line.trim_end().rsplit_once(' ').unwrap().1)
            .unwrap();
        blob[11] ^= 1;
        let moved = format!(
            "{}\n— witness.example/w1 {}\n",
            cp.body(),
            STANDARD.encode(blob)
        );
        assert!(cosigners(&moved, &[w1]).unwrap().is_empty());
    }

    #[test]
    fn a_witness_counts_once_with_its_newest_cosignature() {
        let (k1, w1) = witness(1, "witness.example/w1");
        let cp = checkpoint();
        let note = format!(
            "{}\n{}{}",
            cp.body(),
            cosign("witness.example/w1", &k1, &cp, at(100)),
            cosign("witness.example/w1", &k1, &cp, at(200))
        );
        let found = cosigners(&note, &[w1]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].at, at(200));
    }
}
