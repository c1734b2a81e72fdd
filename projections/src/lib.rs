//! Read models and the runner that feeds them from the log.
//!
//! A [`Projection`] is plain code over one SQL transaction; the [`runner`] decides where events
//! come from (the store's own log in the embedded mode, Kafka in production) and guarantees
//! each event's effect happens once: the source position and the per-aggregate sequence are
//! written in the same transaction as the read-model change.

pub mod commercial;
pub mod consumes;
pub mod groups;
pub mod history;
pub mod jobs;
pub mod licenses;
pub mod organizations;
pub mod runner;
pub mod search;
pub mod users;

use async_trait::async_trait;
use quantus_infra::{InfraError, LogRecord};
use sqlx::{AnyConnection, AnyPool};

/// A read model built from the log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the key of its checkpoints and the argument of `projections rebuild`.
    fn name(&self) -> &'static str;

    /// Whether events of this aggregate type change this model.
    fn handles(&self, aggregate_type: &str) -> bool;

    /// Creates the model's tables if they do not exist.
    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError>;

    /// Empties the model (for a rebuild).
    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError>;

    /// Applies one event. Called once per (aggregate, sequence), in sequence order.
    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError>;

    /// The rows `record` (just applied) left behind, for the model's history (time travel,
    /// see [`history`]). A model without history keeps the default: none.
    async fn versions(
        &self,
        _conn: &mut AnyConnection,
        _record: &LogRecord,
    ) -> Result<Vec<history::Version>, InfraError> {
        Ok(Vec::new())
    }

    /// Every row of the model in a stable order, for comparing a rebuild with the live model.
    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError>;
}

/// Every read model of the platform. `keys` opens personal data for the users model.
pub fn all(keys: &quantus_infra::subject_keys::SubjectKeys) -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(organizations::OrganizationsView),
        std::sync::Arc::new(licenses::LicensesView),
        std::sync::Arc::new(users::UsersView::new(keys.clone())),
        std::sync::Arc::new(groups::GroupsView),
        std::sync::Arc::new(jobs::JobsView),
        std::sync::Arc::new(commercial::CommercialView),
    ]
}

/// Looks a projection up by name.
pub fn by_name(
    name: &str,
    keys: &quantus_infra::subject_keys::SubjectKeys,
) -> Option<std::sync::Arc<dyn Projection>> {
    all(keys).into_iter().find(|p| p.name() == name)
}

/// One page of a model's rows in id order (keyset paging, as every list route pages): `sql`
/// takes `filters` as its first parameters, then the id the page starts after and the page
/// size, e.g. `... WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3`.
pub(crate) async fn page<T>(
    pool: &AnyPool,
    sql: &str,
    filters: &[&str],
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<T>, InfraError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let mut query = sqlx::query_as(sql);
    for filter in filters {
        query = query.bind(*filter);
    }
    Ok(query
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    fn record(
        position: u64,
        aggregate_type: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> LogRecord {
        serde_json::from_value(serde_json::json!({
            "position": position,
            "envelope": {
                "actor": {"id": "test", "kind": "system"},
                "aggregate_id": "01a227af-1c27-7646-b9ec-b2cc682f182b",
                "aggregate_type": aggregate_type,
                "causation_id": "01a227af-1c27-7646-b9ec-b2cea2f3fff4",
                "correlation_id": "01a227af-1c27-7646-b9ec-b2cd22b95080",
                "event_id": "01a227af-1c28-769f-bdff-355a6d816c59",
                "event_type": event_type,
                "occurred_at": "2026-11-29T14:21:57.159736Z",
                "payload": payload,
                "prev_hash": "0000000000000000000000000000000000000000000000000000000000000000",
                "schema_version": 1,
                "sequence": 2,
                "tenant_id": "01a227af-1c27-7646-b9ec-b2cc682f182b",
                "hash": "",
            },
        }))
        .unwrap()
    }

    /// Every read model decodes its records into the event enums: an event type an enum does
    /// not declare, or another aggregate's event, is corrupt data, never skipped.
    #[tokio::test]
    async fn read_models_refuse_events_their_enums_do_not_declare() {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let empty = serde_json::json!({});
        let models: Vec<(Box<dyn Projection>, &str, &str, serde_json::Value)> = vec![
            (
                Box::new(organizations::OrganizationsView),
                "Organization",
                "OrganizationReactivated",
                empty.clone(),
            ),
            (
                Box::new(licenses::LicensesView),
                "License",
                "LicenseReinstated",
                empty.clone(),
            ),
            (
                Box::new(groups::GroupsView),
                "Group",
                "GroupDeleted",
                empty.clone(),
            ),
            (Box::new(jobs::JobsView), "Job", "JobStarted", empty.clone()),
            (
                Box::new(commercial::CommercialView),
                "Customer",
                "CustomerContactChanged",
                serde_json::json!({"name": "n", "billing_email": "b@example.com"}),
            ),
        ];
        for (model, aggregate, known, payload) in models {
            model.create(&mut conn).await.unwrap();
            assert!(model.handles(aggregate));
            model
                .apply(&mut conn, &record(6, aggregate, known, payload))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", model.name()));
            for (aggregate, event_type) in [(aggregate, "SomethingElse"), ("Keyring", "KeyRetired")]
            {
                match model
                    .apply(&mut conn, &record(7, aggregate, event_type, empty.clone()))
                    .await
                {
                    Err(InfraError::Corrupt(m)) => {
                        assert!(m.contains("position 7") && m.contains(event_type), "{m}")
                    }
                    other => panic!("{}: {event_type} gave {other:?}", model.name()),
                }
            }
        }
    }

    /// The rows the read models serve are mapped by column name (`sqlx::FromRow` over `Any`):
    /// each column lands in its own field, and a negative version is refused, not wrapped.
    #[tokio::test]
    async fn read_model_rows_map_each_column_to_its_field() {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let models: [Box<dyn Projection>; 4] = [
            Box::new(organizations::OrganizationsView),
            Box::new(licenses::LicensesView),
            Box::new(jobs::JobsView),
            Box::new(commercial::CommercialView),
        ];
        for model in &models {
            model.create(&mut conn).await.unwrap();
        }
        for insert in [
            "INSERT INTO organizations_view VALUES ('o', 'Acme', 'suspended', 'unpaid', 'c-at', 'u-at', 3)",
            "INSERT INTO licenses_view VALUES ('l', 'o', 'qpu', 'pro', 'revoked', 'why', 'x-at', 2, 'r-at', 'i-at', 4)",
            "INSERT INTO jobs_view VALUES ('j', 'o', 'ibm', 'completed', 5, 's-at', 'u-at', 6)",
            "INSERT INTO evidence_view VALUES ('b', 'j', 'o', 'digest', 'c-at')",
            "INSERT INTO commercial_customers VALUES ('o', 'Acme GmbH', 'b@example.com', 'EUR', 7)",
            "INSERT INTO commercial_contracts VALUES ('k', 'o', 'cust', 'active', 'EUR', 's-at', 'e-at', '[]', 1, 8, 'u-at')",
            "INSERT INTO commercial_contract_licenses VALUES ('k', 'qpu', 'l', 'issue', '{\"state\":\"planned\"}')",
            "INSERT INTO commercial_usage VALUES ('o', '2026-12', 'jobs', 9)",
            "INSERT INTO commercial_invoices VALUES ('i', 'o', 'k', '2026-12', 'EUR', 1500, 'open', 'stripe', 'in_1', 'https://pay', 'd-at', 10, 'u-at')",
        ] {
            conn.execute(insert).await.unwrap();
        }
        let mut dumped = Vec::new();
        for model in &models {
            dumped.extend(model.dump(&mut conn).await.unwrap());
        }
        assert_eq!(
            serde_json::Value::Array(dumped),
            serde_json::json!([
                {"id": "o", "name": "Acme", "status": "suspended", "suspended_reason": "unpaid",
                 "created_at": "c-at", "updated_at": "u-at", "version": 3},
                {"id": "l", "organization_id": "o", "product": "qpu", "edition": "pro",
                 "status": "revoked", "status_reason": "why", "expires_at": "x-at",
                 "activations": 2, "revoked_at": "r-at", "issued_at": "i-at", "version": 4},
                {"id": "j", "organization_id": "o", "backend": "ibm", "status": "completed",
                 "artifacts": 5, "submitted_at": "s-at", "updated_at": "u-at", "version": 6},
                {"id": "b", "job_id": "j", "organization_id": "o", "manifest_sha256": "digest",
                 "created_at": "c-at"},
                {"customer": "o", "name": "Acme GmbH", "billing_email": "b@example.com",
                 "currency": "EUR", "version": 7},
                {"id": "k", "organization_id": "o", "customer_id": "cust", "status": "active",
                 "currency": "EUR", "starts_at": "s-at", "ends_at": "e-at", "line_items": [],
                 "amendments": 1, "version": 8, "updated_at": "u-at",
                 "license_steps": {"qpu": {"state": "planned"}}},
                {"usage": "o", "period": "2026-12", "metric": "jobs", "used": 9},
                {"id": "i", "organization_id": "o", "contract_id": "k", "period": "2026-12",
                 "currency": "EUR", "total": 1500, "status": "open", "provider": "stripe",
                 "external_id": "in_1", "hosted_url": "https://pay", "due_at": "d-at",
                 "version": 10, "updated_at": "u-at"},
            ])
        );
        conn.execute("UPDATE organizations_view SET version = -1")
            .await
            .unwrap();
        let refused = models[0].dump(&mut conn).await;
        assert!(
            matches!(&refused, Err(InfraError::Database(sqlx::Error::ColumnDecode { index, .. })) if index == "version"),
            "{refused:?}"
        );
        users_and_history_rows_map_each_column_to_its_field().await;
    }

    /// The users model and the models' history, on the platform's own schema (a store in a
    /// directory of its own): the history tables are made by `Database::open`.
    async fn users_and_history_rows_map_each_column_to_its_field() {
        use quantus_infra::subject_keys::SubjectKeys;
        use sqlx::Executor;
        let dir = std::env::temp_dir().join(format!("quantus-rows-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = quantus_infra::Database::open(None, &dir).await.unwrap();
        let pool = db.pool.clone();
        let users = users::UsersView::new(SubjectKeys::new(db, &[7; 32]));
        let mut conn = pool.acquire().await.unwrap();
        users.create(&mut conn).await.unwrap();
        for insert in [
            "INSERT INTO users_view (id, organization_id, status, email, name, memberships, created_at, updated_at, version, user_name_lc, external_id) \
             VALUES ('u', 'o', 'disabled', 'ada@example.com', 'Ada', '{\"o\":[\"admin\"]}', 'c-at', 'u-at', 11, 'ada', 'ext-1')",
            "INSERT INTO user_profiles (id, organization_id, user_name_lc, profile) VALUES ('u', 'o', 'ada', '{\"userName\":\"Ada\"}')",
            "INSERT INTO user_blind_index (organization_id, attribute, digest, user_id) VALUES ('o', 'emails.value', 'd1', 'u')",
        ] {
            conn.execute(insert).await.unwrap();
        }
        let user = serde_json::json!({"id": "u", "organization_id": "o", "status": "disabled",
            "email": "ada@example.com", "name": "Ada", "memberships": {"o": ["admin"]},
            "created_at": "c-at", "updated_at": "u-at", "version": 11});
        assert_eq!(
            serde_json::Value::Array(users.dump(&mut conn).await.unwrap()),
            serde_json::json!([
                user,
                {"profile_of": "u", "organization_id": "o", "user_name_lc": "ada",
                 "profile": "{\"userName\":\"Ada\"}"},
                {"search_of": "u", "user_name_lc": "ada", "external_id": "ext-1"},
                {"blind_index_of": "u", "organization_id": "o", "attribute": "emails.value",
                 "digest": "d1"},
            ])
        );
        let profile = Some(serde_json::json!({"userName": "Ada"}));
        let (row, opened) = users::UsersView::one_with_profile(&pool, "u")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (serde_json::to_value(row).unwrap(), opened),
            (user.clone(), profile.clone())
        );
        let listed = users::UsersView::with_profiles(&pool, "o", None, false)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(serde_json::to_value(&listed[0].0).unwrap(), user);
        assert_eq!(listed[0].1, profile);
        let page = users::UsersView::by_organization(&pool, "o", None, 10)
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&page).unwrap(),
            serde_json::json!([user])
        );

        // Two versions of one row: the erasure rewrites each in place (by its `valid_from`),
        // and each position reads its own.
        for (at, name) in [(3, "first"), (8, "second")] {
            let version = history::Version {
                kind: "users",
                row_id: "u".into(),
                organization_id: "o".into(),
                doc: Some(serde_json::json!({"name": name})),
            };
            history::record(&mut conn, "users", at, &[version])
                .await
                .unwrap();
        }
        history::rewrite(&mut conn, "users", "u", |doc| doc["erased"] = true.into())
            .await
            .unwrap();
        drop(conn);
        for (at, name) in [(5, "first"), (9, "second")] {
            assert_eq!(
                history::as_of(&pool, "users", Some("o"), at, None, 10)
                    .await
                    .unwrap(),
                vec![serde_json::json!({"name": name, "erased": true})],
                "as of {at}"
            );
        }

        let mut conn = pool.acquire().await.unwrap();
        conn.execute("UPDATE users_view SET version = -1")
            .await
            .unwrap();
        let refused = users.dump(&mut conn).await;
        assert!(
            matches!(&refused, Err(InfraError::Database(sqlx::Error::ColumnDecode { index, .. })) if index == "version"),
            "{refused:?}"
        );
        drop(conn);
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every list pages by id after the last id seen, within its filters (an empty filter
    /// is every organization's), through the one keyset query.
    #[tokio::test]
    async fn lists_page_by_id_after_the_last_one_seen_within_their_filters() {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        // One connection: an in-memory SQLite database lives in its connection.
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        for model in [
            Box::new(organizations::OrganizationsView) as Box<dyn Projection>,
            Box::new(licenses::LicensesView),
            Box::new(commercial::CommercialView),
        ] {
            model.create(&mut conn).await.unwrap();
        }
        for insert in [
            "INSERT INTO organizations_view VALUES ('o1', 'A', 'active', NULL, 'c', 'u', 1)",
            "INSERT INTO organizations_view VALUES ('o2', 'B', 'active', NULL, 'c', 'u', 1)",
            "INSERT INTO licenses_view VALUES ('a', 'o1', 'p', 'e', 'active', NULL, 'x', 0, NULL, 'i', 1)",
            "INSERT INTO licenses_view VALUES ('b', 'o2', 'p', 'e', 'active', NULL, 'x', 0, NULL, 'i', 1)",
            "INSERT INTO licenses_view VALUES ('c', 'o1', 'p', 'e', 'active', NULL, 'x', 0, NULL, 'i', 1)",
            "INSERT INTO commercial_invoices VALUES ('i1', 'o1', 'k', 'p', 'EUR', 1, 'open', 's', NULL, NULL, 'd', 1, 'u')",
            "INSERT INTO commercial_invoices VALUES ('i2', 'o1', 'k', 'p', 'EUR', 1, 'paid', 's', NULL, NULL, 'd', 1, 'u')",
            "INSERT INTO commercial_invoices VALUES ('i3', 'o2', 'k', 'p', 'EUR', 1, 'open', 's', NULL, NULL, 'd', 1, 'u')",
            "INSERT INTO commercial_invoices VALUES ('i4', 'o1', 'k', 'p', 'EUR', 1, 'open', 's', NULL, NULL, 'd', 1, 'u')",
        ] {
            conn.execute(insert).await.unwrap();
        }
        drop(conn);
        let pool = &pool;
        let licences = |org, after, limit| async move {
            licenses::LicensesView::by_organization(pool, org, after, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(licences(Some("o1"), None, 1).await, ["a"]);
        assert_eq!(licences(Some("o1"), Some("a"), 10).await, ["c"]);
        assert_eq!(
            licences(Some("o1"), Some("c"), 10).await,
            Vec::<String>::new()
        );
        assert_eq!(licences(None, None, 10).await, ["a", "b", "c"]);
        assert_eq!(licences(None, Some("a"), 1).await, ["b"]);
        let organizations = organizations::OrganizationsView::list(pool, Some("o1"), 10)
            .await
            .unwrap();
        assert_eq!(
            organizations
                .iter()
                .map(|o| o.id.as_str())
                .collect::<Vec<_>>(),
            ["o2"]
        );
        let invoices = |org, status, after| async move {
            commercial::CommercialView::invoices(pool, org, status, after, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(invoices(Some("o1"), Some("open"), None).await, ["i1", "i4"]);
        assert_eq!(invoices(Some("o1"), None, Some("i1")).await, ["i2", "i4"]);
        assert_eq!(invoices(None, Some("open"), None).await, ["i1", "i3", "i4"]);
    }
}
