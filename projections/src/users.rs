//! The users read model: one row per user with their personal data opened, for listing and
//! lookups. Personal fields are decrypted when the event is applied; after an erasure the row
//! loses them, and a replay cannot bring them back (the data key is gone): it shows the user
//! as erased.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::events::EventEnum;
use quantus_domain::identity::user::UserEvent;
use quantus_domain::identity::Role;
use quantus_infra::subject_keys::SubjectKeys;
use quantus_infra::{InfraError, LogRecord};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool, Executor};

use crate::Projection;

pub mod search;

pub struct UsersView {
    keys: SubjectKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub id: String,
    pub organization_id: String,
    /// `active`, `disabled` or `erased`.
    pub status: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub memberships: BTreeMap<String, BTreeSet<Role>>,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
}

const SELECT: &str = "SELECT id, organization_id, status, email, name, memberships, created_at, updated_at, version FROM users_view";

/// A `users_view` row as stored: its memberships are JSON text, which sqlx's `Any` driver
/// does not decode, so [`UserRow`] is made from it by parsing them.
#[derive(sqlx::FromRow)]
struct UserColumns {
    id: String,
    organization_id: String,
    status: String,
    email: Option<String>,
    name: Option<String>,
    memberships: String,
    created_at: String,
    updated_at: String,
    #[sqlx(try_from = "i64")]
    version: u64,
}

impl TryFrom<UserColumns> for UserRow {
    type Error = InfraError;

    fn try_from(c: UserColumns) -> Result<Self, InfraError> {
        Ok(UserRow {
            id: c.id,
            organization_id: c.organization_id,
            status: c.status,
            email: c.email,
            name: c.name,
            memberships: serde_json::from_str(&c.memberships)
                .map_err(|e| InfraError::Corrupt(format!("users_view memberships: {e}")))?,
            created_at: c.created_at,
            updated_at: c.updated_at,
            version: c.version,
        })
    }
}

/// A user's row with their stored provisioning profile (SCIM), if any.
#[derive(sqlx::FromRow)]
struct ProfiledColumns {
    #[sqlx(flatten)]
    user: UserColumns,
    profile: Option<String>,
}

impl ProfiledColumns {
    fn opened(self) -> Result<(UserRow, Option<serde_json::Value>), InfraError> {
        let profile = parse_profile(self.profile)?;
        Ok((self.user.try_into()?, profile))
    }
}

/// What [`UsersView::reindex`] reads of one user.
#[derive(sqlx::FromRow)]
struct IndexedColumns {
    organization_id: String,
    status: String,
    email: Option<String>,
    name: Option<String>,
    profile: Option<String>,
}

/// A stored profile as [`Projection::dump`] shows it.
#[derive(sqlx::FromRow, Serialize)]
struct ProfileDump {
    profile_of: String,
    organization_id: String,
    user_name_lc: Option<String>,
    profile: String,
}

/// A user's search columns as [`Projection::dump`] shows them.
#[derive(sqlx::FromRow, Serialize)]
struct SearchDump {
    search_of: String,
    user_name_lc: Option<String>,
    external_id: Option<String>,
}

/// A blind-index entry as [`Projection::dump`] shows it.
#[derive(sqlx::FromRow, Serialize)]
struct BlindIndexDump {
    blind_index_of: String,
    organization_id: String,
    attribute: String,
    digest: String,
}

/// A stored profile, parsed.
fn parse_profile(profile: Option<String>) -> Result<Option<serde_json::Value>, InfraError> {
    profile
        .map(|p| {
            serde_json::from_str(&p)
                .map_err(|e| InfraError::Corrupt(format!("user_profiles profile: {e}")))
        })
        .transpose()
}

/// What the search columns hold for one user: `userName` lower-cased, `externalId`, and the
/// values of [`search::BLIND_ATTRIBUTES`] (each to be kept as its blind index only). `profile`
/// is the SCIM profile; a user SCIM never described is searched as SCIM shows them (userName
/// and work email their email, displayName their name).
struct SearchTerms {
    user_name_lc: Option<String>,
    external_id: Option<String>,
    personal: Vec<(&'static str, String)>,
}

impl SearchTerms {
    fn of(
        profile: Option<&serde_json::Value>,
        email: Option<&str>,
        name: Option<&str>,
    ) -> SearchTerms {
        use serde_json::Value;
        let Some(doc) = profile.filter(|p| p.is_object()) else {
            let mut personal = vec![];
            if let Some(e) = email {
                personal.push(("emails.value", e.to_owned()));
            }
            if let Some(n) = name {
                personal.push(("displayname", n.to_owned()));
            }
            return SearchTerms {
                user_name_lc: email.map(str::to_lowercase),
                external_id: None,
                personal,
            };
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let mut personal = vec![];
        for (attribute, list) in [
            ("emails.value", "emails"),
            ("phonenumbers.value", "phoneNumbers"),
        ] {
            if let Some(items) = doc.get(list).and_then(Value::as_array) {
                for item in items {
                    if let Some(v) = text(item.get("value")) {
                        personal.push((attribute, v));
                    }
                }
            }
        }
        for (attribute, sub) in [
            ("name.familyname", "familyName"),
            ("name.givenname", "givenName"),
        ] {
            if let Some(v) = text(doc.get("name").and_then(|n| n.get(sub))) {
                personal.push((attribute, v));
            }
        }
        if let Some(v) = text(doc.get("displayName")) {
            personal.push(("displayname", v));
        }
        SearchTerms {
            user_name_lc: text(doc.get("userName")).map(|u| u.to_lowercase()),
            external_id: text(doc.get("externalId")),
            personal,
        }
    }
}

/// Adds `column` to `table` unless it is there (stores made before it); true when added.
pub(crate) async fn add_column(
    conn: &mut AnyConnection,
    table: &str,
    column: &str,
    kind: &str,
) -> Result<bool, InfraError> {
    let postgres = conn.backend_name().eq_ignore_ascii_case("postgresql");
    let exists = if postgres {
        "SELECT COUNT(*) AS n FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
    } else {
        "SELECT COUNT(*) AS n FROM pragma_table_info($1) WHERE name = $2"
    };
    let n: i64 = sqlx::query_scalar(exists)
        .bind(table.to_owned())
        .bind(column.to_owned())
        .fetch_one(&mut *conn)
        .await?;
    if n > 0 {
        return Ok(false);
    }
    conn.execute(format!("ALTER TABLE {table} ADD COLUMN {column} {kind}").as_str())
        .await?;
    Ok(true)
}

impl UsersView {
    pub const NAME: &'static str = "users";
    /// The events `apply` changes the model on (the event index; checked in `consumes`).
    pub const CONSUMES: &'static [&'static str] = crate::consumes::consumed![
        UserEvent::UserRegistered,
        UserEvent::UserPasswordSet,
        UserEvent::UserRoleGranted,
        UserEvent::UserRoleRevoked,
        UserEvent::UserDisabled,
        UserEvent::UserEnabled,
        UserEvent::UserErased,
        UserEvent::UserProfileChanged,
        UserEvent::UserEmailChanged,
        UserEvent::UserInvited,
        UserEvent::UserInviteAccepted,
    ];

    /// Rewrites the search columns and blind-index entries of one user from the model's row
    /// and profile: none once erased (the old values no longer find them).
    async fn reindex(&self, conn: &mut AnyConnection, id: &str) -> Result<(), InfraError> {
        sqlx::query("DELETE FROM user_blind_index WHERE user_id = $1")
            .bind(id.to_owned())
            .execute(&mut *conn)
            .await?;
        let row: Option<IndexedColumns> = sqlx::query_as(
            "SELECT u.organization_id, u.status, u.email, u.name, p.profile \
             FROM users_view u LEFT JOIN user_profiles p ON p.id = u.id WHERE u.id = $1",
        )
        .bind(id.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(()) };
        let organization_id = row.organization_id;
        let terms = if row.status == "erased" {
            SearchTerms {
                user_name_lc: None,
                external_id: None,
                personal: vec![],
            }
        } else {
            let profile = parse_profile(row.profile)?;
            SearchTerms::of(profile.as_ref(), row.email.as_deref(), row.name.as_deref())
        };
        sqlx::query("UPDATE users_view SET user_name_lc = $1, external_id = $2 WHERE id = $3")
            .bind(terms.user_name_lc)
            .bind(terms.external_id)
            .bind(id.to_owned())
            .execute(&mut *conn)
            .await?;
        let digests: BTreeSet<(&str, String)> = terms
            .personal
            .iter()
            .map(|(a, v)| (*a, self.keys.blind_index(&organization_id, a, v)))
            .collect();
        for (attribute, digest) in digests {
            sqlx::query(
                "INSERT INTO user_blind_index (organization_id, attribute, digest, user_id) VALUES ($1, $2, $3, $4)",
            )
            .bind(organization_id.clone())
            .bind(attribute)
            .bind(digest)
            .bind(id.to_owned())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Fills the search columns of a store made before them, from the model itself (its
    /// profiles are opened already), a thousand users at a time.
    async fn reindex_all(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        let mut after = String::new();
        loop {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM users_view WHERE id > $1 ORDER BY id LIMIT 1000",
            )
            .bind(after.clone())
            .fetch_all(&mut *conn)
            .await?;
            let Some(last) = ids.last() else { break };
            after = last.clone();
            for id in &ids {
                self.reindex(conn, id).await?;
            }
        }
        Ok(())
    }

    pub fn new(keys: SubjectKeys) -> Self {
        Self { keys }
    }

    /// A page of an organization's users (members of it, wherever their home is), by id.
    pub async fn by_organization(
        pool: &AnyPool,
        organization_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRow>, InfraError> {
        let rows: Vec<UserColumns> = sqlx::query_as(&format!(
            "{SELECT} WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(organization_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.into_iter().map(UserRow::try_from).collect()
    }

    /// An organization's users (home organization; erased users left out) with their opened
    /// provisioning profiles, for SCIM's filters, sorting and paging, by id. With
    /// `user_name_prefix` (lower-case) only users whose userName (or, without a profile, whose
    /// email) starts with it: a range over `(organization_id, user_name_lc)` compared bytewise
    /// (`postgres` adds `COLLATE "C"`, so that no locale's collation can drop a match).
    pub async fn with_profiles(
        pool: &AnyPool,
        organization_id: &str,
        user_name_prefix: Option<&str>,
        postgres: bool,
    ) -> Result<Vec<(UserRow, Option<serde_json::Value>)>, InfraError> {
        const COLS: &str = "u.id, u.organization_id, u.status, u.email, u.name, u.memberships, u.created_at, u.updated_at, u.version";
        let rows: Vec<ProfiledColumns> = match user_name_prefix {
            None => {
                sqlx::query_as(&format!(
                    "SELECT {COLS}, p.profile FROM users_view u LEFT JOIN user_profiles p ON p.id = u.id \
                     WHERE u.organization_id = $1 AND u.status <> 'erased' ORDER BY u.id"
                ))
                .bind(organization_id)
                .fetch_all(pool)
                .await?
            }
            Some(prefix) => {
                let c = if postgres { " COLLATE \"C\"" } else { "" };
                // Every string that starts with `prefix` sorts below prefix + U+10FFFF.
                let high = format!("{prefix}\u{10FFFF}");
                let mut rows: Vec<ProfiledColumns> = sqlx::query_as(&format!(
                    "SELECT {COLS}, p.profile FROM user_profiles p JOIN users_view u ON u.id = p.id \
                     WHERE p.organization_id = $1 AND p.user_name_lc{c} >= $2 AND p.user_name_lc{c} < $3 \
                     AND u.status <> 'erased'"
                ))
                .bind(organization_id)
                .bind(prefix.to_owned())
                .bind(high.clone())
                .fetch_all(pool)
                .await?;
                // Users SCIM never described: their userName is their (normalised) email.
                rows.extend(
                    sqlx::query_as(&format!(
                        "SELECT {COLS}, CAST(NULL AS TEXT) AS profile FROM users_view u \
                         WHERE u.organization_id = $1 AND u.email{c} >= $2 AND u.email{c} < $3 \
                         AND u.status <> 'erased' \
                         AND NOT EXISTS (SELECT 1 FROM user_profiles p WHERE p.id = u.id)"
                    ))
                    .bind(organization_id)
                    .bind(prefix.to_owned())
                    .bind(high)
                    .fetch_all(pool)
                    .await?,
                );
                rows
            }
        };
        let mut out = rows
            .into_iter()
            .map(ProfiledColumns::opened)
            .collect::<Result<Vec<_>, InfraError>>()?;
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    /// One user of the model with its opened profile.
    pub async fn one_with_profile(
        pool: &AnyPool,
        id: &str,
    ) -> Result<Option<(UserRow, Option<serde_json::Value>)>, InfraError> {
        let row: Option<ProfiledColumns> = sqlx::query_as(
            "SELECT u.id, u.organization_id, u.status, u.email, u.name, u.memberships, u.created_at, u.updated_at, u.version, p.profile \
             FROM users_view u LEFT JOIN user_profiles p ON p.id = u.id WHERE u.id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        row.map(ProfiledColumns::opened).transpose()
    }

    async fn memberships(
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<BTreeMap<String, BTreeSet<Role>>, InfraError> {
        let memberships: Option<String> =
            sqlx::query_scalar("SELECT memberships FROM users_view WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        match memberships {
            Some(m) => serde_json::from_str(&m)
                .map_err(|e| InfraError::Corrupt(format!("users_view memberships: {e}"))),
            None => Ok(BTreeMap::new()),
        }
    }

    async fn set_memberships(
        conn: &mut AnyConnection,
        id: &str,
        memberships: &BTreeMap<String, BTreeSet<Role>>,
        at: &str,
        version: i64,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "UPDATE users_view SET memberships = $1, updated_at = $2, version = $3 WHERE id = $4",
        )
        .bind(serde_json::to_string(memberships).unwrap_or_default())
        .bind(at.to_owned())
        .bind(version)
        .bind(id.to_owned())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Projection for UsersView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == UserEvent::AGGREGATE
    }

    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS users_view (
                id TEXT PRIMARY KEY,
                organization_id TEXT NOT NULL,
                status TEXT NOT NULL,
                email TEXT,
                name TEXT,
                memberships TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                version BIGINT NOT NULL
            )",
        )
        .await?;
        // Provisioning profiles (SCIM), opened; its own table so that existing databases
        // need no ALTER. `user_name_lc` serves prefix filters.
        conn.execute(
            "CREATE TABLE IF NOT EXISTS user_profiles (
                id TEXT PRIMARY KEY,
                organization_id TEXT NOT NULL,
                user_name_lc TEXT,
                profile TEXT NOT NULL
            )",
        )
        .await?;
        conn.execute(
            "CREATE INDEX IF NOT EXISTS user_profiles_org_name ON user_profiles (organization_id, user_name_lc)",
        )
        .await?;
        // SCIM searches (issue 18 item 5): plain columns for what is not personal or is
        // already a login (userName), and keyed digests for personal values.
        let added = add_column(conn, "users_view", "user_name_lc", "TEXT").await?;
        let added = add_column(conn, "users_view", "external_id", "TEXT").await? || added;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS user_blind_index (
                organization_id TEXT NOT NULL,
                attribute TEXT NOT NULL,
                digest TEXT NOT NULL,
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
        for (index, columns) in [
            ("users_view_org_id", format!("organization_id, id{c}")),
            (
                "users_view_org_name",
                format!("organization_id, user_name_lc{c}"),
            ),
            (
                "users_view_org_external",
                format!("organization_id, external_id{c}"),
            ),
            (
                "users_view_org_created",
                format!("organization_id, created_at{c}"),
            ),
            (
                "users_view_org_modified",
                format!("organization_id, updated_at{c}"),
            ),
            // Counts of broad filters (everyone, `active`) read this index only.
            (
                "users_view_org_status",
                "organization_id, status".to_owned(),
            ),
        ] {
            conn.execute(
                format!("CREATE INDEX IF NOT EXISTS {index} ON users_view ({columns})").as_str(),
            )
            .await?;
        }
        conn.execute(
            "CREATE INDEX IF NOT EXISTS user_blind_index_digest ON user_blind_index (organization_id, attribute, digest)",
        )
        .await?;
        conn.execute(
            "CREATE INDEX IF NOT EXISTS user_blind_index_user ON user_blind_index (user_id)",
        )
        .await?;
        if added {
            self.reindex_all(conn).await?;
        }
        Ok(())
    }

    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        conn.execute("DELETE FROM users_view").await?;
        conn.execute("DELETE FROM user_profiles").await?;
        conn.execute("DELETE FROM user_blind_index").await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError> {
        let e = &record.envelope;
        let at = rfc3339_micros::format(&e.occurred_at);
        let version = e.sequence as i64;
        let id = e.aggregate_id.clone();
        // A change that moves only the status (or nothing but the version).
        let touch = |status: &'static str| {
            sqlx::query(
                "UPDATE users_view SET status = CASE WHEN $1 = '' THEN status ELSE $1 END, updated_at = $2, version = $3 WHERE id = $4",
            )
            .bind(status)
            .bind(at.clone())
            .bind(version)
            .bind(id.clone())
        };
        let event = record.decode::<UserEvent>()?;
        let reindex = matches!(
            event,
            UserEvent::UserRegistered(_)
                | UserEvent::UserProfileChanged(_)
                | UserEvent::UserEmailChanged(_)
                | UserEvent::UserErased(_)
        );
        match event {
            UserEvent::UserRegistered(p) => {
                // Unreadable once erased: a replay then shows the user without personal data.
                let email = self.keys.open_text_on(conn, &p.email, "email").await?;
                let name = self.keys.open_text_on(conn, &p.name, "name").await?;
                let memberships: BTreeMap<String, BTreeSet<Role>> =
                    [(p.organization_id.clone(), p.roles)].into();
                let status = if email.is_none() { "erased" } else { "active" };
                sqlx::query(
                    "INSERT INTO users_view (id, organization_id, status, email, name, memberships, created_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                )
                .bind(id.clone())
                .bind(p.organization_id)
                .bind(status)
                .bind(email)
                .bind(name)
                .bind(serde_json::to_string(&memberships).unwrap_or_default())
                .bind(at.clone())
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            UserEvent::UserRoleGranted(p) => {
                let mut m = Self::memberships(conn, &id).await?;
                m.entry(p.organization_id).or_default().insert(p.role);
                Self::set_memberships(conn, &id, &m, &at, version).await?;
            }
            UserEvent::UserRoleRevoked(p) => {
                let mut m = Self::memberships(conn, &id).await?;
                if let Some(roles) = m.get_mut(&p.organization_id) {
                    roles.remove(&p.role);
                    if roles.is_empty() {
                        m.remove(&p.organization_id);
                    }
                }
                Self::set_memberships(conn, &id, &m, &at, version).await?;
            }
            UserEvent::UserPasswordSet(_)
            | UserEvent::UserInvited(_)
            | UserEvent::UserInviteAccepted(_) => {
                touch("").execute(&mut *conn).await?;
            }
            UserEvent::UserDisabled(_) => {
                touch("disabled").execute(&mut *conn).await?;
            }
            UserEvent::UserEnabled(_) => {
                touch("active").execute(&mut *conn).await?;
            }
            UserEvent::UserProfileChanged(p) => {
                // Opened before this transaction writes: opening may need another connection,
                // and SQLite's write lock must not wait on it.
                let opened = self.keys.open_text_on(conn, &p.profile, "profile").await?;
                touch("").execute(&mut *conn).await?;
                // Unreadable once erased: then there is no profile to keep.
                match opened {
                    Some(text) => {
                        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|x| {
                            InfraError::Corrupt(format!("profile of user {id}: {x}"))
                        })?;
                        let user_name = doc
                            .get("userName")
                            .and_then(|v| v.as_str())
                            .map(str::to_lowercase);
                        let org: String = sqlx::query_scalar(
                            "SELECT organization_id FROM users_view WHERE id = $1",
                        )
                        .bind(id.clone())
                        .fetch_optional(&mut *conn)
                        .await?
                        .unwrap_or_default();
                        sqlx::query(
                            "INSERT INTO user_profiles (id, organization_id, user_name_lc, profile) VALUES ($1, $2, $3, $4)
                             ON CONFLICT (id) DO UPDATE SET user_name_lc = excluded.user_name_lc, profile = excluded.profile",
                        )
                        .bind(id.clone())
                        .bind(org)
                        .bind(user_name)
                        .bind(text)
                        .execute(&mut *conn)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM user_profiles WHERE id = $1")
                            .bind(id.clone())
                            .execute(&mut *conn)
                            .await?;
                    }
                }
            }
            UserEvent::UserEmailChanged(p) => {
                // Unreadable once erased: the erasure (later in the log) clears it anyway.
                let email = self.keys.open_text_on(conn, &p.email, "email").await?;
                sqlx::query(
                    "UPDATE users_view SET email = $1, updated_at = $2, version = $3 WHERE id = $4",
                )
                .bind(email)
                .bind(at.clone())
                .bind(version)
                .bind(id.clone())
                .execute(&mut *conn)
                .await?;
            }
            UserEvent::UserErased(_) => {
                // Every past version loses the personal data too: an as-of query must not
                // bring back what the erasure took.
                crate::history::rewrite(conn, Self::NAME, &id, |doc| {
                    doc["status"] = "erased".into();
                    doc["email"] = serde_json::Value::Null;
                    doc["name"] = serde_json::Value::Null;
                })
                .await?;
                sqlx::query("DELETE FROM user_profiles WHERE id = $1")
                    .bind(id.clone())
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "UPDATE users_view SET status = 'erased', email = NULL, name = NULL, memberships = '{}', updated_at = $1, version = $2 WHERE id = $3",
                )
                .bind(at.clone())
                .bind(version)
                .bind(id.clone())
                .execute(&mut *conn)
                .await?;
            }
        }
        if reindex {
            self.reindex(conn, &id).await?;
        }
        Ok(())
    }

    async fn versions(
        &self,
        conn: &mut AnyConnection,
        record: &LogRecord,
    ) -> Result<Vec<crate::history::Version>, InfraError> {
        let row: Option<UserColumns> = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
            .bind(record.envelope.aggregate_id.clone())
            .fetch_optional(&mut *conn)
            .await?;
        row.map(UserRow::try_from)
            .transpose()?
            .map(|u| {
                Ok(crate::history::Version {
                    kind: Self::NAME,
                    row_id: u.id.clone(),
                    organization_id: u.organization_id.clone(),
                    doc: Some(
                        serde_json::to_value(&u).map_err(|e| {
                            InfraError::Corrupt(format!("users_view {}: {e}", u.id))
                        })?,
                    ),
                })
            })
            .into_iter()
            .collect()
    }

    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError> {
        let rows: Vec<UserColumns> = sqlx::query_as(&format!("{SELECT} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
        let mut out = Vec::new();
        for user in rows {
            out.push(serde_json::to_value(UserRow::try_from(user)?).unwrap_or_default());
        }
        let profiles: Vec<ProfileDump> = sqlx::query_as(
            "SELECT id AS profile_of, organization_id, user_name_lc, profile FROM user_profiles ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        // The search columns and blind indexes: a rebuild (or a start on an older store) must
        // fill them as the live model did.
        let searched: Vec<SearchDump> = sqlx::query_as(
            "SELECT id AS search_of, user_name_lc, external_id FROM users_view ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let blind: Vec<BlindIndexDump> = sqlx::query_as(
            "SELECT user_id AS blind_index_of, organization_id, attribute, digest FROM user_blind_index \
             ORDER BY user_id, attribute, digest",
        )
        .fetch_all(&mut *conn)
        .await?;
        for p in profiles {
            out.push(serde_json::to_value(p).unwrap_or_default());
        }
        for s in searched {
            out.push(serde_json::to_value(s).unwrap_or_default());
        }
        for b in blind {
            out.push(serde_json::to_value(b).unwrap_or_default());
        }
        Ok(out)
    }
}
