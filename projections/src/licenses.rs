//! The licences read model: one row per licence, for listing by organization and for the CRL.

use async_trait::async_trait;
use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::events::EventEnum;
use quantus_domain::licensing::license::LicenseEvent;
use quantus_infra::{InfraError, LogRecord};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool, Executor};

use crate::Projection;

pub struct LicensesView;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct LicenseRow {
    pub id: String,
    pub organization_id: String,
    pub product: String,
    pub edition: String,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    pub status_reason: Option<String>,
    pub expires_at: String,
    pub activations: i64,
    pub revoked_at: Option<String>,
    pub issued_at: String,
    #[sqlx(try_from = "i64")]
    pub version: u64,
}

const SELECT: &str = "SELECT id, organization_id, product, edition, status, status_reason, expires_at, activations, \
    revoked_at, issued_at, version FROM licenses_view";

impl LicensesView {
    pub const NAME: &'static str = "licenses";
    /// The events `apply` changes the model on (the event index; checked in `consumes`).
    pub const CONSUMES: &'static [&'static str] = crate::consumes::consumed![
        LicenseEvent::LicenseIssued,
        LicenseEvent::LicenseActivated,
        LicenseEvent::LicenseDeactivated,
        LicenseEvent::LicenseSuspended,
        LicenseEvent::LicenseReinstated,
        LicenseEvent::LicenseRenewed,
        LicenseEvent::LicenseRevoked,
    ];

    /// An organization's licences, oldest first, after the id `after`.
    /// An organization's licences (every organization's with `org` = None), by id.
    pub async fn by_organization(
        pool: &AnyPool,
        org: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LicenseRow>, InfraError> {
        let sql = format!(
            "{SELECT} WHERE ($1 = '' OR organization_id = $1) AND id > $2 ORDER BY id LIMIT $3"
        );
        crate::page(pool, &sql, &[org.unwrap_or("")], after, limit).await
    }

    /// Every revoked licence, for the CRL.
    pub async fn revoked(pool: &AnyPool) -> Result<Vec<LicenseRow>, InfraError> {
        Ok(
            sqlx::query_as(&format!("{SELECT} WHERE status = 'revoked' ORDER BY id"))
                .fetch_all(pool)
                .await?,
        )
    }

    /// The highest log position of any licence event applied: a CRL made from this model
    /// carries it as its serial, which therefore never decreases.
    pub async fn high_water(pool: &AnyPool) -> Result<u64, InfraError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(position) FROM projection_streams WHERE projection = $1",
        )
        .bind(Self::NAME)
        .fetch_one(pool)
        .await?;
        Ok(v.unwrap_or(0) as u64)
    }
}

#[async_trait]
impl Projection for LicensesView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == LicenseEvent::AGGREGATE
    }

    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS licenses_view (
                id TEXT PRIMARY KEY,
                organization_id TEXT NOT NULL,
                product TEXT NOT NULL,
                edition TEXT NOT NULL,
                status TEXT NOT NULL,
                status_reason TEXT,
                expires_at TEXT NOT NULL,
                activations BIGINT NOT NULL,
                revoked_at TEXT,
                issued_at TEXT NOT NULL,
                version BIGINT NOT NULL
            )",
        )
        .await?;
        conn.execute(
            "CREATE INDEX IF NOT EXISTS licenses_view_org ON licenses_view (organization_id, id)",
        )
        .await?;
        Ok(())
    }

    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute("DELETE FROM licenses_view").await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError> {
        let e = &record.envelope;
        let id = e.aggregate_id.clone();
        let version = e.sequence as i64;
        let update =
            |set: &str| format!("UPDATE licenses_view SET {set}, version = $1 WHERE id = $2");
        match record.decode::<LicenseEvent>()? {
            LicenseEvent::LicenseIssued(p) => {
                sqlx::query(
                    "INSERT INTO licenses_view (id, organization_id, product, edition, status, status_reason, expires_at,
                     activations, revoked_at, issued_at, version) VALUES ($1, $2, $3, $4, 'active', NULL, $5, 0, NULL, $6, $7)",
                )
                .bind(id)
                .bind(p.organization_id)
                .bind(p.product)
                .bind(p.edition)
                .bind(rfc3339_micros::format(&p.expires_at))
                .bind(rfc3339_micros::format(&e.occurred_at))
                .bind(version)
                .execute(conn)
                .await?;
            }
            event @ (LicenseEvent::LicenseActivated(_) | LicenseEvent::LicenseDeactivated(_)) => {
                let delta = if matches!(event, LicenseEvent::LicenseActivated(_)) {
                    1
                } else {
                    -1
                };
                sqlx::query(&update(&format!("activations = activations + ({delta})")))
                    .bind(version)
                    .bind(id)
                    .execute(conn)
                    .await?;
            }
            LicenseEvent::LicenseSuspended(p) => {
                sqlx::query("UPDATE licenses_view SET status = 'suspended', status_reason = $1, version = $2 WHERE id = $3")
                    .bind(p.reason)
                    .bind(version)
                    .bind(id)
                    .execute(conn)
                    .await?;
            }
            LicenseEvent::LicenseReinstated(_) => {
                sqlx::query(&update("status = 'active', status_reason = NULL"))
                    .bind(version)
                    .bind(id)
                    .execute(conn)
                    .await?;
            }
            LicenseEvent::LicenseRenewed(p) => {
                sqlx::query("UPDATE licenses_view SET expires_at = $1, version = $2 WHERE id = $3")
                    .bind(rfc3339_micros::format(&p.expires_at))
                    .bind(version)
                    .bind(id)
                    .execute(conn)
                    .await?;
            }
            LicenseEvent::LicenseRevoked(p) => {
                sqlx::query("UPDATE licenses_view SET status = 'revoked', status_reason = $1, revoked_at = $2, version = $3 WHERE id = $4")
                    .bind(p.reason)
                    .bind(rfc3339_micros::format(&p.revoked_at))
                    .bind(version)
                    .bind(id)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn versions(
        &self,
        conn: &mut AnyConnection,
        record: &LogRecord,
    ) -> Result<Vec<crate::history::Version>, InfraError> {
        let row: Option<LicenseRow> = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
            .bind(record.envelope.aggregate_id.clone())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row
            .map(|l| crate::history::Version {
                kind: Self::NAME,
                row_id: l.id.clone(),
                organization_id: l.organization_id.clone(),
                doc: Some(serde_json::to_value(l).unwrap_or_default()),
            })
            .into_iter()
            .collect())
    }

    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError> {
        let rows: Vec<LicenseRow> = sqlx::query_as(&format!("{SELECT} ORDER BY id"))
            .fetch_all(conn)
            .await?;
        Ok(rows
            .iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect())
    }
}
