//! Witnessed checkpoints (C2SP tlog-witness, tlog-cosignature): the platform submits each
//! checkpoint to its witnesses and keeps their cosignatures; `quantus witness serve` cosigns
//! only checkpoints consistent with the last it cosigned; `quantus audit verify --witness`
//! holds the log to a quorum of them, and, asking a witness now, catches a log cut short or
//! rewritten with no earlier copy kept. Cosignatures are checked both ways against
//! implementations not written here (transparency-dev/formats, torchwood).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::checkpoints::{attacker_db, rename_acme_to_evil};
use crate::evidence::bytes_of;
use crate::harness::*;

/// A running `quantus witness serve`; killed when dropped.
pub(crate) struct Witness {
    child: Child,
    url: String,
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `quantus witness key`: the witness's verifier key (made on first use).
pub(crate) fn witness_key(dir: &Path, name: &str) -> String {
    let out = quantus(
        &[
            "witness",
            "key",
            "--data-dir",
            dir.to_str().unwrap(),
            "--name",
            name,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub(crate) fn start_witness(
    dir: &Path,
    name: &str,
    port: u16,
    origin: &str,
    keys: &Path,
) -> Witness {
    let mut child = Command::new(bin())
        .args(["witness", "serve", "--data-dir"])
        .arg(dir)
        .args(["--name", name, "--listen", &format!("127.0.0.1:{port}")])
        .arg("--log")
        .arg(format!("{origin}={}", keys.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn quantus witness serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("witness listening on "), "{line}");
    Witness {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

pub(crate) async fn sign_checkpoint(api: &Api) -> Value {
    let r = api.post("/v1/audit/checkpoints", json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

/// The origin of a signed checkpoint: the first line of its note.
pub(crate) fn origin_of(checkpoint: &Value) -> String {
    checkpoint["note"]
        .as_str()
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

pub(crate) async fn save_keys(api: &Api, file: &Path) {
    let keys = bytes_of(api, "/v1/keys").await;
    std::fs::write(file, keys).unwrap();
}

/// Waits until `witness` has cosigned the checkpoint of `size`; its cosignature line.
pub(crate) async fn cosigned(api: &Api, size: u64, witness: &str) -> String {
    eventually(
        &format!("{witness}'s cosignature of the tree of {size}"),
        Duration::from_secs(60),
        || async {
            let r = api.get("/v1/audit/checkpoints?limit=100").await;
            r.body["items"].as_array()?.iter().find_map(|c| {
                (c["tree_size"].as_u64() == Some(size))
                    .then(|| {
                        c["cosignatures"].as_array()?.iter().find_map(|s| {
                            (s["witness"] == witness)
                                .then(|| s["line"].as_str().unwrap().to_owned())
                        })
                    })
                    .flatten()
            })
        },
    )
    .await
}

/// Runs the Go cosignature checker in `tests/tlog/cosig`.
fn go_cosig(args: &[&str]) -> (bool, String) {
    let out = Command::new("go")
        .args(["run", "./cosig"])
        .args(args)
        .current_dir(repo_root().join("tests/tlog"))
        .output()
        .expect("the Go toolchain (go on PATH) runs the independent cosignature checker");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

struct Setup {
    dir: PathBuf,
    /// One address across restarts: the checkpoint origin names the platform's URL.
    listen: String,
    keys_file: PathBuf,
    store: Vec<String>,
    env: Vec<(String, String)>,
}

async fn setup(label: &str, postgres: bool) -> Setup {
    let dir = temp_dir(label);
    let mut store = vec!["--data-dir".to_owned(), dir.to_str().unwrap().to_owned()];
    let mut env = Vec::new();
    if postgres {
        let url = fresh_database().await;
        store.extend(["--database-url".to_owned(), url.clone()]);
        env.push(("DATABASE_URL".to_owned(), url));
    }
    Setup {
        listen: format!("127.0.0.1:{}", free_port()),
        keys_file: dir.join("keys.json"),
        dir,
        store,
        env,
    }
}

impl Setup {
    fn server(&self, witnesses: &str) -> Server {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("QUANTUS_WITNESSES", witnesses));
        Server::start(&self.dir, &["--listen", &self.listen], &env)
    }

    fn verify(&self, extra: &[&str]) -> (bool, String) {
        let mut args: Vec<&str> = self.store.iter().map(String::as_str).collect();
        args.extend(["--keys", self.keys_file.to_str().unwrap()]);
        args.extend_from_slice(extra);
        audit_verify(&args)
    }
}

async fn two_witnesses_one_offline(postgres: bool) {
    let s = setup("witness-quorum", postgres).await;
    let (dir_a, dir_b) = (s.dir.join("witness-a"), s.dir.join("witness-b"));
    let (vkey_a, vkey_b) = (
        witness_key(&dir_a, "witness.test/a"),
        witness_key(&dir_b, "witness.test/b"),
    );
    let (port_a, port_b) = (free_port(), free_port());
    // B never runs: the platform keeps trying it and goes on with A.
    let server = s.server(&format!(
        "{vkey_a}@http://127.0.0.1:{port_a},{vkey_b}@http://127.0.0.1:{port_b}"
    ));
    let api = server.client();
    api.create_org("Acme").await;
    let first = sign_checkpoint(&api).await;
    let note = first["note"].as_str().unwrap();
    let origin = note.lines().next().unwrap();
    save_keys(&api, &s.keys_file).await;
    let _a = start_witness(&dir_a, "witness.test/a", port_a, origin, &s.keys_file);

    let size = first["tree_size"].as_u64().unwrap();
    let line = cosigned(&api, size, "witness.test/a").await;
    assert!(line.starts_with("\u{2014} witness.test/a "), "{line}");
    // The next checkpoint is cosigned too, from a consistency proof.
    api.create_org("Globex").await;
    let second = sign_checkpoint(&api).await;
    let size2 = second["tree_size"].as_u64().unwrap();
    cosigned(&api, size2, "witness.test/a").await;
    // Tiles clients get the cosignatures as further lines of the checkpoint note.
    let r = api
        .request(reqwest::Method::GET, "/v1/audit/log/checkpoint")
        .send()
        .await
        .unwrap();
    let served = r.text().await.unwrap();
    assert!(
        served.starts_with(second["note"].as_str().unwrap()),
        "{served}"
    );
    assert!(served.contains("\n\u{2014} witness.test/a "), "{served}");

    // transparency-dev/formats reads the cosignature (and ignores the log's own line).
    let note_file = s.dir.join("cosigned.note");
    std::fs::write(&note_file, &served).unwrap();
    let (ok, out) = go_cosig(&[
        "-verify",
        "-vkey",
        &vkey_a,
        "-note",
        note_file.to_str().unwrap(),
    ]);
    assert!(ok && out.starts_with("cosigned witness.test/a "), "{out}");
    let (ok, out) = go_cosig(&[
        "-verify",
        "-vkey",
        &vkey_b,
        "-note",
        note_file.to_str().unwrap(),
    ]);
    assert!(!ok, "B never cosigned: {out}");

    // So does the Python auditor, written from the C2SP text.
    let log_file = s.dir.join("log.jsonl");
    let tail = quantus(
        &[
            "events",
            "tail",
            "--no-follow",
            "--url",
            server.url(),
            "--token",
            &api.token,
        ],
        &[],
    );
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    std::fs::write(&log_file, &tail.stdout).unwrap();
    let python = |vkey: &str| {
        independent_verifier(
            "verify_checkpoints.py",
            [
                log_file.as_path(),
                &s.keys_file,
                &note_file,
                Path::new("--witness"),
                Path::new(vkey),
            ],
        )
    };
    let (ok, out) = python(&vkey_a);
    assert!(
        ok && out.contains(&format!(
            "witnessed: {size2} events cosigned by witness.test/a"
        )),
        "{out}"
    );
    let (ok, out) = python(&vkey_b);
    assert!(
        !ok && out.contains("valid cosignatures of 0 of the 1"),
        "{out}"
    );
    drop(server);

    let a = ["--witness", vkey_a.as_str()];
    let ab = ["--witness", vkey_a.as_str(), "--witness", vkey_b.as_str()];
    let (ok, out) = s.verify(&[&ab[..], &["--quorum", "1"][..]].concat());
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "witnessed: the log holds the {size2} events cosigned by witness.test/a (1 of 2 witnesses, quorum 1)"
        )),
        "{out}"
    );
    let (ok, out) = s.verify(&[&ab[..], &["--quorum", "2"][..]].concat());
    assert!(!ok, "{out}");
    assert!(
        out.contains("no checkpoint carries valid cosignatures of 2 of the 2 given witnesses"),
        "{out}"
    );
    let (ok, out) = s.verify(&[&a[..], &["--max-age", "3600", "--json"][..]].concat());
    assert!(ok, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["witnessed"]["tree_size"], size2);
    assert_eq!(report["witnessed"]["cosigners"], json!(["witness.test/a"]));
    // A witness key that is not A's does not count, whatever name it claims.
    let impostor = witness_key(&s.dir.join("impostor"), "witness.test/a");
    let (ok, out) = s.verify(&["--witness", impostor.as_str()]);
    assert!(!ok, "{out}");

    // torchwood's signer cosigns the checkpoint; the auditor accepts that witness too.
    let bare = s.dir.join("bare.note");
    std::fs::write(&bare, second["note"].as_str().unwrap()).unwrap();
    let (ok, out) = go_cosig(&[
        "-sign",
        "-name",
        "outside.test/w",
        "-seed",
        &"07".repeat(32),
        "-note",
        bare.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let mut lines = out.lines();
    let outside_vkey = lines
        .next()
        .unwrap()
        .strip_prefix("vkey ")
        .unwrap()
        .to_owned();
    let outside_line: String = lines.map(|l| format!("{l}\n")).collect();
    let given = s.dir.join("given.note");
    std::fs::write(
        &given,
        format!("{}{outside_line}", second["note"].as_str().unwrap()),
    )
    .unwrap();
    let (ok, out) = s.verify(&[
        "--checkpoint",
        given.to_str().unwrap(),
        "--witness",
        &outside_vkey,
        "--witness",
        &vkey_a,
        "--quorum",
        "2",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("(2 of 2 witnesses, quorum 2)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_witnesses_one_offline_cosign_checkpoints_and_the_audit_counts_a_quorum() {
    two_witnesses_one_offline(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn witnessed_checkpoints_on_postgres() {
    two_witnesses_one_offline(true).await;
}

/// A platform with witness A that has cosigned two checkpoints; returns what the attacks need.
async fn witnessed_twice(label: &str) -> (Setup, String, Witness, u64, u64) {
    let s = setup(label, false).await;
    let dir_a = s.dir.join("witness-a");
    let vkey = witness_key(&dir_a, "witness.test/a");
    let port = free_port();
    let server = s.server(&format!("{vkey}@http://127.0.0.1:{port}"));
    let api = server.client();
    api.create_org("Acme").await;
    let first = sign_checkpoint(&api).await;
    save_keys(&api, &s.keys_file).await;
    let origin = origin_of(&first);
    let witness = start_witness(&dir_a, "witness.test/a", port, &origin, &s.keys_file);
    let size1 = first["tree_size"].as_u64().unwrap();
    cosigned(&api, size1, "witness.test/a").await;
    api.create_org("Globex").await;
    let second = sign_checkpoint(&api).await;
    let size2 = second["tree_size"].as_u64().unwrap();
    cosigned(&api, size2, "witness.test/a").await;
    drop(server);
    (s, vkey, witness, size1, size2)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_cut_short_is_caught_by_asking_a_witness_with_no_copy_kept() {
    let (s, vkey, witness, size1, size2) = witnessed_twice("witness-truncate").await;
    let live = format!("{vkey}@{}", witness.url);
    let (ok, out) = s.verify(&["--witness", &live]);
    assert!(ok, "{out}");
    assert!(
        out.contains("witness witness.test/a: cosigned the log's newest checkpoint"),
        "{out}"
    );

    // Cut the log back to the first checkpoint and erase every trace of the second: the
    // events, the cosignatures kept of it, the derived tiles.
    let attacker = attacker_db(&s.dir).await;
    let first_position: i64 = sqlx::query_scalar(
        "SELECT MIN(position) FROM events WHERE aggregate_type = 'LogCheckpoint'",
    )
    .fetch_one(&attacker)
    .await
    .unwrap();
    for sql in [
        "DELETE FROM events WHERE position > $1",
        "DELETE FROM checkpoint_cosignatures WHERE tree_size >= $1",
    ] {
        sqlx::query(sql)
            .bind(first_position)
            .execute(&attacker)
            .await
            .unwrap();
    }
    attacker.close().await;
    assert!(size1 < first_position as u64 && (first_position as u64) < size2);

    // What is left is whole and cosigned: only a witness asked now can tell.
    let (ok, out) = s.verify(&["--witness", &vkey]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("the log holds the {size1} events cosigned")),
        "{out}"
    );
    let (ok, out) = s.verify(&["--witness", &live]);
    assert!(!ok, "the truncation went unnoticed: {out}");
    assert!(
        out.contains(&format!(
            "witness witness.test/a has cosigned a tree of {size2} events, but the log's newest checkpoint covers {size1}: the log was cut short"
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_log_is_refused_by_the_witness_and_caught() {
    let (s, vkey, witness, _, size2) = witnessed_twice("witness-rewrite").await;
    // Rename "Acme" to "Evil" in its only event with its hash recomputed, rebuild the derived
    // tiles, and let the platform (its keys are the operator's) sign the rewritten log.
    rename_acme_to_evil(&s.dir).await;
    let attacker = attacker_db(&s.dir).await;
    for sql in ["DELETE FROM log_tiles", "UPDATE log_tree SET size = 0"] {
        sqlx::query(sql).execute(&attacker).await.unwrap();
    }
    attacker.close().await;

    let server = s.server(&format!("{vkey}@{}", witness.url));
    let api = server.client();
    api.create_org("Initech").await;
    let forged = sign_checkpoint(&api).await;
    let size3 = forged["tree_size"].as_u64().unwrap();
    assert!(size3 > size2);
    // The witness answers the platform, and refuses: no cosignature of the rewritten tree.
    let log = eventually(
        "the platform's log of the witness's refusal",
        Duration::from_secs(60),
        || async {
            let log = std::fs::read_to_string(s.dir.join("server.log")).unwrap_or_default();
            log.contains("witness refused the checkpoint")
                .then_some(log)
        },
    )
    .await;
    assert!(log.contains("422"), "{log}");
    let r = api.get("/v1/audit/checkpoints?limit=100").await;
    let newest = r.body["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(newest["tree_size"], size3);
    assert_eq!(newest["cosignatures"], json!([]));
    drop(server);

    let live = format!("{vkey}@{}", witness.url);
    let (ok, out) = s.verify(&["--witness", &live]);
    assert!(!ok, "the rewrite went unnoticed: {out}");
    assert!(out.contains("the log was rewritten"), "{out}");
}
