//! Issue 19 item 2: signed compliance exports. `GET /v1/audit/exports` and `quantus audit
//! export` write a tenant's events in a range with inclusion proofs, the key set and a signed
//! manifest; `quantus audit verify-export` and the independent Python auditor check it offline,
//! and each kind of tampering fails naming the problem. On SQLite and on Postgres.

use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::evidence::bytes_of;
use crate::harness::*;
use crate::portal::org_client;

/// `quantus audit verify-export ARCHIVE --keys KEYS`: (success, stdout).
fn verify_export(archive: &Path, keys: &Path) -> (bool, String) {
    let out = quantus(
        &[
            "audit",
            "verify-export",
            archive.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    verdict(out, "verify-export could not run")
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn get_export(api: &Api, tenant: &str, from: &str, to: &str) -> (u16, Vec<u8>) {
    let r = api
        .request(
            reqwest::Method::GET,
            &format!("/v1/audit/exports?tenant={tenant}&from={from}&to={to}"),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// The archive's entries, in order, by their path inside the export's folder.
fn unpack(bytes: &[u8]) -> (String, Vec<(String, Vec<u8>)>) {
    use std::io::Read as _;
    let mut tar = tar::Archive::new(bytes);
    let mut folder = String::new();
    let mut files = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let (f, inner) = path.split_once('/').unwrap();
        folder = f.to_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.push((inner.to_owned(), data));
    }
    (folder, files)
}

fn pack(folder: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("{folder}/{name}"), data.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap()
}

/// The lines of the (only) events file, as JSON.
fn lines(files: &[(String, Vec<u8>)]) -> Vec<Value> {
    let (_, data) = files
        .iter()
        .find(|(n, _)| n == "events/000001.jsonl")
        .unwrap();
    String::from_utf8_lossy(data)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn with_lines(files: &[(String, Vec<u8>)], lines: &[Value]) -> Vec<(String, Vec<u8>)> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    files
        .iter()
        .map(|(n, d)| {
            if n == "events/000001.jsonl" {
                (n.clone(), text.clone().into_bytes())
            } else {
                (n.clone(), d.clone())
            }
        })
        .collect()
}

/// Writes `bytes` as an archive and expects `verify-export` (and, where `python` says so, the
/// independent auditor) to refuse it with a reason containing `reason`.
fn refused(dir: &Path, keys: &Path, label: &str, bytes: &[u8], reason: &str, python: bool) {
    let file = dir.join(format!("{label}.tar"));
    std::fs::write(&file, bytes).unwrap();
    let (ok, out) = verify_export(&file, keys);
    println!("{label}: {out}");
    assert!(!ok, "{label}: the tampering went unnoticed: {out}");
    assert!(
        out.contains(reason),
        "{label}: expected {reason:?} in: {out}"
    );
    if python {
        let (ok, out) = independent_verifier("verify_export.py", [&file, keys]);
        println!("{label} (independent auditor): {out}");
        assert!(!ok, "{label}: the independent auditor missed it: {out}");
    }
}

struct Story {
    _server: Server,
    dir: PathBuf,
    api: Api,
    acme: String,
    globex: String,
    from: String,
    to: String,
    keys: PathBuf,
    archive: Vec<u8>,
}

/// Two organizations with people (sealed personal data) and a rename; the export of Acme's
/// range verifies with both checkers and holds exactly Acme's events in it.
async fn export_story(label: &str, postgres: bool) -> Story {
    let dir = temp_dir(label);
    let url;
    let mut env = Vec::new();
    if postgres {
        url = fresh_database().await;
        env.push(("DATABASE_URL", url.as_str()));
    }
    let server = Server::start(&dir, &["--listen", "127.0.0.1:0"], &env);
    let api = server.client();
    let from = rfc3339(Utc::now() - chrono::Duration::seconds(1));
    let (acme, _) = api.create_org("Acme").await;
    let (globex, _) = api.create_org("Globex").await;
    for (org, email, name) in [
        (&acme, "grace@acme.example", "Grace Hopper"),
        (&globex, "ada@globex.example", "Ada Lovelace"),
        (&acme, "alan@acme.example", "Alan Turing"),
    ] {
        let r = api
            .post(
                "/v1/users",
                json!({"organization_id": org, "email": email, "name": name, "password": "correct horse battery staple"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = api
        .patch(
            &format!("/v1/organizations/{acme}"),
            json!({"name": "Acme Quantum"}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let to = rfc3339(Utc::now());
    // Written after the range: must not be in the export.
    api.patch(
        &format!("/v1/organizations/{acme}"),
        json!({"name": "Acme Later"}),
        None,
    )
    .await;

    let keys = dir.join("keys.json");
    let key_bytes = bytes_of(&api, "/v1/keys").await;
    std::fs::write(&keys, &key_bytes).unwrap();

    let (status, archive) = get_export(&api, &acme, &from, &to).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&archive));
    let file = dir.join("acme.tar");
    std::fs::write(&file, &archive).unwrap();
    let (ok, out) = verify_export(&file, &keys);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = independent_verifier("verify_export.py", [&file, &keys]);
    assert!(ok && out.contains("OK"), "independent auditor: {out}");

    // Exactly Acme's events appended in the range, none of Globex's, none after `to`.
    let expected: Vec<String> = api
        .get(&format!(
            "/v1/events?tenant={acme}&from={from}&to={to}&limit=1000"
        ))
        .await
        .body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["envelope"]["event_id"].as_str().unwrap().to_owned())
        .collect();
    let (_, files) = unpack(&archive);
    let exported: Vec<String> = lines(&files)
        .iter()
        .map(|l| l["envelope"]["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(expected.len() >= 4, "{expected:?}");
    assert_eq!(exported, expected);
    assert!(
        out.contains(&format!("events: {}", expected.len())),
        "{out}"
    );

    // Personal data stays sealed: no address or name in clear anywhere in the archive.
    let text = String::from_utf8_lossy(&archive);
    for clear in ["grace@acme.example", "Grace Hopper", "alan@acme.example"] {
        assert!(!text.contains(clear), "{clear} is in the export in clear");
    }
    assert!(!text.contains("Acme Later"));

    // Another organization's admin: Acme's trail does not exist for them; their own does.
    let globex_admin = org_client(&api, &globex, &["admin"]).await;
    let (status, body) = get_export(&globex_admin, &acme, &from, &to).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _) = get_export(&globex_admin, &globex, &from, &to).await;
    assert_eq!(status, 200);
    let member = org_client(&api, &acme, &["member"]).await;
    let (status, _) = get_export(&member, &acme, &from, &to).await;
    assert_eq!(status, 403);

    // Bad ranges are clear problems.
    let (status, body) = get_export(&api, &acme, &to, &from).await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    let (status, _) = get_export(&api, &acme, "yesterday", &to).await;
    assert_eq!(status, 400);
    let (status, _) = get_export(&api, &acme, "2020-01-01T00:00:00Z", &to).await;
    assert_eq!(status, 422);

    Story {
        _server: server,
        dir,
        api,
        acme,
        globex,
        from,
        to,
        keys,
        archive,
    }
}

#[tokio::test]
async fn an_export_verifies_offline_and_every_tampering_is_named() {
    let s = export_story("export-sqlite", false).await;
    let (folder, files) = unpack(&s.archive);
    let events = lines(&files);

    // An event removed from the middle: its aggregate's chain shows the hole.
    let acme_events: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, l)| l["envelope"]["aggregate_id"] == s.acme.as_str())
        .map(|(i, _)| i)
        .collect();
    let mut removed = events.clone();
    removed.remove(acme_events[0]);
    refused(
        &s.dir,
        &s.keys,
        "removed",
        &pack(&folder, &with_lines(&files, &removed)),
        "missing",
        true,
    );

    // An event altered, with its hash recomputed: not the event the checkpoint holds.
    let mut altered = events.clone();
    let target = &mut altered[acme_events[0]]["envelope"];
    let mut envelope: quantus_domain::envelope::Envelope =
        serde_json::from_value(target.clone()).unwrap();
    envelope.payload = json!({"name": "Evil"});
    envelope.hash = envelope.compute_hash().unwrap();
    *target = serde_json::to_value(&envelope).unwrap();
    refused(
        &s.dir,
        &s.keys,
        "altered",
        &pack(&folder, &with_lines(&files, &altered)),
        "not included in the signed checkpoint",
        true,
    );

    // An event of another tenant injected, with its genuine proof.
    let (status, other) = get_export(&s.api, &s.globex, &s.from, &s.to).await;
    assert_eq!(status, 200);
    let foreign = lines(&unpack(&other).1)[0].clone();
    let mut injected = events.clone();
    let at = injected
        .iter()
        .position(|l| l["position"].as_u64() > foreign["position"].as_u64())
        .unwrap_or(injected.len());
    injected.insert(at, foreign);
    refused(
        &s.dir,
        &s.keys,
        "injected",
        &pack(&folder, &with_lines(&files, &injected)),
        "injected",
        true,
    );

    // The range cut short: the last events dropped, and the archive itself cut off.
    let mut short = events.clone();
    short.truncate(events.len() - 1);
    refused(
        &s.dir,
        &s.keys,
        "short-range",
        &pack(&folder, &with_lines(&files, &short)),
        "missing",
        true,
    );
    refused(
        &s.dir,
        &s.keys,
        "cut-off",
        &s.archive[..s.archive.len() / 2],
        "truncated",
        true,
    );

    // The manifest's signature changed.
    let mut forged = files.clone();
    let manifest = forged
        .iter_mut()
        .find(|(n, _)| n == "manifest.json")
        .unwrap();
    let mut doc =
        quantus_crypto::document::SignedDocument::from_canonical_json(&manifest.1).unwrap();
    let sig = doc.signatures[0].sig.clone();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    doc.signatures[0].sig = format!("{flipped}{}", &sig[1..]);
    manifest.1 = doc.to_canonical_json().unwrap();
    refused(
        &s.dir,
        &s.keys,
        "signature",
        &pack(&folder, &forged),
        "the manifest's signature",
        true,
    );

    // The CLI writes the same archive from the store.
    let cli = s.dir.join("cli.tar");
    let data_dir = s.dir.to_str().unwrap();
    let out = quantus(
        &[
            "audit",
            "export",
            "--data-dir",
            data_dir,
            "--tenant",
            &s.acme,
            "--from",
            &s.from,
            "--to",
            &s.to,
            "-o",
            cli.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, out) = verify_export(&cli, &s.keys);
    assert!(ok, "{out}");
    assert_eq!(lines(&unpack(&std::fs::read(&cli).unwrap()).1), events);

    // An archive from a rewritten log (Acme renamed to Evil, hashes recomputed): its proofs
    // do not lead to the signed checkpoint.
    drop(s._server);
    crate::checkpoints::rename_acme_to_evil(&s.dir).await;
    let rewritten = s.dir.join("rewritten.tar");
    let out = quantus(
        &[
            "audit",
            "export",
            "--data-dir",
            data_dir,
            "--tenant",
            &s.acme,
            "--from",
            &s.from,
            "--to",
            &s.to,
            "-o",
            rewritten.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&rewritten).unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("Evil"));
    refused(
        &s.dir,
        &s.keys,
        "rewritten",
        &bytes,
        "not included in the signed checkpoint",
        true,
    );
}

#[tokio::test]
async fn an_export_on_postgres_verifies_and_stays_within_its_tenant() {
    export_story("export-postgres", true).await;
}

/// With a witness configured, the export's checkpoint (signed for it: the range ends after the
/// latest) is cosigned before the archive is written, and `verify-export --witness` counts it.
#[tokio::test]
async fn an_export_carries_the_witnesses_cosignatures_of_its_checkpoint() {
    use crate::witness::{
        cosigned, origin_of, save_keys, sign_checkpoint, start_witness, witness_key,
    };
    let dir = temp_dir("export-witness");
    let witness_dir = dir.join("witness-a");
    let vkey = witness_key(&witness_dir, "witness.test/a");
    let stranger = witness_key(&dir.join("witness-b"), "witness.test/b");
    let port = free_port();
    let listen = format!("127.0.0.1:{}", free_port());
    let witnesses = format!("{vkey}@http://127.0.0.1:{port}");
    let server = Server::start(
        &dir,
        &["--listen", &listen],
        &[("QUANTUS_WITNESSES", witnesses.as_str())],
    );
    let api = server.client();
    let from = rfc3339(Utc::now() - chrono::Duration::seconds(1));
    let (acme, _) = api.create_org("Acme").await;
    let first = sign_checkpoint(&api).await;
    let origin = origin_of(&first);
    let keys = dir.join("keys.json");
    save_keys(&api, &keys).await;
    let _witness = start_witness(&witness_dir, "witness.test/a", port, &origin, &keys);
    cosigned(&api, first["tree_size"].as_u64().unwrap(), "witness.test/a").await;
    let r = api
        .patch(
            &format!("/v1/organizations/{acme}"),
            json!({"name": "Acme Quantum"}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let to = rfc3339(Utc::now());

    let (status, archive) = get_export(&api, &acme, &from, &to).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&archive));
    let file = dir.join("witnessed.tar");
    std::fs::write(&file, &archive).unwrap();
    let (_, files) = unpack(&archive);
    let note = &files
        .iter()
        .find(|(n, _)| n == "checkpoint.note")
        .unwrap()
        .1;
    let size: u64 = String::from_utf8_lossy(note)
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        size > first["tree_size"].as_u64().unwrap(),
        "the export's checkpoint is not new"
    );

    let check = |vkey: &str| {
        let out = quantus(
            &[
                "audit",
                "verify-export",
                file.to_str().unwrap(),
                "--keys",
                keys.to_str().unwrap(),
                "--witness",
                vkey,
            ],
            &[],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = check(&vkey);
    assert!(
        ok && out.contains("checkpoint cosigned by witness.test/a"),
        "{out}"
    );
    let (ok, out) = check(&stranger);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cosignatures of 0 of the given witnesses, 1 needed"),
        "{out}"
    );
}
