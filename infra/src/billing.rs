//! Billing providers: where an issued Portal invoice goes to be collected, and Stripe's
//! webhooks coming back.
//!
//! Two providers implement [`BillingProvider`]: [`BuiltInBilling`], the embedded default (the
//! invoice in our own log is the record; payments are recorded through the API), and
//! [`StripeBilling`], which speaks Stripe's HTTP API directly (form-encoded bodies, a pinned
//! `Stripe-Version`, an `Idempotency-Key` on every POST). Webhook verification and parsing are
//! pure functions at the end of this module.
//!
//! Idempotency of [`StripeBilling::send_invoice`]: every POST carries a key derived from our
//! ids, so a retry within Stripe's 24-hour key window replays the first answer instead of
//! creating twice; for later retries, the customer and the invoice are first looked up through
//! Stripe's search by our id in their metadata (search lags writes by about a minute, which the
//! keys cover), and lines already on a draft invoice are skipped by their line number.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The Stripe API version every request pins (`Stripe-Version`): the version of the OpenAPI
/// spec stripe-mock v0.203.0 embeds, so the tests exercise exactly what production sends.
pub const STRIPE_API_VERSION: &str = "2026-08-26.dahlia";

/// Metadata key carrying our invoice id on Stripe invoices, invoice items and their events.
pub const STRIPE_METADATA_INVOICE_ID: &str = "quantus_invoice_id";
/// Metadata key carrying our customer id on Stripe customers and invoices.
pub const STRIPE_METADATA_CUSTOMER_ID: &str = "quantus_customer_id";
/// Metadata key carrying our organization id on Stripe customers.
pub const STRIPE_METADATA_ORGANIZATION_ID: &str = "quantus_organization_id";
/// Metadata key carrying the line number (0-based) on Stripe invoice items.
pub const STRIPE_METADATA_LINE: &str = "quantus_line";

/// A customer as the billing provider needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingCustomer {
    pub customer_id: String,
    pub organization_id: String,
    pub name: String,
    pub email: String,
    /// ISO 4217, upper-case, e.g. "EUR".
    pub currency: String,
}

/// One line of an invoice; amounts in minor units (cents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingInvoiceLine {
    pub description: String,
    pub quantity: i64,
    pub unit_amount: i64,
    /// `quantity * unit_amount`.
    pub amount: i64,
}

/// An issued invoice, as handed to a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingInvoice {
    /// Ours; providers key their records and idempotency on it.
    pub invoice_id: String,
    pub customer: BillingCustomer,
    /// ISO 4217, upper-case.
    pub currency: String,
    /// The billed month, e.g. "2026-11".
    pub period: String,
    pub lines: Vec<BillingInvoiceLine>,
    /// Sum of the line amounts, minor units.
    pub total: i64,
    pub days_until_due: u32,
}

/// An invoice's payment status at the provider (Stripe's invoice statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Draft,
    Open,
    Paid,
    Uncollectible,
    Void,
}

impl PaymentStatus {
    /// Stripe's name for the status (also the serde form).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Draft => "draft",
            PaymentStatus::Open => "open",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Uncollectible => "uncollectible",
            PaymentStatus::Void => "void",
        }
    }

    /// Parses Stripe's invoice status; `None` for anything else.
    pub fn from_stripe(status: &str) -> Option<Self> {
        match status {
            "draft" => Some(PaymentStatus::Draft),
            "open" => Some(PaymentStatus::Open),
            "paid" => Some(PaymentStatus::Paid),
            "uncollectible" => Some(PaymentStatus::Uncollectible),
            "void" => Some(PaymentStatus::Void),
            _ => None,
        }
    }
}

/// What the provider recorded for a sent invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInvoice {
    /// [`BillingProvider::name`] of the provider that recorded it.
    pub provider: String,
    /// The provider's invoice id (`in_...` at Stripe).
    pub external_id: String,
    /// The provider's customer id (`cus_...` at Stripe).
    pub customer_external_id: String,
    pub status: PaymentStatus,
    /// Where the customer can see and pay the invoice, if the provider hosts a page.
    pub hosted_url: Option<String>,
}

/// Why a billing call failed. Messages never contain the provider's secret key.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// Our own input cannot be sent (checked before any network call): inconsistent amounts,
    /// a malformed id or currency, an id this provider did not issue.
    #[error("invalid billing request: {0}")]
    Invalid(String),
    /// The provider refused the request (HTTP 4xx). `code` is Stripe's error code, or its
    /// error type when it gives no code.
    #[error("billing provider rejected the request (HTTP {status}{}): {message}", code_suffix(.code))]
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The provider could not be reached, timed out, or failed (HTTP 5xx, 429), after retries.
    #[error("billing provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered, but not in the form its API documents.
    #[error("billing provider answered something unexpected: {0}")]
    Malformed(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref()
        .map(|c| format!(", {c}"))
        .unwrap_or_default()
}

/// Where invoices are sent for collection.
#[async_trait]
pub trait BillingProvider: Send + Sync {
    /// "builtin" | "stripe".
    fn name(&self) -> &'static str;
    /// Sends the invoice (creating the provider-side customer if needed) and returns what the
    /// provider recorded. Safe to call again for the same invoice_id (idempotent).
    async fn send_invoice(&self, invoice: &BillingInvoice)
        -> Result<ProviderInvoice, BillingError>;
    /// The provider's current payment status of an invoice it recorded.
    async fn payment_status(&self, external_id: &str) -> Result<PaymentStatus, BillingError>;
}

/// Checks an invoice before it goes anywhere: ids usable in idempotency keys and queries, an
/// ISO currency, at least one line, `amount = quantity * unit_amount` per line (no overflow),
/// `total = sum of amounts`.
pub fn validate_invoice(invoice: &BillingInvoice) -> Result<(), BillingError> {
    check_id("invoice_id", &invoice.invoice_id)?;
    check_id("customer_id", &invoice.customer.customer_id)?;
    check_id("organization_id", &invoice.customer.organization_id)?;
    check_currency(&invoice.currency)?;
    if invoice.period.trim().is_empty() {
        return Err(BillingError::Invalid(format!(
            "invoice {} has no period",
            invoice.invoice_id
        )));
    }
    if invoice.lines.is_empty() {
        return Err(BillingError::Invalid(format!(
            "invoice {} has no lines",
            invoice.invoice_id
        )));
    }
    let mut sum: i64 = 0;
    for (n, line) in invoice.lines.iter().enumerate() {
        if line.quantity < 0 {
            return Err(BillingError::Invalid(format!(
                "invoice {} line {n}: quantity {} is negative",
                invoice.invoice_id, line.quantity
            )));
        }
        let amount = line.quantity.checked_mul(line.unit_amount).ok_or_else(|| {
            BillingError::Invalid(format!(
                "invoice {} line {n}: {} x {} overflows",
                invoice.invoice_id, line.quantity, line.unit_amount
            ))
        })?;
        if amount != line.amount {
            return Err(BillingError::Invalid(format!(
                "invoice {} line {n}: amount {} is not quantity {} x unit amount {} = {amount}",
                invoice.invoice_id, line.amount, line.quantity, line.unit_amount
            )));
        }
        sum = sum.checked_add(amount).ok_or_else(|| {
            BillingError::Invalid(format!(
                "invoice {}: the sum of the lines overflows",
                invoice.invoice_id
            ))
        })?;
    }
    if sum != invoice.total {
        return Err(BillingError::Invalid(format!(
            "invoice {}: total {} is not the sum of the lines {sum}",
            invoice.invoice_id, invoice.total
        )));
    }
    Ok(())
}

/// Ids travel in idempotency keys (HTTP headers) and search queries: keep them plain.
fn check_id(what: &str, id: &str) -> Result<(), BillingError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if id.is_empty() || id.len() > 200 || !id.chars().all(plain) {
        return Err(BillingError::Invalid(format!(
            "{what} {id:?} must be 1-200 characters of A-Z a-z 0-9 - _ . :"
        )));
    }
    Ok(())
}

fn check_currency(currency: &str) -> Result<(), BillingError> {
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(BillingError::Invalid(format!(
            "currency {currency:?} is not an ISO 4217 code"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Built-in
// ---------------------------------------------------------------------------------------------

/// The embedded default: no external calls. The invoice in our log is the record; payments are
/// recorded through the API, so the status here is always `Open`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltInBilling;

const BUILTIN_PREFIX: &str = "builtin-";

#[async_trait]
impl BillingProvider for BuiltInBilling {
    fn name(&self) -> &'static str {
        "builtin"
    }

    async fn send_invoice(
        &self,
        invoice: &BillingInvoice,
    ) -> Result<ProviderInvoice, BillingError> {
        validate_invoice(invoice)?;
        Ok(ProviderInvoice {
            provider: self.name().to_owned(),
            external_id: format!("{BUILTIN_PREFIX}{}", invoice.invoice_id),
            customer_external_id: format!("{BUILTIN_PREFIX}{}", invoice.customer.customer_id),
            status: PaymentStatus::Open,
            hosted_url: None,
        })
    }

    async fn payment_status(&self, external_id: &str) -> Result<PaymentStatus, BillingError> {
        match external_id.strip_prefix(BUILTIN_PREFIX) {
            Some(id) if check_id("invoice_id", id).is_ok() => Ok(PaymentStatus::Open),
            _ => Err(BillingError::Invalid(format!(
                "{external_id:?} is not an invoice id the built-in provider issued (expected \"{BUILTIN_PREFIX}<invoice id>\")"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stripe
// ---------------------------------------------------------------------------------------------

/// Stripe over its HTTP API (<https://docs.stripe.com/api>), or stripe-mock for tests.
pub struct StripeBilling {
    base_url: String,
    secret_key: Zeroizing<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for StripeBilling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeBilling")
            .field("base_url", &self.base_url)
            .field("secret_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Retries after a transient failure (network, 5xx, 429, 409 lock conflicts); every retried
/// request is a GET or carries an idempotency key.
const STRIPE_MAX_RETRIES: u32 = 2;
const STRIPE_RETRY_BASE_DELAY: Duration = Duration::from_millis(500);
const STRIPE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per attempt (Stripe's own libraries allow up to 80 s; its p99 is far below this).
const STRIPE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Page size of list calls (Stripe's maximum).
const STRIPE_PAGE_LIMIT: &str = "100";
/// Pages of a list call before giving up (a runaway loop guard: 100,000 objects).
const STRIPE_MAX_PAGES: usize = 1000;

impl StripeBilling {
    /// `base_url` is e.g. "https://api.stripe.com" or stripe-mock's URL; `secret_key` a
    /// secret (`sk_...`) or restricted (`rk_...`) key. Live keys need an https URL; test keys
    /// may also use http (stripe-mock, a test container).
    pub fn new(base_url: &str, secret_key: &str) -> Result<Self, BillingError> {
        let key_ok = (secret_key.starts_with("sk_") || secret_key.starts_with("rk_"))
            && secret_key.len() > 3
            && secret_key.chars().all(|c| c.is_ascii_graphic());
        if !key_ok {
            // Never echo the key itself.
            return Err(BillingError::Invalid(
                "the Stripe secret key must look like sk_... or rk_... (printable ASCII, no spaces)"
                    .to_owned(),
            ));
        }
        let test_key = secret_key.starts_with("sk_test_") || secret_key.starts_with("rk_test_");
        let url = reqwest::Url::parse(base_url)
            .map_err(|e| BillingError::Invalid(format!("Stripe API base URL {base_url:?}: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if test_key => {}
            "http" => {
                return Err(BillingError::Invalid(format!(
                    "Stripe API base URL {base_url:?} is plain http: only test-mode keys may be sent over http"
                )))
            }
            other => {
                return Err(BillingError::Invalid(format!(
                    "Stripe API base URL {base_url:?} has scheme {other:?}, expected https"
                )))
            }
        }
        if url.query().is_some() || url.fragment().is_some() || url.host_str().is_none() {
            return Err(BillingError::Invalid(format!(
                "Stripe API base URL {base_url:?} must be scheme://host[:port][/path], without query or fragment"
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(STRIPE_CONNECT_TIMEOUT)
            .timeout(STRIPE_REQUEST_TIMEOUT)
            .user_agent(concat!("quantus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BillingError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(StripeBilling {
            base_url: url.as_str().trim_end_matches('/').to_owned(),
            secret_key: Zeroizing::new(secret_key.to_owned()),
            client,
        })
    }

    /// The API base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Removes the secret key from text that came back from the network (stripe-mock, for
    /// one, echoes a refused `Authorization` header in its error message).
    fn redact(&self, text: &str) -> String {
        text.replace(self.secret_key.as_str(), "[redacted]")
    }

    /// One API call with retries. `form` is sent form-encoded (POST); `query` on the URL.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        form: Option<&[(String, String)]>,
        idempotency_key: Option<&str>,
    ) -> Result<T, BillingError> {
        let url = format!("{}{path}", self.base_url);
        let retriable = method == reqwest::Method::GET || idempotency_key.is_some();
        let mut attempt = 0;
        loop {
            let outcome = self
                .call_once::<T>(&method, &url, query, form, idempotency_key)
                .await;
            let error = match outcome {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !(retriable && error.transient && attempt < STRIPE_MAX_RETRIES) {
                return Err(error.error);
            }
            let delay = STRIPE_RETRY_BASE_DELAY * 2u32.pow(attempt);
            tracing::warn!(%method, path, attempt, error = %error.error, "Stripe call failed; retrying in {delay:?}");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        method: &reqwest::Method,
        url: &str,
        query: &[(&str, &str)],
        form: Option<&[(String, String)]>,
        idempotency_key: Option<&str>,
    ) -> Result<T, AttemptError> {
        let mut request = self
            .client
            .request(method.clone(), url)
            .bearer_auth(self.secret_key.as_str())
            .header("Stripe-Version", STRIPE_API_VERSION);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| AttemptError {
            transient: true,
            error: BillingError::Unavailable(
                self.redact(&format!("{method} {url}: {}", error_chain(&e))),
            ),
        })?;
        let status = response.status();
        let should_retry = response
            .headers()
            .get("Stripe-Should-Retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        let body = response.bytes().await.map_err(|e| AttemptError {
            transient: true,
            error: BillingError::Unavailable(self.redact(&format!(
                "{method} {url}: reading the answer (HTTP {status}): {}",
                error_chain(&e)
            ))),
        })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| AttemptError {
                transient: false,
                error: BillingError::Malformed(format!(
                    "{method} {url}: HTTP {status} with a body that is not the expected object: {e}"
                )),
            });
        }
        let (code, message) = self.error_details(&body);
        let status_code = status.as_u16();
        let server_side = status.is_server_error() || status_code == 429;
        // Stripe's own hint wins; otherwise 5xx, 429 and 409 (a concurrent request with the same
        // idempotency key, or a lock timeout) are worth another try.
        let transient = should_retry.unwrap_or(server_side || status_code == 409);
        let error = if server_side {
            BillingError::Unavailable(format!("{method} {url}: HTTP {status_code}: {message}"))
        } else {
            BillingError::Rejected {
                status: status_code,
                code,
                message,
            }
        };
        Err(AttemptError { transient, error })
    }

    /// Stripe's `{"error": {"type", "code", "message", "param"}}`, redacted; a short excerpt of
    /// anything else.
    fn error_details(&self, body: &[u8]) -> (Option<String>, String) {
        #[derive(Deserialize)]
        struct Envelope {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            #[serde(rename = "type")]
            error_type: Option<String>,
            code: Option<String>,
            message: Option<String>,
            param: Option<String>,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => {
                let mut message = error.message.unwrap_or_else(|| "(no message)".to_owned());
                if let Some(param) = error.param {
                    message.push_str(&format!(" (param: {param})"));
                }
                (error.code.or(error.error_type), self.redact(&message))
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let excerpt: String = text.chars().take(300).collect();
                (
                    None,
                    self.redact(&format!("answer is not a Stripe error object: {excerpt:?}")),
                )
            }
        }
    }

    /// Every object of a list endpoint (follows `has_more` with `starting_after`).
    async fn list_all<T: DeserializeOwned + HasId>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
    ) -> Result<Vec<T>, BillingError> {
        let mut all: Vec<T> = Vec::new();
        for _ in 0..STRIPE_MAX_PAGES {
            let last = all.last().map(|o| o.id().to_owned());
            let mut query: Vec<(&str, &str)> = filters.to_vec();
            query.push(("limit", STRIPE_PAGE_LIMIT));
            if let Some(last) = last.as_deref() {
                query.push(("starting_after", last));
            }
            let page: StripeList<T> = self
                .call(reqwest::Method::GET, path, &query, None, None)
                .await?;
            let more = page.has_more && !page.data.is_empty();
            all.extend(page.data);
            if !more {
                return Ok(all);
            }
        }
        Err(BillingError::Malformed(format!(
            "GET {path} still has more after {STRIPE_MAX_PAGES} pages"
        )))
    }

    /// Objects whose `metadata[key]` is `value`, through Stripe's search (one page: we expect
    /// at most one). Exact match is re-checked here; search is a full-text index.
    async fn search_by_metadata<T: DeserializeOwned + HasMetadata>(
        &self,
        path: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<T>, BillingError> {
        let query = format!("metadata['{key}']:'{}'", search_escape(value));
        let page: StripeList<T> = self
            .call(
                reqwest::Method::GET,
                path,
                &[("query", query.as_str()), ("limit", "10")],
                None,
                None,
            )
            .await?;
        Ok(page
            .data
            .into_iter()
            .filter(|o| o.metadata_value(key) == Some(value))
            .collect())
    }

    /// The Stripe customer for ours: found by metadata, or created (idempotently).
    async fn ensure_customer(&self, customer: &BillingCustomer) -> Result<String, BillingError> {
        let found: Vec<StripeCustomer> = self
            .search_by_metadata(
                "/v1/customers/search",
                STRIPE_METADATA_CUSTOMER_ID,
                &customer.customer_id,
            )
            .await?;
        if let Some(existing) = found.into_iter().next() {
            return Ok(existing.id);
        }
        let mut form = vec![
            ("name".to_owned(), customer.name.clone()),
            (
                format!("metadata[{STRIPE_METADATA_CUSTOMER_ID}]"),
                customer.customer_id.clone(),
            ),
            (
                format!("metadata[{STRIPE_METADATA_ORGANIZATION_ID}]"),
                customer.organization_id.clone(),
            ),
        ];
        if !customer.email.is_empty() {
            form.push(("email".to_owned(), customer.email.clone()));
        }
        let created: StripeCustomer = self
            .call(
                reqwest::Method::POST,
                "/v1/customers",
                &[],
                Some(&form),
                Some(&format!("quantus-customer-{}", customer.customer_id)),
            )
            .await?;
        expect_prefix("customer", &created.id, "cus_")?;
        Ok(created.id)
    }

    async fn create_draft(
        &self,
        invoice: &BillingInvoice,
        customer_external_id: &str,
    ) -> Result<StripeInvoice, BillingError> {
        let form = vec![
            ("customer".to_owned(), customer_external_id.to_owned()),
            ("currency".to_owned(), invoice.currency.to_ascii_lowercase()),
            ("collection_method".to_owned(), "send_invoice".to_owned()),
            (
                "days_until_due".to_owned(),
                invoice.days_until_due.to_string(),
            ),
            // We finalize ourselves once every line is on it; Stripe must not do it earlier.
            ("auto_advance".to_owned(), "false".to_owned()),
            // Only the items we attach below, never stray pending items of the customer.
            (
                "pending_invoice_items_behavior".to_owned(),
                "exclude".to_owned(),
            ),
            ("description".to_owned(), invoice.period.clone()),
            (
                format!("metadata[{STRIPE_METADATA_INVOICE_ID}]"),
                invoice.invoice_id.clone(),
            ),
            (
                format!("metadata[{STRIPE_METADATA_CUSTOMER_ID}]"),
                invoice.customer.customer_id.clone(),
            ),
        ];
        let created: StripeInvoice = self
            .call(
                reqwest::Method::POST,
                "/v1/invoices",
                &[],
                Some(&form),
                Some(&format!("quantus-invoice-{}", invoice.invoice_id)),
            )
            .await?;
        expect_prefix("invoice", &created.id, "in_")?;
        Ok(created)
    }

    /// Adds the lines not yet on the draft (line numbers in item metadata).
    async fn add_missing_lines(
        &self,
        invoice: &BillingInvoice,
        draft_id: &str,
        customer_external_id: &str,
    ) -> Result<(), BillingError> {
        let present: BTreeSet<String> = self
            .list_all::<StripeInvoiceItem>("/v1/invoiceitems", &[("invoice", draft_id)])
            .await?
            .into_iter()
            .filter(|item| {
                item.metadata_value(STRIPE_METADATA_INVOICE_ID) == Some(invoice.invoice_id.as_str())
            })
            .filter_map(|item| item.metadata_value(STRIPE_METADATA_LINE).map(str::to_owned))
            .collect();
        for (n, line) in invoice.lines.iter().enumerate() {
            if present.contains(&n.to_string()) {
                continue;
            }
            // quantity x unit_amount_decimal: the pinned API version has no integer
            // `unit_amount` on invoice items; the decimal form of an integer is exact.
            let form = vec![
                ("invoice".to_owned(), draft_id.to_owned()),
                ("customer".to_owned(), customer_external_id.to_owned()),
                ("currency".to_owned(), invoice.currency.to_ascii_lowercase()),
                ("description".to_owned(), line.description.clone()),
                ("quantity".to_owned(), line.quantity.to_string()),
                (
                    "unit_amount_decimal".to_owned(),
                    line.unit_amount.to_string(),
                ),
                (
                    format!("metadata[{STRIPE_METADATA_INVOICE_ID}]"),
                    invoice.invoice_id.clone(),
                ),
                (format!("metadata[{STRIPE_METADATA_LINE}]"), n.to_string()),
            ];
            let item: StripeInvoiceItem = self
                .call(
                    reqwest::Method::POST,
                    "/v1/invoiceitems",
                    &[],
                    Some(&form),
                    Some(&format!("quantus-invoice-{}-item-{n}", invoice.invoice_id)),
                )
                .await?;
            expect_prefix("invoice item", &item.id, "ii_")?;
        }
        Ok(())
    }

    async fn finalize(
        &self,
        invoice: &BillingInvoice,
        draft_id: &str,
    ) -> Result<StripeInvoice, BillingError> {
        let form = vec![("auto_advance".to_owned(), "false".to_owned())];
        self.call(
            reqwest::Method::POST,
            &format!("/v1/invoices/{draft_id}/finalize"),
            &[],
            Some(&form),
            Some(&format!("quantus-invoice-{}-finalize", invoice.invoice_id)),
        )
        .await
    }

    fn recorded(
        &self,
        invoice: StripeInvoice,
        customer_external_id: String,
    ) -> Result<ProviderInvoice, BillingError> {
        let status = invoice.payment_status()?;
        Ok(ProviderInvoice {
            provider: self.name().to_owned(),
            external_id: invoice.id,
            customer_external_id,
            status,
            hosted_url: invoice.hosted_invoice_url,
        })
    }
}

#[async_trait]
impl BillingProvider for StripeBilling {
    fn name(&self) -> &'static str {
        "stripe"
    }

    /// Customer (search, else create), invoice (search, else create a draft), the missing
    /// items, finalize. An invoice Stripe already finalized is returned as it is. Finalizing
    /// with `auto_advance=false` makes the invoice `open` with its hosted page but does not
    /// email it: the hosted URL is what the Portal hands out. Needs Stripe search, which
    /// Stripe does not offer to accounts in India (there this fails as `Rejected`).
    async fn send_invoice(
        &self,
        invoice: &BillingInvoice,
    ) -> Result<ProviderInvoice, BillingError> {
        validate_invoice(invoice)?;
        let customer_external_id = self.ensure_customer(&invoice.customer).await?;
        let existing: Option<StripeInvoice> = self
            .search_by_metadata(
                "/v1/invoices/search",
                STRIPE_METADATA_INVOICE_ID,
                &invoice.invoice_id,
            )
            .await?
            .into_iter()
            .next();
        let draft = match existing {
            Some(found) if found.status.as_deref() != Some("draft") => {
                tracing::info!(
                    invoice_id = invoice.invoice_id,
                    external_id = found.id,
                    "invoice already at Stripe"
                );
                return self.recorded(found, customer_external_id);
            }
            Some(found) => found,
            None => self.create_draft(invoice, &customer_external_id).await?,
        };
        self.add_missing_lines(invoice, &draft.id, &customer_external_id)
            .await?;
        let finalized = self.finalize(invoice, &draft.id).await?;
        if finalized.id != draft.id {
            return Err(BillingError::Malformed(format!(
                "finalizing {} answered with invoice {}",
                draft.id, finalized.id
            )));
        }
        tracing::info!(
            invoice_id = invoice.invoice_id,
            external_id = finalized.id,
            status = finalized.status.as_deref().unwrap_or("?"),
            "invoice sent to Stripe"
        );
        self.recorded(finalized, customer_external_id)
    }

    async fn payment_status(&self, external_id: &str) -> Result<PaymentStatus, BillingError> {
        let plain = external_id.len() > 3
            && external_id.starts_with("in_")
            && external_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return Err(BillingError::Invalid(format!(
                "{external_id:?} is not a Stripe invoice id (in_...)"
            )));
        }
        let invoice: StripeInvoice = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/invoices/{external_id}"),
                &[],
                None,
                None,
            )
            .await?;
        invoice.payment_status()
    }
}

/// One failed attempt, and whether another is worth it.
struct AttemptError {
    transient: bool,
    error: BillingError,
}

/// An error and its causes, `a: b: c` (reqwest's own Display stops at the outermost).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Stripe's search query language quotes strings with `'`; escape quotes and backslashes.
fn search_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

fn expect_prefix(what: &str, id: &str, prefix: &str) -> Result<(), BillingError> {
    if id.starts_with(prefix) {
        Ok(())
    } else {
        Err(BillingError::Malformed(format!(
            "Stripe returned {what} id {id:?}, expected {prefix}..."
        )))
    }
}

/// A page of a list or search call.
#[derive(Deserialize)]
struct StripeList<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

trait HasId {
    fn id(&self) -> &str;
}

trait HasMetadata {
    fn metadata(&self) -> &serde_json::Map<String, serde_json::Value>;
    fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata().get(key).and_then(serde_json::Value::as_str)
    }
}

macro_rules! stripe_object {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        struct $name {
            id: String,
            #[serde(default)]
            metadata: serde_json::Map<String, serde_json::Value>,
            $($field: $ty,)*
        }
        impl HasId for $name {
            fn id(&self) -> &str {
                &self.id
            }
        }
        impl HasMetadata for $name {
            fn metadata(&self) -> &serde_json::Map<String, serde_json::Value> {
                &self.metadata
            }
        }
    };
}

stripe_object!(StripeCustomer {});
stripe_object!(StripeInvoiceItem {});
stripe_object!(StripeInvoice {
    status: Option<String>,
    hosted_invoice_url: Option<String>,
});

impl StripeInvoice {
    fn payment_status(&self) -> Result<PaymentStatus, BillingError> {
        let status = self.status.as_deref().ok_or_else(|| {
            BillingError::Malformed(format!("Stripe invoice {} has no status", self.id))
        })?;
        PaymentStatus::from_stripe(status).ok_or_else(|| {
            BillingError::Malformed(format!(
                "Stripe invoice {} has unknown status {status:?}",
                self.id
            ))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

/// Stripe's default: a signed event older (or newer) than this is refused.
pub const STRIPE_SIGNATURE_TOLERANCE_SECONDS: i64 = 300;

/// Why a webhook delivery is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(String),
    #[error("Stripe-Signature header has no v1 signature")]
    NoSignature,
    #[error("no v1 signature in Stripe-Signature matches the payload")]
    Mismatch,
    #[error("Stripe-Signature timestamp is {age} s old, beyond the tolerance")]
    Stale { age: i64 },
    #[error("Stripe-Signature timestamp is {ahead} s in the future, beyond the tolerance")]
    Future { ahead: i64 },
    #[error("webhook payload is not a Stripe event: {0}")]
    BadPayload(String),
}

fn stripe_signature(payload: &[u8], secret: &str, t: i64) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

/// Verifies a `Stripe-Signature` header (`t=<unix>,v1=<hex>[,v1=...][,v0=...]`) per Stripe's
/// docs: HMAC-SHA256 with the endpoint secret over `"{t}.{payload}"`, any v1 matching
/// (constant-time compare), |now - t| <= tolerance. The signature is checked before the time,
/// so `Stale`/`Future` are only reported for authentic deliveries (replays, clock skew).
pub fn verify_stripe_signature(
    header: &str,
    payload: &[u8],
    secret: &str,
    now_unix: i64,
    tolerance_seconds: i64,
) -> Result<(), WebhookError> {
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<&str> = Vec::new();
    for element in header.split(',') {
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let (key, value) = element.split_once('=').ok_or_else(|| {
            WebhookError::Malformed(format!("element {element:?} is not key=value"))
        })?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(WebhookError::Malformed("more than one t".to_owned()));
                }
                let t = value.parse::<i64>().map_err(|_| {
                    WebhookError::Malformed(format!("t={value:?} is not a unix timestamp"))
                })?;
                timestamp = Some(t);
            }
            "v1" => signatures.push(value),
            // v0 (test-mode legacy scheme) and future schemes: not ours to check.
            _ => {}
        }
    }
    let t = timestamp.ok_or_else(|| WebhookError::Malformed("no t=<timestamp>".to_owned()))?;
    if signatures.is_empty() {
        return Err(WebhookError::NoSignature);
    }
    let expected = stripe_signature(payload, secret, t);
    let mut matched = subtle::Choice::from(0u8);
    for candidate in signatures {
        // A v1 that is not hex cannot match; keep checking the others.
        if let Ok(bytes) = hex::decode(candidate) {
            matched |= bytes.as_slice().ct_eq(&expected);
        }
    }
    if !bool::from(matched) {
        return Err(WebhookError::Mismatch);
    }
    let age = now_unix.saturating_sub(t);
    if age > tolerance_seconds {
        return Err(WebhookError::Stale { age });
    }
    if age < -tolerance_seconds {
        return Err(WebhookError::Future { ahead: -age });
    }
    Ok(())
}

/// Builds a header as Stripe would (for tests and for `quantus` tooling).
pub fn stripe_signature_header(payload: &[u8], secret: &str, t: i64) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(stripe_signature(payload, secret, t))
    )
}

/// The fields of a Stripe event the Portal acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeEvent {
    /// `evt_...`; Stripe may deliver an event more than once, so handlers dedupe on it.
    pub id: String,
    /// e.g. "invoice.paid".
    pub event_type: String,
    pub created: i64,
    /// `data.object.id`, e.g. `in_...`.
    pub object_id: String,
    /// `data.object.status`, when the object has one.
    pub object_status: Option<String>,
    /// `data.object.metadata.quantus_invoice_id`.
    pub quantus_invoice_id: Option<String>,
}

/// Parses the event a (verified) webhook delivered.
pub fn parse_stripe_event(payload: &[u8]) -> Result<StripeEvent, WebhookError> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| WebhookError::BadPayload(format!("not JSON: {e}")))?;
    let text = |pointer: &str| value.pointer(pointer).and_then(serde_json::Value::as_str);
    let required = |pointer: &str| {
        text(pointer)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| WebhookError::BadPayload(format!("no string at {pointer}")))
    };
    let id = required("/id")?;
    let event_type = required("/type")?;
    let created = value
        .pointer("/created")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| WebhookError::BadPayload("no integer at /created".to_owned()))?;
    let object_id = required("/data/object/id")?;
    Ok(StripeEvent {
        id,
        event_type,
        created,
        object_id,
        object_status: text("/data/object/status").map(str::to_owned),
        quantus_invoice_id: text(&format!(
            "/data/object/metadata/{STRIPE_METADATA_INVOICE_ID}"
        ))
        .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const PAYLOAD: &[u8] = br#"{"id":"evt_1"}"#;
    const T: i64 = 1_700_000_000;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // python3: hmac.new(b"whsec_test_secret", b'1700000000.{"id":"evt_1"}', sha256).hexdigest()
        assert_eq!(
            stripe_signature_header(PAYLOAD, SECRET, T),
            "t=1700000000,v1=248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a"
        );
    }

    #[test]
    fn valid_signature_verifies() {
        let header = stripe_signature_header(PAYLOAD, SECRET, T);
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, SECRET, T + 10, 300),
            Ok(())
        );
        // Exactly at the edge of the tolerance, both ways.
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, SECRET, T + 300, 300),
            Ok(())
        );
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, SECRET, T - 300, 300),
            Ok(())
        );
        // Spaces after commas, as some proxies rewrite headers.
        let spaced = header.replace(',', ", ");
        assert_eq!(
            verify_stripe_signature(&spaced, PAYLOAD, SECRET, T, 300),
            Ok(())
        );
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let header = stripe_signature_header(PAYLOAD, "whsec_other", T);
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, SECRET, T, 300),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn tampered_body_is_a_mismatch() {
        let header = stripe_signature_header(PAYLOAD, SECRET, T);
        assert_eq!(
            verify_stripe_signature(&header, br#"{"id":"evt_2"}"#, SECRET, T, 300),
            Err(WebhookError::Mismatch)
        );
        // A tampered timestamp breaks the signature too (it is signed).
        let shifted = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify_stripe_signature(&shifted, PAYLOAD, SECRET, T, 300),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn stale_beyond_tolerance_is_refused() {
        let header = stripe_signature_header(PAYLOAD, SECRET, T);
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, SECRET, T + 301, 300),
            Err(WebhookError::Stale { age: 301 })
        );
    }

    #[test]
    fn future_beyond_tolerance_is_refused() {
        let header = stripe_signature_header(PAYLOAD, SECRET, T);
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, SECRET, T - 301, 300),
            Err(WebhookError::Future { ahead: 301 })
        );
    }

    #[test]
    fn one_valid_among_several_v1_is_enough() {
        let good = stripe_signature_header(PAYLOAD, SECRET, T);
        let good_sig = good.split_once(",v1=").unwrap().1;
        let bad_sig = hex::encode(stripe_signature(PAYLOAD, "whsec_rolled", T));
        // Stripe sends one v1 per active secret while a secret is being rolled.
        let header = format!("t={T},v1={bad_sig},v1=nothex,v1={good_sig},v0=00ff");
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, SECRET, T, 300),
            Ok(())
        );
        let none_good = format!("t={T},v1={bad_sig},v1=nothex");
        assert_eq!(
            verify_stripe_signature(&none_good, PAYLOAD, SECRET, T, 300),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn missing_or_bad_timestamp_is_malformed() {
        let good = stripe_signature_header(PAYLOAD, SECRET, T);
        let sig = good.split_once(",v1=").unwrap().1;
        for header in [
            format!("v1={sig}"),
            format!("t=yesterday,v1={sig}"),
            format!("t={T},t={T},v1={sig}"),
            format!("t={T},v1"),
            String::new(),
        ] {
            assert!(
                matches!(
                    verify_stripe_signature(&header, PAYLOAD, SECRET, T, 300),
                    Err(WebhookError::Malformed(_))
                ),
                "{header:?}"
            );
        }
    }

    #[test]
    fn v0_only_has_no_signature() {
        let good = stripe_signature_header(PAYLOAD, SECRET, T);
        let sig = good.split_once(",v1=").unwrap().1;
        assert_eq!(
            verify_stripe_signature(&format!("t={T},v0={sig}"), PAYLOAD, SECRET, T, 300),
            Err(WebhookError::NoSignature)
        );
    }

    #[test]
    fn parses_an_invoice_event() {
        let payload =
            br#"{"id":"evt_1","object":"event","type":"invoice.paid","created":1700000000,
            "data":{"object":{"id":"in_1","object":"invoice","status":"paid",
            "metadata":{"quantus_invoice_id":"inv-42"}}}}"#;
        assert_eq!(
            parse_stripe_event(payload).unwrap(),
            StripeEvent {
                id: "evt_1".into(),
                event_type: "invoice.paid".into(),
                created: 1_700_000_000,
                object_id: "in_1".into(),
                object_status: Some("paid".into()),
                quantus_invoice_id: Some("inv-42".into()),
            }
        );
        let bare = br#"{"id":"evt_2","type":"customer.created","created":1,"data":{"object":{"id":"cus_1"}}}"#;
        let event = parse_stripe_event(bare).unwrap();
        assert_eq!(
            (event.object_status, event.quantus_invoice_id),
            (None, None)
        );
        for bad in [
            &b"not json"[..],
            br#"{"type":"invoice.paid","created":1,"data":{"object":{"id":"in_1"}}}"#,
            br#"{"id":"evt_1","type":"invoice.paid","created":"1","data":{"object":{"id":"in_1"}}}"#,
            br#"{"id":"evt_1","type":"invoice.paid","created":1,"data":{}}"#,
        ] {
            assert!(matches!(parse_stripe_event(bad), Err(WebhookError::BadPayload(_))));
        }
    }

    fn invoice() -> BillingInvoice {
        BillingInvoice {
            invoice_id: "inv-1".into(),
            customer: BillingCustomer {
                customer_id: "cust-1".into(),
                organization_id: "org-1".into(),
                name: "Acme".into(),
                email: "billing@acme.test".into(),
                currency: "EUR".into(),
            },
            currency: "EUR".into(),
            period: "2026-11".into(),
            lines: vec![
                BillingInvoiceLine {
                    description: "QPU seconds".into(),
                    quantity: 3,
                    unit_amount: 1250,
                    amount: 3750,
                },
                BillingInvoiceLine {
                    description: "Credit".into(),
                    quantity: 1,
                    unit_amount: -750,
                    amount: -750,
                },
            ],
            total: 3000,
            days_until_due: 30,
        }
    }

    #[test]
    fn invoices_are_checked_before_sending() {
        assert!(validate_invoice(&invoice()).is_ok());
        type Breakage = (&'static str, fn(&mut BillingInvoice));
        let cases: &[Breakage] = &[
            ("total", |i| i.total += 1),
            ("amount", |i| i.lines[0].amount = 1),
            ("negative quantity", |i| {
                i.lines[0].quantity = -3;
                i.lines[0].amount = -3750;
                i.total = -4500;
            }),
            ("overflow", |i| i.lines[0].quantity = i64::MAX),
            ("no lines", |i| {
                i.lines.clear();
                i.total = 0;
            }),
            ("currency", |i| i.currency = "EURO".into()),
            ("invoice id", |i| i.invoice_id = "inv 1".into()),
            ("customer id", |i| i.customer.customer_id = String::new()),
            ("period", |i| i.period = " ".into()),
        ];
        for (what, change) in cases {
            let mut bad = invoice();
            change(&mut bad);
            assert!(
                matches!(validate_invoice(&bad), Err(BillingError::Invalid(_))),
                "{what}"
            );
        }
    }

    #[test]
    fn stripe_client_never_shows_its_key() {
        let stripe = StripeBilling::new("http://127.0.0.1:1/", "sk_test_supersecret").unwrap();
        assert_eq!(stripe.base_url(), "http://127.0.0.1:1");
        assert!(!format!("{stripe:?}").contains("supersecret"));
        assert_eq!(
            stripe.redact("Authorization was 'Bearer sk_test_supersecret'."),
            "Authorization was 'Bearer [redacted]'."
        );
        let (code, message) = stripe.error_details(
            br#"{"error":{"type":"invalid_request_error","message":"bad key sk_test_supersecret","param":"x"}}"#,
        );
        assert_eq!(code.as_deref(), Some("invalid_request_error"));
        assert_eq!(message, "bad key [redacted] (param: x)");
        let (code, message) = stripe.error_details(b"<html>sk_test_supersecret</html>");
        assert_eq!(code, None);
        assert!(message.contains("[redacted]") && !message.contains("supersecret"));
    }

    #[test]
    fn stripe_client_refuses_bad_configuration() {
        for (url, key) in [
            ("https://api.stripe.com", "pk_test_publishable"),
            ("https://api.stripe.com", "sk_test_has space"),
            ("https://api.stripe.com", ""),
            ("http://api.stripe.com", "sk_live_secret"),
            ("ftp://api.stripe.com", "sk_test_secret"),
            ("not a url", "sk_test_secret"),
            ("https://api.stripe.com/?x=1", "sk_test_secret"),
        ] {
            let error = StripeBilling::new(url, key).unwrap_err();
            assert!(matches!(error, BillingError::Invalid(_)), "{url} {key}");
            assert!(
                key.is_empty() || !error.to_string().contains(key),
                "{error}"
            );
        }
        assert!(StripeBilling::new("https://api.stripe.com", "sk_live_secret").is_ok());
        assert!(StripeBilling::new("http://stripe-mock:12111", "rk_test_secret").is_ok());
    }

    #[test]
    fn search_values_are_quoted() {
        assert_eq!(search_escape(r"a'b\c"), r"a\'b\\c");
    }
}
