//! Licensing (QuantumLock): the keyring per signing purpose, the crypto policy (the
//! algorithm roadmap) and licences.

pub mod crypto_policy;
pub mod keyring;
pub mod license;
