//! `quantus events tail`: a subscriber over `GET /v1/events`, printing JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct TailArgs {
    /// Base URL of a running quantus.
    #[arg(long, env = "QUANTUS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token (else read from --token-file).
    #[arg(long, env = "QUANTUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token.
    #[arg(long, default_value = "./quantus-data/bootstrap-token")]
    token_file: PathBuf,
    /// Start after this log position.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Stop at the end of the log instead of following it.
    #[arg(long)]
    no_follow: bool,
}

pub async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let token = match args.token {
        Some(t) => t,
        None => std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("reading the token from {}", args.token_file.display()))?
            .trim()
            .to_owned(),
    };
    let client = reqwest::Client::new();
    let mut after = args.after;
    let stdout = std::io::stdout();
    loop {
        let wait = if args.no_follow { 0 } else { 25_000 };
        let response = client
            .get(format!("{}/v1/events", args.url.trim_end_matches('/')))
            .query(&[("after", after), ("limit", 1000), ("wait_ms", wait)])
            .bearer_auth(&token)
            .send()
            .await
            .context("requesting /v1/events")?;
        let status = response.status();
        let body: Value = response.json().await.context("reading /v1/events")?;
        if !status.is_success() {
            anyhow::bail!(
                "{status}: {}",
                body["detail"].as_str().unwrap_or("request failed")
            );
        }
        let events = body["events"].as_array().cloned().unwrap_or_default();
        let mut out = stdout.lock();
        for entry in &events {
            writeln!(out, "{entry}")?;
        }
        out.flush()?;
        after = body["next_after"].as_u64().unwrap_or(after);
        if events.is_empty() && args.no_follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
