//! Second factors: TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step) with single-use
//! recovery codes. The seed is sealed with the user's data key; codes are checked here and the
//! `TotpAuthenticator` aggregate refuses a step it has already accepted.

use chrono::{DateTime, Utc};
use quantus_domain::identity::totp::{
    TotpAuthenticator, TotpCommand, TotpError, TotpStatus, RECOVERY_CODES,
};
use quantus_domain::CommandContext;
use quantus_infra::subject_keys::SubjectKeys;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

/// The name authenticator apps show next to the account.
pub const TOTP_ISSUER: &str = "Quantus";
const SEED_FIELD: &str = "totp_seed";

impl ClassifyError for TotpError {
    fn classify(&self) -> CommandError {
        match self {
            TotpError::Invalid(d) => CommandError::Invalid(d.clone()),
            TotpError::NotEnrolled | TotpError::NotStarted => {
                CommandError::NotFound(self.to_string())
            }
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

/// What an enrolment shows the person once.
#[derive(Debug, Clone)]
pub struct TotpEnrollment {
    /// `otpauth://totp/Quantus:<account>?secret=...&issuer=Quantus&...`
    pub uri: String,
    /// The same URI as a QR code (SVG).
    pub qr_svg: String,
}

/// Why a second factor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondFactorRefusal {
    /// Not a current code, nor an unused recovery code.
    Wrong,
    /// A code already used (RFC 6238 §5.2: each code is accepted once).
    Replayed,
}

#[derive(Clone)]
pub struct Mfa {
    bus: CommandBus,
    keys: SubjectKeys,
}

fn totp(seed: Vec<u8>, account: &str) -> Result<totp_rs::Totp, CommandError> {
    totp_rs::Builder::new()
        .with_secret(seed)
        .with_account_name(account.replace(':', ""))
        .with_issuer(Some(TOTP_ISSUER))
        .build()
        .map_err(|e| CommandError::Storage(format!("TOTP: {e}")))
}

/// SHA-256 (hex) of a recovery code, as typed (case, spaces and dashes ignored).
pub fn recovery_digest(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex::encode(Sha256::digest(normal.as_bytes()))
}

fn recovery_code() -> String {
    let mut b = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut b);
    // 80 bits as 16 base32 characters, in groups of four.
    let text = totp_rs::Secret::from(b.to_vec()).to_base32();
    text.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

impl Mfa {
    pub fn new(bus: CommandBus, keys: SubjectKeys) -> Self {
        Self { bus, keys }
    }

    pub async fn authenticator(&self, user_id: &str) -> Result<TotpAuthenticator, CommandError> {
        Ok(self.bus.load::<TotpAuthenticator>(user_id).await?.0)
    }

    /// Whether the person must give a TOTP code after their password.
    pub async fn totp_enrolled(&self, user_id: &str) -> Result<bool, CommandError> {
        Ok(self.authenticator(user_id).await?.status == TotpStatus::Enrolled)
    }

    async fn seed(&self, a: &TotpAuthenticator) -> Result<Vec<u8>, CommandError> {
        let sealed = a
            .seed
            .as_ref()
            .ok_or_else(|| CommandError::NotFound("no authenticator app is enrolled".into()))?;
        let text = self
            .keys
            .open_text(sealed, SEED_FIELD)
            .await
            .map_err(|e| CommandError::Storage(e.to_string()))?
            .ok_or_else(|| CommandError::NotFound("the person's data was erased".into()))?;
        totp_rs::Secret::try_from_base32(text)
            .map(|s| s.as_bytes().to_vec())
            .map_err(|e| CommandError::Storage(format!("TOTP seed: {e:?}")))
    }

    /// Starts an enrolment: a fresh 160-bit seed, sealed; the URI and QR code to scan.
    pub async fn start_totp(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        account: &str,
    ) -> Result<TotpEnrollment, CommandError> {
        let mut seed = [0u8; 20];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let base32 = totp_rs::Secret::from(seed.to_vec()).to_base32();
        let sealed = self
            .keys
            .seal(user_id, SEED_FIELD, base32.as_bytes())
            .await
            .map_err(|e| CommandError::Storage(e.to_string()))?;
        self.bus
            .execute::<TotpAuthenticator>(
                ctx,
                user_id,
                TotpCommand::Start {
                    user_id: user_id.to_owned(),
                    seed: sealed,
                },
                None,
                &(),
            )
            .await?;
        let uri = totp(seed.to_vec(), account)?
            .to_url()
            .map_err(|e| CommandError::Storage(format!("TOTP: {e}")))?;
        let qr_svg = qrcode::QrCode::new(uri.as_bytes())
            .map_err(|e| CommandError::Storage(format!("QR code: {e}")))?
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .build();
        Ok(TotpEnrollment { uri, qr_svg })
    }

    /// Confirms an enrolment with a first code; answers the recovery codes (shown once).
    pub async fn confirm_totp(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        code: &str,
    ) -> Result<Vec<String>, CommandError> {
        let a = self.authenticator(user_id).await?;
        if a.status != TotpStatus::Pending {
            return Err(TotpError::NotStarted.classify());
        }
        let seed = self.seed(&a).await?;
        let step = check(&totp(seed, user_id)?, code, ctx.occurred_at)
            .ok_or_else(|| CommandError::Invalid("the code is not valid".into()))?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        self.bus
            .execute::<TotpAuthenticator>(
                ctx,
                user_id,
                TotpCommand::Confirm {
                    step,
                    recovery_code_digests: codes.iter().map(|c| recovery_digest(c)).collect(),
                },
                None,
                &(),
            )
            .await?;
        Ok(codes)
    }

    /// Checks a second factor: a current TOTP code (once) or an unused recovery code. Answers
    /// the `amr` value it proves (`otp`).
    pub async fn verify(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        code: &str,
    ) -> Result<Result<&'static str, SecondFactorRefusal>, CommandError> {
        let a = self.authenticator(user_id).await?;
        if a.status != TotpStatus::Enrolled {
            return Ok(Err(SecondFactorRefusal::Wrong));
        }
        let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let command = if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
            let seed = self.seed(&a).await?;
            match check(&totp(seed, user_id)?, &digits, ctx.occurred_at) {
                Some(step) => TotpCommand::Accept { step },
                None => return Ok(Err(SecondFactorRefusal::Wrong)),
            }
        } else {
            TotpCommand::UseRecoveryCode {
                digest: recovery_digest(code),
            }
        };
        match self
            .bus
            .execute::<TotpAuthenticator>(ctx, user_id, command, None, &())
            .await
        {
            Ok(_) => Ok(Ok("otp")),
            Err(CommandError::Rejected(d)) if d == TotpError::Replayed.to_string() => {
                Ok(Err(SecondFactorRefusal::Replayed))
            }
            Err(CommandError::Rejected(d)) if d == TotpError::UnknownRecoveryCode.to_string() => {
                Ok(Err(SecondFactorRefusal::Wrong))
            }
            // Two requests with the same code at once: the loser is a replay.
            Err(CommandError::Concurrency(_)) => Ok(Err(SecondFactorRefusal::Replayed)),
            Err(e) => Err(e),
        }
    }

    /// Replaces the person's recovery codes with ten new ones, answered once; only digests
    /// reach the log, and the old codes stop working.
    pub async fn regenerate_recovery_codes(
        &self,
        ctx: &CommandContext,
        user_id: &str,
    ) -> Result<Vec<String>, CommandError> {
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        self.bus
            .execute::<TotpAuthenticator>(
                ctx,
                user_id,
                TotpCommand::RegenerateRecoveryCodes {
                    recovery_code_digests: codes.iter().map(|c| recovery_digest(c)).collect(),
                },
                None,
                &(),
            )
            .await?;
        Ok(codes)
    }

    pub async fn remove_totp(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        reason: &str,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<TotpAuthenticator>(
                ctx,
                user_id,
                TotpCommand::Remove {
                    reason: reason.to_owned(),
                },
                None,
                &(),
            )
            .await
    }
}

/// The step a code matches at `now` (±1 step), compared in constant time by totp-rs.
fn check(t: &totp_rs::Totp, code: &str, now: DateTime<Utc>) -> Option<u64> {
    let secs = u64::try_from(now.timestamp()).ok()?;
    t.check(code, secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1, 8 digits, seed "12345678901234567890".
    #[test]
    fn totp_rs_matches_the_rfc_6238_vectors() {
        let t = totp_rs::Builder::new()
            .with_secret(b"12345678901234567890".to_vec())
            .with_digits(8)
            .with_skew(0)
            .with_account_name("rfc")
            .build_noncompliant();
        for (time, code) in [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
        ] {
            assert_eq!(t.check(code, time), Some(time / 30), "{time}");
        }
    }

    #[test]
    fn recovery_codes_are_long_and_compared_loosely() {
        let c = recovery_code();
        assert_eq!(c.len(), 19, "{c}");
        assert_eq!(
            recovery_digest(&c),
            recovery_digest(&c.to_lowercase().replace('-', " "))
        );
        assert_ne!(recovery_digest(&c), recovery_digest(&recovery_code()));
    }
}
