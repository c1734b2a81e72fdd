//! The Stripe billing adapter against Stripe's own API double, stripe-mock (started through
//! `scripts/stripe-mock.sh`, with `-strict-version-check`), and the built-in provider.
//!
//! stripe-mock is stateless: answers come from fixtures (ids are random, statuses are the
//! fixture's, finalize does not change a status), with request fields reflected where the spec
//! allows. The tests assert what it really returns: the request shapes our adapter sends are
//! valid for the pinned API version, the answers parse, and errors map as documented.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use quantus_infra::billing::{
    BillingCustomer, BillingError, BillingInvoice, BillingInvoiceLine, BillingProvider,
    BuiltInBilling, PaymentStatus, StripeBilling, STRIPE_API_VERSION,
};

/// Any key of this form is accepted by stripe-mock.
const TEST_KEY: &str = "sk_test_quantus";

fn run_script(arg: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stripe-mock.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(arg)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "scripts/stripe-mock.sh {arg} failed ({}): the test needs stripe-mock.\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
}

/// The one line `STRIPE_API_BASE=...` the script prints, strictly.
fn parse_base(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    match lines.as_slice() {
        [line] => line
            .strip_prefix("STRIPE_API_BASE=")
            .filter(|base| base.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("unexpected stdout from scripts/stripe-mock.sh: {stdout:?}"))
            .to_owned(),
        _ => panic!(
            "scripts/stripe-mock.sh printed {} lines, expected one: {stdout:?}",
            lines.len()
        ),
    }
}

/// stripe-mock's base URL for this test process (started once; panics if it cannot start).
pub fn stripe_api_base() -> String {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| parse_base(&run_script("start")))
        .clone()
}

fn stripe() -> StripeBilling {
    StripeBilling::new(&stripe_api_base(), TEST_KEY).expect("StripeBilling for stripe-mock")
}

fn invoice(invoice_id: &str) -> BillingInvoice {
    BillingInvoice {
        invoice_id: invoice_id.to_owned(),
        customer: BillingCustomer {
            customer_id: "0193a5b2-7c1d-7e4f-8a90-1b2c3d4e5f60".to_owned(),
            organization_id: "0193a5b2-7c1d-7e4f-8a90-000000000001".to_owned(),
            name: "Acme Quantum GmbH".to_owned(),
            email: "billing@acme-quantum.test".to_owned(),
            currency: "EUR".to_owned(),
        },
        currency: "EUR".to_owned(),
        period: "2026-11".to_owned(),
        lines: vec![
            BillingInvoiceLine {
                description: "QPU time, ibm_kyiv (seconds)".to_owned(),
                quantity: 3600,
                unit_amount: 42,
                amount: 151_200,
            },
            BillingInvoiceLine {
                description: "Platform fee".to_owned(),
                quantity: 1,
                unit_amount: 50_000,
                amount: 50_000,
            },
        ],
        total: 201_200,
        days_until_due: 30,
    }
}

#[tokio::test]
async fn stripe_send_invoice_round_trip() {
    let stripe = stripe();
    assert_eq!(stripe.name(), "stripe");
    let sent = stripe
        .send_invoice(&invoice("inv-2026-11-0001"))
        .await
        .expect("customer, invoice, items and finalize against stripe-mock");
    assert_eq!(sent.provider, "stripe");
    assert!(sent.external_id.starts_with("in_"), "{sent:?}");
    assert!(sent.customer_external_id.starts_with("cus_"), "{sent:?}");
    // stripe-mock's invoice fixture is a draft without a hosted page, finalized or not; real
    // Stripe answers `open` with an https://invoice.stripe.com/... URL.
    assert_eq!(sent.status, PaymentStatus::Draft, "{sent:?}");
    assert_eq!(sent.hosted_url, None, "{sent:?}");

    // Sending again is the same sequence under the same idempotency keys: it must still be
    // accepted (stripe-mock ignores the keys; Stripe replays the first answers).
    let again = stripe
        .send_invoice(&invoice("inv-2026-11-0001"))
        .await
        .expect("a second send of the same invoice");
    assert_eq!(again.provider, "stripe");
    assert!(again.external_id.starts_with("in_"), "{again:?}");
}

#[tokio::test]
async fn stripe_payment_status() {
    let stripe = stripe();
    let sent = stripe
        .send_invoice(&invoice("inv-2026-11-0002"))
        .await
        .expect("send to stripe-mock");
    let status = stripe
        .payment_status(&sent.external_id)
        .await
        .expect("GET /v1/invoices/{id} against stripe-mock");
    // The fixture's status; the mapping of all five is unit-tested on PaymentStatus.
    assert_eq!(status, PaymentStatus::Draft);

    // Not a Stripe invoice id: refused before any request.
    for bad in ["builtin-inv-1", "in_", "in_../customers", ""] {
        let error = stripe.payment_status(bad).await.unwrap_err();
        assert!(
            matches!(error, BillingError::Invalid(_)),
            "{bad:?}: {error}"
        );
    }
}

#[tokio::test]
async fn stripe_rejection_carries_the_provider_message() {
    // A test key of a shape stripe-mock refuses (sk_test_<one part> is what it accepts):
    // HTTP 401 with Stripe's error object, which echoes the Authorization header.
    let key = "sk_test_not_valid_for_mock";
    let stripe = StripeBilling::new(&stripe_api_base(), key).expect("a syntactically fine key");
    let error = stripe
        .send_invoice(&invoice("inv-2026-11-0003"))
        .await
        .unwrap_err();
    match &error {
        BillingError::Rejected {
            status,
            code,
            message,
        } => {
            assert_eq!(*status, 401);
            assert_eq!(code.as_deref(), Some("invalid_request_error"));
            assert!(message.contains("Please authenticate"), "{message}");
            assert!(message.contains("Bearer [redacted]"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(key), "the secret key leaked: {shown}");
    assert!(shown.contains("HTTP 401"), "{shown}");

    // Same on the read path.
    let error = stripe.payment_status("in_123").await.unwrap_err();
    assert!(
        matches!(error, BillingError::Rejected { status: 401, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn stripe_unreachable_is_unavailable() {
    // A port nobody listens on: bound, then released.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let stripe = StripeBilling::new(&format!("http://127.0.0.1:{port}"), TEST_KEY).unwrap();
    let error = stripe
        .send_invoice(&invoice("inv-2026-11-0004"))
        .await
        .unwrap_err();
    assert!(matches!(error, BillingError::Unavailable(_)), "{error:?}");
    let shown = error.to_string();
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    assert!(!shown.contains(TEST_KEY), "{shown}");
}

#[tokio::test]
async fn stripe_mock_enforces_our_pinned_api_version() {
    // The script starts stripe-mock with -strict-version-check: a Stripe-Version other than
    // the one its spec describes is a 400. So every adapter test above also proves that
    // STRIPE_API_VERSION is the version of the spec the requests were validated against.
    let base = stripe_api_base();
    let http = reqwest::Client::new();
    let status_for = |version: &'static str| {
        let request = http
            .get(format!("{base}/v1/customers"))
            .bearer_auth(TEST_KEY)
            .header("Stripe-Version", version);
        async move { request.send().await.expect("stripe-mock answers").status() }
    };
    assert_eq!(status_for(STRIPE_API_VERSION).await, 200);
    assert_eq!(status_for("2020-08-27").await, 400);
}

#[test]
fn stripe_mock_script_is_idempotent() {
    let base = stripe_api_base();
    assert_eq!(
        parse_base(&run_script("start")),
        base,
        "a second start reuses the server"
    );
    assert_eq!(parse_base(&run_script("env")), base);
}

#[tokio::test]
async fn builtin_billing_records_locally() {
    let builtin = BuiltInBilling;
    assert_eq!(builtin.name(), "builtin");
    let sent = builtin
        .send_invoice(&invoice("inv-2026-11-0005"))
        .await
        .unwrap();
    assert_eq!(sent.provider, "builtin");
    assert_eq!(sent.external_id, "builtin-inv-2026-11-0005");
    assert_eq!(
        sent.customer_external_id,
        "builtin-0193a5b2-7c1d-7e4f-8a90-1b2c3d4e5f60"
    );
    assert_eq!(sent.status, PaymentStatus::Open);
    assert_eq!(sent.hosted_url, None);
    // Idempotent by construction.
    assert_eq!(
        builtin
            .send_invoice(&invoice("inv-2026-11-0005"))
            .await
            .unwrap(),
        sent
    );
    assert_eq!(
        builtin.payment_status(&sent.external_id).await.unwrap(),
        PaymentStatus::Open
    );
    for unknown in ["in_123", "builtin-", "inv-2026-11-0005", "builtin-a b"] {
        let error = builtin.payment_status(unknown).await.unwrap_err();
        assert!(
            matches!(error, BillingError::Invalid(_)),
            "{unknown:?}: {error}"
        );
    }
    // Inconsistent amounts are refused by every provider, before anything is recorded.
    let mut bad = invoice("inv-2026-11-0006");
    bad.total += 1;
    for provider in [&builtin as &dyn BillingProvider, &stripe()] {
        let error = provider.send_invoice(&bad).await.unwrap_err();
        assert!(
            matches!(&error, BillingError::Invalid(m) if m.contains("total")),
            "{}: {error}",
            provider.name()
        );
    }
}
