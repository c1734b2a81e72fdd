//! The crypto policy (algorithm roadmap): which algorithms may sign, and which may still verify
//! and until when. Changed only by events, so every verifier decision can be traced to them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use quantus_crypto::keys::{CryptoPolicy as PublishedPolicy, Purpose, VerifyRule};
use quantus_crypto::Algorithm;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

/// The one policy's aggregate id.
pub const POLICY_ID: &str = "crypto-policy";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoPolicyCommand {
    SetRule {
        algorithm: Algorithm,
        may_sign: bool,
        may_verify: bool,
        verify_until: Option<DateTime<Utc>>,
    },
    /// Keys of `purpose` are made with `algorithm`, whatever the platform's signing list says.
    /// Only access and ID tokens may use a classical algorithm (see [`CLASSICAL_ALLOWED`]).
    SetPurposeSigner {
        purpose: Purpose,
        algorithm: Algorithm,
    },
}

/// Purposes whose keys may be classical. Tokens: JOSE registers no post-quantum algorithm yet,
/// so OIDC clients can only check EdDSA/ES256/RS256; a token lives minutes, and forging one
/// needs a quantum computer *while it is valid*, so harvest-now-forge-later does not apply.
/// Licences, evidence and checkpoints must stay verifiable for years: they stay post-quantum.
pub const CLASSICAL_ALLOWED: [Purpose; 1] = [Purpose::Token];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmRuleSet {
    pub algorithm: Algorithm,
    pub may_sign: bool,
    pub may_verify: bool,
    /// Verification stops being allowed at this instant.
    #[schemars(with = "Option<String>")]
    pub verify_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurposeSignerSet {
    pub purpose: Purpose,
    pub algorithm: Algorithm,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum CryptoPolicyEvent for "CryptoPolicy" {
        AlgorithmRuleSet(AlgorithmRuleSet),
        PurposeSignerSet(PurposeSignerSet),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoPolicyError {
    #[error("an algorithm that may sign must also verify, without an end date")]
    SignWithoutVerify,
    #[error("at least one algorithm must remain allowed to sign")]
    NothingLeftToSign,
    #[error("{0} cannot sign for Quantus: it is not post-quantum")]
    NotPostQuantum(Algorithm),
    #[error(
        "{algorithm} cannot sign {purpose:?} documents: only tokens may use a classical algorithm"
    )]
    ClassicalNotAllowed {
        purpose: Purpose,
        algorithm: Algorithm,
    },
    #[error("{0} cannot sign tokens: JOSE clients verify only Ed25519 (EdDSA) from Quantus")]
    NotJose(Algorithm),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub may_sign: bool,
    pub may_verify: bool,
    pub verify_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CryptoPolicy {
    pub rules: BTreeMap<Algorithm, Rule>,
    /// Per-purpose signing algorithms that override the platform's signing list.
    #[serde(default)]
    pub purpose_signers: BTreeMap<Purpose, Algorithm>,
}

impl CryptoPolicy {
    /// The policy as verifiers read it (`GET /v1/crypto/policy`, key sets).
    pub fn published(&self) -> PublishedPolicy {
        PublishedPolicy {
            sign: self
                .rules
                .iter()
                .filter(|(_, r)| r.may_sign)
                .map(|(a, _)| *a)
                .collect(),
            verify: self
                .rules
                .iter()
                .filter(|(_, r)| r.may_verify)
                .map(|(a, r)| VerifyRule {
                    alg: *a,
                    until: r.verify_until,
                })
                .collect(),
        }
    }

    pub fn may_sign(&self, algorithm: Algorithm) -> bool {
        self.rules.get(&algorithm).is_some_and(|r| r.may_sign)
    }

    /// Whether a key of `purpose` with `algorithm` may sign now.
    pub fn may_sign_for(&self, purpose: Purpose, algorithm: Algorithm) -> bool {
        match self.purpose_signers.get(&purpose) {
            Some(a) => *a == algorithm,
            None => self.may_sign(algorithm),
        }
    }

    /// The algorithm a new key of `purpose` gets.
    pub fn signer_for(&self, purpose: Purpose) -> Option<Algorithm> {
        self.purpose_signers
            .get(&purpose)
            .copied()
            .or_else(|| self.published().sign.first().copied())
    }

    fn decide(
        &self,
        command: CryptoPolicyCommand,
    ) -> Result<Vec<CryptoPolicyEvent>, CryptoPolicyError> {
        let (algorithm, may_sign, may_verify, verify_until) = match command {
            CryptoPolicyCommand::SetRule {
                algorithm,
                may_sign,
                may_verify,
                verify_until,
            } => (algorithm, may_sign, may_verify, verify_until),
            CryptoPolicyCommand::SetPurposeSigner { purpose, algorithm } => {
                if !algorithm.is_post_quantum() && !CLASSICAL_ALLOWED.contains(&purpose) {
                    return Err(CryptoPolicyError::ClassicalNotAllowed { purpose, algorithm });
                }
                if purpose == Purpose::Token && algorithm != Algorithm::Ed25519 {
                    return Err(CryptoPolicyError::NotJose(algorithm));
                }
                if self.purpose_signers.get(&purpose) == Some(&algorithm) {
                    return Ok(vec![]);
                }
                let event =
                    CryptoPolicyEvent::PurposeSignerSet(PurposeSignerSet { purpose, algorithm });
                return Ok(vec![event]);
            }
        };
        if may_sign && (!may_verify || verify_until.is_some()) {
            return Err(CryptoPolicyError::SignWithoutVerify);
        }
        if may_sign && !algorithm.is_post_quantum() {
            return Err(CryptoPolicyError::NotPostQuantum(algorithm));
        }
        let others_sign = self
            .rules
            .iter()
            .any(|(a, r)| *a != algorithm && r.may_sign);
        if !may_sign && !others_sign {
            return Err(CryptoPolicyError::NothingLeftToSign);
        }
        let rule = Rule {
            may_sign,
            may_verify,
            verify_until,
        };
        if self.rules.get(&algorithm) == Some(&rule) {
            return Ok(vec![]); // Already so.
        }
        let event = CryptoPolicyEvent::AlgorithmRuleSet(AlgorithmRuleSet {
            algorithm,
            may_sign,
            may_verify,
            verify_until,
        });
        Ok(vec![event])
    }
}

impl Aggregate for CryptoPolicy {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = CryptoPolicyCommand;
    type Event = CryptoPolicyEvent;
    type Error = CryptoPolicyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        let e = match event {
            CryptoPolicyEvent::AlgorithmRuleSet(e) => e,
            CryptoPolicyEvent::PurposeSignerSet(e) => {
                self.purpose_signers.insert(e.purpose, e.algorithm);
                return;
            }
        };
        self.rules.insert(
            e.algorithm,
            Rule {
                may_sign: e.may_sign,
                may_verify: e.may_verify,
                verify_until: e.verify_until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn set(algorithm: Algorithm, may_sign: bool, may_verify: bool) -> CryptoPolicyCommand {
        CryptoPolicyCommand::SetRule {
            algorithm,
            may_sign,
            may_verify,
            verify_until: None,
        }
    }
    fn event(algorithm: Algorithm, may_sign: bool, may_verify: bool) -> CryptoPolicyEvent {
        CryptoPolicyEvent::AlgorithmRuleSet(AlgorithmRuleSet {
            algorithm,
            may_sign,
            may_verify,
            verify_until: None,
        })
    }

    #[test]
    fn the_roadmap_keeps_one_post_quantum_signer() {
        TestFramework::<CryptoPolicy>::with(())
            .given_no_previous_events()
            .when(set(Algorithm::MlDsa65Ed25519, true, true))
            .then_expect_events(vec![event(Algorithm::MlDsa65Ed25519, true, true)]);
        TestFramework::<CryptoPolicy>::with(())
            .given_no_previous_events()
            .when(set(Algorithm::MlDsa87, false, true))
            .then_expect_error(CryptoPolicyError::NothingLeftToSign);
        TestFramework::<CryptoPolicy>::with(())
            .given(vec![event(Algorithm::MlDsa65Ed25519, true, true)])
            .when(set(Algorithm::MlDsa65Ed25519, false, true))
            .then_expect_error(CryptoPolicyError::NothingLeftToSign);
        TestFramework::<CryptoPolicy>::with(())
            .given(vec![event(Algorithm::MlDsa65Ed25519, true, true)])
            .when(set(Algorithm::Ed25519, true, true))
            .then_expect_error(CryptoPolicyError::NotPostQuantum(Algorithm::Ed25519));
        TestFramework::<CryptoPolicy>::with(())
            .given(vec![event(Algorithm::MlDsa65Ed25519, true, true)])
            .when(set(Algorithm::MlDsa87, true, false))
            .then_expect_error(CryptoPolicyError::SignWithoutVerify);
    }

    #[test]
    fn only_tokens_may_be_signed_classically_and_only_with_ed25519() {
        let signer =
            |purpose, algorithm| CryptoPolicyCommand::SetPurposeSigner { purpose, algorithm };
        TestFramework::<CryptoPolicy>::with(())
            .given(vec![event(Algorithm::MlDsa65Ed25519, true, true)])
            .when(signer(Purpose::Token, Algorithm::Ed25519))
            .then_expect_events(vec![CryptoPolicyEvent::PurposeSignerSet(
                PurposeSignerSet {
                    purpose: Purpose::Token,
                    algorithm: Algorithm::Ed25519,
                },
            )]);
        TestFramework::<CryptoPolicy>::with(())
            .given_no_previous_events()
            .when(signer(Purpose::License, Algorithm::Ed25519))
            .then_expect_error(CryptoPolicyError::ClassicalNotAllowed {
                purpose: Purpose::License,
                algorithm: Algorithm::Ed25519,
            });
        TestFramework::<CryptoPolicy>::with(())
            .given_no_previous_events()
            .when(signer(Purpose::Token, Algorithm::MlDsa65))
            .then_expect_error(CryptoPolicyError::NotJose(Algorithm::MlDsa65));
        let mut p = CryptoPolicy::default();
        p.apply(event(Algorithm::MlDsa65Ed25519, true, true));
        p.apply(CryptoPolicyEvent::PurposeSignerSet(PurposeSignerSet {
            purpose: Purpose::Token,
            algorithm: Algorithm::Ed25519,
        }));
        assert!(p.may_sign_for(Purpose::Token, Algorithm::Ed25519));
        assert!(!p.may_sign_for(Purpose::Token, Algorithm::MlDsa65Ed25519));
        assert!(!p.may_sign_for(Purpose::License, Algorithm::Ed25519));
        assert_eq!(
            p.signer_for(Purpose::Evidence),
            Some(Algorithm::MlDsa65Ed25519)
        );
        assert_eq!(p.signer_for(Purpose::Token), Some(Algorithm::Ed25519));
    }

    #[test]
    fn the_published_policy_lists_signers_and_verifiers() {
        let mut p = CryptoPolicy::default();
        p.apply(event(Algorithm::MlDsa65Ed25519, true, true));
        p.apply(event(Algorithm::MlDsa87, false, true));
        p.apply(event(Algorithm::Ed25519, false, false));
        let published = p.published();
        assert_eq!(published.sign, vec![Algorithm::MlDsa65Ed25519]);
        assert_eq!(published.verify.len(), 2);
        assert!(p.may_sign(Algorithm::MlDsa65Ed25519) && !p.may_sign(Algorithm::MlDsa87));
    }
}
