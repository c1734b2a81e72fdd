//! The groups read model: one row per live group with its members, for listing (SCIM
//! `/Groups`). A deleted group's row goes away.

use async_trait::async_trait;
use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::events::EventEnum;
use quantus_domain::identity::group::GroupEvent;
use quantus_infra::{InfraError, LogRecord};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::Projection;

pub struct GroupsView;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub members: Vec<String>,
    pub external_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

const SELECT: &str =
    "SELECT id, organization_id, name, members, external_id, created_at, updated_at, version FROM groups_view";

fn row_to_group(row: &AnyRow) -> Result<GroupRow, InfraError> {
    let members: String = row.try_get("members")?;
    Ok(GroupRow {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        name: row.try_get("name")?,
        members: serde_json::from_str(&members)
            .map_err(|e| InfraError::Corrupt(format!("groups_view members: {e}")))?,
        external_id: row.try_get("external_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get::<i64, _>("version")? as u64,
    })
}

impl GroupsView {
    pub const NAME: &'static str = "groups";
    /// The events `apply` changes the model on (the event index; checked in `consumes`).
    pub const CONSUMES: &'static [&'static str] = crate::consumes::consumed![
        GroupEvent::GroupCreated,
        GroupEvent::GroupRenamed,
        GroupEvent::GroupMemberAdded,
        GroupEvent::GroupMemberRemoved,
        GroupEvent::GroupDeleted,
        GroupEvent::GroupExternalIdChanged,
    ];

    /// Every live group of an organization, by id.
    pub async fn by_organization(
        pool: &AnyPool,
        organization_id: &str,
    ) -> Result<Vec<GroupRow>, InfraError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE organization_id = $1 ORDER BY id"))
            .bind(organization_id)
            .fetch_all(pool)
            .await?;
        rows.iter().map(row_to_group).collect()
    }

    pub async fn one(pool: &AnyPool, id: &str) -> Result<Option<GroupRow>, InfraError> {
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(row_to_group).transpose()
    }

    async fn members(conn: &mut AnyConnection, id: &str) -> Result<Vec<String>, InfraError> {
        let row = sqlx::query("SELECT members FROM groups_view WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(r) => serde_json::from_str(&r.try_get::<String, _>("members")?)
                .map_err(|e| InfraError::Corrupt(format!("groups_view members: {e}"))),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl Projection for GroupsView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == GroupEvent::AGGREGATE
    }

    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS groups_view (
                id TEXT PRIMARY KEY,
                organization_id TEXT NOT NULL,
                name TEXT NOT NULL,
                members TEXT NOT NULL,
                external_id TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                version BIGINT NOT NULL
            )",
        )
        .await?;
        Ok(())
    }

    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute("DELETE FROM groups_view").await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError> {
        let e = &record.envelope;
        let at = rfc3339_micros::format(&e.occurred_at);
        let version = e.sequence as i64;
        let id = e.aggregate_id.clone();
        match record.decode::<GroupEvent>()? {
            GroupEvent::GroupCreated(p) => {
                sqlx::query(
                    "INSERT INTO groups_view (id, organization_id, name, members, created_at, updated_at, version)
                     VALUES ($1, $2, $3, '[]', $4, $4, $5)",
                )
                .bind(id)
                .bind(p.organization_id)
                .bind(p.name)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            GroupEvent::GroupRenamed(p) => {
                sqlx::query(
                    "UPDATE groups_view SET name = $1, updated_at = $2, version = $3 WHERE id = $4",
                )
                .bind(p.name)
                .bind(at)
                .bind(version)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            event @ (GroupEvent::GroupMemberAdded(_) | GroupEvent::GroupMemberRemoved(_)) => {
                let mut members = Self::members(conn, &id).await?;
                match event {
                    GroupEvent::GroupMemberAdded(p) if !members.contains(&p.user_id) => {
                        members.push(p.user_id);
                    }
                    GroupEvent::GroupMemberRemoved(p) => members.retain(|m| *m != p.user_id),
                    _ => {}
                }
                sqlx::query(
                    "UPDATE groups_view SET members = $1, updated_at = $2, version = $3 WHERE id = $4",
                )
                .bind(serde_json::to_string(&members).unwrap_or_default())
                .bind(at)
                .bind(version)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            GroupEvent::GroupExternalIdChanged(p) => {
                sqlx::query(
                    "UPDATE groups_view SET external_id = $1, updated_at = $2, version = $3 WHERE id = $4",
                )
                .bind(p.external_id)
                .bind(at)
                .bind(version)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            GroupEvent::GroupDeleted(_) => {
                sqlx::query("DELETE FROM groups_view WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
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
        let id = record.envelope.aggregate_id.clone();
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(id.clone())
            .fetch_optional(&mut *conn)
            .await?;
        // A deleted group has no row: its last version closes here.
        let group = row.as_ref().map(row_to_group).transpose()?;
        Ok(vec![crate::history::Version {
            kind: Self::NAME,
            row_id: id,
            organization_id: group
                .as_ref()
                .map(|g| g.organization_id.clone())
                .unwrap_or_default(),
            doc: group.map(|g| serde_json::to_value(g).unwrap_or_default()),
        }])
    }

    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError> {
        let rows = sqlx::query(&format!("{SELECT} ORDER BY id"))
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|r| row_to_group(r).map(|g| serde_json::to_value(g).unwrap_or_default()))
            .collect()
    }
}
