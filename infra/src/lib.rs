//! The imperative shell: event store, log, relay to Kafka, credentials, configuration.
//!
//! Invariant: only this crate knows SQL and Kafka. Everything here is reached through the
//! types re-exported below; `domain` decides, `infra` stores and moves.

pub mod billing;
pub mod config;
pub mod console_sessions;
pub mod credentials;
pub mod db;
pub mod error;
pub mod event_store;
pub mod gateway;
pub mod group_commit;
pub mod idempotency;
pub mod kafka;
pub mod keystore;
pub mod log_tiles;
pub mod memory;
pub mod objects;
pub mod relay;
pub mod saml_keys;
pub mod subject_keys;
pub mod telemetry;
pub mod witness;

pub use config::{Config, HttpLimits, Role};
pub use db::{Database, Dialect};
pub use error::InfraError;
pub use event_store::{LogRecord, SqlEventRepository};
pub use group_commit::arriving;
