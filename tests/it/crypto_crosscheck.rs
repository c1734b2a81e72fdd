//! Quantus' signatures against an implementation not written here (PyCA `cryptography`,
//! OpenSSL's ML-DSA and Ed25519; `tests/crosscheck/crosscheck.py`), in both directions, and
//! against FIPS 204 known-answer vectors.

use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use quantus_crypto::{Algorithm, PublicKey, SecretKey};
use serde_json::{json, Value};

use crate::harness::*;

fn crosscheck(args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/crosscheck/crosscheck.py"))
        .args(args)
        .output()
        .expect("python3 is needed for the cross-check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(
        out.status.code(),
        Some(2),
        "the independent library is missing (pip install -r tests/crosscheck/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn an_independent_library_verifies_what_quantus_signs() {
    let mut vectors = vec![];
    for alg in Algorithm::ALL {
        let seed: Vec<u8> = (0..alg.seed_len()).map(|i| (i * 7 + 3) as u8).collect();
        let key = SecretKey::from_seed(alg, &seed).unwrap();
        for (ctx, message) in [
            (
                &b"quantus/license/v1"[..],
                &b"{\"license_id\":\"lic-1\"}"[..],
            ),
            (&b""[..], &b""[..]),
            (&[0xC3u8; 255][..], &[0xABu8; 1000][..]),
        ] {
            let sig = key.sign(message, ctx, &[0x5A; 32]).unwrap();
            let mut vector = json!({
                "alg": alg.name(), "seed": hex::encode(&seed), "public_key": b64(&key.public_key().bytes),
                "context": hex::encode(ctx), "message": hex::encode(message), "signature": b64(&sig),
                "expect": "valid",
            });
            vectors.push(vector.clone());
            let mut bad = sig.clone();
            bad[sig.len() - 1] ^= 0x01; // The last byte: the Ed25519 half of a composite.
            vector["signature"] = json!(b64(&bad));
            vector["expect"] = json!("invalid");
            vectors.push(vector);
        }
    }
    let dir = temp_dir("crosscheck");
    let file = dir.join("quantus-vectors.json");
    std::fs::write(&file, serde_json::to_vec(&vectors).unwrap()).unwrap();
    let (ok, out) = crosscheck(&["verify", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{} passed, 0 failed", vectors.len())),
        "{out}"
    );
}

/// Checks one vector with Quantus' code; `None` when it is not one of Quantus' algorithms.
fn check_here(v: &Value) -> Option<Result<(), String>> {
    let alg = Algorithm::parse(v["alg"].as_str()?)?;
    let decode = |k: &str| URL_SAFE_NO_PAD.decode(v[k].as_str().unwrap()).unwrap();
    let hexd = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
    let public = decode("public_key");
    if let Some(seed) = v["seed"].as_str() {
        let derived = SecretKey::from_seed(alg, &hex::decode(seed).unwrap())
            .unwrap()
            .public_key();
        if derived.bytes != public {
            return Some(Err(format!("{alg}: public key from seed differs")));
        }
        // Known-answer vectors use deterministic signing (rnd = 0): the bytes must match.
        if let Some(rnd) = v["rnd"].as_str() {
            let rnd: [u8; 32] = hex::decode(rnd).unwrap().try_into().unwrap();
            let key = SecretKey::from_seed(alg, &hex::decode(seed).unwrap()).unwrap();
            let sig = key.sign(&hexd("message"), &hexd("context"), &rnd).unwrap();
            if v["expect"] == "valid" && sig != decode("signature") {
                return Some(Err(format!(
                    "{alg}: deterministic signature differs from the known answer"
                )));
            }
        }
    }
    let verdict = PublicKey::new(alg, public)
        .and_then(|pk| pk.verify(&hexd("message"), &hexd("context"), &decode("signature")))
        .is_ok();
    let expected = v["expect"] == "valid";
    Some(if verdict == expected {
        Ok(())
    } else {
        Err(format!(
            "{alg}: verified {verdict}, expected {expected}: {v}"
        ))
    })
}

#[test]
fn quantus_verifies_what_an_independent_library_signs() {
    let dir = temp_dir("crosscheck-sign");
    let file = dir.join("python-vectors.json");
    let (ok, out) = crosscheck(&["sign", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    let vectors: Vec<Value> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mut checked = 0;
    for v in &vectors {
        if let Some(result) = check_here(v) {
            result.unwrap();
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} vectors checked");
    let algorithms: std::collections::BTreeSet<_> =
        vectors.iter().map(|v| v["alg"].as_str().unwrap()).collect();
    assert_eq!(algorithms.len(), 5, "{algorithms:?}");
}

#[test]
fn ml_dsa_matches_fips_204_known_answers() {
    let dir = temp_dir("kat");
    let file = dir.join("kat.json");
    let (ok, out) = crosscheck(&["export-vectors", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    let vectors: Vec<Value> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mut per_alg = std::collections::BTreeMap::<String, usize>::new();
    for v in &vectors {
        if let Some(result) = check_here(v) {
            result.unwrap();
            *per_alg
                .entry(v["alg"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for alg in ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"] {
        assert!(
            per_alg.get(alg).copied().unwrap_or(0) >= 10,
            "{alg}: {per_alg:?}"
        );
    }
}

/// The draft authors' own test vector for id-MLDSA65-Ed25519-SHA512 (draft-19 format, from the
/// LAMPS working group's repository; provenance in the file).
#[test]
fn the_composite_matches_the_lamps_drafts_test_vector() {
    use base64::engine::general_purpose::STANDARD;
    let text =
        std::fs::read(repo_root().join("tests/crosscheck/lamps_mldsa65_ed25519.json")).unwrap();
    let v: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["tcId"], "id-MLDSA65-Ed25519-SHA512");
    let field = |k: &str| STANDARD.decode(v[k].as_str().unwrap()).unwrap();
    let (m, pk, sk, s) = (field("m"), field("pk"), field("sk"), field("s"));
    let key = SecretKey::from_seed(Algorithm::MlDsa65Ed25519, &sk).unwrap();
    assert_eq!(
        key.public_key().bytes,
        pk,
        "our key derivation differs from the draft's"
    );
    let public = PublicKey::new(Algorithm::MlDsa65Ed25519, pk).unwrap();
    public
        .verify(&m, b"", &s)
        .expect("the draft's signature verifies");
    let mut other = m.clone();
    other[0] ^= 1;
    assert!(public.verify(&other, b"", &s).is_err());
    // And the draft's verifier shape accepts what we sign with the same key (both halves).
    let ours = key.sign(&m, b"", &[3; 32]).unwrap();
    public.verify(&m, b"", &ours).unwrap();
}
