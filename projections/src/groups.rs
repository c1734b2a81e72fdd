//! The groups read model: one row per live group with its members, for listing (SCIM
//! `/Groups`). A deleted group's row goes away. `name_lc` (displayName lower-cased) and the
//! membership index `group_members` (one row per group and member, indexed both ways) serve
//! SCIM searches ([`search`]).

use async_trait::async_trait;
use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::events::EventEnum;
use quantus_domain::identity::group::GroupEvent;
use quantus_infra::{InfraError, LogRecord};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::Projection;

pub mod search;

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

pub(crate) const SELECT: &str =
    "SELECT id, organization_id, name, members, external_id, created_at, updated_at, version FROM groups_view";

pub(crate) fn row_to_group(row: &AnyRow) -> Result<GroupRow, InfraError> {
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

    /// The organization's groups with an id above `after`, by id, at most `limit`.
    pub async fn page_after(
        pool: &AnyPool,
        organization_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GroupRow>, InfraError> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(organization_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.iter().map(row_to_group).collect()
    }

    /// The groups (id, displayName) of each of `users`, from the membership index, by group
    /// id: a page of users without reading every group of the organization.
    pub async fn memberships_of(
        pool: &AnyPool,
        organization_id: &str,
        users: &[String],
    ) -> Result<Vec<(String, String, String)>, InfraError> {
        let mut found: Vec<(String, String, String)> = Vec::new();
        // A bounded number of parameters per statement, whatever the page size.
        for chunk in users.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT m.user_id, g.id, g.name FROM group_members m \
                 JOIN groups_view g ON g.id = m.group_id \
                 WHERE m.organization_id = $1 AND m.user_id IN ({}) ORDER BY g.id",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(organization_id.to_owned());
            for u in chunk {
                q = q.bind(u.clone());
            }
            for r in q.fetch_all(pool).await? {
                found.push((r.try_get("user_id")?, r.try_get("id")?, r.try_get("name")?));
            }
        }
        found.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(found)
    }

    /// Rebuilds the search column and the membership index from the model's rows (a store
    /// made before them).
    async fn reindex_all(conn: &mut AnyConnection) -> Result<(), InfraError> {
        let rows = sqlx::query(&format!("{SELECT} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
        let groups: Vec<GroupRow> = rows.iter().map(row_to_group).collect::<Result<_, _>>()?;
        conn.execute("DELETE FROM group_members").await?;
        for g in groups {
            sqlx::query("UPDATE groups_view SET name_lc = $1 WHERE id = $2")
                .bind(g.name.to_lowercase())
                .bind(g.id.clone())
                .execute(&mut *conn)
                .await?;
            for m in &g.members {
                Self::add_member(conn, &g.organization_id, &g.id, m).await?;
            }
        }
        Ok(())
    }

    async fn add_member(
        conn: &mut AnyConnection,
        organization_id: &str,
        group_id: &str,
        user_id: &str,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "INSERT INTO group_members (organization_id, group_id, user_id) VALUES ($1, $2, $3)",
        )
        .bind(organization_id.to_owned())
        .bind(group_id.to_owned())
        .bind(user_id.to_owned())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn one(pool: &AnyPool, id: &str) -> Result<Option<GroupRow>, InfraError> {
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(row_to_group).transpose()
    }

    async fn organization_of(conn: &mut AnyConnection, id: &str) -> Result<String, InfraError> {
        let row = sqlx::query("SELECT organization_id FROM groups_view WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("organization_id")?,
            None => String::new(),
        })
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

/// Whether `table` exists (a store made before it has not).
async fn table_exists(conn: &mut AnyConnection, table: &str) -> Result<bool, InfraError> {
    let sql = if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        "SELECT COUNT(*) AS n FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = $1"
    } else {
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
    };
    let n: i64 = sqlx::query(sql)
        .bind(table.to_owned())
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    Ok(n > 0)
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
        // SCIM searches (issue 18 item 5): displayName lower-cased as SCIM compares it (not
        // personal data), and who is in which group, indexed by group and by member.
        let added = crate::users::add_column(conn, "groups_view", "name_lc", "TEXT").await?;
        let created = !table_exists(conn, "group_members").await?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS group_members (
                organization_id TEXT NOT NULL,
                group_id TEXT NOT NULL,
                user_id TEXT NOT NULL
            )",
        )
        .await?;
        // Bytewise order on PostgreSQL whatever the database's locale, as the searches compare.
        let c = if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            " COLLATE \"C\""
        } else {
            ""
        };
        for (index, table, columns) in [
            (
                "groups_view_org_id",
                "groups_view",
                format!("organization_id, id{c}"),
            ),
            (
                "groups_view_org_name",
                "groups_view",
                format!("organization_id, name_lc{c}"),
            ),
            (
                "groups_view_org_external",
                "groups_view",
                format!("organization_id, external_id{c}"),
            ),
            (
                "groups_view_org_created",
                "groups_view",
                format!("organization_id, created_at{c}"),
            ),
            (
                "groups_view_org_modified",
                "groups_view",
                format!("organization_id, updated_at{c}"),
            ),
            (
                "group_members_group",
                "group_members",
                "organization_id, group_id, user_id".to_owned(),
            ),
            (
                "group_members_user",
                "group_members",
                "organization_id, user_id, group_id".to_owned(),
            ),
        ] {
            conn.execute(
                format!("CREATE INDEX IF NOT EXISTS {index} ON {table} ({columns})").as_str(),
            )
            .await?;
        }
        if added || created {
            Self::reindex_all(conn).await?;
        }
        Ok(())
    }

    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute("DELETE FROM groups_view").await?;
        conn.execute("DELETE FROM group_members").await?;
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
                    "INSERT INTO groups_view (id, organization_id, name, name_lc, members, created_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, '[]', $5, $5, $6)",
                )
                .bind(id)
                .bind(p.organization_id)
                .bind(p.name.clone())
                .bind(p.name.to_lowercase())
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            GroupEvent::GroupRenamed(p) => {
                sqlx::query(
                    "UPDATE groups_view SET name = $1, name_lc = $2, updated_at = $3, version = $4 WHERE id = $5",
                )
                .bind(p.name.clone())
                .bind(p.name.to_lowercase())
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
                        let org = Self::organization_of(conn, &id).await?;
                        if !org.is_empty() {
                            Self::add_member(conn, &org, &id, &p.user_id).await?;
                        }
                        members.push(p.user_id);
                    }
                    GroupEvent::GroupMemberRemoved(p) => {
                        sqlx::query(
                            "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
                        )
                        .bind(id.clone())
                        .bind(p.user_id.clone())
                        .execute(&mut *conn)
                        .await?;
                        members.retain(|m| *m != p.user_id)
                    }
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
                sqlx::query("DELETE FROM group_members WHERE group_id = $1")
                    .bind(id.clone())
                    .execute(&mut *conn)
                    .await?;
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
