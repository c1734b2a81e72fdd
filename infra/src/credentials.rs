//! The bootstrap admin credential: created on the first start, stored only as a hash.

use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use crate::db::Database;
use crate::InfraError;

/// File under the data folder that receives the token once, readable by the owner only.
pub const TOKEN_FILE: &str = "bootstrap-token";
const PREFIX: &str = "qtb_";

/// What `ensure_bootstrap` did.
pub enum Bootstrap {
    /// A new token was made and written to this file.
    Created(PathBuf),
    /// A credential already existed.
    Existing,
}

fn token_hash(token: &str) -> String {
    // The token carries 256 random bits: a fast hash is enough, no password stretching needed.
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates the bootstrap credential if there is none, writing the token to
/// `data_dir/bootstrap-token` (mode 0600). Safe when several processes start at once.
pub async fn ensure_bootstrap(db: &Database, data_dir: &Path) -> Result<Bootstrap, InfraError> {
    let existing = sqlx::query("SELECT COUNT(*) AS n FROM bootstrap_credentials")
        .fetch_one(&db.pool)
        .await?;
    if existing.try_get::<i64, _>("n")? > 0 {
        return Ok(Bootstrap::Existing);
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("{PREFIX}{}", hex::encode(bytes));
    let inserted = sqlx::query(
        "INSERT INTO bootstrap_credentials (id, token_hash, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(token_hash(&token))
    .bind(chrono::Utc::now().to_rfc3339())
    .execute(&db.pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(Bootstrap::Existing);
    }
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(TOKEN_FILE);
    write_secret(&path, &token)?;
    Ok(Bootstrap::Created(path))
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
    Ok(())
}

/// The stored hashes of valid bootstrap tokens.
pub async fn load_token_hashes(db: &Database) -> Result<Vec<[u8; 32]>, InfraError> {
    let rows = sqlx::query("SELECT token_hash FROM bootstrap_credentials")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|row| {
            let hex_hash: String = row.try_get("token_hash")?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&hex_hash, &mut out)
                .map_err(|_| InfraError::Corrupt("bootstrap credential hash is not hex".into()))?;
            Ok(out)
        })
        .collect()
}

/// Whether `presented` is one of the tokens behind `hashes`, compared in constant time.
pub fn token_matches(presented: &str, hashes: &[[u8; 32]]) -> bool {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    hashes
        .iter()
        .fold(subtle::Choice::from(0), |found, h| found | h.ct_eq(&digest))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let hashes = vec![Sha256::digest(b"qtb_secret").into()];
        assert!(token_matches("qtb_secret", &hashes));
        assert!(!token_matches("qtb_secreT", &hashes));
        assert!(!token_matches("", &hashes));
        assert!(!token_matches("qtb_secret", &[]));
    }
}
