//! Witnesses (C2SP tlog-witness), both sides.
//!
//! - [`Witness`]: a witness's home (`quantus witness serve`): its Ed25519 key, sealed in its own
//!   keystore, the logs it follows (origin -> the log's published key set) and, per log, the
//!   last tree it cosigned, in `witness-state.json`, replaced atomically before it signs.
//! - [`WitnessClient`]: the platform's side, posting `add-checkpoint` to a witness.
//! - [`Cosignatures`]: the cosignatures the platform gathered, beside its checkpoints
//!   (`checkpoint_cosignatures`). Not events: a witness's statement about the log is not a
//!   change to it, and recording it in the log would grow the tree it is about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use quantus_crypto::cosignature::{cosign, WitnessKey};
use quantus_crypto::keys::TrustedKeys;
use quantus_crypto::merkle::Hash;
use quantus_crypto::witness::{check, AddCheckpoint, Refusal};
use quantus_crypto::Algorithm;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::Mutex;

use crate::db::get_u64;
use crate::keystore::{generate, FileKeystore, Keystore};
use crate::{Database, InfraError};

/// The witness key's id in its keystore (kids are hex).
const KEY_ID: &str = "01";
/// Largest `add-checkpoint` body: 63 proof lines and a note with a few dozen signatures.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Head {
    size: u64,
    /// base64, as in checkpoints.
    root: String,
}

/// A witness: its key, the logs it follows and what it last cosigned of each.
pub struct Witness {
    key: WitnessKey,
    keystore: FileKeystore,
    logs: BTreeMap<String, TrustedKeys>,
    state_path: PathBuf,
    /// Serialises check -> persist -> sign, so two requests cannot both advance from one head.
    state: Mutex<BTreeMap<String, Head>>,
}

impl Witness {
    /// Opens (creating on first use) the witness in `dir`, named `name`, following `logs`.
    pub fn open(
        dir: &Path,
        name: &str,
        master_key_hex: Option<&str>,
        logs: BTreeMap<String, TrustedKeys>,
    ) -> Result<Self, InfraError> {
        std::fs::create_dir_all(dir)?;
        let keystore = FileKeystore::open(dir, master_key_hex)?;
        let public_path = dir.join("witness.pub");
        if !public_path.exists() {
            let secret = generate(Algorithm::Ed25519);
            keystore.seal(KEY_ID, &secret)?;
            std::fs::write(&public_path, hex::encode(&secret.public_key().bytes))?;
        }
        let public = hex::decode(std::fs::read_to_string(&public_path)?.trim())
            .map_err(|_| InfraError::Corrupt("witness.pub is not hex".into()))?;
        let key = WitnessKey::from_bytes(name, &public)
            .map_err(|e| InfraError::Config(format!("the witness key: {e}")))?;
        let state_path = dir.join("witness-state.json");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| InfraError::Corrupt(format!("witness-state.json: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            key,
            keystore,
            logs,
            state_path,
            state: Mutex::new(state),
        })
    }

    /// The witness's verifier key, what auditors configure.
    pub fn vkey(&self) -> String {
        self.key.vkey()
    }

    /// Answers one `add-checkpoint` request: the cosignature line, or why not.
    pub async fn add_checkpoint(
        &self,
        body: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<String, Refusal>, InfraError> {
        let request = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let Some(log_keys) = self.logs.get(request.origin()) else {
            return Ok(Err(Refusal::UnknownLog));
        };
        let mut state = self.state.lock().await;
        let known = match state.get(request.origin()) {
            Some(head) => Some((head.size, decode_root(&head.root)?)),
            None => None,
        };
        let checkpoint = match check(&request, known, log_keys, now) {
            Ok(c) => c,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if known.is_none_or(|(size, _)| checkpoint.size > size) {
            let mut next = state.clone();
            next.insert(
                checkpoint.origin.clone(),
                Head {
                    size: checkpoint.size,
                    root: STANDARD.encode(checkpoint.root),
                },
            );
            persist(&self.state_path, &next)?;
            *state = next;
        }
        let line = cosign(&self.key, &checkpoint, now, |message| {
            let signature = self.keystore.sign_jose(KEY_ID, message)?;
            signature
                .try_into()
                .map_err(|_| InfraError::Corrupt("an Ed25519 signature is 64 bytes".into()))
        })?;
        Ok(Ok(line))
    }
}

fn decode_root(text: &str) -> Result<Hash, InfraError> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| InfraError::Corrupt("witness-state.json: a root is not 32 bytes".into()))
}

/// Writes the state to a new file, syncs it and renames it over the old one: a crash leaves
/// either the old state or the new, never half of one.
fn persist(path: &Path, state: &BTreeMap<String, Head>) -> Result<(), InfraError> {
    use std::io::Write as _;
    let temp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(
        &serde_json::to_vec_pretty(state).map_err(|e| InfraError::Corrupt(e.to_string()))?,
    )?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A witness the platform submits its checkpoints to (`QUANTUS_WITNESSES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessEndpoint {
    pub key: WitnessKey,
    /// Its submission prefix: requests go to `<url>/add-checkpoint`.
    pub url: String,
}

impl WitnessEndpoint {
    /// Parses `<vkey>@<url>` (a vkey has no `@`).
    pub fn parse(text: &str) -> Result<Self, InfraError> {
        let (vkey, url) = text.trim().split_once('@').ok_or_else(|| {
            InfraError::Config(format!("a witness is <vkey>@<url>, not {text:?}"))
        })?;
        let key = WitnessKey::from_vkey(vkey)
            .map_err(|e| InfraError::Config(format!("witness {vkey:?}: {e}")))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(InfraError::Config(format!(
                "witness {}: its URL must be http(s), not {url:?}",
                key.name
            )));
        }
        Ok(Self {
            key,
            url: url.to_owned(),
        })
    }
}

/// A witness's answer to `add-checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Its signature lines.
    Cosigned(String),
    /// 409: the size it last cosigned.
    Conflict(u64),
    /// Any other refusal: status and body.
    Refused(u16, String),
}

/// The platform's HTTP client for witnesses.
#[derive(Clone, Default)]
pub struct WitnessClient {
    http: reqwest::Client,
}

impl WitnessClient {
    /// Posts one `add-checkpoint` request to the witness at `url` (its submission prefix; the
    /// request goes to `<url>/add-checkpoint`).
    pub async fn submit(
        &self,
        url: &str,
        request: &AddCheckpoint,
    ) -> Result<Submitted, InfraError> {
        submit(&self.http, url, request).await
    }
}

async fn submit(
    client: &reqwest::Client,
    url: &str,
    request: &AddCheckpoint,
) -> Result<Submitted, InfraError> {
    let response = client
        .post(format!("{}/add-checkpoint", url.trim_end_matches('/')))
        .timeout(Duration::from_secs(10))
        .body(request.encode())
        .send()
        .await
        .map_err(|e| InfraError::Unreachable(format!("witness {url}: {e}")))?;
    let status = response.status().as_u16();
    // Bounded: a witness answers a few lines.
    let bytes = response
        .bytes()
        .await
        .map_err(|e| InfraError::Unreachable(format!("witness {url}: {e}")))?;
    let body = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_REQUEST_BYTES)]).into_owned();
    Ok(match status {
        200 => Submitted::Cosigned(body),
        409 => match body.trim().parse() {
            Ok(size) => Submitted::Conflict(size),
            Err(_) => Submitted::Refused(409, body),
        },
        other => Submitted::Refused(other, body),
    })
}

/// One stored cosignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCosignature {
    pub tree_size: u64,
    /// The checkpoint note the witness cosigned, as the log signed it: kept with the
    /// cosignature so that the pair proves a tree size even if the log is later cut short.
    pub checkpoint: String,
    pub witness: String,
    pub line: String,
    pub cosigned_at: DateTime<Utc>,
}

/// The cosignatures gathered for the platform's checkpoints.
#[derive(Clone)]
pub struct Cosignatures {
    db: Database,
}

impl Cosignatures {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Keeps a witness's newest cosignature of a tree size.
    pub async fn record(&self, c: &StoredCosignature) -> Result<(), InfraError> {
        sqlx::query(
            "INSERT INTO checkpoint_cosignatures (tree_size, checkpoint, witness, line, cosigned_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tree_size, witness) DO UPDATE
             SET line = excluded.line, cosigned_at = excluded.cosigned_at
             WHERE excluded.cosigned_at > checkpoint_cosignatures.cosigned_at",
        )
        .bind(c.tree_size as i64)
        .bind(&c.checkpoint)
        .bind(&c.witness)
        .bind(&c.line)
        .bind(c.cosigned_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Every stored cosignature, by tree size.
    pub async fn all(&self) -> Result<Vec<StoredCosignature>, InfraError> {
        self.select("SELECT tree_size, checkpoint, witness, line, cosigned_at FROM checkpoint_cosignatures ORDER BY tree_size, witness", &[]).await
    }

    /// The cosignatures of one tree size.
    pub async fn of(&self, tree_size: u64) -> Result<Vec<StoredCosignature>, InfraError> {
        self.select("SELECT tree_size, checkpoint, witness, line, cosigned_at FROM checkpoint_cosignatures WHERE tree_size = $1 ORDER BY witness", &[tree_size]).await
    }

    /// The cosignatures of tree sizes in `from..=to`.
    pub async fn between(&self, from: u64, to: u64) -> Result<Vec<StoredCosignature>, InfraError> {
        self.select("SELECT tree_size, checkpoint, witness, line, cosigned_at FROM checkpoint_cosignatures WHERE tree_size >= $1 AND tree_size <= $2 ORDER BY tree_size, witness", &[from, to.min(i64::MAX as u64)]).await
    }

    /// The newest cosignature each witness gave.
    pub async fn latest_by_witness(
        &self,
    ) -> Result<BTreeMap<String, StoredCosignature>, InfraError> {
        let mut latest = BTreeMap::new();
        for c in self.all().await? {
            latest.insert(c.witness.clone(), c);
        }
        Ok(latest)
    }

    async fn select(&self, sql: &str, sizes: &[u64]) -> Result<Vec<StoredCosignature>, InfraError> {
        let mut query = sqlx::query(sql);
        for size in sizes {
            query = query.bind(i64::try_from(*size).unwrap_or(i64::MAX));
        }
        query
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|row| {
                let at: String = row.try_get("cosigned_at")?;
                Ok(StoredCosignature {
                    tree_size: get_u64(row, "tree_size")?,
                    checkpoint: row.try_get("checkpoint")?,
                    witness: row.try_get("witness")?,
                    line: row.try_get("line")?,
                    cosigned_at: DateTime::parse_from_rfc3339(&at)
                        .map_err(|e| InfraError::Corrupt(format!("cosigned_at: {e}")))?
                        .with_timezone(&Utc),
                })
            })
            .collect()
    }
}
