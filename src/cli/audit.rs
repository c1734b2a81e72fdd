//! `quantus audit verify`: replay the log and check every hash, chain link and position.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use std::collections::BTreeMap;

use quantus_crypto::checkpoint;
use quantus_crypto::cosignature::{cosigners, split_note, WitnessKey};
use quantus_crypto::keys::TrustedKeys;
use quantus_crypto::merkle::consistency_proof;
use quantus_crypto::witness::AddCheckpoint;
use quantus_domain::audit::{check_event, Audit, AuditBreak};
use quantus_infra::event_store::{read_log, LogRecord};
use quantus_infra::kafka::KafkaSettings;
use quantus_infra::witness::{Cosignatures, StoredCosignature, Submitted, WitnessClient};
use quantus_infra::{Database, InfraError};
use rayon::prelude::*;

use super::progress::Progress;
use super::StoreArgs;

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Read the Kafka topics from the beginning instead of the store.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// Prefix of the topic names (as the platform was configured).
    #[arg(long, env = "QUANTUS_KAFKA_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// The published key set (`GET /v1/keys`) to check checkpoint signatures with; without
    /// it, the checkpoint keys the log itself records are used (weaker: a forger can add keys).
    #[arg(long, value_name = "KEYS.json")]
    keys: Option<std::path::PathBuf>,
    /// A signed checkpoint obtained earlier (a witness's copy): the log must still contain
    /// that tree, so cutting the log short or rewriting it is caught.
    #[arg(long, value_name = "NOTE")]
    checkpoint: Option<std::path::PathBuf>,
    /// A witness trusted to cosign checkpoints: its verifier key (`<name>+<id>+<key>`, as
    /// `quantus witness key` prints it), and, after `@`, its URL to ask it now whether the
    /// log's newest checkpoint is consistent with everything it cosigned (repeatable).
    #[arg(long = "witness", value_name = "VKEY[@URL]")]
    witnesses: Vec<String>,
    /// How many of the given witnesses must have cosigned the checkpoint the log is held to.
    #[arg(long, default_value_t = 1)]
    quorum: usize,
    /// The quorum's cosignatures must be at most this many seconds old: a witness that has
    /// cosigned recently has not seen a longer or different log since.
    #[arg(long, value_name = "SECONDS")]
    max_age: Option<u64>,
    /// Print the verdict as one JSON object (for scripts) instead of lines of text.
    #[arg(long)]
    json: bool,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut audit = Audit::new();
    let started = Instant::now();
    let source;
    let mut stored = Vec::new();
    let outcome = match &args.kafka {
        Some(brokers) => {
            source = format!("Kafka topics at {brokers}");
            let mut kafka = quantus_infra::kafka::KafkaSettings::new(brokers.clone());
            kafka.topic_prefix = args.topic_prefix.clone();
            audit_kafka(&kafka, &mut audit).await?
        }
        None => {
            let (config, db) = args.store.open().await?;
            source = match &config.database_url {
                Some(_) => "Postgres store".to_owned(),
                None => format!("embedded store in {}", config.data_dir.display()),
            };
            let outcome = audit_store(&db, &mut audit).await?;
            if !args.witnesses.is_empty() {
                stored = Cosignatures::new(db.clone()).all().await?;
            }
            outcome
        }
    };
    let mut report = Report {
        source,
        seconds: started.elapsed().as_secs_f64(),
        ..Report::default()
    };
    let exit = check(&args, &audit, outcome, &stored, &mut report).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    Ok(exit)
}

/// What `audit verify` found, printed as text or, with `--json`, as one JSON object.
#[derive(Default, serde::Serialize)]
struct Report {
    source: String,
    ok: bool,
    /// The first problem; `position` and the event are there when one event is to blame.
    broken: Option<Broken>,
    events: Option<u64>,
    aggregates: Option<u64>,
    first_position: Option<u64>,
    last_position: Option<u64>,
    duplicates: u64,
    seconds: f64,
    events_per_second: Option<f64>,
    checkpoints: Option<CheckpointReport>,
    witnessed: Option<WitnessedReport>,
    /// What the witnesses given with a URL answered when asked now.
    witnesses_asked: Vec<WitnessAnswer>,
}

#[derive(serde::Serialize)]
struct WitnessedReport {
    /// The largest checkpoint cosigned by a quorum of the given witnesses: the log holds it.
    tree_size: u64,
    cosigners: Vec<String>,
    quorum: usize,
    of: usize,
    /// The quorum's oldest cosignature among its newest ones: the log was whole then.
    cosigned_at: chrono::DateTime<chrono::Utc>,
}

#[derive(serde::Serialize)]
struct WitnessAnswer {
    witness: String,
    answer: String,
}

#[derive(serde::Serialize)]
struct Broken {
    reason: String,
    position: Option<u64>,
    event_id: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    sequence: Option<u64>,
}

impl Broken {
    fn reason(reason: String) -> Self {
        Self {
            reason,
            position: None,
            event_id: None,
            aggregate_type: None,
            aggregate_id: None,
            sequence: None,
        }
    }
}

#[derive(serde::Serialize)]
struct CheckpointReport {
    verified: u64,
    largest: Option<u64>,
    /// `given key set` or `keys recorded in the log`.
    keys_from: &'static str,
    /// The size of the checkpoint given with `--checkpoint`, found intact.
    given: Option<u64>,
}

/// Fills `report` from the reading's outcome and the checkpoint checks; the exit code.
async fn check(
    args: &VerifyArgs,
    audit: &Audit,
    outcome: Outcome,
    stored: &[StoredCosignature],
    report: &mut Report,
) -> anyhow::Result<ExitCode> {
    match outcome {
        Outcome::Clean => {}
        Outcome::Unreadable(reason) => {
            report.broken = Some(Broken::reason(format!(
                "stored data is unreadable: {reason}"
            )));
            return Ok(ExitCode::FAILURE);
        }
        Outcome::Broken(b) => {
            report.broken = Some(Broken {
                reason: b.reason,
                position: Some(b.position),
                event_id: Some(b.event_id.to_string()),
                aggregate_type: Some(b.aggregate_type),
                aggregate_id: Some(b.aggregate_id),
                sequence: Some(b.sequence),
            });
            return Ok(ExitCode::FAILURE);
        }
    }
    let summary = match audit.finish() {
        Ok(summary) => summary,
        Err(reason) => {
            report.broken = Some(Broken::reason(reason));
            return Ok(ExitCode::FAILURE);
        }
    };
    report.events = Some(summary.events);
    report.aggregates = Some(summary.aggregates);
    report.first_position = summary.first_position;
    report.last_position = summary.last_position;
    report.duplicates = summary.duplicates;
    report.events_per_second = Some(summary.events as f64 / report.seconds.max(1e-9));
    let keys = match &args.keys {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            quantus_crypto::keys::TrustedKeys::from_json(&text)?
        }
        None => audit.keys_from_log(),
    };
    let witness = match &args.checkpoint {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let mut outside: Vec<(String, String)> = Vec::new();
    if let Some(note) = &witness {
        outside.push(("the given checkpoint".into(), note.clone()));
    }
    if !args.witnesses.is_empty() {
        match witnessed(args, audit, &keys, stored, witness.as_deref(), report).await {
            Ok((note, w)) => {
                outside.push((
                    format!("the checkpoint cosigned by {}", w.cosigners.join(", ")),
                    note,
                ));
                report.witnessed = Some(w);
            }
            Err(reason) => {
                report.broken = Some(Broken::reason(reason));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let outside: Vec<(&str, &str)> = outside
        .iter()
        .map(|(l, n)| (l.as_str(), n.as_str()))
        .collect();
    match audit.check_checkpoints(&keys, &outside, chrono::Utc::now()) {
        Ok(c) => {
            report.checkpoints = Some(CheckpointReport {
                verified: c.verified,
                largest: c.largest,
                keys_from: if args.keys.is_some() {
                    "the given key set"
                } else {
                    "keys recorded in the log"
                },
                given: c.witness,
            });
        }
        Err(reason) => {
            report.broken = Some(Broken::reason(reason));
            return Ok(ExitCode::FAILURE);
        }
    }
    report.ok = true;
    Ok(ExitCode::SUCCESS)
}

/// The largest checkpoint a quorum of the given witnesses cosigned (from the cosignatures
/// stored beside the log, the given checkpoint's lines, and the answers of witnesses asked
/// now), or why there is none. Asking a witness now is what proves the log was not cut short
/// or rewritten with no earlier copy kept: it answers with the larger tree it cosigned, or
/// refuses an inconsistent one.
async fn witnessed(
    args: &VerifyArgs,
    audit: &Audit,
    keys: &TrustedKeys,
    stored: &[StoredCosignature],
    given: Option<&str>,
    report: &mut Report,
) -> Result<(String, WitnessedReport), String> {
    let now = chrono::Utc::now();
    let mut witnesses = Vec::new();
    for w in &args.witnesses {
        let (vkey, url) = match w.split_once('@') {
            Some((vkey, url)) => (vkey, Some(url.to_owned())),
            None => (w.as_str(), None),
        };
        let key = WitnessKey::from_vkey(vkey).map_err(|e| format!("--witness {vkey}: {e}"))?;
        witnesses.push((key, url));
    }
    if args.quorum == 0 || args.quorum > witnesses.len() {
        return Err(format!(
            "--quorum {} needs between 1 and the {} witnesses given",
            args.quorum,
            witnesses.len()
        ));
    }
    // Tree size -> the checkpoint note with every cosignature line known for it.
    let mut notes: BTreeMap<u64, String> = BTreeMap::new();
    for c in stored {
        notes
            .entry(c.tree_size)
            .or_insert_with(|| c.checkpoint.clone())
            .push_str(&c.line);
    }
    if let Some(note) = given {
        let opened =
            checkpoint::open(note, keys, now).map_err(|e| format!("the given checkpoint: {e}"))?;
        let (_, lines) = split_note(note).map_err(|e| e.to_string())?;
        let entry = notes.entry(opened.size).or_insert_with(|| note.to_owned());
        for line in lines {
            entry.push_str(line);
            entry.push('\n');
        }
    }
    let newest = audit.checkpoints().iter().max_by_key(|c| c.tree_size);
    let client = WitnessClient::default();
    for (key, url) in &witnesses {
        let Some(url) = url else { continue };
        let Some(newest) = newest else {
            return Err("no checkpoint in the log to ask the witnesses about".into());
        };
        let size = newest.tree_size;
        let mut request = AddCheckpoint {
            old_size: size,
            proof: Vec::new(),
            note: newest.note.clone(),
        };
        let mut answer = client.submit(url, &request).await;
        if let Ok(Submitted::Conflict(known)) = answer {
            if known > size {
                return Err(format!(
                    "witness {} has cosigned a tree of {known} events, but the log's newest checkpoint covers {size}: the log was cut short",
                    key.name
                ));
            }
            let leaves = audit.leaves(size).ok_or("the log is missing events")?;
            request.old_size = known;
            request.proof = match known {
                0 => Vec::new(),
                k => consistency_proof(&leaves, k as usize).ok_or("no consistency proof")?,
            };
            answer = client.submit(url, &request).await;
        }
        let said = match answer {
            Ok(Submitted::Cosigned(lines)) => {
                notes.entry(size).or_insert_with(|| newest.note.clone()).push_str(&lines);
                format!("cosigned the log's newest checkpoint ({size} events) now")
            }
            Ok(Submitted::Refused(422, _)) => {
                return Err(format!(
                    "witness {} refuses the log's newest checkpoint ({size} events) as inconsistent with what it cosigned before: the log was rewritten",
                    key.name
                ))
            }
            Ok(Submitted::Refused(status, body)) => format!("refused ({status}): {}", body.trim()),
            Ok(Submitted::Conflict(known)) => format!("still says it saw {known} events"),
            Err(e) => format!("did not answer: {e}"),
        };
        report.witnesses_asked.push(WitnessAnswer {
            witness: key.name.clone(),
            answer: said,
        });
    }
    let trusted: Vec<WitnessKey> = witnesses.into_iter().map(|(k, _)| k).collect();
    for (size, note) in notes.iter().rev() {
        let mut found = cosigners(note, &trusted).map_err(|e| e.to_string())?;
        if found.len() < args.quorum {
            continue;
        }
        found.sort_by_key(|c| std::cmp::Reverse(c.at));
        let at = found[args.quorum - 1].at;
        if let Some(max_age) = args.max_age {
            if (now - at).num_seconds() > max_age as i64 {
                return Err(format!(
                    "the newest checkpoint cosigned by {} witnesses ({size} events) was cosigned at {at}, more than {max_age} s ago: a witness may have seen a longer or different log since",
                    args.quorum
                ));
            }
        }
        return Ok((
            note.clone(),
            WitnessedReport {
                tree_size: *size,
                cosigners: found.into_iter().map(|c| c.witness).collect(),
                quorum: args.quorum,
                of: trusted.len(),
                cosigned_at: at,
            },
        ));
    }
    Err(format!(
        "no checkpoint carries valid cosignatures of {} of the {} given witnesses",
        args.quorum,
        trusted.len()
    ))
}

impl Report {
    fn print(&self) {
        println!("source: {}", self.source);
        if let Some(b) = &self.broken {
            if let (Some(position), Some(event_id), Some(t), Some(id), Some(sequence)) = (
                b.position,
                &b.event_id,
                &b.aggregate_type,
                &b.aggregate_id,
                b.sequence,
            ) {
                println!(
                    "BROKEN at position {position}: event {event_id} ({t} {id} #{sequence}): {}",
                    b.reason
                );
                return;
            }
        }
        if let Some(events) = self.events {
            println!("events: {events}");
            println!("aggregates: {}", self.aggregates.unwrap_or_default());
            match (self.first_position, self.last_position) {
                (Some(first), Some(last)) => println!("positions: {first}..{last}"),
                _ => println!("positions: none (empty log)"),
            }
            println!(
                "speed: {:.0} events/s ({:.2} s)",
                self.events_per_second.unwrap_or_default(),
                self.seconds
            );
            if self.duplicates > 0 {
                println!("duplicate deliveries ignored: {}", self.duplicates);
            }
        }
        if let Some(c) = &self.checkpoints {
            match c.largest {
                Some(largest) => println!(
                    "checkpoints: {} signed tree heads match the log (largest: {largest} events; signatures checked with {})",
                    c.verified, c.keys_from
                ),
                None => println!("checkpoints: none in the log"),
            }
            if let Some(size) = c.given {
                println!("given checkpoint: the log still holds its {size} events unchanged");
            }
        }
        for a in &self.witnesses_asked {
            println!("witness {}: {}", a.witness, a.answer);
        }
        if let Some(w) = &self.witnessed {
            println!(
                "witnessed: the log holds the {} events cosigned by {} ({} of {} witnesses, quorum {}), as of {}",
                w.tree_size,
                w.cosigners.join(", "),
                w.cosigners.len(),
                w.of,
                w.quorum,
                w.cosigned_at
            );
        }
        match &self.broken {
            Some(b) => println!("BROKEN: {}", b.reason),
            None => println!("OK"),
        }
    }
}

/// How reading the log ended: a break is a finding, not a failure of the tool.
pub(crate) enum Outcome {
    Clean,
    /// The first problem, in log order.
    Broken(AuditBreak),
    /// Data that cannot even be read as an envelope.
    Unreadable(String),
}

impl Outcome {
    /// For callers (benchmarks) that expect a clean log.
    pub(crate) fn clean(self) -> anyhow::Result<()> {
        match self {
            Self::Clean => Ok(()),
            Self::Broken(b) => Err(anyhow::anyhow!("{b}")),
            Self::Unreadable(reason) => Err(anyhow::anyhow!("stored data is unreadable: {reason}")),
        }
    }
}

/// Records per read, and per parallel batch.
const BATCH: u32 = 5000;

/// Feeds the whole store to `audit`, reading the next batch while the current one is checked.
pub(crate) async fn audit_store(db: &Database, audit: &mut Audit) -> anyhow::Result<Outcome> {
    let mut progress = Progress::new("audit", Some(db.head_position().await?));
    let read = |after: u64| {
        let db = db.clone();
        tokio::spawn(async move { read_log(&db, after, BATCH).await })
    };
    let mut next = read(0);
    loop {
        let records = match next.await? {
            Ok(records) => records,
            Err(InfraError::Corrupt(reason)) => return Ok(Outcome::Unreadable(reason)),
            Err(e) => return Err(e.into()),
        };
        let Some(last) = records.last().map(|r| r.position) else {
            break;
        };
        next = read(last);
        if let Err(b) = tokio::task::block_in_place(|| observe_batch(audit, &records)) {
            next.abort();
            progress.finish();
            return Ok(Outcome::Broken(b));
        }
        progress.advance(records.len() as u64);
    }
    progress.finish();
    Ok(Outcome::Clean)
}

/// Feeds every record of the platform's Kafka topics to `audit`.
async fn audit_kafka(kafka: &KafkaSettings, audit: &mut Audit) -> anyhow::Result<Outcome> {
    let mut progress = Progress::new("audit", None);
    let mut batch = Vec::with_capacity(BATCH as usize);
    let mut broken = None;
    let mut flush = |batch: &mut Vec<LogRecord>, broken: &mut Option<AuditBreak>| {
        let result = observe_batch(audit, batch);
        progress.advance(batch.len() as u64);
        batch.clear();
        result.map_err(|b| {
            let error = InfraError::Corrupt(b.to_string());
            *broken = Some(b);
            error
        })
    };
    let result = quantus_infra::kafka::read_all_topics(kafka, |record| {
        batch.push(record);
        if batch.len() < BATCH as usize {
            return Ok(());
        }
        flush(&mut batch, &mut broken)
    })
    .await
    .and_then(|_| flush(&mut batch, &mut broken));
    progress.finish();
    match (result, broken) {
        (_, Some(b)) => Ok(Outcome::Broken(b)),
        (Err(InfraError::Corrupt(reason)), None) => Ok(Outcome::Unreadable(reason)),
        (Err(e), None) => Err(e.into()),
        (Ok(()), None) => Ok(Outcome::Clean),
    }
}

/// Checks a batch: each event's own checks in parallel across the cores, then the chain links
/// in log order, so the break reported is the earliest one.
pub(crate) fn observe_batch(audit: &mut Audit, records: &[LogRecord]) -> Result<(), AuditBreak> {
    let leaves: Vec<_> = records
        .par_iter()
        .map(|r| check_event(r.position, &r.envelope))
        .collect();
    for (r, leaf) in records.iter().zip(leaves) {
        audit.link(r.position, &r.envelope, leaf?)?;
    }
    Ok(())
}
