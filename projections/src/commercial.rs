//! The commercial read model: customers, contracts, monthly usage and invoices, and from them
//! each organization's entitlements (features, quotas, limits, usage so far).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quantus_domain::commercial::contract::{
    ContractEvent, LicenseAction, LicenseStep, LicenseStepState, LineItem, PlannedLicense,
};
use quantus_domain::commercial::customer::CustomerEvent;
use quantus_domain::commercial::entitlement::Entitlements;
use quantus_domain::commercial::invoice::InvoiceEvent;
use quantus_domain::commercial::usage::{Period, UsageEvent};
use quantus_domain::envelope::rfc3339_micros;
use quantus_domain::events::EventEnum;
use quantus_infra::{InfraError, LogRecord};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool, Executor};

use crate::Projection;

pub struct CommercialView;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: String,
    pub name: String,
    pub billing_email: String,
    pub currency: String,
    #[sqlx(try_from = "i64")]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractRow {
    pub id: String,
    pub organization_id: String,
    pub customer_id: String,
    pub status: String,
    pub currency: String,
    pub starts_at: String,
    pub ends_at: String,
    pub line_items: Vec<LineItem>,
    pub amendments: i64,
    pub version: u64,
    pub updated_at: String,
    /// Each line item's latest licence step and how far it got (see
    /// `quantus_domain::commercial::contract::LicenseStep::view`).
    #[serde(default)]
    pub license_steps: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct InvoiceRow {
    pub id: String,
    pub organization_id: String,
    pub contract_id: String,
    pub period: String,
    pub currency: String,
    pub total: i64,
    pub status: String,
    pub provider: Option<String>,
    pub external_id: Option<String>,
    pub hosted_url: Option<String>,
    pub due_at: String,
    #[sqlx(try_from = "i64")]
    pub version: u64,
    pub updated_at: String,
}

/// An organization's entitlements with this month's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementsRow {
    pub organization_id: String,
    pub period: String,
    pub contracts: Vec<String>,
    pub entitlements: Entitlements,
    pub usage: BTreeMap<String, i64>,
}

fn corrupt(record: &LogRecord, e: impl std::fmt::Display) -> InfraError {
    InfraError::Corrupt(format!(
        "commercial: event at position {}: {e}",
        record.position
    ))
}

/// The history's kinds of this model (see [`crate::history`]).
const CONTRACTS: &str = "contracts";
const USAGE: &str = "usage";

/// One organization's use of one metric in one month, as the history keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
struct UsageRow {
    organization_id: String,
    period: String,
    metric: String,
    used: i64,
}

fn entitlements_of(
    organization_id: &str,
    period: String,
    contracts: &[ContractRow],
    usage: BTreeMap<String, i64>,
) -> EntitlementsRow {
    EntitlementsRow {
        organization_id: organization_id.to_owned(),
        period,
        contracts: contracts.iter().map(|c| c.id.clone()).collect(),
        entitlements: Entitlements::from_line_items(
            contracts.iter().flat_map(|c| c.line_items.iter()),
        ),
        usage,
    }
}

const CUSTOMER_SELECT: &str =
    "SELECT id, name, billing_email, currency, version FROM commercial_customers";
const CONTRACT_SELECT: &str = "SELECT id, organization_id, customer_id, status, currency, starts_at, ends_at, line_items, amendments, version, updated_at FROM commercial_contracts";
const INVOICE_SELECT: &str = "SELECT id, organization_id, contract_id, period, currency, total, status, provider, external_id, hosted_url, due_at, version, updated_at FROM commercial_invoices";

/// A `commercial_contracts` row as stored: its line items are JSON text, which sqlx's `Any`
/// driver does not decode, so [`ContractRow`] is made from it by parsing them.
#[derive(sqlx::FromRow)]
struct ContractColumns {
    id: String,
    organization_id: String,
    customer_id: String,
    status: String,
    currency: String,
    starts_at: String,
    ends_at: String,
    line_items: String,
    amendments: i64,
    #[sqlx(try_from = "i64")]
    version: u64,
    updated_at: String,
}

impl TryFrom<ContractColumns> for ContractRow {
    type Error = InfraError;

    fn try_from(c: ContractColumns) -> Result<Self, InfraError> {
        Ok(ContractRow {
            id: c.id,
            organization_id: c.organization_id,
            customer_id: c.customer_id,
            status: c.status,
            currency: c.currency,
            starts_at: c.starts_at,
            ends_at: c.ends_at,
            line_items: serde_json::from_str(&c.line_items).map_err(|e| {
                InfraError::Corrupt(format!("commercial_contracts.line_items: {e}"))
            })?,
            amendments: c.amendments,
            version: c.version,
            updated_at: c.updated_at,
            license_steps: BTreeMap::new(),
        })
    }
}

/// Contracts from rows of [`CONTRACT_SELECT`], without their licence steps ([`with_licenses`]).
fn contracts(columns: Vec<ContractColumns>) -> Result<Vec<ContractRow>, InfraError> {
    columns.into_iter().map(ContractRow::try_from).collect()
}

/// Fills in each contract's licence steps.
async fn with_licenses(
    conn: &mut AnyConnection,
    mut rows: Vec<ContractRow>,
) -> Result<Vec<ContractRow>, InfraError> {
    for row in &mut rows {
        let steps: Vec<(String, String)> = sqlx::query_as(
            "SELECT line_item_id, view FROM commercial_contract_licenses WHERE contract_id = $1 ORDER BY line_item_id",
        )
        .bind(row.id.clone())
        .fetch_all(&mut *conn)
        .await?;
        for (line_item_id, view) in steps {
            row.license_steps.insert(
                line_item_id,
                serde_json::from_str(&view).map_err(|e| {
                    InfraError::Corrupt(format!("commercial_contract_licenses.view: {e}"))
                })?,
            );
        }
    }
    Ok(rows)
}

fn action_name(action: LicenseAction) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl CommercialView {
    pub const NAME: &'static str = "commercial";
    /// The events `apply` changes the model on (the event index; checked in `consumes`).
    pub const CONSUMES: &'static [&'static str] = crate::consumes::consumed![
        CustomerEvent::CustomerRegistered,
        CustomerEvent::CustomerContactChanged,
        ContractEvent::ContractDrafted,
        ContractEvent::ContractRevised,
        ContractEvent::ContractSent,
        ContractEvent::ContractSigned,
        ContractEvent::ContractActivated,
        ContractEvent::ContractAmended,
        ContractEvent::ContractTerminated,
        ContractEvent::ContractExpired,
        ContractEvent::ContractLicenseFailed,
        ContractEvent::ContractLicensePending,
        ContractEvent::ContractLicenseCarriedOut,
        UsageEvent::UsageRecorded,
        InvoiceEvent::InvoiceIssued,
        InvoiceEvent::InvoiceSent,
        InvoiceEvent::InvoicePaid,
        InvoiceEvent::InvoicePaymentFailed,
        InvoiceEvent::InvoiceVoided,
    ];

    /// Customers by id (only organization `organization_id`'s, when given).
    pub async fn customers(
        pool: &AnyPool,
        organization_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerRow>, InfraError> {
        let sql = format!(
            "{CUSTOMER_SELECT} WHERE ($1 = '' OR id = $1) AND id > $2 ORDER BY id LIMIT $3"
        );
        crate::page(pool, &sql, &[organization_id.unwrap_or("")], after, limit).await
    }

    /// An organization's contracts (all of them with `organization_id` = None), by id; only
    /// those in `status` (`draft`, `sent`, ...) when it is given.
    pub async fn contracts(
        pool: &AnyPool,
        organization_id: Option<&str>,
        status: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ContractRow>, InfraError> {
        let sql = format!(
            "{CONTRACT_SELECT} WHERE ($1 = '' OR organization_id = $1) AND ($2 = '' OR status = $2) AND id > $3 ORDER BY id LIMIT $4"
        );
        let rows = crate::page(
            pool,
            &sql,
            &[organization_id.unwrap_or(""), status.unwrap_or("")],
            after,
            limit,
        )
        .await?;
        with_licenses(&mut *pool.acquire().await?, contracts(rows)?).await
    }

    pub async fn invoices(
        pool: &AnyPool,
        organization_id: Option<&str>,
        status: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InvoiceRow>, InfraError> {
        let sql = format!(
            "{INVOICE_SELECT} WHERE ($1 = '' OR organization_id = $1) AND ($2 = '' OR status = $2) AND id > $3 ORDER BY id LIMIT $4"
        );
        crate::page(
            pool,
            &sql,
            &[organization_id.unwrap_or(""), status.unwrap_or("")],
            after,
            limit,
        )
        .await
    }

    /// Contracts still marked in force whose term has ended at `at` (for the expiry sweep).
    pub async fn due_to_expire(
        pool: &AnyPool,
        at: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, InfraError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM commercial_contracts WHERE status IN ('active', 'amended') AND ends_at <= $1 ORDER BY id LIMIT $2",
        )
        .bind(rfc3339_micros::format(&at))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
    }

    /// The organization's entitlements at `at` and its usage in that month: one indexed read
    /// of its contracts in force and one of its usage.
    pub async fn entitlements(
        pool: &AnyPool,
        organization_id: &str,
        at: DateTime<Utc>,
    ) -> Result<EntitlementsRow, InfraError> {
        let now = rfc3339_micros::format(&at);
        let in_force = contracts(
            sqlx::query_as(&format!(
                "{CONTRACT_SELECT} WHERE organization_id = $1 AND status IN ('active', 'amended')
                 AND starts_at <= $2 AND ends_at > $2 ORDER BY id"
            ))
            .bind(organization_id)
            .bind(now)
            .fetch_all(pool)
            .await?,
        )?;
        let period = Period::of(at).to_string();
        let usage: Vec<(String, i64)> = sqlx::query_as(
            "SELECT metric, used FROM commercial_usage WHERE organization_id = $1 AND period = $2",
        )
        .bind(organization_id)
        .bind(period.clone())
        .fetch_all(pool)
        .await?;
        Ok(entitlements_of(
            organization_id,
            period,
            &in_force,
            usage.into_iter().collect(),
        ))
    }

    /// An organization's contracts as they stood at log position `at` (see [`crate::history`]).
    pub async fn contracts_as_of(
        pool: &AnyPool,
        organization_id: Option<&str>,
        status: Option<&str>,
        at: u64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ContractRow>, InfraError> {
        // Filtered after the read: a status is no column of the history.
        let mut rows: Vec<ContractRow> =
            crate::history::all_as_of(pool, CONTRACTS, organization_id, at).await?;
        rows.retain(|c| {
            status.is_none_or(|s| c.status == s) && after.is_none_or(|a| c.id.as_str() > a)
        });
        rows.truncate(limit as usize);
        Ok(rows)
    }

    /// The organization's entitlements as they stood at log position `position`, appended
    /// at `at`: its contracts then in force and its usage then in that month, from the history.
    pub async fn entitlements_as_of(
        pool: &AnyPool,
        organization_id: &str,
        position: u64,
        at: DateTime<Utc>,
    ) -> Result<EntitlementsRow, InfraError> {
        let now = rfc3339_micros::format(&at);
        let contracts: Vec<ContractRow> =
            crate::history::all_as_of(pool, CONTRACTS, Some(organization_id), position)
                .await?
                .into_iter()
                .filter(|c: &ContractRow| {
                    matches!(c.status.as_str(), "active" | "amended")
                        && c.starts_at <= now
                        && c.ends_at > now
                })
                .collect();
        let period = Period::of(at).to_string();
        let usage =
            crate::history::all_as_of::<UsageRow>(pool, USAGE, Some(organization_id), position)
                .await?
                .into_iter()
                .filter(|u| u.period == period)
                .map(|u| (u.metric, u.used))
                .collect();
        Ok(entitlements_of(organization_id, period, &contracts, usage))
    }

    /// A new licence plan: each step's line item now stands at that step, planned.
    async fn plan(
        conn: &mut AnyConnection,
        record: &LogRecord,
        plan: Vec<PlannedLicense>,
    ) -> Result<(), InfraError> {
        for step in plan {
            let view = LicenseStep {
                license_id: step.license_id.clone(),
                action: step.action,
                state: LicenseStepState::Planned,
            }
            .view()
            .to_string();
            sqlx::query("DELETE FROM commercial_contract_licenses WHERE contract_id = $1 AND line_item_id = $2")
                .bind(record.envelope.aggregate_id.clone())
                .bind(step.line_item_id.clone())
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO commercial_contract_licenses (contract_id, line_item_id, license_id, action, view) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(record.envelope.aggregate_id.clone())
            .bind(step.line_item_id)
            .bind(step.license_id)
            .bind(action_name(step.action))
            .bind(view)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// How far a line item's current step got (a report on a superseded step changes nothing).
    async fn license_state(
        conn: &mut AnyConnection,
        record: &LogRecord,
        line_item_id: String,
        step: LicenseStep,
    ) -> Result<(), InfraError> {
        sqlx::query(
            "UPDATE commercial_contract_licenses SET view = $1 WHERE contract_id = $2 AND line_item_id = $3 AND license_id = $4 AND action = $5",
        )
        .bind(step.view().to_string())
        .bind(record.envelope.aggregate_id.clone())
        .bind(line_item_id)
        .bind(step.license_id.clone())
        .bind(action_name(step.action))
        .execute(&mut *conn)
        .await?;
        Self::contract_update(conn, record, None).await
    }

    async fn contract_update(
        conn: &mut AnyConnection,
        record: &LogRecord,
        status: Option<&str>,
    ) -> Result<(), InfraError> {
        let e = &record.envelope;
        let updated = sqlx::query(
            "UPDATE commercial_contracts SET status = COALESCE($1, status), version = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(status.map(str::to_owned))
        .bind(e.sequence as i64)
        .bind(rfc3339_micros::format(&e.occurred_at))
        .bind(e.aggregate_id.clone())
        .execute(conn)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(corrupt(record, "a contract event before its draft"));
        }
        Ok(())
    }
}

#[async_trait]
impl Projection for CommercialView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        matches!(
            aggregate_type,
            CustomerEvent::AGGREGATE
                | ContractEvent::AGGREGATE
                | UsageEvent::AGGREGATE
                | InvoiceEvent::AGGREGATE
        )
    }

    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        for ddl in [
            "CREATE TABLE IF NOT EXISTS commercial_customers (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                billing_email TEXT NOT NULL,
                currency TEXT NOT NULL,
                version BIGINT NOT NULL
            )",
            "CREATE TABLE IF NOT EXISTS commercial_contracts (
                id TEXT PRIMARY KEY,
                organization_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                status TEXT NOT NULL,
                currency TEXT NOT NULL,
                starts_at TEXT NOT NULL,
                ends_at TEXT NOT NULL,
                line_items TEXT NOT NULL,
                amendments BIGINT NOT NULL,
                version BIGINT NOT NULL,
                updated_at TEXT NOT NULL
            )",
            "CREATE INDEX IF NOT EXISTS commercial_contracts_org ON commercial_contracts (organization_id, status)",
            "CREATE TABLE IF NOT EXISTS commercial_contract_licenses (
                contract_id TEXT NOT NULL,
                line_item_id TEXT NOT NULL,
                license_id TEXT NOT NULL,
                action TEXT NOT NULL,
                view TEXT NOT NULL,
                PRIMARY KEY (contract_id, line_item_id)
            )",
            "CREATE TABLE IF NOT EXISTS commercial_usage (
                organization_id TEXT NOT NULL,
                period TEXT NOT NULL,
                metric TEXT NOT NULL,
                used BIGINT NOT NULL,
                PRIMARY KEY (organization_id, period, metric)
            )",
            "CREATE TABLE IF NOT EXISTS commercial_invoices (
                id TEXT PRIMARY KEY,
                organization_id TEXT NOT NULL,
                contract_id TEXT NOT NULL,
                period TEXT NOT NULL,
                currency TEXT NOT NULL,
                total BIGINT NOT NULL,
                status TEXT NOT NULL,
                provider TEXT,
                external_id TEXT,
                hosted_url TEXT,
                due_at TEXT NOT NULL,
                version BIGINT NOT NULL,
                updated_at TEXT NOT NULL
            )",
            "CREATE INDEX IF NOT EXISTS commercial_invoices_org ON commercial_invoices (organization_id)",
        ] {
            conn.execute(ddl).await?;
        }
        Ok(())
    }

    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError> {
        for table in [
            "commercial_customers",
            "commercial_contracts",
            "commercial_contract_licenses",
            "commercial_usage",
            "commercial_invoices",
        ] {
            conn.execute(format!("DELETE FROM {table}").as_str())
                .await?;
        }
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError> {
        let e = &record.envelope;
        let at = rfc3339_micros::format(&e.occurred_at);
        let version = e.sequence as i64;
        let id = e.aggregate_id.clone();
        match e.aggregate_type.as_str() {
            CustomerEvent::AGGREGATE => match record.decode::<CustomerEvent>()? {
                CustomerEvent::CustomerRegistered(p) => {
                    sqlx::query("INSERT INTO commercial_customers (id, name, billing_email, currency, version) VALUES ($1, $2, $3, $4, $5)")
                        .bind(id).bind(p.name).bind(p.billing_email).bind(p.currency).bind(version)
                        .execute(conn).await?;
                }
                CustomerEvent::CustomerContactChanged(p) => {
                    sqlx::query("UPDATE commercial_customers SET name = $1, billing_email = $2, version = $3 WHERE id = $4")
                        .bind(p.name).bind(p.billing_email).bind(version).bind(id)
                        .execute(conn).await?;
                }
            },
            ContractEvent::AGGREGATE => match record.decode::<ContractEvent>()? {
                ContractEvent::ContractDrafted(p) => {
                    let items =
                        serde_json::to_string(&p.line_items).map_err(|x| corrupt(record, x))?;
                    sqlx::query(
                        "INSERT INTO commercial_contracts (id, organization_id, customer_id, status, currency, starts_at, ends_at, line_items, amendments, version, updated_at)
                         VALUES ($1, $2, $3, 'draft', $4, $5, $6, $7, 0, $8, $9)",
                    )
                    .bind(id)
                    .bind(p.organization_id)
                    .bind(p.customer_id)
                    .bind(p.currency)
                    .bind(rfc3339_micros::format(&p.starts_at))
                    .bind(rfc3339_micros::format(&p.ends_at))
                    .bind(items)
                    .bind(version)
                    .bind(at)
                    .execute(conn)
                    .await?;
                }
                ContractEvent::ContractRevised(p) => {
                    let items =
                        serde_json::to_string(&p.line_items).map_err(|x| corrupt(record, x))?;
                    sqlx::query("UPDATE commercial_contracts SET line_items = $1, starts_at = $2, ends_at = $3 WHERE id = $4")
                        .bind(items)
                        .bind(rfc3339_micros::format(&p.starts_at))
                        .bind(rfc3339_micros::format(&p.ends_at))
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                    Self::contract_update(conn, record, None).await?;
                }
                ContractEvent::ContractAmended(p) => {
                    let items =
                        serde_json::to_string(&p.line_items).map_err(|x| corrupt(record, x))?;
                    sqlx::query("UPDATE commercial_contracts SET line_items = $1, ends_at = $2, amendments = $3 WHERE id = $4")
                        .bind(items)
                        .bind(rfc3339_micros::format(&p.ends_at))
                        .bind(i64::from(p.amendment))
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                    Self::plan(&mut *conn, record, p.licenses).await?;
                    Self::contract_update(conn, record, Some("amended")).await?;
                }
                ContractEvent::ContractSent(_) => {
                    Self::contract_update(conn, record, Some("sent")).await?
                }
                ContractEvent::ContractSigned(_) => {
                    Self::contract_update(conn, record, Some("signed")).await?
                }
                ContractEvent::ContractActivated(p) => {
                    Self::plan(&mut *conn, record, p.licenses).await?;
                    Self::contract_update(conn, record, Some("active")).await?
                }
                ContractEvent::ContractTerminated(p) => {
                    Self::plan(&mut *conn, record, p.licenses).await?;
                    Self::contract_update(conn, record, Some("terminated")).await?
                }
                ContractEvent::ContractExpired(_) => {
                    Self::contract_update(conn, record, Some("expired")).await?
                }
                ContractEvent::ContractLicenseFailed(p) => {
                    let step = LicenseStep {
                        license_id: p.license_id,
                        action: p.action,
                        state: LicenseStepState::Failed { reason: p.reason },
                    };
                    Self::license_state(conn, record, p.line_item_id, step).await?
                }
                ContractEvent::ContractLicensePending(p) => {
                    let step = LicenseStep {
                        license_id: p.license_id,
                        action: p.action,
                        state: LicenseStepState::Pending {
                            hold: p.hold,
                            reason: p.reason,
                            attempt: p.attempt,
                            retry_at: p.retry_at,
                        },
                    };
                    Self::license_state(conn, record, p.line_item_id, step).await?
                }
                ContractEvent::ContractLicenseCarriedOut(p) => {
                    let step = LicenseStep {
                        license_id: p.license_id,
                        action: p.action,
                        state: LicenseStepState::Done,
                    };
                    Self::license_state(conn, record, p.line_item_id, step).await?
                }
            },
            UsageEvent::AGGREGATE => match record.decode::<UsageEvent>()? {
                UsageEvent::UsageRecorded(p) => {
                    sqlx::query(
                        "INSERT INTO commercial_usage (organization_id, period, metric, used) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (organization_id, period, metric) DO UPDATE SET used = commercial_usage.used + excluded.used",
                    )
                    .bind(p.organization_id)
                    .bind(p.period)
                    .bind(p.metric)
                    .bind(p.amount)
                    .execute(conn)
                    .await?;
                }
                UsageEvent::QuotaExceeded(_) => {}
            },
            // An invoice's event, or an event of an aggregate this model does not handle
            // (which the decoding refuses).
            _ => {
                let status = match record.decode::<InvoiceEvent>()? {
                    InvoiceEvent::InvoiceIssued(p) => {
                        sqlx::query(
                            "INSERT INTO commercial_invoices (id, organization_id, contract_id, period, currency, total, status, due_at, version, updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, 'issued', $7, $8, $9)",
                        )
                        .bind(id)
                        .bind(p.organization_id)
                        .bind(p.contract_id)
                        .bind(p.period)
                        .bind(p.currency)
                        .bind(p.total)
                        .bind(rfc3339_micros::format(&p.due_at))
                        .bind(version)
                        .bind(at)
                        .execute(conn)
                        .await?;
                        return Ok(());
                    }
                    InvoiceEvent::InvoiceSent(p) => {
                        sqlx::query("UPDATE commercial_invoices SET status = 'open', provider = $1, external_id = $2, hosted_url = $3, version = $4, updated_at = $5 WHERE id = $6")
                            .bind(p.provider).bind(p.external_id).bind(p.hosted_url).bind(version).bind(at).bind(id)
                            .execute(conn).await?;
                        return Ok(());
                    }
                    InvoiceEvent::InvoicePaid(_) => Some("paid"),
                    InvoiceEvent::InvoiceVoided(_) => Some("void"),
                    InvoiceEvent::InvoicePaymentFailed(_) => None,
                };
                sqlx::query("UPDATE commercial_invoices SET status = COALESCE($1, status), version = $2, updated_at = $3 WHERE id = $4")
                    .bind(status.map(str::to_owned)).bind(version).bind(at).bind(id)
                    .execute(conn).await?;
            }
        }
        Ok(())
    }

    async fn versions(
        &self,
        conn: &mut AnyConnection,
        record: &LogRecord,
    ) -> Result<Vec<crate::history::Version>, InfraError> {
        let e = &record.envelope;
        match e.aggregate_type.as_str() {
            ContractEvent::AGGREGATE => {
                let rows = sqlx::query_as(&format!("{CONTRACT_SELECT} WHERE id = $1"))
                    .bind(e.aggregate_id.clone())
                    .fetch_all(&mut *conn)
                    .await?;
                Ok(with_licenses(conn, contracts(rows)?)
                    .await?
                    .into_iter()
                    .map(|c| crate::history::Version {
                        kind: CONTRACTS,
                        row_id: c.id.clone(),
                        organization_id: c.organization_id.clone(),
                        doc: Some(serde_json::to_value(c).unwrap_or_default()),
                    })
                    .collect())
            }
            UsageEvent::AGGREGATE => match record.decode::<UsageEvent>()? {
                UsageEvent::UsageRecorded(p) => {
                    let used: i64 = sqlx::query_scalar(
                        "SELECT used FROM commercial_usage WHERE organization_id = $1 AND period = $2 AND metric = $3",
                    )
                    .bind(p.organization_id.clone())
                    .bind(p.period.clone())
                    .bind(p.metric.clone())
                    .fetch_one(&mut *conn)
                    .await?;
                    let row = UsageRow {
                        organization_id: p.organization_id,
                        period: p.period,
                        metric: p.metric,
                        used,
                    };
                    Ok(vec![crate::history::Version {
                        kind: USAGE,
                        row_id: format!("{}/{}/{}", row.organization_id, row.period, row.metric),
                        organization_id: row.organization_id.clone(),
                        doc: Some(serde_json::to_value(row).unwrap_or_default()),
                    }])
                }
                UsageEvent::QuotaExceeded(_) => Ok(Vec::new()),
            },
            // Customers and invoices keep no history.
            _ => Ok(Vec::new()),
        }
    }

    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError> {
        let mut out = vec![];
        let customers: Vec<CustomerRow> = sqlx::query_as(&format!("{CUSTOMER_SELECT} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
        for c in customers {
            out.push(serde_json::json!({
                "customer": c.id,
                "name": c.name,
                "billing_email": c.billing_email,
                "currency": c.currency,
                "version": c.version,
            }));
        }
        let rows = sqlx::query_as(&format!("{CONTRACT_SELECT} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
        for row in with_licenses(conn, contracts(rows)?).await? {
            out.push(serde_json::to_value(row).unwrap_or_default());
        }
        let usage: Vec<UsageRow> = sqlx::query_as("SELECT organization_id, period, metric, used FROM commercial_usage ORDER BY organization_id, period, metric")
            .fetch_all(&mut *conn)
            .await?;
        for u in usage {
            out.push(serde_json::json!({
                "usage": u.organization_id,
                "period": u.period,
                "metric": u.metric,
                "used": u.used,
            }));
        }
        let invoices: Vec<InvoiceRow> = sqlx::query_as(&format!("{INVOICE_SELECT} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
        for i in invoices {
            out.push(serde_json::to_value(i).unwrap_or_default());
        }
        Ok(out)
    }
}
