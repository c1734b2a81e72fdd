//! Evidence for a job, start to end: a bundle carries the submitter's state at job time
//! (`job-state.json`: who submitted, their roles, the organization's licences, as of the job's
//! log position), proven from the log's events, on both stores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use quantus_crypto::document::SignedDocument;
use quantus_crypto::evidence::EVIDENCE_CONTEXT;
use quantus_crypto::keys::{Purpose, TrustedKey, TrustedKeys};
use quantus_crypto::{Algorithm, SecretKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::evidence::{
    bytes_of, evidence_verify, evidence_verify_with, platform_verify, retar, rewrite_tar,
    submit_job,
};
use crate::harness::*;
use crate::qsa::{fixture_on, redeem_code, sign_in_for_code, Browser, REDIRECT};

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
    let (ok, text) = evidence_verify_with(archive, keys, &["--json"]);
    (
        ok,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// A signer who changes a bundle and signs its manifest again, with an evidence key of its own
/// that the checkers are told to trust. The digests and the signature then hold, so only the
/// checks of `job-state.json` itself stand between the forgery and an auditor.
struct Forger {
    key: SecretKey,
    keys: PathBuf,
}

impl Forger {
    fn new(dir: &Path, published: &[u8]) -> Self {
        let key = SecretKey::from_seed(Algorithm::MlDsa65Ed25519, &[19; 64]).unwrap();
        let pk = key.public_key();
        let mut keys: TrustedKeys = serde_json::from_slice(published).unwrap();
        keys.keys.push(TrustedKey {
            kid: pk.kid(),
            alg: pk.alg,
            purpose: Purpose::Evidence,
            public_key: URL_SAFE_NO_PAD.encode(&pk.bytes),
            not_before: "2000-01-01T00:00:00Z".parse().unwrap(),
            retired_at: None,
            compromised_at: None,
        });
        let path = dir.join("forger-keys.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&keys).unwrap()).unwrap();
        Self { key, keys: path }
    }

    /// `archive` with `job-state.json` replaced by `state` (canonical JSON), the manifest's
    /// digest of it updated, `edit` applied to the manifest's payload, and signed again.
    fn resign(&self, archive: &[u8], state: &Value, edit: impl Fn(&mut Value)) -> Vec<u8> {
        let state = quantus_crypto::document::canonical(state).unwrap();
        let mut payload = quantus_commands::evidence::unpack(archive)
            .unwrap()
            .manifest
            .payload;
        payload["job_state_sha256"] = hex::encode(Sha256::digest(&state)).into();
        edit(&mut payload);
        let manifest = SignedDocument::sign(payload, EVIDENCE_CONTEXT, &[(&self.key, [5; 32])])
            .unwrap()
            .to_canonical_json()
            .unwrap();
        let archive = retar(archive, "job-state.json", |b| *b = state.clone());
        retar(&archive, "manifest.json", |b| *b = manifest.clone())
    }
}

/// Expects both checkers to name `archive` broken, each with a reason containing `reason`.
fn both_refuse(dir: &Path, keys: &Path, label: &str, archive: &[u8], reason: &str) {
    let file = dir.join(format!("{label}.tar"));
    std::fs::write(&file, archive).unwrap();
    let (ok, out) = evidence_verify(&file, keys);
    println!("{label}: {out}");
    assert!(!ok, "{label}: quantus evidence verify missed it: {out}");
    assert!(
        out.contains(reason),
        "{label}: expected {reason:?} in: {out}"
    );
    let (ok, out) = independent_verifier("verify_bundle.py", [&file, keys]);
    println!("{label} (independent checker): {out}");
    assert!(!ok, "{label}: the independent checker missed it: {out}");
    assert!(
        out.starts_with("BROKEN: ") && out.contains(reason),
        "{label} (independent checker): expected {reason:?} in: {out}"
    );
}

/// The positions in `state["events"]` of the submitter's events of `event_type`.
fn submitter_events(state: &Value, event_type: &str) -> Vec<usize> {
    let submitter = &state["summary"]["submitter"]["id"];
    state["events"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, e)| e["aggregate_id"] == *submitter && e["event_type"] == event_type)
        .map(|(i, _)| i)
        .collect()
}

/// Tampering with the job state, by whoever holds the archive (the signed digest catches it)
/// and by a signer who signs the changed manifest again (the checks of the file catch it):
/// each named broken by `quantus evidence verify` and by the independent checker.
fn tampered_bundles_are_named_broken(dir: &Path, archive: &[u8], keys_file: &Path) {
    let keys = std::fs::read(keys_file).unwrap();
    let (state, _) = job_state_of(archive);
    let forger = Forger::new(dir, &keys);
    let resigned = |s: &Value| forger.resign(archive, s, |_| {});

    // Signed again unchanged: both checkers accept it, so each refusal below is the change's.
    let file = dir.join("resigned.tar");
    std::fs::write(&file, resigned(&state)).unwrap();
    let (ok, out) = evidence_verify(&file, &forger.keys);
    assert!(ok, "{out}");
    let (ok, out) = independent_verifier("verify_bundle.py", [&file, &forger.keys]);
    assert!(ok && out.ends_with("OK\n"), "{out}");

    // The manifest's digest of job-state.json changed: its signature no longer holds; signed
    // again, the digest is not the file's.
    let wrong_digest = |m: &mut Value| m["job_state_sha256"] = hex::encode([7u8; 32]).into();
    let edited = retar(archive, "manifest.json", |b| {
        let mut doc = SignedDocument::from_canonical_json(b).unwrap();
        wrong_digest(&mut doc.payload);
        *b = doc.to_canonical_json().unwrap();
    });
    both_refuse(
        dir,
        keys_file,
        "digest",
        &edited,
        "the manifest's signature",
    );
    both_refuse(
        dir,
        &forger.keys,
        "digest-resigned",
        &forger.resign(archive, &state, wrong_digest),
        "job-state.json does not have the recorded SHA-256",
    );

    // A role granted to the submitter altered to "admin", its hash recomputed and the summary
    // made to match: not the event the signed checkpoint holds.
    let grants = submitter_events(&state, "UserRoleGranted");
    let grant = *grants.last().expect("the submitter was granted a role");
    let mut altered = state.clone();
    let event = &mut altered["events"][grant];
    let mut envelope: quantus_domain::envelope::Envelope =
        serde_json::from_value(event["envelope"].clone()).unwrap();
    envelope.payload["role"] = "admin".into();
    envelope.hash = envelope.compute_hash().unwrap();
    event["hash"] = envelope.hash.clone().into();
    event["envelope"] = serde_json::to_value(&envelope).unwrap();
    let position = event["position"].clone();
    altered["summary"]["submitter"]["roles"] = json!(["admin", "member"]);
    both_refuse(
        dir,
        &forger.keys,
        "altered",
        &resigned(&altered),
        &format!("the event at position {position} is not included in the signed checkpoint"),
    );
    // Altered without recomputing its hash: the envelope is not the one the hash names.
    let mut edited = state.clone();
    edited["events"][grant]["envelope"]["payload"]["role"] = "admin".into();
    both_refuse(
        dir,
        &forger.keys,
        "altered-in-place",
        &resigned(&edited),
        &format!("the event at position {position} does not have the hash it claims"),
    );

    // An event removed from the middle of the submitter's chain.
    let mut removed = state.clone();
    let registered = submitter_events(&state, "UserRegistered")[0];
    removed["events"]
        .as_array_mut()
        .unwrap()
        .remove(registered + 1);
    both_refuse(
        dir,
        &forger.keys,
        "removed",
        &resigned(&removed),
        "event 2 is missing",
    );

    // The chain cut short: its last event, the role grant, removed. Every link still holds,
    // but the summary the file states is no longer what its events establish.
    let submitter = &state["summary"]["submitter"]["id"];
    let last = state["events"]
        .as_array()
        .unwrap()
        .iter()
        .rposition(|e| e["aggregate_id"] == *submitter);
    assert_eq!(
        Some(grant),
        last,
        "the grant is the last event of the submitter's chain: {state}"
    );
    let mut short = state.clone();
    short["events"].as_array_mut().unwrap().remove(grant);
    both_refuse(
        dir,
        &forger.keys,
        "cut-short",
        &resigned(&short),
        "the summary's summary.submitter.roles is",
    );

    // A summary field changed.
    let mut summary = state.clone();
    summary["summary"]["licenses"][0]["in_force"] = false.into();
    both_refuse(
        dir,
        &forger.keys,
        "summary",
        &resigned(&summary),
        "the summary's summary.licenses[0].in_force is false, but its events establish true",
    );

    // An inclusion proof changed: the licence's first event no longer leads to the root.
    let mut proof = state.clone();
    let licence_event = proof["events"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["event_type"] == "LicenseIssued")
        .unwrap();
    licence_event["inclusion_path"][0] = STANDARD.encode([0u8; 32]).into();
    let position = licence_event["position"].clone();
    both_refuse(
        dir,
        &forger.keys,
        "proof",
        &resigned(&proof),
        &format!("the event at position {position} is not included in the signed checkpoint"),
    );
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
    let body = redeem_code(&f, &code).await;
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
    // The independent checker, written from docs/event-log.md, derives the same state.
    let (ok, independent) = independent_verifier("verify_bundle.py", [&archive_file, &keys_file]);
    assert!(ok && independent.ends_with("OK\n"), "{independent}");
    assert!(
        independent.contains(&format!(
            "submitted by user {user}, active, roles [auditor, member]"
        )) && independent.contains(&format!("licence {licence_l}: active, in force: true"))
            && independent.contains("job-state.json: in RFC 8785 form"),
        "{independent}"
    );
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
    let platform = platform_verify(&admin, &archive).await;
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
        let (ok, out) = independent_verifier("verify_bundle.py", [&file, &keys_file]);
        assert!(
            !ok && out.contains("job-state.json does not have the recorded SHA-256"),
            "{what} (independent checker): {out}"
        );
    }
    // An archive without the file at all.
    let removed = rewrite_tar(&archive, |path, bytes| {
        (!path.ends_with("job-state.json")).then_some(bytes)
    });
    let file = dir.join("removed.tar");
    std::fs::write(&file, removed).unwrap();
    let (ok, out) = evidence_verify(&file, &keys_file);
    assert!(
        !ok && out.contains("the archive has no job-state.json"),
        "{out}"
    );
    let (ok, out) = independent_verifier("verify_bundle.py", [&file, &keys_file]);
    assert!(
        !ok && out.contains("the archive has no job-state.json"),
        "{out}"
    );

    tampered_bundles_are_named_broken(&dir, &archive, &keys_file);
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
/// commit cb689b6; `tests/it/fixtures/`) still verifies, and says the part is absent, with both
/// checkers.
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
    let (ok, out) = independent_verifier("verify_bundle.py", [&archive, &keys]);
    assert!(
        ok && out.contains("job state: not in this bundle") && out.ends_with("OK\n"),
        "{out}"
    );
}

/// One state event as `summarize` reads it: its place and, unless withheld, an envelope with
/// the fields the summary is derived from (proofs and hashes are `verify`'s business, tested
/// above with real bundles).
fn state_event(position: u64, aggregate: (&str, &str), event_type: &str, payload: Value) -> Value {
    let mut e = json!({
        "position": position, "aggregate_type": aggregate.0, "aggregate_id": aggregate.1,
        "sequence": position, "event_type": event_type, "hash": "00".repeat(32),
        "inclusion_path": [],
    });
    if !quantus_crypto::job_state::WITHHELD_TYPES.contains(&event_type) {
        e["envelope"] = json!({"payload": payload, "actor": {"kind": "service", "id": "admin"},
                               "occurred_at": "2026-06-01T00:00:00.000000Z"});
    }
    e
}

/// The derivation rules of the summary, each exercised, give the same summary (or both refuse)
/// in the platform's `summarize` and in the independent checker's.
#[test]
fn the_summary_rules_agree_with_the_independent_checker() {
    let (a, b) = ("org-a", "org-b");
    let job = |kind: &str, id: &str| {
        let mut e = state_event(
            1000,
            ("Job", "job-1"),
            "JobSubmitted",
            json!({"organization_id": a, "backend": "ibm_kyiv"}),
        );
        e["envelope"]["actor"] = json!({"kind": kind, "id": id});
        e["envelope"]["occurred_at"] = "2026-06-01T12:00:00.000000Z".into();
        e
    };
    let person = ("User", "u-1");
    let licence = |id: &'static str, not_before: &str, expires_at: &str, grace: Option<i64>| {
        let mut terms = json!({"organization_id": a, "product": "qpu", "edition": "pro",
                               "features": ["ghz"], "not_before": not_before, "expires_at": expires_at});
        if let Some(g) = grace {
            terms["grace_period_seconds"] = g.into();
        }
        (("License", id), terms)
    };
    let (l1, l1_terms) = licence(
        "l-1",
        "2026-01-01T00:00:00Z",
        "2026-06-01T11:00:00Z",
        Some(7200),
    );
    let (l2, l2_terms) = licence("l-2", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z", None);
    let (l3, l3_terms) = licence(
        "l-3",
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
        Some(0),
    );
    let (l4, l4_terms) = licence("l-4", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z", None);
    let (l5, l5_terms) = licence("l-5", "2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z", None);
    let (l6, l6_terms) = licence("l-6", "2026-01-01T00:00:00Z", "2026-06-01T12:00:00Z", None);
    let rich = vec![
        state_event(
            1,
            person,
            "UserRegistered",
            json!({"organization_id": a, "roles": ["member"], "name": {"sealed": "x"}}),
        ),
        state_event(2, person, "UserPasswordSet", json!({})),
        state_event(
            3,
            person,
            "UserRoleGranted",
            json!({"organization_id": a, "role": "admin"}),
        ),
        state_event(
            4,
            person,
            "UserRoleGranted",
            json!({"organization_id": b, "role": "auditor"}),
        ),
        state_event(
            5,
            person,
            "UserRoleRevoked",
            json!({"organization_id": a, "role": "member"}),
        ),
        state_event(
            6,
            person,
            "UserRoleRevoked",
            json!({"organization_id": "org-c", "role": "member"}),
        ),
        state_event(
            7,
            person,
            "UserRoleGranted",
            json!({"organization_id": a, "role": "Zeta"}),
        ),
        state_event(8, person, "UserDisabled", json!({"reason": "left"})),
        state_event(9, person, "UserEnabled", json!({})),
        state_event(10, l1, "LicenseIssued", l1_terms),
        state_event(11, l2, "LicenseIssued", l2_terms),
        state_event(12, l2, "LicenseSuspended", json!({"reason": "unpaid"})),
        state_event(13, l3, "LicenseIssued", l3_terms),
        state_event(14, l3, "LicenseSuspended", json!({"reason": "unpaid"})),
        state_event(15, l3, "LicenseReinstated", json!({})),
        state_event(
            16,
            l3,
            "LicenseRenewed",
            json!({"expires_at": "2026-12-01T00:00:00Z"}),
        ),
        state_event(17, l3, "LicenseActivated", json!({})),
        state_event(18, l4, "LicenseIssued", l4_terms),
        state_event(
            19,
            l4,
            "LicenseRevoked",
            json!({"reason": "fraud", "revoked_at": "2026-03-01T00:00:00Z"}),
        ),
        state_event(20, l5, "LicenseIssued", l5_terms),
        state_event(21, l6, "LicenseIssued", l6_terms),
    ];
    let erased = vec![
        state_event(
            1,
            person,
            "UserRegistered",
            json!({"organization_id": a, "roles": ["admin", "member"]}),
        ),
        state_event(2, person, "UserErased", json!({})),
    ];
    let service = ("Client", "c-1");
    let principal = vec![
        state_event(
            1,
            service,
            "ClientRegistered",
            json!({"organization_id": a, "name": "Lab Runner", "roles": ["member", "admin"]}),
        ),
        state_event(2, service, "ClientSecretRotated", json!({})),
        state_event(
            3,
            service,
            "ClientDisabled",
            json!({"reason": "rotated out"}),
        ),
    ];
    let mut foreign = l2_terms_for(b);
    foreign["not_before"] = "2026-01-01T00:00:00Z".into();
    let cases = vec![
        (job("user", "u-1"), rich),
        (job("user", "u-1"), erased),
        (job("service", "c-1"), principal),
        (job("service", "bootstrap-admin"), vec![]),
        // Refused by both:
        (
            job("user", "u-1"),
            vec![state_event(1, ("Group", "g-1"), "GroupCreated", json!({}))],
        ),
        (
            job("system", "sweeper"),
            vec![state_event(1, person, "UserEnabled", json!({}))],
        ),
        (
            job("user", "u-1"),
            vec![state_event(
                1,
                l2,
                "LicenseSuspended",
                json!({"reason": "x"}),
            )],
        ),
        (
            job("user", "u-1"),
            vec![state_event(1, l2, "LicenseIssued", foreign)],
        ),
        (
            job("user", "u-1"),
            vec![state_event(
                1,
                l2,
                "LicenseIssued",
                l1_terms_without_expiry(),
            )],
        ),
    ];

    let ours: Vec<Value> = cases
        .iter()
        .map(|(job, events)| {
            let job = serde_json::from_value(job.clone()).unwrap();
            let events: Vec<quantus_crypto::job_state::StateEvent> =
                serde_json::from_value(Value::from(events.clone())).unwrap();
            match quantus_crypto::job_state::summarize(&job, &events) {
                Ok(s) => json!({"summary": s}),
                Err(e) => json!({"refused": e.to_string()}),
            }
        })
        .collect();
    let input: Vec<Value> = cases
        .iter()
        .map(|(job, events)| json!({"job": job, "events": events}))
        .collect();
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys; sys.path.insert(0, sys.argv[1]); import verify_bundle as v\n\
             out = []\n\
             for c in json.load(sys.stdin):\n\
             \x20   try:\n\
             \x20       out.append({'summary': v.summarize(c['job'], c['events'])})\n\
             \x20   except v.Broken as e:\n\
             \x20       out.append({'refused': str(e)})\n\
             print(json.dumps(out))\n",
        )
        .arg(repo_root().join("tests/auditor"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed for the independent bundle check");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        &serde_json::to_vec(&input).unwrap(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the independent checker could not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for (i, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        match (ours.get("summary"), theirs.get("summary")) {
            (Some(o), Some(t)) => assert_eq!(o, t, "case {i}"),
            (None, None) => {}
            _ => panic!("case {i}: the platform says {ours}, the independent checker {theirs}"),
        }
    }
    // What the rich case establishes, so that agreeing is not agreeing on nothing.
    let rich = &ours[0]["summary"];
    assert_eq!(
        rich["submitter"]["roles"],
        json!(["Zeta", "admin"]),
        "{rich}"
    );
    assert_eq!(rich["submitter"]["status"], "active");
    let in_force: Vec<(&str, &str, bool)> = rich["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap(),
                l["status"].as_str().unwrap(),
                l["in_force"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        in_force,
        [
            ("l-1", "active", true),
            ("l-2", "suspended", false),
            ("l-3", "active", true),
            ("l-4", "revoked", false),
            ("l-5", "active", false),
            ("l-6", "active", false),
        ]
    );
    assert_eq!(ours[1]["summary"]["submitter"]["status"], "erased");
    assert_eq!(ours[2]["summary"]["submitter"]["name"], "Lab Runner");
    assert_eq!(ours[3]["summary"]["submitter"]["status"], "unrecorded");
    assert!(
        ours[4..].iter().all(|o| o.get("refused").is_some()),
        "{ours:?}"
    );
}

fn l2_terms_for(org: &str) -> Value {
    json!({"organization_id": org, "product": "qpu", "edition": "pro", "features": [],
           "expires_at": "2027-01-01T00:00:00Z"})
}

fn l1_terms_without_expiry() -> Value {
    json!({"organization_id": "org-a", "product": "qpu", "edition": "pro", "features": [],
           "not_before": "2026-01-01T00:00:00Z"})
}
