//! Evidence for a job, start to end: a bundle carries the submitter's state at job time
//! (`job-state.json`: who submitted, their roles, the organization's licences, as of the job's
//! log position), proven from the log's events, on both stores.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::evidence::{bytes_of, evidence_verify, retar, submit_job};
use crate::harness::*;
use crate::qsa::{fixture_on, sign_in_for_code, token_request, Browser, REDIRECT, VERIFIER};

/// The archive's `job-state.json` and its manifest's payload.
fn job_state_of(archive: &[u8]) -> (Value, Value) {
    let unpacked = quantus_commands::evidence::unpack(archive).unwrap();
    let state = serde_json::from_slice(&unpacked.files["job-state.json"]).unwrap();
    (state, unpacked.manifest.payload)
}

/// What `quantus_crypto::job_state::verify` says of `bytes` against the manifest's checkpoint
/// and events: the checks behind the digest the manifest signs.
fn check_state(bytes: &[u8], manifest: &Value) -> Result<Value, String> {
    let mut root = [0u8; 32];
    hex::decode_to_slice(
        manifest["checkpoint"]["root_hash"].as_str().unwrap(),
        &mut root,
    )
    .unwrap();
    let hashes: BTreeMap<u64, String> = manifest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["position"].as_u64().unwrap(),
                e["hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    quantus_crypto::job_state::verify(
        bytes,
        manifest["checkpoint"]["tree_size"].as_u64().unwrap(),
        &root,
        manifest["job_id"].as_str().unwrap(),
        &hashes,
    )
    .map(|s| serde_json::to_value(s).unwrap())
    .map_err(|e| e.to_string())
}

fn verify_json(archive: &std::path::Path, keys: &std::path::Path) -> (bool, Value) {
    let out = quantus(
        &[
            "evidence",
            "verify",
            archive.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

async fn job_state_on(label: &str, postgres: bool) {
    let dir = temp_dir(label);
    let url = if postgres {
        Some(fresh_database().await)
    } else {
        None
    };
    let mut args = vec!["--listen", "127.0.0.1:0"];
    if let Some(url) = &url {
        args.extend(["--database-url", url.as_str()]);
    }
    let mut f = fixture_on(Server::start(&dir, &args, &[])).await;
    let admin = f.admin.clone();
    let org = f.org.clone();
    // A client through which the person runs jobs.
    let r = admin
        .post(
            "/v1/clients",
            json!({"organization_id": org, "name": "Lab Console", "kind": "confidential",
                   "redirect_uris": [REDIRECT], "grant_types": ["authorization_code"],
                   "scopes": ["openid", "jobs:read", "jobs:write", "evidence:read", "evidence:write"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    f.client_id = r.body["client_id"].as_str().unwrap().to_owned();
    f.client_secret = r.body["client_secret"].as_str().unwrap().to_owned();

    // Before the job: the person is a member and an auditor; the organization holds licence L.
    let user = f.user_id.clone();
    let role = |action: &'static str, role: &'static str| {
        let (admin, user, org) = (admin.clone(), user.clone(), org.clone());
        async move {
            let r = admin
                .post(
                    &format!("/v1/users/{user}/{action}"),
                    json!({"organization_id": org, "role": role}),
                )
                .await;
            assert_eq!(r.status, 200, "{action} {role}: {}", r.body);
        }
    };
    role("grant-role", "auditor").await;
    let licence = |product: &'static str| {
        let (admin, org) = (admin.clone(), org.clone());
        async move {
            let r = admin
                .post(
                    "/v1/licenses",
                    json!({"organization_id": org, "product": product, "edition": "pro",
                           "features": ["ghz", "qaoa"], "limits": {"qubits": 127},
                           "expires_at": "2099-01-01T00:00:00Z", "max_activations": 2}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        }
    };
    let licence_l = licence("quantus-runtime").await;

    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(&f, &mut browser, "openid jobs:read jobs:write").await;
    let (status, body) = token_request(
        &f,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let person = Api {
        token: body["access_token"].as_str().unwrap().to_owned(),
        ..admin.clone()
    };
    let job = submit_job(&person, &org).await;

    // After the job: other roles, the licence suspended, another licence issued.
    role("grant-role", "admin").await;
    role("revoke-role", "member").await;
    let r = admin
        .post(
            &format!("/v1/licenses/{licence_l}/suspend"),
            json!({"reason": "unpaid invoice"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let later = licence("quantus-cloud").await;

    let r = admin
        .post(&format!("/v1/jobs/{job}/evidence"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bundle = r.body["id"].as_str().unwrap().to_owned();
    let archive = bytes_of(&admin, &format!("/v1/evidence/{bundle}/export")).await;
    let (archive_file, keys_file) = (dir.join("bundle.tar"), dir.join("keys.json"));
    std::fs::write(&archive_file, &archive).unwrap();
    std::fs::write(&keys_file, bytes_of(&admin, "/v1/keys").await).unwrap();

    // The bundle names the person, their roles and L as they were when the job was submitted.
    let (ok, report) = verify_json(&archive_file, &keys_file);
    assert!(ok, "{report}");
    let state = &report["job_state"];
    let submitter = &state["submitter"];
    assert_eq!(submitter["kind"], "user", "{state}");
    assert_eq!(submitter["id"], user.as_str(), "{state}");
    assert_eq!(submitter["organization_id"], org.as_str(), "{state}");
    assert_eq!(submitter["status"], "active", "{state}");
    assert_eq!(submitter["roles"], json!(["auditor", "member"]), "{state}");
    // The person's name is sealed personal data: named as sealed, never opened.
    assert_eq!(submitter["name"], Value::Null, "{state}");
    assert_eq!(submitter["name_sealed"], true, "{state}");
    let licences = state["licenses"].as_array().unwrap();
    assert_eq!(licences.len(), 1, "only L existed at the job: {state}");
    assert_eq!(licences[0]["id"], licence_l.as_str());
    assert_eq!(licences[0]["status"], "active", "{state}");
    assert_eq!(licences[0]["in_force"], true, "{state}");
    assert_eq!(licences[0]["terms"]["features"], json!(["ghz", "qaoa"]));
    assert_eq!(licences[0]["terms"]["expires_at"], "2099-01-01T00:00:00Z");
    assert!(!state.to_string().contains(&later), "{state}");
    let job_record = admin.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(job_record.body["requested_by"], user.as_str());

    let (ok, text) = evidence_verify(&archive_file, &keys_file);
    assert!(ok, "{text}");
    for line in [
        format!("submitted by user {user} (name sealed) of organization {org}, active"),
        format!("roles in organization {org}: auditor, member"),
        format!(
            "licence {licence_l}: active (in force), quantus-runtime pro, features [ghz, qaoa]"
        ),
    ] {
        assert!(text.contains(&line), "{line:?} not in\n{text}");
    }

    // The platform's own check reports the same state.
    let res = admin
        .request(reqwest::Method::POST, "/v1/evidence/verify")
        .header("content-type", "application/x-tar")
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    let platform: Value = res.json().await.unwrap();
    assert_eq!(platform["job_state"], *state, "{platform}");

    // The sealed password hash is withheld: only its hash and proof travel.
    let (file, manifest) = job_state_of(&archive);
    let withheld: Vec<&Value> = file["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "UserPasswordSet")
        .collect();
    assert!(!withheld.is_empty(), "{file}");
    assert!(withheld.iter().all(|e| e.get("envelope").is_none()));
    assert!(check_state(&serde_json::to_vec(&file).unwrap(), &manifest).is_ok());

    // Tampering with the new part: a role changed in the summary, one event dropped, the file
    // removed. The manifest's digest catches each, and the checks behind it name the problem.
    let mut forged_role = file.clone();
    forged_role["summary"]["submitter"]["roles"] = json!(["admin", "member"]);
    let mut dropped = file.clone();
    let events = dropped["events"].as_array_mut().unwrap();
    let first = events
        .iter()
        .position(|e| e["event_type"] == "UserRegistered")
        .unwrap();
    events.remove(first);
    for (what, forged, deeper) in [
        (
            "a role in the summary",
            &forged_role,
            "the summary's summary.submitter.roles[0] is \"admin\", but its events establish \"auditor\"",
        ),
        ("a dropped event", &dropped, "event 1 is missing"),
    ] {
        let bytes = serde_json::to_vec(forged).unwrap();
        let err = check_state(&bytes, &manifest).expect_err(what);
        assert!(err.contains(deeper), "{what}: {err}");
        let tampered = retar(&archive, "job-state.json", |b| *b = bytes.clone());
        let file = dir.join("tampered.tar");
        std::fs::write(&file, tampered).unwrap();
        let (ok, out) = evidence_verify(&file, &keys_file);
        assert!(!ok, "{what} went unnoticed: {out}");
        assert!(
            out.contains("invalid: job-state.json does not have the recorded SHA-256"),
            "{what}: {out}"
        );
        let (ok, report) = verify_json(&file, &keys_file);
        assert!(!ok && report["valid"] == false, "{report}");
    }
    let removed: Vec<u8> = {
        // An archive without the file at all.
        let mut out = tar::Builder::new(Vec::new());
        let mut input = tar::Archive::new(archive.as_slice());
        for entry in input.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path.ends_with("job-state.json") {
                continue;
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            out.append_data(&mut header, path, bytes.as_slice())
                .unwrap();
        }
        out.into_inner().unwrap()
    };
    let file = dir.join("removed.tar");
    std::fs::write(&file, removed).unwrap();
    let (ok, out) = evidence_verify(&file, &keys_file);
    assert!(
        !ok && out.contains("the archive has no job-state.json"),
        "{out}"
    );
}

#[tokio::test]
async fn a_bundle_names_the_submitter_their_roles_and_licence_as_of_the_job_on_sqlite() {
    job_state_on("job-state-sqlite", false).await;
}

#[tokio::test]
async fn a_bundle_names_the_submitter_their_roles_and_licence_as_of_the_job_on_postgres() {
    job_state_on("job-state-postgres", true).await;
}

/// A bundle made by the platform before bundles carried `job-state.json` (by the build of
/// commit cb689b6; `tests/it/fixtures/`) still verifies, and says the part is absent.
#[test]
fn a_bundle_from_before_job_state_still_verifies() {
    let fixtures = repo_root().join("tests/it/fixtures");
    let archive = fixtures.join("evidence-before-job-state.tar");
    let keys = fixtures.join("evidence-before-job-state.keys.json");
    let (ok, out) = evidence_verify(&archive, &keys);
    assert!(ok, "{out}");
    assert!(
        out.contains("job state: not in this bundle")
            && out.contains("artifact counts.json: verified"),
        "{out}"
    );
    let (ok, report) = verify_json(&archive, &keys);
    assert!(ok && report["job_state"].is_null(), "{report}");
}
