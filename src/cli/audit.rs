//! `quantus audit verify`: replay the log and check every hash, chain link and position.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use quantus_domain::audit::{check_event, Audit, AuditBreak};
use quantus_infra::event_store::{read_log, LogRecord};
use quantus_infra::kafka::KafkaSettings;
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
    /// Print the verdict as one JSON object (for scripts) instead of lines of text.
    #[arg(long)]
    json: bool,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut audit = Audit::new();
    let started = Instant::now();
    let source;
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
            audit_store(&db, &mut audit).await?
        }
    };
    let mut report = Report {
        source,
        seconds: started.elapsed().as_secs_f64(),
        ..Report::default()
    };
    let exit = check(&args, &audit, outcome, &mut report)?;
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
fn check(
    args: &VerifyArgs,
    audit: &Audit,
    outcome: Outcome,
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
    match audit.check_checkpoints(&keys, witness.as_deref(), chrono::Utc::now()) {
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
