//! Integration tests: one binary, so the workspace links once.
//!
//! Tests that need Postgres or Kafka start them through `scripts/postgres.sh` and
//! `scripts/kafka.sh` (idempotent) and fail loudly when that is impossible.

pub mod access;
mod aggregate_cache;
mod api;
mod architecture;
mod browser_consoles;
mod browser_pages;
mod browser_verify;
mod checkpoints;
mod compliance_export;
mod crypto_crosscheck;
mod deploy;
mod dpop;
mod embedded_log;
mod events_index;
pub mod evidence;
mod group_commit;
mod hardening;
mod harness;
mod hostile_input;
mod independent_auditor;
mod job_state;
mod license_cli;
pub mod mfa;
pub mod oidc_conformance;
mod openapi;
pub mod passkeys;
mod portal;
mod postgres_kafka;
pub mod qsa;
mod quantumlock;
mod range_verification;
mod readme;
mod saml;
mod schemas;
pub mod scim;
mod scim_search;
mod shedding;
mod stripe;
mod telemetry;
mod tenancy;
mod time_travel;
mod witness;
