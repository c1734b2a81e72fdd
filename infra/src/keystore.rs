//! Private keys, sealed at rest. The log holds only public halves (see `domain::keyring`).
//!
//! [`Keystore`] is the seam for other backends: a PKCS#11 HSM or a cloud KMS implements `seal`
//! as "create a non-exportable key and remember its handle under `kid`" and `sign` as a call to
//! the device, so private keys never leave it (see docs/crypto.md).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use quantus_crypto::{Algorithm, SecretKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::InfraError;

/// Holds signing keys by kid and signs with them.
pub trait Keystore: Send + Sync {
    /// Stores a new key.
    fn seal(&self, kid: &str, key: &SecretKey) -> Result<(), InfraError>;
    /// Signs `message` under `context` with key `kid`.
    fn sign(
        &self,
        kid: &str,
        alg: Algorithm,
        message: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, InfraError>;
    /// Signs a JWS signing input with Ed25519 key `kid` (JOSE `EdDSA`, no context).
    fn sign_jose(&self, kid: &str, signing_input: &[u8]) -> Result<Vec<u8>, InfraError>;
}

/// Keys in files under `DATA_DIR/keys`, each sealed with XChaCha20-Poly1305 under a master key
/// (`QUANTUS_MASTER_KEY`, 32 bytes in hex, or a generated `DATA_DIR/master.key`, mode 0600).
pub struct FileKeystore {
    dir: PathBuf,
    cipher: XChaCha20Poly1305,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedKey {
    version: u32,
    alg: Algorithm,
    nonce: String,
    ciphertext: String,
}

const AAD_PREFIX: &[u8] = b"quantus-keystore/v1\0";

fn aad(kid: &str, alg: Algorithm) -> Vec<u8> {
    [AAD_PREFIX, kid.as_bytes(), b"\0", alg.name().as_bytes()].concat()
}

fn corrupt(what: impl Into<String>) -> InfraError {
    InfraError::Corrupt(what.into())
}

impl FileKeystore {
    /// Opens (creating if needed) the keystore under `data_dir`.
    pub fn open(data_dir: &Path, master_key_hex: Option<&str>) -> Result<Self, InfraError> {
        let master = master_key(data_dir, master_key_hex)?;
        let dir = data_dir.join("keys");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            cipher: XChaCha20Poly1305::new((&*master).into()),
        })
    }

    fn path(&self, kid: &str) -> Result<PathBuf, InfraError> {
        // Kids are hex; refuse anything that could name another path.
        if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(corrupt(format!("invalid kid {kid:?}")));
        }
        Ok(self.dir.join(format!("{kid}.sealed")))
    }

    fn open_key(&self, kid: &str, alg: Algorithm) -> Result<SecretKey, InfraError> {
        let text = std::fs::read(self.path(kid)?)
            .map_err(|e| corrupt(format!("key {kid} is not in the keystore: {e}")))?;
        let sealed: SealedKey =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("key {kid}: {e}")))?;
        if sealed.alg != alg {
            return Err(corrupt(format!("key {kid} is {}, not {alg}", sealed.alg)));
        }
        let nonce = URL_SAFE_NO_PAD
            .decode(&sealed.nonce)
            .map_err(|_| corrupt("bad nonce"))?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(&sealed.ciphertext)
            .map_err(|_| corrupt("bad ciphertext"))?;
        if nonce.len() != 24 {
            return Err(corrupt("bad nonce length"));
        }
        let seed = zeroize::Zeroizing::new(
            self.cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &aad(kid, alg),
                    },
                )
                .map_err(|_| corrupt(format!("key {kid} does not open with this master key")))?,
        );
        SecretKey::from_seed(alg, &seed).map_err(|e| corrupt(e.to_string()))
    }
}

/// The master key: `QUANTUS_MASTER_KEY` (hex), or `DATA_DIR/master.key`, generated on first use
/// with mode 0600. Every process of one platform must use the same one.
pub fn master_key(
    data_dir: &Path,
    master_key_hex: Option<&str>,
) -> Result<zeroize::Zeroizing<[u8; 32]>, InfraError> {
    let key = match master_key_hex {
        Some(hex_key) => decode_master(hex_key.trim())?,
        None => {
            let path = data_dir.join("master.key");
            if !path.exists() {
                // Several processes may share the folder and start at once: each writes a
                // candidate, and a hard link (which never replaces) lets exactly one win.
                std::fs::create_dir_all(data_dir)?;
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let candidate = data_dir.join(format!("master.key.{}.tmp", uuid::Uuid::now_v7()));
                crate::credentials::write_secret(&candidate, &hex::encode(key))?;
                let linked = std::fs::hard_link(&candidate, &path);
                std::fs::remove_file(&candidate)?;
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
            decode_master(std::fs::read_to_string(&path)?.trim())?
        }
    };
    Ok(zeroize::Zeroizing::new(key))
}

fn decode_master(text: &str) -> Result<[u8; 32], InfraError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).map_err(|_| {
        InfraError::Config("the master key must be 32 bytes in hex (64 characters)".into())
    })?;
    Ok(key)
}

impl Keystore for FileKeystore {
    fn seal(&self, kid: &str, key: &SecretKey) -> Result<(), InfraError> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.seed(),
                    aad: &aad(kid, key.algorithm()),
                },
            )
            .map_err(|_| corrupt("sealing failed"))?;
        let sealed = SealedKey {
            version: 1,
            alg: key.algorithm(),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ciphertext: URL_SAFE_NO_PAD.encode(ciphertext),
        };
        let text = serde_json::to_string(&sealed).map_err(|e| corrupt(e.to_string()))?;
        crate::credentials::write_secret(&self.path(kid)?, &text)
    }

    fn sign(
        &self,
        kid: &str,
        alg: Algorithm,
        message: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, InfraError> {
        let key = self.open_key(kid, alg)?;
        let mut rnd = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut rnd);
        key.sign(message, context, &rnd)
            .map_err(|e| corrupt(e.to_string()))
    }

    fn sign_jose(&self, kid: &str, signing_input: &[u8]) -> Result<Vec<u8>, InfraError> {
        self.open_key(kid, Algorithm::Ed25519)?
            .sign_jose(signing_input)
            .map_err(|e| corrupt(e.to_string()))
    }
}

/// A fresh key from the operating system's CSPRNG.
pub fn generate(alg: Algorithm) -> SecretKey {
    let mut seed = zeroize::Zeroizing::new(vec![0u8; alg.seed_len()]);
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SecretKey::from_seed(alg, &seed).expect("seed of the algorithm's length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("quantus-keystore-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sealed_keys_sign_and_never_appear_in_clear() {
        let d = dir();
        let store = FileKeystore::open(&d, None).unwrap();
        let key = generate(Algorithm::MlDsa65Ed25519);
        let kid = key.public_key().kid();
        store.seal(&kid, &key).unwrap();
        let sig = store
            .sign(&kid, Algorithm::MlDsa65Ed25519, b"m", b"ctx")
            .unwrap();
        key.public_key().verify(b"m", b"ctx", &sig).unwrap();
        let file = std::fs::read(d.join("keys").join(format!("{kid}.sealed"))).unwrap();
        let text = String::from_utf8_lossy(&file);
        assert!(
            !text.contains(&hex::encode(key.seed()))
                && !text.contains(&URL_SAFE_NO_PAD.encode(key.seed()))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [
                d.join("master.key"),
                d.join("keys").join(format!("{kid}.sealed")),
            ] {
                assert_eq!(
                    std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
        }
        // Reopened with the same master key, it still signs.
        let again = FileKeystore::open(&d, None).unwrap();
        assert!(again
            .sign(&kid, Algorithm::MlDsa65Ed25519, b"m", b"ctx")
            .is_ok());
    }

    #[test]
    fn processes_starting_together_agree_on_one_master_key() {
        let d = dir();
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| *master_key(&d, None).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        let leftovers = std::fs::read_dir(&d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_wrong_master_key_a_swapped_file_or_a_bad_kid_is_refused() {
        let d = dir();
        let store = FileKeystore::open(&d, Some(&"11".repeat(32))).unwrap();
        let a = generate(Algorithm::Ed25519);
        let b = generate(Algorithm::Ed25519);
        let (ka, kb) = (a.public_key().kid(), b.public_key().kid());
        store.seal(&ka, &a).unwrap();
        store.seal(&kb, &b).unwrap();
        let other = FileKeystore::open(&d, Some(&"22".repeat(32))).unwrap();
        assert!(other.sign(&ka, Algorithm::Ed25519, b"m", b"").is_err());
        // A sealed file copied under another kid does not open (the kid is authenticated).
        std::fs::copy(
            d.join("keys").join(format!("{ka}.sealed")),
            d.join("keys").join(format!("{kb}.sealed")),
        )
        .unwrap();
        assert!(store.sign(&kb, Algorithm::Ed25519, b"m", b"").is_err());
        assert!(store
            .sign("../master", Algorithm::Ed25519, b"m", b"")
            .is_err());
        assert!(FileKeystore::open(&d, Some("not-hex")).is_err());
    }
}
