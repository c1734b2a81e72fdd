//! `quantus evidence verify`: offline verification of an exported evidence archive.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use quantus_crypto::evidence::{ArtifactCheck, EvidenceReport};
use quantus_crypto::job_state::StateSummary;
use quantus_crypto::keys::TrustedKeys;

#[derive(Args)]
pub struct VerifyArgs {
    /// The archive (as served by GET /v1/evidence/{id}/export).
    archive: PathBuf,
    /// The trusted key set (GET /v1/keys, obtained independently). Without it, the key set
    /// inside the archive is used, which proves only that the archive is self-consistent.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Print the verdict as one JSON object (`valid`, and the report or `reason`).
    #[arg(long)]
    json: bool,
}

/// Exit 0 only when everything holds; the report on stdout, `invalid: reason` otherwise.
pub fn verify(args: VerifyArgs) -> ExitCode {
    let verdict = check(&args);
    if args.json {
        let value = match &verdict {
            Ok((report, source)) => report_json(report, source),
            Err(reason) => serde_json::json!({ "valid": false, "reason": reason }),
        };
        println!("{value}");
    } else {
        match &verdict {
            Ok((report, source)) => {
                for l in report_lines(report, source) {
                    println!("{l}");
                }
            }
            Err(reason) => println!("invalid: {reason}"),
        }
    }
    if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_name(check: &ArtifactCheck) -> String {
    match check {
        ArtifactCheck::Verified => "verified".to_owned(),
        ArtifactCheck::NotIncluded => {
            "not included (digest vouched for by the manifest)".to_owned()
        }
        ArtifactCheck::PurgedByPolicy(p) => {
            format!("purged by retention policy {p} (digest vouched for by the manifest)")
        }
    }
}

fn report_json(report: &EvidenceReport, source: &str) -> serde_json::Value {
    let m = &report.manifest;
    serde_json::json!({
        "valid": true,
        "bundle_id": m.bundle_id,
        "job_id": m.job_id,
        "organization_id": m.organization_id,
        "signed_by": report.signed_by,
        "keys": source,
        "config_sha256": m.config_sha256,
        "config_checked": report.config_checked,
        "events_included": report.events_included,
        "tree_size": m.checkpoint.tree_size,
        "artifacts": report.artifacts.iter().map(|(name, check)| serde_json::json!({
            "name": name, "check": check_name(check),
        })).collect::<Vec<_>>(),
        "job_state": report.job_state,
    })
}

/// The job-state part of the report: who submitted, their roles, the licences.
fn job_state_lines(state: &StateSummary) -> Vec<String> {
    let s = &state.submitter;
    let name = match (&s.name, s.name_sealed) {
        (Some(name), _) => format!(" {name:?}"),
        (None, true) => " (name sealed)".to_owned(),
        (None, false) => String::new(),
    };
    let mut lines = vec![
        format!(
            "job state as of position {} ({}), proven from the log:",
            state.position, state.as_of
        ),
        format!(
            "  submitted by {} {}{name} of organization {}, {}",
            s.kind,
            s.id,
            s.organization_id.as_deref().unwrap_or("(none recorded)"),
            s.status
        ),
        format!(
            "  roles in organization {}: {}",
            state.organization_id,
            if s.roles.is_empty() {
                "none".to_owned()
            } else {
                s.roles.join(", ")
            }
        ),
    ];
    if state.licenses.is_empty() {
        lines.push("  licences: none".into());
    }
    for l in &state.licenses {
        let t = &l.terms;
        let features: Vec<&str> = t["features"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
            .unwrap_or_default();
        lines.push(format!(
            "  licence {}: {}{}, {} {}, features [{}], valid {} to {}",
            l.id,
            l.status,
            if l.in_force {
                " (in force)"
            } else {
                " (not in force)"
            },
            t["product"].as_str().unwrap_or_default(),
            t["edition"].as_str().unwrap_or_default(),
            features.join(", "),
            t["not_before"].as_str().unwrap_or_default(),
            t["expires_at"].as_str().unwrap_or_default(),
        ));
    }
    lines
}

fn check(args: &VerifyArgs) -> Result<(EvidenceReport, &'static str), String> {
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
    Ok((report, source))
}

fn report_lines(report: &EvidenceReport, source: &str) -> Vec<String> {
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
        lines.push(format!("artifact {name}: {}", check_name(check)));
    }
    match &report.job_state {
        Some(state) => lines.extend(job_state_lines(state)),
        None => lines.push("job state: not in this bundle (made before bundles carried it)".into()),
    }
    lines
}
