//! `quantus license verify`: offline verification of a licence file, one line of answer.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use quantus_crypto::document::SignedDocument;
use quantus_crypto::keys::TrustedKeys;
use quantus_crypto::license::{verify as verify_license, CrlCheck, Standing};

#[derive(Args)]
pub struct VerifyArgs {
    /// The licence file (as served by GET /v1/licenses/{id}/file).
    file: PathBuf,
    /// The trusted key set and crypto policy (as served by GET /v1/keys).
    #[arg(long)]
    keys: PathBuf,
    /// A revocation list (as served by GET /v1/crl).
    #[arg(long)]
    crl: Option<PathBuf>,
    /// Refuse a CRL issued longer ago than this many hours.
    #[arg(long, default_value_t = 168)]
    crl_max_age_hours: i64,
    /// The highest CRL serial this machine has already accepted (a lower one is a replay).
    #[arg(long)]
    crl_min_serial: Option<u64>,
    /// This machine's fingerprint, for machine-bound licences.
    #[arg(long)]
    fingerprint: Option<String>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Exit 0 and `valid …` only for a valid licence; otherwise exit 1 and `invalid: reason`.
pub fn verify(args: VerifyArgs) -> ExitCode {
    match check(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("invalid: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &VerifyArgs) -> Result<String, String> {
    let file =
        SignedDocument::from_canonical_json(&read(&args.file)?).map_err(|e| e.to_string())?;
    let keys = TrustedKeys::from_json(&read(&args.keys)?).map_err(|e| e.to_string())?;
    let crl_document = match &args.crl {
        Some(path) => Some(
            SignedDocument::from_canonical_json(&read(path)?).map_err(|e| format!("CRL: {e}"))?,
        ),
        None => None,
    };
    let crl = crl_document.as_ref().map(|document| CrlCheck {
        document,
        max_age: chrono::Duration::hours(args.crl_max_age_hours),
        min_serial: args.crl_min_serial,
    });
    let v = verify_license(
        &file,
        &keys,
        chrono::Utc::now(),
        crl.as_ref(),
        args.fingerprint.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let l = &v.license;
    let standing = match v.standing {
        Standing::Valid => format!("until {}", l.expires_at.to_rfc3339()),
        Standing::InGrace { ends_at } => {
            format!("expired, in grace period until {}", ends_at.to_rfc3339())
        }
    };
    let crl = match v.crl_serial {
        Some(serial) => format!("CRL #{serial} checked"),
        None => "no CRL checked".to_owned(),
    };
    Ok(format!(
        "valid: licence {} for {} ({} {}) {standing}; signed by {}; {crl}",
        l.license_id, l.organization_id, l.product, l.edition, v.kid
    ))
}
