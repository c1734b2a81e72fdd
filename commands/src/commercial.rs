//! The Portal's application service: customers, contracts, usage against quotas, invoices and
//! payments; and its two process managers (contract to licences, job metrics to usage).
//!
//! The Portal never decides licensing: the contract's events carry the licence plan and
//! [`ContractLicensing`] asks QuantumLock to carry it out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use quantus_domain::commercial::contract::{
    Contract, ContractCommand, ContractDrafted, ContractError, ContractEvent,
    ContractLicenseCarriedOut, ContractLicenseFailed, ContractLicensePending, ContractStatus,
    LicenseAction, LicenseHold, LicenseStep, LicenseStepState, LineItem, PlannedLicense,
    RetryPolicy,
};
use quantus_domain::commercial::customer::{
    Customer, CustomerCommand, CustomerError, CustomerRegistered,
};
use quantus_domain::commercial::entitlement::Entitlements;
use quantus_domain::commercial::invoice::{
    invoice_id, invoice_lines, Invoice, InvoiceCommand, InvoiceError, InvoiceIssued, InvoicePaid,
    InvoicePaymentFailed, InvoiceSent, InvoiceStatus,
};
use quantus_domain::commercial::usage::{meter_id, Period, UsageCommand, UsageError, UsageMeter};
use quantus_domain::events::EventEnum;
use quantus_domain::evidence::job::{Job, JobCompleted, JobEvent};
use quantus_domain::licensing::license::LicenseIssued;
use quantus_domain::organization::OrganizationEvent;
use quantus_domain::CommandContext;
use quantus_infra::billing::{
    BillingCustomer, BillingInvoice, BillingInvoiceLine, BillingProvider, PaymentStatus,
};
use quantus_infra::event_store::tail_log;
use quantus_infra::gateway::{GatewayError, QuantumLockClient};
use quantus_infra::{InfraError, LogRecord};
use uuid::Uuid;

use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

impl ClassifyError for CustomerError {
    fn classify(&self) -> CommandError {
        match self {
            CustomerError::Invalid(d) => CommandError::Invalid(d.clone()),
            CustomerError::NotFound => CommandError::NotFound(self.to_string()),
            CustomerError::AlreadyExists => CommandError::Rejected(self.to_string()),
        }
    }
}

impl ClassifyError for ContractError {
    fn classify(&self) -> CommandError {
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            ContractError::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

impl ClassifyError for UsageError {
    fn classify(&self) -> CommandError {
        match self {
            UsageError::Invalid(d) => CommandError::Invalid(d.clone()),
            e @ UsageError::QuotaExhausted { .. } => CommandError::QuotaExceeded(e.to_string()),
        }
    }
}

impl ClassifyError for InvoiceError {
    fn classify(&self) -> CommandError {
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            InvoiceError::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

impl From<GatewayError> for CommandError {
    fn from(e: GatewayError) -> Self {
        CommandError::Upstream(e.to_string())
    }
}

/// Index kind linking an organization to its contracts (write-side lookups).
const ORG_CONTRACTS: &str = "org-contract";
/// Index kind of Stripe event ids already processed.
const STRIPE_EVENTS: &str = "stripe-event";

/// Days a customer has to pay an invoice.
pub const DAYS_UNTIL_DUE: u32 = 30;

/// A contract as a sales person drafts it.
#[derive(Debug, Clone)]
pub struct NewContract {
    pub organization_id: String,
    pub line_items: Vec<LineItem>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// What a billing-provider notification says happened to an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentNotice {
    Paid,
    Failed,
    Voided,
    /// Anything else (the event is acknowledged and ignored).
    Other,
}

#[derive(Clone)]
pub struct Portal {
    bus: CommandBus,
    billing: Arc<dyn BillingProvider>,
}

impl Portal {
    pub fn new(bus: CommandBus, billing: Arc<dyn BillingProvider>) -> Self {
        Self { bus, billing }
    }

    pub fn billing_provider(&self) -> &'static str {
        self.billing.name()
    }

    // ---- customers ----

    pub async fn register_customer(
        &self,
        ctx: &CommandContext,
        registered: CustomerRegistered,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .active_organization(&registered.organization_id)
            .await?;
        let id = registered.organization_id.clone();
        self.bus
            .execute::<Customer>(
                ctx,
                &id,
                CustomerCommand::Register(registered),
                Some(0),
                &(),
            )
            .await
    }

    pub async fn change_customer(
        &self,
        ctx: &CommandContext,
        id: &str,
        name: String,
        billing_email: String,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let command = CustomerCommand::ChangeContact {
            name,
            billing_email,
        };
        self.bus
            .execute::<Customer>(ctx, id, command, expected, &())
            .await
    }

    pub async fn customer(&self, id: &str) -> Result<(CustomerRegistered, u64), CommandError> {
        let (c, version) = self.bus.load::<Customer>(id).await?;
        let r = c
            .registered
            .ok_or_else(|| CommandError::NotFound(format!("no customer {id}")))?;
        Ok((r, version))
    }

    // ---- contracts ----

    /// Drafts a contract in the customer's currency.
    pub async fn draft_contract(
        &self,
        ctx: &CommandContext,
        id: &str,
        new: NewContract,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus.active_organization(&new.organization_id).await?;
        let (customer, _) = self.customer(&new.organization_id).await.map_err(|_| {
            CommandError::Invalid(format!(
                "organization {} has no customer record; register one first",
                new.organization_id
            ))
        })?;
        // Indexed before the contract exists: a crash in between leaves an index entry that
        // points at nothing (skipped), never a contract the index misses.
        self.bus
            .repository()
            .index_grant(ORG_CONTRACTS, &new.organization_id, id)
            .await?;
        let command = ContractCommand::Draft(ContractDrafted {
            contract_id: id.to_owned(),
            customer_id: new.organization_id.clone(),
            organization_id: new.organization_id,
            currency: customer.currency,
            line_items: new.line_items,
            starts_at: new.starts_at,
            ends_at: new.ends_at,
        });
        self.bus
            .execute::<Contract>(ctx, id, command, Some(0), &())
            .await
    }

    pub async fn contract(&self, id: &str) -> Result<(Contract, u64), CommandError> {
        self.bus
            .load_existing::<Contract>(id, "contract", |c| c.status != ContractStatus::Absent)
            .await
    }

    /// Runs a transition. Activation also checks that no other contract in force for the
    /// organization prices the same usage (it would be billed twice).
    pub async fn contract_command(
        &self,
        ctx: &CommandContext,
        id: &str,
        command: ContractCommand,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        if matches!(
            command,
            ContractCommand::Activate { .. } | ContractCommand::Amend { .. }
        ) {
            let (this, _) = self.contract(id).await?;
            let items = match &command {
                ContractCommand::Amend { line_items, .. } => line_items.clone(),
                _ => this.line_items.clone(),
            };
            for (other_id, other) in self.contracts_of(&this.organization_id).await? {
                if other_id == id || !other.status.in_force() {
                    continue;
                }
                for item in &items {
                    for metric in item.usage_prices.keys() {
                        if other
                            .line_items
                            .iter()
                            .any(|o| o.usage_prices.contains_key(metric))
                        {
                            return Err(CommandError::Rejected(format!(
                                "contract {other_id} already prices usage of {metric:?} for this organization"
                            )));
                        }
                    }
                }
            }
        }
        self.bus
            .execute::<Contract>(ctx, id, command, expected, &())
            .await
    }

    /// Every contract of an organization (any status), by id.
    pub async fn contracts_of(
        &self,
        organization_id: &str,
    ) -> Result<Vec<(String, Contract)>, CommandError> {
        let mut out = vec![];
        for id in self
            .bus
            .repository()
            .indexed_grants(ORG_CONTRACTS, organization_id)
            .await?
        {
            let (c, _) = self.bus.load::<Contract>(&id).await?;
            if c.status != ContractStatus::Absent && c.organization_id == organization_id {
                out.push((id, c));
            }
        }
        Ok(out)
    }

    /// What the organization may use at `at` (strongly consistent: from the contracts
    /// themselves, for decisions such as admitting a job).
    pub async fn entitlements(
        &self,
        organization_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Entitlements, CommandError> {
        let contracts = self.contracts_of(organization_id).await?;
        Ok(Entitlements::from_line_items(
            contracts
                .iter()
                .filter(|(_, c)| c.grants_at(at))
                .flat_map(|(_, c)| c.line_items.iter()),
        ))
    }

    // ---- usage ----

    pub async fn usage(
        &self,
        organization_id: &str,
        period: Period,
    ) -> Result<UsageMeter, CommandError> {
        Ok(self
            .bus
            .load::<UsageMeter>(&meter_id(organization_id, period))
            .await?
            .0)
    }

    /// Admits a job against the organization's hard quotas and counts it; refused with
    /// [`CommandError::QuotaExceeded`] when one is used up. Retries on a concurrent admission.
    pub async fn admit_job(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        job_id: &str,
    ) -> Result<(), CommandError> {
        let contracts = self.contracts_of(organization_id).await?;
        if contracts.is_empty() {
            return Ok(()); // an organization without contracts is not metered
        }
        let entitlements = Entitlements::from_line_items(
            contracts
                .iter()
                .filter(|(_, c)| c.grants_at(ctx.occurred_at))
                .flat_map(|(_, c)| c.line_items.iter()),
        );
        let period = Period::of(ctx.occurred_at);
        let id = meter_id(organization_id, period);
        for _ in 0..20 {
            let command = UsageCommand::AdmitJob {
                organization_id: organization_id.to_owned(),
                period,
                job_id: job_id.to_owned(),
                quotas: entitlements.quotas.clone(),
            };
            match self
                .bus
                .execute::<UsageMeter>(ctx, &id, command, None, &())
                .await
            {
                Err(CommandError::Concurrency(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(CommandError::Concurrency(
            "too many concurrent job submissions; retry".into(),
        ))
    }

    /// Meters a finished job's metrics (idempotent per job and metric).
    pub async fn meter_job_metrics(
        &self,
        ctx: &CommandContext,
        job_id: &str,
        completed: &JobCompleted,
    ) -> Result<(), CommandError> {
        let (job, _) = self.bus.load::<Job>(job_id).await?;
        let Some(submitted) = job.submitted else {
            return Ok(());
        };
        let org = submitted.organization_id;
        if self.contracts_of(&org).await?.is_empty() {
            return Ok(());
        }
        let entitlements = self.entitlements(&org, ctx.occurred_at).await?;
        let period = Period::of(ctx.occurred_at);
        let id = meter_id(&org, period);
        for (metric, amount) in &completed.metrics {
            if metric == quantus_domain::commercial::usage::JOBS || *amount <= 0 {
                continue;
            }
            for attempt in 0..20 {
                let command = UsageCommand::Record {
                    organization_id: org.clone(),
                    period,
                    metric: metric.clone(),
                    amount: *amount,
                    source: job_id.to_owned(),
                    quota: entitlements.quotas.get(metric).copied(),
                };
                match self
                    .bus
                    .execute::<UsageMeter>(ctx, &id, command, None, &())
                    .await
                {
                    Err(CommandError::Concurrency(_)) if attempt < 19 => continue,
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    // ---- invoices ----

    /// Issues the invoice of `contract_id` for `period` from its prices and the organization's
    /// metered usage. The period must be over (usage is final then). Issuing twice is refused.
    pub async fn issue_invoice(
        &self,
        ctx: &CommandContext,
        contract_id: &str,
        period: Period,
    ) -> Result<(String, CommandOutcome), CommandError> {
        let (contract, _) = self.contract(contract_id).await?;
        // A month's usage is final when the month is over, or when the contract has ended
        // (its final invoice).
        let ended = matches!(
            contract.status,
            ContractStatus::Terminated | ContractStatus::Expired
        );
        if ctx.occurred_at < period.ends_at() && !ended {
            return Err(CommandError::Rejected(format!(
                "{period} is not over yet; its usage is not final"
            )));
        }
        let usage = self.usage(&contract.organization_id, period).await?;
        let lines =
            invoice_lines(&contract, period, &usage.used).map_err(CommandError::Rejected)?;
        let total =
            quantus_domain::commercial::money::sum(lines.iter().map(|l| l.amount), "invoice")
                .map_err(CommandError::Rejected)?;
        let id = invoice_id(contract_id, period);
        let issued = InvoiceIssued {
            contract_id: contract_id.to_owned(),
            customer_id: contract.customer_id.clone(),
            organization_id: contract.organization_id.clone(),
            period: period.to_string(),
            currency: contract.currency.clone(),
            lines,
            total,
            due_at: ctx.occurred_at + chrono::Duration::days(i64::from(DAYS_UNTIL_DUE)),
        };
        let outcome = self
            .bus
            .execute::<Invoice>(ctx, &id, InvoiceCommand::Issue(issued), Some(0), &())
            .await?;
        Ok((id, outcome))
    }

    /// The billing run for one contract and a month that is over: issues its invoice (unless
    /// there is one) and hands it to the billing provider. `None` when there was nothing to
    /// bill (not in force that month, or billed already).
    pub async fn bill(
        &self,
        ctx: &CommandContext,
        contract_id: &str,
        period: Period,
    ) -> Result<Option<String>, CommandError> {
        let id = invoice_id(contract_id, period);
        if self.invoice(&id).await.is_ok() {
            return Ok(None);
        }
        match self.issue_invoice(ctx, contract_id, period).await {
            Ok((id, _)) => {
                self.send_invoice(ctx, &id).await?;
                Ok(Some(id))
            }
            Err(CommandError::Rejected(_)) | Err(CommandError::Concurrency(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn invoice(&self, id: &str) -> Result<(Invoice, u64), CommandError> {
        self.bus
            .load_existing::<Invoice>(id, "invoice", |i| i.status != InvoiceStatus::Absent)
            .await
    }

    /// Hands the invoice to the billing provider (idempotent on the provider's side too).
    pub async fn send_invoice(
        &self,
        ctx: &CommandContext,
        id: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let (invoice, _) = self.invoice(id).await?;
        let issued = invoice
            .issued
            .ok_or_else(|| CommandError::NotFound(format!("no invoice {id}")))?;
        if !matches!(invoice.status, InvoiceStatus::Issued | InvoiceStatus::Open) {
            return Err(CommandError::Rejected(format!(
                "the invoice is {}; it cannot be sent",
                invoice.status.name()
            )));
        }
        let (customer, _) = self.customer(&issued.customer_id).await?;
        let request = BillingInvoice {
            invoice_id: id.to_owned(),
            customer: BillingCustomer {
                customer_id: issued.customer_id.clone(),
                organization_id: issued.organization_id.clone(),
                name: customer.name,
                email: customer.billing_email,
                currency: issued.currency.clone(),
            },
            currency: issued.currency.clone(),
            period: issued.period.clone(),
            lines: issued
                .lines
                .iter()
                .map(|l| BillingInvoiceLine {
                    description: l.description.clone(),
                    quantity: l.quantity,
                    unit_amount: l.unit_amount,
                    amount: l.amount,
                })
                .collect(),
            total: issued.total,
            days_until_due: DAYS_UNTIL_DUE,
        };
        let sent = self
            .billing
            .send_invoice(&request)
            .await
            .map_err(|e| CommandError::Upstream(format!("{}: {e}", self.billing.name())))?;
        let command = InvoiceCommand::RecordSent(InvoiceSent {
            provider: sent.provider,
            external_id: sent.external_id,
            customer_external_id: sent.customer_external_id,
            hosted_url: sent.hosted_url,
        });
        self.bus
            .execute::<Invoice>(ctx, id, command, None, &())
            .await
    }

    /// Records a payment outcome for an invoice.
    pub async fn record_payment(
        &self,
        ctx: &CommandContext,
        id: &str,
        notice: PaymentNotice,
        provider: &str,
        reference: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let command = match notice {
            PaymentNotice::Paid => InvoiceCommand::RecordPaid(InvoicePaid {
                provider: provider.to_owned(),
                reference: reference.to_owned(),
                paid_at: ctx.occurred_at,
            }),
            PaymentNotice::Failed => InvoiceCommand::RecordPaymentFailed(InvoicePaymentFailed {
                provider: provider.to_owned(),
                reference: reference.to_owned(),
                failed_at: ctx.occurred_at,
            }),
            PaymentNotice::Voided => InvoiceCommand::Void {
                reason: format!("voided at {provider} ({reference})"),
            },
            PaymentNotice::Other => {
                return Err(CommandError::Invalid("nothing to record".into()));
            }
        };
        self.bus
            .execute::<Invoice>(ctx, id, command, None, &())
            .await
    }

    /// Asks the provider for the invoice's payment status and records a payment it reports.
    pub async fn refresh_payment(
        &self,
        ctx: &CommandContext,
        id: &str,
    ) -> Result<PaymentStatus, CommandError> {
        let (invoice, _) = self.invoice(id).await?;
        let sent = invoice.sent.ok_or_else(|| {
            CommandError::Rejected("the invoice has not been sent to a provider".into())
        })?;
        let status = self
            .billing
            .payment_status(&sent.external_id)
            .await
            .map_err(|e| CommandError::Upstream(format!("{}: {e}", self.billing.name())))?;
        let notice = match status {
            PaymentStatus::Paid => PaymentNotice::Paid,
            PaymentStatus::Void => PaymentNotice::Voided,
            _ => PaymentNotice::Other,
        };
        if notice != PaymentNotice::Other {
            let reference = format!("status:{}", sent.external_id);
            self.record_payment(ctx, id, notice, &sent.provider, &reference)
                .await?;
        }
        Ok(status)
    }

    /// Processes a verified billing-provider event once per event id. Returns false for a
    /// replay of an event already processed.
    pub async fn provider_event(
        &self,
        ctx: &CommandContext,
        provider: &str,
        event_id: &str,
        invoice_id: Option<&str>,
        notice: PaymentNotice,
    ) -> Result<bool, CommandError> {
        let repo = self.bus.repository();
        let key = format!("{provider}:{event_id}");
        if !repo.indexed_grants(STRIPE_EVENTS, &key).await?.is_empty() {
            return Ok(false);
        }
        if let (Some(id), true) = (invoice_id, notice != PaymentNotice::Other) {
            match self
                .record_payment(ctx, id, notice, provider, event_id)
                .await
            {
                Ok(_) => {}
                // An event about an invoice that is not ours (another system on the same
                // Stripe account) is acknowledged, not retried forever.
                Err(CommandError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Claimed after the effect: a crash in between means the provider retries, and the
        // invoice commands are idempotent.
        Ok(repo.claim_once(STRIPE_EVENTS, &key).await?)
    }
}

/// Why a plan step did not happen.
enum StepFailure {
    /// QuantumLock refused for good (see [`GatewayError::hold`]): recorded, skipped.
    Refused(String),
    /// A cause that can pass (a suspended organization, QuantumLock or QSA unavailable):
    /// recorded as pending and tried again later.
    Pending(LicenseHold, String),
    /// The Portal's own store failed: the event is retried.
    Retry(CommandError),
}

impl From<CommandError> for StepFailure {
    fn from(e: CommandError) -> Self {
        StepFailure::Retry(e)
    }
}

impl From<GatewayError> for StepFailure {
    fn from(e: GatewayError) -> Self {
        match e.hold() {
            Some(hold) => StepFailure::Pending(hold, e.to_string()),
            None => StepFailure::Refused(e.to_string()),
        }
    }
}

/// The licence terms a line item implies under `contract` as it stands.
pub fn license_terms(contract: &Contract, item: &LineItem) -> Option<LicenseIssued> {
    Some(LicenseIssued {
        organization_id: contract.organization_id.clone(),
        product: item.product.clone(),
        edition: item.edition.clone(),
        features: item.features.clone(),
        limits: item.limits.clone(),
        not_before: contract.starts_at?,
        expires_at: contract.ends_at?,
        grace_period_seconds: 0,
        max_activations: item.max_activations,
        machine_fingerprint: None,
    })
}

/// Index kind of contracts that ever had a pending licence step (lookup `""`): where the
/// retry schedule is rebuilt from at start.
const PENDING_LICENSES: &str = "contract-license-pending";

/// The current time, passed in (tests drive it).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;
/// A uniformly random number in `[0, 1]`, passed in (the retry jitter).
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The process manager that turns contract events into licences at QuantumLock. Driven from
/// the log with a cursor advanced after each event is carried out; every step is idempotent
/// (deterministic licence ids; renew and revoke look first), so a crash mid-way repeats at
/// most the steps of one event and never issues twice.
///
/// Each step's outcome is recorded on the contract: `ContractLicenseCarriedOut`,
/// `ContractLicenseFailed` (refused for good) or `ContractLicensePending` (a cause that can
/// pass, with the next attempt's time from [`RetryPolicy`]). Pending steps are tried again
/// when due, and at once when the log says their organization was reactivated.
#[derive(Clone)]
pub struct ContractLicensing {
    bus: CommandBus,
    quantumlock: QuantumLockClient,
    policy: RetryPolicy,
    clock: Clock,
    jitter: Jitter,
    /// Contract id -> its earliest pending step's `retry_at`.
    schedule: Arc<std::sync::Mutex<BTreeMap<String, DateTime<Utc>>>>,
}

impl ContractLicensing {
    pub const NAME: &'static str = "contract-licenses";

    /// With the default retry policy, the system clock and a random jitter.
    pub fn new(bus: CommandBus, quantumlock: QuantumLockClient) -> Self {
        Self::with(
            bus,
            quantumlock,
            RetryPolicy::default(),
            Arc::new(Utc::now),
            Arc::new(rand::random::<f64>),
        )
    }

    /// The same with another retry policy.
    pub fn with_policy(self, policy: RetryPolicy) -> Self {
        Self { policy, ..self }
    }

    pub fn with(
        bus: CommandBus,
        quantumlock: QuantumLockClient,
        policy: RetryPolicy,
        clock: Clock,
        jitter: Jitter,
    ) -> Self {
        Self {
            bus,
            quantumlock,
            policy,
            clock,
            jitter,
            schedule: Arc::default(),
        }
    }

    fn context(&self, tenant: &str, correlation_id: Uuid, causation_id: Uuid) -> CommandContext {
        CommandContext {
            tenant_id: tenant.to_owned(),
            actor: quantus_domain::Actor {
                kind: quantus_domain::ActorKind::System,
                id: Self::NAME.into(),
            },
            occurred_at: quantus_domain::envelope::truncate_to_micros((self.clock)()),
            correlation_id,
            causation_id,
        }
    }

    /// Carries out one log record's licence plan, or retries the pending steps of an
    /// organization that was reactivated (records of other kinds are ignored). Returns how
    /// many steps it tried.
    pub async fn carry_out(&self, record: &LogRecord) -> Result<usize, CommandError> {
        let e = &record.envelope;
        if e.aggregate_type == OrganizationEvent::AGGREGATE {
            let OrganizationEvent::OrganizationReactivated(_) = record.decode()? else {
                return Ok(0);
            };
            let mut tried = 0;
            for id in self
                .bus
                .repository()
                .indexed_grants(ORG_CONTRACTS, &e.aggregate_id)
                .await?
            {
                // Caused by the reactivation: the log shows why the licence came now.
                let cause = (e.correlation_id, e.event_id);
                tried += self.retry_pending(&id, Some(cause)).await?;
            }
            return Ok(tried);
        }
        if e.aggregate_type != ContractEvent::AGGREGATE {
            return Ok(0);
        }
        let superseded = |amendment: u32| {
            format!(
                "superseded by amendment {amendment} of contract {}",
                e.aggregate_id
            )
        };
        let (plan, reason): (Vec<PlannedLicense>, String) = match record.decode()? {
            ContractEvent::ContractActivated(p) => (p.licenses, superseded(0)),
            ContractEvent::ContractAmended(p) => (p.licenses, superseded(p.amendment)),
            ContractEvent::ContractTerminated(p) => (
                p.licenses,
                format!("contract {} terminated: {}", e.aggregate_id, p.reason),
            ),
            _ => return Ok(0),
        };
        let contract = self
            .bus
            .load_until::<Contract>(&e.aggregate_id, e.sequence)
            .await?;
        let ctx = self.context(&contract.organization_id, e.correlation_id, e.event_id);
        for step in &plan {
            self.attempt(&ctx, &e.aggregate_id, &contract, step, &reason)
                .await?;
        }
        Ok(plan.len())
    }

    /// Tries one step and records its outcome on the contract. Only a failure of the Portal's
    /// own store is returned (the caller tries again).
    async fn attempt(
        &self,
        ctx: &CommandContext,
        contract_id: &str,
        contract: &Contract,
        step: &PlannedLicense,
        reason: &str,
    ) -> Result<(), CommandError> {
        let command = match self.carry_out_step(contract, step, reason).await {
            Ok(()) => ContractCommand::RecordLicenseCarriedOut(ContractLicenseCarriedOut {
                line_item_id: step.line_item_id.clone(),
                license_id: step.license_id.clone(),
                action: step.action,
            }),
            Err(StepFailure::Refused(detail)) => {
                ContractCommand::RecordLicenseFailure(ContractLicenseFailed {
                    line_item_id: step.line_item_id.clone(),
                    license_id: step.license_id.clone(),
                    action: step.action,
                    reason: detail,
                })
            }
            Err(StepFailure::Pending(hold, detail)) => {
                let (now, _) = self.bus.load::<Contract>(contract_id).await?;
                let attempt = match now.license_steps.get(&step.line_item_id) {
                    Some(LicenseStep {
                        state: LicenseStepState::Pending { attempt, .. },
                        ..
                    }) => attempt.saturating_add(1),
                    _ => 1,
                };
                let retry_at = self
                    .policy
                    .retry_at(attempt, ctx.occurred_at, (self.jitter)());
                tracing::info!(
                    process = Self::NAME,
                    contract = contract_id,
                    line_item = step.line_item_id,
                    attempt,
                    %retry_at,
                    reason = %detail,
                    "licence step pending"
                );
                // Indexed before it is recorded: a restart finds every pending step.
                self.bus
                    .repository()
                    .index_grant(PENDING_LICENSES, "", contract_id)
                    .await?;
                self.schedule(contract_id, retry_at);
                ContractCommand::RecordLicensePending(ContractLicensePending {
                    line_item_id: step.line_item_id.clone(),
                    license_id: step.license_id.clone(),
                    action: step.action,
                    hold,
                    reason: detail,
                    attempt,
                    retry_at,
                })
            }
            Err(StepFailure::Retry(e)) => return Err(e),
        };
        self.bus
            .execute::<Contract>(ctx, contract_id, command, None, &())
            .await?;
        Ok(())
    }

    fn schedule(&self, contract_id: &str, at: DateTime<Utc>) {
        let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        let entry = schedule.entry(contract_id.to_owned()).or_insert(at);
        *entry = (*entry).min(at);
    }

    /// Tries the contract's pending steps again: all of them when an event cleared their cause
    /// (`cleared`: its correlation and event ids), else those due. Then schedules what is
    /// still pending. Returns how many it tried.
    async fn retry_pending(
        &self,
        contract_id: &str,
        cleared: Option<(Uuid, Uuid)>,
    ) -> Result<usize, CommandError> {
        let all = cleared.is_some();
        let (contract, version) = self.bus.load::<Contract>(contract_id).await?;
        let now = (self.clock)();
        let due: Vec<PlannedLicense> = contract
            .license_steps
            .iter()
            .filter(|(_, s)| {
                matches!(s.state, LicenseStepState::Pending { retry_at, .. } if all || retry_at <= now)
            })
            .map(|(item, s)| PlannedLicense {
                line_item_id: item.clone(),
                license_id: s.license_id.clone(),
                action: s.action,
            })
            .collect();
        if !due.is_empty() {
            let reason = format!("contract {contract_id} {}", contract.status.name());
            let (correlation, causation) = cleared.unwrap_or_else(|| {
                let id = Uuid::new_v5(
                    &quantus_domain::commercial::contract::LICENSE_NAMESPACE,
                    format!("retry/{contract_id}/{version}").as_bytes(),
                );
                (id, id)
            });
            let ctx = self.context(&contract.organization_id, correlation, causation);
            for step in &due {
                self.attempt(&ctx, contract_id, &contract, step, &reason)
                    .await?;
            }
        }
        let (contract, _) = self.bus.load::<Contract>(contract_id).await?;
        let next = contract
            .license_steps
            .values()
            .filter_map(|s| match s.state {
                LicenseStepState::Pending { retry_at, .. } => Some(retry_at),
                _ => None,
            })
            .min();
        let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        match next {
            Some(at) => schedule.insert(contract_id.to_owned(), at),
            None => schedule.remove(contract_id),
        };
        Ok(due.len())
    }

    /// Tries pending steps when they are due, forever. The schedule is rebuilt from the
    /// store first (so pending steps survive a restart), then kept by [`Self::attempt`].
    async fn retry_due(self) -> Result<(), InfraError> {
        let mut rebuilt = false;
        loop {
            if !rebuilt {
                match self.reschedule_all().await {
                    Ok(()) => rebuilt = true,
                    Err(error) => {
                        tracing::warn!(process = Self::NAME, %error, "rebuilding the licence retry schedule failed; retrying");
                    }
                }
            }
            let now = (self.clock)();
            let due: Vec<String> = {
                let schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
                schedule
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            for id in due {
                if let Err(error) = self.retry_pending(&id, None).await {
                    tracing::warn!(process = Self::NAME, contract = id, %error, "retrying a pending licence failed; retrying");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn reschedule_all(&self) -> Result<(), CommandError> {
        for id in self
            .bus
            .repository()
            .indexed_grants(PENDING_LICENSES, "")
            .await?
        {
            let (contract, _) = self.bus.load::<Contract>(&id).await?;
            for step in contract.license_steps.values() {
                if let LicenseStepState::Pending { retry_at, .. } = step.state {
                    self.schedule(&id, retry_at);
                }
            }
        }
        Ok(())
    }

    async fn carry_out_step(
        &self,
        contract: &Contract,
        step: &PlannedLicense,
        reason: &str,
    ) -> Result<(), StepFailure> {
        let terms = || {
            contract
                .line_items
                .iter()
                .find(|i| i.id == step.line_item_id)
                .and_then(|item| license_terms(contract, item))
                .ok_or_else(|| {
                    StepFailure::Retry(CommandError::Storage(format!(
                        "contract {} has no line item {}",
                        contract.contract_id, step.line_item_id
                    )))
                })
        };
        match step.action {
            LicenseAction::Issue => {
                self.quantumlock.issue(&step.license_id, &terms()?).await?;
            }
            LicenseAction::Renew => {
                let until = contract
                    .ends_at
                    .ok_or_else(|| CommandError::Storage("a contract without an end".into()))?;
                // A licence whose issue was still pending when the amendment renewed it is
                // issued with the renewed terms.
                if self.quantumlock.license(&step.license_id).await?.is_none() {
                    self.quantumlock.issue(&step.license_id, &terms()?).await?;
                } else {
                    self.quantumlock.renew(&step.license_id, until).await?;
                }
            }
            LicenseAction::Revoke => {
                self.quantumlock.revoke(&step.license_id, reason).await?;
            }
        }
        Ok(())
    }

    /// Follows the log forever from the saved cursor (see [`follow`]), and tries pending
    /// steps again when they are due.
    pub async fn run(self) -> Result<(), InfraError> {
        tokio::select! {
            r = follow(self.clone()) => r,
            r = self.retry_due() => r,
        }
    }
}

impl LogProcess for ContractLicensing {
    const NAME: &'static str = Self::NAME;
    const DOING: &'static str = "carrying out a licence plan";

    fn repository(&self) -> &quantus_infra::SqlEventRepository {
        self.bus.repository()
    }

    async fn act(&self, record: &LogRecord) -> Result<bool, CommandError> {
        Ok(self.carry_out(record).await? > 0)
    }
}

/// A process manager: acts on log records in order, remembering how far it got.
trait LogProcess: Clone + Send + Sync + 'static {
    const NAME: &'static str;
    /// What it does, for the log line when it fails.
    const DOING: &'static str;
    fn repository(&self) -> &quantus_infra::SqlEventRepository;
    /// Acts on one record. `true` when it changed something elsewhere: the cursor then moves
    /// past it at once; other records move it once per batch (acting on them again after a
    /// crash changes nothing, as every act is idempotent).
    fn act(
        &self,
        record: &LogRecord,
    ) -> impl std::future::Future<Output = Result<bool, CommandError>> + Send;
}

/// Follows the log forever from the process's cursor; a failing record is retried (after a
/// pause) from where the cursor stands.
async fn follow<P: LogProcess>(process: P) -> Result<(), InfraError> {
    let repo = process.repository().clone();
    loop {
        let after = repo.process_cursor(P::NAME).await?;
        let result = tail_log(repo.database(), after, 100, |records| {
            let (process, repo) = (process.clone(), repo.clone());
            async move {
                for record in &records {
                    let acted = process
                        .act(record)
                        .await
                        .map_err(|e| InfraError::Corrupt(e.to_string()))?;
                    if acted {
                        repo.advance_process_cursor(P::NAME, record.position)
                            .await?;
                    }
                }
                if let Some(last) = records.last() {
                    repo.advance_process_cursor(P::NAME, last.position).await?;
                }
                Ok(true)
            }
        })
        .await;
        if let Err(error) = result {
            tracing::warn!(process = P::NAME, %error, "{} failed; retrying", P::DOING);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The process manager that meters finished jobs' metrics into usage.
#[derive(Clone)]
pub struct UsageMetering {
    portal: Portal,
}

impl UsageMetering {
    pub const NAME: &'static str = "usage-metering";

    pub fn new(portal: Portal) -> Self {
        Self { portal }
    }

    pub async fn carry_out(&self, record: &LogRecord) -> Result<(), CommandError> {
        let e = &record.envelope;
        if e.aggregate_type != JobEvent::AGGREGATE {
            return Ok(());
        }
        let JobEvent::JobCompleted(completed) = record.decode()? else {
            return Ok(());
        };
        // The usage belongs to the month the job finished in, whenever this runs.
        let ctx = CommandContext {
            tenant_id: e.tenant_id.clone(),
            actor: quantus_domain::Actor {
                kind: quantus_domain::ActorKind::System,
                id: Self::NAME.into(),
            },
            occurred_at: e.occurred_at,
            correlation_id: e.correlation_id,
            causation_id: e.event_id,
        };
        self.portal
            .meter_job_metrics(&ctx, &e.aggregate_id, &completed)
            .await
    }

    pub async fn run(self) -> Result<(), InfraError> {
        follow(self).await
    }
}

impl LogProcess for UsageMetering {
    const NAME: &'static str = Self::NAME;
    const DOING: &'static str = "metering job usage";

    fn repository(&self) -> &quantus_infra::SqlEventRepository {
        self.portal.bus.repository()
    }

    /// Metering is idempotent per job and metric: the cursor moves once per batch.
    async fn act(&self, record: &LogRecord) -> Result<bool, CommandError> {
        self.carry_out(record).await.map(|()| false)
    }
}
