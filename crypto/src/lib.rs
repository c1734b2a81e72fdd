//! Quantus signatures and signed documents, verifiable offline.
//!
//! No async runtime, no network, no clock, no random source: callers pass the time and the
//! randomness in. This crate is what a customer embeds to check a licence file on an
//! air-gapped machine.
//!
//! - [`algorithm`]: Ed25519, ML-DSA-44/65/87 (FIPS 204, with context strings) and the composite
//!   ML-DSA-65 + Ed25519 of draft-ietf-lamps-pq-composite-sigs-19.
//! - [`document`]: a canonical JSON payload (RFC 8785) with a list of signatures.
//! - [`evidence`]: evidence bundles (signed manifests with inclusion proofs), DSSE, in-toto.
//! - [`job_state`]: the submitter's roles and licences at job time, proven from the log.
//! - [`instant`]: the range of instants accepted, and overflow-free arithmetic on them.
//! - [`keys`]: the published key set and crypto policy a verifier trusts.
//! - [`license`]: licence files and CRLs, and [`license::verify`].
//! - [`checkpoint`]: signed log checkpoints (C2SP signed-note format).
//! - [`cosignature`]: witness cosignatures on checkpoints (C2SP tlog-cosignature).
//! - [`witness`]: the witness's `add-checkpoint` request and rule (C2SP tlog-witness).
//! - [`merkle`]: RFC 9162 Merkle trees, inclusion and consistency proofs (log checkpoints).

pub mod algorithm;
pub mod checkpoint;
pub mod cosignature;
pub mod document;
pub mod evidence;
pub mod instant;
pub mod job_state;
pub mod keys;
pub mod license;
pub mod merkle;
pub mod tiles;
pub mod witness;

pub use algorithm::{Algorithm, PublicKey, SecretKey, SignatureError};
