//! `quantus audit export` (the same archive as `GET /v1/audit/exports`, written from the store)
//! and `quantus audit verify-export` (offline, with public keys only).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use quantus_commands::checkpoints::Checkpoints;
use quantus_commands::export::{verify_archive, ComplianceExport, Trust};
use quantus_commands::licensing::Licensing;
use quantus_commands::CommandBus;
use quantus_crypto::cosignature::WitnessKey;
use quantus_crypto::keys::TrustedKeys;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::SqlEventRepository;
use tokio::io::AsyncWriteExt as _;

use super::StoreArgs;

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The organization whose events are exported.
    #[arg(long)]
    tenant: String,
    /// Events appended at or after this instant (RFC 3339).
    #[arg(long)]
    from: chrono::DateTime<chrono::Utc>,
    /// Events appended before this instant (RFC 3339).
    #[arg(long)]
    to: chrono::DateTime<chrono::Utc>,
    /// Where to write the archive.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (config, db) = args.store.open().await?;
    let master_hex = config.master_key.as_ref().map(|k| k.0.as_str());
    let keystore = quantus_infra::keystore::FileKeystore::open(&config.data_dir, master_hex)
        .context("opening the keystore")?;
    let issuer = config.public_url.trim_end_matches('/').to_owned();
    let bus = CommandBus::new(SqlEventRepository::new(db.clone()));
    let licensing = Licensing::new(bus, Arc::new(keystore), issuer.clone());
    let exports = ComplianceExport::new(licensing.clone(), Checkpoints::new(licensing, &issuer));
    let ctx = CommandContext {
        tenant_id: args.tenant.clone(),
        actor: Actor {
            kind: ActorKind::System,
            id: "quantus-audit-export".into(),
        },
        occurred_at: quantus_domain::envelope::truncate_to_micros(chrono::Utc::now()),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    };
    let plan = match exports.plan(&ctx, &args.tenant, args.from, args.to).await {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("cannot export: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let writer = tokio::spawn(async move { exports.write(plan, tx).await });
    let mut file = tokio::fs::File::create(&args.output)
        .await
        .with_context(|| format!("creating {}", args.output.display()))?;
    while let Some(bytes) = rx.recv().await {
        file.write_all(&bytes).await?;
    }
    file.sync_all().await?;
    writer.await??;
    println!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct VerifyExportArgs {
    /// The archive (from `GET /v1/audit/exports` or `quantus audit export`).
    archive: PathBuf,
    /// The trusted key set (GET /v1/keys, obtained independently). Without it, the key set
    /// inside the archive is used, which proves only that the archive is self-consistent.
    #[arg(long, value_name = "KEYS.json")]
    keys: Option<PathBuf>,
    /// A witness trusted to cosign checkpoints (its verifier key; repeatable): the archive's
    /// checkpoint must carry cosignatures of `--quorum` of them.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    #[arg(long, default_value_t = 1)]
    quorum: usize,
    /// Print the verdict as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Exit 0 when everything holds, 1 with `invalid: <reason>` otherwise.
pub fn verify_export(args: VerifyExportArgs) -> anyhow::Result<ExitCode> {
    let keys = match &args.keys {
        Some(path) => Some(TrustedKeys::from_json(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )?),
        None => None,
    };
    let witnesses = args
        .witnesses
        .iter()
        .map(|v| WitnessKey::from_vkey(v).map_err(|e| anyhow::anyhow!("--witness {v}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !witnesses.is_empty() && (args.quorum == 0 || args.quorum > witnesses.len()) {
        anyhow::bail!(
            "--quorum {} needs between 1 and the {} witnesses given",
            args.quorum,
            witnesses.len()
        );
    }
    let trust = Trust {
        quorum: if witnesses.is_empty() { 0 } else { args.quorum },
        keys,
        witnesses,
        now: chrono::Utc::now(),
    };
    let verdict = verify_archive(
        || std::fs::File::open(&args.archive).map(std::io::BufReader::new),
        &trust,
    );
    if args.json {
        let value = match &verdict {
            Ok(report) => serde_json::json!({ "ok": true, "report": report }),
            Err(reason) => serde_json::json!({ "ok": false, "reason": reason }),
        };
        println!("{value}");
    }
    match verdict {
        Ok(r) => {
            if !args.json {
                println!("tenant: {}", r.tenant);
                println!(
                    "range: {} .. {} (positions {}..={})",
                    r.from,
                    r.to,
                    r.after_position + 1,
                    r.through_position
                );
                println!("events: {} of {} aggregates, every one included in the signed checkpoint of {} events", r.events, r.aggregates, r.tree_size);
                println!(
                    "manifest signed by {} (checked with {})",
                    r.signed_by, r.keys_from
                );
                if !r.cosigned_by.is_empty() {
                    println!("checkpoint cosigned by {}", r.cosigned_by.join(", "));
                }
                println!("OK");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            if !args.json {
                println!("invalid: {reason}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
