//! `quantus evidence verify`: offline verification of an exported evidence archive.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use quantus_crypto::evidence::ArtifactCheck;
use quantus_crypto::keys::TrustedKeys;

#[derive(Args)]
pub struct VerifyArgs {
    /// The archive (as served by GET /v1/evidence/{id}/export).
    archive: PathBuf,
    /// The trusted key set (GET /v1/keys, obtained independently). Without it, the key set
    /// inside the archive is used, which proves only that the archive is self-consistent.
    #[arg(long)]
    keys: Option<PathBuf>,
}

/// Exit 0 only when everything holds; the report on stdout, `invalid: reason` otherwise.
pub fn verify(args: VerifyArgs) -> ExitCode {
    match check(&args) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("invalid: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &VerifyArgs) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(&args.archive)
        .map_err(|e| format!("cannot read {}: {e}", args.archive.display()))?;
    let unpacked = quantus_commands::evidence::unpack(&bytes)?;
    let (keys, source) = match &args.keys {
        Some(path) => {
            let text =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            (
                TrustedKeys::from_json(&text).map_err(|e| e.to_string())?,
                "the given key set",
            )
        }
        None => (
            unpacked
                .keys
                .clone()
                .ok_or("the archive has no keys.json; pass --keys")?,
            "the archive's own key set (pass --keys for an independent one)",
        ),
    };
    let report = quantus_crypto::evidence::verify(
        &unpacked.manifest,
        &unpacked.files,
        &keys,
        chrono::Utc::now(),
    )
    .map_err(|e| e.to_string())?;
    let m = &report.manifest;
    let mut lines = vec![
        format!(
            "valid: evidence bundle {} for job {} of organization {}",
            m.bundle_id, m.job_id, m.organization_id
        ),
        format!("signed by {} (checked with {source})", report.signed_by),
        format!(
            "configuration {}: {}",
            m.config_sha256,
            if report.config_checked {
                "verified"
            } else {
                "not included"
            }
        ),
        format!(
            "events: {} included in the checkpoint of {} events",
            report.events_included, m.checkpoint.tree_size
        ),
    ];
    for (name, check) in &report.artifacts {
        let state = match check {
            ArtifactCheck::Verified => "verified".to_owned(),
            ArtifactCheck::NotIncluded => {
                "not included (digest vouched for by the manifest)".to_owned()
            }
            ArtifactCheck::PurgedByPolicy(p) => {
                format!("purged by retention policy {p} (digest vouched for by the manifest)")
            }
        };
        lines.push(format!("artifact {name}: {state}"));
    }
    Ok(lines)
}
