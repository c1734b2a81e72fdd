//! The organizations read model: one row per organization, as the API shows it.

use async_trait::async_trait;
use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::events::EventEnum;
use quantus_domain::organization::OrganizationEvent;
use quantus_infra::{InfraError, LogRecord};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool, Executor};

use crate::Projection;

pub struct OrganizationsView;

/// One organization as the read side shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct OrganizationRow {
    pub id: String,
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    pub suspended_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Sequence of the last event applied: the aggregate's version, used as the ETag.
    #[sqlx(try_from = "i64")]
    pub version: u64,
}

const SELECT: &str =
    "SELECT id, name, status, suspended_reason, created_at, updated_at, version FROM organizations_view";

impl OrganizationsView {
    pub const NAME: &'static str = "organizations";
    /// The events `apply` changes the model on (the event index; checked in `consumes`).
    pub const CONSUMES: &'static [&'static str] = crate::consumes::consumed![
        OrganizationEvent::OrganizationCreated,
        OrganizationEvent::OrganizationRenamed,
        OrganizationEvent::OrganizationSuspended,
        OrganizationEvent::OrganizationReactivated,
    ];

    pub async fn get(pool: &AnyPool, id: &str) -> Result<Option<OrganizationRow>, InfraError> {
        Ok(sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?)
    }

    /// A page of organizations ordered by id (UUIDv7, so by creation time), after `after`.
    pub async fn list(
        pool: &AnyPool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OrganizationRow>, InfraError> {
        let sql = format!("{SELECT} WHERE id > $1 ORDER BY id LIMIT $2");
        crate::page(pool, &sql, &[], after, limit).await
    }
}

#[async_trait]
impl Projection for OrganizationsView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == OrganizationEvent::AGGREGATE
    }

    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS organizations_view (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                status TEXT NOT NULL,
                suspended_reason TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                version BIGINT NOT NULL
            )",
        )
        .await?;
        Ok(())
    }

    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute("DELETE FROM organizations_view").await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError> {
        let e = &record.envelope;
        let at = rfc3339_micros::format(&e.occurred_at);
        let version = e.sequence as i64;
        let query = match record.decode::<OrganizationEvent>()? {
            OrganizationEvent::OrganizationCreated(p) => sqlx::query(
                "INSERT INTO organizations_view (id, name, status, suspended_reason, created_at, updated_at, version)
                 VALUES ($1, $2, 'active', NULL, $3, $3, $4)",
            )
            .bind(e.aggregate_id.clone())
            .bind(p.name)
            .bind(at)
            .bind(version),
            OrganizationEvent::OrganizationRenamed(p) => sqlx::query(
                "UPDATE organizations_view SET name = $1, updated_at = $2, version = $3 WHERE id = $4",
            )
            .bind(p.name)
            .bind(at)
            .bind(version)
            .bind(e.aggregate_id.clone()),
            OrganizationEvent::OrganizationSuspended(p) => sqlx::query(
                "UPDATE organizations_view SET status = 'suspended', suspended_reason = $1, updated_at = $2, version = $3 WHERE id = $4",
            )
            .bind((!p.reason.is_empty()).then_some(p.reason))
            .bind(at)
            .bind(version)
            .bind(e.aggregate_id.clone()),
            OrganizationEvent::OrganizationReactivated(_) => sqlx::query(
                "UPDATE organizations_view SET status = 'active', suspended_reason = NULL, updated_at = $1, version = $2 WHERE id = $3",
            )
            .bind(at)
            .bind(version)
            .bind(e.aggregate_id.clone()),
        };
        query.execute(conn).await?;
        Ok(())
    }

    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError> {
        let rows: Vec<OrganizationRow> = sqlx::query_as(&format!("{SELECT} ORDER BY id"))
            .fetch_all(conn)
            .await?;
        Ok(rows
            .iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect())
    }
}
