//! Time travel: the versioned read models' history, system-versioned in log positions.
//!
//! After a model applies an event, the runner records the rows the event left behind
//! ([`crate::Projection::versions`]): the row's previous version gets `valid_to` = this
//! position, the new one `valid_from` = this position (a removed row gets no new version).
//! "As of position p" is then one indexed query: the versions with
//! `valid_from <= p < valid_to` (or still current). A rebuild clears the model's history with
//! its rows and writes it again from the log. Versions of one row come from one aggregate, so
//! they arrive in position order from Kafka too.

use quantus_infra::InfraError;
use sqlx::{AnyConnection, AnyPool};

/// One row of a versioned model as an event left it.
#[derive(Debug, Clone)]
pub struct Version {
    /// Which rows (`users`, `groups`, `licenses`, `contracts`, `usage`): the history's key
    /// with `row_id`.
    pub kind: &'static str,
    pub row_id: String,
    /// The tenant an as-of query is answered for.
    pub organization_id: String,
    /// The row as the current-state query serves it; `None`: the event removed it.
    pub doc: Option<serde_json::Value>,
}

/// One stored version of a row, as [`rewrite`] reads it.
#[derive(sqlx::FromRow)]
struct StoredVersion {
    valid_from: i64,
    doc: String,
}

fn position(p: u64) -> Result<i64, InfraError> {
    i64::try_from(p).map_err(|_| InfraError::Corrupt(format!("position {p} out of range")))
}

/// Closes each row's current version at `at` and opens the new one there.
pub async fn record(
    conn: &mut AnyConnection,
    projection: &str,
    at: u64,
    versions: &[Version],
) -> Result<(), InfraError> {
    let at = position(at)?;
    for v in versions {
        // The row's latest version, found by the key (a row may have thousands).
        sqlx::query(
            "UPDATE read_model_history SET valid_to = $1 WHERE kind = $2 AND row_id = $3 AND valid_to IS NULL
             AND valid_from = (SELECT MAX(valid_from) FROM read_model_history WHERE kind = $2 AND row_id = $3)",
        )
        .bind(at)
        .bind(v.kind)
        .bind(v.row_id.clone())
        .execute(&mut *conn)
        .await?;
        if let Some(doc) = &v.doc {
            sqlx::query(
                "INSERT INTO read_model_history_rows (projection, kind, row_id, organization_id, first_from)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, row_id) DO NOTHING",
            )
            .bind(projection.to_owned())
            .bind(v.kind)
            .bind(v.row_id.clone())
            .bind(v.organization_id.clone())
            .bind(at)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO read_model_history (projection, kind, row_id, organization_id, valid_from, valid_to, doc)
                 VALUES ($1, $2, $3, $4, $5, NULL, $6)",
            )
            .bind(projection.to_owned())
            .bind(v.kind)
            .bind(v.row_id.clone())
            .bind(v.organization_id.clone())
            .bind(at)
            .bind(doc.to_string())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Rewrites every version of one row (erasure: personal data must not come back through
/// an old version).
pub async fn rewrite(
    conn: &mut AnyConnection,
    kind: &'static str,
    row_id: &str,
    change: impl Fn(&mut serde_json::Value),
) -> Result<(), InfraError> {
    let rows: Vec<StoredVersion> = sqlx::query_as(
        "SELECT valid_from, doc FROM read_model_history WHERE kind = $1 AND row_id = $2",
    )
    .bind(kind)
    .bind(row_id.to_owned())
    .fetch_all(&mut *conn)
    .await?;
    for StoredVersion { valid_from, doc } in rows {
        let mut doc = parse(kind, &doc)?;
        change(&mut doc);
        sqlx::query(
            "UPDATE read_model_history SET doc = $1 WHERE kind = $2 AND row_id = $3 AND valid_from = $4",
        )
        .bind(doc.to_string())
        .bind(kind)
        .bind(row_id.to_owned())
        .bind(valid_from)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn parse(kind: &str, doc: &str) -> Result<serde_json::Value, InfraError> {
    serde_json::from_str(doc)
        .map_err(|e| InfraError::Corrupt(format!("read_model_history {kind}: {e}")))
}

/// The rows of `kind` that held at log position `at` (every organization's with
/// `organization_id` = None), by row id, after `after`, at most `limit`.
pub async fn as_of(
    pool: &AnyPool,
    kind: &'static str,
    organization_id: Option<&str>,
    at: u64,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<serde_json::Value>, InfraError> {
    let at = position(at)?;
    // Each row that ever existed, in id order, and its latest version at `at` by the key: a
    // page costs one seek per row, whatever the length of each row's history (a scan of the
    // versions with `valid_from <= at` grows with the whole history before `at`).
    let docs: Vec<String> = sqlx::query_scalar(
        "SELECT h.doc FROM read_model_history_rows r JOIN read_model_history h
           ON h.kind = r.kind AND h.row_id = r.row_id
          AND h.valid_from = (SELECT MAX(x.valid_from) FROM read_model_history x
                              WHERE x.kind = r.kind AND x.row_id = r.row_id AND x.valid_from <= $3)
         WHERE r.kind = $1 AND ($2 = '' OR r.organization_id = $2) AND r.first_from <= $3
           AND r.row_id > $4 AND (h.valid_to IS NULL OR h.valid_to > $3)
         ORDER BY r.row_id LIMIT $5",
    )
    .bind(kind)
    .bind(organization_id.unwrap_or("").to_owned())
    .bind(at)
    .bind(after.unwrap_or("").to_owned())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    docs.iter().map(|doc| parse(kind, doc)).collect()
}

/// Every row of `kind` at `at` (an organization's, or every one's), typed.
pub async fn all_as_of<T: serde::de::DeserializeOwned>(
    pool: &AnyPool,
    kind: &'static str,
    organization_id: Option<&str>,
    at: u64,
) -> Result<Vec<T>, InfraError> {
    as_of(pool, kind, organization_id, at, None, u32::MAX)
        .await?
        .into_iter()
        .map(|d| {
            serde_json::from_value(d)
                .map_err(|e| InfraError::Corrupt(format!("read_model_history {kind}: {e}")))
        })
        .collect()
}
