//! `quantus witness`: run a C2SP tlog-witness for Quantus logs, with its own key and state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use quantus_crypto::keys::TrustedKeys;
use quantus_infra::witness::Witness;

#[derive(Subcommand)]
pub enum WitnessCommand {
    /// Serve `POST /add-checkpoint`: cosign each checkpoint consistent with the last one.
    Serve(ServeArgs),
    /// Print the witness's verifier key (creating the key on first use).
    Key(KeyArgs),
}

#[derive(Args)]
pub struct KeyArgs {
    /// The witness's own folder: its sealed key and its state.
    #[arg(long, default_value = "quantus-witness")]
    data_dir: PathBuf,
    /// Its name, a schema-less URL (e.g. witness.example.com/w1).
    #[arg(long)]
    name: String,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7380")]
    listen: String,
    /// A log to witness: `<origin>=<key set file>` (the log's `GET /v1/keys`); repeatable.
    #[arg(long = "log", value_name = "ORIGIN=KEYS.json", required = true)]
    logs: Vec<String>,
}

fn open(key: &KeyArgs, logs: BTreeMap<String, TrustedKeys>) -> anyhow::Result<Witness> {
    let master = std::env::var("QUANTUS_MASTER_KEY").ok();
    Ok(Witness::open(
        &key.data_dir,
        &key.name,
        master.as_deref(),
        logs,
    )?)
}

pub async fn run(command: WitnessCommand) -> anyhow::Result<ExitCode> {
    match command {
        WitnessCommand::Key(args) => {
            println!("{}", open(&args, BTreeMap::new())?.vkey());
            Ok(ExitCode::SUCCESS)
        }
        WitnessCommand::Serve(args) => {
            let mut logs = BTreeMap::new();
            for log in &args.logs {
                let (origin, file) = log
                    .split_once('=')
                    .with_context(|| format!("--log {log:?}: expected <origin>=<key set file>"))?;
                let text = std::fs::read(file).with_context(|| format!("reading {file}"))?;
                let keys = TrustedKeys::from_json(&text)
                    .with_context(|| format!("{file} is not a key set"))?;
                logs.insert(origin.to_owned(), keys);
            }
            let witness = Arc::new(open(&args.key, logs)?);
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?;
            println!(
                "witness listening on http://{} as {}",
                listener.local_addr()?,
                witness.vkey()
            );
            quantus_api::serve(
                listener,
                quantus_api::witness_router(witness),
                quantus_infra::HttpLimits::default(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
