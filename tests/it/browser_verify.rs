//! The public verify page (`/verify`) used as an auditor would: headless Chromium driven by
//! Playwright (`tests/browser/verify.test.mjs`) against a real embedded server. The licence
//! files and the evidence archive come from the platform's API; the page must give, for each
//! file, the answer `quantus license verify` / `quantus evidence verify` gives, and must not
//! send the file anywhere.

use std::path::Path;
use std::process::Command;

use chrono::{Duration, Utc};
use serde_json::json;

use crate::evidence::{bytes_of, payload, retar, submit_job, upload};
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
    let r = api
        .post("/v1/keys/rotate", json!({"purpose": "license"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new_kid = r.body["kid"].as_str().unwrap().to_owned();
    let by_compromised_key = bytes_of(&api, &file).await;
    let since = Utc::now() - Duration::minutes(1);
    let r = api
        .post(
            &format!("/v1/keys/{new_kid}/compromise"),
            json!({"compromised_at": since.to_rfc3339(), "reason": "HSM stolen"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // One byte of the payload changed.
    let tampered = String::from_utf8(valid.clone())
        .unwrap()
        .replace("\"qpu_hours\":500", "\"qpu_hours\":900");
    assert_ne!(tampered.as_bytes(), valid.as_slice());

    // A finished job with two artifacts, its evidence bundle exported with them.
    let job = submit_job(&api, &org).await;
    assert_eq!(
        api.post(&format!("/v1/jobs/{job}/start"), json!({}))
            .await
            .status,
        200
    );
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
    let mut cases = vec![];
    for (name, bytes, kind) in [
        ("licence.json", valid.as_slice(), "license"),
        ("licence-tampered.json", tampered.as_bytes(), "license"),
        (
            "licence-compromised-key.json",
            by_compromised_key.as_slice(),
            "license",
        ),
        ("evidence.tar", archive.as_slice(), "evidence"),
        ("evidence-tampered.tar", forged.as_slice(), "evidence"),
    ] {
        let path = write(&dir, name, bytes);
        let answer = cli(&[kind, "verify", &path, "--keys", &keys]);
        cases.push(json!({"file": name, "kind": kind, "cli": answer}));
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
    write(
        &dir,
        "cases.json",
        serde_json::to_string(&cases).unwrap().as_bytes(),
    );

    let out = Command::new("node")
        .args(["--test", "verify.test.mjs"])
        .current_dir(repo_root().join("tests/browser"))
        .env("QUANTUS_URL", server.url())
        .env("VERIFY_DIR", &dir)
        .env("SCREENSHOTS", repo_root().join("docs/screenshots"))
        .env("CHROMIUM", chromium)
        .output()
        .expect("node is needed for the browser tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("# fail 0") && stdout.contains("# pass 1"),
        "{stdout}"
    );
}
