//! `quantus license verify`: offline verification from files, exit 0 only when valid.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{Duration, Utc};
use quantus_crypto::document::SignedDocument;
use quantus_crypto::keys::{CryptoPolicy, Purpose, TrustedKey, TrustedKeys, VerifyRule};
use quantus_crypto::license::{
    Crl, CrlEntry, License, CRL_CONTEXT, CRL_FORMAT, LICENSE_CONTEXT, LICENSE_FORMAT,
};
use quantus_crypto::{Algorithm, SecretKey};

use crate::harness::*;

fn write_json(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn the_cli_answers_in_one_line_and_exits_zero_only_when_valid() {
    let dir = temp_dir("license-cli");
    let key = SecretKey::from_seed(Algorithm::MlDsa65Ed25519, &[42; 64]).unwrap();
    let pk = key.public_key();
    let now = Utc::now();
    let keys = TrustedKeys {
        keys: vec![TrustedKey {
            kid: pk.kid(),
            alg: pk.alg,
            purpose: Purpose::License,
            public_key: URL_SAFE_NO_PAD.encode(&pk.bytes),
            not_before: now - Duration::days(30),
            retired_at: None,
            compromised_at: None,
        }],
        policy: CryptoPolicy {
            sign: vec![Algorithm::MlDsa65Ed25519],
            verify: vec![VerifyRule {
                alg: Algorithm::MlDsa65Ed25519,
                until: None,
            }],
        },
    };
    let keys_file = write_json(&dir, "keys.json", &serde_json::to_vec(&keys).unwrap());
    let license = License {
        format: LICENSE_FORMAT.into(),
        license_id: "lic-7".into(),
        organization_id: "org-7".into(),
        product: "qpu-scheduler".into(),
        edition: "enterprise".into(),
        features: vec!["sso".into()],
        limits: [("qpu_hours".to_owned(), 100)].into(),
        max_activations: 1,
        machine_fingerprint: Some("fp-1".into()),
        issued_at: now - Duration::days(1),
        not_before: now - Duration::days(1),
        expires_at: now + Duration::days(365),
        grace_period_seconds: 0,
        issuer: "https://quantus.example".into(),
    };
    let doc = SignedDocument::sign(
        serde_json::to_value(&license).unwrap(),
        LICENSE_CONTEXT,
        &[(&key, [1; 32])],
    )
    .unwrap();
    let mut bytes = doc.to_canonical_json().unwrap();
    bytes.push(b'\n');
    let file = write_json(&dir, "license.json", &bytes);

    let run = |extra: &[&str]| {
        let mut args = vec!["license", "verify", &file, "--keys", &keys_file];
        args.extend_from_slice(extra);
        let out = quantus(&args, &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let (code, line) = run(&["--fingerprint", "fp-1"]);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with("valid: licence lic-7 for org-7") && line.contains("no CRL checked"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);

    let (code, line) = run(&["--fingerprint", "fp-2"]);
    assert_eq!(
        (code, line.as_str()),
        (Some(1), "invalid: licence is bound to another machine")
    );

    let crl = Crl {
        format: CRL_FORMAT.into(),
        issuer: "https://quantus.example".into(),
        serial: 3,
        issued_at: now - Duration::hours(1),
        next_update: now + Duration::hours(23),
        entries: vec![CrlEntry {
            license_id: "lic-7".into(),
            reason: "contract terminated".into(),
            revoked_at: now - Duration::hours(2),
        }],
    };
    let crl_doc = SignedDocument::sign(
        serde_json::to_value(&crl).unwrap(),
        CRL_CONTEXT,
        &[(&key, [2; 32])],
    )
    .unwrap();
    let crl_file = write_json(&dir, "crl.json", &crl_doc.to_canonical_json().unwrap());
    let (code, line) = run(&["--fingerprint", "fp-1", "--crl", &crl_file]);
    assert_eq!(code, Some(1));
    assert!(
        line.starts_with("invalid: licence was revoked") && line.contains("contract terminated"),
        "{line}"
    );
    let (code, line) = run(&[
        "--fingerprint",
        "fp-1",
        "--crl",
        &crl_file,
        "--crl-min-serial",
        "4",
    ]);
    assert_eq!(code, Some(1));
    assert!(line.contains("replayed"), "{line}");

    // A tampered file: one byte of the payload changed.
    let tampered = String::from_utf8(bytes.clone())
        .unwrap()
        .replace("\"qpu_hours\":100", "\"qpu_hours\":900");
    let tampered_file = write_json(&dir, "tampered.json", tampered.as_bytes());
    let out = quantus(
        &[
            "license",
            "verify",
            &tampered_file,
            "--keys",
            &keys_file,
            "--fingerprint",
            "fp-1",
        ],
        &[],
    );
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(line.starts_with("invalid: bad signature by"), "{line}");

    // Missing files are a clear one-line reason too.
    let out = quantus(
        &[
            "license",
            "verify",
            "/nonexistent.json",
            "--keys",
            &keys_file,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("invalid: cannot read /nonexistent.json")
    );
}
