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
    /// Access token (else one is obtained with --credentials).
    #[arg(long, env = "QUANTUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Client credentials (`client_id`, `client_secret`) of a service principal with the
    /// `events:read` scope, such as the bootstrap admin's file.
    #[arg(long, default_value = "./quantus-data/bootstrap-client.json")]
    credentials: PathBuf,
    /// Start after this log position.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Stop at the end of the log instead of following it.
    #[arg(long)]
    no_follow: bool,
}

pub async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    let token = match args.token {
        Some(t) => t,
        None => client_credentials_token(&client, &args.url, &args.credentials).await?,
    };
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

/// An access token from the token endpoint, with the client credentials in `file`.
pub async fn client_credentials_token(
    client: &reqwest::Client,
    url: &str,
    file: &std::path::Path,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading client credentials from {}", file.display()))?;
    let creds: Value = serde_json::from_str(&text).context("client credentials are not JSON")?;
    let (Some(id), Some(secret)) = (creds["client_id"].as_str(), creds["client_secret"].as_str())
    else {
        anyhow::bail!("{} lacks client_id or client_secret", file.display());
    };
    let response = client
        .post(format!("{}/oauth2/token", url.trim_end_matches('/')))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "events:read"),
        ])
        .send()
        .await
        .context("requesting a token")?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("reading the token response")?;
    if !status.is_success() {
        anyhow::bail!(
            "token endpoint refused: {}",
            body["error_description"]
                .as_str()
                .unwrap_or("unknown error")
        );
    }
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the response")
}
