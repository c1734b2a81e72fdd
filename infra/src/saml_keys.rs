//! The SAML identity provider's RSA signing keys, sealed at rest.
//!
//! SAML relying parties verify with XML Signature, whose deployed algorithms are RSA and ECDSA;
//! the platform's post-quantum keys do not apply. These keys are therefore kept apart from the
//! [`Keystore`](crate::keystore::Keystore) (whose keys are seeds of the crypto policy's
//! algorithms): an RSA-3072 key per kid, its PKCS#8 encoding sealed with XChaCha20-Poly1305
//! under the same master key (associated data: a label and the kid, so a sealed key cannot be
//! moved under another kid), in the table `saml_signing_keys`. Only the certificate (public)
//! goes into the log (`SamlSigningKeyAdded`). The key is opened for each signature and dropped
//! (zeroized) right after.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use rand::RngCore;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::OnceCell;

use crate::{Database, InfraError};

/// RSA modulus size of new SAML keys.
pub const RSA_BITS: usize = 3072;
/// How long a SAML signing certificate is valid (SAML metadata trusts the key, not the dates,
/// but some SPs check them).
pub const CERTIFICATE_DAYS: u64 = 3650;

const AAD_PREFIX: &[u8] = b"quantus-saml-key/v1\0";

fn corrupt(what: impl Into<String>) -> InfraError {
    InfraError::Corrupt(what.into())
}

/// A freshly made key's public side.
#[derive(Debug, Clone)]
pub struct NewSamlKey {
    pub kid: String,
    /// The self-signed certificate, DER.
    pub certificate: Vec<u8>,
}

#[derive(Clone)]
pub struct SamlKeys {
    db: Database,
    cipher: XChaCha20Poly1305,
    schema: std::sync::Arc<OnceCell<()>>,
}

impl SamlKeys {
    pub fn new(db: Database, master: &[u8; 32]) -> Self {
        Self {
            db,
            cipher: XChaCha20Poly1305::new(master.into()),
            schema: std::sync::Arc::default(),
        }
    }

    async fn ensure_schema(&self) -> Result<(), InfraError> {
        self.schema
            .get_or_try_init(|| async {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS saml_signing_keys (
                        kid TEXT PRIMARY KEY,
                        sealed TEXT NOT NULL
                    )",
                )
                .execute(&self.db.pool)
                .await
                .map(|_| ())
            })
            .await?;
        Ok(())
    }

    /// Makes a new RSA key and its self-signed certificate (subject `CN=<common_name>`), and
    /// stores the key sealed. Key generation runs off the async threads.
    pub async fn generate(
        &self,
        common_name: &str,
        now: DateTime<Utc>,
    ) -> Result<NewSamlKey, InfraError> {
        self.ensure_schema().await?;
        let cn = common_name.to_owned();
        let (kid, certificate, pkcs8) = tokio::task::spawn_blocking(move || {
            let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
                .map_err(|e| corrupt(format!("RSA key generation failed: {e}")))?;
            let spki = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| corrupt(e.to_string()))?;
            let kid = hex::encode(&Sha256::digest(spki.as_bytes())[..16]);
            let certificate = self_signed(&key, &cn, now)?;
            let pkcs8 = key.to_pkcs8_der().map_err(|e| corrupt(e.to_string()))?;
            Ok::<_, InfraError>((kid, certificate, pkcs8))
        })
        .await
        .map_err(|e| corrupt(e.to_string()))??;
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: pkcs8.as_bytes(),
                    aad: &aad(&kid),
                },
            )
            .map_err(|_| corrupt("sealing failed"))?;
        let sealed = URL_SAFE_NO_PAD.encode([&nonce[..], &ct].concat());
        sqlx::query("INSERT INTO saml_signing_keys (kid, sealed) VALUES ($1, $2)")
            .bind(&kid)
            .bind(&sealed)
            .execute(&self.db.pool)
            .await?;
        Ok(NewSamlKey { kid, certificate })
    }

    async fn open(&self, kid: &str) -> Result<RsaPrivateKey, InfraError> {
        self.ensure_schema().await?;
        let row = sqlx::query("SELECT sealed FROM saml_signing_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| corrupt(format!("SAML key {kid} is not in the keystore")))?;
        let sealed: String = row.try_get("sealed")?;
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| corrupt("sealed SAML key is not base64url"))?;
        if bytes.len() < 24 {
            return Err(corrupt("sealed SAML key is too short"));
        }
        let (n, ct) = bytes.split_at(24);
        let der = zeroize::Zeroizing::new(
            self.cipher
                .decrypt(
                    XNonce::from_slice(n),
                    Payload {
                        msg: ct,
                        aad: &aad(kid),
                    },
                )
                .map_err(|_| {
                    corrupt(format!("SAML key {kid} does not open with this master key"))
                })?,
        );
        RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| corrupt(e.to_string()))
    }

    /// Indexes a service provider's entity id in its organization (entity ids are unique per
    /// organization, so the same SP may be registered by several).
    pub async fn index_entity(
        &self,
        entity_id: &str,
        organization_id: &str,
        provider_id: &str,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "INSERT INTO saml_entity_ids (entity_id, organization_id, provider_id) VALUES ($1, $2, $3) \
             ON CONFLICT (entity_id, organization_id) DO UPDATE SET provider_id = excluded.provider_id",
        )
        .bind(entity_id)
        .bind(organization_id)
        .bind(provider_id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The (organization, provider id) pairs that registered `entity_id`.
    pub async fn entity_providers(
        &self,
        entity_id: &str,
    ) -> Result<Vec<(String, String)>, InfraError> {
        let rows = sqlx::query(
            "SELECT organization_id, provider_id FROM saml_entity_ids WHERE entity_id = $1 ORDER BY organization_id",
        )
        .bind(entity_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("organization_id")?, r.try_get("provider_id")?)))
            .collect()
    }

    pub async fn unindex_entity(
        &self,
        entity_id: &str,
        organization_id: &str,
    ) -> Result<(), InfraError> {
        sqlx::query("DELETE FROM saml_entity_ids WHERE entity_id = $1 AND organization_id = $2")
            .bind(entity_id)
            .bind(organization_id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Remembers a request id of a service provider until `expires_at` (Unix seconds); false
    /// when it was already seen, i.e. a replay. Forgets the expired ones first.
    pub async fn remember_request_id(
        &self,
        provider_id: &str,
        request_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, InfraError> {
        sqlx::query("DELETE FROM saml_request_ids WHERE expires_at < $1")
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        let done = sqlx::query(
            "INSERT INTO saml_request_ids (provider_id, request_id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider_id, request_id) DO NOTHING",
        )
        .bind(provider_id)
        .bind(request_id)
        .bind(expires_at)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message` with key `kid`.
    pub async fn sign(&self, kid: &str, message: &[u8]) -> Result<Vec<u8>, InfraError> {
        let key = self.open(kid).await?;
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key);
        Ok(signer
            .try_sign(message)
            .map_err(|e| corrupt(e.to_string()))?
            .to_vec())
    }
}

fn aad(kid: &str) -> Vec<u8> {
    [AAD_PREFIX, kid.as_bytes()].concat()
}

/// A self-signed X.509 v3 certificate for `key` (sha256WithRSAEncryption).
fn self_signed(
    key: &RsaPrivateKey,
    common_name: &str,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, InfraError> {
    use std::str::FromStr as _;
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::der::Encode as _;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    use x509_cert::time::{Time, Validity};

    let e = |e: &dyn std::fmt::Display| corrupt(format!("certificate: {e}"));
    let cn: String = common_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .-:/".contains(*c))
        .take(64)
        .collect();
    let subject = Name::from_str(&format!("CN={cn}")).map_err(|x| e(&x))?;
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let serial = SerialNumber::new(&serial).map_err(|x| e(&x))?;
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(now.timestamp().max(0) as u64);
    let validity = Validity {
        not_before: Time::try_from(start).map_err(|x| e(&x))?,
        not_after: Time::try_from(start + Duration::from_secs(CERTIFICATE_DAYS * 86400))
            .map_err(|x| e(&x))?,
    };
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).map_err(|x| e(&x))?;
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone());
    // An end-entity signing certificate, self-issued: not a CA, key usage digitalSignature
    // and nonRepudiation (what XML Signature needs; `Profile::Root` would give only
    // keyCertSign and cRLSign, which strict SPs refuse for signing).
    let builder = CertificateBuilder::new(
        Profile::Leaf {
            issuer: subject.clone(),
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
        serial,
        validity,
        subject,
        spki,
        &signer,
    )
    .map_err(|x| e(&x))?;
    let cert = builder
        .build::<rsa::pkcs1v15::Signature>()
        .map_err(|x| e(&x))?;
    cert.to_der().map_err(|x| e(&x))
}
