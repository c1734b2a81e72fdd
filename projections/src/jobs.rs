//! The jobs read model: one row per job, for listing an organization's jobs.

use async_trait::async_trait;
use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::events::EventEnum;
use quantus_domain::evidence::bundle::EvidenceBundleEvent;
use quantus_domain::evidence::job::JobEvent;
use quantus_infra::{InfraError, LogRecord};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool, Executor};

use crate::Projection;

pub struct JobsView;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub organization_id: String,
    pub backend: String,
    /// `submitted`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub artifacts: i64,
    pub submitted_at: String,
    pub updated_at: String,
    #[sqlx(try_from = "i64")]
    pub version: u64,
}

const SELECT: &str = "SELECT id, organization_id, backend, status, artifacts, submitted_at, updated_at, version FROM jobs_view";

/// An evidence bundle in the list of an organization's bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct BundleRow {
    pub id: String,
    pub job_id: String,
    pub organization_id: String,
    pub manifest_sha256: String,
    pub created_at: String,
}

const BUNDLE_SELECT: &str =
    "SELECT id, job_id, organization_id, manifest_sha256, created_at FROM evidence_view";

impl JobsView {
    pub const NAME: &'static str = "jobs";
    /// The events `apply` changes the model on (the event index; checked in `consumes`).
    pub const CONSUMES: &'static [&'static str] = crate::consumes::consumed![
        JobEvent::JobSubmitted,
        JobEvent::JobStarted,
        JobEvent::JobCompleted,
        JobEvent::JobFailed,
        JobEvent::JobCancelled,
        JobEvent::ArtifactStored,
        JobEvent::ArtifactPurged,
        EvidenceBundleEvent::EvidenceBundleCreated,
    ];

    /// An organization's evidence bundles, by id (UUID v7: oldest first).
    pub async fn bundles_of(
        pool: &AnyPool,
        organization_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BundleRow>, InfraError> {
        let sql =
            format!("{BUNDLE_SELECT} WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        crate::page(pool, &sql, &[organization_id], after, limit).await
    }

    /// One job's evidence bundles, by id (oldest first).
    pub async fn bundles_of_job(
        pool: &AnyPool,
        job_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BundleRow>, InfraError> {
        let sql = format!("{BUNDLE_SELECT} WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        crate::page(pool, &sql, &[job_id], after, limit).await
    }

    pub async fn by_organization(
        pool: &AnyPool,
        organization_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRow>, InfraError> {
        let sql = format!("{SELECT} WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        crate::page(pool, &sql, &[organization_id], after, limit).await
    }
}

#[async_trait]
impl Projection for JobsView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == JobEvent::AGGREGATE || aggregate_type == EvidenceBundleEvent::AGGREGATE
    }

    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS jobs_view (
                id TEXT PRIMARY KEY,
                organization_id TEXT NOT NULL,
                backend TEXT NOT NULL,
                status TEXT NOT NULL,
                artifacts BIGINT NOT NULL,
                submitted_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                version BIGINT NOT NULL
            )",
        )
        .await?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS evidence_view (
                id TEXT PRIMARY KEY,
                job_id TEXT NOT NULL,
                organization_id TEXT NOT NULL,
                manifest_sha256 TEXT NOT NULL,
                created_at TEXT NOT NULL
            )",
        )
        .await?;
        conn.execute(
            "CREATE INDEX IF NOT EXISTS evidence_view_org ON evidence_view (organization_id, id)",
        )
        .await?;
        conn.execute("CREATE INDEX IF NOT EXISTS evidence_view_job ON evidence_view (job_id, id)")
            .await?;
        Ok(())
    }

    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute("DELETE FROM jobs_view").await?;
        conn.execute("DELETE FROM evidence_view").await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError> {
        let e = &record.envelope;
        let at = rfc3339_micros::format(&e.occurred_at);
        let version = e.sequence as i64;
        if e.aggregate_type == EvidenceBundleEvent::AGGREGATE {
            let EvidenceBundleEvent::EvidenceBundleCreated(p) = record.decode()?;
            sqlx::query(
                    "INSERT INTO evidence_view (id, job_id, organization_id, manifest_sha256, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(e.aggregate_id.clone())
                .bind(p.job_id)
                .bind(p.organization_id)
                .bind(p.manifest_sha256)
                .bind(at)
                .execute(conn)
                .await?;
            return Ok(());
        }
        let status = match record.decode::<JobEvent>()? {
            JobEvent::JobSubmitted(p) => {
                sqlx::query(
                    "INSERT INTO jobs_view (id, organization_id, backend, status, artifacts, submitted_at, updated_at, version)
                     VALUES ($1, $2, $3, 'submitted', 0, $4, $4, $5)",
                )
                .bind(e.aggregate_id.clone())
                .bind(p.organization_id)
                .bind(p.backend)
                .bind(at)
                .bind(version)
                .execute(conn)
                .await?;
                return Ok(());
            }
            JobEvent::JobStarted(_) => "running",
            JobEvent::JobCompleted(_) => "completed",
            JobEvent::JobFailed(_) => "failed",
            JobEvent::JobCancelled(_) => "cancelled",
            JobEvent::ArtifactStored(_) => {
                sqlx::query("UPDATE jobs_view SET artifacts = artifacts + 1, updated_at = $1, version = $2 WHERE id = $3")
                    .bind(at)
                    .bind(version)
                    .bind(e.aggregate_id.clone())
                    .execute(conn)
                    .await?;
                return Ok(());
            }
            JobEvent::ArtifactPurged(_) => {
                sqlx::query("UPDATE jobs_view SET updated_at = $1, version = $2 WHERE id = $3")
                    .bind(at)
                    .bind(version)
                    .bind(e.aggregate_id.clone())
                    .execute(conn)
                    .await?;
                return Ok(());
            }
        };
        sqlx::query(
            "UPDATE jobs_view SET status = $1, updated_at = $2, version = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(at)
        .bind(version)
        .bind(e.aggregate_id.clone())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError> {
        let jobs: Vec<JobRow> = sqlx::query_as(&format!("{SELECT} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
        let mut out: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| serde_json::to_value(j).unwrap_or_default())
            .collect();
        let bundles: Vec<BundleRow> = sqlx::query_as("SELECT id, job_id, organization_id, manifest_sha256, created_at FROM evidence_view ORDER BY id")
            .fetch_all(conn)
            .await?;
        for b in &bundles {
            out.push(serde_json::to_value(b).unwrap_or_default());
        }
        Ok(out)
    }
}
