//! The vendor's Admin console, for the platform organization's operators: customers, their
//! contracts (draft with line items, send, activate, terminate) and the licences contracts
//! produced (suspend, reinstate, revoke), and the event log: filtered, one aggregate's hash
//! chain, the signed checkpoints and an event's inclusion proof checked against them; the
//! signing keys (rotate, mark compromised) and the crypto policy; billing
//! ([`super::admin_billing`]), evidence retention per customer ([`super::admin_retention`]). Every page is `/v1` calls with the operator's token; people of a
//! customer organization are refused here whatever their scopes (their own pages are the Portal).

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use quantus_domain::commercial::contract::LineItem;
use quantus_domain::commercial::money::Currency;
use quantus_domain::schema::PLATFORM_TENANT;
use serde::Deserialize;

use super::api::{query, segment, Page};
use super::session::{redirect, Posted};
use super::{day, money, pager, render, Chrome, Console, ConsoleInfo, Layout, Pager};
use super::{PageError, SignedIn, ADMIN_CLIENT_ID};
use crate::AppState;

/// The Admin console.
pub struct Admin;

pub(super) static INFO: ConsoleInfo = ConsoleInfo {
    name: "Admin",
    base: "/admin",
    nav: &[
        ("/", "Customers", "contracts:read"),
        ("/contracts", "Contracts", "contracts:read"),
        ("/licenses", "Licences", "licenses:read"),
        ("/billing", "Billing", "billing:read"),
        ("/events", "Event log", "events:read"),
        ("/checkpoints", "Checkpoints", "events:read"),
        ("/keys", "Keys", "keys:manage"),
    ],
};

impl Console for Admin {
    fn info() -> &'static ConsoleInfo {
        &INFO
    }
    const CLIENT_ID: &'static str = ADMIN_CLIENT_ID;
    const SCOPES: &'static str =
        "openid profile email organizations:read identity:read entitlements:read contracts:read contracts:write licenses:read licenses:write events:read keys:manage billing:read billing:write jobs:read evidence:write";
    fn pages() -> Router<AppState> {
        routes()
    }
}

/// Rows per list page.
pub(super) const PAGE: &str = "20";

fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(|| async { redirect("/admin/") }))
        .route("/admin/", get(customers))
        .route("/admin/customers/new", get(new_customer))
        .route("/admin/customers", post(register_customer))
        .route("/admin/customers/{id}", get(customer))
        .route("/admin/customers/{id}/contracts", post(draft_contract))
        .route("/admin/contracts", get(contracts))
        .route("/admin/contracts/{id}", get(contract))
        .route(
            "/admin/contracts/{id}/terminate",
            get(confirm_terminate).post(terminate),
        )
        .route(
            "/admin/contracts/{id}/amend",
            get(confirm_amend).post(amend),
        )
        .route("/admin/contracts/{id}/{action}", post(transition))
        .route("/admin/licenses", get(licenses))
        .route("/admin/licenses/{id}", get(license))
        .route(
            "/admin/licenses/{id}/{action}",
            get(confirm_license_action).post(license_action),
        )
        .route("/admin/events", get(events))
        .merge(super::admin_verify::routes())
        .route("/admin/events/{aggregate_type}/{id}", get(history))
        .route("/admin/checkpoints", get(checkpoints))
        .route("/admin/keys", get(keys))
        .route("/admin/keys/rotate", post(rotate_key))
        .route(
            "/admin/keys/{kid}/retire",
            get(confirm_retire).post(retire_key),
        )
        .route(
            "/admin/keys/policy/{algorithm}",
            get(confirm_policy_rule).post(set_policy_rule),
        )
        .route(
            "/admin/keys/{kid}/compromise",
            get(confirm_compromise).post(compromise_key),
        )
        .merge(super::admin_billing::routes())
        .merge(super::admin_as_of::routes())
        .merge(super::admin_retention::routes())
        .route("/admin/{*rest}", get(not_found))
}

/// An operator of the vendor: a signed-in person of the platform organization. Anyone else
/// gets a 403 page that shows nothing of the platform (not even its navigation).
pub(super) struct Operator(pub(super) SignedIn<Admin>);

pub(super) fn operator(me: SignedIn<Admin>) -> Result<Operator, PageError> {
    if me.session.organization == PLATFORM_TENANT {
        return Ok(Operator(me));
    }
    let layout = me.layout("", "");
    let mut refused = PageError::new(
        &INFO,
        StatusCode::FORBIDDEN,
        "Not for your organization",
        "the Admin console is for the vendor's operators; your organization's pages are in the Customer Portal",
    );
    refused.elsewhere = Some(("/portal/", "Go to the Customer Portal"));
    refused.chrome = layout.user.map(|user| {
        Box::new(Chrome {
            user,
            scopes: Default::default(),
        })
    });
    Err(refused)
}

async fn not_found(me: SignedIn<Admin>) -> Result<PageError, PageError> {
    operator(me)?;
    Ok(PageError::not_found(
        &INFO,
        "there is no such page in the Admin console",
    ))
}

// ---- what the API answers ----

#[derive(Debug, Deserialize)]
struct CustomerRow {
    id: String,
    name: String,
    billing_email: String,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct OrganizationRow {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ContractRow {
    id: String,
    organization_id: String,
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
    organization_id: String,
    currency: String,
    line_items: Vec<LineItem>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    signed_by: Option<String>,
    amendments: u32,
    terminated_at: Option<String>,
    /// Line item id -> its current licence.
    licenses: BTreeMap<String, String>,
    /// `<licence id>/<action>` -> why QuantumLock refused it.
    license_failures: BTreeMap<String, String>,
    /// Line item id -> how far its latest licence step got.
    #[serde(default)]
    license_steps: BTreeMap<String, LicenseStepView>,
    monthly_price_display: String,
}

/// A line item's latest licence step as `GET /v1/contracts/{id}` shows it.
#[derive(Debug, Deserialize)]
struct LicenseStepView {
    license_id: String,
    action: String,
    /// `issued`, `renewed`, `revoked`, `pending`, `failed` or `planned`.
    standing: String,
    reason: Option<String>,
    attempt: Option<u32>,
    retry_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LicenseStanding {
    standing: String,
}

// ---- what the pages show ----

struct ContractLine {
    id: String,
    customer: String,
    status: String,
    term: String,
    products: String,
    monthly: String,
}

fn contract_line(c: &ContractRow, names: &BTreeMap<String, String>) -> ContractLine {
    let monthly: i64 = c
        .line_items
        .iter()
        .map(|i| i.quantity.saturating_mul(i.unit_price))
        .sum();
    ContractLine {
        id: c.id.clone(),
        customer: names
            .get(&c.organization_id)
            .cloned()
            .unwrap_or_else(|| c.organization_id.clone()),
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

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    after: Option<String>,
    status: Option<String>,
    done: Option<String>,
}

/// The customers' names by organization id (for lists across customers).
pub(super) async fn customer_names(op: &Operator) -> Result<BTreeMap<String, String>, PageError> {
    let mut names = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page: Page<CustomerRow> =
            op.0.api()
                .get(&format!(
                    "/customers{}",
                    query(&[("limit", Some("200")), ("after", after.as_deref())])
                ))
                .await?;
        names.extend(page.items.into_iter().map(|c| (c.id, c.name)));
        match page.next_after {
            Some(n) => after = Some(n),
            None => return Ok(names),
        }
    }
}

// ---- customers ----

#[derive(Template)]
#[template(path = "admin/customers.html")]
struct CustomersPage {
    layout: Layout,
    customers: Vec<CustomerRow>,
    pager: Pager,
}

async fn customers(
    me: SignedIn<Admin>,
    Query(p): Query<ListParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let page: Page<CustomerRow> =
        op.0.api()
            .get(&format!(
                "/customers{}",
                query(&[("limit", Some(PAGE)), ("after", p.after.as_deref())])
            ))
            .await?;
    Ok(render(&CustomersPage {
        layout: op.0.layout("Customers", "/"),
        customers: page.items,
        pager: pager("/admin/", page.next_after, &p.after),
    }))
}

#[derive(Template)]
#[template(path = "admin/customer_new.html")]
struct NewCustomerPage {
    layout: Layout,
    /// Organizations that are not customers yet.
    organizations: Vec<OrganizationRow>,
    csrf: String,
}

async fn new_customer(me: SignedIn<Admin>) -> Result<Response, PageError> {
    let op = operator(me)?;
    let api = op.0.api();
    let customers = customer_names(&op).await?;
    let mut organizations = vec![];
    let mut after: Option<String> = None;
    loop {
        let page: Page<OrganizationRow> = api
            .get(&format!(
                "/organizations{}",
                query(&[("limit", Some("200")), ("after", after.as_deref())])
            ))
            .await?;
        organizations.extend(
            page.items
                .into_iter()
                .filter(|o| !customers.contains_key(&o.id)),
        );
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    organizations.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(render(&NewCustomerPage {
        layout: op.0.layout("Register a customer", "/"),
        organizations,
        csrf: op.0.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct CustomerForm {
    organization_id: String,
    name: String,
    billing_email: String,
    currency: String,
}

async fn register_customer(posted: Posted<Admin, CustomerForm>) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let org = segment(&INFO, form.organization_id.trim())?.to_owned();
    op.0.api()
        .post(
            "/customers",
            &serde_json::json!({
                "organization_id": org,
                "name": form.name.trim(),
                "billing_email": form.billing_email.trim(),
                "currency": form.currency.trim().to_uppercase(),
            }),
        )
        .await?;
    Ok(redirect(&format!("/admin/customers/{org}?done=registered")))
}

#[derive(Debug, Deserialize)]
struct Customer {
    id: String,
    name: String,
    billing_email: String,
    currency: String,
}

#[derive(Template)]
#[template(path = "admin/customer.html")]
struct CustomerPage {
    layout: Layout,
    c: Customer,
    contracts: Vec<ContractLine>,
    pager: Pager,
    csrf: String,
    terms: Terms,
    /// Why the API refused the draft (its problem `detail`), shown above the kept values.
    refused: Option<String>,
}

async fn customer(
    me: SignedIn<Admin>,
    Path(id): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    customer_page(&op, &id, &p, Terms::blank(), None).await
}

/// A customer with its paged contracts and the draft form (`draft` as typed so far).
async fn customer_page(
    op: &Operator,
    id: &str,
    p: &ListParams,
    draft: Terms,
    refused: Option<String>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, id)?;
    let api = op.0.api();
    let c: Customer = api.get(&format!("/customers/{id}")).await?;
    let page: Page<ContractRow> = api
        .get(&format!(
            "/contracts{}",
            query(&[
                ("org", Some(id)),
                ("limit", Some(PAGE)),
                ("after", p.after.as_deref())
            ])
        ))
        .await?;
    let names = BTreeMap::from([(c.id.clone(), c.name.clone())]);
    let mut layout = op.0.layout(c.name.clone(), "/");
    layout.notice = match p.done.as_deref() {
        Some("registered") => Some("The customer was registered.".into()),
        _ => None,
    };
    let mut shown = render(&CustomerPage {
        layout,
        contracts: page
            .items
            .iter()
            .map(|r| contract_line(r, &names))
            .collect(),
        pager: pager(&format!("/admin/customers/{id}"), page.next_after, &p.after),
        csrf: op.0.session.csrf.clone(),
        c,
        terms: draft,
        refused: refused.clone(),
    });
    if refused.is_some() {
        *shown.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(shown)
}
/// One line item as typed in a contract form, kept as typed so that a refused form shows
/// it again. Fields are posted as `{field}.{row}`.
#[derive(Debug, Clone, Default)]
struct ItemFields {
    id: String,
    product: String,
    edition: String,
    features: String,
    quantity: String,
    unit_price: String,
    max_activations: String,
    /// One monthly quota (optional): metric, amount and `hard` or `soft`.
    quota_metric: String,
    quota_amount: String,
    quota_enforcement: String,
    /// One limit written into the licence (optional): name and value.
    limit_name: String,
    limit_value: String,
}

impl ItemFields {
    fn blank() -> Self {
        ItemFields {
            quantity: "1".into(),
            max_activations: "1".into(),
            quota_enforcement: "hard".into(),
            ..Default::default()
        }
    }

    /// An item of the contract as the form shows it (the price in major units).
    fn of(item: &LineItem, currency: &str) -> Self {
        let quota = item.quotas.iter().next();
        let limit = item.limits.iter().next();
        ItemFields {
            id: item.id.clone(),
            product: item.product.clone(),
            edition: item.edition.clone(),
            features: item.features.join(", "),
            quantity: item.quantity.to_string(),
            unit_price: major_units(currency, item.unit_price),
            max_activations: item.max_activations.to_string(),
            quota_metric: quota.map(|(m, _)| m.clone()).unwrap_or_default(),
            quota_amount: quota.map(|(_, q)| q.amount.to_string()).unwrap_or_default(),
            quota_enforcement: quota
                .and_then(|(_, q)| serde_json::to_value(q.enforcement).ok())
                .and_then(|e| e.as_str().map(str::to_owned))
                .unwrap_or_else(|| "hard".into()),
            limit_name: limit.map(|(n, _)| n.clone()).unwrap_or_default(),
            limit_value: limit.map(|(_, v)| v.to_string()).unwrap_or_default(),
        }
    }

    /// The item as the API takes it; `usage_prices` are not in the form and are kept from the
    /// contract's item of the same id by an amendment.
    fn line_item(
        &self,
        row: usize,
        currency: &str,
        usage_prices: Option<&BTreeMap<String, i64>>,
    ) -> Result<serde_json::Value, String> {
        let at = |detail: String| format!("line item {}: {detail}", row + 1);
        let unit_price = minor_units(currency, &self.unit_price).map_err(at)?;
        let features: Vec<&str> = self
            .features
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let mut quotas = serde_json::Map::new();
        if !self.quota_metric.trim().is_empty() {
            quotas.insert(
                self.quota_metric.trim().to_owned(),
                serde_json::json!({
                    "amount": number::<i64>(&self.quota_amount, "the quota").map_err(at)?,
                    "enforcement": self.quota_enforcement.trim(),
                }),
            );
        }
        let mut limits = serde_json::Map::new();
        if !self.limit_name.trim().is_empty() {
            limits.insert(
                self.limit_name.trim().to_owned(),
                number::<i64>(&self.limit_value, "the limit")
                    .map_err(at)?
                    .into(),
            );
        }
        Ok(serde_json::json!({
            "id": self.id.trim(),
            "product": self.product.trim(),
            "edition": self.edition.trim(),
            "features": features,
            "quotas": quotas,
            "limits": limits,
            "quantity": number::<i64>(&self.quantity, "the quantity").map_err(at)?,
            "unit_price": unit_price,
            "usage_prices": usage_prices.cloned().unwrap_or_default(),
            "max_activations": number::<u32>(&self.max_activations, "the machines per licence").map_err(at)?,
        }))
    }
}

/// A contract's terms as typed in the draft or amendment form.
#[derive(Debug, Clone)]
struct Terms {
    starts_at: String,
    ends_at: String,
    items: Vec<ItemFields>,
    /// The row to focus after one was added or removed (an `autofocus` on its first field).
    focus: Option<usize>,
}

impl Terms {
    fn blank() -> Self {
        Terms {
            starts_at: String::new(),
            ends_at: String::new(),
            items: vec![ItemFields::blank()],
            focus: None,
        }
    }

    /// Whether `row` was just added (it gets the focus).
    fn focuses(&self, row: impl std::borrow::Borrow<usize>) -> bool {
        self.focus == Some(*row.borrow())
    }

    /// The terms of a posted form: rows in the order of their numbers.
    fn posted(form: &BTreeMap<String, String>) -> Self {
        let field = |name: &str| {
            form.get(name)
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let mut rows: Vec<usize> = form
            .keys()
            .filter_map(|k| k.strip_prefix("item_id.")?.parse().ok())
            .collect();
        rows.sort_unstable();
        rows.dedup();
        let items = rows
            .iter()
            .map(|n| {
                let f = |name: &str| {
                    form.get(&format!("{name}.{n}"))
                        .cloned()
                        .unwrap_or_default()
                };
                ItemFields {
                    id: f("item_id"),
                    product: f("product"),
                    edition: f("edition"),
                    features: f("features"),
                    quantity: f("quantity"),
                    unit_price: f("unit_price"),
                    max_activations: f("max_activations"),
                    quota_metric: f("quota_metric"),
                    quota_amount: f("quota_amount"),
                    quota_enforcement: f("quota_enforcement"),
                    limit_name: f("limit_name"),
                    limit_value: f("limit_value"),
                }
            })
            .collect();
        Terms {
            starts_at: field("starts_at"),
            ends_at: field("ends_at"),
            items,
            focus: None,
        }
    }

    /// Carries out the form's "Add a line item" or "Remove line item N" button: whether it
    /// was one (then the form is shown again with the change and every value kept).
    fn edit_rows(&mut self, op: Option<&str>) -> bool {
        match op {
            Some("add") => {
                self.items.push(ItemFields::blank());
                self.focus = Some(self.items.len() - 1);
                true
            }
            Some(other) => match other.strip_prefix("remove-").and_then(|n| n.parse().ok()) {
                Some(n) if n < self.items.len() && self.items.len() > 1 => {
                    self.items.remove(n);
                    // Keyboard users land in the row that took its place (or the one before).
                    self.focus = Some(n.min(self.items.len() - 1));
                    true
                }
                Some(_) => true,
                None => false,
            },
            None => false,
        }
    }

    fn line_items(
        &self,
        currency: &str,
        usage_prices: &BTreeMap<String, BTreeMap<String, i64>>,
    ) -> Result<Vec<serde_json::Value>, String> {
        if self.items.is_empty() {
            return Err("a contract needs at least one line item".into());
        }
        self.items
            .iter()
            .enumerate()
            .map(|(row, i)| i.line_item(row, currency, usage_prices.get(i.id.trim())))
            .collect()
    }
}

/// An amount typed in the currency's major units (`1500`, `1500.5`, `1500.00`) as minor units.
fn minor_units(currency: &str, typed: &str) -> Result<i64, String> {
    let c = Currency::parse(currency)?;
    let typed = typed.trim();
    let (whole, fraction) = typed.split_once('.').unwrap_or((typed, ""));
    let digits = c.exponent() as usize;
    if whole.is_empty()
        || !whole.chars().all(|ch| ch.is_ascii_digit())
        || !fraction.chars().all(|ch| ch.is_ascii_digit())
        || fraction.len() > digits
    {
        return Err(format!(
            "the unit price must be an amount in {} with at most {digits} decimals",
            c.code()
        ));
    }
    let scaled = format!("{whole}{fraction:0<digits$}");
    scaled
        .parse::<i64>()
        .map_err(|_| "the unit price is too large".to_owned())
}

/// Minor units as a person types them in the form (`150000` EUR -> `1500.00`).
fn major_units(currency: &str, amount: i64) -> String {
    match Currency::parse(currency) {
        Ok(c) => {
            let shown = c.format(amount);
            shown
                .rsplit_once(' ')
                .map(|(n, _)| n.to_owned())
                .unwrap_or(shown)
        }
        Err(_) => amount.to_string(),
    }
}

fn number<T: std::str::FromStr>(typed: &str, what: &str) -> Result<T, String> {
    typed
        .trim()
        .parse()
        .map_err(|_| format!("{what} must be a whole number"))
}

/// A refusal the person can correct in the form (the API's 4xx other than a lost session or
/// a missing right): its `detail`, to show above the kept values.
pub(super) fn correctable(e: PageError) -> Result<String, PageError> {
    match e.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Err(e),
        s if s.is_client_error() => Ok(e.detail),
        _ => Err(e),
    }
}

async fn draft_contract(
    Path(id): Path<String>,
    posted: Posted<Admin, BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let org = segment(&INFO, &id)?.to_owned();
    let mut terms = Terms::posted(&form);
    let again = ListParams::default();
    if terms.edit_rows(form.get("op").map(String::as_str)) {
        return customer_page(&op, &org, &again, terms, None).await;
    }
    let api = op.0.api();
    let c: Customer = api.get(&format!("/customers/{org}")).await?;
    let line_items = match terms.line_items(&c.currency, &BTreeMap::new()) {
        Ok(items) => items,
        Err(detail) => return customer_page(&op, &org, &again, terms, Some(detail)).await,
    };
    let made = api
        .post(
            "/contracts",
            &serde_json::json!({
                "organization_id": org,
                "starts_at": format!("{}T00:00:00Z", terms.starts_at),
                "ends_at": format!("{}T00:00:00Z", terms.ends_at),
                "line_items": line_items,
            }),
        )
        .await;
    let made = match made {
        Ok(made) => made,
        Err(e) => {
            let detail = correctable(e)?;
            return customer_page(&op, &org, &again, terms, Some(detail)).await;
        }
    };
    let id = made["id"].as_str().unwrap_or_default();
    let id = segment(&INFO, id)?;
    Ok(redirect(&format!("/admin/contracts/{id}?done=drafted")))
}

// ---- contracts ----

/// The statuses the contracts list filters by.
const STATUSES: [&str; 7] = [
    "draft",
    "sent",
    "signed",
    "active",
    "amended",
    "terminated",
    "expired",
];

#[derive(Template)]
#[template(path = "admin/contracts.html")]
struct ContractsPage {
    layout: Layout,
    contracts: Vec<ContractLine>,
    statuses: &'static [&'static str],
    status: String,
    pager: Pager,
}

async fn contracts(
    me: SignedIn<Admin>,
    Query(p): Query<ListParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let status = p
        .status
        .as_deref()
        .filter(|s| STATUSES.contains(s))
        .map(str::to_owned);
    let page: Page<ContractRow> =
        op.0.api()
            .get(&format!(
                "/contracts{}",
                query(&[
                    ("status", status.as_deref()),
                    ("limit", Some(PAGE)),
                    ("after", p.after.as_deref())
                ])
            ))
            .await?;
    let names = customer_names(&op).await?;
    let path = format!(
        "/admin/contracts{}",
        query(&[("status", status.as_deref())])
    );
    Ok(render(&ContractsPage {
        layout: op.0.layout("Contracts", "/contracts"),
        contracts: page
            .items
            .iter()
            .map(|r| contract_line(r, &names))
            .collect(),
        statuses: &STATUSES,
        status: status.unwrap_or_default(),
        pager: pager(&path, page.next_after, &p.after),
    }))
}

struct ItemView {
    id: String,
    product: String,
    edition: String,
    features: String,
    quantity: i64,
    unit_price: String,
    max_activations: u32,
    license: Option<String>,
    /// The licence's standing (`valid`, `revoked`, ...), when there is a licence.
    standing: String,
    /// The item's latest licence step: `issued`, `pending`, `failed`, ... (empty before
    /// activation).
    step: String,
    /// Why a step is pending or was refused, and when a pending one is tried again.
    step_reason: Option<String>,
}

struct FailureView {
    license: String,
    action: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "admin/contract.html")]
struct ContractPage {
    layout: Layout,
    c: ContractDetail,
    customer: String,
    term: String,
    terminated: Option<String>,
    items: Vec<ItemView>,
    failures: Vec<FailureView>,
    csrf: String,
}

async fn contract(
    me: SignedIn<Admin>,
    Path(id): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let id = segment(&INFO, &id)?;
    let api = op.0.api();
    let c: ContractDetail = api.get(&format!("/contracts/{id}")).await?;
    let org = segment(&INFO, &c.organization_id)?;
    let customer = api
        .find::<Customer>(&format!("/customers/{org}"))
        .await?
        .map(|c| c.name)
        .unwrap_or_else(|| c.organization_id.clone());
    let mut items = vec![];
    for i in &c.line_items {
        let step = c.license_steps.get(&i.id);
        // An item's licence once a step names it (`licenses` holds only those in force); one
        // QuantumLock has not issued yet (pending, refused) has no page to link. A revoked
        // contract's items say so instead of linking.
        let revoking = step.is_some_and(|s| s.action == "revoke");
        let named = c
            .licenses
            .get(&i.id)
            .or(step.filter(|_| !revoking).map(|s| &s.license_id));
        let license = match named {
            Some(l) => api
                .find::<LicenseStanding>(&format!("/licenses/{}/status", segment(&INFO, l)?))
                .await?
                .map(|s| (l.clone(), s.standing)),
            None => None,
        };
        let (license, standing) = license.unzip();
        let step_reason = step.and_then(|s| {
            let reason = format!("{}: {}", s.action, s.reason.as_deref()?);
            Some(match (&s.attempt, &s.retry_at) {
                (Some(n), Some(at)) => {
                    format!("{reason} (attempt {n}; tried again by {})", moment(at))
                }
                _ => reason,
            })
        });
        items.push(ItemView {
            id: i.id.clone(),
            product: i.product.clone(),
            edition: i.edition.clone(),
            features: i.features.join(", "),
            quantity: i.quantity,
            unit_price: money(&c.currency, i.unit_price),
            max_activations: i.max_activations,
            license,
            standing: standing.unwrap_or_default(),
            step: step
                .filter(|s| !revoking || s.standing == "pending" || s.standing == "failed")
                .map(|s| s.standing.clone())
                .unwrap_or_default(),
            step_reason,
        });
    }
    let failures = c
        .license_failures
        .iter()
        .map(|(key, reason)| {
            let (license, action) = key.rsplit_once('/').unwrap_or((key.as_str(), ""));
            FailureView {
                license: license.to_owned(),
                action: action.to_owned(),
                reason: reason.clone(),
            }
        })
        .collect();
    let term = format!(
        "{} – {}",
        c.starts_at.as_deref().map(day).unwrap_or_default(),
        c.ends_at.as_deref().map(day).unwrap_or_default()
    );
    let mut layout =
        op.0.layout(format!("Contract {}", short(&c.id)), "/contracts");
    layout.notice = match p.done.as_deref() {
        Some("drafted") => Some("The contract was drafted. Send it when it is ready.".into()),
        Some("sent") => Some("The contract was sent to the customer for signature.".into()),
        Some("activated") => {
            Some("The contract is active; QuantumLock issues its licences.".into())
        }
        Some("terminated") => Some("The contract was terminated.".into()),
        Some("amended") => Some(
            "The contract was amended; QuantumLock renews unchanged items' licences and re-issues changed ones."
                .into(),
        ),
        _ => None,
    };
    Ok(render(&ContractPage {
        layout,
        customer,
        term,
        terminated: c.terminated_at.as_deref().map(moment),
        items,
        failures,
        csrf: op.0.session.csrf.clone(),
        c,
    }))
}

/// An RFC 3339 instant for people (`2026-01-01 00:00 UTC`); as given when it does not parse.
fn moment(ts: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|_| ts.to_owned())
}

/// The first block of an id, for titles (the full id is on the page).
fn short(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

#[derive(Debug, Deserialize)]
struct NoFields {}

/// Send (to the customer for signature) or activate (after the customer signed).
async fn transition(
    Path((id, action)): Path<(String, String)>,
    posted: Posted<Admin, NoFields>,
) -> Result<Response, PageError> {
    let op = operator(posted.signed_in)?;
    let id = segment(&INFO, &id)?;
    let done = match action.as_str() {
        "send" => "sent",
        "activate" => "activated",
        _ => {
            return Err(PageError::not_found(
                &INFO,
                format!("no contract action {action:?}"),
            ))
        }
    };
    op.0.api()
        .post(&format!("/contracts/{id}/{action}"), &serde_json::json!({}))
        .await?;
    Ok(redirect(&format!("/admin/contracts/{id}?done={done}")))
}

#[derive(Template)]
#[template(path = "admin/contract_amend.html")]
struct AmendPage {
    layout: Layout,
    c: ContractDetail,
    customer: String,
    csrf: String,
    terms: Terms,
    reason: String,
    refused: Option<String>,
}

/// The contract and its customer's name, for the pages that change it.
async fn contract_of(op: &Operator, id: &str) -> Result<(ContractDetail, String), PageError> {
    let api = op.0.api();
    let c: ContractDetail = api.get(&format!("/contracts/{id}")).await?;
    let org = segment(&INFO, &c.organization_id)?;
    let customer = api
        .find::<Customer>(&format!("/customers/{org}"))
        .await?
        .map(|c| c.name)
        .unwrap_or_else(|| c.organization_id.clone());
    Ok((c, customer))
}

fn amend_page(
    op: &Operator,
    c: ContractDetail,
    customer: String,
    terms: Terms,
    reason: String,
    refused: Option<String>,
) -> Response {
    let mut shown = render(&AmendPage {
        layout: op
            .0
            .layout(format!("Amend contract {}", short(&c.id)), "/contracts"),
        customer,
        csrf: op.0.session.csrf.clone(),
        terms,
        reason,
        refused: refused.clone(),
        c,
    });
    if refused.is_some() {
        *shown.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    shown
}

/// An amendment changes the terms of a contract in force and re-issues the licences whose
/// terms change: a page of its own, with the current terms to edit and an explicit tick.
async fn confirm_amend(me: SignedIn<Admin>, Path(id): Path<String>) -> Result<Response, PageError> {
    let op = operator(me)?;
    let id = segment(&INFO, &id)?;
    let (c, customer) = contract_of(&op, id).await?;
    // The form edits one quota and one limit per item; more would be lost by amending here.
    if c.line_items
        .iter()
        .any(|i| i.quotas.len() > 1 || i.limits.len() > 1)
    {
        return Err(PageError::new(
            &INFO,
            StatusCode::CONFLICT,
            "Amend this contract through the API",
            "an item of this contract has more than one quota or limit, which this form does not edit; use POST /v1/contracts/{id}/amend",
        ));
    }
    let terms = Terms {
        starts_at: c.starts_at.as_deref().map(day).unwrap_or_default(),
        ends_at: c.ends_at.as_deref().map(day).unwrap_or_default(),
        items: c
            .line_items
            .iter()
            .map(|i| ItemFields::of(i, &c.currency))
            .collect(),
        focus: None,
    };
    Ok(amend_page(&op, c, customer, terms, String::new(), None))
}

async fn amend(
    Path(id): Path<String>,
    posted: Posted<Admin, BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let id = segment(&INFO, &id)?;
    let (c, customer) = contract_of(&op, id).await?;
    let mut terms = Terms::posted(&form);
    terms.starts_at = c.starts_at.as_deref().map(day).unwrap_or_default();
    let reason = form
        .get("reason")
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    if terms.edit_rows(form.get("op").map(String::as_str)) {
        return Ok(amend_page(&op, c, customer, terms, reason, None));
    }
    if form.get("confirm").map(String::as_str) != Some("yes") {
        let detail = "tick the box to confirm that changed items get new licences".to_owned();
        return Ok(amend_page(&op, c, customer, terms, reason, Some(detail)));
    }
    let usage_prices = c
        .line_items
        .iter()
        .map(|i| (i.id.clone(), i.usage_prices.clone()))
        .collect();
    let line_items = match terms.line_items(&c.currency, &usage_prices) {
        Ok(items) => items,
        Err(detail) => return Ok(amend_page(&op, c, customer, terms, reason, Some(detail))),
    };
    let amended =
        op.0.api()
            .post(
                &format!("/contracts/{id}/amend"),
                &serde_json::json!({
                    "reason": reason,
                    "ends_at": format!("{}T00:00:00Z", terms.ends_at),
                    "line_items": line_items,
                }),
            )
            .await;
    if let Err(e) = amended {
        let detail = correctable(e)?;
        return Ok(amend_page(&op, c, customer, terms, reason, Some(detail)));
    }
    Ok(redirect(&format!("/admin/contracts/{id}?done=amended")))
}

#[derive(Template)]
#[template(path = "admin/terminate.html")]
struct TerminatePage {
    layout: Layout,
    c: ContractDetail,
    customer: String,
    csrf: String,
}

/// Termination ends the contract and revokes its licences: a page of its own to confirm.
async fn confirm_terminate(
    me: SignedIn<Admin>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let id = segment(&INFO, &id)?;
    let api = op.0.api();
    let c: ContractDetail = api.get(&format!("/contracts/{id}")).await?;
    let org = segment(&INFO, &c.organization_id)?;
    let customer = api
        .find::<Customer>(&format!("/customers/{org}"))
        .await?
        .map(|c| c.name)
        .unwrap_or_else(|| c.organization_id.clone());
    Ok(render(&TerminatePage {
        layout: op
            .0
            .layout(format!("Terminate contract {}", short(&c.id)), "/contracts"),
        customer,
        csrf: op.0.session.csrf.clone(),
        c,
    }))
}

#[derive(Debug, Deserialize)]
struct TerminateForm {
    reason: String,
    #[serde(default)]
    confirm: Option<String>,
}

async fn terminate(
    Path(id): Path<String>,
    posted: Posted<Admin, TerminateForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let id = segment(&INFO, &id)?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(PageError::new(
            &INFO,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not terminated",
            "tick the box to confirm that the contract ends and its licences are revoked",
        ));
    }
    op.0.api()
        .post(
            &format!("/contracts/{id}/terminate"),
            &serde_json::json!({ "reason": form.reason.trim() }),
        )
        .await?;
    Ok(redirect(&format!("/admin/contracts/{id}?done=terminated")))
}

// ---- licences ----

#[derive(Debug, Deserialize)]
struct LicenseRow {
    id: String,
    organization_id: String,
    product: String,
    edition: String,
    status: String,
    status_reason: Option<String>,
    expires_at: String,
    activations: i64,
}

#[derive(Template)]
#[template(path = "admin/licenses.html")]
struct LicensesPage {
    layout: Layout,
    licenses: Vec<LicenseLine>,
    pager: Pager,
}

struct LicenseLine {
    row: LicenseRow,
    customer: String,
    expires: String,
}

async fn licenses(me: SignedIn<Admin>, Query(p): Query<ListParams>) -> Result<Response, PageError> {
    let op = operator(me)?;
    let page: Page<LicenseRow> =
        op.0.api()
            .get(&format!(
                "/licenses{}",
                query(&[("limit", Some(PAGE)), ("after", p.after.as_deref())])
            ))
            .await?;
    let names = customer_names(&op).await?;
    Ok(render(&LicensesPage {
        layout: op.0.layout("Licences", "/licenses"),
        licenses: page
            .items
            .into_iter()
            .map(|row| LicenseLine {
                customer: names
                    .get(&row.organization_id)
                    .cloned()
                    .unwrap_or_else(|| row.organization_id.clone()),
                expires: day(&row.expires_at),
                row,
            })
            .collect(),
        pager: pager("/admin/licenses", page.next_after, &p.after),
    }))
}

#[derive(Debug, Deserialize)]
struct LicenseTerms {
    organization_id: String,
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
struct Standing {
    standing: String,
    usable_until: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/license.html")]
struct LicensePage {
    layout: Layout,
    l: LicenseDetail,
    terms: LicenseTerms,
    standing: Standing,
    customer: String,
    limits: String,
    valid: String,
    usable_until: Option<String>,
}

async fn load_license(
    op: &Operator,
    id: &str,
) -> Result<(LicenseDetail, LicenseTerms, String), PageError> {
    let api = op.0.api();
    let mut l: LicenseDetail = api.get(&format!("/licenses/{id}")).await?;
    let terms = l
        .terms
        .take()
        .ok_or_else(|| PageError::not_found(&INFO, format!("no licence {id}")))?;
    let org = segment(&INFO, &terms.organization_id)?;
    let customer = api
        .find::<Customer>(&format!("/customers/{org}"))
        .await?
        .map(|c| c.name)
        .unwrap_or_else(|| terms.organization_id.clone());
    Ok((l, terms, customer))
}

async fn license(
    me: SignedIn<Admin>,
    Path(id): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let id = segment(&INFO, &id)?;
    let (l, terms, customer) = load_license(&op, id).await?;
    let standing: Standing = op.0.api().get(&format!("/licenses/{id}/status")).await?;
    let mut layout = op.0.layout(
        format!("{} {} licence", terms.product, terms.edition),
        "/licenses",
    );
    layout.notice = match p.done.as_deref() {
        Some("suspend") => Some("The licence was suspended.".into()),
        Some("reinstate") => Some("The licence was reinstated.".into()),
        Some("revoke") => {
            Some("The licence was revoked; the next revocation list names it.".into())
        }
        _ => None,
    };
    Ok(render(&LicensePage {
        layout,
        limits: terms
            .limits
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        valid: format!(
            "{} – {}",
            moment(&terms.not_before),
            moment(&terms.expires_at)
        ),
        usable_until: standing.usable_until.as_deref().map(moment),
        customer,
        terms,
        standing,
        l,
    }))
}

/// What each licence action asks and says.
struct LicenseAction {
    name: &'static str,
    title: &'static str,
    explain: &'static str,
    button: &'static str,
    needs_reason: bool,
}

fn license_action_of(action: &str) -> Result<LicenseAction, PageError> {
    match action {
        "suspend" => Ok(LicenseAction {
            name: "suspend",
            title: "Suspend this licence?",
            explain: "A suspended licence stops verifying until it is reinstated; its machines keep their activations.",
            button: "Suspend licence",
            needs_reason: true,
        }),
        "reinstate" => Ok(LicenseAction {
            name: "reinstate",
            title: "Reinstate this licence?",
            explain: "The licence verifies again under its terms.",
            button: "Reinstate licence",
            needs_reason: false,
        }),
        "revoke" => Ok(LicenseAction {
            name: "revoke",
            title: "Revoke this licence?",
            explain: "A revoked licence is listed in the signed revocation list and never verifies again; this cannot be undone.",
            button: "Revoke licence",
            needs_reason: true,
        }),
        _ => Err(PageError::not_found(
            &INFO,
            format!("no licence action {action:?}"),
        )),
    }
}

#[derive(Template)]
#[template(path = "admin/license_action.html")]
struct LicenseActionPage {
    layout: Layout,
    l: LicenseDetail,
    terms: LicenseTerms,
    customer: String,
    action: LicenseAction,
    csrf: String,
}

/// Suspend, reinstate and revoke are each confirmed on a page of their own.
async fn confirm_license_action(
    me: SignedIn<Admin>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let id = segment(&INFO, &id)?;
    let action = license_action_of(&action)?;
    let (l, terms, customer) = load_license(&op, id).await?;
    Ok(render(&LicenseActionPage {
        layout: op.0.layout(action.title, "/licenses"),
        csrf: op.0.session.csrf.clone(),
        l,
        terms,
        customer,
        action,
    }))
}

#[derive(Debug, Deserialize)]
struct LicenseActionForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: Option<String>,
}

async fn license_action(
    Path((id, action)): Path<(String, String)>,
    posted: Posted<Admin, LicenseActionForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let id = segment(&INFO, &id)?;
    let action = license_action_of(&action)?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(PageError::new(
            &INFO,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing changed",
            "tick the box to confirm, then send the form again",
        ));
    }
    let body = if action.needs_reason {
        serde_json::json!({ "reason": form.reason.trim() })
    } else {
        serde_json::json!({})
    };
    op.0.api()
        .post(&format!("/licenses/{id}/{}", action.name), &body)
        .await?;
    Ok(redirect(&format!(
        "/admin/licenses/{id}?done={}",
        action.name
    )))
}

// ---- the event log ----

#[derive(Debug, Deserialize)]
struct LogEntry {
    position: u64,
    envelope: EnvelopeView,
}

#[derive(Debug, Deserialize)]
struct EnvelopeView {
    event_id: String,
    aggregate_type: String,
    aggregate_id: String,
    sequence: u64,
    event_type: String,
    occurred_at: String,
    tenant_id: String,
    actor: serde_json::Value,
    prev_hash: String,
    hash: String,
}

impl EnvelopeView {
    fn when(&self) -> String {
        moment(&self.occurred_at)
    }

    /// The hash's first 12 hex digits, for tables.
    fn short_hash(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }
}

#[derive(Debug, Deserialize)]
struct EventPage {
    events: Vec<LogEntry>,
    after: u64,
    next_after: u64,
}

#[derive(Debug, Default, Deserialize)]
struct EventParams {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    aggregate_type: String,
    #[serde(default)]
    event_type: String,
    /// Instants from the form's `datetime-local` fields (UTC) or RFC 3339.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    after: Option<u64>,
}

/// A time filter as the API takes it: a `datetime-local` value (no zone: the form says UTC) as
/// RFC 3339; anything else as typed, for the API to refuse with its `detail`.
pub(super) fn utc_instant(v: &str) -> Option<String> {
    let v = filter_value(v)?;
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(v, f).ok())
        .map(|t| {
            t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .or_else(|| Some(v.to_owned()))
}

/// Events scanned per page of the explorer (filters keep what matches among them).
const EVENTS_PAGE: &str = "200";

#[derive(Template)]
#[template(path = "admin/events.html")]
struct EventsPage {
    layout: Layout,
    f: EventParams,
    events: Vec<LogEntry>,
    /// The window of positions this page scanned.
    from: u64,
    to: u64,
    next: Option<String>,
    first: Option<String>,
    /// For the "Verify a range" form.
    csrf: String,
}

/// A filter value from a URL: what an API query may carry (the API checks it again).
fn filter_value(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

async fn events(me: SignedIn<Admin>, Query(f): Query<EventParams>) -> Result<Response, PageError> {
    let op = operator(me)?;
    let after = f.after.unwrap_or(0).to_string();
    let filters = [
        ("tenant", filter_value(&f.tenant)),
        ("aggregate_type", filter_value(&f.aggregate_type)),
        ("event_type", filter_value(&f.event_type)),
        ("from", filter_value(&f.from)),
        ("to", filter_value(&f.to)),
    ];
    let (from, to) = (utc_instant(&f.from), utc_instant(&f.to));
    let mut pairs = filters[..3].to_vec();
    pairs.extend([
        ("from", from.as_deref()),
        ("to", to.as_deref()),
        ("after", Some(after.as_str())),
        ("limit", Some(EVENTS_PAGE)),
    ]);
    let page: EventPage = op.0.api().get(&format!("/events{}", query(&pairs))).await?;
    // `from` may start the read later than asked.
    let start = page.after;
    let link = |after: Option<u64>| {
        let a = after.map(|a| a.to_string());
        let mut p = filters.to_vec();
        p.push(("after", a.as_deref()));
        format!("/admin/events{}", query(&p))
    };
    // Fewer positions than asked for: the log ended there (a gap in positions at worst
    // offers one empty page that says so).
    let window: u64 = EVENTS_PAGE.parse().unwrap_or(200);
    let next = (page.next_after >= start + window).then(|| link(Some(page.next_after)));
    Ok(render(&EventsPage {
        layout: op.0.layout("Event log", "/events"),
        from: start + 1,
        to: page.next_after,
        next,
        first: (f.after.unwrap_or(0) > 0).then(|| link(None)),
        csrf: op.0.session.csrf.clone(),
        events: page.events,
        f,
    }))
}

struct ChainLink {
    position: u64,
    e: EnvelopeView,
    actor: String,
    /// `prev_hash` is the previous event's `hash` (the first's is the zero hash).
    linked: bool,
}

struct Inclusion {
    event_id: String,
    position: u64,
    tree_size: u64,
    root_hash: String,
    path_len: usize,
    /// The path leads from the leaf to the root.
    path_ok: bool,
    /// The root is a signed checkpoint's.
    signed: bool,
}

#[derive(Template)]
#[template(path = "admin/history.html")]
struct HistoryPage {
    layout: Layout,
    aggregate_type: String,
    id: String,
    chain: Vec<ChainLink>,
    intact: bool,
    inclusion: Option<Inclusion>,
}

#[derive(Debug, Default, Deserialize)]
struct HistoryParams {
    verify: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AggregateHistory {
    events: Vec<LogEntry>,
}

#[derive(Debug, Deserialize)]
struct InclusionProof {
    position: u64,
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: String,
    root_hash: String,
    inclusion_path: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Checkpoint {
    tree_size: u64,
    root_hash: String,
    kid: String,
    position: u64,
}

#[derive(Debug, Deserialize)]
struct Checkpoints {
    items: Vec<Checkpoint>,
    next_after_size: Option<u64>,
}

fn hash32(b64: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()?
        .try_into()
        .ok()
}

/// Whether `proof` leads from its leaf to its root (checked here, not taken from the API).
fn path_leads_to_root(proof: &InclusionProof) -> bool {
    let (Some(leaf), Some(root)) = (hash32(&proof.leaf_hash), hash32(&proof.root_hash)) else {
        return false;
    };
    let path: Option<Vec<[u8; 32]>> = proof.inclusion_path.iter().map(|h| hash32(h)).collect();
    path.is_some_and(|path| {
        quantus_crypto::merkle::verify_inclusion(
            &leaf,
            proof.leaf_index,
            proof.tree_size,
            &path,
            &root,
        )
    })
}

/// The signed checkpoint of a tree of `size` events, if there is one.
async fn checkpoint_of(op: &Operator, size: u64) -> Result<Option<Checkpoint>, PageError> {
    let after = size.saturating_sub(1).to_string();
    let page: Checkpoints =
        op.0.api()
            .get(&format!(
                "/audit/checkpoints{}",
                query(&[("after_size", Some(&after)), ("limit", Some("1"))])
            ))
            .await?;
    Ok(page.items.into_iter().find(|c| c.tree_size == size))
}

async fn history(
    me: SignedIn<Admin>,
    Path((aggregate_type, id)): Path<(String, String)>,
    Query(p): Query<HistoryParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let aggregate_type = segment(&INFO, &aggregate_type)?.to_owned();
    let id = segment(&INFO, &id)?.to_owned();
    let h: AggregateHistory =
        op.0.api()
            .get(&format!("/aggregates/{aggregate_type}/{id}/events"))
            .await?;
    let mut previous: Option<String> = None;
    let mut chain = vec![];
    for entry in h.events {
        let linked = match &previous {
            Some(prev) => *prev == entry.envelope.prev_hash,
            None => entry.envelope.prev_hash == quantus_domain::envelope::GENESIS_HASH,
        };
        previous = Some(entry.envelope.hash.clone());
        chain.push(ChainLink {
            position: entry.position,
            actor: entry.envelope.actor["id"]
                .as_str()
                .map(|a| {
                    format!(
                        "{} {a}",
                        entry.envelope.actor["kind"].as_str().unwrap_or_default()
                    )
                })
                .unwrap_or_default(),
            e: entry.envelope,
            linked,
        });
    }
    let inclusion = match p.verify.as_deref() {
        Some(event) if chain.iter().any(|c| c.e.event_id == event) => {
            let proof: InclusionProof =
                op.0.api()
                    .get(&format!(
                        "/audit/proofs/inclusion{}",
                        query(&[("event_id", Some(event))])
                    ))
                    .await?;
            // Checkpoints name their root in hex, proofs in base64: compared as bytes.
            let root_hex = hash32(&proof.root_hash)
                .map(|r| r.iter().map(|b| format!("{b:02x}")).collect::<String>())
                .unwrap_or_default();
            let signed = checkpoint_of(&op, proof.tree_size)
                .await?
                .is_some_and(|c| c.root_hash.eq_ignore_ascii_case(&root_hex));
            Some(Inclusion {
                event_id: event.to_owned(),
                path_ok: path_leads_to_root(&proof),
                position: proof.position,
                tree_size: proof.tree_size,
                root_hash: root_hex,
                path_len: proof.inclusion_path.len(),
                signed,
            })
        }
        _ => None,
    };
    Ok(render(&HistoryPage {
        layout: op
            .0
            .layout(format!("{aggregate_type} {}", short(&id)), "/events"),
        intact: chain.iter().all(|c| c.linked),
        aggregate_type,
        id,
        chain,
        inclusion,
    }))
}

#[derive(Template)]
#[template(path = "admin/checkpoints.html")]
struct CheckpointsPage {
    layout: Layout,
    checkpoints: Vec<Checkpoint>,
    next: Option<String>,
    later: bool,
}

#[derive(Debug, Default, Deserialize)]
struct CheckpointParams {
    after_size: Option<u64>,
}

async fn checkpoints(
    me: SignedIn<Admin>,
    Query(p): Query<CheckpointParams>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let after = p.after_size.map(|a| a.to_string());
    let page: Checkpoints =
        op.0.api()
            .get(&format!(
                "/audit/checkpoints{}",
                query(&[("after_size", after.as_deref()), ("limit", Some(PAGE))])
            ))
            .await?;
    Ok(render(&CheckpointsPage {
        layout: op.0.layout("Signed checkpoints", "/checkpoints"),
        next: page
            .next_after_size
            .map(|n| format!("/admin/checkpoints?after_size={n}")),
        later: p.after_size.is_some(),
        checkpoints: page.items,
    }))
}

// ---- keys and the crypto policy ----

#[derive(Debug, Deserialize)]
struct TrustedKey {
    kid: String,
    alg: String,
    purpose: String,
    not_before: String,
    retired_at: Option<String>,
    compromised_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeySet {
    keys: Vec<TrustedKey>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    algorithm: String,
    may_sign: bool,
    may_verify: bool,
    verify_until: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Policy {
    rules: Vec<Rule>,
}

struct KeyLine {
    kid: String,
    alg: String,
    purpose: String,
    since: String,
    /// `compromised`, `retired` or `trusted`.
    state: &'static str,
    detail: String,
}

/// The keyrings' purposes, as the API names them.
const PURPOSES: [&str; 4] = ["license", "evidence", "token", "checkpoint"];

#[derive(Template)]
#[template(path = "admin/keys.html")]
struct KeysPage {
    layout: Layout,
    keys: Vec<KeyLine>,
    rules: Vec<Rule>,
    purposes: &'static [&'static str],
    csrf: String,
}

#[derive(Debug, Default, Deserialize)]
struct KeysParams {
    rotated: Option<String>,
    compromised: Option<String>,
    retired: Option<String>,
    policy: Option<String>,
}

async fn keys(me: SignedIn<Admin>, Query(p): Query<KeysParams>) -> Result<Response, PageError> {
    let op = operator(me)?;
    let api = op.0.api();
    let set: KeySet = api.get("/keys").await?;
    let policy: Policy = api.get("/crypto/policy").await?;
    let mut keys: Vec<KeyLine> = set
        .keys
        .into_iter()
        .map(|k| {
            let (state, detail) = match (&k.compromised_at, &k.retired_at) {
                (Some(at), _) => (
                    "compromised",
                    format!("signatures from {} are void", moment(at)),
                ),
                (None, Some(at)) => ("retired", format!("verifies nothing after {}", moment(at))),
                (None, None) => ("trusted", String::new()),
            };
            KeyLine {
                since: moment(&k.not_before),
                kid: k.kid,
                alg: k.alg,
                purpose: k.purpose,
                state,
                detail,
            }
        })
        .collect();
    keys.sort_by(|a, b| a.purpose.cmp(&b.purpose).then(b.since.cmp(&a.since)));
    let mut layout = op.0.layout("Signing keys", "/keys");
    layout.notice = p
        .rotated
        .map(|kid| format!("A new key {kid} signs from now on; the previous one keeps verifying."))
        .or(p
            .compromised
            .map(|kid| format!("Key {kid} is marked compromised.")))
        .or(p.retired.map(|kid| format!("Key {kid} is retired.")))
        .or(p
            .policy
            .map(|algorithm| format!("The rule for {algorithm} is changed.")));
    Ok(render(&KeysPage {
        layout,
        keys,
        rules: policy.rules,
        purposes: &PURPOSES,
        csrf: op.0.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct RotateForm {
    purpose: String,
}

async fn rotate_key(posted: Posted<Admin, RotateForm>) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let rotated =
        op.0.api()
            .post(
                "/keys/rotate",
                &serde_json::json!({ "purpose": form.purpose }),
            )
            .await?;
    let kid = rotated["kid"].as_str().unwrap_or_default();
    Ok(redirect(&format!(
        "/admin/keys{}",
        query(&[("rotated", Some(kid))])
    )))
}

#[derive(Template)]
#[template(path = "admin/compromise.html")]
struct CompromisePage {
    layout: Layout,
    key: KeyLine,
    csrf: String,
}

async fn find_key(op: &Operator, kid: &str) -> Result<TrustedKey, PageError> {
    let set: KeySet = op.0.api().get("/keys").await?;
    set.keys
        .into_iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| PageError::not_found(&INFO, format!("no key {kid}")))
}

/// Marking a key compromised voids what it signed from then on: the operator types its id.
async fn confirm_compromise(
    me: SignedIn<Admin>,
    Path(kid): Path<String>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let kid = segment(&INFO, &kid)?;
    let k = find_key(&op, kid).await?;
    Ok(render(&CompromisePage {
        layout: op.0.layout("Mark a key compromised", "/keys"),
        key: KeyLine {
            since: moment(&k.not_before),
            kid: k.kid,
            alg: k.alg,
            purpose: k.purpose,
            state: "trusted",
            detail: String::new(),
        },
        csrf: op.0.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct CompromiseForm {
    typed: String,
    reason: String,
}

async fn compromise_key(
    Path(kid): Path<String>,
    posted: Posted<Admin, CompromiseForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let kid = segment(&INFO, &kid)?;
    if form.typed.trim() != kid {
        return Err(PageError::new(
            &INFO,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing changed",
            "the key id typed does not match the key; type it exactly to confirm",
        ));
    }
    op.0.api()
        .post(
            &format!("/keys/{kid}/compromise"),
            &serde_json::json!({
                "compromised_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "reason": form.reason.trim(),
            }),
        )
        .await?;
    Ok(redirect(&format!(
        "/admin/keys{}",
        query(&[("compromised", Some(kid))])
    )))
}

#[derive(Template)]
#[template(path = "admin/retire.html")]
struct RetirePage {
    layout: Layout,
    key: KeyLine,
    csrf: String,
}

/// Retiring stops a key verifying what is signed later: confirmed on a page of its own.
async fn confirm_retire(
    me: SignedIn<Admin>,
    Path(kid): Path<String>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let kid = segment(&INFO, &kid)?;
    let k = find_key(&op, kid).await?;
    Ok(render(&RetirePage {
        layout: op.0.layout("Retire a key", "/keys"),
        key: KeyLine {
            since: moment(&k.not_before),
            kid: k.kid,
            alg: k.alg,
            purpose: k.purpose,
            state: "trusted",
            detail: String::new(),
        },
        csrf: op.0.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    confirm: Option<String>,
}

/// The answer to a form sent without its confirmation tick.
fn unconfirmed() -> PageError {
    PageError::new(
        &INFO,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Nothing changed",
        "tick the box to confirm, then send the form again",
    )
}

async fn retire_key(
    Path(kid): Path<String>,
    posted: Posted<Admin, ConfirmForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let kid = segment(&INFO, &kid)?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(unconfirmed());
    }
    op.0.api()
        .post(&format!("/keys/{kid}/retire"), &serde_json::json!({}))
        .await?;
    Ok(redirect(&format!(
        "/admin/keys{}",
        query(&[("retired", Some(kid))])
    )))
}

#[derive(Template)]
#[template(path = "admin/policy_rule.html")]
struct PolicyRulePage {
    layout: Layout,
    rule: Rule,
    /// `verify_until` as the form's `datetime-local` value (UTC).
    until: String,
    csrf: String,
}

/// One rule of the crypto policy, changed after a confirmation tick.
async fn confirm_policy_rule(
    me: SignedIn<Admin>,
    Path(algorithm): Path<String>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let algorithm = segment(&INFO, &algorithm)?;
    let policy: Policy = op.0.api().get("/crypto/policy").await?;
    let rule = policy
        .rules
        .into_iter()
        .find(|r| r.algorithm == algorithm)
        .ok_or_else(|| PageError::not_found(&INFO, format!("no rule for {algorithm}")))?;
    let until = rule
        .verify_until
        .as_deref()
        .and_then(|u| chrono::DateTime::parse_from_rfc3339(u).ok())
        .map(|u| {
            u.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    Ok(render(&PolicyRulePage {
        layout: op.0.layout(format!("The rule for {algorithm}"), "/keys"),
        rule,
        until,
        csrf: op.0.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct RuleForm {
    #[serde(default)]
    may_sign: Option<String>,
    #[serde(default)]
    may_verify: Option<String>,
    #[serde(default)]
    verify_until: String,
    #[serde(default)]
    confirm: Option<String>,
}

async fn set_policy_rule(
    Path(algorithm): Path<String>,
    posted: Posted<Admin, RuleForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let algorithm = segment(&INFO, &algorithm)?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(unconfirmed());
    }
    // QuantumLock checks the rule (and answers a `detail` the error page shows).
    op.0.api()
        .put(
            &format!("/crypto/policy/{algorithm}"),
            &serde_json::json!({
                "may_sign": form.may_sign.as_deref() == Some("yes"),
                "may_verify": form.may_verify.as_deref() == Some("yes"),
                "verify_until": utc_instant(&form.verify_until),
            }),
        )
        .await?;
    Ok(redirect(&format!(
        "/admin/keys{}",
        query(&[("policy", Some(algorithm))])
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{major_units, minor_units, Terms};

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn rows_are_read_in_their_order_and_added_or_removed_with_values_kept() {
        let posted = form(&[
            ("starts_at", "2026-01-01"),
            ("item_id.10", "c"),
            ("item_id.2", "b"),
            ("item_id.0", "a"),
            ("unit_price.2", "9.5"),
        ]);
        let mut terms = Terms::posted(&posted);
        let ids: Vec<_> = terms.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(terms.items[1].unit_price, "9.5");
        assert!(terms.edit_rows(Some("remove-1")));
        let ids: Vec<_> = terms.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert!(terms.edit_rows(Some("add")));
        assert_eq!(terms.items.len(), 3);
        assert!(terms.focuses(2));
        // The last row stays; an unknown row changes nothing; no button means "submit".
        let mut one = Terms::posted(&form(&[("item_id.0", "a")]));
        assert!(one.edit_rows(Some("remove-0")));
        assert_eq!(one.items.len(), 1);
        assert!(one.edit_rows(Some("remove-7")));
        assert!(!one.edit_rows(None));
        assert_eq!(terms.starts_at, "2026-01-01");
    }

    #[test]
    fn a_bad_row_is_named_in_the_refusal() {
        let terms = Terms::posted(&form(&[
            ("item_id.0", "a"),
            ("quantity.0", "1"),
            ("unit_price.0", "1"),
            ("max_activations.0", "1"),
            ("item_id.1", "b"),
            ("quantity.1", "two"),
            ("unit_price.1", "1"),
            ("max_activations.1", "1"),
        ]));
        assert_eq!(
            terms.line_items("EUR", &BTreeMap::new()),
            Err("line item 2: the quantity must be a whole number".to_owned())
        );
    }

    #[test]
    fn prices_are_shown_in_major_units_as_typed_back() {
        assert_eq!(major_units("EUR", 120_050), "1200.50");
        assert_eq!(major_units("JPY", 1500), "1500");
        assert_eq!(minor_units("EUR", &major_units("EUR", 7)), Ok(7));
    }

    #[test]
    fn prices_are_typed_in_major_units() {
        assert_eq!(minor_units("EUR", "1500"), Ok(150_000));
        assert_eq!(minor_units("EUR", "1500.5"), Ok(150_050));
        assert_eq!(minor_units("EUR", "0.01"), Ok(1));
        assert_eq!(minor_units("JPY", "1500"), Ok(1500));
        assert!(minor_units("EUR", "1500.001").is_err());
        assert!(minor_units("EUR", "-5").is_err());
        assert!(minor_units("EUR", "").is_err());
        assert!(minor_units("EUR", "1e3").is_err());
    }
}
