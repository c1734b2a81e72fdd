mod audit;
mod bench;
mod bench_crypto;
mod bench_evidence;
mod bench_identity;
mod bench_kit;
mod bench_mfa;
mod bench_overload;
mod bench_portal;
mod bench_saml;
mod bench_scale;
mod bench_scim;
mod bench_travel;
mod events;
mod evidence;
mod export;
mod license;
mod progress;
mod serve;
mod witness;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use quantus_infra::config::Overrides;
use quantus_infra::{Config, Database, Role};

#[derive(Parser)]
#[command(
    name = "quantus",
    version,
    about = "Identity, licences, evidence and contracts on one event-sourced log"
)]
pub struct Cli {
    /// How log lines look on stderr: `text` (coloured on a terminal) or `json` (one object a line).
    #[arg(long, global = true, env = "QUANTUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform (with no configuration: everything embedded under ./quantus-data).
    Serve(ServeArgs),
    /// Auditor tools over the log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Subscriber tools.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Read-model maintenance.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// JSON Schemas of the envelope and every event type.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Documents generated from the code.
    #[command(subcommand)]
    Docs(DocsCommand),
    /// Measure throughput (see docs/PERFORMANCE.md).
    Bench(bench::BenchArgs),
    /// Licence files, offline.
    #[command(subcommand)]
    License(LicenseCommand),
    /// Evidence archives, offline.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// A transparency-log witness (C2SP tlog-witness) for Quantus logs.
    #[command(subcommand)]
    Witness(witness::WitnessCommand),
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// Verify an exported evidence archive with only public keys (no network).
    Verify(evidence::VerifyArgs),
}

#[derive(Subcommand)]
enum LicenseCommand {
    /// Verify a licence file with only the public key set (no network).
    Verify(license::VerifyArgs),
}

/// Where the store is: shared by every command that opens it.
#[derive(Args, Clone, Default)]
pub struct StoreArgs {
    /// Data folder of the embedded mode.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Optional TOML file with data_dir, database_url, kafka_brokers, listen.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Postgres URL (else env DATABASE_URL, else the embedded SQLite store).
    #[arg(long)]
    database_url: Option<String>,
}

impl StoreArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            ..Default::default()
        }
    }

    fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(self.overrides())?)
    }

    async fn open(&self) -> anyhow::Result<(Config, Database)> {
        let config = self.config()?;
        let db = Database::open(config.database_url.as_deref(), &config.data_dir).await?;
        Ok((config, db))
    }
}

#[derive(Args)]
#[command(after_help = SERVE_HELP)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// Which pieces to run in this process: all, api, relay, projector or portal.
    #[arg(long, default_value = "all", value_parser = clap::value_parser!(Role))]
    role: Role,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Replay the log and check every hash and chain link.
    Verify(audit::VerifyArgs),
    /// Write a tenant's signed compliance export (as GET /v1/audit/exports serves it).
    Export(export::ExportArgs),
    /// Check a compliance export offline: signature, inclusion proofs, completeness.
    VerifyExport(export::VerifyExportArgs),
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print the log as JSON lines, following it as it grows.
    Tail(events::TailArgs),
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Empty a read model and replay the whole log into it.
    Rebuild {
        /// Read model name (e.g. organizations).
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print the result as one JSON object (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Print a read model's rows as JSON lines (for comparisons).
    Dump {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// Write schemas/ from the Rust types.
    Write {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
    /// Exit non-zero when schemas/ differs from the Rust types.
    Check {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DocsCommand {
    /// Write the event index (event, command, route, read models) from the catalogue.
    Events {
        #[arg(long, default_value = "docs/events.md")]
        out: PathBuf,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(args).await,
        Command::Audit(AuditCommand::Export(args)) => export::export(args).await,
        Command::Audit(AuditCommand::VerifyExport(args)) => export::verify_export(args),
        Command::Events(EventsCommand::Tail(args)) => events::tail(args).await,
        Command::Projections(ProjectionsCommand::Rebuild { name, store, json }) => {
            let (config, db) = store.open().await?;
            let runner = runner(&config, &db, &name)?;
            let started = std::time::Instant::now();
            let mut progress = progress::Progress::new("rebuild", Some(db.head_position().await?));
            let head = runner.rebuild_reporting(|n| progress.advance(n)).await?;
            progress.finish();
            if json {
                let report = serde_json::json!({
                    "projection": name,
                    "position": head,
                    "seconds": started.elapsed().as_secs_f64(),
                });
                println!("{report}");
            } else {
                println!("rebuilt {name} from the log up to position {head}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Projections(ProjectionsCommand::Dump { name, store }) => {
            let (config, db) = store.open().await?;
            let runner = runner(&config, &db, &name)?;
            runner.prepare().await?;
            for row in runner.dump().await? {
                println!("{row}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas(SchemasCommand::Write { dir }) => {
            let files = quantus_domain::schema::files();
            std::fs::create_dir_all(&dir)?;
            for (name, text) in &files {
                std::fs::write(dir.join(name), text)?;
            }
            println!("wrote {} schemas to {}", files.len(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas(SchemasCommand::Check { dir }) => {
            let stale = stale_schema_files(&dir);
            if stale.is_empty() {
                println!("schemas in {} match the code", dir.display());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "out of date (run `quantus schemas write`): {}",
                    stale.join(", ")
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Docs(DocsCommand::Events { out }) => {
            let index =
                quantus_domain::index::markdown(&quantus_projections::consumes::read_models());
            std::fs::write(&out, index)?;
            println!("wrote the event index to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(args).await,
        Command::License(LicenseCommand::Verify(args)) => Ok(license::verify(args)),
        Command::Evidence(EvidenceCommand::Verify(args)) => Ok(evidence::verify(args)),
        Command::Witness(command) => witness::run(command).await,
    }
}

/// The subject keys that open personal data for read models (same master key as `serve`).
pub fn subject_keys(
    config: &Config,
    db: &Database,
) -> anyhow::Result<quantus_infra::subject_keys::SubjectKeys> {
    let master = quantus_infra::keystore::master_key(
        &config.data_dir,
        config.master_key.as_ref().map(|k| k.0.as_str()),
    )?;
    Ok(quantus_infra::subject_keys::SubjectKeys::new(
        db.clone(),
        &master,
    ))
}

fn runner(
    config: &Config,
    db: &Database,
    name: &str,
) -> anyhow::Result<quantus_projections::runner::ProjectionRunner> {
    let keys = subject_keys(config, db)?;
    let projection = quantus_projections::by_name(name, &keys).ok_or_else(|| {
        let known: Vec<_> = quantus_projections::all(&keys)
            .iter()
            .map(|p| p.name())
            .collect();
        anyhow::anyhow!("no read model named {name:?} (known: {})", known.join(", "))
    })?;
    Ok(quantus_projections::runner::ProjectionRunner::new(
        db.clone(),
        projection,
    ))
}

/// Names of files in `dir` that are missing, differ from the code, or describe no known event.
pub fn stale_schema_files(dir: &std::path::Path) -> Vec<String> {
    let expected = quantus_domain::schema::files();
    let mut stale: Vec<String> = expected
        .iter()
        .filter(|(name, text)| {
            std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(text.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !expected.iter().any(|(n, _)| *n == name) {
                stale.push(name);
            }
        }
    }
    stale.sort();
    stale
}

const SERVE_HELP: &str = "\
Roles:
  all        everything in one process (the default; embedded with no configuration)
  api        commands and queries over HTTP, and the consoles
  relay      publishes the log to Kafka (one active per name; a standby waits)
  projector  builds read models from Kafka
             (relay and projector serve only /metrics, /healthz, /readyz on QUANTUS_LISTEN)
  portal     the Portal's routes and process managers, calling QSA and QuantumLock

Environment (docs/configuration.md has every setting and its default):
  DATABASE_URL, KAFKA_BROKERS, OBJECT_STORE_URL (+ AWS_*), QUANTUS_DATA_DIR, QUANTUS_LISTEN,
  QUANTUS_PUBLIC_URL, QUANTUS_MASTER_KEY, QUANTUS_CONFIG, QUANTUS_KAFKA_PARTITIONS,
  QUANTUS_KAFKA_TOPIC_PREFIX, QUANTUS_KAFKA_INSTANCE_ID, QUANTUS_READY_STALL_SECONDS,
  QUANTUS_READY_MAX_LAG, QUANTUS_CHECKPOINT_EVENTS, QUANTUS_CHECKPOINT_SECONDS,
  QUANTUS_RETENTION_SECONDS, QUANTUS_WITNESSES, QUANTUS_WITNESS_REFRESH_SECONDS,
  QUANTUS_AGGREGATE_CACHE, QUANTUS_READ_STALENESS_MS, QUANTUS_QSA_URL, QUANTUS_QUANTUMLOCK_URL,
  QUANTUS_PORTAL_CLIENT_ID, QUANTUS_PORTAL_CLIENT_SECRET, STRIPE_SECRET_KEY,
  STRIPE_WEBHOOK_SECRET, STRIPE_API_BASE, QUANTUS_HEADER_READ_TIMEOUT_SECONDS,
  QUANTUS_BODY_READ_TIMEOUT_SECONDS, QUANTUS_MIN_BODY_BYTES_PER_SECOND,
  QUANTUS_IDLE_TIMEOUT_SECONDS, QUANTUS_MAX_CONNECTIONS, QUANTUS_SHED_CONNECTIONS,
  QUANTUS_MAX_BODY_BYTES, QUANTUS_MAX_ARTIFACT_BYTES, QUANTUS_MAX_ARCHIVE_BYTES,
  QUANTUS_IDEMPOTENCY_KEY_SECONDS,
  QUANTUS_WRITE_QUEUE_DEPTH, QUANTUS_WRITE_QUEUE_TIMEOUT_MS, QUANTUS_WRITE_RETRY_AFTER_SECONDS,
  QUANTUS_CONSOLE_REFRESH_SECONDS, QUANTUS_INVITE_SECONDS,
  QUANTUS_LICENSE_RETRY_FIRST_SECONDS, QUANTUS_LICENSE_RETRY_MAX_SECONDS, RUST_LOG,
  QUANTUS_LOG_FORMAT, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
  QUANTUS_MALLOC_MMAP_THRESHOLD";
