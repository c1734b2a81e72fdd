//! Signed log checkpoints (RFC 9162 tree heads in C2SP signed-note form): the scheduler signs
//! them, proofs verify against them with the offline crate, and `quantus audit verify` uses
//! them to catch a rewritten log (even with every hash recomputed) and a log cut short.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use quantus_crypto::keys::TrustedKeys;
use quantus_crypto::merkle::{verify_consistency, verify_inclusion, Hash};
use serde_json::{json, Value};

use crate::evidence::bytes_of;
use crate::harness::*;

fn hash(v: &Value) -> Hash {
    STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(hash).collect()
}

async fn sign_checkpoint(api: &Api) -> Value {
    let r = api.post("/v1/audit/checkpoints", json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn key_set(api: &Api) -> TrustedKeys {
    let bytes = bytes_of(api, "/v1/keys").await;
    TrustedKeys::from_json(&bytes).unwrap()
}

#[tokio::test]
async fn the_scheduler_signs_checkpoints_that_verify_offline() {
    let dir = temp_dir("checkpoint-scheduler");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[("QUANTUS_CHECKPOINT_SECONDS", "1")],
    );
    let api = server.client();
    api.create_org("Acme").await;
    let checkpoint = eventually(
        "a scheduled checkpoint",
        std::time::Duration::from_secs(20),
        || async {
            let r = api.get("/v1/audit/checkpoints").await;
            r.body["items"].as_array().and_then(|i| i.last().cloned())
        },
    )
    .await;
    let keys = key_set(&api).await;
    let opened = quantus_crypto::checkpoint::open(
        checkpoint["note"].as_str().unwrap(),
        &keys,
        chrono::Utc::now(),
    )
    .unwrap();
    assert_eq!(opened.size, checkpoint["tree_size"].as_u64().unwrap());
    assert_eq!(
        hex::encode(opened.root),
        checkpoint["root_hash"].as_str().unwrap()
    );
    assert!(checkpoint["note"].as_str().unwrap().starts_with(&format!(
        "{}/log\n",
        server.url().trim_start_matches("http://")
    )));
}

#[tokio::test]
async fn inclusion_and_consistency_proofs_verify_against_signed_heads() {
    let dir = temp_dir("checkpoint-proofs");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let first = sign_checkpoint(&api).await;
    for i in 0..7 {
        api.create_org(&format!("Org {i}")).await;
    }
    let second = sign_checkpoint(&api).await;
    let (old_size, new_size) = (
        first["tree_size"].as_u64().unwrap(),
        second["tree_size"].as_u64().unwrap(),
    );
    assert!(new_size > old_size);
    let root = |c: &Value| -> Hash {
        hex::decode(c["root_hash"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };

    // The organization's creation is in both trees.
    let event = api
        .events_of("Organization")
        .await
        .into_iter()
        .find(|e| e["envelope"]["aggregate_id"] == org.as_str())
        .unwrap();
    let event_id = event["envelope"]["event_id"].as_str().unwrap();
    for (size, r) in [(old_size, root(&first)), (new_size, root(&second))] {
        let p = api
            .get(&format!(
                "/v1/audit/proofs/inclusion?event_id={event_id}&size={size}"
            ))
            .await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(hash(&p.body["root_hash"]), r);
        // The leaf is the event's own hash, so the proof ties this very event to the head.
        let leaf = quantus_crypto::merkle::leaf_hash(
            &hex::decode(event["envelope"]["hash"].as_str().unwrap()).unwrap(),
        );
        assert_eq!(hash(&p.body["leaf_hash"]), leaf);
        assert!(verify_inclusion(
            &leaf,
            p.body["leaf_index"].as_u64().unwrap(),
            size,
            &hashes(&p.body["inclusion_path"]),
            &r
        ));
    }
    // The second head extends the first.
    let c = api
        .get(&format!(
            "/v1/audit/proofs/consistency?from={old_size}&to={new_size}"
        ))
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert!(verify_consistency(
        old_size,
        new_size,
        &root(&first),
        &root(&second),
        &hashes(&c.body["consistency_path"])
    ));
    // Bad requests are problems, not proofs.
    let r = api.get("/v1/audit/proofs/consistency?from=5&to=2").await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = api
        .get(&format!(
            "/v1/audit/proofs/inclusion?event_id={}",
            uuid::Uuid::now_v7()
        ))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // A tenant cannot ask about another organization's events.
    let r = api
        .post(
            "/v1/service-principals",
            json!({"organization_id": org, "name": "x", "roles": ["auditor"]}),
        )
        .await;
    let (id, secret) = (
        r.body["client_id"].as_str().unwrap().to_owned(),
        r.body["client_secret"].as_str().unwrap().to_owned(),
    );
    let (other, _) = api.create_org("Other").await;
    let other_event = api
        .events_of("Organization")
        .await
        .into_iter()
        .find(|e| e["envelope"]["aggregate_id"] == other.as_str())
        .unwrap();
    let tenant = Api {
        base: server.url().to_owned(),
        token: client_token(server.url(), &id, &secret, None),
        http: reqwest::Client::new(),
    };
    sign_checkpoint(&api).await;
    let r = tenant
        .get(&format!(
            "/v1/audit/proofs/inclusion?event_id={}",
            other_event["envelope"]["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = tenant
        .get(&format!("/v1/audit/proofs/inclusion?event_id={event_id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Opens the embedded store for an attacker with file access (the append-only triggers go).
pub(crate) async fn attacker_db(dir: &std::path::Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&format!("sqlite://{}", dir.join("quantus.db").display()))
        .await
        .unwrap();
    for t in ["events_no_update", "events_no_delete"] {
        sqlx::query(&format!("DROP TRIGGER IF EXISTS {t}"))
            .execute(&db)
            .await
            .unwrap();
    }
    db
}

/// Renames "Acme" to "Evil" in its only event of an embedded store and recomputes that
/// event's hash: the chain and every form rule still hold, so only a checkpoint can tell.
pub(crate) async fn rename_acme_to_evil(dir: &std::path::Path) {
    let db = quantus_infra::Database::open(None, dir).await.unwrap();
    let records = quantus_infra::event_store::read_log(&db, 0, 1000)
        .await
        .unwrap();
    let target = records
        .iter()
        .find(|r| r.envelope.payload["name"] == "Acme")
        .unwrap();
    let mut forged = target.envelope.clone();
    forged.payload = json!({"name": "Evil"});
    forged.hash = forged.compute_hash().unwrap();
    db.pool.close().await;
    let attacker = attacker_db(dir).await;
    sqlx::query("UPDATE events SET payload = $1, hash = $2 WHERE position = $3")
        .bind(serde_json::to_string(&forged.payload).unwrap())
        .bind(&forged.hash)
        .bind(target.position as i64)
        .execute(&attacker)
        .await
        .unwrap();
    attacker.close().await;
}

#[tokio::test]
async fn a_rewritten_log_with_recomputed_hashes_is_caught_by_its_checkpoints() {
    let dir = temp_dir("checkpoint-rewrite");
    let store = ["--data-dir", dir.to_str().unwrap()];
    let keys_file = dir.join("keys.json");
    {
        let server = Server::embedded(&dir);
        let api = server.client();
        api.create_org("Acme").await;
        api.create_org("Globex").await;
        sign_checkpoint(&api).await;
        let keys = bytes_of(&api, "/v1/keys").await;
        std::fs::write(&keys_file, keys).unwrap();
    }
    let keys_arg = ["--keys", keys_file.to_str().unwrap()];
    let (ok, out) = audit_verify(&[&store[..], &keys_arg[..]].concat());
    assert!(
        ok && out.contains("checkpoints: 1 signed tree heads match"),
        "{out}"
    );

    rename_acme_to_evil(&dir).await;

    let (ok, out) = audit_verify(&[&store[..], &keys_arg[..]].concat());
    assert!(!ok, "the rewrite went unnoticed: {out}");
    assert!(out.contains("the log was rewritten"), "{out}");
}

#[tokio::test]
async fn a_log_cut_short_is_caught_with_a_witnessed_checkpoint() {
    let dir = temp_dir("checkpoint-truncate");
    let store = ["--data-dir", dir.to_str().unwrap()];
    let (note_file, keys_file) = (dir.join("witness.note"), dir.join("keys.json"));
    {
        let server = Server::embedded(&dir);
        let api = server.client();
        api.create_org("Acme").await;
        let early = sign_checkpoint(&api).await;
        api.create_org("Globex").await;
        let witnessed = sign_checkpoint(&api).await;
        assert!(witnessed["tree_size"].as_u64() > early["tree_size"].as_u64());
        // A witness keeps its own copy of the latest signed head.
        std::fs::write(&note_file, witnessed["note"].as_str().unwrap()).unwrap();
        let keys = bytes_of(&api, "/v1/keys").await;
        std::fs::write(&keys_file, keys).unwrap();
        let size = witnessed["tree_size"].as_u64().unwrap();
        let (ok, out) = audit_verify(
            &[
                &store[..],
                &[
                    "--keys",
                    keys_file.to_str().unwrap(),
                    "--checkpoint",
                    note_file.to_str().unwrap(),
                ][..],
            ]
            .concat(),
        );
        assert!(
            ok && out.contains(&format!("still holds its {size} events")),
            "{out}"
        );
        // Cut the log back to just after the early checkpoint: everything left is
        // self-consistent, hashes, chains and positions included.
        drop(server);
        let attacker = attacker_db(&dir).await;
        let early_position: i64 = sqlx::query_scalar(
            "SELECT MIN(position) FROM events WHERE aggregate_type = 'LogCheckpoint'",
        )
        .fetch_one(&attacker)
        .await
        .unwrap();
        sqlx::query("DELETE FROM events WHERE position > $1")
            .bind(early_position)
            .execute(&attacker)
            .await
            .unwrap();
        attacker.close().await;
    }
    let keys_arg = ["--keys", keys_file.to_str().unwrap()];
    let (ok, out) = audit_verify(&[&store[..], &keys_arg[..]].concat());
    assert!(ok, "without a witness the shorter log looks whole: {out}");
    let witness = ["--checkpoint", note_file.to_str().unwrap()];
    let (ok, out) = audit_verify(&[&store[..], &keys_arg[..], &witness[..]].concat());
    assert!(!ok, "the truncation went unnoticed: {out}");
    assert!(out.contains("the log was cut short"), "{out}");
}

/// The log of an embedded store as JSON lines, the way `quantus events tail` prints it.
async fn log_lines(dir: &std::path::Path) -> String {
    let db = quantus_infra::Database::open(None, dir).await.unwrap();
    let records = quantus_infra::event_store::read_log(&db, 0, 100_000)
        .await
        .unwrap();
    db.pool.close().await;
    records
        .iter()
        .map(|r| {
            format!(
                "{}\n",
                json!({"position": r.position, "envelope": r.envelope})
            )
        })
        .collect()
}

#[tokio::test]
async fn an_independent_checker_agrees_on_checkpoints_and_catches_the_rewrite() {
    let dir = temp_dir("checkpoint-python");
    let keys_file = dir.join("keys.json");
    {
        let server = Server::embedded(&dir);
        let api = server.client();
        for name in ["Acme", "Globex", "Initech"] {
            api.create_org(name).await;
            sign_checkpoint(&api).await;
        }
        std::fs::write(&keys_file, bytes_of(&api, "/v1/keys").await).unwrap();
    }
    let log_file = dir.join("log.jsonl");
    std::fs::write(&log_file, log_lines(&dir).await).unwrap();
    let (ok, out) = independent_verifier("verify_checkpoints.py", [&log_file, &keys_file]);
    assert!(
        ok && out.contains("checkpoints: 3 signed tree heads match"),
        "{out}"
    );

    // Rewrite one event and recompute its hash, as in the Rust auditor's test.
    let text = std::fs::read_to_string(&log_file).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let target = lines
        .iter()
        .position(|l| l["envelope"]["payload"]["name"] == "Acme")
        .unwrap();
    let mut envelope: quantus_domain::Envelope =
        serde_json::from_value(lines[target]["envelope"].clone()).unwrap();
    envelope.payload = json!({"name": "Evil"});
    envelope.hash = envelope.compute_hash().unwrap();
    lines[target]["envelope"] = serde_json::to_value(&envelope).unwrap();
    let forged: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&log_file, forged).unwrap();
    let (ok, out) = independent_verifier("verify_checkpoints.py", [&log_file, &keys_file]);
    assert!(!ok && out.contains("the log was rewritten"), "{out}");
}

/// Runs the Go tiles client in `tests/tlog` (torchwood + x/mod/sumdb/tlog, not written here).
fn go_tlog_client(args: &[&str]) -> String {
    tool_output(
        std::process::Command::new("go")
            .args(["run", "."])
            .args(args)
            .current_dir(repo_root().join("tests/tlog")),
        "the Go toolchain (go on PATH) runs the independent tiles client",
        "the Go tiles client refused the log:",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiles_client_not_written_here_checks_the_log_from_its_tiles() {
    let dir = temp_dir("checkpoint-tiles");
    let server = Server::embedded(&dir);
    let api = server.client();
    // More than two full tiles of leaves, so level-1 tiles and a partial edge exist.
    for chunk in 0..20 {
        let names: Vec<String> = (0..30).map(|i| format!("Org {chunk}-{i}")).collect();
        futures::future::join_all(names.iter().map(|n| api.create_org(n))).await;
    }
    let old = sign_checkpoint(&api).await;
    for i in 0..40 {
        api.create_org(&format!("Late {i}")).await;
    }
    let new = sign_checkpoint(&api).await;
    let size = new["tree_size"].as_u64().unwrap();
    assert!(size > 2 * 256 + 1, "only {size} events");

    let old_root = STANDARD.encode(hex::decode(old["root_hash"].as_str().unwrap()).unwrap());
    let prefix = format!("{}/v1/audit/log", server.url());
    let out = go_tlog_client(&[
        "-prefix",
        &prefix,
        "-token",
        &api.token,
        "-every",
        "41",
        "-old-size",
        &old["tree_size"].to_string(),
        "-old-root",
        &old_root,
    ]);
    assert!(out.ends_with(&format!("OK {size}\n")), "{out}");
    assert!(out.contains(&format!("consistent {} {size}\n", old["tree_size"])));

    // Each entry it proved is that position's event hash, and its proof is the one the
    // platform's own proof endpoint gives.
    let events = api.all_events().await;
    let mut checked = 0;
    for line in out.lines().filter_map(|l| l.strip_prefix("entry ")) {
        let mut parts = line.split(' ');
        let index: usize = parts.next().unwrap().parse().unwrap();
        let entry = parts.next().unwrap();
        let proof: Vec<&str> = parts
            .next()
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
            .collect();
        let event = &events[index];
        assert_eq!(event["position"].as_u64(), Some(index as u64 + 1));
        assert_eq!(entry, event["envelope"]["hash"].as_str().unwrap());
        let ours = api
            .get(&format!(
                "/v1/audit/proofs/inclusion?event_id={}&size={size}",
                event["envelope"]["event_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(ours.status, 200, "{}", ours.body);
        let ours: Vec<&str> = ours.body["inclusion_path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert_eq!(ours, proof, "entry {index}");
        checked += 1;
    }
    assert!(checked as u64 >= size / 41, "{checked} entries checked");

    // Paths outside the tree or not in canonical form are 404 problems; tiles need a token.
    for bad in [
        "tile/0/999",
        "tile/0/000.p/256",
        "tile/0/0",
        "tile/9/000",
        "tile/entries/x001/000",
    ] {
        let r = api.get(&format!("/v1/audit/log/{bad}")).await;
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{bad}"
        );
    }
    let anonymous = reqwest::get(format!("{prefix}/tile/0/000")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
}
