//! The instants the platform accepts, and arithmetic on them that cannot overflow.
//!
//! `chrono` represents years up to ±262,143, and its `+` panics when a sum leaves that
//! range: a licence expiring in year 262,142 with a grace period made `expires_at + grace`
//! abort the server and this crate's verifier. So every instant that comes from outside
//! (an API body, a licence file, a CRL) must lie within [`EARLIEST`]..=[`LATEST`] (RFC 3339's
//! four-digit years, from the Unix epoch), and time is added with [`add_seconds`], which
//! stays within that range.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Deserializer};

/// 1970-01-01T00:00:00Z.
pub const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
pub fn latest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Why an instant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is out of range: instants must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
)]
pub struct OutOfRange(pub String);

/// `t` itself when it is within range.
pub fn check(t: DateTime<Utc>) -> Result<DateTime<Utc>, OutOfRange> {
    if t < EARLIEST || t > latest() {
        return Err(OutOfRange(t.to_rfc3339()));
    }
    Ok(t)
}

/// `t + seconds`, or `None` when the sum would pass [`latest`] (or chrono's own range).
pub fn add_seconds(t: DateTime<Utc>, seconds: u64) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(seconds).ok()?;
    t.checked_add_signed(TimeDelta::try_seconds(seconds)?)
        .filter(|sum| *sum <= latest())
}

/// `#[serde(deserialize_with = "quantus_crypto::instant::deserialize")]`: an RFC 3339
/// instant within range.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let t = DateTime::<Utc>::deserialize(d)?;
    check(t).map_err(serde::de::Error::custom)
}

/// As [`deserialize`], for an optional instant.
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<DateTime<Utc>>::deserialize(d)?
        .map(check)
        .transpose()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_edges_of_the_range_are_accepted_and_one_second_past_them_refused() {
        assert!(check(t("1970-01-01T00:00:00Z")).is_ok());
        assert!(check(t("9999-12-31T23:59:59Z")).is_ok());
        assert!(check(t("1969-12-31T23:59:59Z")).is_err());
        assert!(check(t("+10000-01-01T00:00:00Z")).is_err());
        assert!(check(t("+262142-12-31T23:59:59Z")).is_err());
    }

    #[test]
    fn adding_time_never_overflows() {
        assert_eq!(
            add_seconds(t("2027-01-01T00:00:00Z"), 86_400),
            Some(t("2027-01-02T00:00:00Z"))
        );
        assert_eq!(add_seconds(t("9999-12-31T23:59:58Z"), 1), Some(latest()));
        assert_eq!(add_seconds(t("9999-12-31T23:59:59Z"), 1), None);
        assert_eq!(add_seconds(t("+262142-12-31T23:59:59Z"), 86_400), None);
        assert_eq!(add_seconds(DateTime::<Utc>::MAX_UTC, 1), None);
        assert_eq!(add_seconds(EARLIEST, u64::MAX), None);
        assert_eq!(add_seconds(EARLIEST, i64::MAX as u64), None);
    }

    #[test]
    fn deserializing_refuses_out_of_range_instants_with_a_clear_error() {
        #[derive(Deserialize)]
        struct Body {
            #[serde(deserialize_with = "deserialize")]
            at: DateTime<Utc>,
            #[serde(default, deserialize_with = "deserialize_option")]
            until: Option<DateTime<Utc>>,
        }
        let ok: Body =
            serde_json::from_str(r#"{"at":"2027-01-01T00:00:00Z","until":null}"#).unwrap();
        assert_eq!(ok.at, t("2027-01-01T00:00:00Z"));
        assert_eq!(ok.until, None);
        let err = serde_json::from_str::<Body>(r#"{"at":"+262142-12-31T23:59:59Z"}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        assert!(serde_json::from_str::<Body>(
            r#"{"at":"2027-01-01T00:00:00Z","until":"+262142-12-31T23:59:59Z"}"#
        )
        .is_err());
    }
}
