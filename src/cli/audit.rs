//! `quantus audit verify`: replay the log and check every hash, chain link and position.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quantus_domain::audit::{check_event, Audit, AuditBreak};
use quantus_infra::event_store::{read_log, LogRecord};
use quantus_infra::kafka::KafkaSettings;
use quantus_infra::{Database, InfraError};
use rayon::prelude::*;

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
    let elapsed = started.elapsed();
    println!("source: {source}");
    match outcome {
        Outcome::Clean => {}
        Outcome::Unreadable(reason) => {
            println!("BROKEN: stored data is unreadable: {reason}");
            return Ok(ExitCode::FAILURE);
        }
        Outcome::Broken(b) => {
            println!(
                "BROKEN at position {}: event {} ({} {} #{}): {}",
                b.position, b.event_id, b.aggregate_type, b.aggregate_id, b.sequence, b.reason
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let summary = match audit.finish() {
        Ok(summary) => summary,
        Err(reason) => {
            println!("BROKEN: {reason}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("events: {}", summary.events);
    println!("aggregates: {}", summary.aggregates);
    match (summary.first_position, summary.last_position) {
        (Some(first), Some(last)) => println!("positions: {first}..{last}"),
        _ => println!("positions: none (empty log)"),
    }
    println!(
        "speed: {:.0} events/s ({:.2} s)",
        summary.events as f64 / elapsed.as_secs_f64().max(1e-9),
        elapsed.as_secs_f64()
    );
    if summary.duplicates > 0 {
        println!("duplicate deliveries ignored: {}", summary.duplicates);
    }
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
            let from = if args.keys.is_some() {
                "the given key set"
            } else {
                "keys recorded in the log"
            };
            match c.largest {
                Some(largest) => println!(
                    "checkpoints: {} signed tree heads match the log (largest: {largest} events; signatures checked with {from})",
                    c.verified
                ),
                None => println!("checkpoints: none in the log"),
            }
            if let Some(size) = c.witness {
                println!("given checkpoint: the log still holds its {size} events unchanged");
            }
        }
        Err(reason) => {
            println!("BROKEN: {reason}");
            return Ok(ExitCode::FAILURE);
        }
    }
    println!("OK");
    Ok(ExitCode::SUCCESS)
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
    let mut progress = Progress::new(Some(db.head_position().await?));
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
    let mut progress = Progress::new(None);
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

/// Progress on stderr: a bar with an ETA on a terminal, otherwise a plain line every few
/// seconds (a CI log or a file gets no control characters).
struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    done: u64,
    started: Instant,
    printed: Instant,
}

impl Progress {
    const PLAIN_EVERY: Duration = Duration::from_secs(5);

    fn new(total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(len) => ProgressBar::new(len),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {pos}/{len} events {per_sec} {elapsed}, about {eta} left",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            total,
            done: 0,
            started: Instant::now(),
            printed: Instant::now(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if self.printed.elapsed() < Self::PLAIN_EVERY {
            return;
        }
        self.printed = Instant::now();
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match self.total {
            Some(total) if total > 0 => {
                let left = total.saturating_sub(self.done) as f64 / rate.max(1.0);
                eprintln!(
                    "audit: {} of {total} events ({:.0} %), {rate:.0} events/s, about {left:.0} s left",
                    self.done,
                    100.0 * self.done as f64 / total as f64
                );
            }
            _ => eprintln!("audit: {} events, {rate:.0} events/s", self.done),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
