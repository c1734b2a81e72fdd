//! The pure core of Quantus: event envelopes, the hash chain, aggregates and their rules.
//!
//! Invariant: nothing in this crate performs I/O or reads a clock or a random source.
//! Time and identifiers arrive as values (see [`envelope::CommandContext`]).

pub mod audit;
pub mod checkpoint;
pub mod crypto_policy;
pub mod envelope;
pub mod evidence;
pub mod identity;
pub mod job;
pub mod keyring;
pub mod license;
pub mod organization;
pub mod retention;
pub mod schema;

pub use envelope::{Actor, ActorKind, CommandContext, Envelope, EnvelopeError, GENESIS_HASH};
