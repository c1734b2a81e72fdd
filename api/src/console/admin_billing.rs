//! The Admin console's billing pages: invoices across customers (filtered by customer and
//! status, paged), one printable invoice with its actions (send to the billing provider,
//! mark paid, void; each after a confirmation page), and what the billing runs produced.
//! Billing runs are scheduled by the server (at start and hourly, `spawn_billing_run`); the
//! API offers no call to start one, so the runs page shows their outcome per month from
//! `GET /v1/invoices` and says so. Every page is `/v1` calls with the operator's token.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::admin::{customer_names, operator, Admin, Operator, INFO, PAGE};
use super::api::{query, segment, Page};
use super::portal::{invoice_line, invoice_lines, short, InvoiceDetail, InvoiceLineRow};
use super::portal::{InvoiceLineView, InvoiceRow};
use super::session::{redirect, Posted};
use super::{money, pager, render, Layout, Pager};
use super::{PageError, SignedIn};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/billing", get(invoices))
        .route("/admin/billing/runs", get(runs))
        .route("/admin/invoices/{id}", get(invoice))
        .route(
            "/admin/invoices/{id}/{action}",
            get(confirm_action).post(action),
        )
}

/// The statuses an invoice is listed by (those `GET /v1/invoices?status=` takes).
const STATUSES: [&str; 4] = ["issued", "open", "paid", "void"];

/// The navigation entry of every billing page.
const NAV: &str = "/billing";

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    /// The customer (organization id).
    org: Option<String>,
    status: Option<String>,
    after: Option<String>,
}

struct InvoiceListLine {
    invoice: InvoiceLineView,
    organization_id: String,
    customer: String,
}

#[derive(Template)]
#[template(path = "admin/invoices.html")]
struct InvoicesPage {
    layout: Layout,
    invoices: Vec<InvoiceListLine>,
    /// Every customer (id, name), by name, for the filter.
    customers: Vec<(String, String)>,
    customer: String,
    statuses: &'static [&'static str],
    status: String,
    pager: Pager,
}

async fn invoices(me: SignedIn<Admin>, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let op = operator(me)?;
    // An empty choice of the form is "any"; an unknown status is the API's 400.
    let org = match p.org.as_deref().filter(|o| !o.is_empty()) {
        Some(o) => Some(segment(&INFO, o)?.to_owned()),
        None => None,
    };
    let status = p.status.filter(|s| !s.is_empty());
    let filter = [("org", org.as_deref()), ("status", status.as_deref())];
    let page: Page<InvoiceRow> =
        op.0.api()
            .get(&format!(
                "/invoices{}",
                query(&[
                    filter[0],
                    filter[1],
                    ("limit", Some(PAGE)),
                    ("after", p.after.as_deref()),
                ])
            ))
            .await?;
    let path = format!("/admin/billing{}", query(&filter));
    let names = customer_names(&op).await?;
    let mut customers: Vec<(String, String)> = names.clone().into_iter().collect();
    customers.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(render(&InvoicesPage {
        layout: op.0.layout("Invoices", NAV),
        invoices: page
            .items
            .iter()
            .map(|i| InvoiceListLine {
                invoice: invoice_line(i),
                organization_id: i.organization_id.clone(),
                customer: names
                    .get(&i.organization_id)
                    .cloned()
                    .unwrap_or_else(|| i.organization_id.clone()),
            })
            .collect(),
        customers,
        customer: org.unwrap_or_default(),
        statuses: &STATUSES,
        status: status.unwrap_or_default(),
        pager: pager(&path, page.next_after, &p.after),
    }))
}

// ---- one invoice ----

#[derive(Debug, Deserialize)]
struct CustomerName {
    name: String,
}

/// An invoice and its customer's name (the organization id when it is no customer).
async fn load_invoice(op: &Operator, id: &str) -> Result<(InvoiceDetail, String), PageError> {
    let api = op.0.api();
    let i: InvoiceDetail = api.get(&format!("/invoices/{id}")).await?;
    let org = i.organization_id.clone().unwrap_or_default();
    let name = match segment(&INFO, &org) {
        Ok(org) => api
            .find::<CustomerName>(&format!("/customers/{org}"))
            .await?
            .map(|c| c.name),
        Err(_) => None,
    };
    Ok((i, name.unwrap_or(org)))
}

/// What an invoice action does, as its confirmation page explains it.
struct InvoiceAction {
    name: &'static str,
    title: &'static str,
    explain: &'static str,
    button: &'static str,
    /// The form asks for this (the API's field), with this label.
    field: Option<(&'static str, &'static str)>,
    /// The statuses it applies to (the page offers it only then; the API decides).
    from: &'static [&'static str],
    done: &'static str,
}

const ACTIONS: [InvoiceAction; 3] = [
    InvoiceAction {
        name: "send",
        title: "Send this invoice?",
        explain: "The invoice is handed to the billing provider, which presents it to the customer for payment; it is then open.",
        button: "Send invoice",
        field: None,
        from: &["issued"],
        done: "The invoice was sent to the billing provider.",
    },
    InvoiceAction {
        name: "pay",
        title: "Mark this invoice paid?",
        explain: "Records a payment received outside the billing provider (a bank transfer, say) under its reference.",
        button: "Mark paid",
        field: Some(("reference", "Payment reference")),
        from: &["issued", "open"],
        done: "The invoice was marked paid.",
    },
    InvoiceAction {
        name: "void",
        title: "Void this invoice?",
        explain: "A void invoice is owed no more; this cannot be undone.",
        button: "Void invoice",
        field: Some(("reason", "Reason (recorded in the event log)")),
        from: &["issued", "open"],
        done: "The invoice was voided.",
    },
];

fn action_of(name: &str) -> Result<&'static InvoiceAction, PageError> {
    ACTIONS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| PageError::not_found(&INFO, format!("no invoice action {name:?}")))
}

#[derive(Debug, Default, Deserialize)]
struct InvoiceParams {
    done: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/invoice.html")]
struct InvoicePage {
    layout: Layout,
    i: InvoiceDetail,
    organization: String,
    customer_href: Option<String>,
    contracts: &'static str,
    lines: Vec<InvoiceLineRow>,
    /// The actions its status allows.
    actions: Vec<&'static InvoiceAction>,
}

async fn invoice(
    me: SignedIn<Admin>,
    Path(id): Path<String>,
    Query(p): Query<InvoiceParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let id = segment(&INFO, &id)?;
    let (i, organization) = load_invoice(&op, id).await?;
    let mut layout = op.0.layout(format!("Invoice {}", short(&i.id)), NAV);
    layout.notice = p
        .done
        .as_deref()
        .and_then(|d| ACTIONS.iter().find(|a| a.name == d))
        .map(|a| a.done.to_owned());
    Ok(render(&InvoicePage {
        layout,
        customer_href: i
            .organization_id
            .as_ref()
            .map(|o| format!("/admin/customers/{o}")),
        contracts: "/admin/contracts",
        lines: invoice_lines(&i),
        actions: ACTIONS
            .iter()
            .filter(|a| a.from.contains(&i.status.as_str()))
            .collect(),
        organization,
        i,
    }))
}

#[derive(Template)]
#[template(path = "admin/invoice_action.html")]
struct InvoiceActionPage {
    layout: Layout,
    i: InvoiceDetail,
    customer: String,
    action: &'static InvoiceAction,
    csrf: String,
}

async fn confirm_action(
    me: SignedIn<Admin>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let id = segment(&INFO, &id)?;
    let action = action_of(&action)?;
    let (i, customer) = load_invoice(&op, id).await?;
    Ok(render(&InvoiceActionPage {
        layout: op.0.layout(action.title, NAV),
        csrf: op.0.session.csrf.clone(),
        i,
        customer,
        action,
    }))
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    reference: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: Option<String>,
}

async fn action(
    Path((id, action)): Path<(String, String)>,
    posted: Posted<Admin, ActionForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let id = segment(&INFO, &id)?;
    let action = action_of(&action)?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(PageError::new(
            &INFO,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing changed",
            "tick the box to confirm, then send the form again",
        ));
    }
    // The API checks the values (a reference of 1 to 200 characters, a reason).
    let body = match action.field {
        Some(("reference", _)) => serde_json::json!({ "reference": form.reference.trim() }),
        Some(_) => serde_json::json!({ "reason": form.reason.trim() }),
        None => serde_json::json!({}),
    };
    op.0.api()
        .post(&format!("/invoices/{id}/{}", action.name), &body)
        .await?;
    Ok(redirect(&format!(
        "/admin/invoices/{id}?done={}",
        action.name
    )))
}

// ---- billing runs ----

/// At most this many invoices are read for the runs page (200 a call); beyond, it says so.
const RUNS_READ_LIMIT: usize = 10_000;

/// What the billing runs (and invoices issued by hand) produced for one month.
#[derive(Default)]
struct RunLine {
    period: String,
    invoices: usize,
    /// Status -> how many.
    by_status: BTreeMap<String, usize>,
    /// Currency -> total in minor units of the invoices not void.
    totals: BTreeMap<String, i64>,
}

impl RunLine {
    fn count(&self, status: &str) -> usize {
        self.by_status.get(status).copied().unwrap_or(0)
    }

    fn totals(&self) -> String {
        self.totals
            .iter()
            .map(|(currency, total)| money(currency, *total))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Template)]
#[template(path = "admin/billing_runs.html")]
struct RunsPage {
    layout: Layout,
    runs: Vec<RunLine>,
    statuses: &'static [&'static str],
    /// More invoices exist than were read.
    capped: bool,
}

/// Per month, newest first.
fn runs_of(invoices: &[InvoiceRow]) -> Vec<RunLine> {
    let mut by_period: BTreeMap<&str, RunLine> = BTreeMap::new();
    for i in invoices {
        let run = by_period
            .entry(i.period.as_str())
            .or_insert_with(|| RunLine {
                period: i.period.clone(),
                ..Default::default()
            });
        run.invoices += 1;
        let status = i.status.to_lowercase();
        // A void invoice is owed no more: not in the month's total.
        if status != "void" {
            let total = run.totals.entry(i.currency.clone()).or_default();
            *total = total.saturating_add(i.total);
        }
        *run.by_status.entry(status).or_default() += 1;
    }
    by_period.into_values().rev().collect()
}

async fn runs(me: SignedIn<Admin>) -> Result<Response, PageError> {
    let op = operator(me)?;
    let api = op.0.api();
    let mut invoices: Vec<InvoiceRow> = vec![];
    let mut after: Option<String> = None;
    let capped = loop {
        let page: Page<InvoiceRow> = api
            .get(&format!(
                "/invoices{}",
                query(&[("limit", Some("200")), ("after", after.as_deref())])
            ))
            .await?;
        invoices.extend(page.items);
        match page.next_after {
            Some(_) if invoices.len() >= RUNS_READ_LIMIT => break true,
            Some(n) => after = Some(n),
            None => break false,
        }
    };
    Ok(render(&RunsPage {
        layout: op.0.layout("Billing runs", NAV),
        runs: runs_of(&invoices),
        statuses: &STATUSES,
        capped,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, period: &str, status: &str, currency: &str, total: i64) -> InvoiceRow {
        serde_json::from_value(serde_json::json!({
            "id": id, "organization_id": "o", "period": period, "currency": currency,
            "total": total, "status": status, "due_at": "2026-12-15T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn runs_are_months_newest_first_with_totals_per_currency() {
        let runs = runs_of(&[
            row("a", "2026-10", "paid", "EUR", 150_000),
            row("b", "2026-11", "issued", "EUR", 150_000),
            row("c", "2026-11", "void", "USD", 2_500),
            row("d", "2026-11", "issued", "EUR", 99),
            row("e", "2026-10", "open", "USD", 2_500),
        ]);
        assert_eq!(
            runs.iter().map(|r| r.period.as_str()).collect::<Vec<_>>(),
            ["2026-11", "2026-10"]
        );
        assert_eq!(runs[0].invoices, 3);
        assert_eq!((runs[0].count("issued"), runs[0].count("void")), (2, 1));
        assert_eq!(runs[0].totals(), "1500.99 EUR");
        assert_eq!(runs[1].count("paid"), 1);
        assert_eq!(runs[1].totals(), "1500.00 EUR, 25.00 USD");
    }
}
