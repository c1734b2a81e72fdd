//! Keyring: the signing keys of one purpose (licence, evidence, token, checkpoint).
//!
//! Only public halves and lifecycle facts are events; private keys live in the keystore and
//! never enter the log. Exactly one key of a keyring signs at a time; rotation activates a new
//! key while the old one keeps verifying until it is retired.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use quantus_crypto::keys::Purpose;
use quantus_crypto::{Algorithm, PublicKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringCommand {
    /// Records a key whose private half the keystore already holds.
    Generate {
        purpose: Purpose,
        kid: String,
        algorithm: Algorithm,
        public_key: Vec<u8>,
        not_before: DateTime<Utc>,
    },
    /// Makes a generated key the one that signs; the previous one keeps verifying.
    Activate { kid: String },
    /// The key verifies nothing from `at` on. An active key cannot be retired: rotate first.
    Retire { kid: String, at: DateTime<Utc> },
    /// Everything the key signed from `compromised_at` on is void; it never signs again.
    Compromise {
        kid: String,
        compromised_at: DateTime<Utc>,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyGenerated {
    pub kid: String,
    pub algorithm: Algorithm,
    pub purpose: Purpose,
    /// base64url without padding.
    pub public_key: String,
    #[schemars(with = "String")]
    pub not_before: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyActivated {
    pub kid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRotated {
    /// The key that signed until now and from now on only verifies.
    pub from_kid: String,
    pub to_kid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRetired {
    pub kid: String,
    #[schemars(with = "String")]
    pub retired_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCompromised {
    pub kid: String,
    #[schemars(with = "String")]
    pub compromised_at: DateTime<Utc>,
    pub reason: String,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KeyringEvent for "Keyring" {
        KeyGenerated(KeyGenerated),
        KeyActivated(KeyActivated),
        KeyRotated(KeyRotated),
        KeyRetired(KeyRetired),
        KeyCompromised(KeyCompromised),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("key {0} already exists")]
    DuplicateKey(String),
    #[error("kid {kid} does not match its public key (expected {expected})")]
    KidMismatch { kid: String, expected: String },
    #[error("public key: {0}")]
    BadPublicKey(String),
    #[error("key {0} belongs to the {1:?} keyring")]
    WrongPurpose(String, Purpose),
    #[error("no key {0}")]
    UnknownKey(String),
    #[error("key {0} is already active")]
    AlreadyActive(String),
    #[error("key {0} was compromised and can never sign")]
    Compromised(String),
    #[error("key {0} is retired")]
    Retired(String),
    #[error("key {0} signs now: rotate to another key before retiring it")]
    RetiringActiveKey(String),
    #[error("key {0} signed before; an old key cannot be made to sign again")]
    Reactivation(String),
    #[error("reason must be 1 to 500 characters")]
    BadReason,
}

impl KeyringError {
    pub fn is_validation(&self) -> bool {
        matches!(
            self,
            Self::KidMismatch { .. } | Self::BadPublicKey(_) | Self::BadReason
        )
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::UnknownKey(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    /// Generated, never signed yet.
    Pending,
    Active,
    /// Signed before, now only verifies.
    VerifyOnly,
    Retired,
    Compromised,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub algorithm: Algorithm,
    pub status: KeyStatus,
    /// base64url without padding.
    pub public_key: String,
    pub not_before: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    pub compromised_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    pub purpose: Option<Purpose>,
    pub keys: BTreeMap<String, KeyState>,
    pub active: Option<String>,
}

impl Keyring {
    /// The keys as a verifier trusts them.
    pub fn trusted_keys(&self) -> Vec<quantus_crypto::keys::TrustedKey> {
        let Some(purpose) = self.purpose else {
            return vec![];
        };
        self.keys
            .iter()
            .map(|(kid, k)| quantus_crypto::keys::TrustedKey {
                kid: kid.clone(),
                alg: k.algorithm,
                purpose,
                public_key: k.public_key.clone(),
                not_before: k.not_before,
                retired_at: k.retired_at,
                compromised_at: k.compromised_at,
            })
            .collect()
    }

    fn key(&self, kid: &str) -> Result<&KeyState, KeyringError> {
        self.keys
            .get(kid)
            .ok_or_else(|| KeyringError::UnknownKey(kid.to_owned()))
    }

    fn decide(&self, command: KeyringCommand) -> Result<Vec<KeyringEvent>, KeyringError> {
        use KeyringCommand as C;
        use KeyringEvent as E;
        match command {
            C::Generate {
                purpose,
                kid,
                algorithm,
                public_key,
                not_before,
            } => {
                if let Some(own) = self.purpose.filter(|p| *p != purpose) {
                    return Err(KeyringError::WrongPurpose(kid, own));
                }
                if self.keys.contains_key(&kid) {
                    return Err(KeyringError::DuplicateKey(kid));
                }
                let pk = PublicKey::new(algorithm, public_key)
                    .map_err(|e| KeyringError::BadPublicKey(e.to_string()))?;
                if pk.kid() != kid {
                    return Err(KeyringError::KidMismatch {
                        kid,
                        expected: pk.kid(),
                    });
                }
                use base64::Engine as _;
                Ok(vec![E::KeyGenerated(KeyGenerated {
                    kid,
                    algorithm,
                    purpose,
                    public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&pk.bytes),
                    not_before,
                })])
            }
            C::Activate { kid } => {
                match self.key(&kid)?.status {
                    KeyStatus::Pending => {}
                    KeyStatus::Active => return Err(KeyringError::AlreadyActive(kid)),
                    KeyStatus::VerifyOnly => return Err(KeyringError::Reactivation(kid)),
                    KeyStatus::Retired => return Err(KeyringError::Retired(kid)),
                    KeyStatus::Compromised => return Err(KeyringError::Compromised(kid)),
                }
                let mut events = vec![];
                if let Some(from_kid) = self.active.clone() {
                    events.push(E::KeyRotated(KeyRotated {
                        from_kid,
                        to_kid: kid.clone(),
                    }));
                }
                events.push(E::KeyActivated(KeyActivated { kid }));
                Ok(events)
            }
            C::Retire { kid, at } => match self.key(&kid)?.status {
                KeyStatus::Active => Err(KeyringError::RetiringActiveKey(kid)),
                KeyStatus::Retired => Err(KeyringError::Retired(kid)),
                _ => Ok(vec![E::KeyRetired(KeyRetired {
                    kid,
                    retired_at: at,
                })]),
            },
            C::Compromise {
                kid,
                compromised_at,
                reason,
            } => {
                let reason = reason.trim().to_owned();
                if reason.is_empty() || reason.chars().count() > 500 {
                    return Err(KeyringError::BadReason);
                }
                if self.key(&kid)?.status == KeyStatus::Compromised {
                    return Err(KeyringError::Compromised(kid));
                }
                Ok(vec![E::KeyCompromised(KeyCompromised {
                    kid,
                    compromised_at,
                    reason,
                })])
            }
        }
    }
}

impl Aggregate for Keyring {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = KeyringCommand;
    type Event = KeyringEvent;
    type Error = KeyringError;
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
        let set = |keys: &mut BTreeMap<String, KeyState>, kid: &str, status| {
            if let Some(k) = keys.get_mut(kid) {
                k.status = status;
            }
        };
        match event {
            KeyringEvent::KeyGenerated(e) => {
                self.purpose = Some(e.purpose);
                self.keys.insert(
                    e.kid,
                    KeyState {
                        algorithm: e.algorithm,
                        status: KeyStatus::Pending,
                        public_key: e.public_key,
                        not_before: e.not_before,
                        retired_at: None,
                        compromised_at: None,
                    },
                );
            }
            KeyringEvent::KeyRotated(e) => set(&mut self.keys, &e.from_kid, KeyStatus::VerifyOnly),
            KeyringEvent::KeyActivated(e) => {
                set(&mut self.keys, &e.kid, KeyStatus::Active);
                self.active = Some(e.kid);
            }
            KeyringEvent::KeyRetired(e) => {
                set(&mut self.keys, &e.kid, KeyStatus::Retired);
                if let Some(k) = self.keys.get_mut(&e.kid) {
                    k.retired_at = Some(e.retired_at);
                }
            }
            KeyringEvent::KeyCompromised(e) => {
                set(&mut self.keys, &e.kid, KeyStatus::Compromised);
                if let Some(k) = self.keys.get_mut(&e.kid) {
                    k.compromised_at = Some(e.compromised_at);
                }
                if self.active.as_deref() == Some(e.kid.as_str()) {
                    self.active = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use quantus_crypto::SecretKey;
    use KeyringCommand as C;
    use KeyringEvent as E;

    type Spec = TestFramework<Keyring>;

    fn t() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn key(n: u8) -> (String, Vec<u8>) {
        let pk = SecretKey::from_seed(Algorithm::MlDsa65Ed25519, &[n; 64])
            .unwrap()
            .public_key();
        (pk.kid(), pk.bytes)
    }

    fn generated(n: u8) -> E {
        use base64::Engine as _;
        let (kid, bytes) = key(n);
        E::KeyGenerated(KeyGenerated {
            kid,
            algorithm: Algorithm::MlDsa65Ed25519,
            purpose: Purpose::License,
            public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            not_before: t(),
        })
    }

    fn activated(n: u8) -> E {
        E::KeyActivated(KeyActivated { kid: key(n).0 })
    }

    #[test]
    fn a_key_is_recorded_with_its_public_half_only_and_must_match_its_kid() {
        let (kid, pk) = key(1);
        Spec::with(())
            .given_no_previous_events()
            .when(C::Generate {
                purpose: Purpose::License,
                kid: kid.clone(),
                algorithm: Algorithm::MlDsa65Ed25519,
                public_key: pk.clone(),
                not_before: t(),
            })
            .then_expect_events(vec![generated(1)]);
        Spec::with(())
            .given_no_previous_events()
            .when(C::Generate {
                purpose: Purpose::License,
                kid: "0".repeat(32),
                algorithm: Algorithm::MlDsa65Ed25519,
                public_key: pk.clone(),
                not_before: t(),
            })
            .then_expect_error(KeyringError::KidMismatch {
                kid: "0".repeat(32),
                expected: kid.clone(),
            });
        Spec::with(())
            .given(vec![generated(1)])
            .when(C::Generate {
                purpose: Purpose::License,
                kid: kid.clone(),
                algorithm: Algorithm::MlDsa65Ed25519,
                public_key: pk,
                not_before: t(),
            })
            .then_expect_error(KeyringError::DuplicateKey(kid));
    }

    #[test]
    fn activating_a_second_key_rotates_the_first() {
        Spec::with(())
            .given(vec![generated(1)])
            .when(C::Activate { kid: key(1).0 })
            .then_expect_events(vec![activated(1)]);
        Spec::with(())
            .given(vec![generated(1), activated(1), generated(2)])
            .when(C::Activate { kid: key(2).0 })
            .then_expect_events(vec![
                E::KeyRotated(KeyRotated {
                    from_kid: key(1).0,
                    to_kid: key(2).0,
                }),
                activated(2),
            ]);
    }

    #[test]
    fn old_retired_and_compromised_keys_never_sign_again() {
        let rotated = vec![
            generated(1),
            activated(1),
            generated(2),
            E::KeyRotated(KeyRotated {
                from_kid: key(1).0,
                to_kid: key(2).0,
            }),
            activated(2),
        ];
        Spec::with(())
            .given(rotated.clone())
            .when(C::Activate { kid: key(1).0 })
            .then_expect_error(KeyringError::Reactivation(key(1).0));
        Spec::with(())
            .given(rotated.clone())
            .when(C::Retire {
                kid: key(2).0,
                at: t(),
            })
            .then_expect_error(KeyringError::RetiringActiveKey(key(2).0));
        Spec::with(())
            .given(rotated.clone())
            .when(C::Retire {
                kid: key(1).0,
                at: t(),
            })
            .then_expect_events(vec![E::KeyRetired(KeyRetired {
                kid: key(1).0,
                retired_at: t(),
            })]);
        let mut compromised = vec![generated(3)];
        compromised.push(E::KeyCompromised(KeyCompromised {
            kid: key(3).0,
            compromised_at: t(),
            reason: "leaked".into(),
        }));
        Spec::with(())
            .given(compromised)
            .when(C::Activate { kid: key(3).0 })
            .then_expect_error(KeyringError::Compromised(key(3).0));
        Spec::with(())
            .given(rotated)
            .when(C::Compromise {
                kid: key(2).0,
                compromised_at: t(),
                reason: " ".into(),
            })
            .then_expect_error(KeyringError::BadReason);
    }

    #[test]
    fn compromising_the_active_key_leaves_nothing_signing() {
        let mut ring = Keyring::default();
        for e in [generated(1), activated(1)] {
            ring.apply(e);
        }
        ring.apply(E::KeyCompromised(KeyCompromised {
            kid: key(1).0,
            compromised_at: t(),
            reason: "hsm stolen".into(),
        }));
        assert_eq!(ring.active, None);
    }
}
