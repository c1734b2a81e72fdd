//! The Portal's HTTP surface: customers, contracts, entitlements, invoices, the Stripe webhook
//! and the self-service `/v1/me/*` routes.
//!
//! Portal routes verify QSA-issued access tokens against QSA's published JWKS (the
//! [`Gateway`](crate::state::Gateway)), as a resource server separate from QSA would, and then
//! ask QSA's log whether the grant is still live.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use quantus_commands::commercial::{NewContract, PaymentNotice};
use quantus_commands::identity::AccessClaims;
use quantus_crypto::instant;
use quantus_domain::commercial::contract::{
    Contract, ContractCommand, ContractRevised, Enforcement, LineItem, Quota,
};
use quantus_domain::commercial::customer::CustomerRegistered;
use quantus_domain::commercial::invoice::{Invoice, InvoiceLine, InvoicePaid, LineKind};
use quantus_domain::commercial::money::Currency;
use quantus_domain::commercial::usage::Period;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::billing::{parse_stripe_event, verify_stripe_signature};
use quantus_projections::commercial::{
    CommercialView, ContractRow, CustomerRow, EntitlementsRow, InvoiceRow,
};
use quantus_projections::jobs::JobsView;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::as_of::AsOf;
use crate::auth::Principal;
use crate::consistency::Consistency;
use crate::paging::{self, Page};
use crate::problem::{ApiJson, ApiQuery};
use crate::write::{accepted, context, expected_version, optional_json, refusal};
use crate::{AppState, Problem};

/// Routes that need a QSA token (verified through the JWKS).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/customers", post(register_customer).get(list_customers))
        .route("/customers/{id}", get(show_customer))
        .route("/customers/{id}/contact", post(change_contact))
        .route("/contracts", post(draft_contract).get(list_contracts))
        .route("/contracts/{id}", get(show_contract))
        .route("/contracts/{id}/{action}", post(contract_transition))
        .route("/entitlements", get(entitlements))
        .route("/entitlements/check", post(check_entitlement))
        .route("/invoices", post(issue_invoice).get(list_invoices))
        .route("/invoices/{id}", get(show_invoice))
        .route("/invoices/{id}/{action}", post(invoice_action))
        .route("/me/contracts", get(my_contracts))
        .route("/me/entitlements", get(my_entitlements))
        .route("/me/licenses", get(my_licenses))
        .route("/me/invoices", get(my_invoices))
        .route("/me/evidence", get(my_evidence))
}

/// Routes authenticated by something other than a bearer token.
pub fn webhook_routes() -> Router<AppState> {
    Router::new().route("/billing/webhooks/stripe", post(stripe_webhook))
}

// ---- authentication through QSA's JWKS ----

async fn verify(state: &AppState, token: &str) -> Result<AccessClaims, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed: {e}"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(format!("algorithm {:?} is not accepted", header.alg));
    }
    let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
    if !matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")) {
        return Err("the token is not an access token".into());
    }
    let kid = header.kid.ok_or("the token names no key")?;
    let jwk = state
        .gateway
        .jwks
        .key(&kid)
        .await
        .map_err(|e| format!("QSA's keys are unavailable: {e}"))?
        .ok_or("the token names no key QSA publishes")?;
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk).map_err(|e| format!("QSA published a bad key: {e}"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("QSA published a bad key: {e}"))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[state.gateway.issuer.as_str()]);
    v.set_audience(&[format!("{}/v1", state.gateway.issuer)]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat"]);
    v.validate_nbf = true;
    v.leeway = 5;
    let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &v)
        .map_err(|e| format!("the token is invalid: {e}"))?;
    state
        .identity
        .check_live(&data.claims)
        .await
        .map_err(|e| e.to_string())?;
    Ok(data.claims)
}

/// Puts the caller's [`Principal`] into the request, or answers 401.
pub async fn require_qsa_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // Mounted under `/v1` (nesting strips the prefix from what this layer sees).
    let path = format!("/v1{}", request.uri().path());
    let verified = crate::auth::authenticate(
        &state,
        request.method(),
        &path,
        request.headers(),
        |token| {
            let state = &state;
            async move { verify(state, &token).await }
        },
    )
    .await;
    match verified {
        Ok(claims) => {
            request
                .extensions_mut()
                .insert(Principal::from_claims(claims));
            next.run(request).await
        }
        Err(response) => response,
    }
}

// ---- helpers ----

fn uuid_id(id: &str, what: &str) -> Result<String, Problem> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found(format!("no {what} {id:?}")))
}

/// The caller's own organization, for `/v1/me/*`.
fn my_org(principal: &Principal) -> Result<String, Problem> {
    if principal.organization == quantus_domain::schema::PLATFORM_TENANT {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "not-a-customer",
            "Not a customer",
            "the platform's own principals have no contracts; use the /v1 routes with ?org=",
        ));
    }
    Ok(principal.organization.clone())
}

fn money(currency: &str, amount: i64) -> String {
    Currency::parse(currency)
        .map(|c| c.format(amount))
        .unwrap_or_else(|_| format!("{amount} {currency} (minor units)"))
}

/// A quota of a line item: so much a month, enforced hard or soft.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaView {
    amount: i64,
    /// `hard` (refused past it) or `soft` (billed past it).
    #[schema(value_type = String)]
    enforcement: Enforcement,
}

impl From<Quota> for QuotaView {
    fn from(q: Quota) -> Self {
        Self {
            amount: q.amount,
            enforcement: q.enforcement,
        }
    }
}

/// A line item of a contract; prices in the currency's minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct LineItemView {
    /// Unique within the contract; amendments match items by it.
    id: String,
    product: String,
    edition: String,
    features: Vec<String>,
    /// Metered quantities per month.
    quotas: BTreeMap<String, QuotaView>,
    /// Limits written into the licence (seats, qubits, ...).
    limits: BTreeMap<String, i64>,
    quantity: i64,
    /// Price per unit and month.
    unit_price: i64,
    /// Price per unit of metered usage.
    usage_prices: BTreeMap<String, i64>,
    /// Machines the licence may be activated on.
    max_activations: u32,
}

impl From<LineItem> for LineItemView {
    fn from(i: LineItem) -> Self {
        Self {
            id: i.id,
            product: i.product,
            edition: i.edition,
            features: i.features,
            quotas: i.quotas.into_iter().map(|(k, q)| (k, q.into())).collect(),
            limits: i.limits,
            quantity: i.quantity,
            unit_price: i.unit_price,
            usage_prices: i.usage_prices,
            max_activations: i.max_activations,
        }
    }
}

/// A contract as its aggregate stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContractView {
    id: String,
    /// `draft`, `sent`, `signed`, `active`, `amended`, `terminated` or `expired`.
    status: String,
    organization_id: String,
    customer_id: String,
    currency: String,
    line_items: Vec<LineItemView>,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    signed_by: Option<String>,
    amendments: u32,
    terminated_at: Option<DateTime<Utc>>,
    /// The licence each line item has now, by line item id.
    licenses: BTreeMap<String, String>,
    /// Licence steps QuantumLock refused: `<licence id>/<action>` -> reason.
    license_failures: BTreeMap<String, String>,
    /// Each line item's latest licence step: `{license_id, action, standing}`, with `hold`,
    /// `reason`, `attempt` and `retry_at` when pending and `reason` when failed.
    license_steps: BTreeMap<String, serde_json::Value>,
    /// The line items' price a month, in minor units.
    monthly_price: i64,
    monthly_price_display: String,
    version: u64,
}

fn contract_view(id: &str, c: Contract, version: u64) -> ContractView {
    let monthly: i64 = c
        .line_items
        .iter()
        .map(|i| i.quantity.saturating_mul(i.unit_price))
        .sum();
    ContractView {
        id: id.to_owned(),
        status: c.status.name().to_owned(),
        monthly_price_display: money(&c.currency, monthly),
        organization_id: c.organization_id,
        customer_id: c.customer_id,
        currency: c.currency,
        line_items: c.line_items.into_iter().map(Into::into).collect(),
        starts_at: c.starts_at,
        ends_at: c.ends_at,
        signed_by: c.signed_by,
        amendments: c.amendments,
        terminated_at: c.terminated_at,
        licenses: c.licenses,
        license_failures: c.license_failures,
        license_steps: c
            .license_steps
            .iter()
            .map(|(item, step)| (item.clone(), step.view()))
            .collect(),
        monthly_price: monthly,
        version,
    }
}

/// A line of an invoice; amounts in minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceLineView {
    line_item_id: String,
    /// `subscription` or `usage`.
    #[schema(value_type = String)]
    kind: LineKind,
    description: String,
    quantity: i64,
    unit_amount: i64,
    /// `quantity × unit_amount`.
    amount: i64,
}

impl From<InvoiceLine> for InvoiceLineView {
    fn from(l: InvoiceLine) -> Self {
        Self {
            line_item_id: l.line_item_id,
            kind: l.kind,
            description: l.description,
            quantity: l.quantity,
            unit_amount: l.unit_amount,
            amount: l.amount,
        }
    }
}

/// How an invoice was paid.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    provider: String,
    /// The provider's event or payment reference.
    reference: String,
    paid_at: DateTime<Utc>,
}

impl From<InvoicePaid> for PaymentView {
    fn from(p: InvoicePaid) -> Self {
        Self {
            provider: p.provider,
            reference: p.reference,
            paid_at: p.paid_at,
        }
    }
}

/// An invoice as its aggregate stands; amounts in minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceView {
    id: String,
    /// `issued`, `open` (sent to the billing provider), `paid` or `void`.
    status: String,
    contract_id: Option<String>,
    organization_id: Option<String>,
    /// `YYYY-MM`.
    period: Option<String>,
    currency: String,
    lines: Option<Vec<InvoiceLineView>>,
    total: Option<i64>,
    total_display: Option<String>,
    due_at: Option<DateTime<Utc>>,
    /// The billing provider it was sent to: `builtin` or `stripe`.
    provider: Option<String>,
    external_id: Option<String>,
    hosted_url: Option<String>,
    paid: Option<PaymentView>,
    payment_failures: u32,
    version: u64,
    /// After `refresh`: what the billing provider says of the payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_status: Option<serde_json::Value>,
}

fn invoice_view(id: &str, i: Invoice, version: u64) -> InvoiceView {
    let currency = i
        .issued
        .as_ref()
        .map(|x| x.currency.clone())
        .unwrap_or_default();
    let issued = i.issued;
    let sent = i.sent;
    InvoiceView {
        id: id.to_owned(),
        status: i.status.name().to_owned(),
        contract_id: issued.as_ref().map(|x| x.contract_id.clone()),
        organization_id: issued.as_ref().map(|x| x.organization_id.clone()),
        period: issued.as_ref().map(|x| x.period.clone()),
        total: issued.as_ref().map(|x| x.total),
        total_display: issued.as_ref().map(|x| money(&currency, x.total)),
        due_at: issued.as_ref().map(|x| x.due_at),
        lines: issued.map(|x| x.lines.into_iter().map(Into::into).collect()),
        currency,
        provider: sent.as_ref().map(|s| s.provider.clone()),
        external_id: sent.as_ref().map(|s| s.external_id.clone()),
        hosted_url: sent.and_then(|s| s.hosted_url),
        paid: i.paid.map(Into::into),
        payment_failures: i.payment_failures,
        version,
        provider_status: None,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    org: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

impl ListQuery {
    /// The organization to list: the caller's own unless a platform principal names one
    /// (or none, for all).
    fn scope(&self, principal: &Principal) -> Result<Option<String>, Problem> {
        match &self.org {
            Some(org) => {
                principal.tenant(org, &format!("organization {org}"))?;
                Ok(Some(org.clone()))
            }
            None if principal.is_platform() => Ok(None),
            None => Ok(Some(principal.organization.clone())),
        }
    }

    async fn wait(&self, state: &AppState) -> Result<(), Problem> {
        Consistency {
            min_position: self.min_position,
            wait_ms: self.wait_ms,
        }
        .wait(&state.commercial)
        .await
    }
}

// ---- customers ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    organization_id: String,
    name: String,
    billing_email: String,
    currency: String,
}

#[utoipa::path(post, path = "/v1/customers", tag = "portal", request_body(content = RegisterCustomer, description = "{organization_id, name, billing_email, currency (ISO 4217)}"), responses((status = 201, body = crate::write::CommandAccepted), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn register_customer(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterCustomer>,
) -> Result<Response, Problem> {
    principal.require("contracts:write")?;
    let org = uuid_id(&body.organization_id, "organization")
        .map_err(|_| Problem::unprocessable("organization_id must be an organization's id"))?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let ctx = context(&principal, &headers, &org);
    let outcome = state
        .portal
        .register_customer(
            &ctx,
            CustomerRegistered {
                organization_id: org.clone(),
                name: body.name,
                billing_email: body.billing_email,
                currency: body.currency,
            },
        )
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        &org,
        outcome,
        Some(format!("/v1/customers/{org}")),
    ))
}

#[utoipa::path(get, path = "/v1/customers", tag = "portal", params(("org" = Option<String>, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query)), responses((status = 200, body = Page<CustomerRowView>)), security(("bearer" = [])))]
pub async fn list_customers(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    principal.require("contracts:read")?;
    let limit = paging::limit(q.limit)?;
    q.wait(&state).await?;
    let org = q.scope(&principal)?;
    let rows = CommercialView::customers(&state.db.pool, org.as_deref(), q.after.as_deref(), limit)
        .await?;
    Ok(Json(page_of::<_, CustomerRowView>(rows, limit)).into_response())
}

/// A page of read-model rows shown as `V`.
fn page_of<R, V: From<R> + ToSchema + HasId>(rows: Vec<R>, limit: u32) -> Page<V> {
    Page::of(rows.into_iter().map(V::from).collect(), limit, V::id)
}

/// The id a list pages by.
trait HasId {
    fn id(&self) -> &str;
}

/// A customer as the commercial read model lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerRowView {
    id: String,
    name: String,
    billing_email: String,
    /// ISO 4217.
    currency: String,
    version: u64,
}

impl From<CustomerRow> for CustomerRowView {
    fn from(r: CustomerRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            billing_email: r.billing_email,
            currency: r.currency,
            version: r.version,
        }
    }
}

impl HasId for CustomerRowView {
    fn id(&self) -> &str {
        &self.id
    }
}

/// A customer as its aggregate stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerView {
    id: String,
    organization_id: String,
    name: String,
    billing_email: String,
    /// ISO 4217.
    currency: String,
    version: u64,
}

#[utoipa::path(get, path = "/v1/customers/{id}", tag = "portal", params(("id" = String, Path)), responses((status = 200, body = CustomerView), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show_customer(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("contracts:read")?;
    let id = uuid_id(&id, "customer")?;
    principal.tenant(&id, &format!("customer {id}"))?;
    let (c, version) = state.portal.customer(&id).await?;
    Ok(Json(CustomerView {
        id,
        organization_id: c.organization_id,
        name: c.name,
        billing_email: c.billing_email,
        currency: c.currency,
        version,
    })
    .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeContact {
    name: String,
    billing_email: String,
}

#[utoipa::path(post, path = "/v1/customers/{id}/contact", tag = "portal", params(("id" = String, Path), ("If-Match" = Option<String>, Header)), request_body(content = ChangeContact, description = "{name, billing_email}"), responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 404, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn change_contact(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChangeContact>,
) -> Result<Response, Problem> {
    principal.require("contracts:write")?;
    let id = uuid_id(&id, "customer")?;
    principal.tenant(&id, &format!("customer {id}"))?;
    let ctx = context(&principal, &headers, &id);
    let expected = expected_version(&headers)?;
    let outcome = state
        .portal
        .change_customer(&ctx, &id, body.name, body.billing_email, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

// ---- contracts ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftContract {
    organization_id: String,
    #[schema(value_type = Vec<LineItemView>)]
    line_items: Vec<LineItem>,
    #[serde(deserialize_with = "instant::deserialize")]
    #[schema(value_type = String, format = DateTime)]
    starts_at: DateTime<Utc>,
    #[serde(deserialize_with = "instant::deserialize")]
    #[schema(value_type = String, format = DateTime)]
    ends_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/v1/contracts", tag = "portal", request_body(content = DraftContract, description = "{organization_id, line_items: [{id, product, edition, features, quotas: {metric: {amount, enforcement}}, limits, quantity, unit_price, usage_prices, max_activations}], starts_at, ends_at}; prices in integer minor units of the customer's currency"), responses((status = 201, body = crate::write::CommandAccepted), (status = 409, body = Problem, description = "the organization is suspended"), (status = 422, body = Problem, description = "no such organization, no customer record, or a bad line item")), security(("bearer" = [])))]
pub async fn draft_contract(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DraftContract>,
) -> Result<Response, Problem> {
    principal.require("contracts:write")?;
    let org = uuid_id(&body.organization_id, "organization")
        .map_err(|_| Problem::unprocessable("organization_id must be an organization's id"))?;
    principal.tenant(&org, &format!("organization {org}"))?;
    let id = Uuid::now_v7().to_string();
    let ctx = context(&principal, &headers, &org);
    let outcome = state
        .portal
        .draft_contract(
            &ctx,
            &id,
            NewContract {
                organization_id: org,
                line_items: body.line_items,
                starts_at: body.starts_at,
                ends_at: body.ends_at,
            },
        )
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/contracts/{id}")),
    ))
}

/// The contracts list's query: [`ListQuery`] and a status.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractListQuery {
    org: Option<String>,
    /// Only contracts in this status.
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
    as_of: Option<String>,
    as_of_position: Option<u64>,
}

/// The statuses a contract may be listed by.
const CONTRACT_STATUSES: [&str; 7] = [
    "draft",
    "sent",
    "signed",
    "active",
    "amended",
    "terminated",
    "expired",
];

#[utoipa::path(get, path = "/v1/contracts", tag = "portal", params(("org" = Option<String>, Query), ("status" = Option<String>, Query, description = "only contracts in this status: draft, sent, signed, active, amended, terminated or expired"), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query), ("as_of" = Option<String>, Query, description = "the model as it stood at this instant (RFC 3339): after the last log position appended before it; the answer's `as_of` names that position and the instant"), ("as_of_position" = Option<u64>, Query, description = "the model as it stood at this log position (after its event); the answer's `as_of` names it and when it was appended")), responses((status = 200, body = Page<ContractRowView>, description = "as_of: the moment the page reflects, when asked for one"), (status = 400, body = Problem, description = "an unknown status, a bad as_of"), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn list_contracts(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(c): ApiQuery<ContractListQuery>,
) -> Result<Response, Problem> {
    principal.require("contracts:read")?;
    if let Some(status) = c.status.as_deref() {
        if !CONTRACT_STATUSES.contains(&status) {
            return Err(Problem::bad_request(format!(
                "status must be one of {}",
                CONTRACT_STATUSES.join(", ")
            )));
        }
    }
    let q = ListQuery {
        org: c.org,
        after: c.after,
        limit: c.limit,
        min_position: c.min_position,
        wait_ms: c.wait_ms,
    };
    let limit = paging::limit(q.limit)?;
    q.wait(&state).await?;
    let org = q.scope(&principal)?;
    if let Some(moment) = crate::as_of::resolve(
        &state,
        &state.commercial,
        c.as_of.as_deref(),
        c.as_of_position,
        q.wait_ms,
    )
    .await?
    {
        let rows = CommercialView::contracts_as_of(
            &state.db.pool,
            org.as_deref(),
            c.status.as_deref(),
            moment.position,
            q.after.as_deref(),
            limit,
        )
        .await?;
        let mut page = page_of::<_, ContractRowView>(rows, limit);
        page.as_of = Some(moment);
        return Ok(Json(page).into_response());
    }
    let rows = CommercialView::contracts(
        &state.db.pool,
        org.as_deref(),
        c.status.as_deref(),
        q.after.as_deref(),
        limit,
    )
    .await?;
    Ok(Json(page_of::<_, ContractRowView>(rows, limit)).into_response())
}

/// A contract as the commercial read model lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContractRowView {
    id: String,
    organization_id: String,
    customer_id: String,
    /// `draft`, `sent`, `signed`, `active`, `amended`, `terminated` or `expired`.
    status: String,
    currency: String,
    starts_at: String,
    ends_at: String,
    line_items: Vec<LineItemView>,
    amendments: i64,
    version: u64,
    updated_at: String,
    /// Each line item's latest licence step and how far it got.
    license_steps: BTreeMap<String, serde_json::Value>,
}

impl From<ContractRow> for ContractRowView {
    fn from(r: ContractRow) -> Self {
        Self {
            id: r.id,
            organization_id: r.organization_id,
            customer_id: r.customer_id,
            status: r.status,
            currency: r.currency,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            line_items: r.line_items.into_iter().map(Into::into).collect(),
            amendments: r.amendments,
            version: r.version,
            updated_at: r.updated_at,
            license_steps: r.license_steps,
        }
    }
}

impl HasId for ContractRowView {
    fn id(&self) -> &str {
        &self.id
    }
}

async fn load_contract(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(String, Contract, u64), Problem> {
    let id = uuid_id(id, "contract")?;
    let (c, version) = state.portal.contract(&id).await?;
    principal.tenant(&c.organization_id, &format!("contract {id}"))?;
    Ok((id, c, version))
}

#[utoipa::path(get, path = "/v1/contracts/{id}", tag = "portal", params(("id" = String, Path)), responses((status = 200, body = ContractView, description = "the contract, its status, line items and current licences"), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show_contract(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("contracts:read")?;
    let (id, c, version) = load_contract(&state, &principal, &id).await?;
    Ok(Json(contract_view(&id, c, version)).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractTransition {
    /// The name of the customer's signatory.
    #[serde(default)]
    signed_by: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// The contract's line items as they become: [{id, product, edition, features, quotas:
    /// {metric: {amount, enforcement}}, limits, quantity, unit_price, usage_prices,
    /// max_activations}].
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    line_items: Option<Vec<LineItem>>,
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    starts_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "instant::deserialize_option")]
    ends_at: Option<DateTime<Utc>>,
}

#[utoipa::path(post, path = "/v1/contracts/{id}/{action}", tag = "portal", params(("id" = String, Path), ("action" = String, Path, description = "revise, send, sign, activate, amend, terminate or expire"), ("If-Match" = Option<String>, Header)), request_body(content = ContractTransition), responses((status = 412, body = Problem, description = "If-Match names another version than the current one"), (status = 200, body = crate::write::CommandAccepted), (status = 409, body = Problem, description = "illegal transition"), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn contract_transition(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (id, contract, _) = load_contract(&state, &principal, &id).await?;
    // The customer's owner signs; only the vendor drafts, sends, activates and changes terms.
    principal.require(if action == "sign" {
        "contracts:sign"
    } else {
        "contracts:write"
    })?;
    let body: ContractTransition = optional_json(&headers, &body)?;
    let ctx = context(&principal, &headers, &contract.organization_id);
    let need = |v: Option<String>, field: &str| {
        v.ok_or_else(|| Problem::unprocessable(format!("{field} is required")))
    };
    let now = ctx.occurred_at;
    let command = match action.as_str() {
        "revise" => ContractCommand::Revise(ContractRevised {
            line_items: body
                .line_items
                .ok_or_else(|| Problem::unprocessable("line_items is required"))?,
            starts_at: body
                .starts_at
                .ok_or_else(|| Problem::unprocessable("starts_at is required"))?,
            ends_at: body
                .ends_at
                .ok_or_else(|| Problem::unprocessable("ends_at is required"))?,
        }),
        "send" => ContractCommand::Send,
        "sign" => ContractCommand::Sign {
            signed_by: need(body.signed_by, "signed_by")?,
        },
        "activate" => ContractCommand::Activate { now },
        "amend" => ContractCommand::Amend {
            reason: need(body.reason, "reason")?,
            line_items: body
                .line_items
                .ok_or_else(|| Problem::unprocessable("line_items is required"))?,
            ends_at: body
                .ends_at
                .ok_or_else(|| Problem::unprocessable("ends_at is required"))?,
            now,
        },
        "terminate" => ContractCommand::Terminate {
            reason: need(body.reason, "reason")?,
            now,
        },
        "expire" => ContractCommand::Expire { now },
        _ => return Err(Problem::not_found(format!("no contract action {action:?}"))),
    };
    let expected = expected_version(&headers)?;
    let outcome = state
        .portal
        .contract_command(&ctx, &id, command, expected)
        .await
        .map_err(refusal(expected))?;
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

// ---- entitlements ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitlementsQuery {
    org: String,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
    as_of: Option<String>,
    as_of_position: Option<u64>,
}

async fn entitlements_of(state: &AppState, org: &str) -> Result<EntitlementsView, Problem> {
    Ok(
        CommercialView::entitlements(&state.db.pool, org, Utc::now())
            .await?
            .into(),
    )
}

/// A quota in force this month and its use.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaUse {
    amount: i64,
    /// `hard` or `soft`.
    #[schema(value_type = String)]
    enforcement: Enforcement,
    used: i64,
    /// `amount - used`, never below 0.
    remaining: i64,
}

/// An organization's entitlements: what its contracts in force grant, and the month's use.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementsView {
    organization_id: String,
    /// `YYYY-MM`: the month `usage` counts.
    period: String,
    /// The contracts in force.
    contracts: Vec<String>,
    features: BTreeSet<String>,
    quotas: BTreeMap<String, QuotaUse>,
    limits: BTreeMap<String, i64>,
    usage: BTreeMap<String, i64>,
    /// The moment the answer reflects, when asked with `as_of` / `as_of_position`.
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<AsOf>,
}

impl From<EntitlementsRow> for EntitlementsView {
    fn from(row: EntitlementsRow) -> Self {
        let quotas = row
            .entitlements
            .quotas
            .into_iter()
            .map(|(metric, q)| {
                let used = row.usage.get(&metric).copied().unwrap_or(0);
                let quota = QuotaUse {
                    amount: q.amount,
                    enforcement: q.enforcement,
                    used,
                    remaining: (q.amount - used).max(0),
                };
                (metric, quota)
            })
            .collect();
        Self {
            organization_id: row.organization_id,
            period: row.period,
            contracts: row.contracts,
            features: row.entitlements.features,
            quotas,
            limits: row.entitlements.limits,
            usage: row.usage,
            as_of: None,
        }
    }
}

#[utoipa::path(get, path = "/v1/entitlements", tag = "portal", params(("org" = String, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query), ("as_of" = Option<String>, Query, description = "the model as it stood at this instant (RFC 3339): after the last log position appended before it; the answer's `as_of` names that position and the instant"), ("as_of_position" = Option<u64>, Query, description = "the model as it stood at this log position (after its event); the answer's `as_of` names it and when it was appended")), responses((status = 200, body = EntitlementsView, description = "features, quotas with usage this month (with as_of: that month's, then), limits"), (status = 400, body = Problem), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn entitlements(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<EntitlementsQuery>,
) -> Result<Response, Problem> {
    principal.require("entitlements:read")?;
    principal.tenant(&q.org, &format!("organization {}", q.org))?;
    Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.commercial)
    .await?;
    if let Some(moment) = crate::as_of::resolve(
        &state,
        &state.commercial,
        q.as_of.as_deref(),
        q.as_of_position,
        q.wait_ms,
    )
    .await?
    {
        // Before the first event there is no time to speak of, and nothing in force.
        let at = moment.at.unwrap_or(chrono::DateTime::UNIX_EPOCH);
        let row =
            CommercialView::entitlements_as_of(&state.db.pool, &q.org, moment.position, at).await?;
        let mut body = EntitlementsView::from(row);
        body.as_of = Some(moment);
        return Ok(Json(body).into_response());
    }
    Ok(Json(entitlements_of(&state, &q.org).await?).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckEntitlement {
    org: String,
    feature: String,
    #[serde(default = "one")]
    amount: i64,
}

fn one() -> i64 {
    1
}

/// Allowed or denied, with the reason, from the read model (one indexed read each of the
/// organization's contracts in force and of its usage this month).
#[utoipa::path(post, path = "/v1/entitlements/check", tag = "portal", request_body(content = CheckEntitlement, description = "{org, feature, amount (default 1)}"), responses((status = 200, body = EntitlementDecision), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn check_entitlement(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CheckEntitlement>,
) -> Result<Response, Problem> {
    principal.require("entitlements:read")?;
    principal.tenant(&body.org, &format!("organization {}", body.org))?;
    let row = CommercialView::entitlements(&state.db.pool, &body.org, Utc::now()).await?;
    let decision = row
        .entitlements
        .check(&body.feature, body.amount, &row.usage);
    Ok(Json(EntitlementDecision {
        org: body.org,
        feature: body.feature,
        amount: body.amount,
        allowed: decision.allowed,
        reason: decision.reason,
        remaining: decision.remaining,
    })
    .into_response())
}

/// Whether an organization may use `amount` of `feature` now, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementDecision {
    org: String,
    feature: String,
    amount: i64,
    allowed: bool,
    reason: String,
    /// For quotas: what is left this month; for limits: the limit.
    remaining: Option<i64>,
}

// ---- invoices ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueInvoice {
    contract_id: String,
    /// `YYYY-MM`, a month that is over.
    period: String,
}

#[utoipa::path(post, path = "/v1/invoices", tag = "portal", request_body(content = IssueInvoice, description = "{contract_id, period: YYYY-MM}"), responses((status = 201, body = crate::write::CommandAccepted), (status = 404, body = Problem, description = "no such contract"), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn issue_invoice(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<IssueInvoice>,
) -> Result<Response, Problem> {
    principal.require("billing:write")?;
    let period = Period::parse(&body.period).map_err(Problem::unprocessable)?;
    let (contract_id, contract, _) = load_contract(&state, &principal, &body.contract_id).await?;
    let ctx = context(&principal, &headers, &contract.organization_id);
    let (id, outcome) = state
        .portal
        .issue_invoice(&ctx, &contract_id, period)
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        &id,
        outcome,
        Some(format!("/v1/invoices/{id}")),
    ))
}

/// The invoices list's query: [`ListQuery`] and a status.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceListQuery {
    org: Option<String>,
    /// Only invoices in this status.
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

/// The statuses an invoice may be listed by (as the read model and `GET /v1/invoices/{id}`
/// name them).
const INVOICE_STATUSES: [&str; 4] = ["issued", "open", "paid", "void"];

#[utoipa::path(get, path = "/v1/invoices", tag = "portal", params(("org" = Option<String>, Query), ("status" = Option<String>, Query, description = "only invoices in this status: issued, open (sent to the billing provider), paid or void"), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query), ("min_position" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query)), responses((status = 200, body = Page<InvoiceRowView>), (status = 400, body = Problem, description = "an unknown status")), security(("bearer" = [])))]
pub async fn list_invoices(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(i): ApiQuery<InvoiceListQuery>,
) -> Result<Response, Problem> {
    principal.require("billing:read")?;
    if let Some(status) = i.status.as_deref() {
        if !INVOICE_STATUSES.contains(&status) {
            return Err(Problem::bad_request(format!(
                "status must be one of {}",
                INVOICE_STATUSES.join(", ")
            )));
        }
    }
    let q = ListQuery {
        org: i.org,
        after: i.after,
        limit: i.limit,
        min_position: i.min_position,
        wait_ms: i.wait_ms,
    };
    let limit = paging::limit(q.limit)?;
    q.wait(&state).await?;
    let org = q.scope(&principal)?;
    let rows = CommercialView::invoices(
        &state.db.pool,
        org.as_deref(),
        i.status.as_deref(),
        q.after.as_deref(),
        limit,
    )
    .await?;
    Ok(Json(page_of::<_, InvoiceRowView>(rows, limit)).into_response())
}

/// An invoice as the commercial read model lists it; amounts in minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceRowView {
    id: String,
    organization_id: String,
    contract_id: String,
    /// `YYYY-MM`.
    period: String,
    currency: String,
    total: i64,
    /// `issued`, `open`, `paid` or `void`.
    status: String,
    provider: Option<String>,
    external_id: Option<String>,
    hosted_url: Option<String>,
    due_at: String,
    version: u64,
    updated_at: String,
}

impl From<InvoiceRow> for InvoiceRowView {
    fn from(r: InvoiceRow) -> Self {
        Self {
            id: r.id,
            organization_id: r.organization_id,
            contract_id: r.contract_id,
            period: r.period,
            currency: r.currency,
            total: r.total,
            status: r.status,
            provider: r.provider,
            external_id: r.external_id,
            hosted_url: r.hosted_url,
            due_at: r.due_at,
            version: r.version,
            updated_at: r.updated_at,
        }
    }
}

impl HasId for InvoiceRowView {
    fn id(&self) -> &str {
        &self.id
    }
}

async fn load_invoice(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(String, Invoice, u64), Problem> {
    let id = uuid_id(id, "invoice")?;
    let (invoice, version) = state.portal.invoice(&id).await?;
    let org = invoice
        .issued
        .as_ref()
        .map(|i| i.organization_id.clone())
        .unwrap_or_default();
    principal.tenant(&org, &format!("invoice {id}"))?;
    Ok((id, invoice, version))
}

#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "portal", params(("id" = String, Path)), responses((status = 200, body = InvoiceView, description = "the invoice, its lines and payment"), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show_invoice(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require("billing:read")?;
    let (id, invoice, version) = load_invoice(&state, &principal, &id).await?;
    Ok(Json(invoice_view(&id, invoice, version)).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceActionBody {
    /// The payment's reference, 1 to 200 characters.
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `send` (to the billing provider), `refresh` (ask it for the payment status), `pay`
/// (record a payment received outside the provider), `void`.
#[utoipa::path(post, path = "/v1/invoices/{id}/{action}", tag = "portal", params(("id" = String, Path), ("action" = String, Path, description = "send, refresh, pay or void")), request_body(content = InvoiceActionBody), responses((status = 200, body = crate::write::CommandAccepted), (status = 409, body = Problem), (status = 502, body = Problem)), security(("bearer" = [])))]
pub async fn invoice_action(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require("billing:write")?;
    let (id, invoice, _) = load_invoice(&state, &principal, &id).await?;
    let body: InvoiceActionBody = optional_json(&headers, &body)?;
    let org = invoice
        .issued
        .as_ref()
        .map(|i| i.organization_id.clone())
        .unwrap_or_default();
    let ctx = context(&principal, &headers, &org);
    let outcome = match action.as_str() {
        "send" => state.portal.send_invoice(&ctx, &id).await?,
        "refresh" => {
            let status = state.portal.refresh_payment(&ctx, &id).await?;
            let (invoice, version) = state.portal.invoice(&id).await?;
            let mut view = invoice_view(&id, invoice, version);
            view.provider_status = Some(serde_json::to_value(status).unwrap_or_default());
            return Ok(Json(view).into_response());
        }
        "pay" => {
            let reference = body
                .reference
                .filter(|r| !r.trim().is_empty() && r.len() <= 200)
                .ok_or_else(|| {
                    Problem::unprocessable("reference (1 to 200 characters) is required")
                })?;
            state
                .portal
                .record_payment(&ctx, &id, PaymentNotice::Paid, "manual", &reference)
                .await?
        }
        "void" => {
            let reason = body
                .reason
                .ok_or_else(|| Problem::unprocessable("reason is required"))?;
            state
                .portal
                .record_payment(&ctx, &id, PaymentNotice::Voided, "manual", &reason)
                .await?
        }
        _ => return Err(Problem::not_found(format!("no invoice action {action:?}"))),
    };
    Ok(accepted(StatusCode::OK, &id, outcome, None))
}

// ---- Stripe webhook ----

/// Stripe's events, authenticated by the `Stripe-Signature` HMAC (with a 5-minute tolerance
/// against replays of old deliveries) and processed once per event id.
#[utoipa::path(post, path = "/v1/billing/webhooks/stripe", tag = "portal", params(("Stripe-Signature" = String, Header)), request_body(content = crate::formats::StripeEvent, description = "a Stripe event"), responses((status = 200, body = WebhookReceipt), (status = 400, body = Problem), (status = 503, body = Problem, description = "this deployment receives no Stripe events (STRIPE_WEBHOOK_SECRET is not set)")))]
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let secret = state.stripe_webhook_secret.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook-not-configured",
            "Webhook not configured",
            "set STRIPE_WEBHOOK_SECRET to receive Stripe events",
        )
    })?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Problem::bad_request("the Stripe-Signature header is missing"))?;
    let now = Utc::now().timestamp();
    verify_stripe_signature(
        signature,
        &body,
        &secret.0,
        now,
        quantus_infra::billing::STRIPE_SIGNATURE_TOLERANCE_SECONDS,
    )
    .map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "signature-invalid",
            "Signature invalid",
            e.to_string(),
        )
    })?;
    let event = parse_stripe_event(&body).map_err(|e| Problem::bad_request(e.to_string()))?;
    let notice = match event.event_type.as_str() {
        "invoice.paid" | "invoice.payment_succeeded" => PaymentNotice::Paid,
        "invoice.payment_failed" => PaymentNotice::Failed,
        "invoice.voided" => PaymentNotice::Voided,
        _ => PaymentNotice::Other,
    };
    let invoice_id = event
        .quantus_invoice_id
        .as_deref()
        .and_then(|i| Uuid::parse_str(i).ok())
        .map(|u| u.to_string());
    let tenant = match &invoice_id {
        Some(id) => match state.portal.invoice(id).await {
            Ok((i, _)) => i.issued.map(|x| x.organization_id),
            Err(_) => None,
        },
        None => None,
    }
    .unwrap_or_else(|| quantus_domain::schema::PLATFORM_TENANT.to_owned());
    let ctx = CommandContext {
        tenant_id: tenant,
        actor: Actor {
            kind: ActorKind::Service,
            id: "stripe".into(),
        },
        occurred_at: quantus_domain::envelope::truncate_to_micros(Utc::now()),
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
    };
    let first = state
        .portal
        .provider_event(&ctx, "stripe", &event.id, invoice_id.as_deref(), notice)
        .await?;
    Ok(Json(WebhookReceipt {
        received: true,
        duplicate: !first,
    })
    .into_response())
}

/// A Stripe event received.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    /// Always true.
    received: bool,
    /// Whether this event was received before (Stripe retries): nothing was done again.
    duplicate: bool,
}

// ---- self-service ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeQuery {
    after: Option<String>,
    limit: Option<u32>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

impl MeQuery {
    /// The same page, of organization `org`.
    fn of(self, org: String) -> ListQuery {
        ListQuery {
            org: Some(org),
            after: self.after,
            limit: self.limit,
            min_position: self.min_position,
            wait_ms: self.wait_ms,
        }
    }
}

#[utoipa::path(get, path = "/v1/me/contracts", tag = "portal", responses((status = 200, body = Page<ContractRowView>, description = "the caller's organization's contracts")), security(("bearer" = [])))]
pub async fn my_contracts(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<MeQuery>,
) -> Result<Response, Problem> {
    let org = my_org(&principal)?;
    let q = q.of(org);
    let q = ContractListQuery {
        org: q.org,
        status: None,
        after: q.after,
        limit: q.limit,
        min_position: q.min_position,
        wait_ms: q.wait_ms,
        as_of: None,
        as_of_position: None,
    };
    list_contracts(State(state), Extension(principal), ApiQuery(q)).await
}

#[utoipa::path(get, path = "/v1/me/invoices", tag = "portal", responses((status = 200, body = Page<InvoiceRowView>, description = "the caller's organization's invoices")), security(("bearer" = [])))]
pub async fn my_invoices(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<MeQuery>,
) -> Result<Response, Problem> {
    let org = my_org(&principal)?;
    let q = q.of(org);
    let q = InvoiceListQuery {
        org: q.org,
        status: None,
        after: q.after,
        limit: q.limit,
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    };
    list_invoices(State(state), Extension(principal), ApiQuery(q)).await
}

#[utoipa::path(get, path = "/v1/me/entitlements", tag = "portal", responses((status = 200, body = EntitlementsView, description = "the caller's organization's entitlements")), security(("bearer" = [])))]
pub async fn my_entitlements(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<MeQuery>,
) -> Result<Response, Problem> {
    principal.require("entitlements:read")?;
    let org = my_org(&principal)?;
    Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.commercial)
    .await?;
    Ok(Json(entitlements_of(&state, &org).await?).into_response())
}

/// The organization's licences, as QuantumLock has them (asked with the Portal's own
/// service-principal token).
#[utoipa::path(get, path = "/v1/me/licenses", tag = "portal", responses((status = 200, body = Page<crate::licensing::LicenseView>, description = "the caller's organization's licences, as QuantumLock answers them"), (status = 502, body = Problem)), security(("bearer" = [])))]
pub async fn my_licenses(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<MeQuery>,
) -> Result<Response, Problem> {
    principal.require("licenses:read")?;
    let org = my_org(&principal)?;
    let quantumlock = state.quantumlock.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "quantumlock-not-configured",
            "QuantumLock not configured",
            "the Portal has no credentials for QuantumLock",
        )
    })?;
    let page = quantumlock
        .licenses_of(&org, q.after.as_deref())
        .await
        .map_err(quantus_commands::CommandError::from)?;
    Ok(Json(page).into_response())
}

#[utoipa::path(get, path = "/v1/me/evidence", tag = "portal", responses((status = 200, body = Page<crate::evidence::BundleView>, description = "the caller's organization's evidence bundles")), security(("bearer" = [])))]
pub async fn my_evidence(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<MeQuery>,
) -> Result<Response, Problem> {
    principal.require("evidence:read")?;
    let org = my_org(&principal)?;
    let limit = paging::limit(q.limit)?;
    Consistency {
        min_position: q.min_position,
        wait_ms: q.wait_ms,
    }
    .wait(&state.jobs)
    .await?;
    let rows = JobsView::bundles_of(&state.db.pool, &org, q.after.as_deref(), limit).await?;
    let page = Page::of(
        rows.into_iter()
            .map(crate::evidence::BundleView::from)
            .collect(),
        limit,
        |r| r.id.as_str(),
    );
    Ok(Json(page).into_response())
}
