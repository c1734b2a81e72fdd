//! Idempotency keys (the IETF httpapi `Idempotency-Key` draft): which creating request a
//! caller's key stands for, and the answer it got, so that a retry gets the same answer.
//!
//! Operational state, like the sign-in throttle: it expires and holds response bodies, so it
//! is a table, not events (see docs/DECISIONS.md).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Database, InfraError};

/// A claim older than this whose request never finished (its process died) no longer blocks
/// the key: longer than any request runs.
pub const IN_FLIGHT_LEASE: Duration = Duration::from_secs(300);

/// A stored answer: what a replay sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    /// The few headers that belong to the answer (`Content-Type`, `Location`, `ETag`, the log
    /// position), as a JSON object.
    pub headers: String,
    pub body: String,
}

/// What a key is, for a new request with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody used it (or its record expired): this request now holds it.
    New,
    /// The same request is being processed right now.
    InFlight,
    /// The key was used for a different request.
    OtherRequest,
    /// The same request was answered: here is the answer.
    Answered(StoredAnswer),
}

#[derive(Clone)]
pub struct IdempotencyKeys {
    db: Database,
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl IdempotencyKeys {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Claims (`scope`, `key`) for a request with `fingerprint`, or says why not.
    pub async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        keep: Duration,
    ) -> Result<Claim, InfraError> {
        let lease = chrono::Duration::from_std(IN_FLIGHT_LEASE).unwrap_or_default();
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(1));
        // Expired records, and claims of requests that died, free their keys.
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE expires_at <= $1 OR (status IS NULL AND claimed_at <= $2)",
        )
        .bind(millis(now))
        .bind(millis(now - lease))
        .execute(&self.db.pool)
        .await?;
        // A record released between our insert and our read (its request failed) frees the
        // key: claim again. Three rounds only happen under a storm of failing duplicates.
        for _ in 0..3 {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, claimed_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING",
            )
            .bind(scope)
            .bind(key)
            .bind(fingerprint)
            .bind(millis(now))
            .bind(millis(now + keep))
            .execute(&self.db.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(Claim::New);
            }
            let row = sqlx::query(
                "SELECT fingerprint, status, headers, body FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
            )
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await?;
            let Some(row) = row else { continue };
            let theirs: String = row.try_get("fingerprint")?;
            if theirs != fingerprint {
                return Ok(Claim::OtherRequest);
            }
            let status: Option<i64> = row.try_get("status")?;
            return Ok(match status {
                None => Claim::InFlight,
                Some(status) => Claim::Answered(StoredAnswer {
                    status: u16::try_from(status).unwrap_or(500),
                    headers: row
                        .try_get::<Option<String>, _>("headers")?
                        .unwrap_or_default(),
                    body: row
                        .try_get::<Option<String>, _>("body")?
                        .unwrap_or_default(),
                }),
            });
        }
        Ok(Claim::InFlight)
    }

    /// Records the answer to the request that holds the key.
    pub async fn answer(
        &self,
        scope: &str,
        key: &str,
        answer: &StoredAnswer,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5 WHERE scope = $1 AND idem_key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(i64::from(answer.status))
        .bind(&answer.headers)
        .bind(&answer.body)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Gives the key up (its request changed nothing): the same request may be sent again.
    pub async fn release(&self, scope: &str, key: &str) -> Result<(), InfraError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 AND status IS NULL",
        )
        .bind(scope)
        .bind(key)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn keys() -> IdempotencyKeys {
        let dir = std::env::temp_dir().join(format!("quantus-idem-{}", uuid::Uuid::now_v7()));
        IdempotencyKeys::new(Database::open(None, &dir).await.unwrap())
    }

    fn answer(body: &str) -> StoredAnswer {
        StoredAnswer {
            status: 201,
            headers: "{}".into(),
            body: body.into(),
        }
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[tokio::test]
    async fn a_key_is_claimed_once_answered_and_replayed() {
        let k = keys().await;
        let now = Utc::now();
        assert_eq!(
            k.claim("t/a", "k1", "f1", now, DAY).await.unwrap(),
            Claim::New
        );
        assert_eq!(
            k.claim("t/a", "k1", "f1", now, DAY).await.unwrap(),
            Claim::InFlight
        );
        assert_eq!(
            k.claim("t/a", "k1", "f2", now, DAY).await.unwrap(),
            Claim::OtherRequest
        );
        k.answer("t/a", "k1", &answer("{\"id\":1}")).await.unwrap();
        assert_eq!(
            k.claim("t/a", "k1", "f1", now, DAY).await.unwrap(),
            Claim::Answered(answer("{\"id\":1}"))
        );
        // Another caller's key of the same name is another key.
        assert_eq!(
            k.claim("t/b", "k1", "f1", now, DAY).await.unwrap(),
            Claim::New
        );
    }

    #[tokio::test]
    async fn keys_expire_released_keys_are_free_and_dead_claims_lapse() {
        let k = keys().await;
        let now = Utc::now();
        assert_eq!(
            k.claim("s", "old", "f", now, DAY).await.unwrap(),
            Claim::New
        );
        k.answer("s", "old", &answer("x")).await.unwrap();
        let later = now + chrono::Duration::days(1) + chrono::Duration::seconds(1);
        assert_eq!(
            k.claim("s", "old", "other", later, DAY).await.unwrap(),
            Claim::New
        );

        assert_eq!(
            k.claim("s", "failed", "f", now, DAY).await.unwrap(),
            Claim::New
        );
        k.release("s", "failed").await.unwrap();
        assert_eq!(
            k.claim("s", "failed", "f", now, DAY).await.unwrap(),
            Claim::New
        );

        let after_lease = now + chrono::Duration::from_std(IN_FLIGHT_LEASE).unwrap();
        assert_eq!(
            k.claim("s", "failed", "f", after_lease, DAY).await.unwrap(),
            Claim::New
        );
    }
}
