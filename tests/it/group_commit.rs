//! Group commit (issue 18): one writer per process appends every pending command's events in
//! one transaction, and each command still succeeds or fails on its own. On both stores.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::EventEnvelope;
use futures::future::join_all;
use quantus_domain::audit::Audit;
use quantus_domain::organization::{
    Organization, OrganizationCreated, OrganizationEvent, OrganizationRenamed,
};
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::event_store::read_log;
use quantus_infra::{Database, LogRecord};
use serde_json::json;
use uuid::Uuid;

use crate::harness::*;

/// One command's events: organization `id`, one event per name from sequence `from` (a
/// creation at sequence 1, renames after it).
pub fn command(id: &str, from: usize, names: &[&str]) -> Vec<SerializedEvent> {
    let metadata = CommandContext {
        tenant_id: id.to_owned(),
        actor: Actor {
            kind: ActorKind::System,
            id: "group-commit-test".into(),
        },
        occurred_at: chrono::Utc::now(),
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
    }
    .to_metadata();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let sequence = from + i;
            let payload = if sequence == 1 {
                OrganizationEvent::OrganizationCreated(OrganizationCreated {
                    name: (*name).to_owned(),
                })
            } else {
                OrganizationEvent::OrganizationRenamed(OrganizationRenamed {
                    name: (*name).to_owned(),
                    previous_name: "before".into(),
                })
            };
            SerializedEvent::try_from(&EventEnvelope::<Organization> {
                aggregate_id: id.to_owned(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .unwrap()
        })
        .collect()
}

async fn sqlite(dir: &Path) -> Database {
    Database::open(None, dir).await.unwrap()
}

async fn postgres(dir: &Path) -> (Database, String) {
    let url = fresh_database().await;
    (Database::open(Some(&url), dir).await.unwrap(), url)
}

async fn whole_log(db: &Database) -> Vec<LogRecord> {
    let mut out: Vec<LogRecord> = vec![];
    loop {
        let after = out.last().map_or(0, |r| r.position);
        let batch = read_log(db, after, 1000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Positions 1..N with no gap, every hash and link right (the auditor's own checks).
fn assert_log_is_sound(log: &[LogRecord]) {
    let positions: Vec<u64> = log.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=log.len() as u64).collect::<Vec<_>>());
    let mut audit = Audit::new();
    for r in log {
        audit
            .observe(r.position, &r.envelope)
            .unwrap_or_else(|b| panic!("audit break: {b:?}"));
    }
    audit.finish().unwrap();
}

fn names_of(log: &[LogRecord], id: &str) -> Vec<(u64, String)> {
    log.iter()
        .filter(|r| r.envelope.aggregate_id == id)
        .map(|r| {
            (
                r.envelope.sequence,
                r.envelope.payload["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Seven commands reach the writer together (a current-thread runtime: the writer runs only
/// once all seven are queued) and form one batch. Two of them conflict: one with a command
/// earlier in the same batch, one with the stored log. Exactly those two are refused, with the
/// optimistic-concurrency error and none of their events written; the other five commit, in
/// queue order, each told the position of its own last event; a later command of the batch
/// builds on an earlier one's event.
async fn one_conflicting_command_in_a_batch_is_refused_alone(db: Database) {
    let x = Uuid::now_v7().to_string();
    let ys: Vec<String> = (0..3).map(|_| Uuid::now_v7().to_string()).collect();
    let head = db.append(command(&x, 1, &["X"])).await.unwrap();
    let (batches_before, commands_before) = db.append_stats().get();

    let wave = vec![
        command(&ys[0], 1, &["Y0"]),
        command(&x, 2, &["X a"]),
        command(&x, 2, &["X b", "X b2"]), // sequence 2 is taken by the command before it
        command(&ys[1], 1, &["Y1"]),
        command(&x, 1, &["X stale"]), // sequence 1 is in the log already
        command(&ys[2], 1, &["Y2", "Y2 renamed"]),
        command(&x, 3, &["X c"]), // follows "X a", in the same batch
    ];
    let answers = join_all(wave.into_iter().map(|c| db.append(c))).await;

    let (batches, commands) = db.append_stats().get();
    assert_eq!(
        (batches - batches_before, commands - commands_before),
        (1, 7),
        "the seven commands did not form one batch"
    );
    let conflict =
        |a: &Result<u64, PersistenceError>| matches!(a, Err(PersistenceError::OptimisticLockError));
    assert_eq!(answers[0].as_ref().ok(), Some(&(head + 1)), "{answers:?}");
    assert_eq!(answers[1].as_ref().ok(), Some(&(head + 2)), "{answers:?}");
    assert!(conflict(&answers[2]), "{answers:?}");
    assert_eq!(answers[3].as_ref().ok(), Some(&(head + 3)), "{answers:?}");
    assert!(conflict(&answers[4]), "{answers:?}");
    assert_eq!(answers[5].as_ref().ok(), Some(&(head + 5)), "{answers:?}");
    assert_eq!(answers[6].as_ref().ok(), Some(&(head + 6)), "{answers:?}");

    let log = whole_log(&db).await;
    assert_eq!(log.len() as u64, head + 6, "refused commands wrote events");
    assert_log_is_sound(&log);
    assert_eq!(
        names_of(&log, &x),
        vec![(1, "X".into()), (2, "X a".into()), (3, "X c".into())]
    );
    assert_eq!(
        names_of(&log, &ys[2]),
        vec![(1, "Y2".into()), (2, "Y2 renamed".into())]
    );
    let at = |p: u64| &log[p as usize - 1].envelope;
    assert_eq!(at(head + 1).aggregate_id, ys[0]);
    assert_eq!(at(head + 3).aggregate_id, ys[1]);
    assert_eq!(at(head + 6).prev_hash, at(head + 2).hash);

    // The head signal moved to the batch's last position.
    assert_eq!(db.head_position().await.unwrap(), head + 6);
}

#[tokio::test]
async fn one_conflicting_command_in_a_batch_is_refused_alone_on_sqlite() {
    let dir = temp_dir("gc-conflict-sqlite");
    one_conflicting_command_in_a_batch_is_refused_alone(sqlite(&dir).await).await;
}

#[tokio::test]
async fn one_conflicting_command_in_a_batch_is_refused_alone_on_postgres() {
    let dir = temp_dir("gc-conflict-pg");
    let (db, _) = postgres(&dir).await;
    one_conflicting_command_in_a_batch_is_refused_alone(db).await;
}

/// Two writers on one store (as two processes have), each fed by eight concurrent senders that
/// create organizations and rename them. Every answer is the position of that command's own
/// event, no two commands share one, and the log runs 1..N with every chain intact.
async fn concurrent_writers_keep_positions_gap_free(a: Database, b: Database) {
    let mut senders = vec![];
    for (w, db) in [a.clone(), b.clone()].into_iter().enumerate() {
        for s in 0..8 {
            let db = db.clone();
            senders.push(tokio::spawn(async move {
                let mut mine = vec![];
                for i in 0..12 {
                    let id = Uuid::now_v7().to_string();
                    let name = format!("w{w} s{s} #{i}");
                    let p = db.append(command(&id, 1, &[&name])).await.unwrap();
                    mine.push((p, id.clone(), 1));
                    let p = db
                        .append(command(&id, 2, &[&format!("{name} renamed")]))
                        .await
                        .unwrap();
                    mine.push((p, id, 2));
                }
                mine
            }));
        }
    }
    let mut answered: Vec<(u64, String, u64)> = vec![];
    for s in senders {
        answered.extend(s.await.unwrap());
    }
    let log = whole_log(&a).await;
    assert_log_is_sound(&log);
    assert_eq!(log.len(), 16 * 24);
    let mut seen = HashSet::new();
    for (position, id, sequence) in &answered {
        assert!(seen.insert(*position), "position {position} answered twice");
        let e = &log[*position as usize - 1].envelope;
        assert_eq!((&e.aggregate_id, e.sequence), (id, *sequence));
    }
    let (ab, ac) = a.append_stats().get();
    let (bb, bc) = b.append_stats().get();
    eprintln!("writer a: {ac} commands in {ab} batches; writer b: {bc} in {bb}");
    assert_eq!(ac + bc, 16 * 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_positions_gap_free_on_sqlite() {
    let dir = temp_dir("gc-concurrent-sqlite");
    concurrent_writers_keep_positions_gap_free(sqlite(&dir).await, sqlite(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_positions_gap_free_on_postgres() {
    let dir = temp_dir("gc-concurrent-pg");
    let (a, url) = postgres(&dir).await;
    let b = Database::open(Some(&url), &dir).await.unwrap();
    concurrent_writers_keep_positions_gap_free(a, b).await;
}

/// A statement of the batch fails (Postgres refuses a NUL character in text): the batch is
/// rolled back and its commands are appended one by one, so only the bad one fails.
#[tokio::test]
async fn a_command_the_database_refuses_fails_alone_on_postgres() {
    let dir = temp_dir("gc-refused-pg");
    let (db, _) = postgres(&dir).await;
    let good: Vec<String> = (0..3).map(|_| Uuid::now_v7().to_string()).collect();
    let (batches_before, _) = db.append_stats().get();
    let answers = join_all(
        [
            command(&good[0], 1, &["first"]),
            command("bad\0id", 1, &["bad"]),
            command(&good[1], 1, &["second"]),
            command(&good[2], 1, &["third"]),
        ]
        .into_iter()
        .map(|c| db.append(c)),
    )
    .await;
    assert_eq!(answers[0].as_ref().ok(), Some(&1), "{answers:?}");
    assert!(
        matches!(answers[1], Err(PersistenceError::ConnectionError(_))),
        "{answers:?}"
    );
    assert_eq!(answers[2].as_ref().ok(), Some(&2), "{answers:?}");
    assert_eq!(answers[3].as_ref().ok(), Some(&3), "{answers:?}");
    let (batches, _) = db.append_stats().get();
    assert_eq!(
        batches - batches_before,
        1 + 4,
        "one batch, then each command alone"
    );
    let log = whole_log(&db).await;
    assert_log_is_sound(&log);
    let ids: Vec<&str> = log
        .iter()
        .map(|r| r.envelope.aggregate_id.as_str())
        .collect();
    assert_eq!(ids, [&good[0], &good[1], &good[2]]);
    // The writer carries on (on a new connection).
    assert_eq!(
        db.append(command(&Uuid::now_v7().to_string(), 1, &["after"]))
            .await
            .unwrap(),
        4
    );
}

/// kill -9 of a real `quantus serve` while 16 clients write concurrently (so the writer commits
/// batches of several commands): after a restart every acknowledged command is there, and the
/// log is whole (positions 1..N, every hash and link: a half-written batch or command would
/// break a chain or leave a position missing).
async fn a_crash_during_batched_writes_loses_no_acknowledged_command(
    dir: &Path,
    env: &[(&str, &str)],
    store: &[&str],
) {
    let mut server = Server::start(dir, &["--listen", "127.0.0.1:0"], env);
    let api = server.client();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut acknowledged = vec![];
                for i in 0..100_000 {
                    let sent = api
                        .request(reqwest::Method::POST, "/v1/organizations")
                        .json(&json!({"name": format!("Crash {w}-{i}")}))
                        .send()
                        .await;
                    let Ok(response) = sent else { break };
                    if response.status() != 201 {
                        break;
                    }
                    let Ok(body) = response.json::<serde_json::Value>().await else {
                        break;
                    };
                    acknowledged.push((
                        body["id"].as_str().unwrap().to_owned(),
                        body["position"].as_u64().unwrap(),
                    ));
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    for w in writers {
        let mine = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("a writer hung after the crash")
            .unwrap();
        acknowledged.extend(mine);
    }
    assert!(
        acknowledged.len() >= 16,
        "too few writes before the crash: {}",
        acknowledged.len()
    );

    let server = Server::start(dir, &["--listen", "127.0.0.1:0"], env);
    let api = server.client();
    let events = api.all_events().await;
    let head = events.len() as u64;
    let at: HashMap<String, u64> = events
        .iter()
        .filter(|e| e["envelope"]["event_type"] == "OrganizationCreated")
        .map(|e| {
            (
                e["envelope"]["aggregate_id"].as_str().unwrap().to_owned(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect();
    for (id, position) in &acknowledged {
        assert_eq!(
            at.get(id),
            Some(position),
            "acknowledged organization {id} lost or moved"
        );
    }
    eprintln!(
        "{} acknowledged, {} organizations in the log after the crash",
        acknowledged.len(),
        at.len()
    );
    drop(server);
    let (ok, out) = audit_verify(store);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("events: {head}")) && out.contains(&format!("positions: 1..{head}")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_batched_writes_loses_no_acknowledged_command_on_sqlite() {
    let dir = temp_dir("gc-crash-sqlite");
    let store = ["--data-dir", dir.to_str().unwrap()];
    a_crash_during_batched_writes_loses_no_acknowledged_command(&dir, &[], &store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_batched_writes_loses_no_acknowledged_command_on_postgres() {
    let dir = temp_dir("gc-crash-pg");
    let url = fresh_database().await;
    a_crash_during_batched_writes_loses_no_acknowledged_command(
        &dir,
        &[("DATABASE_URL", url.as_str())],
        &["--database-url", &url],
    )
    .await;
}
