//! The evidence plane over HTTP: jobs, their configuration snapshots, and artifacts streamed
//! into object storage (a local folder here; a real S3-protocol server in
//! `postgres_kafka::i_*`).

use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::*;
use crate::portal::org_client;

/// Deterministic pseudo-random bytes (so a wrong byte anywhere shows in the digest).
pub fn payload(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub async fn submit_job(api: &Api, org: &str) -> String {
    let r = api
        .post(
            "/v1/jobs",
            json!({"organization_id": org, "backend": "ibm_kyiv",
                   "workload": {"circuit": "ghz", "qubits": 27, "shots": 4096},
                   "config": {"optimization_level": 3, "seed": 7, "transpiler": "qiskit-1.4"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

pub async fn upload(api: &Api, job: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    api.request(
        reqwest::Method::PUT,
        &format!("/v1/jobs/{job}/artifacts/{name}"),
    )
    .header("content-type", "application/octet-stream")
    .body(bytes)
    .send()
    .await
    .unwrap()
}

/// Starts a submitted job.
pub async fn start_job(api: &Api, job: &str) {
    assert_eq!(
        api.post(&format!("/v1/jobs/{job}/start"), json!({}))
            .await
            .status,
        200
    );
}

/// Runs a job through its life with a large artifact; checks what object storage holds.
pub async fn job_with_artifacts(api: &Api, org: &str) -> (String, String) {
    let job = submit_job(api, org).await;
    start_job(api, &job).await;
    // 20 MiB: several multipart chunks.
    let big = payload(20 * 1024 * 1024 + 17);
    let expected = hex::encode(sha2::Sha256::digest(&big));
    let res = upload(api, &job, "counts.bin", big.clone()).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["sha256"], expected.as_str());
    assert_eq!(body["size"], big.len() as u64);
    // Artifacts are immutable.
    let again = upload(api, &job, "counts.bin", b"other".to_vec()).await;
    assert_eq!(again.status(), 409);
    let small = upload(
        api,
        &job,
        "summary.json",
        br#"{"ghz_fidelity":"0.91"}"#.to_vec(),
    )
    .await;
    assert_eq!(small.status(), 201);
    // Names cannot walk out of the job's folder.
    let bad = upload(api, &job, "..%2F..%2Fescape", b"x".to_vec()).await;
    assert_ne!(bad.status(), 201);

    let res = api
        .request(
            reqwest::Method::GET,
            &format!("/v1/jobs/{job}/artifacts/counts.bin"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["repr-digest"]
        .to_str()
        .unwrap()
        .starts_with("sha-256=:"));
    let got = res.bytes().await.unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&got)), expected);

    let r = api
        .post(
            &format!("/v1/jobs/{job}/complete"),
            json!({"result_summary": {"ghz_fidelity": "0.91"}, "metrics": {"shots": 4096, "duration_ms": 5123}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    (job, expected)
}

#[tokio::test]
async fn a_job_keeps_its_configuration_and_artifacts_with_their_digests() {
    let dir = temp_dir("jobs");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let (job, digest) = job_with_artifacts(&api, &org).await;

    let shown = api.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(shown.body["status"], "completed", "{}", shown.body);
    assert_eq!(shown.body["artifacts"][0]["sha256"], digest.as_str());
    // The configuration snapshot is stored under the digest of its canonical JSON.
    let config = json!({"optimization_level": 3, "seed": 7, "transpiler": "qiskit-1.4"});
    let canonical = quantus_crypto::document::canonical(&config).unwrap();
    let config_digest = hex::encode(sha2::Sha256::digest(&canonical));
    assert_eq!(shown.body["config_digest"], config_digest.as_str());
    let stored = std::fs::read(
        dir.join("objects/configs")
            .join(format!("{config_digest}.json")),
    )
    .unwrap();
    assert_eq!(stored, canonical);

    let position = shown.body["version"].as_u64().unwrap();
    let _ = position;
    let list = api.get(&format!("/v1/jobs?org={org}&wait_ms=5000")).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["items"][0]["id"], job.as_str());

    // Bytes changed behind the platform's back are refused, not served.
    let object = walk(&dir.join("objects/jobs"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("counts.bin"))
        .unwrap();
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let r = api
        .get(&format!("/v1/jobs/{job}/artifacts/counts.bin"))
        .await;
    assert_eq!(r.status, 500, "{}", r.body);

    // Floats are refused (payload numbers are integers), and bad transitions are 409.
    let r = api
        .post(
            "/v1/jobs",
            json!({"organization_id": org, "backend": "x", "workload": {"theta": 0.25}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = api.post(&format!("/v1/jobs/{job}/start"), json!({})).await;
    assert_eq!(r.status, 409, "{}", r.body);
}

#[tokio::test]
async fn another_organization_cannot_see_or_touch_a_job() {
    let dir = temp_dir("jobs-tenants");
    let server = Server::embedded(&dir);
    let admin = server.client();
    let (acme, _) = admin.create_org("Acme").await;
    let (globex, _) = admin.create_org("Globex").await;
    let job = submit_job(&admin, &acme).await;
    let other = org_client(&admin, &globex, &["admin"]).await;
    assert_eq!(other.get(&format!("/v1/jobs/{job}")).await.status, 404);
    assert_eq!(
        other
            .post(&format!("/v1/jobs/{job}/cancel"), json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        upload(&other, &job, "x.bin", b"x".to_vec()).await.status(),
        404
    );
    assert_eq!(other.get(&format!("/v1/jobs?org={acme}")).await.status, 404);
    let r = other
        .post("/v1/jobs", json!({"organization_id": acme, "backend": "x"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The platform's own check of an archive (`POST /v1/evidence/verify`): its JSON report.
pub async fn platform_verify(api: &Api, archive: &[u8]) -> Value {
    api.request(reqwest::Method::POST, "/v1/evidence/verify")
        .header("content-type", "application/x-tar")
        .body(archive.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Rewrites one file inside a tar archive.
pub fn retar(archive: &[u8], change: &str, f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    rewrite_tar(archive, |path, mut bytes| {
        if path.ends_with(change) {
            f(&mut bytes);
        }
        Some(bytes)
    })
}

/// Rebuilds a tar archive file by file: `f` gets each path and its bytes and returns the
/// bytes to keep, or `None` to leave the file out.
pub fn rewrite_tar(archive: &[u8], f: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    use std::io::Read;
    let mut out = tar::Builder::new(Vec::new());
    let mut input = tar::Archive::new(archive);
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let Some(bytes) = f(&path, bytes) else {
            continue;
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, path, bytes.as_slice())
            .unwrap();
    }
    out.into_inner().unwrap()
}

pub fn evidence_verify(archive: &std::path::Path, keys: &std::path::Path) -> (bool, String) {
    evidence_verify_with(archive, keys, &[])
}

/// `quantus evidence verify` with `extra` arguments: whether it passed, and its output.
pub fn evidence_verify_with(
    archive: &std::path::Path,
    keys: &std::path::Path,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec![
        "evidence",
        "verify",
        archive.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = quantus(&args, &[]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub async fn bytes_of(api: &Api, path: &str) -> Vec<u8> {
    let res = api
        .request(reqwest::Method::GET, path)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.bytes().await.unwrap().to_vec()
}

/// Creates a bundle for a finished job and checks it offline, and its forgeries.
pub async fn bundle_round_trip(api: &Api, dir: &std::path::Path, org: &str) {
    let (job, digest) = job_with_artifacts(api, org).await;
    let r = api
        .post(&format!("/v1/jobs/{job}/evidence"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bundle = r.body["id"].as_str().unwrap().to_owned();
    let manifest = &r.body["manifest"]["payload"];
    assert_eq!(manifest["job_id"], job.as_str());
    assert_eq!(manifest["artifacts"][0]["sha256"], digest.as_str());
    assert!(manifest["events"].as_array().unwrap().len() >= 4);
    assert!(manifest["checkpoint"]["note"]
        .as_str()
        .unwrap()
        .contains("/log\n"));

    let archive = bytes_of(api, &format!("/v1/evidence/{bundle}/export?artifacts=true")).await;
    let keys = bytes_of(api, "/v1/keys").await;
    let (archive_file, keys_file) = (dir.join("bundle.tar"), dir.join("keys.json"));
    std::fs::write(&archive_file, &archive).unwrap();
    std::fs::write(&keys_file, &keys).unwrap();
    let (ok, out) = evidence_verify(&archive_file, &keys_file);
    assert!(ok, "{out}");
    assert!(
        out.contains("artifact counts.bin: verified") && out.contains("configuration"),
        "{out}"
    );
    assert!(out.contains("included in the checkpoint"), "{out}");

    // The same archive checked by the platform.
    let report = platform_verify(api, &archive).await;
    assert_eq!(report["valid"], true, "{report}");

    // Forgeries: a changed artifact byte, a changed manifest claim, a changed configuration.
    for (file, what, expected) in [
        (
            "artifacts/counts.bin",
            "an artifact",
            "does not have the recorded SHA-256",
        ),
        ("manifest.json", "the manifest", "signature"),
        ("config.json", "the configuration", "configuration snapshot"),
    ] {
        let forged = retar(&archive, file, |bytes| {
            if file == "manifest.json" {
                let text = String::from_utf8(bytes.clone()).unwrap();
                *bytes = text.replacen("ibm_kyiv", "ibm_fake", 1).into_bytes();
            } else {
                bytes[3] ^= 0x20;
            }
        });
        let forged_file = dir.join("forged.tar");
        std::fs::write(&forged_file, forged).unwrap();
        let (ok, out) = evidence_verify(&forged_file, &keys_file);
        assert!(!ok, "a changed {what} went unnoticed: {out}");
        assert!(
            out.starts_with("invalid:") && out.contains(expected),
            "{what}: {out}"
        );
    }

    // DSSE / in-toto: a statement whose subjects are the artifacts, signed over the PAE.
    let envelope: Value = api.get(&format!("/v1/evidence/{bundle}/dsse")).await.body;
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let statement_bytes = b64.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let statement: Value = serde_json::from_slice(&statement_bytes).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], digest.as_str());
    let keyset = quantus_crypto::keys::TrustedKeys::from_json(&keys).unwrap();
    let key = keyset
        .find(envelope["signatures"][0]["keyid"].as_str().unwrap())
        .unwrap();
    let sig = b64
        .decode(envelope["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    key.public_key()
        .verify(
            &quantus_crypto::evidence::dsse_pae("application/vnd.in-toto+json", &statement_bytes),
            quantus_crypto::evidence::DSSE_CONTEXT,
            &sig,
        )
        .unwrap();
}

#[tokio::test]
async fn an_evidence_bundle_verifies_offline_and_forgeries_do_not() {
    let dir = temp_dir("evidence-bundle");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    bundle_round_trip(&api, &dir, &org).await;
}

#[tokio::test]
async fn retention_purges_artifacts_but_never_manifests_and_a_legal_hold_stops_it() {
    let dir = temp_dir("retention");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let r = api
        .post(
            "/v1/jobs",
            json!({"organization_id": org, "backend": "ionq_forte", "class": "calibration"}),
        )
        .await;
    let job = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        upload(&api, &job, "raw.bin", payload(4096)).await.status(),
        201
    );
    let before = api
        .post(&format!("/v1/jobs/{job}/evidence"), json!({}))
        .await;
    let early_bundle = before.body["id"].as_str().unwrap().to_owned();

    // A member may not decide retention; the organization's admin (here the platform) may.
    let member = org_client(&api, &org, &["member"]).await;
    let rule = json!({"keep_artifacts_days": 0});
    let r = member
        .put(
            &format!("/v1/retention/{org}/rules/calibration"),
            rule.clone(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = api
        .put(&format!("/v1/retention/{org}/rules/calibration"), rule)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A legal hold stops the sweep.
    let r = api
        .post(
            &format!("/v1/retention/{org}/legal-hold"),
            json!({"reason": "litigation"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.post("/v1/retention/sweep", json!({})).await;
    assert_eq!(r.body["purged"], 0, "{}", r.body);
    let r = api.delete(&format!("/v1/retention/{org}/legal-hold")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.post("/v1/retention/sweep", json!({})).await;
    assert_eq!(r.body["purged"], 1, "{}", r.body);

    let r = api.get(&format!("/v1/jobs/{job}/artifacts/raw.bin")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap().contains("purged"),
        "{}",
        r.body
    );
    let shown = api.get(&format!("/v1/jobs/{job}")).await;
    assert!(shown.body["artifacts"][0]["purged_by"]
        .as_str()
        .unwrap()
        .contains("calibration"));
    assert!(!walk(&dir.join("objects/jobs"))
        .iter()
        .any(|p| p.to_string_lossy().contains("raw.bin")));

    // Both the bundle made before the purge and one made after still verify; the later one
    // reports the artifact as purged by policy.
    let keys_file = dir.join("keys.json");
    std::fs::write(&keys_file, bytes_of(&api, "/v1/keys").await).unwrap();
    let after = api
        .post(&format!("/v1/jobs/{job}/evidence"), json!({}))
        .await;
    let late_bundle = after.body["id"].as_str().unwrap().to_owned();
    for (bundle, expected) in [
        (early_bundle, "artifact raw.bin: not included"),
        (
            late_bundle,
            "artifact raw.bin: purged by retention policy calibration",
        ),
    ] {
        let archive = bytes_of(
            &api,
            &format!("/v1/evidence/{bundle}/export?artifacts=true"),
        )
        .await;
        let file = dir.join(format!("{bundle}.tar"));
        std::fs::write(&file, archive).unwrap();
        let (ok, out) = evidence_verify(&file, &keys_file);
        assert!(ok && out.contains(expected), "{out}");
    }
    // The log itself was never touched.
    let (ok, out) = audit_verify(&["--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
}
