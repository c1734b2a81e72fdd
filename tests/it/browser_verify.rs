//! The public verify page (`/verify`) used as an auditor would: headless Chromium driven by
//! Playwright (`tests/browser/verify.test.mjs`) against a real embedded server. The licence
//! files and the evidence archive come from the platform's API; the page must give, for each
//! file, the answer `quantus license verify` / `quantus evidence verify` gives, and must not
//! send the file anywhere.

use std::path::Path;
use std::process::Command;

use chrono::{Duration, Utc};
use serde_json::json;

use crate::evidence::{bytes_of, payload, retar, start_job, submit_job, upload};
use crate::harness::*;

/// What the command line answers for `args` (its whole stdout).
fn cli(args: &[&str]) -> String {
    String::from_utf8_lossy(&quantus(args, &[]).stdout).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn auditors_verify_files_in_the_browser_without_uploading_them() {
    let chromium = chromium();
    let dir = temp_dir("verify-page");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;

    // A licence, then a rotation: the file fetched afterwards is signed by the new key, which
    // is then reported compromised since a minute ago.
    let r = api
        .post(
            "/v1/licenses",
            json!({"organization_id": org, "product": "qpu-scheduler", "edition": "enterprise",
                   "features": ["sso"], "limits": {"qpu_hours": 500}, "max_activations": 2,
                   "expires_at": (Utc::now() + Duration::days(365)).to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let licence = r.body["id"].as_str().unwrap().to_owned();
    let file = format!("/v1/licenses/{licence}/file");
    let valid = bytes_of(&api, &file).await;
    // A second licence of the same terms, revoked: the published CRL names it.
    let r = api
        .post(
            "/v1/licenses",
            json!({"organization_id": org, "product": "qpu-scheduler", "edition": "pro",
                   "max_activations": 1,
                   "expires_at": (Utc::now() + Duration::days(365)).to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let revoked_id = r.body["id"].as_str().unwrap().to_owned();
    let revoked = bytes_of(&api, &format!("/v1/licenses/{revoked_id}/file")).await;
    let r = api
        .post(
            &format!("/v1/licenses/{revoked_id}/revoke"),
            json!({"reason": "contract terminated"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let revoked_position = r.body["position"].as_u64().unwrap();
    let r = api
        .post("/v1/keys/rotate", json!({"purpose": "license"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new_kid = r.body["kid"].as_str().unwrap().to_owned();
    let by_compromised_key = bytes_of(&api, &file).await;
    let since = Utc::now() - Duration::minutes(1);
    crate::quantumlock::compromise_key(&api, &new_kid, since).await;
    // A key that is not compromised signs from now on (the revocation lists among them).
    let r = api
        .post("/v1/keys/rotate", json!({"purpose": "license"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // One byte of the payload changed.
    let tampered = String::from_utf8(valid.clone())
        .unwrap()
        .replace("\"qpu_hours\":500", "\"qpu_hours\":900");
    assert_ne!(tampered.as_bytes(), valid.as_slice());

    // A finished job with two artifacts, its evidence bundle exported with them.
    let job = submit_job(&api, &org).await;
    start_job(&api, &job).await;
    assert_eq!(
        upload(&api, &job, "counts.bin", payload(100_000))
            .await
            .status(),
        201
    );
    assert_eq!(
        upload(
            &api,
            &job,
            "summary.json",
            br#"{"fidelity":"0.91"}"#.to_vec()
        )
        .await
        .status(),
        201
    );
    let r = api
        .post(
            &format!("/v1/jobs/{job}/complete"),
            json!({"result_summary": {"fidelity": "0.91"}, "metrics": {"shots": 4096}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .post(&format!("/v1/jobs/{job}/evidence"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bundle = r.body["id"].as_str().unwrap().to_owned();
    let archive = bytes_of(
        &api,
        &format!("/v1/evidence/{bundle}/export?artifacts=true"),
    )
    .await;
    let forged = retar(&archive, "artifacts/counts.bin", |bytes| bytes[3] ^= 0x20);

    let keys = write(&dir, "keys.json", &bytes_of(&api, "/v1/keys").await);
    // The CRL the page reads, public (no token) and the same list `/v1/crl` serves, once the
    // licences' read model holds the revocation (the page reads it after every write here).
    let waited = bytes_of(&api, &format!("/v1/crl?min_position={revoked_position}")).await;
    let public = reqwest::get(format!("{}/verify/crl", server.url()))
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    let public = public.bytes().await.unwrap().to_vec();
    let payload_of = |bytes: &[u8]| {
        let mut doc: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        doc["payload"]["issued_at"] = json!(null);
        doc["payload"]["next_update"] = json!(null);
        doc["payload"].clone()
    };
    assert_eq!(payload_of(&public), payload_of(&waited));
    assert!(String::from_utf8_lossy(&public).contains(&revoked_id));
    let crl = write(&dir, "crl.json", &public);
    // A forged list that no longer names the revoked licence: its signature fails.
    let forged_crl = String::from_utf8(public.clone())
        .unwrap()
        .replace(&revoked_id, &licence);
    assert_ne!(forged_crl.as_bytes(), public.as_slice());
    let forged_crl = write(&dir, "crl-tampered.json", forged_crl.as_bytes());
    let mut cases = vec![];
    for (name, bytes, kind, list) in [
        ("licence.json", valid.as_slice(), "license", Some(&crl)),
        (
            "licence-tampered.json",
            tampered.as_bytes(),
            "license",
            Some(&crl),
        ),
        (
            "licence-compromised-key.json",
            by_compromised_key.as_slice(),
            "license",
            Some(&crl),
        ),
        ("evidence.tar", archive.as_slice(), "evidence", None),
        ("evidence-tampered.tar", forged.as_slice(), "evidence", None),
        (
            "licence-revoked.json",
            revoked.as_slice(),
            "license",
            Some(&crl),
        ),
        (
            "licence-revoked.json",
            revoked.as_slice(),
            "license",
            Some(&forged_crl),
        ),
    ] {
        let path = write(&dir, name, bytes);
        let mut args = vec![kind, "verify", &path, "--keys", &keys];
        if let Some(list) = list {
            args.extend(["--crl", list.as_str()]);
        }
        let answer = cli(&args);
        let served = list.map(|l| {
            if l == &crl {
                "crl.json"
            } else {
                "crl-tampered.json"
            }
        });
        cases.push(json!({"file": name, "kind": kind, "cli": answer, "crl": served}));
    }
    // What the command line says, which the page must say too.
    let said = |i: usize| cases[i]["cli"].as_str().unwrap().to_owned();
    assert!(said(0).starts_with("valid: licence"), "{}", said(0));
    assert!(
        said(1).starts_with("invalid: bad signature by"),
        "{}",
        said(1)
    );
    assert!(said(2).contains("is compromised since"), "{}", said(2));
    assert!(said(3).starts_with("valid: evidence bundle"), "{}", said(3));
    assert!(
        said(4).starts_with("invalid: artifact \"counts.bin\""),
        "{}",
        said(4)
    );
    assert!(said(0).contains("; CRL #"), "{}", said(0));
    assert!(
        said(5).starts_with("invalid: licence was revoked at")
            && said(5).contains("contract terminated"),
        "{}",
        said(5)
    );
    assert!(
        said(6).starts_with("invalid: CRL is not valid: bad signature by"),
        "{}",
        said(6)
    );
    write(
        &dir,
        "cases.json",
        serde_json::to_string(&cases).unwrap().as_bytes(),
    );

    browser_suite_passes(
        Command::new("node")
            .args(["--test", "verify.test.mjs"])
            .env("QUANTUS_URL", server.url())
            .env("VERIFY_DIR", &dir)
            .env("SCREENSHOTS", repo_root().join("docs/screenshots"))
            .env("CHROMIUM", chromium),
        1,
    );
}
