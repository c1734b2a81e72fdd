//! Secrets handed to people once: random bearer values, their digests, and files only their
//! owner can read.

use std::path::Path;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::InfraError;

/// File under the data folder that receives the bootstrap admin's client credentials once.
pub const BOOTSTRAP_CLIENT_FILE: &str = "bootstrap-client.json";

/// 256 random bits from the operating system, base64url (43 characters).
pub fn random_secret() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a high-entropy secret, lower-case hex. Secrets of 256 random bits need no
/// password stretching: guessing them is as hard as inverting the digest.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `presented` hashes to `digest_hex`, compared in constant time.
pub fn secret_matches(presented: &str, digest_hex: &str) -> bool {
    let computed = secret_digest(presented);
    computed.len() == digest_hex.len()
        && bool::from(computed.as_bytes().ct_eq(digest_hex.as_bytes()))
}

/// Writes a secret to a file readable by its owner only (mode 0600).
pub fn write_secret(path: &Path, secret: &str) -> Result<(), InfraError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_matches() {
        let s = random_secret();
        assert_eq!(s.len(), 43);
        let d = secret_digest(&s);
        assert!(secret_matches(&s, &d));
        assert!(!secret_matches(&format!("{s}x"), &d));
        assert!(!secret_matches("", &d));
        assert!(!secret_matches(&s, ""));
    }
}
