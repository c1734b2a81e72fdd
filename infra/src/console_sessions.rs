//! The web consoles' server-side sessions (backend-for-frontend). A browser holds only
//! `<id>.<secret>`; the row keeps the secret's SHA-256 and the person's tokens sealed with the
//! master key (XChaCha20-Poly1305, the row id as associated data, so rows cannot be swapped).
//! Every API replica sharing the database sees the same sessions, and a token refresh is a
//! compare-and-swap on `version`, so concurrent requests never spend a refresh token twice.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::credentials::{random_secret, secret_digest, secret_matches};
use crate::subject_keys::SubjectKeys;
use crate::{Database, InfraError};

/// A session as stored: its opened contents and the version a replacement must name.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub id: String,
    pub plain: Vec<u8>,
    pub version: i64,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct ConsoleSessions {
    db: Database,
    keys: SubjectKeys,
}

/// One fixed format, so that the stored strings sort as the instants they name.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn label(id: &str) -> String {
    format!("console-session:{id}")
}

impl ConsoleSessions {
    pub fn new(db: Database, keys: SubjectKeys) -> Self {
        Self { db, keys }
    }

    /// Stores a new session of `console`; answers the cookie value (`<id>.<secret>`).
    pub async fn create(
        &self,
        console: &str,
        plain: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<String, InfraError> {
        let id = uuid::Uuid::now_v7().to_string();
        let secret = random_secret();
        let sealed = self.keys.seal_blob(&label(&id), plain)?;
        sqlx::query(
            "INSERT INTO console_sessions (id, console, secret_sha256, sealed, version, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(console)
        .bind(secret_digest(&secret))
        .bind(sealed)
        .bind(1i64)
        .bind(stamp(expires_at))
        .execute(&self.db.pool)
        .await?;
        Ok(format!("{id}.{secret}"))
    }

    /// The live session of `console` the cookie value names; `None` if it is unknown, of
    /// another console, expired, or the secret does not match (compared in constant time).
    pub async fn find(
        &self,
        console: &str,
        cookie: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredSession>, InfraError> {
        let Some((id, secret)) = cookie.split_once('.') else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT console, secret_sha256, sealed, version, expires_at FROM console_sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored_console: String = row.try_get("console")?;
        let digest: String = row.try_get("secret_sha256")?;
        if stored_console != console || !secret_matches(secret, &digest) {
            return Ok(None);
        }
        let expires_at: String = row.try_get("expires_at")?;
        let expires_at = DateTime::parse_from_rfc3339(&expires_at)
            .map_err(|_| InfraError::Corrupt("a console session's expiry is unreadable".into()))?
            .with_timezone(&Utc);
        if expires_at <= now {
            self.delete(id).await?;
            return Ok(None);
        }
        let sealed: String = row.try_get("sealed")?;
        let plain = self.keys.open_blob(&label(id), &sealed)?;
        Ok(Some(StoredSession {
            id: id.to_owned(),
            plain,
            version: row.try_get("version")?,
            expires_at,
        }))
    }

    /// Claims the session's next refresh: moves it from `version` to `version + 1` without
    /// changing its contents. Only the request that claims it asks QSA for new tokens (a
    /// refresh token works once; a second use would revoke the grant); the others wait for
    /// [`ConsoleSessions::replace`] at `version + 1`.
    pub async fn claim(&self, id: &str, version: i64) -> Result<bool, InfraError> {
        let done = sqlx::query(
            "UPDATE console_sessions SET version = version + 1 WHERE id = $1 AND version = $2",
        )
        .bind(id)
        .bind(version)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces the session's contents if it is still at `version`; `false` when another
    /// request replaced it first (the caller then reads the winner's contents).
    pub async fn replace(&self, id: &str, version: i64, plain: &[u8]) -> Result<bool, InfraError> {
        let sealed = self.keys.seal_blob(&label(id), plain)?;
        let done = sqlx::query(
            "UPDATE console_sessions SET sealed = $1, version = version + 1 WHERE id = $2 AND version = $3",
        )
        .bind(sealed)
        .bind(id)
        .bind(version)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Reads a session by id alone (after losing a [`ConsoleSessions::replace`] race).
    pub async fn reload(&self, id: &str) -> Result<Option<StoredSession>, InfraError> {
        let row =
            sqlx::query("SELECT sealed, version, expires_at FROM console_sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed: String = row.try_get("sealed")?;
        let expires_at: String = row.try_get("expires_at")?;
        Ok(Some(StoredSession {
            id: id.to_owned(),
            plain: self.keys.open_blob(&label(id), &sealed)?,
            version: row.try_get("version")?,
            expires_at: DateTime::parse_from_rfc3339(&expires_at)
                .map_err(|_| {
                    InfraError::Corrupt("a console session's expiry is unreadable".into())
                })?
                .with_timezone(&Utc),
        }))
    }

    pub async fn delete(&self, id: &str) -> Result<(), InfraError> {
        sqlx::query("DELETE FROM console_sessions WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Deletes every expired session (the row would only ever be refused anyway).
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, InfraError> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(stamp(now))
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sessions(label: &str) -> ConsoleSessions {
        let dir = std::env::temp_dir().join(format!(
            "quantus-console-sessions-{label}-{}",
            uuid::Uuid::now_v7()
        ));
        let db = Database::open(None, &dir).await.unwrap();
        let keys = SubjectKeys::new(db.clone(), &[7u8; 32]);
        ConsoleSessions::new(db, keys)
    }

    #[tokio::test]
    async fn a_cookie_finds_its_session_and_nothing_else_does() {
        let s = sessions("find").await;
        let now = Utc::now();
        let cookie = s
            .create("portal", b"tokens", now + chrono::Duration::hours(1))
            .await
            .unwrap();
        let found = s.find("portal", &cookie, now).await.unwrap().unwrap();
        assert_eq!(found.plain, b"tokens");
        // Another console's cookie name, a wrong secret, or no secret: nothing.
        assert!(s.find("account", &cookie, now).await.unwrap().is_none());
        let (id, _) = cookie.split_once('.').unwrap();
        let forged = format!("{id}.{}", random_secret());
        assert!(s.find("portal", &forged, now).await.unwrap().is_none());
        assert!(s.find("portal", id, now).await.unwrap().is_none());
        // The row holds the tokens sealed, not in the clear.
        let row: String = sqlx::query("SELECT sealed FROM console_sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&s.db.pool)
            .await
            .unwrap()
            .try_get("sealed")
            .unwrap();
        assert!(!row.contains("tokens"));
    }

    #[tokio::test]
    async fn an_expired_session_is_gone() {
        let s = sessions("expiry").await;
        let now = Utc::now();
        let cookie = s
            .create("portal", b"x", now + chrono::Duration::seconds(5))
            .await
            .unwrap();
        let later = now + chrono::Duration::seconds(6);
        assert!(s.find("portal", &cookie, later).await.unwrap().is_none());
        let other = s
            .create("portal", b"y", now + chrono::Duration::seconds(5))
            .await
            .unwrap();
        assert_eq!(s.purge_expired(later).await.unwrap(), 1);
        assert!(s.find("portal", &other, now).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn only_one_of_two_concurrent_refreshes_replaces_the_tokens() {
        let s = sessions("cas").await;
        let now = Utc::now();
        let cookie = s
            .create("portal", b"old", now + chrono::Duration::hours(1))
            .await
            .unwrap();
        let first = s.find("portal", &cookie, now).await.unwrap().unwrap();
        let second = s.find("portal", &cookie, now).await.unwrap().unwrap();
        // Both saw the same version; one claims the refresh, the other cannot.
        assert!(s.claim(&first.id, first.version).await.unwrap());
        assert!(!s.claim(&second.id, second.version).await.unwrap());
        assert_eq!(s.reload(&first.id).await.unwrap().unwrap().plain, b"old");
        assert!(s
            .replace(&first.id, first.version + 1, b"new-a")
            .await
            .unwrap());
        // The second request read the same version: it loses and reads the winner's tokens.
        assert!(!s
            .replace(&second.id, second.version, b"new-b")
            .await
            .unwrap());
        let now_stored = s.reload(&second.id).await.unwrap().unwrap();
        assert_eq!(now_stored.plain, b"new-a");
        assert_eq!(now_stored.version, first.version + 2);
        s.delete(&first.id).await.unwrap();
        assert!(s.find("portal", &cookie, now).await.unwrap().is_none());
    }
}
