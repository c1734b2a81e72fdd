//! Per-subject data keys for crypto-shredding.
//!
//! Each subject (a user) gets a random 256-bit data key, stored wrapped (XChaCha20-Poly1305
//! under the master key) in `subject_keys`. Personal fields are sealed with it before they go
//! into an event. [`SubjectKeys::erase`] deletes the key: every sealed field of that subject,
//! in every event ever written, stops being readable, while the log itself is untouched and
//! its hash chain still verifies.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use quantus_domain::identity::Sealed;
use rand::RngCore;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::{Database, InfraError};

const WRAP_AAD: &[u8] = b"quantus-subject-key/v1\0";
const SEAL_AAD: &[u8] = b"quantus-sealed-field/v1\0";
/// The marker row of the login index saying its platform-wide email rows were moved.
const LOGINS_MOVED: &str = "moved:emails-per-organization";

#[derive(Clone)]
pub struct SubjectKeys {
    db: Database,
    master: XChaCha20Poly1305,
    /// For short-lived blobs the server hands out and takes back (pushed requests).
    blobs: XChaCha20Poly1305,
    /// Keys the login-name digests.
    login_key: [u8; 32],
    /// Keys the read model's blind indexes (one key per organization is derived from it).
    blind_key: [u8; 32],
}

fn corrupt(what: impl Into<String>) -> InfraError {
    InfraError::Corrupt(what.into())
}

fn nonce() -> [u8; 24] {
    let mut n = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// HMAC-SHA-256 with a 32-byte key (zero-padded to the block, as HMAC itself pads it: no
/// key length can fail).
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac as _;
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new(&block.into());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Decrypts `sealed` with its subject's data `key`; the field name is authenticated.
fn open_with(key: &[u8], sealed: &Sealed, field: &str) -> Result<Zeroizing<Vec<u8>>, InfraError> {
    let n = URL_SAFE_NO_PAD
        .decode(&sealed.nonce)
        .map_err(|_| corrupt("sealed nonce is not base64url"))?;
    let ct = URL_SAFE_NO_PAD
        .decode(&sealed.ciphertext)
        .map_err(|_| corrupt("sealed ciphertext is not base64url"))?;
    if n.len() != 24 {
        return Err(corrupt("sealed nonce has the wrong length"));
    }
    let plain = XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&n),
            Payload {
                msg: &ct,
                aad: &field_aad(&sealed.subject, field),
            },
        )
        .map_err(|_| {
            corrupt(format!(
                "sealed {field} of {} does not open",
                sealed.subject
            ))
        })?;
    Ok(Zeroizing::new(plain))
}

/// An opened field as the UTF-8 text it was sealed from.
fn text(plain: Zeroizing<Vec<u8>>, field: &str) -> Result<String, InfraError> {
    String::from_utf8(plain.to_vec()).map_err(|_| corrupt(format!("sealed {field} is not UTF-8")))
}

fn field_aad(subject: &str, field: &str) -> Vec<u8> {
    [SEAL_AAD, subject.as_bytes(), b"\0", field.as_bytes()].concat()
}

impl SubjectKeys {
    pub fn new(db: Database, master: &[u8; 32]) -> Self {
        use sha2::Digest as _;
        let blob_key = Zeroizing::new(<[u8; 32]>::from(sha2::Sha256::digest(
            [b"quantus-blob-key/v1\0".as_slice(), master.as_slice()].concat(),
        )));
        let login_key = <[u8; 32]>::from(sha2::Sha256::digest(
            [b"quantus-login-key/v1\0".as_slice(), master.as_slice()].concat(),
        ));
        let blind_key = <[u8; 32]>::from(sha2::Sha256::digest(
            [
                b"quantus-blind-index-key/v1\0".as_slice(),
                master.as_slice(),
            ]
            .concat(),
        ));
        Self {
            db,
            master: XChaCha20Poly1305::new(master.into()),
            blobs: XChaCha20Poly1305::new((&*blob_key).into()),
            login_key,
            blind_key,
        }
    }

    /// The blind index of a personal value: HMAC-SHA-256 of the attribute and the lower-cased
    /// value under the organization's own key (itself an HMAC of the organization id under a
    /// key derived from the master key). Equal values of one attribute in one organization
    /// meet; the digest says nothing about the value without the master key, and the same
    /// value in another organization gives another digest, so tables cannot be joined across
    /// tenants.
    pub fn blind_index(&self, organization_id: &str, attribute: &str, value: &str) -> String {
        let org_key = hmac_sha256(
            &self.blind_key,
            &[b"organization\0", organization_id.as_bytes()],
        );
        hex::encode(hmac_sha256(
            &org_key,
            &[attribute.as_bytes(), b"\0", value.to_lowercase().as_bytes()],
        ))
    }

    /// A keyed digest of a login name: finds the user without keeping the email in clear.
    pub fn login_digest(&self, login: &str) -> String {
        let sealed_key = self.login_key;
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(
            [
                sealed_key.as_slice(),
                b"\0login\0",
                login.trim().to_lowercase().as_bytes(),
            ]
            .concat(),
        ))
    }

    /// Claims `login` for `user_id`; false when someone holds it.
    pub async fn claim_login(&self, login: &str, user_id: &str) -> Result<bool, InfraError> {
        let done = sqlx::query(
            "INSERT INTO user_logins (login, user_id) VALUES ($1, $2) ON CONFLICT (login) DO NOTHING",
        )
        .bind(login)
        .bind(user_id)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn find_login(&self, login: &str) -> Result<Option<String>, InfraError> {
        let row = sqlx::query("SELECT user_id FROM user_logins WHERE login = $1")
            .bind(login)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("user_id")?),
            None => None,
        })
    }

    pub async fn release_login(&self, login: &str) -> Result<(), InfraError> {
        sqlx::query("DELETE FROM user_logins WHERE login = $1")
            .bind(login)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// The login-index key of an email address in one organization: addresses are unique per
    /// organization, so the same address may sign in to several (issue 14 item 4).
    pub fn email_login(&self, organization_id: &str, email: &str) -> String {
        self.login_digest(&format!("email\0{organization_id}\0{}", email.trim()))
    }

    /// Claims `email` in `organization_id` for `user_id`, and lists it in the directory that
    /// sign-in discovery reads (platform-wide clients). False when the organization has it.
    pub async fn claim_email(
        &self,
        organization_id: &str,
        email: &str,
        user_id: &str,
    ) -> Result<bool, InfraError> {
        if !self
            .claim_login(&self.email_login(organization_id, email), user_id)
            .await?
        {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO login_directory (email, organization_id, user_id) VALUES ($1, $2, $3) \
             ON CONFLICT (email, organization_id) DO UPDATE SET user_id = excluded.user_id",
        )
        .bind(self.login_digest(email))
        .bind(organization_id)
        .bind(user_id)
        .execute(&self.db.pool)
        .await?;
        Ok(true)
    }

    /// Who holds `email` in `organization_id`.
    pub async fn find_email(
        &self,
        organization_id: &str,
        email: &str,
    ) -> Result<Option<String>, InfraError> {
        self.find_login(&self.email_login(organization_id, email))
            .await
    }

    /// Releases `email` in `organization_id` if `user_id` holds it (and its directory entry).
    pub async fn release_email(
        &self,
        organization_id: &str,
        email: &str,
        user_id: &str,
    ) -> Result<(), InfraError> {
        sqlx::query("DELETE FROM user_logins WHERE login = $1 AND user_id = $2")
            .bind(self.email_login(organization_id, email))
            .bind(user_id)
            .execute(&self.db.pool)
            .await?;
        sqlx::query(
            "DELETE FROM login_directory WHERE email = $1 AND organization_id = $2 AND user_id = $3",
        )
        .bind(self.login_digest(email))
        .bind(organization_id)
        .bind(user_id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Every (organization, user) holding `email`: the discovery step of a sign-in whose
    /// client is platform-wide. Sorted by organization.
    pub async fn discover_email(&self, email: &str) -> Result<Vec<(String, String)>, InfraError> {
        let rows = sqlx::query(
            "SELECT organization_id, user_id FROM login_directory WHERE email = $1 ORDER BY organization_id",
        )
        .bind(self.login_digest(email))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("organization_id")?, r.try_get("user_id")?)))
            .collect()
    }

    /// Rows of the login index written before emails were per organization (keyed by the
    /// digest of the address alone), unless they were already moved. See
    /// `Identity::move_platform_wide_logins`.
    pub async fn unmoved_logins(&self) -> Result<Option<Vec<(String, String)>>, InfraError> {
        if self.find_login(LOGINS_MOVED).await?.is_some() {
            return Ok(None);
        }
        let rows = sqlx::query("SELECT login, user_id FROM user_logins")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("login")?, r.try_get("user_id")?)))
            .collect::<Result<Vec<_>, InfraError>>()
            .map(Some)
    }

    /// Records that the old login rows were moved.
    pub async fn logins_moved(&self) -> Result<(), InfraError> {
        self.claim_login(LOGINS_MOVED, "").await.map(|_| ())
    }

    /// Encrypts and authenticates a blob under `label`; base64url.
    pub fn seal_blob(&self, label: &str, plain: &[u8]) -> Result<String, InfraError> {
        let n = nonce();
        let ct = self
            .blobs
            .encrypt(
                XNonce::from_slice(&n),
                Payload {
                    msg: plain,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| corrupt("sealing failed"))?;
        Ok(URL_SAFE_NO_PAD.encode([&n[..], &ct].concat()))
    }

    /// Opens what [`seal_blob`](Self::seal_blob) made under the same label.
    pub fn open_blob(&self, label: &str, sealed: &str) -> Result<Vec<u8>, InfraError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| corrupt("not base64url"))?;
        if bytes.len() < 24 {
            return Err(corrupt("too short"));
        }
        let (n, ct) = bytes.split_at(24);
        self.blobs
            .decrypt(
                XNonce::from_slice(n),
                Payload {
                    msg: ct,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| corrupt("the blob does not open"))
    }

    async fn load(&self, subject: &str) -> Result<Option<Zeroizing<Vec<u8>>>, InfraError> {
        self.load_with(&self.db.pool, subject).await
    }

    /// The subject's data key read through `executor` (the pool, or a transaction's own
    /// connection); `None` when the subject was erased.
    async fn load_with<'e>(
        &self,
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        subject: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, InfraError> {
        let row = sqlx::query("SELECT wrapped FROM subject_keys WHERE subject = $1")
            .bind(subject)
            .fetch_optional(executor)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let wrapped: String = row.try_get("wrapped")?;
        let bytes = URL_SAFE_NO_PAD
            .decode(wrapped)
            .map_err(|_| corrupt("wrapped subject key is not base64url"))?;
        if bytes.len() < 24 {
            return Err(corrupt("wrapped subject key is too short"));
        }
        let (n, ct) = bytes.split_at(24);
        let aad = [WRAP_AAD, subject.as_bytes()].concat();
        let key = self
            .master
            .decrypt(XNonce::from_slice(n), Payload { msg: ct, aad: &aad })
            .map_err(|_| {
                corrupt(format!(
                    "the data key of {subject} does not open with this master key"
                ))
            })?;
        Ok(Some(Zeroizing::new(key)))
    }

    /// The subject's data key, created on first use.
    async fn key(&self, subject: &str) -> Result<Zeroizing<Vec<u8>>, InfraError> {
        if let Some(k) = self.load(subject).await? {
            return Ok(k);
        }
        let mut key = Zeroizing::new(vec![0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key);
        let n = nonce();
        let aad = [WRAP_AAD, subject.as_bytes()].concat();
        let ct = self
            .master
            .encrypt(
                XNonce::from_slice(&n),
                Payload {
                    msg: &key,
                    aad: &aad,
                },
            )
            .map_err(|_| corrupt("wrapping failed"))?;
        let wrapped = URL_SAFE_NO_PAD.encode([&n[..], &ct].concat());
        sqlx::query(
            "INSERT INTO subject_keys (subject, wrapped, created_at) VALUES ($1, $2, $3) ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(wrapped)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&self.db.pool)
        .await?;
        // Another process may have won the race: use whatever is stored.
        self.load(subject)
            .await?
            .ok_or_else(|| corrupt(format!("the data key of {subject} vanished")))
    }

    /// Encrypts `field` (its name is authenticated, so fields cannot be swapped) for `subject`.
    pub async fn seal(
        &self,
        subject: &str,
        field: &str,
        plaintext: &[u8],
    ) -> Result<Sealed, InfraError> {
        let key = self.key(subject).await?;
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        let n = nonce();
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&n),
                Payload {
                    msg: plaintext,
                    aad: &field_aad(subject, field),
                },
            )
            .map_err(|_| corrupt("sealing failed"))?;
        Ok(Sealed {
            subject: subject.to_owned(),
            nonce: URL_SAFE_NO_PAD.encode(n),
            ciphertext: URL_SAFE_NO_PAD.encode(ct),
        })
    }

    /// Decrypts a sealed field; `None` when the subject was erased (its key is gone).
    pub async fn open(
        &self,
        sealed: &Sealed,
        field: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, InfraError> {
        match self.load(&sealed.subject).await? {
            None => Ok(None),
            Some(key) => open_with(&key, sealed, field).map(Some),
        }
    }

    /// As [`open_text`](Self::open_text), reading the data key through `conn` (a read model's
    /// own transaction): a projection that holds SQLite's write lock must not wait for a
    /// second pooled connection, which the writers queued behind that lock may all hold.
    pub async fn open_text_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        sealed: &Sealed,
        field: &str,
    ) -> Result<Option<String>, InfraError> {
        match self.load_with(&mut *conn, &sealed.subject).await? {
            None => Ok(None),
            Some(key) => text(open_with(&key, sealed, field)?, field).map(Some),
        }
    }

    /// As [`open`](Self::open), as UTF-8 text.
    pub async fn open_text(
        &self,
        sealed: &Sealed,
        field: &str,
    ) -> Result<Option<String>, InfraError> {
        match self.open(sealed, field).await? {
            None => Ok(None),
            Some(bytes) => text(bytes, field).map(Some),
        }
    }

    /// Destroys the subject's data key. Irreversible by design.
    pub async fn erase(&self, subject: &str) -> Result<(), InfraError> {
        sqlx::query("DELETE FROM subject_keys WHERE subject = $1")
            .bind(subject)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}

/// Consecutive failed sign-ins per account, and the lockout they cause.
#[derive(Clone)]
pub struct SignInThrottle {
    db: Database,
}

/// The lockout rule: this many failures within the window lock the account for the window.
pub const MAX_FAILURES: i64 = 5;
pub const LOCKOUT_SECONDS: i64 = 15 * 60;

impl SignInThrottle {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Until when `account` is locked, if it is at `now`.
    pub async fn locked_until(
        &self,
        account: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, InfraError> {
        let row = sqlx::query("SELECT locked_until FROM sign_in_throttle WHERE account = $1")
            .bind(account)
            .fetch_optional(&self.db.pool)
            .await?;
        let until: Option<String> = match row {
            Some(r) => r.try_get("locked_until")?,
            None => None,
        };
        Ok(until
            .and_then(|u| chrono::DateTime::parse_from_rfc3339(&u).ok())
            .map(|u| u.with_timezone(&chrono::Utc))
            .filter(|u| *u > now))
    }

    /// Counts a failure; returns the lock's end if this failure locked the account.
    pub async fn failure(
        &self,
        account: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, InfraError> {
        let mut tx = self.db.begin_update("sign_in_throttle").await?;
        let row =
            sqlx::query("SELECT failures, first_failure FROM sign_in_throttle WHERE account = $1")
                .bind(account)
                .fetch_optional(&mut *tx)
                .await?;
        let window = chrono::Duration::seconds(LOCKOUT_SECONDS);
        let (failures, first) = match row {
            Some(r) => {
                let first: String = r.try_get("first_failure")?;
                let first = chrono::DateTime::parse_from_rfc3339(&first)
                    .map(|f| f.with_timezone(&chrono::Utc))
                    .unwrap_or(now);
                if now - first > window {
                    (1, now)
                } else {
                    (r.try_get::<i64, _>("failures")? + 1, first)
                }
            }
            None => (1, now),
        };
        let locked = (failures >= MAX_FAILURES).then(|| now + window);
        sqlx::query("DELETE FROM sign_in_throttle WHERE account = $1")
            .bind(account)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sign_in_throttle (account, failures, first_failure, locked_until) VALUES ($1, $2, $3, $4)",
        )
        .bind(account)
        .bind(if locked.is_some() { 0 } else { failures })
        .bind(first.to_rfc3339())
        .bind(locked.map(|l| l.to_rfc3339()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(locked)
    }

    /// Failed sign-ins of `account` in the current window (0 once it locked or succeeded).
    pub async fn recent_failures(
        &self,
        account: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<i64, InfraError> {
        let row =
            sqlx::query("SELECT failures, first_failure FROM sign_in_throttle WHERE account = $1")
                .bind(account)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some(r) = row else { return Ok(0) };
        let first: String = r.try_get("first_failure")?;
        let recent = chrono::DateTime::parse_from_rfc3339(&first)
            .map(|f| {
                now - f.with_timezone(&chrono::Utc) <= chrono::Duration::seconds(LOCKOUT_SECONDS)
            })
            .unwrap_or(false);
        Ok(if recent { r.try_get("failures")? } else { 0 })
    }

    /// A success clears the count.
    pub async fn success(&self, account: &str) -> Result<(), InfraError> {
        sqlx::query("DELETE FROM sign_in_throttle WHERE account = $1")
            .bind(account)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod blind_index_tests {
    use super::hmac_sha256;
    use hmac::Mac as _;

    /// The zero-padded block key is HMAC with the 32-byte key itself (RFC 2104 pads it so).
    #[test]
    fn the_padded_key_is_the_plain_hmac() {
        let key = [7u8; 32];
        let mut plain = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        plain.update(b"emails.value\0a@example.com");
        let expected: [u8; 32] = plain.finalize().into_bytes().into();
        assert_eq!(
            hmac_sha256(&key, &[b"emails.value", b"\0", b"a@example.com"]),
            expected
        );
        assert_ne!(
            hmac_sha256(&[8u8; 32], &[b"emails.value\0a@example.com"]),
            expected
        );
    }
}

#[cfg(test)]
mod sealing_tests {
    use super::*;

    async fn keys() -> SubjectKeys {
        let dir =
            std::env::temp_dir().join(format!("quantus-subject-keys-{}", uuid::Uuid::now_v7()));
        SubjectKeys::new(Database::open(None, &dir).await.unwrap(), &[7u8; 32])
    }

    /// A sealed field opens to what was sealed through the pool and through a transaction's
    /// own connection alike, only under its own field name, and never once the subject is
    /// erased.
    #[tokio::test]
    async fn a_sealed_field_opens_under_its_name_until_the_subject_is_erased() {
        let keys = keys().await;
        let sealed = keys.seal("u1", "email", b"a@example.com").await.unwrap();
        assert_eq!(
            keys.open_text(&sealed, "email").await.unwrap().as_deref(),
            Some("a@example.com")
        );
        let on_connection = |field: &'static str| {
            let keys = &keys;
            let sealed = &sealed;
            async move {
                // A connection of its own, given back before the next pooled call.
                let mut conn = keys.db.pool.acquire().await.unwrap();
                keys.open_text_on(&mut conn, sealed, field).await
            }
        };
        assert_eq!(
            on_connection("email").await.unwrap().as_deref(),
            Some("a@example.com")
        );
        assert!(keys.open(&sealed, "name").await.is_err());
        assert!(on_connection("name").await.is_err());
        let swapped = Sealed {
            subject: "u2".into(),
            ..sealed.clone()
        };
        keys.seal("u2", "email", b"b@example.com").await.unwrap();
        assert!(keys.open(&swapped, "email").await.is_err());

        keys.erase("u1").await.unwrap();
        assert!(keys.open(&sealed, "email").await.unwrap().is_none());
        assert_eq!(on_connection("email").await.unwrap(), None);
    }
}
