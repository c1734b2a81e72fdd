//! The pure core of Quantus: event envelopes, the hash chain, aggregates and their rules.
//!
//! Invariant: nothing in this crate performs I/O or reads a clock or a random source.
//! Time and identifiers arrive as values (see [`envelope::CommandContext`]).

pub mod audit;
pub mod checkpoint;
pub mod contract;
pub mod crypto_policy;
pub mod customer;
pub mod entitlement;
pub mod envelope;
pub mod events;
pub mod evidence;
pub mod identity;
pub mod invoice;
pub mod job;
pub mod keyring;
pub mod license;
pub mod money;
pub mod organization;
pub mod retention;
pub mod schema;
pub mod usage;

pub use envelope::{Actor, ActorKind, CommandContext, Envelope, EnvelopeError, GENESIS_HASH};

/// Fingerprint of the sources that define aggregate states (computed by `build.rs`): a
/// snapshot saved under another fingerprint was made by code whose states may differ in shape
/// or meaning, and is not read.
pub const STATE_FINGERPRINT: &str = env!("QUANTUS_STATE_FINGERPRINT");
