//! `quantus audit verify`: replay the log and check every hash, chain link and position.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quantus_domain::audit::{Audit, AuditBreak};
use quantus_infra::event_store::read_log;
use quantus_infra::InfraError;

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
    let mut broken: Option<AuditBreak> = None;
    // Data that cannot even be read as an envelope is a break too, not a tool failure.
    let mut unreadable: Option<String> = None;
    let source;
    match &args.kafka {
        Some(brokers) => {
            source = format!("Kafka topics at {brokers}");
            let mut kafka = quantus_infra::kafka::KafkaSettings::new(brokers.clone());
            kafka.topic_prefix = args.topic_prefix.clone();
            let progress = bar(None);
            let result = quantus_infra::kafka::read_all_topics(&kafka, |record| {
                progress.inc(1);
                audit
                    .observe(record.position, &record.envelope)
                    .map_err(|b| {
                        let error = InfraError::Corrupt(b.to_string());
                        broken = Some(b);
                        error
                    })
            })
            .await;
            progress.finish_and_clear();
            match result {
                Err(InfraError::Corrupt(reason)) if broken.is_none() => unreadable = Some(reason),
                Err(e) if broken.is_none() => return Err(e.into()),
                _ => {}
            }
        }
        None => {
            let (config, db) = args.store.open().await?;
            source = match &config.database_url {
                Some(_) => "Postgres store".to_owned(),
                None => format!("embedded store in {}", config.data_dir.display()),
            };
            let head = db.head_position().await?;
            let progress = bar(Some(head));
            let mut after = 0;
            'read: loop {
                let records = match read_log(&db, after, 5000).await {
                    Ok(records) => records,
                    Err(InfraError::Corrupt(reason)) => {
                        unreadable = Some(reason);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                let Some(last) = records.last().map(|r| r.position) else {
                    break;
                };
                for record in &records {
                    if let Err(b) = audit.observe(record.position, &record.envelope) {
                        broken = Some(b);
                        break 'read;
                    }
                }
                progress.set_position(last);
                after = last;
            }
            progress.finish_and_clear();
        }
    }
    println!("source: {source}");
    if let Some(reason) = unreadable {
        println!("BROKEN: stored data is unreadable: {reason}");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(b) = broken {
        println!(
            "BROKEN at position {}: event {} ({} {} #{}): {}",
            b.position, b.event_id, b.aggregate_type, b.aggregate_id, b.sequence, b.reason
        );
        return Ok(ExitCode::FAILURE);
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

fn bar(len: Option<u64>) -> ProgressBar {
    // Drawn on stderr, and only when it is a terminal.
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} events {per_sec} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
