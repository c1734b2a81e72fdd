//! QuantumLock end to end over HTTP: licences, files verified offline, rotation, compromise,
//! the crypto policy, the CRL and the signing service.

use chrono::{DateTime, Duration, Utc};
use quantus_crypto::document::{DocumentError, SignedDocument};
use quantus_crypto::keys::{KeyRejection, TrustedKeys};
use quantus_crypto::license::{verify, CrlCheck, LicenseError};
use serde_json::{json, Value};

use crate::harness::*;

async fn issue(api: &Api, org: &str, body: Value) -> String {
    let mut terms = json!({
        "organization_id": org, "product": "qpu-scheduler", "edition": "enterprise",
        "features": ["sso", "evidence"], "limits": {"qpu_hours": 500},
        "expires_at": (Utc::now() + Duration::days(365)).to_rfc3339(), "max_activations": 2,
    });
    for (k, v) in body.as_object().unwrap() {
        terms[k] = v.clone();
    }
    let r = api.post("/v1/licenses", terms).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn raw(api: &Api, path: &str) -> (u16, Vec<u8>) {
    let r = api
        .request(reqwest::Method::GET, path)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn file(api: &Api, id: &str) -> SignedDocument {
    let (status, bytes) = raw(api, &format!("/v1/licenses/{id}/file")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    SignedDocument::from_canonical_json(&bytes).expect("the served file is canonical")
}

/// Reports the key `kid` compromised (its HSM stolen) since `since`.
pub async fn compromise_key(api: &Api, kid: &str, since: DateTime<Utc>) {
    let r = api
        .post(
            &format!("/v1/keys/{kid}/compromise"),
            json!({"compromised_at": since.to_rfc3339(), "reason": "HSM stolen"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn key_set(api: &Api) -> TrustedKeys {
    let (status, bytes) = raw(api, "/v1/keys").await;
    assert_eq!(status, 200);
    TrustedKeys::from_json(&bytes).expect("a valid key set")
}

fn rejection(
    result: Result<quantus_crypto::license::VerifiedLicense, LicenseError>,
) -> KeyRejection {
    match result {
        Err(LicenseError::Signature(DocumentError::KeyRejected(r))) => r,
        other => panic!("expected a key rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_licence_lives_from_issue_to_revocation_and_verifies_offline() {
    let dir = temp_dir("ql-lifecycle");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let id = issue(&api, &org, json!({})).await;

    let doc = file(&api, &id).await;
    let keys = key_set(&api).await;
    let v = verify(&doc, &keys, Utc::now(), None, None).unwrap();
    assert_eq!(v.license.organization_id, org);
    assert_eq!(v.license.limits["qpu_hours"], 500);
    assert_eq!(doc.signatures[0].alg.name(), "ML-DSA-65-Ed25519");

    // Activations are capped; the same machine twice uses one seat.
    for fp in ["m-1", "m-1", "m-2"] {
        let r = api
            .post(
                &format!("/v1/licenses/{id}/activate"),
                json!({"fingerprint": fp}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = api
        .post(
            &format!("/v1/licenses/{id}/activate"),
            json!({"fingerprint": "m-3"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = api.get(&format!("/v1/licenses/{id}/status")).await;
    assert_eq!(
        (r.body["standing"].as_str(), r.body["activations"].as_u64()),
        (Some("valid"), Some(2))
    );

    // Suspended: no file is served; reinstated: it is again.
    assert_eq!(
        api.post(
            &format!("/v1/licenses/{id}/suspend"),
            json!({"reason": "unpaid"})
        )
        .await
        .status,
        200
    );
    assert_eq!(raw(&api, &format!("/v1/licenses/{id}/file")).await.0, 409);
    assert_eq!(
        api.get(&format!("/v1/licenses/{id}/status")).await.body["standing"],
        "suspended"
    );
    assert_eq!(
        api.post(&format!("/v1/licenses/{id}/reinstate"), json!({}))
            .await
            .status,
        200
    );

    // Renewal moves the expiry of the next file.
    let later = Utc::now() + Duration::days(800);
    let r = api
        .post(
            &format!("/v1/licenses/{id}/renew"),
            json!({"expires_at": later.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed = verify(&file(&api, &id).await, &keys, Utc::now(), None, None).unwrap();
    assert!((renewed.license.expires_at - later).num_seconds().abs() <= 1);

    // Revocation: the CRL names it, with a higher serial than before; older lists are refused.
    let before: Value = serde_json::from_slice(&raw(&api, "/v1/crl").await.1).unwrap();
    let r = api
        .post(
            &format!("/v1/licenses/{id}/revoke"),
            json!({"reason": "contract terminated"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let position = r.body["position"].as_u64().unwrap();
    let (status, crl_bytes) = raw(&api, &format!("/v1/crl?min_position={position}")).await;
    assert_eq!(status, 200);
    let crl = SignedDocument::from_canonical_json(&crl_bytes).unwrap();
    let serial = crl.payload["serial"].as_u64().unwrap();
    assert!(serial > before["payload"]["serial"].as_u64().unwrap());
    let check = CrlCheck {
        document: &crl,
        max_age: Duration::hours(1),
        min_serial: None,
    };
    assert!(matches!(
        verify(&doc, &keys, Utc::now(), Some(&check), None),
        Err(LicenseError::Revoked { .. })
    ));
    let old = SignedDocument::from_canonical_json(&serde_json::to_vec(&before).unwrap()).unwrap();
    let replay = CrlCheck {
        document: &old,
        max_age: Duration::hours(1),
        min_serial: Some(serial),
    };
    assert!(matches!(
        verify(&doc, &keys, Utc::now(), Some(&replay), None),
        Err(LicenseError::CrlRolledBack { .. })
    ));
    assert_eq!(raw(&api, &format!("/v1/licenses/{id}/file")).await.0, 409);
    for action in ["reinstate", "renew", "activate"] {
        let r = api
            .post(
                &format!("/v1/licenses/{id}/{action}"),
                json!({"fingerprint": "m-9", "expires_at": later.to_rfc3339()}),
            )
            .await;
        assert_eq!(r.status, 409, "{action} on a revoked licence: {}", r.body);
    }
    let r = api
        .get(&format!("/v1/licenses?org={org}&min_position={position}"))
        .await;
    assert_eq!(r.body["items"][0]["status"], "revoked");
}

#[tokio::test]
async fn bad_licence_requests_are_refused_and_write_nothing() {
    let dir = temp_dir("ql-bad");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let head = api.all_events().await.len();
    let past = (Utc::now() - Duration::days(1)).to_rfc3339();
    for (body, status) in [
        (
            json!({"organization_id": uuid::Uuid::now_v7().to_string(), "product": "p", "edition": "e", "expires_at": past, "max_activations": 1}),
            422,
        ),
        (
            json!({"organization_id": org, "product": "p", "edition": "e", "expires_at": past, "max_activations": 1}),
            422,
        ),
        (
            json!({"organization_id": org, "product": "", "edition": "e", "expires_at": "2030-01-01T00:00:00Z", "max_activations": 1}),
            422,
        ),
        (
            json!({"organization_id": org, "product": "p", "edition": "e", "expires_at": "2030-01-01T00:00:00Z", "max_activations": 0}),
            422,
        ),
        (
            json!({"organization_id": org, "product": "p", "edition": "e", "expires_at": "2030-01-01T00:00:00Z", "max_activations": 1, "limits": {"x": -5}}),
            422,
        ),
        (
            json!({"organization_id": org, "product": "p", "edition": "e", "expires_at": "not a date", "max_activations": 1}),
            422,
        ),
        (
            json!({"organization_id": org, "product": "p", "edition": "e", "expires_at": "2030-01-01T00:00:00Z", "max_activations": 1, "root": true}),
            422,
        ),
    ] {
        let r = api.post("/v1/licenses", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    for path in [
        "/v1/licenses/not-a-uuid",
        "/v1/licenses/01a227ca-1dc8-7795-b1eb-6b328698a311",
    ] {
        assert_eq!(api.get(path).await.status, 404);
    }
    let id = issue(&api, &org, json!({})).await;
    assert_eq!(
        api.post(&format!("/v1/licenses/{id}/activate"), json!({}))
            .await
            .status,
        422
    );
    assert_eq!(
        api.post(&format!("/v1/licenses/{id}/explode"), json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        api.all_events().await.len(),
        head + 1,
        "only the one valid issue was recorded"
    );
}

#[tokio::test]
async fn rotation_keeps_old_files_valid_and_a_compromise_voids_later_signatures() {
    let dir = temp_dir("ql-rotation");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let id = issue(&api, &org, json!({})).await;
    let before = file(&api, &id).await;

    let r = api
        .post("/v1/keys/rotate", json!({"purpose": "license"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new_kid = r.body["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, before.signatures[0].kid);
    let after = file(&api, &id).await;
    assert_eq!(after.signatures[0].kid, new_kid);
    let keys = key_set(&api).await;
    assert!(
        verify(&before, &keys, Utc::now(), None, None).is_ok(),
        "the old key stopped verifying"
    );
    assert!(verify(&after, &keys, Utc::now(), None, None).is_ok());

    // The new key is compromised from a minute ago: what it signed since is void, the old
    // key's earlier signature stands, and a fresh key takes over at once.
    let since: DateTime<Utc> = Utc::now() - Duration::minutes(1);
    compromise_key(&api, &new_kid, since).await;
    let keys = key_set(&api).await;
    assert!(matches!(
        rejection(verify(&after, &keys, Utc::now(), None, None)),
        KeyRejection::KeyCompromised { .. }
    ));
    assert!(verify(&before, &keys, Utc::now(), None, None).is_ok());
    let fresh = file(&api, &id).await;
    assert_ne!(fresh.signatures[0].kid, new_kid);
    assert!(verify(&fresh, &keys, Utc::now(), None, None).is_ok());

    // Retiring the first key: its files stop verifying. The signing key cannot be retired.
    let old_kid = before.signatures[0].kid.clone();
    assert_eq!(
        api.post(&format!("/v1/keys/{old_kid}/retire"), json!({}))
            .await
            .status,
        200
    );
    assert!(matches!(
        rejection(verify(
            &before,
            &key_set(&api).await,
            Utc::now(),
            None,
            None
        )),
        KeyRejection::KeyRetired { .. }
    ));
    let active = fresh.signatures[0].kid.clone();
    assert_eq!(
        api.post(&format!("/v1/keys/{active}/retire"), json!({}))
            .await
            .status,
        409
    );
    assert_eq!(
        api.post("/v1/keys/ffff/retire", json!({})).await.status,
        404
    );
}

#[tokio::test]
async fn the_crypto_policy_is_an_algorithm_roadmap_that_verification_follows() {
    let dir = temp_dir("ql-policy");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let id = issue(&api, &org, json!({})).await;
    let composite_file = file(&api, &id).await;

    let r = api
        .put(
            "/v1/crypto/policy/ML-DSA-65-Ed25519",
            json!({"may_sign": false, "may_verify": true}),
        )
        .await;
    assert_eq!(r.status, 409, "the last signer was withdrawn: {}", r.body);
    let r = api
        .put(
            "/v1/crypto/policy/Ed25519",
            json!({"may_sign": true, "may_verify": true}),
        )
        .await;
    assert_eq!(r.status, 409, "a classical-only signer was allowed");
    assert_eq!(
        api.put(
            "/v1/crypto/policy/RSA",
            json!({"may_sign": true, "may_verify": true})
        )
        .await
        .status,
        404
    );

    // Migrate: ML-DSA-87 signs, the composite verifies only until a moment ago.
    let r = api
        .put(
            "/v1/crypto/policy/ML-DSA-87",
            json!({"may_sign": true, "may_verify": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let until = (Utc::now() - Duration::seconds(1)).to_rfc3339();
    let r = api
        .put(
            "/v1/crypto/policy/ML-DSA-65-Ed25519",
            json!({"may_sign": false, "may_verify": true, "verify_until": until}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let policy = api.get("/v1/crypto/policy").await.body;
    assert_eq!(policy["sign"], json!(["ML-DSA-87"]));

    // The composite key may no longer sign: until rotated, no file is made.
    assert_eq!(raw(&api, &format!("/v1/licenses/{id}/file")).await.0, 409);
    let r = api
        .post("/v1/keys/rotate", json!({"purpose": "license"}))
        .await;
    assert_eq!(r.body["algorithm"], "ML-DSA-87");
    let new_file = file(&api, &id).await;
    assert_eq!(new_file.signatures[0].alg.name(), "ML-DSA-87");
    let keys = key_set(&api).await;
    assert!(verify(&new_file, &keys, Utc::now(), None, None).is_ok());
    assert!(matches!(
        rejection(verify(&composite_file, &keys, Utc::now(), None, None)),
        KeyRejection::AlgorithmExpired { .. }
    ));
}

#[tokio::test]
async fn the_signing_service_signs_digests_and_keeps_licence_keys_to_licences() {
    let dir = temp_dir("ql-sign");
    let server = Server::embedded(&dir);
    let api = server.client();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"evidence bundle"));
    let r = api
        .post(
            "/v1/signatures",
            json!({"purpose": "evidence", "digest_algorithm": "sha-256", "digest": digest}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (kid, sig) = (
        r.body["kid"].as_str().unwrap().to_owned(),
        r.body["signature"].as_str().unwrap().to_owned(),
    );
    let check = |digest: String, purpose: &'static str| {
        let api = api.clone();
        let (kid, sig) = (kid.clone(), sig.clone());
        async move {
            api.post("/v1/signatures/verify", json!({"purpose": purpose, "digest_algorithm": "sha-256", "digest": digest, "kid": kid, "signature": sig}))
                .await
                .body
        }
    };
    assert_eq!(check(digest.clone(), "evidence").await["valid"], true);
    let other = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"another bundle"));
    assert_eq!(check(other, "evidence").await["valid"], false);
    let wrong_purpose = check(digest.clone(), "token").await;
    assert_eq!(wrong_purpose["valid"], false);
    assert!(
        wrong_purpose["reason"]
            .as_str()
            .unwrap()
            .contains("not Token")
            || wrong_purpose["reason"].as_str().unwrap().contains("Token")
    );

    let r = api
        .post(
            "/v1/signatures",
            json!({"purpose": "license", "digest_algorithm": "sha-256", "digest": digest}),
        )
        .await;
    assert_eq!(r.status, 403);
    for (alg, d) in [
        ("md5", digest.as_str()),
        ("sha-512", digest.as_str()),
        ("sha-256", "zz"),
    ] {
        let r = api
            .post(
                "/v1/signatures",
                json!({"purpose": "evidence", "digest_algorithm": alg, "digest": d}),
            )
            .await;
        assert_eq!(r.status, 422, "{alg} {d}");
    }
}

#[tokio::test]
async fn private_keys_never_enter_the_log() {
    let dir = temp_dir("ql-secrets");
    let server = Server::embedded(&dir);
    let api = server.client();
    api.post("/v1/keys/rotate", json!({"purpose": "evidence"}))
        .await;
    let log: String = api
        .all_events()
        .await
        .iter()
        .map(|e| e.to_string())
        .collect();
    let master = std::fs::read_to_string(dir.join("master.key")).unwrap();
    assert!(!log.contains(master.trim()));
    let mut sealed = 0;
    for entry in std::fs::read_dir(dir.join("keys")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(!log.contains(v["ciphertext"].as_str().unwrap()));
        sealed += 1;
    }
    assert_eq!(sealed, 5, "one key per purpose plus the rotation");
    // Every key event carries exactly its public half.
    for e in api.all_events().await {
        if e["envelope"]["event_type"] == "KeyGenerated" {
            let p = &e["envelope"]["payload"];
            let fields: Vec<&String> = p.as_object().unwrap().keys().collect();
            assert_eq!(
                fields,
                ["algorithm", "kid", "not_before", "public_key", "purpose"]
            );
        }
    }
    drop(server);
    let (ok, out) = audit_verify(&["--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
}
