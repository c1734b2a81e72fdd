//! The customer Portal: an organization's people see their contracts (and sign a sent one),
//! usage against quotas, licences (with the files to verify them offline) and invoices, and
//! the organization's API clients and service principals (those whose roles hold
//! `identity:write`). Every page is a few `/v1` calls with the person's token.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use quantus_domain::commercial::contract::LineItem;
use serde::Deserialize;

use super::api::{query, segment, Page};
use super::session::{redirect, Posted};
use super::{day, money, pager, render, Console, ConsoleInfo, Layout, Pager};
use super::{PageError, SignedIn, PORTAL_CLIENT_ID};
use crate::AppState;

/// The Portal console.
pub struct Portal;

static INFO: ConsoleInfo = ConsoleInfo {
    name: "Customer Portal",
    base: "/portal",
    nav: &[
        ("/", "Overview", "organizations:read"),
        ("/contracts", "Contracts", "contracts:read"),
        ("/usage", "Usage", "entitlements:read"),
        ("/licenses", "Licences", "licenses:read"),
        ("/jobs", "Jobs", "jobs:read"),
        ("/evidence", "Evidence", "evidence:read"),
        ("/invoices", "Invoices", "billing:read"),
        ("/clients", "API clients", "identity:write"),
    ],
};

impl Console for Portal {
    fn info() -> &'static ConsoleInfo {
        &INFO
    }
    const CLIENT_ID: &'static str = PORTAL_CLIENT_ID;
    // `identity:*` for the API clients page: a token gets them only where the person's roles
    // do (owners and admins), so members' Portal sessions cannot manage clients. The same for
    // `evidence:write` (owners, admins, members; not auditors or billing).
    const SCOPES: &'static str = "openid profile email organizations:read contracts:read contracts:sign entitlements:read licenses:read jobs:read evidence:read evidence:write billing:read identity:read identity:write";
    fn pages() -> Router<AppState> {
        routes()
    }
}

type Me = SignedIn<Portal>;

/// Rows per list page.
const PAGE: &str = "20";

fn routes() -> Router<AppState> {
    Router::new()
        .route("/portal", get(|| async { redirect("/portal/") }))
        .route("/portal/", get(overview))
        .route("/portal/contracts", get(contracts))
        .route("/portal/contracts/{id}", get(contract))
        .route("/portal/contracts/{id}/sign", post(sign))
        .route("/portal/usage", get(usage))
        .route("/portal/licenses", get(licenses))
        .route("/portal/licenses/{id}", get(license))
        .route("/portal/licenses/{id}/file", get(license_file))
        .route("/portal/keys.json", get(keys_file))
        .route("/portal/crl.json", get(crl_file))
        .route("/portal/jobs", get(jobs))
        .route("/portal/jobs/{id}", get(job))
        .route("/portal/jobs/{id}/artifacts/{name}", get(artifact))
        .route("/portal/jobs/{id}/evidence", post(create_bundle))
        .route("/portal/evidence", get(evidence))
        .route("/portal/evidence/{id}", get(bundle))
        .route("/portal/evidence/{id}/bundle.tar", get(bundle_file))
        .route("/portal/invoices", get(invoices))
        .route("/portal/invoices/{id}", get(invoice))
        .route("/portal/clients", get(clients).post(create_client))
        .route("/portal/clients/{id}/secret", post(rotate_secret))
        .route("/portal/{*rest}", get(not_found))
}

async fn not_found(_me: Me) -> PageError {
    PageError::not_found(&INFO, "there is no such page in the Portal")
}

// ---- API clients and service principals (the QSA console's, for the organization) ----

use super::qsa::{register_application, ClientForm, ClientRow, SecretPage, ROLES};

#[derive(Template)]
#[template(path = "portal/clients.html")]
struct ClientsPage {
    layout: Layout,
    clients: Vec<ClientRow>,
    pager: Pager,
    roles: &'static [&'static str],
    csrf: String,
}

async fn clients(me: Me, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let org = segment(&INFO, &me.session.organization)?;
    // People without `identity:read` get the API's 403 page here, as from any other list.
    let page: Page<ClientRow> = me
        .api()
        .get(&format!(
            "/clients{}",
            query(&[
                ("org", Some(org)),
                ("limit", Some(PAGE)),
                ("after", p.after.as_deref())
            ])
        ))
        .await?;
    Ok(render(&ClientsPage {
        layout: me.layout("API clients", "/clients"),
        clients: page.items,
        pager: pager("/portal/clients", page.next_after, &p.after),
        roles: &ROLES,
        csrf: me.session.csrf.clone(),
    }))
}

async fn create_client(posted: Posted<Portal, ClientForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let org = segment(&INFO, &me.session.organization)?.to_owned();
    let created = register_application(&me.api(), &INFO, &org, &form).await?;
    let id = segment(&INFO, created["client_id"].as_str().unwrap_or_default())?.to_owned();
    Ok(render(&SecretPage {
        layout: me.layout("API client created", "/clients"),
        what: "The API client was registered.".into(),
        id_label: "Client id",
        secret_label: "Client secret",
        secret: created["client_secret"].as_str().map(str::to_owned),
        next: ("/portal/clients".into(), "Back to the API clients"),
        extra: None,
        id,
    }))
}

#[derive(Debug, Deserialize)]
struct NoFields {}

async fn rotate_secret(
    Path(id): Path<String>,
    posted: Posted<Portal, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let id = segment(&INFO, &id)?.to_owned();
    let rotated = me
        .api()
        .post(&format!("/clients/{id}/secret"), &serde_json::json!({}))
        .await?;
    Ok(render(&SecretPage {
        layout: me.layout("New secret", "/clients"),
        what: "A new secret was made; the previous one no longer works.".into(),
        id_label: "Client id",
        secret_label: "Client secret",
        secret: rotated["client_secret"].as_str().map(str::to_owned),
        next: ("/portal/clients".into(), "Back to the API clients"),
        extra: None,
        id,
    }))
}

// ---- what the API answers (the fields the pages show) ----

#[derive(Debug, Deserialize)]
struct Organization {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Customer {
    name: String,
    billing_email: String,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct ContractRow {
    id: String,
    status: String,
    currency: String,
    starts_at: String,
    ends_at: String,
    line_items: Vec<LineItem>,
}

#[derive(Debug, Deserialize)]
struct ContractDetail {
    id: String,
    status: String,
    currency: String,
    line_items: Vec<LineItem>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    signed_by: Option<String>,
    amendments: u32,
    terminated_at: Option<String>,
    /// Line item id -> its current licence.
    licenses: BTreeMap<String, String>,
    monthly_price_display: String,
}

#[derive(Debug, Deserialize)]
struct QuotaUse {
    amount: i64,
    enforcement: String,
    used: i64,
    remaining: i64,
}

#[derive(Debug, Deserialize)]
struct Entitlements {
    period: String,
    contracts: Vec<String>,
    features: Vec<String>,
    quotas: BTreeMap<String, QuotaUse>,
    limits: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize)]
struct LicenseRow {
    id: String,
    product: String,
    edition: String,
    status: String,
    expires_at: String,
    activations: i64,
}

#[derive(Debug, Deserialize)]
struct LicenseTerms {
    product: String,
    edition: String,
    features: Vec<String>,
    limits: BTreeMap<String, i64>,
    not_before: String,
    expires_at: String,
    max_activations: u32,
}

#[derive(Debug, Deserialize)]
struct LicenseDetail {
    id: String,
    status: String,
    terms: Option<LicenseTerms>,
    activations: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct LicenseStanding {
    standing: String,
    usable_until: Option<String>,
}

// The invoice types and the printable invoice are shared with the Admin console's billing
// pages (`admin_billing`): one way to show an invoice.

#[derive(Debug, Deserialize)]
pub(super) struct InvoiceRow {
    pub(super) id: String,
    pub(super) organization_id: String,
    pub(super) period: String,
    pub(super) currency: String,
    pub(super) total: i64,
    pub(super) status: String,
    pub(super) due_at: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct InvoiceLine {
    description: String,
    quantity: i64,
    unit_amount: i64,
    amount: i64,
}

#[derive(Debug, Deserialize)]
pub(super) struct Paid {
    pub(super) paid_at: String,
    pub(super) reference: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct InvoiceDetail {
    pub(super) id: String,
    pub(super) status: String,
    pub(super) organization_id: Option<String>,
    pub(super) contract_id: Option<String>,
    pub(super) period: Option<String>,
    pub(super) currency: String,
    pub(super) lines: Option<Vec<InvoiceLine>>,
    pub(super) total_display: Option<String>,
    pub(super) due_at: Option<String>,
    pub(super) provider: Option<String>,
    pub(super) hosted_url: Option<String>,
    pub(super) paid: Option<Paid>,
}

// ---- what the pages show ----

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    after: Option<String>,
    /// A status message after an action.
    done: Option<String>,
}

struct ContractLine {
    id: String,
    status: String,
    term: String,
    products: String,
    monthly: String,
}

fn contract_line(c: &ContractRow) -> ContractLine {
    let monthly: i64 = c
        .line_items
        .iter()
        .map(|i| i.quantity.saturating_mul(i.unit_price))
        .sum();
    ContractLine {
        id: c.id.clone(),
        status: c.status.to_lowercase(),
        term: format!("{} – {}", day(&c.starts_at), day(&c.ends_at)),
        products: c
            .line_items
            .iter()
            .map(|i| format!("{} {}", i.product, i.edition))
            .collect::<Vec<_>>()
            .join(", "),
        monthly: money(&c.currency, monthly),
    }
}

pub(super) struct InvoiceLineView {
    pub(super) id: String,
    pub(super) period: String,
    pub(super) status: String,
    pub(super) total: String,
    pub(super) due: String,
}

pub(super) fn invoice_line(i: &InvoiceRow) -> InvoiceLineView {
    InvoiceLineView {
        id: i.id.clone(),
        period: i.period.clone(),
        // The list's read model names statuses as the enum does (`Issued`); the detail
        // route in lower case: shown one way.
        status: i.status.to_lowercase(),
        total: money(&i.currency, i.total),
        due: day(&i.due_at),
    }
}

struct QuotaView {
    metric: String,
    amount: i64,
    used: i64,
    remaining: i64,
    hard: bool,
    /// Used up (or over): shown as a warning.
    exhausted: bool,
}

fn quota_views(e: &Entitlements) -> Vec<QuotaView> {
    e.quotas
        .iter()
        .map(|(metric, q)| QuotaView {
            metric: metric.clone(),
            amount: q.amount,
            used: q.used,
            remaining: q.remaining,
            hard: q.enforcement == "hard",
            exhausted: q.used >= q.amount,
        })
        .collect()
}

// ---- overview ----

#[derive(Template)]
#[template(path = "portal/overview.html")]
struct OverviewPage {
    layout: Layout,
    organization: String,
    customer: Option<Customer>,
    contracts: Option<Vec<ContractLine>>,
    /// Contracts the vendor sent that this person may sign.
    to_sign: Vec<String>,
    quotas: Option<Vec<QuotaView>>,
    period: String,
    invoices: Option<Vec<InvoiceLineView>>,
}

async fn overview(me: Me) -> Result<Response, PageError> {
    let api = me.api();
    let org = segment(&INFO, &me.session.organization)?;
    let organization: Organization = api.get(&format!("/organizations/{org}")).await?;
    let customer = if me.may("contracts:read") {
        api.find(&format!("/customers/{org}")).await?
    } else {
        None
    };
    let contracts: Option<Vec<ContractLine>> = if me.may("contracts:read") {
        let page: Page<ContractRow> = api.get("/me/contracts?limit=5").await?;
        Some(page.items.iter().map(contract_line).collect())
    } else {
        None
    };
    let to_sign = match &contracts {
        Some(list) if me.may("contracts:sign") => list
            .iter()
            .filter(|c| c.status == "sent")
            .map(|c| c.id.clone())
            .collect(),
        _ => vec![],
    };
    let (quotas, period) = if me.may("entitlements:read") {
        let e: Entitlements = api.get("/me/entitlements").await?;
        (Some(quota_views(&e)), e.period)
    } else {
        (None, String::new())
    };
    let invoices = if me.may("billing:read") {
        let page: Page<InvoiceRow> = api.get("/me/invoices?limit=5").await?;
        Some(page.items.iter().map(invoice_line).collect())
    } else {
        None
    };
    Ok(render(&OverviewPage {
        layout: me.layout(organization.name.clone(), "/"),
        organization: organization.name,
        customer,
        contracts,
        to_sign,
        quotas,
        period,
        invoices,
    }))
}

// ---- contracts ----

#[derive(Template)]
#[template(path = "portal/contracts.html")]
struct ContractsPage {
    layout: Layout,
    contracts: Vec<ContractLine>,
    pager: Pager,
}

async fn contracts(me: Me, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let page: Page<ContractRow> = me
        .api()
        .get(&format!(
            "/me/contracts{}",
            query(&[("limit", Some(PAGE)), ("after", p.after.as_deref())])
        ))
        .await?;
    Ok(render(&ContractsPage {
        layout: me.layout("Contracts", "/contracts"),
        contracts: page.items.iter().map(contract_line).collect(),
        pager: pager("/portal/contracts", page.next_after, &p.after),
    }))
}

struct ItemView {
    id: String,
    product: String,
    edition: String,
    features: String,
    quotas: String,
    limits: String,
    quantity: i64,
    unit_price: String,
    license: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/contract.html")]
struct ContractPage {
    layout: Layout,
    c: ContractDetail,
    term: String,
    items: Vec<ItemView>,
    /// The person may sign, and the contract waits for a signature.
    can_sign: bool,
    signer: String,
    csrf: String,
}

fn joined<K: std::fmt::Display, V: std::fmt::Display>(m: &BTreeMap<K, V>, sep: &str) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}{sep}{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn contract(
    me: Me,
    Path(id): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let c: ContractDetail = me.api().get(&format!("/contracts/{id}")).await?;
    let items = c
        .line_items
        .iter()
        .map(|i| ItemView {
            id: i.id.clone(),
            product: i.product.clone(),
            edition: i.edition.clone(),
            features: i.features.join(", "),
            quotas: i
                .quotas
                .iter()
                .map(|(m, q)| {
                    format!(
                        "{} {m}/month ({})",
                        q.amount,
                        serde_json::to_value(q.enforcement)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            limits: joined(&i.limits, ": "),
            quantity: i.quantity,
            unit_price: money(&c.currency, i.unit_price),
            license: c.licenses.get(&i.id).cloned(),
        })
        .collect();
    let term = format!(
        "{} – {}",
        c.starts_at.as_deref().map(day).unwrap_or_default(),
        c.ends_at.as_deref().map(day).unwrap_or_default()
    );
    let mut layout = me.layout(format!("Contract {}", short(&c.id)), "/contracts");
    layout.notice = match p.done.as_deref() {
        Some("signed") => Some("You signed the contract. The vendor activates it next.".into()),
        _ => None,
    };
    Ok(render(&ContractPage {
        layout,
        can_sign: c.status == "sent" && me.may("contracts:sign"),
        signer: me.session.name.clone(),
        csrf: me.session.csrf.clone(),
        term,
        items,
        c,
    }))
}

#[derive(Debug, Deserialize)]
struct SignForm {
    signed_by: String,
    /// The "I have read and accept" box: a signature needs an explicit yes.
    #[serde(default)]
    accept: Option<String>,
}

async fn sign(
    Path(id): Path<String>,
    posted: Posted<Portal, SignForm>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let Posted { signed_in, form } = posted;
    if form.accept.as_deref() != Some("yes") {
        return Err(PageError::new(
            &INFO,
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "Not signed",
            "tick the box to confirm that you accept the contract, then sign again",
        ));
    }
    signed_in
        .api()
        .post(
            &format!("/contracts/{id}/sign"),
            &serde_json::json!({ "signed_by": form.signed_by.trim() }),
        )
        .await?;
    Ok(redirect(&format!("/portal/contracts/{id}?done=signed")))
}

/// The first block of an id, for titles (the full id is on the page).
pub(super) fn short(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

// ---- usage ----

#[derive(Template)]
#[template(path = "portal/usage.html")]
struct UsagePage {
    layout: Layout,
    e: Entitlements,
    quotas: Vec<QuotaView>,
}

async fn usage(me: Me) -> Result<Response, PageError> {
    let e: Entitlements = me.api().get("/me/entitlements").await?;
    Ok(render(&UsagePage {
        layout: me.layout("Usage and entitlements", "/usage"),
        quotas: quota_views(&e),
        e,
    }))
}

// ---- licences ----

#[derive(Template)]
#[template(path = "portal/licenses.html")]
struct LicensesPage {
    layout: Layout,
    licenses: Vec<LicenseRow>,
    pager: Pager,
}

async fn licenses(me: Me, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let page: Page<LicenseRow> = me
        .api()
        .get(&format!(
            "/me/licenses{}",
            query(&[("after", p.after.as_deref())])
        ))
        .await?;
    Ok(render(&LicensesPage {
        layout: me.layout("Licences", "/licenses"),
        licenses: page.items,
        pager: pager("/portal/licenses", page.next_after, &p.after),
    }))
}

#[derive(Template)]
#[template(path = "portal/license.html")]
struct LicensePage {
    layout: Layout,
    l: LicenseDetail,
    terms: LicenseTerms,
    standing: LicenseStanding,
    limits: String,
}

async fn license(me: Me, Path(id): Path<String>) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let api = me.api();
    let mut l: LicenseDetail = api.get(&format!("/licenses/{id}")).await?;
    let standing: LicenseStanding = api.get(&format!("/licenses/{id}/status")).await?;
    let terms = l
        .terms
        .take()
        .ok_or_else(|| PageError::not_found(&INFO, format!("no licence {id}")))?;
    Ok(render(&LicensePage {
        layout: me.layout(
            format!("{} {} licence", terms.product, terms.edition),
            "/licenses",
        ),
        limits: joined(&terms.limits, ": "),
        terms,
        standing,
        l,
    }))
}

async fn license_file(me: Me, Path(id): Path<String>) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    me.api()
        .download(
            &format!("/licenses/{id}/file"),
            &format!("license-{id}.json"),
        )
        .await
}

/// The public keys that verify licence files offline.
async fn keys_file(me: Me) -> Result<Response, PageError> {
    me.api().download("/keys", "keys.json").await
}

/// The signed revocation list.
async fn crl_file(me: Me) -> Result<Response, PageError> {
    me.api().download("/crl", "crl.json").await
}

// ---- invoices ----

#[derive(Template)]
#[template(path = "portal/invoices.html")]
struct InvoicesPage {
    layout: Layout,
    invoices: Vec<InvoiceLineView>,
    pager: Pager,
}

async fn invoices(me: Me, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let page: Page<InvoiceRow> = me
        .api()
        .get(&format!(
            "/me/invoices{}",
            query(&[("limit", Some(PAGE)), ("after", p.after.as_deref())])
        ))
        .await?;
    Ok(render(&InvoicesPage {
        layout: me.layout("Invoices", "/invoices"),
        invoices: page.items.iter().map(invoice_line).collect(),
        pager: pager("/portal/invoices", page.next_after, &p.after),
    }))
}

pub(super) struct InvoiceLineRow {
    pub(super) description: String,
    pub(super) quantity: i64,
    pub(super) unit: String,
    pub(super) amount: String,
}

/// An invoice's lines as the printable invoice shows them.
pub(super) fn invoice_lines(i: &InvoiceDetail) -> Vec<InvoiceLineRow> {
    i.lines
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|l| InvoiceLineRow {
            description: l.description.clone(),
            quantity: l.quantity,
            unit: money(&i.currency, l.unit_amount),
            amount: money(&i.currency, l.amount),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "portal/invoice.html")]
struct InvoicePage {
    layout: Layout,
    i: InvoiceDetail,
    organization: String,
    /// The bill-to name's link (none here: the Portal is the customer's own).
    customer_href: Option<String>,
    /// Where the invoice's contract is shown.
    contracts: &'static str,
    lines: Vec<InvoiceLineRow>,
}

async fn invoice(me: Me, Path(id): Path<String>) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let api = me.api();
    let i: InvoiceDetail = api.get(&format!("/invoices/{id}")).await?;
    let org = segment(&INFO, &me.session.organization)?;
    // The bill-to name: the customer record (the person may read contracts) or the
    // organization's name.
    let organization = match api.find::<Customer>(&format!("/customers/{org}")).await {
        Ok(Some(c)) => c.name,
        _ => {
            api.get::<Organization>(&format!("/organizations/{org}"))
                .await?
                .name
        }
    };
    let lines = invoice_lines(&i);
    Ok(render(&InvoicePage {
        layout: me.layout(format!("Invoice {}", short(&i.id)), "/invoices"),
        organization,
        customer_href: None,
        contracts: "/portal/contracts",
        lines,
        i,
    })
    .into_response())
}

// ---- jobs and evidence ----

#[derive(Debug, Deserialize)]
struct JobRow {
    id: String,
    backend: String,
    status: String,
    artifacts: i64,
    submitted_at: String,
}

#[derive(Debug, Deserialize)]
struct Artifact {
    name: String,
    sha256: String,
    size: u64,
    media_type: Option<String>,
    /// The retention purge that deleted the bytes (the record stays).
    purged_by: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct JobDetail {
    id: String,
    status: String,
    backend: Option<String>,
    class: Option<String>,
    config_digest: Option<String>,
    requested_by: Option<String>,
    result: Option<serde_json::Value>,
    error: Option<serde_json::Value>,
    artifacts: Vec<Artifact>,
}

#[derive(Debug, Deserialize)]
struct BundleRow {
    id: String,
    job_id: String,
    manifest_sha256: String,
    created_at: String,
}

#[derive(Template)]
#[template(path = "portal/jobs.html")]
struct JobsPage {
    layout: Layout,
    jobs: Vec<JobRow>,
    pager: Pager,
}

async fn jobs(me: Me, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let org = segment(&INFO, &me.session.organization)?;
    let page: Page<JobRow> = me
        .api()
        .get(&format!(
            "/jobs{}",
            query(&[
                ("org", Some(org)),
                ("limit", Some(PAGE)),
                ("after", p.after.as_deref())
            ])
        ))
        .await?;
    Ok(render(&JobsPage {
        layout: me.layout("Jobs", "/jobs"),
        jobs: page.items,
        pager: pager("/portal/jobs", page.next_after, &p.after),
    }))
}

struct ArtifactView {
    name: String,
    sha256: String,
    size: String,
    media_type: String,
    purged: bool,
}

/// A byte count for people (`1.5 MiB`).
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[derive(Template)]
#[template(path = "portal/job.html")]
struct JobPage {
    layout: Layout,
    j: JobDetail,
    artifacts: Vec<ArtifactView>,
    /// Pretty JSON of the result and of the error, when there are.
    result: Option<String>,
    failure: Option<String>,
    /// `None` when the person may not read evidence.
    bundles: Option<Vec<BundleRow>>,
    /// The form's token when the person may make a bundle (`evidence:write`).
    create: Option<String>,
}

async fn job(me: Me, Path(id): Path<String>) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let api = me.api();
    let j: JobDetail = api.get(&format!("/jobs/{id}")).await?;
    let bundles = if me.may("evidence:read") {
        let page: Page<BundleRow> = api.get(&format!("/jobs/{id}/evidence")).await?;
        Some(page.items)
    } else {
        None
    };
    let pretty = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .filter(|v| !v.is_null())
            .and_then(|v| serde_json::to_string_pretty(v).ok())
    };
    Ok(render(&JobPage {
        layout: me.layout(format!("Job {}", short(&j.id)), "/jobs"),
        artifacts: j
            .artifacts
            .iter()
            .map(|a| ArtifactView {
                name: a.name.clone(),
                sha256: a.sha256.clone(),
                size: size(a.size),
                media_type: a.media_type.clone().unwrap_or_default(),
                purged: a.purged_by.as_ref().is_some_and(|p| !p.is_null()),
            })
            .collect(),
        result: pretty(&j.result),
        failure: pretty(&j.error),
        bundles,
        create: me.may("evidence:write").then(|| me.session.csrf.clone()),
        j,
    }))
}

async fn create_bundle(
    Path(id): Path<String>,
    posted: Posted<Portal, NoFields>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let made = posted
        .signed_in
        .api()
        .post(&format!("/jobs/{id}/evidence"), &serde_json::json!({}))
        .await?;
    let bundle = segment(&INFO, made["id"].as_str().unwrap_or_default())?;
    Ok(redirect(&format!("/portal/evidence/{bundle}?done=created")))
}

async fn artifact(me: Me, Path((id, name)): Path<(String, String)>) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    let name = segment(&INFO, &name)?;
    me.api()
        .download(&format!("/jobs/{id}/artifacts/{name}"), name)
        .await
}

#[derive(Template)]
#[template(path = "portal/evidence.html")]
struct EvidencePage {
    layout: Layout,
    bundles: Vec<BundleRow>,
    pager: Pager,
}

async fn evidence(me: Me, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let page: Page<BundleRow> = me
        .api()
        .get(&format!(
            "/me/evidence{}",
            query(&[("limit", Some(PAGE)), ("after", p.after.as_deref())])
        ))
        .await?;
    Ok(render(&EvidencePage {
        layout: me.layout("Evidence bundles", "/evidence"),
        bundles: page.items,
        pager: pager("/portal/evidence", page.next_after, &p.after),
    }))
}

/// The bundle as one archive with the artifacts' bytes: `quantus evidence verify` checks it
/// offline with the public keys.
async fn bundle_file(me: Me, Path(id): Path<String>) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    me.api()
        .download(
            &format!("/evidence/{id}/export?artifacts=true"),
            &format!("evidence-{id}.tar"),
        )
        .await
}

/// The largest archive the bundle page fetches to verify (the API's default archive limit);
/// a larger one is checked offline.
const MAX_ARCHIVE: usize = 256 << 20;

/// What `POST /v1/evidence/verify` answers (valid, or the first failure).
#[derive(Debug, Deserialize)]
struct Verdict {
    valid: bool,
    reason: Option<String>,
    signed_by: Option<String>,
    config_checked: Option<bool>,
    events_included: Option<usize>,
    #[serde(default)]
    artifacts: Vec<ArtifactVerdict>,
    job_state: Option<JobStateSummary>,
}

#[derive(Debug, Deserialize)]
struct ArtifactVerdict {
    name: String,
    check: String,
}

#[derive(Debug, Deserialize)]
struct JobStateSummary {
    position: u64,
    as_of: String,
    submitter: serde_json::Value,
    #[serde(default)]
    licenses: Vec<serde_json::Value>,
}

/// The signed checkpoint the bundle's events are proven against.
#[derive(Debug, Deserialize)]
struct CheckpointView {
    tree_size: u64,
    root_hash: String,
}

#[derive(Debug, Deserialize)]
struct ManifestView {
    job_id: String,
    created_at: String,
    checkpoint: CheckpointView,
}

#[derive(Debug, Deserialize)]
struct SignedManifestView {
    payload: ManifestView,
}

#[derive(Template)]
#[template(path = "portal/bundle.html")]
struct BundlePage {
    layout: Layout,
    id: String,
    manifest: ManifestView,
    verdict: Verdict,
    /// The job state's submitter and licences, pretty JSON.
    submitter: Option<String>,
    licenses: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct BundleParams {
    done: Option<String>,
}

/// One bundle and its verification: the archive, fetched as the person, goes through the
/// same `POST /v1/evidence/verify` as any client's (the published keys, not the archive's).
async fn bundle(
    me: Me,
    Path(id): Path<String>,
    Query(p): Query<BundleParams>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?.to_owned();
    let api = me.api();
    let manifest: SignedManifestView = api.get(&format!("/evidence/{id}")).await?;
    let archive = api
        .bytes(
            &format!("/evidence/{id}/export?artifacts=true"),
            MAX_ARCHIVE,
        )
        .await?;
    let answer = api
        .post_bytes("/evidence/verify", "application/x-tar", archive)
        .await?;
    let verdict: Verdict = serde_json::from_value(answer).map_err(|e| {
        tracing::error!(error = %e, "the Portal could not read an evidence verdict");
        PageError::internal(&INFO)
    })?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut layout = me.layout(format!("Evidence bundle {}", short(&id)), "/evidence");
    if p.done.as_deref() == Some("created") {
        layout.notice = Some("The evidence bundle was made and signed.".into());
    }
    Ok(render(&BundlePage {
        layout,
        submitter: verdict.job_state.as_ref().map(|s| pretty(&s.submitter)),
        licenses: verdict
            .job_state
            .as_ref()
            .map(|s| s.licenses.iter().map(pretty).collect())
            .unwrap_or_default(),
        manifest: manifest.payload,
        verdict,
        id,
    }))
}
