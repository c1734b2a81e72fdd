//! TotpAuthenticator: a person's time-based one-time password second factor (RFC 6238), with
//! single-use recovery codes. One per user (aggregate id = the user's id).
//!
//! The seed is sealed with the user's data key (erasing the user shreds it). Each accepted
//! code records its time step, and a code is accepted only for a step later than the last one
//! accepted: the same code (or an older one) is never accepted twice. Recovery codes are
//! 128-bit random values, kept only as SHA-256 digests, each usable once.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Sealed;

use crate::decision::record_decision;

/// How many recovery codes an enrolment yields.
pub const RECOVERY_CODES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpEnrollmentStarted {
    pub user_id: String,
    /// The base32 seed, sealed with the user's data key.
    pub seed: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpEnrolled {
    /// The time step of the code that confirmed the enrolment.
    pub step: u64,
    /// SHA-256 (hex) of each recovery code.
    pub recovery_code_digests: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCodeAccepted {
    pub step: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpRecoveryCodeUsed {
    pub digest: String,
}

/// A new set of recovery codes replaces the unused ones (the old codes stop working).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpRecoveryCodesRegenerated {
    /// SHA-256 (hex) of each new recovery code.
    pub recovery_code_digests: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpRemoved {
    pub reason: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum TotpEvent for "TotpAuthenticator" {
        TotpEnrollmentStarted(TotpEnrollmentStarted),
        TotpEnrolled(TotpEnrolled),
        TotpCodeAccepted(TotpCodeAccepted),
        TotpRecoveryCodeUsed(TotpRecoveryCodeUsed),
        TotpRecoveryCodesRegenerated(TotpRecoveryCodesRegenerated),
        TotpRemoved(TotpRemoved),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TotpCommand {
    /// A new seed (replaces an unconfirmed one; refused while one is enrolled).
    Start {
        user_id: String,
        seed: Sealed,
    },
    /// The first valid code confirms the seed; the application has checked the code against
    /// the seed and passes the step it matched.
    Confirm {
        step: u64,
        recovery_code_digests: Vec<String>,
    },
    /// A valid code at `step` (checked by the application against the seed).
    Accept {
        step: u64,
    },
    UseRecoveryCode {
        digest: String,
    },
    /// Replaces every recovery code (only of an enrolled app).
    RegenerateRecoveryCodes {
        recovery_code_digests: Vec<String>,
    },
    Remove {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("no authenticator app is enrolled")]
    NotEnrolled,
    #[error("an authenticator app is already enrolled; remove it first")]
    AlreadyEnrolled,
    #[error("no enrolment was started")]
    NotStarted,
    #[error("this code was already used")]
    Replayed,
    #[error("this recovery code is not valid")]
    UnknownRecoveryCode,
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TotpStatus {
    #[default]
    Absent,
    Pending,
    Enrolled,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpAuthenticator {
    pub status: TotpStatus,
    pub user_id: String,
    pub seed: Option<Sealed>,
    /// The latest step accepted; only later steps are accepted.
    pub last_step: u64,
    pub unused_recovery_codes: BTreeSet<String>,
}

impl TotpAuthenticator {
    fn decide(&self, command: TotpCommand) -> Result<Vec<TotpEvent>, TotpError> {
        use TotpCommand as C;
        use TotpEvent as E;
        use TotpStatus as S;
        match (self.status, command) {
            (S::Enrolled, C::Start { .. }) => Err(TotpError::AlreadyEnrolled),
            (_, C::Start { user_id, seed }) => {
                Ok(vec![E::TotpEnrollmentStarted(TotpEnrollmentStarted {
                    user_id,
                    seed,
                })])
            }
            (S::Absent, C::Confirm { .. }) => Err(TotpError::NotStarted),
            (S::Enrolled, C::Confirm { .. }) => Err(TotpError::AlreadyEnrolled),
            (
                S::Pending,
                C::Confirm {
                    step,
                    recovery_code_digests,
                },
            ) => {
                check_digests(&recovery_code_digests)?;
                Ok(vec![E::TotpEnrolled(TotpEnrolled {
                    step,
                    recovery_code_digests,
                })])
            }
            (S::Enrolled, C::Accept { step }) => {
                if step <= self.last_step {
                    return Err(TotpError::Replayed);
                }
                Ok(vec![E::TotpCodeAccepted(TotpCodeAccepted { step })])
            }
            (S::Enrolled, C::UseRecoveryCode { digest }) => {
                if !self.unused_recovery_codes.contains(&digest) {
                    return Err(TotpError::UnknownRecoveryCode);
                }
                Ok(vec![E::TotpRecoveryCodeUsed(TotpRecoveryCodeUsed {
                    digest,
                })])
            }
            (
                S::Enrolled,
                C::RegenerateRecoveryCodes {
                    recovery_code_digests,
                },
            ) => {
                check_digests(&recovery_code_digests)?;
                Ok(vec![E::TotpRecoveryCodesRegenerated(
                    TotpRecoveryCodesRegenerated {
                        recovery_code_digests,
                    },
                )])
            }
            (
                S::Absent | S::Pending,
                C::Accept { .. } | C::UseRecoveryCode { .. } | C::RegenerateRecoveryCodes { .. },
            ) => Err(TotpError::NotEnrolled),
            (S::Absent, C::Remove { .. }) => Err(TotpError::NotEnrolled),
            (_, C::Remove { reason }) => Ok(vec![E::TotpRemoved(TotpRemoved {
                reason: reason.chars().take(500).collect(),
            })]),
        }
    }
}

/// A set of recovery codes is exactly [`RECOVERY_CODES`] distinct SHA-256 digests.
fn check_digests(recovery_code_digests: &[String]) -> Result<(), TotpError> {
    let unique: BTreeSet<&String> = recovery_code_digests.iter().collect();
    if recovery_code_digests.len() != RECOVERY_CODES
        || unique.len() != RECOVERY_CODES
        || recovery_code_digests
            .iter()
            .any(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(TotpError::Invalid(format!(
            "a set of recovery codes is {RECOVERY_CODES} distinct SHA-256 digests"
        )));
    }
    Ok(())
}

impl Aggregate for TotpAuthenticator {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = TotpCommand;
    type Event = TotpEvent;
    type Error = TotpError;
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
        match event {
            TotpEvent::TotpEnrollmentStarted(e) => {
                self.status = TotpStatus::Pending;
                self.user_id = e.user_id;
                self.seed = Some(e.seed);
                self.last_step = 0;
                self.unused_recovery_codes.clear();
            }
            TotpEvent::TotpEnrolled(e) => {
                self.status = TotpStatus::Enrolled;
                self.last_step = e.step;
                self.unused_recovery_codes = e.recovery_code_digests.into_iter().collect();
            }
            TotpEvent::TotpCodeAccepted(e) => self.last_step = e.step,
            TotpEvent::TotpRecoveryCodeUsed(e) => {
                self.unused_recovery_codes.remove(&e.digest);
            }
            TotpEvent::TotpRecoveryCodesRegenerated(e) => {
                self.unused_recovery_codes = e.recovery_code_digests.into_iter().collect();
            }
            TotpEvent::TotpRemoved(_) => {
                *self = TotpAuthenticator {
                    user_id: std::mem::take(&mut self.user_id),
                    ..Default::default()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use TotpCommand as C;
    use TotpEvent as E;

    type Spec = TestFramework<TotpAuthenticator>;

    fn seed() -> Sealed {
        Sealed {
            subject: "u1".into(),
            nonce: "n".into(),
            ciphertext: "c".into(),
        }
    }

    fn digests() -> Vec<String> {
        (0..RECOVERY_CODES).map(|i| format!("{i:064x}")).collect()
    }

    fn enrolled() -> Vec<E> {
        vec![
            E::TotpEnrollmentStarted(TotpEnrollmentStarted {
                user_id: "u1".into(),
                seed: seed(),
            }),
            E::TotpEnrolled(TotpEnrolled {
                step: 100,
                recovery_code_digests: digests(),
            }),
        ]
    }

    #[test]
    fn a_code_is_accepted_once_and_never_an_older_one() {
        Spec::with(())
            .given(enrolled())
            .when(C::Accept { step: 101 })
            .then_expect_events(vec![E::TotpCodeAccepted(TotpCodeAccepted { step: 101 })]);
        for replay in [100, 99] {
            Spec::with(())
                .given(enrolled())
                .when(C::Accept { step: replay })
                .then_expect_error(TotpError::Replayed);
        }
    }

    #[test]
    fn recovery_codes_are_single_use() {
        let d = digests()[3].clone();
        let mut used = enrolled();
        used.push(E::TotpRecoveryCodeUsed(TotpRecoveryCodeUsed {
            digest: d.clone(),
        }));
        Spec::with(())
            .given(enrolled())
            .when(C::UseRecoveryCode { digest: d.clone() })
            .then_expect_events(vec![E::TotpRecoveryCodeUsed(TotpRecoveryCodeUsed {
                digest: d.clone(),
            })]);
        Spec::with(())
            .given(used)
            .when(C::UseRecoveryCode { digest: d })
            .then_expect_error(TotpError::UnknownRecoveryCode);
    }

    #[test]
    fn enrolment_needs_a_started_seed_and_cannot_be_replaced_silently() {
        Spec::with(())
            .given_no_previous_events()
            .when(C::Confirm {
                step: 1,
                recovery_code_digests: digests(),
            })
            .then_expect_error(TotpError::NotStarted);
        Spec::with(())
            .given(enrolled())
            .when(C::Start {
                user_id: "u1".into(),
                seed: seed(),
            })
            .then_expect_error(TotpError::AlreadyEnrolled);
        Spec::with(())
            .given(enrolled()[..1].to_vec())
            .when(C::Accept { step: 5 })
            .then_expect_error(TotpError::NotEnrolled);
    }

    #[test]
    fn regenerated_recovery_codes_replace_the_old_ones() {
        let fresh: Vec<String> = (0..RECOVERY_CODES)
            .map(|i| format!("{:064x}", i + 100))
            .collect();
        let regenerated = E::TotpRecoveryCodesRegenerated(TotpRecoveryCodesRegenerated {
            recovery_code_digests: fresh.clone(),
        });
        Spec::with(())
            .given(enrolled())
            .when(C::RegenerateRecoveryCodes {
                recovery_code_digests: fresh.clone(),
            })
            .then_expect_events(vec![regenerated.clone()]);
        let mut after = enrolled();
        after.push(regenerated);
        Spec::with(())
            .given(after.clone())
            .when(C::UseRecoveryCode {
                digest: digests()[0].clone(),
            })
            .then_expect_error(TotpError::UnknownRecoveryCode);
        Spec::with(())
            .given(after)
            .when(C::UseRecoveryCode {
                digest: fresh[0].clone(),
            })
            .then_expect_events(vec![E::TotpRecoveryCodeUsed(TotpRecoveryCodeUsed {
                digest: fresh[0].clone(),
            })]);
        Spec::with(())
            .given(enrolled()[..1].to_vec())
            .when(C::RegenerateRecoveryCodes {
                recovery_code_digests: fresh,
            })
            .then_expect_error(TotpError::NotEnrolled);
        Spec::with(())
            .given(enrolled())
            .when(C::RegenerateRecoveryCodes {
                recovery_code_digests: vec!["00".into()],
            })
            .then_expect_error(TotpError::Invalid(format!(
                "a set of recovery codes is {RECOVERY_CODES} distinct SHA-256 digests"
            )));
    }
}
