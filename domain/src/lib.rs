//! The pure core of Quantus: event envelopes, the hash chain, aggregates and their rules.
//!
//! Invariant: nothing in this crate performs I/O or reads a clock or a random source.
//! Time and identifiers arrive as values (see [`envelope::CommandContext`]).

// One folder per bounded context (`schema::BoundedContext`); the shared kernel (the envelope,
// the event macro and catalogue, the tenant `organization`) stays at the top.
pub mod audit;
pub mod commercial;
pub mod decision;
pub mod envelope;
pub mod events;
pub mod evidence;
pub mod identity;
pub mod index;
pub mod licensing;
pub mod organization;
pub mod schema;

pub use envelope::{Actor, ActorKind, CommandContext, Envelope, EnvelopeError, GENESIS_HASH};

/// Fingerprint of the sources that define aggregate states (computed by `build.rs`): a
/// snapshot saved under another fingerprint was made by code whose states may differ in shape
/// or meaning, and is not read.
pub const STATE_FINGERPRINT: &str = env!("QUANTUS_STATE_FINGERPRINT");
