//! Licence files and certificate-revocation-style lists, and their offline verification.
//!
//! Formats are specified in `docs/license-format.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::document::{DocumentError, SignedDocument};
use crate::keys::{Purpose, TrustedKeys};

/// Context string of licence signatures: a licence signature verifies as nothing else.
pub const LICENSE_CONTEXT: &[u8] = b"quantus/license/v1";
/// Context string of CRL signatures.
pub const CRL_CONTEXT: &[u8] = b"quantus/crl/v1";
pub const LICENSE_FORMAT: &str = "quantus-license/1";
pub const CRL_FORMAT: &str = "quantus-crl/1";

/// The signed content of a licence file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct License {
    pub format: String,
    pub license_id: String,
    pub organization_id: String,
    pub product: String,
    pub edition: String,
    pub features: Vec<String>,
    /// Quotas and limits by name (integers).
    pub limits: BTreeMap<String, i64>,
    pub max_activations: u32,
    /// When set, the licence is valid only on the machine with this fingerprint.
    pub machine_fingerprint: Option<String>,
    #[serde(deserialize_with = "crate::instant::deserialize")]
    pub issued_at: DateTime<Utc>,
    #[serde(deserialize_with = "crate::instant::deserialize")]
    pub not_before: DateTime<Utc>,
    #[serde(deserialize_with = "crate::instant::deserialize")]
    pub expires_at: DateTime<Utc>,
    /// How long after `expires_at` the licence still works (with a warning).
    pub grace_period_seconds: u64,
    pub issuer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlEntry {
    pub license_id: String,
    pub reason: String,
    #[serde(deserialize_with = "crate::instant::deserialize")]
    pub revoked_at: DateTime<Utc>,
}

/// The signed content of a revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crl {
    pub format: String,
    pub issuer: String,
    /// Grows by one with every list issued.
    pub serial: u64,
    #[serde(deserialize_with = "crate::instant::deserialize")]
    pub issued_at: DateTime<Utc>,
    #[serde(deserialize_with = "crate::instant::deserialize")]
    pub next_update: DateTime<Utc>,
    pub entries: Vec<CrlEntry>,
}

/// How a verifier uses a CRL.
pub struct CrlCheck<'a> {
    pub document: &'a SignedDocument,
    /// A list issued longer ago than this is refused.
    pub max_age: Duration,
    /// The highest serial this verifier has already accepted; a lower one is a replay.
    pub min_serial: Option<u64>,
}

/// Where a valid licence stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Valid,
    /// Expired, but within its grace period.
    InGrace {
        ends_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLicense {
    pub license: License,
    pub standing: Standing,
    /// Key that vouched for it.
    pub kid: String,
    /// Serial of the CRL checked, if one was.
    pub crl_serial: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("not a licence file: {0}")]
    Malformed(String),
    #[error("{0}")]
    Signature(DocumentError),
    #[error("licence is not valid before {0}")]
    NotYetValid(DateTime<Utc>),
    #[error("licence expired at {expired_at} and its grace period ended at {grace_ended_at}")]
    Expired {
        expired_at: DateTime<Utc>,
        grace_ended_at: DateTime<Utc>,
    },
    #[error("licence was revoked at {revoked_at}: {reason}")]
    Revoked {
        reason: String,
        revoked_at: DateTime<Utc>,
    },
    #[error("licence is bound to another machine")]
    WrongMachine,
    #[error("licence is bound to a machine: give the machine's fingerprint")]
    MachineFingerprintRequired,
    #[error("CRL is not valid: {0}")]
    CrlInvalid(String),
    #[error("CRL was issued at {issued_at}, more than the allowed {max_age_seconds} s ago")]
    CrlTooOld {
        issued_at: DateTime<Utc>,
        max_age_seconds: i64,
    },
    #[error("CRL serial {serial} is lower than {seen}, already seen: a replayed list")]
    CrlRolledBack { serial: u64, seen: u64 },
}

impl License {
    pub fn parse(document: &SignedDocument) -> Result<Self, LicenseError> {
        let license: License = serde_json::from_value(document.payload.clone())
            .map_err(|e| LicenseError::Malformed(e.to_string()))?;
        if license.format != LICENSE_FORMAT {
            return Err(LicenseError::Malformed(format!(
                "format {:?} is not {LICENSE_FORMAT}",
                license.format
            )));
        }
        if license.grace_ends().is_none() {
            return Err(LicenseError::Malformed(
                "the grace period ends past 9999-12-31T23:59:59Z".into(),
            ));
        }
        Ok(license)
    }

    /// The end of the grace period; `None` when it would pass the last instant accepted
    /// ([`License::parse`] refuses such files).
    pub fn grace_ends(&self) -> Option<DateTime<Utc>> {
        crate::instant::add_seconds(self.expires_at, self.grace_period_seconds)
    }
}

impl Crl {
    /// Verifies a CRL's signature (licence keys sign CRLs), age and serial.
    pub fn verify(
        check: &CrlCheck<'_>,
        keys: &TrustedKeys,
        now: DateTime<Utc>,
    ) -> Result<Crl, LicenseError> {
        let crl: Crl = serde_json::from_value(check.document.payload.clone())
            .map_err(|e| LicenseError::CrlInvalid(e.to_string()))?;
        if crl.format != CRL_FORMAT {
            return Err(LicenseError::CrlInvalid(format!(
                "format {:?} is not {CRL_FORMAT}",
                crl.format
            )));
        }
        check
            .document
            .verify(keys, Purpose::License, CRL_CONTEXT, crl.issued_at, now)
            .map_err(|e| LicenseError::CrlInvalid(e.to_string()))?;
        if now - crl.issued_at > check.max_age {
            return Err(LicenseError::CrlTooOld {
                issued_at: crl.issued_at,
                max_age_seconds: check.max_age.num_seconds(),
            });
        }
        if let Some(seen) = check.min_serial {
            if crl.serial < seen {
                return Err(LicenseError::CrlRolledBack {
                    serial: crl.serial,
                    seen,
                });
            }
        }
        Ok(crl)
    }
}

/// Verifies a licence file offline: its signature under the trusted keys and crypto policy,
/// the CRL if one is given, its validity window at `now`, and its machine binding.
pub fn verify(
    file: &SignedDocument,
    keys: &TrustedKeys,
    now: DateTime<Utc>,
    crl: Option<&CrlCheck<'_>>,
    machine_fingerprint: Option<&str>,
) -> Result<VerifiedLicense, LicenseError> {
    let license = License::parse(file)?;
    let signed_by = file
        .verify(
            keys,
            Purpose::License,
            LICENSE_CONTEXT,
            license.issued_at,
            now,
        )
        .map_err(LicenseError::Signature)?;
    let kid = signed_by.kid.clone();

    let crl_serial = match crl {
        Some(check) => {
            let list = Crl::verify(check, keys, now)?;
            if let Some(entry) = list
                .entries
                .iter()
                .find(|e| e.license_id == license.license_id)
            {
                return Err(LicenseError::Revoked {
                    reason: entry.reason.clone(),
                    revoked_at: entry.revoked_at,
                });
            }
            Some(list.serial)
        }
        None => None,
    };

    if now < license.not_before {
        return Err(LicenseError::NotYetValid(license.not_before));
    }
    let grace_ends = license
        .grace_ends()
        .ok_or_else(|| LicenseError::Malformed("the grace period ends past 9999".into()))?;
    let standing = if now < license.expires_at {
        Standing::Valid
    } else if now < grace_ends {
        Standing::InGrace {
            ends_at: grace_ends,
        }
    } else {
        return Err(LicenseError::Expired {
            expired_at: license.expires_at,
            grace_ended_at: grace_ends,
        });
    };

    if let Some(bound) = &license.machine_fingerprint {
        match machine_fingerprint {
            None => return Err(LicenseError::MachineFingerprintRequired),
            Some(fp) if !constant_time_eq(fp.as_bytes(), bound.as_bytes()) => {
                return Err(LicenseError::WrongMachine)
            }
            Some(_) => {}
        }
    }
    Ok(VerifiedLicense {
        license,
        standing,
        kid,
        crl_serial,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Algorithm, SecretKey};
    use crate::keys::{CryptoPolicy, TrustedKey, VerifyRule};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn key(alg: Algorithm, n: u8) -> SecretKey {
        SecretKey::from_seed(alg, &vec![n; alg.seed_len()]).unwrap()
    }

    fn trusted(sk: &SecretKey) -> TrustedKey {
        let pk = sk.public_key();
        TrustedKey {
            kid: pk.kid(),
            alg: pk.alg,
            purpose: Purpose::License,
            public_key: URL_SAFE_NO_PAD.encode(&pk.bytes),
            not_before: t("2026-01-01T00:00:00Z"),
            retired_at: None,
            compromised_at: None,
        }
    }

    fn key_set(keys: Vec<TrustedKey>) -> TrustedKeys {
        TrustedKeys {
            keys,
            policy: CryptoPolicy {
                sign: vec![Algorithm::MlDsa65Ed25519],
                verify: vec![
                    VerifyRule {
                        alg: Algorithm::MlDsa65Ed25519,
                        until: None,
                    },
                    VerifyRule {
                        alg: Algorithm::MlDsa87,
                        until: None,
                    },
                ],
            },
        }
    }

    fn license(machine: Option<&str>) -> License {
        License {
            format: LICENSE_FORMAT.into(),
            license_id: "lic-1".into(),
            organization_id: "org-1".into(),
            product: "qpu-scheduler".into(),
            edition: "enterprise".into(),
            features: vec!["evidence".into(), "sso".into()],
            limits: [("qpu_hours".to_owned(), 1000)].into(),
            max_activations: 3,
            machine_fingerprint: machine.map(Into::into),
            issued_at: t("2026-11-01T00:00:00Z"),
            not_before: t("2026-11-01T00:00:00Z"),
            expires_at: t("2027-11-01T00:00:00Z"),
            grace_period_seconds: 14 * 86400,
            issuer: "https://quantus.example".into(),
        }
    }

    fn sign(l: &License, sk: &SecretKey) -> SignedDocument {
        SignedDocument::sign(
            serde_json::to_value(l).unwrap(),
            LICENSE_CONTEXT,
            &[(sk, [9; 32])],
        )
        .unwrap()
    }

    fn crl(serial: u64, issued_at: &str, revoked: &[&str], sk: &SecretKey) -> SignedDocument {
        let list = Crl {
            format: CRL_FORMAT.into(),
            issuer: "https://quantus.example".into(),
            serial,
            issued_at: t(issued_at),
            next_update: t(issued_at) + Duration::days(1),
            entries: revoked
                .iter()
                .map(|id| CrlEntry {
                    license_id: (*id).into(),
                    reason: "contract terminated".into(),
                    revoked_at: t(issued_at),
                })
                .collect(),
        };
        SignedDocument::sign(
            serde_json::to_value(list).unwrap(),
            CRL_CONTEXT,
            &[(sk, [3; 32])],
        )
        .unwrap()
    }

    const NOW: &str = "2026-11-29T12:00:00Z";

    #[test]
    fn a_valid_licence_verifies_offline() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let keys = key_set(vec![trusted(&sk)]);
        let file = sign(&license(None), &sk);
        let v = verify(&file, &keys, t(NOW), None, None).unwrap();
        assert_eq!(v.standing, Standing::Valid);
        assert_eq!(v.kid, sk.public_key().kid());
        assert_eq!(v.license.limits["qpu_hours"], 1000);
    }

    #[test]
    fn each_time_window_has_its_own_answer() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let keys = key_set(vec![trusted(&sk)]);
        let file = sign(&license(None), &sk);
        assert_eq!(
            verify(&file, &keys, t("2026-10-31T23:59:59Z"), None, None),
            Err(LicenseError::NotYetValid(t("2026-11-01T00:00:00Z")))
        );
        let in_grace = verify(&file, &keys, t("2027-11-05T00:00:00Z"), None, None).unwrap();
        assert_eq!(
            in_grace.standing,
            Standing::InGrace {
                ends_at: t("2027-11-15T00:00:00Z")
            }
        );
        assert!(matches!(
            verify(&file, &keys, t("2027-11-15T00:00:00Z"), None, None),
            Err(LicenseError::Expired { .. })
        ));
    }

    #[test]
    fn every_single_byte_change_of_the_file_is_refused() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let keys = key_set(vec![trusted(&sk)]);
        let bytes = sign(&license(None), &sk).to_canonical_json().unwrap();
        let check = |b: &[u8]| {
            SignedDocument::from_canonical_json(b)
                .map_err(LicenseError::Signature)
                .and_then(|d| verify(&d, &keys, t(NOW), None, None))
        };
        assert!(check(&bytes).is_ok());
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20] {
                let mut changed = bytes.clone();
                changed[i] ^= flip;
                assert!(
                    check(&changed).is_err(),
                    "byte {i} ^ {flip:#x} was accepted"
                );
            }
        }
        // A semantically equal but differently spelled file is refused too.
        let spaced = String::from_utf8(bytes.clone())
            .unwrap()
            .replacen(':', ": ", 1);
        assert!(check(spaced.as_bytes()).is_err());
    }

    #[test]
    fn signatures_from_untrusted_keys_wrong_purposes_or_disallowed_algorithms_are_refused() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let other = key(Algorithm::MlDsa65Ed25519, 2);
        let file = sign(&license(None), &other);
        assert!(matches!(
            verify(&file, &key_set(vec![trusted(&sk)]), t(NOW), None, None),
            Err(LicenseError::Signature(DocumentError::UnknownKey(_)))
        ));
        // Another key's signature under a trusted kid.
        let mut forged = sign(&license(None), &other);
        forged.signatures[0].kid = sk.public_key().kid();
        assert!(matches!(
            verify(&forged, &key_set(vec![trusted(&sk)]), t(NOW), None, None),
            Err(LicenseError::Signature(DocumentError::BadSignature { .. }))
        ));
        // An evidence key cannot vouch for a licence.
        let mut evidence = trusted(&sk);
        evidence.purpose = Purpose::Evidence;
        assert!(matches!(
            verify(
                &sign(&license(None), &sk),
                &key_set(vec![evidence]),
                t(NOW),
                None,
                None
            ),
            Err(LicenseError::Signature(DocumentError::KeyRejected(
                crate::keys::KeyRejection::WrongPurpose { .. }
            )))
        ));
        // Ed25519 alone is outside the policy.
        let classical = key(Algorithm::Ed25519, 3);
        assert!(matches!(
            verify(
                &sign(&license(None), &classical),
                &key_set(vec![trusted(&classical)]),
                t(NOW),
                None,
                None
            ),
            Err(LicenseError::Signature(DocumentError::KeyRejected(
                crate::keys::KeyRejection::AlgorithmNotAllowed {
                    alg: Algorithm::Ed25519
                }
            )))
        ));
    }

    #[test]
    fn downgrades_and_relabelled_algorithms_are_refused() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let keys = key_set(vec![trusted(&sk)]);
        let file = sign(&license(None), &sk);
        let sig = URL_SAFE_NO_PAD.decode(&file.signatures[0].sig).unwrap();
        // Strip the Ed25519 half, keep the label.
        let mut stripped = file.clone();
        stripped.signatures[0].sig = URL_SAFE_NO_PAD.encode(&sig[..3309]);
        assert!(matches!(
            verify(&stripped, &keys, t(NOW), None, None),
            Err(LicenseError::Signature(DocumentError::BadSignature { .. }))
        ));
        // Strip it and relabel the signature as plain ML-DSA-65.
        stripped.signatures[0].alg = Algorithm::MlDsa65;
        assert!(matches!(
            verify(&stripped, &keys, t(NOW), None, None),
            Err(LicenseError::Signature(
                DocumentError::AlgorithmMismatch { .. }
            ))
        ));
    }

    #[test]
    fn rotation_and_compromise() {
        let old = key(Algorithm::MlDsa65Ed25519, 1);
        let new = key(Algorithm::MlDsa65Ed25519, 2);
        let mut old_trusted = trusted(&old);
        let keys = key_set(vec![old_trusted.clone(), trusted(&new)]);
        // After rotation both verify.
        assert!(verify(&sign(&license(None), &old), &keys, t(NOW), None, None).is_ok());
        assert!(verify(&sign(&license(None), &new), &keys, t(NOW), None, None).is_ok());
        // Compromised from 2026-11-15: earlier signatures stand, later ones are void.
        old_trusted.compromised_at = Some(t("2026-11-15T00:00:00Z"));
        let keys = key_set(vec![old_trusted.clone(), trusted(&new)]);
        assert!(verify(&sign(&license(None), &old), &keys, t(NOW), None, None).is_ok());
        let mut late = license(None);
        late.issued_at = t("2026-11-20T00:00:00Z");
        assert!(matches!(
            verify(&sign(&late, &old), &keys, t(NOW), None, None),
            Err(LicenseError::Signature(DocumentError::KeyRejected(
                crate::keys::KeyRejection::KeyCompromised { .. }
            )))
        ));
        // Retired: verifies nothing any more.
        old_trusted.compromised_at = None;
        old_trusted.retired_at = Some(t("2026-11-28T00:00:00Z"));
        let keys = key_set(vec![old_trusted, trusted(&new)]);
        assert!(verify(&sign(&license(None), &old), &keys, t(NOW), None, None).is_err());
    }

    #[test]
    fn revocation_lists_are_signed_fresh_and_never_roll_back() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let keys = key_set(vec![trusted(&sk)]);
        let file = sign(&license(None), &sk);
        let check = |doc, min_serial| CrlCheck {
            document: doc,
            max_age: Duration::days(7),
            min_serial,
        };

        let fresh = crl(5, "2026-11-28T00:00:00Z", &["lic-1"], &sk);
        assert!(matches!(
            verify(&file, &keys, t(NOW), Some(&check(&fresh, None)), None),
            Err(LicenseError::Revoked { .. })
        ));
        let clean = crl(6, "2026-11-28T00:00:00Z", &["lic-2"], &sk);
        assert_eq!(
            verify(&file, &keys, t(NOW), Some(&check(&clean, Some(5))), None)
                .unwrap()
                .crl_serial,
            Some(6)
        );
        // Replaying an older list that did not yet revoke it.
        let old = crl(4, "2026-11-27T00:00:00Z", &[], &sk);
        assert_eq!(
            verify(&file, &keys, t(NOW), Some(&check(&old, Some(5))), None),
            Err(LicenseError::CrlRolledBack { serial: 4, seen: 5 })
        );
        let stale = crl(7, "2026-11-01T00:00:00Z", &[], &sk);
        assert!(matches!(
            verify(&file, &keys, t(NOW), Some(&check(&stale, None)), None),
            Err(LicenseError::CrlTooOld { .. })
        ));
        // A CRL signed by an unknown key, or a licence signature presented as a CRL.
        let forged = crl(
            8,
            "2026-11-28T00:00:00Z",
            &[],
            &key(Algorithm::MlDsa65Ed25519, 9),
        );
        assert!(matches!(
            verify(&file, &keys, t(NOW), Some(&check(&forged, None)), None),
            Err(LicenseError::CrlInvalid(_))
        ));
        let mut cross = crl(9, "2026-11-28T00:00:00Z", &[], &sk);
        cross.signatures =
            SignedDocument::sign(cross.payload.clone(), LICENSE_CONTEXT, &[(&sk, [1; 32])])
                .unwrap()
                .signatures;
        assert!(matches!(
            verify(&file, &keys, t(NOW), Some(&check(&cross, None)), None),
            Err(LicenseError::CrlInvalid(_))
        ));
    }

    #[test]
    fn machine_bound_licences_work_only_on_their_machine() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let keys = key_set(vec![trusted(&sk)]);
        let file = sign(&license(Some("fp-abc")), &sk);
        assert!(verify(&file, &keys, t(NOW), None, Some("fp-abc")).is_ok());
        assert_eq!(
            verify(&file, &keys, t(NOW), None, Some("fp-xyz")),
            Err(LicenseError::WrongMachine)
        );
        assert_eq!(
            verify(&file, &keys, t(NOW), None, None),
            Err(LicenseError::MachineFingerprintRequired)
        );
    }

    /// A licence signed with `expires_at` and `grace` set to raw values, as an attacker (or a
    /// buggy issuer) could: the payload bypasses the `License` type's own checks.
    fn signed_raw(expires_at: &str, grace: u64, sk: &SecretKey) -> SignedDocument {
        let mut payload = serde_json::to_value(license(None)).unwrap();
        payload["expires_at"] = expires_at.into();
        payload["grace_period_seconds"] = grace.into();
        SignedDocument::sign(payload, LICENSE_CONTEXT, &[(sk, [9; 32])]).unwrap()
    }

    #[test]
    fn instants_past_the_range_are_refused_offline_instead_of_overflowing() {
        let sk = key(Algorithm::MlDsa65Ed25519, 1);
        let keys = key_set(vec![trusted(&sk)]);
        let far = signed_raw("+262142-12-31T23:59:59Z", 14 * 86400, &sk);
        let err = verify(&far, &keys, t(NOW), None, None).unwrap_err();
        assert!(
            matches!(&err, LicenseError::Malformed(m) if m.contains("out of range")),
            "{err}"
        );
        let edge = signed_raw("9999-12-31T23:59:59Z", 1, &sk);
        assert_eq!(
            verify(&edge, &keys, t(NOW), None, None).unwrap_err(),
            LicenseError::Malformed("the grace period ends past 9999-12-31T23:59:59Z".into())
        );
        let huge_grace = signed_raw("2027-01-01T00:00:00Z", u64::MAX, &sk);
        assert!(verify(&huge_grace, &keys, t(NOW), None, None).is_err());
        // The last second itself, with no grace period, is a valid licence.
        let last = signed_raw("9999-12-31T23:59:59Z", 0, &sk);
        assert_eq!(
            verify(&last, &keys, t(NOW), None, None).unwrap().standing,
            Standing::Valid
        );
        // A CRL from beyond the range is refused as invalid.
        let mut list = serde_json::to_value(Crl {
            format: CRL_FORMAT.into(),
            issuer: "https://quantus.example".into(),
            serial: 1,
            issued_at: t(NOW),
            next_update: t(NOW),
            entries: vec![],
        })
        .unwrap();
        list["next_update"] = "+262142-12-31T23:59:59Z".into();
        let document = SignedDocument::sign(list, CRL_CONTEXT, &[(&sk, [3; 32])]).unwrap();
        let check = CrlCheck {
            document: &document,
            max_age: Duration::days(7),
            min_serial: None,
        };
        assert!(matches!(
            Crl::verify(&check, &keys, t(NOW)),
            Err(LicenseError::CrlInvalid(m)) if m.contains("out of range")
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn instant_text() -> impl Strategy<Value = String> {
            (
                prop_oneof![Just(""), Just("+"), Just("-")],
                0u32..300_000,
                1u32..13,
                1u32..29,
                0u32..24,
            )
                .prop_map(|(sign, y, mo, d, h)| {
                    format!("{sign}{y:04}-{mo:02}-{d:02}T{h:02}:00:00Z")
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_bytes_as_a_licence_file_or_crl_are_refused_never_a_panic(
                bytes in prop::collection::vec(any::<u8>(), 0..600)
            ) {
                let keys = key_set(vec![]);
                if let Ok(document) = SignedDocument::from_canonical_json(&bytes) {
                    let _ = verify(&document, &keys, t(NOW), None, Some("m"));
                    let check = CrlCheck { document: &document, max_age: Duration::days(7), min_serial: Some(1) };
                    let _ = Crl::verify(&check, &keys, t(NOW));
                }
            }
        }

        proptest! {
            // Each case signs with ML-DSA: fewer cases, still every path past the signature.
            #![proptest_config(ProptestConfig::with_cases(150))]

            #[test]
            fn any_instants_and_grace_verify_or_are_refused_never_a_panic(
                expires_at in instant_text(),
                not_before in instant_text(),
                grace in any::<u64>(),
                now in instant_text(),
            ) {
                let sk = key(Algorithm::MlDsa65Ed25519, 1);
                let keys = key_set(vec![trusted(&sk)]);
                let mut payload = serde_json::to_value(license(None)).unwrap();
                payload["expires_at"] = expires_at.into();
                payload["not_before"] = not_before.into();
                payload["grace_period_seconds"] = grace.into();
                let file = SignedDocument::sign(payload, LICENSE_CONTEXT, &[(&sk, [9; 32])]).unwrap();
                let now = now.parse::<DateTime<Utc>>().unwrap_or(t(NOW));
                let _ = verify(&file, &keys, now, None, None);
            }
        }
    }
}
