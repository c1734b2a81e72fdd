//! The Portal: customers and contracts as events, entitlements, contract -> licences by the
//! process manager, usage against quotas, invoices, the Stripe webhook, the gateway to QSA and
//! the self-service routes with tenant isolation.
//!
//! [`scenario`] runs embedded here and on Postgres + Kafka (with the Portal as its own
//! process) in `postgres_kafka::j_`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    assert_model_equals_replay, client_token, eventually, free_port, temp_dir, wait_for_projection,
    Api, Server,
};

pub const WEBHOOK_SECRET: &str = "whsec_quantus_test_secret";

fn now_period() -> String {
    chrono::Utc::now().format("%Y-%m").to_string()
}

/// Line items: `qpu` (hard quota of 2 jobs, billed per job) and `sim` (soft quota of 1000
/// shots, billed per shot).
pub fn line_items() -> Value {
    json!([
        {"id": "qpu", "product": "qpu-access", "edition": "pro", "features": ["qpu", "sim"],
         "quotas": {"jobs": {"amount": 2, "enforcement": "hard"}},
         "limits": {"qubits": 64}, "quantity": 2, "unit_price": 150000,
         "usage_prices": {"jobs": 2500}, "max_activations": 2},
        {"id": "sim", "product": "simulator", "edition": "standard", "features": ["noise-models"],
         "quotas": {"shots": {"amount": 1000, "enforcement": "soft"}},
         "limits": {}, "quantity": 1, "unit_price": 9999,
         "usage_prices": {"shots": 3}, "max_activations": 5}
    ])
}

pub async fn register_customer(api: &Api, org: &str, currency: &str) {
    let r = api
        .post(
            "/v1/customers",
            json!({"organization_id": org, "name": "Acme Quantum GmbH",
                   "billing_email": "billing@acme.example", "currency": currency}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// Drafts, sends, signs and activates a contract; returns its id.
pub async fn active_contract(api: &Api, org: &str, items: Value, ends_at: &str) -> String {
    let r = api
        .post(
            "/v1/contracts",
            json!({"organization_id": org, "line_items": items,
                   "starts_at": "2026-01-01T00:00:00Z", "ends_at": ends_at}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    for (action, body) in [
        ("send", json!({})),
        ("sign", json!({"signed_by": "Ada Lovelace"})),
        ("activate", json!({})),
    ] {
        let r = api
            .post(&format!("/v1/contracts/{id}/{action}"), body)
            .await;
        assert_eq!(r.status, 200, "{action}: {}", r.body);
    }
    id
}

/// Waits until QuantumLock has licence `id` in `status`; returns it.
pub async fn licence(api: &Api, id: &str, status: &str) -> Value {
    eventually(
        &format!("licence {id} {status}"),
        Duration::from_secs(30),
        || async {
            let r = api.get(&format!("/v1/licenses/{id}")).await;
            (r.status == 200 && r.body["status"] == status).then_some(r.body)
        },
    )
    .await
}

fn is_problem(r: &crate::harness::Reply, status: u16) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/problem+json",
        "{}",
        r.body
    );
}

/// An API client (calling `admin`'s base URL) with a service principal of `org` holding
/// `roles`.
pub async fn org_client(admin: &Api, org: &str, roles: &[&str]) -> Api {
    org_client_at(admin, &admin.base, org, roles).await
}

/// As [`org_client`], calling `base`.
pub async fn org_client_at(admin: &Api, base: &str, org: &str, roles: &[&str]) -> Api {
    let r = admin
        .post(
            "/v1/service-principals",
            json!({"organization_id": org, "name": "robot", "roles": roles}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = client_token(
        &admin.base,
        r.body["client_id"].as_str().unwrap(),
        r.body["client_secret"].as_str().unwrap(),
        None,
    );
    Api {
        base: base.to_owned(),
        token,
        http: reqwest::Client::new(),
    }
}

/// The whole Portal story against `portal` (Portal routes) and `platform` (QSA and QuantumLock
/// routes); both are the same process in the embedded mode.
pub async fn scenario(platform: &Api, portal: &Api, bootstrap_secret: &str) {
    let (org, _) = platform.create_org("Acme").await;
    let (other, _) = platform.create_org("Globex").await;

    // Customers: one per organization, currency checked.
    register_customer(portal, &org, "EUR").await;
    let again = portal
        .post(
            "/v1/customers",
            json!({"organization_id": org, "name": "Acme", "billing_email": "a@acme.example", "currency": "EUR"}),
        )
        .await;
    is_problem(&again, 409);
    let bad = portal
        .post(
            "/v1/customers",
            json!({"organization_id": other, "name": "Globex", "billing_email": "x@globex.example", "currency": "XAU"}),
        )
        .await;
    is_problem(&bad, 422);
    register_customer(portal, &other, "JPY").await;

    // A contract moves draft -> sent -> signed -> active; illegal transitions are 409.
    let r = portal
        .post(
            "/v1/contracts",
            json!({"organization_id": org, "line_items": line_items(),
                   "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let contract = r.body["id"].as_str().unwrap().to_owned();
    let early = portal
        .post(&format!("/v1/contracts/{contract}/activate"), json!({}))
        .await;
    is_problem(&early, 409);
    assert_eq!(
        early.body["detail"],
        "the contract is draft; it cannot activate"
    );
    let unsigned = portal
        .post(&format!("/v1/contracts/{contract}/send"), json!({}))
        .await;
    assert_eq!(unsigned.status, 200, "{}", unsigned.body);
    let no_name = portal
        .post(&format!("/v1/contracts/{contract}/sign"), json!({}))
        .await;
    is_problem(&no_name, 422);
    // The customer's owner signs (contracts:sign); a member may not.
    let owner = org_client_at(platform, &portal.base, &org, &["owner"]).await;
    let member = org_client(platform, &org, &["member"]).await;
    let r = member
        .post(
            &format!("/v1/contracts/{contract}/sign"),
            json!({"signed_by": "Mallory"}),
        )
        .await;
    is_problem(&r, 403);
    let r = owner
        .post(
            &format!("/v1/contracts/{contract}/sign"),
            json!({"signed_by": "Ada Lovelace"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = owner
        .post(&format!("/v1/contracts/{contract}/activate"), json!({}))
        .await;
    is_problem(&r, 403);
    let r = portal
        .post(&format!("/v1/contracts/{contract}/activate"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The process manager issues one licence per line item at QuantumLock.
    let shown = portal.get(&format!("/v1/contracts/{contract}")).await;
    assert_eq!(shown.body["status"], "active");
    assert_eq!(shown.body["monthly_price_display"], "3099.99 EUR");
    let qpu_licence = shown.body["licenses"]["qpu"].as_str().unwrap().to_owned();
    let sim_licence = shown.body["licenses"]["sim"].as_str().unwrap().to_owned();
    let l = licence(platform, &qpu_licence, "active").await;
    assert_eq!(l["terms"]["organization_id"], org.as_str());
    assert_eq!(l["terms"]["features"], json!(["qpu", "sim"]));
    assert_eq!(l["terms"]["limits"], json!({"qubits": 64}));
    assert_eq!(l["terms"]["max_activations"], 2);
    assert_eq!(l["terms"]["expires_at"], "2030-01-01T00:00:00Z");
    licence(platform, &sim_licence, "active").await;
    let file = platform
        .get(&format!("/v1/licenses/{qpu_licence}/file"))
        .await;
    assert_eq!(file.status, 200, "{}", file.body);

    // Entitlements: the read model and the fast check.
    let ent = portal
        .get(&format!(
            "/v1/entitlements?org={org}&min_position={}",
            r.body["position"]
        ))
        .await;
    assert_eq!(ent.status, 200, "{}", ent.body);
    assert_eq!(ent.body["features"], json!(["noise-models", "qpu", "sim"]));
    assert_eq!(ent.body["quotas"]["jobs"]["amount"], 2);
    assert_eq!(ent.body["limits"]["qubits"], 64);
    for (feature, amount, allowed, reason) in [
        ("qpu", 1, true, "feature qpu is part of a contract in force"),
        ("qubits", 64, true, "within the limit of 64 qubits"),
        ("qubits", 65, false, "65 exceeds the limit of 64 qubits"),
        (
            "annealer",
            1,
            false,
            "no contract in force grants \"annealer\" to this organization",
        ),
        (
            "jobs",
            3,
            false,
            "the hard quota of 2 jobs this month allows 2 more (0 used)",
        ),
    ] {
        let c = portal
            .post(
                "/v1/entitlements/check",
                json!({"org": org, "feature": feature, "amount": amount}),
            )
            .await;
        assert_eq!(c.status, 200, "{}", c.body);
        assert_eq!(c.body["allowed"], allowed, "{feature}: {}", c.body);
        assert_eq!(c.body["reason"], reason);
    }

    // Usage: two jobs pass the hard quota; the third is refused with a clear error.
    let mut jobs = vec![];
    for _ in 0..2 {
        let r = member
            .post(
                "/v1/jobs",
                json!({"organization_id": org, "backend": "ionq-aria"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        jobs.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let refused = member
        .post(
            "/v1/jobs",
            json!({"organization_id": org, "backend": "ionq-aria"}),
        )
        .await;
    is_problem(&refused, 403);
    assert!(refused.body["type"]
        .as_str()
        .unwrap()
        .ends_with("/quota-exceeded"));
    assert_eq!(
        refused.body["detail"],
        format!(
            "the hard quota of 2 jobs for {} is used up (2 used)",
            now_period()
        )
    );
    // A finished job's metrics are metered; crossing the soft quota raises an event.
    for action in ["start", "complete"] {
        let r = member
            .post(
                &format!("/v1/jobs/{}/{action}", jobs[0]),
                json!({"result_summary": {"ok": true}, "metrics": {"shots": 1500}}),
            )
            .await;
        assert_eq!(r.status, 200, "{action}: {}", r.body);
    }
    let exceeded = eventually("QuotaExceeded", Duration::from_secs(30), || async {
        platform
            .events_of("UsageMeter")
            .await
            .into_iter()
            .find(|e| e["envelope"]["event_type"] == "QuotaExceeded")
    })
    .await;
    assert_eq!(exceeded["envelope"]["payload"]["metric"], "shots");
    assert_eq!(exceeded["envelope"]["payload"]["enforcement"], "soft");
    assert_eq!(exceeded["envelope"]["payload"]["used"], 1500);
    assert_eq!(exceeded["envelope"]["tenant_id"], org.as_str());
    eventually(
        "usage in the read model",
        Duration::from_secs(30),
        || async {
            let r = owner.get("/v1/me/entitlements").await;
            (r.body["usage"]["shots"] == 1500 && r.body["usage"]["jobs"] == 2).then_some(())
        },
    )
    .await;
    // Soft: still allowed, and the answer says why.
    let soft = portal
        .post(
            "/v1/entitlements/check",
            json!({"org": org, "feature": "shots", "amount": 10}),
        )
        .await;
    assert_eq!(soft.body["allowed"], true);
    assert!(soft.body["reason"]
        .as_str()
        .unwrap()
        .contains("over the soft quota"));

    // An amendment re-issues the licence whose terms changed and renews the other.
    let mut items = line_items();
    items[0]["features"] = json!(["qpu", "sim", "pulse"]);
    let r = portal
        .post(
            &format!("/v1/contracts/{contract}/amend"),
            json!({"reason": "pulse access", "line_items": items, "ends_at": "2031-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let shown = portal.get(&format!("/v1/contracts/{contract}")).await;
    assert_eq!(shown.body["status"], "amended");
    let new_qpu = shown.body["licenses"]["qpu"].as_str().unwrap().to_owned();
    assert_ne!(new_qpu, qpu_licence);
    assert_eq!(shown.body["licenses"]["sim"], sim_licence.as_str());
    licence(platform, &qpu_licence, "revoked").await;
    let l = licence(platform, &new_qpu, "active").await;
    assert_eq!(l["terms"]["features"], json!(["pulse", "qpu", "sim"]));
    eventually(
        "the sim licence renewed",
        Duration::from_secs(30),
        || async {
            let l = platform.get(&format!("/v1/licenses/{sim_licence}")).await;
            (l.body["terms"]["expires_at"] == "2031-01-01T00:00:00Z").then_some(())
        },
    )
    .await;

    // The operator lists contracts by status (across customers without `org`).
    eventually(
        "the contract listed as amended",
        Duration::from_secs(30),
        || async {
            let r = platform
                .get(&format!("/v1/contracts?org={org}&status=amended"))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            (r.body["items"][0]["id"] == contract.as_str()).then_some(())
        },
    )
    .await;
    let drafts = platform.get("/v1/contracts?status=draft&limit=200").await;
    assert_eq!(drafts.status, 200, "{}", drafts.body);
    let drafts = drafts.body["items"].as_array().unwrap().clone();
    assert!(drafts.iter().all(|c| c["status"] == "draft"), "{drafts:?}");
    assert!(drafts.iter().all(|c| c["id"] != contract.as_str()));
    is_problem(&platform.get("/v1/contracts?status=signed-ish").await, 400);
    // Licences across organizations for the platform; a tenant without `org`: its own.
    eventually(
        "the new licence listed",
        Duration::from_secs(30),
        || async {
            let all = platform.get("/v1/licenses?limit=200").await;
            assert_eq!(all.status, 200, "{}", all.body);
            let items = all.body["items"].as_array().unwrap().clone();
            items
                .iter()
                .any(|l| l["id"] == new_qpu.as_str())
                .then_some(())
        },
    )
    .await;
    // QuantumLock's routes: on the API process (the Portal role alone does not serve them).
    let owner_at_quantumlock = Api {
        base: platform.base.clone(),
        ..owner.clone()
    };
    eventually("the owner's licences", Duration::from_secs(30), || async {
        let r = owner_at_quantumlock.get("/v1/licenses").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let items = r.body["items"].as_array().unwrap().clone();
        assert!(items.iter().all(|l| l["organization_id"] == org.as_str()));
        (items.len() == 3).then_some(())
    })
    .await;

    // The log, filtered; and the contract's own history, a hash chain.
    let sent = platform
        .get(&format!(
            "/v1/events?tenant={org}&aggregate_type=Contract&event_type=ContractSent&limit=1000"
        ))
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let sent = sent.body["events"].as_array().unwrap().clone();
    assert!(!sent.is_empty());
    assert!(sent
        .iter()
        .all(|e| e["envelope"]["event_type"] == "ContractSent"
            && e["envelope"]["tenant_id"] == org.as_str()));
    let history = platform
        .get(&format!("/v1/aggregates/Contract/{contract}/events"))
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    let chain = history.body["events"].as_array().unwrap().clone();
    assert_eq!(chain[0]["envelope"]["event_type"], "ContractDrafted");
    for (i, pair) in chain.windows(2).enumerate() {
        assert_eq!(pair[1]["envelope"]["sequence"], (i + 2) as u64);
        assert_eq!(
            pair[1]["envelope"]["prev_hash"],
            pair[0]["envelope"]["hash"]
        );
    }

    // Tenant isolation: another organization sees none of it.
    let globex = org_client_at(platform, &portal.base, &other, &["owner"]).await;
    for path in [
        format!("/v1/contracts/{contract}"),
        format!("/v1/entitlements?org={org}"),
        format!("/v1/customers/{org}"),
        format!("/v1/contracts?org={org}"),
        format!("/v1/invoices?org={org}"),
        format!("/v1/aggregates/Contract/{contract}/events"),
    ] {
        let r = globex.get(&path).await;
        is_problem(&r, 404);
    }
    let r = globex
        .post(
            "/v1/entitlements/check",
            json!({"org": org, "feature": "qpu"}),
        )
        .await;
    is_problem(&r, 404);
    let mine = globex.get("/v1/me/contracts").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.body["items"], json!([]));
    let mine = globex.get("/v1/me/licenses").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.body["items"], json!([]));
    eventually(
        "the owner's three licences",
        Duration::from_secs(30),
        || async {
            let theirs = owner.get("/v1/me/licenses").await;
            assert_eq!(theirs.status, 200, "{}", theirs.body);
            (theirs.body["items"].as_array().unwrap().len() == 3).then_some(())
        },
    )
    .await;
    let ents = globex.get("/v1/me/entitlements").await;
    assert_eq!(ents.body["features"], json!([]));
    let r = globex.get("/v1/me/evidence").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["items"], json!([]));
    eventually("the owner's contract", Duration::from_secs(30), || async {
        let mine = owner.get("/v1/me/contracts").await;
        (mine.body["items"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    // Customers cannot change contracts or bill.
    let r = owner
        .post(
            "/v1/invoices",
            json!({"contract_id": contract, "period": "2026-10"}),
        )
        .await;
    is_problem(&r, 403);

    // Termination revokes the licences, and the next CRL lists them.
    let r = portal
        .post(
            &format!("/v1/contracts/{contract}/terminate"),
            json!({"reason": "moved to a new contract"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    licence(platform, &new_qpu, "revoked").await;
    licence(platform, &sim_licence, "revoked").await;
    eventually(
        "the CRL lists the revoked licences",
        Duration::from_secs(30),
        || async {
            let crl = platform.get("/v1/crl").await;
            let text = crl.body.to_string();
            [&qpu_licence, &new_qpu, &sim_licence]
                .iter()
                .all(|id| text.contains(id.as_str()))
                .then_some(())
        },
    )
    .await;
    let r = portal
        .post(
            &format!("/v1/contracts/{contract}/terminate"),
            json!({"reason": "again"}),
        )
        .await;
    is_problem(&r, 409);

    // The final invoice: recurring prices plus metered usage, exact, in EUR.
    let r = portal
        .post(
            "/v1/invoices",
            json!({"contract_id": contract, "period": now_period()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let invoice = r.body["id"].as_str().unwrap().to_owned();
    let twice = portal
        .post(
            "/v1/invoices",
            json!({"contract_id": contract, "period": now_period()}),
        )
        .await;
    is_problem(&twice, 409);
    let shown = owner.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    // 2 × 1500.00 + 99.99 + 2 jobs × 25.00 + 1500 shots × 0.03 = 3194.99 EUR
    assert_eq!(shown.body["total"], 319_499);
    assert_eq!(shown.body["total_display"], "3194.99 EUR");
    assert_eq!(shown.body["lines"].as_array().unwrap().len(), 4);
    assert_eq!(shown.body["status"], "issued");
    let r = globex.get(&format!("/v1/invoices/{invoice}")).await;
    is_problem(&r, 404);
    // The built-in provider records it; Stripe's webhook pays it, once.
    let r = portal
        .post(&format!("/v1/invoices/{invoice}/send"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let shown = portal.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(shown.body["status"], "open");
    webhooks(platform, portal, &invoice).await;
    let shown = owner.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(shown.body["status"], "paid", "{}", shown.body);
    // The operator lists invoices by status (across customers without `org`).
    eventually(
        "the invoice listed as paid",
        Duration::from_secs(30),
        || async {
            let r = platform.get("/v1/invoices?status=paid&limit=200").await;
            assert_eq!(r.status, 200, "{}", r.body);
            let items = r.body["items"].as_array().unwrap().clone();
            assert!(items.iter().all(|i| i["status"] == "paid"), "{items:?}");
            items
                .iter()
                .any(|i| i["id"] == invoice.as_str())
                .then_some(())
        },
    )
    .await;
    let open = platform
        .get(&format!("/v1/invoices?org={org}&status=open"))
        .await;
    assert_eq!(open.status, 200, "{}", open.body);
    assert_eq!(open.body["items"], json!([]), "{}", open.body);
    is_problem(&platform.get("/v1/invoices?status=overdue").await, 400);
    let mine = owner.get("/v1/me/invoices").await;
    assert_eq!(mine.status, 200, "{}", mine.body);

    gateway_attacks(platform, portal, &owner, bootstrap_secret).await;
}

fn stripe_event(id: &str, event_type: &str, invoice: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": event_type, "created": chrono::Utc::now().timestamp(),
        "api_version": "2026-08-26.dahlia", "livemode": false,
        "data": {"object": {"id": "in_1QuantusTest", "object": "invoice", "status": "paid",
                            "metadata": {"quantus_invoice_id": invoice}}}
    }))
    .unwrap()
}

async fn post_webhook(api: &Api, body: &[u8], signature: Option<String>) -> crate::harness::Reply {
    let mut b = api
        .http
        .post(format!("{}/v1/billing/webhooks/stripe", api.base))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        b = b.header("stripe-signature", s);
    }
    api.send(b).await
}

/// The webhook takes signed, fresh events once; forgeries and stale replays are refused.
async fn webhooks(platform: &Api, api: &Api, invoice: &str) {
    use quantus_infra::billing::stripe_signature_header;
    let now = chrono::Utc::now().timestamp();
    let body = stripe_event("evt_paid_1", "invoice.paid", invoice);
    let anonymous = Api {
        token: String::new(),
        ..api.clone()
    };
    // No signature, a forged one, another secret, a stale (replayed) delivery.
    let r = post_webhook(&anonymous, &body, None).await;
    is_problem(&r, 400);
    let r = post_webhook(
        &anonymous,
        &body,
        Some(format!("t={now},v1={}", "ab".repeat(32))),
    )
    .await;
    is_problem(&r, 400);
    let r = post_webhook(
        &anonymous,
        &body,
        Some(stripe_signature_header(&body, "whsec_someone_else", now)),
    )
    .await;
    is_problem(&r, 400);
    let r = post_webhook(
        &anonymous,
        &body,
        Some(stripe_signature_header(&body, WEBHOOK_SECRET, now - 600)),
    )
    .await;
    is_problem(&r, 400);
    let mut tampered = body.clone();
    let signature = stripe_signature_header(&body, WEBHOOK_SECRET, now);
    tampered.extend_from_slice(b" ");
    let r = post_webhook(&anonymous, &tampered, Some(signature.clone())).await;
    is_problem(&r, 400);
    let of_this = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .filter(|e| e["envelope"]["aggregate_id"] == invoice)
            .collect()
    };
    let before = of_this(platform.events_of("Invoice").await).len();
    assert_eq!(
        api.get(&format!("/v1/invoices/{invoice}")).await.body["status"],
        "open",
        "a refused webhook changed the invoice"
    );
    // The real one, then the same event delivered again: processed once.
    let r = post_webhook(&anonymous, &body, Some(signature)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["duplicate"], false);
    let r = post_webhook(
        &anonymous,
        &body,
        Some(stripe_signature_header(&body, WEBHOOK_SECRET, now + 1)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["duplicate"], true);
    let after = of_this(platform.events_of("Invoice").await);
    assert_eq!(after.len(), before + 1, "one InvoicePaid, not two");
    let paid = after.last().unwrap();
    assert_eq!(paid["envelope"]["event_type"], "InvoicePaid");
    assert_eq!(paid["envelope"]["payload"]["reference"], "evt_paid_1");
}

/// Portal routes verify QSA's tokens through its JWKS: forged, tampered, unknown-key and
/// revoked tokens are refused; a rotated key is followed.
async fn gateway_attacks(platform: &Api, portal: &Api, owner: &Api, secret: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = owner.token.split('.').collect();
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let with = |token: String| Api {
        token,
        ..portal.clone()
    };
    // Claims changed to the platform tenant: the signature no longer matches.
    claims["org"] = json!("platform");
    claims["roles"] = json!(["platform_admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    // alg none, and a kid QSA never published.
    let none = format!(
        "{}.{}.",
        b64.encode(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
        parts[1]
    );
    let mut unknown = header.clone();
    unknown["kid"] = json!("no-such-key");
    let unknown_kid = format!(
        "{}.{}.{}",
        b64.encode(unknown.to_string()),
        parts[1],
        parts[2]
    );
    for (what, token) in [
        ("tampered", tampered),
        ("alg none", none),
        ("unknown kid", unknown_kid),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let r = with(token).get("/v1/me/contracts").await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(r.headers.get("www-authenticate").is_some(), "{what}");
    }
    let r = with(String::new()).get("/v1/me/contracts").await;
    assert_eq!(r.status, 401);
    // Key rotation: a token signed by the new key is accepted (the JWKS is refetched).
    let r = platform
        .post("/v1/keys/rotate", json!({"purpose": "token"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = Api {
        token: client_token(&platform.base, "quantus-bootstrap-admin", secret, None),
        ..portal.clone()
    };
    let r = fresh.get("/v1/contracts").await;
    assert_eq!(r.status, 200, "a token of the rotated key: {}", r.body);
    // A revoked token stops working at the Portal too.
    let r = platform
        .http
        .post(format!("{}/oauth2/revoke", platform.base))
        .basic_auth("quantus-bootstrap-admin", Some(secret))
        .form(&[("token", fresh.token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The Portal may be another process: it refuses the token once its log follower has
    // passed the revocation, within the staleness bound (QUANTUS_READ_STALENESS_MS, 1 s).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = fresh.get("/v1/contracts").await;
    assert_eq!(r.status, 401, "a revoked token: {}", r.body);
}

#[tokio::test(flavor = "current_thread")]
async fn the_portal_runs_embedded() {
    let dir = temp_dir("portal");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    );
    let (_, secret) = crate::harness::bootstrap_credentials(&dir);
    let api = server.client();
    scenario(&api, &api, &secret).await;
    // The routes are described in the OpenAPI document.
    let spec = api.get("/openapi.json").await.body;
    for path in [
        "/v1/contracts/{id}/sign",
        "/v1/entitlements/check",
        "/v1/billing/webhooks/stripe",
        "/v1/me/licenses",
        "/v1/licenses/{id}",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} is not documented"
        );
    }
    let db = format!("sqlite://{}", dir.join("quantus.db").display());
    for aggregate in ["Customer", "Contract", "UsageMeter", "Invoice"] {
        wait_for_projection(&db, "commercial", aggregate).await;
    }
    drop(server);
    assert_model_equals_replay("commercial", &["--data-dir", dir.to_str().unwrap()]);
}

/// Invoices go to Stripe's API (stripe-mock) when a Stripe key is configured.
#[tokio::test(flavor = "current_thread")]
async fn invoices_are_sent_to_stripe() {
    let base = crate::stripe::stripe_api_base();
    let dir = temp_dir("portal-stripe");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("STRIPE_SECRET_KEY", "sk_test_quantus"),
            ("STRIPE_API_BASE", base.as_str()),
        ],
    );
    let api = server.client();
    let (org, _) = api.create_org("Initech").await;
    register_customer(&api, &org, "USD").await;
    let contract = active_contract(&api, &org, line_items(), "2030-01-01T00:00:00Z").await;
    let r = api
        .post(
            &format!("/v1/contracts/{contract}/terminate"),
            json!({"reason": "trial over"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .post(
            "/v1/invoices",
            json!({"contract_id": contract, "period": now_period()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let invoice = r.body["id"].as_str().unwrap().to_owned();
    let r = api
        .post(&format!("/v1/invoices/{invoice}/send"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let shown = api.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(shown.body["provider"], "stripe");
    assert!(shown.body["external_id"]
        .as_str()
        .unwrap()
        .starts_with("in_"));
    let sent = api.events_of("Invoice").await;
    let sent = sent.last().unwrap();
    assert_eq!(sent["envelope"]["event_type"], "InvoiceSent");
    assert!(sent["envelope"]["payload"]["customer_external_id"]
        .as_str()
        .unwrap()
        .starts_with("cus_"));
    // The provider's status is asked for; stripe-mock's fixture says draft, so nothing is
    // recorded as paid.
    let r = api
        .post(&format!("/v1/invoices/{invoice}/refresh"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "open");
    // No webhook secret configured: the webhook refuses everything.
    let r = post_webhook(&api, b"{}", Some("t=1,v1=00".into())).await;
    is_problem(&r, 503);
}

/// A contract whose term has ended is recorded as expired by the Portal's sweep (which runs at
/// start and every minute), and grants nothing any more.
#[tokio::test(flavor = "current_thread")]
async fn contracts_expire_at_their_end() {
    let dir = temp_dir("portal-expiry");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Hooli").await;
    register_customer(&api, &org, "GBP").await;
    // Long enough for draft, send, sign and activate on a loaded machine; the wait below
    // runs to the end itself.
    let ends_at = chrono::Utc::now() + chrono::Duration::seconds(20);
    let ends = ends_at.to_rfc3339();
    let contract = active_contract(&api, &org, line_items(), &ends).await;
    let r = api
        .post(&format!("/v1/contracts/{contract}/expire"), json!({}))
        .await;
    is_problem(&r, 409);
    let db = format!("sqlite://{}", dir.join("quantus.db").display());
    wait_for_projection(&db, "commercial", "Contract").await;
    drop(server);
    let until_end = (ends_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_end + Duration::from_secs(1)).await;
    let server = Server::embedded(&dir);
    let api = server.client();
    let c = eventually("the contract expired", Duration::from_secs(30), || async {
        let c = api.get(&format!("/v1/contracts/{contract}")).await;
        (c.body["status"] == "expired").then_some(c.body)
    })
    .await;
    assert!(c["licenses"].as_object().unwrap().len() == 2, "{c}");
    let e = api.get(&format!("/v1/entitlements?org={org}")).await;
    assert_eq!(e.body["features"], json!([]), "{}", e.body);
    // The expiry sweep recorded it (the licence steps it plans are recorded after it).
    let events = api.events_of("Contract").await;
    let expired: Vec<_> = events
        .iter()
        .filter(|e| e["envelope"]["event_type"] == "ContractExpired")
        .collect();
    assert_eq!(expired.len(), 1, "{events:?}");
    assert_eq!(expired[0]["envelope"]["actor"]["id"], "contract-expiry");
    // The billing run (at start, then hourly) invoiced last month, which the contract's term
    // covers, and handed the invoice to the (built-in) provider.
    let previous = {
        let now = chrono::Utc::now();
        quantus_domain::commercial::usage::Period::of(now)
            .previous()
            .to_string()
    };
    let invoices = eventually("last month's invoice", Duration::from_secs(30), || async {
        let r = api.get(&format!("/v1/invoices?org={org}")).await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        (items.iter().any(|i| i["status"] == "open")).then_some(items)
    })
    .await;
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    assert_eq!(invoices[0]["period"], previous.as_str());
    assert_eq!(invoices[0]["contract_id"], contract.as_str());
    assert_eq!(invoices[0]["total"], 309_999); // 2 × 1500.00 + 99.99 EUR-cents, no usage
    let issued = api.events_of("Invoice").await;
    assert_eq!(issued[0]["envelope"]["actor"]["id"], "billing-run");
}

/// Drafts, sends and signs a contract of `org`; returns its id.
async fn signed_contract(api: &Api, org: &str) -> String {
    let r = api
        .post(
            "/v1/contracts",
            json!({"organization_id": org, "line_items": line_items(),
                   "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let contract = r.body["id"].as_str().unwrap().to_owned();
    for (action, body) in [("send", json!({})), ("sign", json!({"signed_by": "Bo"}))] {
        let r = api
            .post(&format!("/v1/contracts/{contract}/{action}"), body)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    contract
}

/// Waits until every line item of `contract` stands at `standing` (GET /v1/contracts/{id});
/// returns the contract.
pub async fn licences_stand(api: &Api, contract: &str, standing: &str) -> Value {
    eventually(
        &format!("contract {contract}'s licences {standing}"),
        Duration::from_secs(60),
        || async {
            let c = api.get(&format!("/v1/contracts/{contract}")).await;
            let steps = c.body["license_steps"].as_object()?;
            (steps.len() == 2 && steps.values().all(|s| s["standing"] == standing))
                .then_some(c.body)
        },
    )
    .await
}

/// Waits until the commercial read model (GET /v1/contracts?org=) shows every line item of
/// `contract` at `standing`.
pub async fn listed_licences_stand(api: &Api, org: &str, contract: &str, standing: &str) {
    eventually(
        &format!("the listed contract {contract}'s licences {standing}"),
        Duration::from_secs(60),
        || async {
            let r = api.get(&format!("/v1/contracts?org={org}")).await;
            let items = r.body["items"].as_array()?;
            let c = items.iter().find(|c| c["id"] == contract)?;
            let steps = c["license_steps"].as_object()?;
            (steps.len() == 2 && steps.values().all(|s| s["standing"] == standing)).then_some(())
        },
    )
    .await
}

/// A contract activated while its organization is suspended shows its licences pending
/// (QuantumLock's refusal can pass), the process manager goes on with other contracts, and
/// the organization's reactivation has the licences issued at once, without a restart.
pub async fn suspended_then_reactivated(platform: &Api, portal: &Api) {
    let (org, _) = platform.create_org("Suspended Ltd").await;
    let (ok_org, _) = platform.create_org("Fine Ltd").await;
    register_customer(portal, &org, "CHF").await;
    register_customer(portal, &ok_org, "CHF").await;
    let contract = signed_contract(portal, &org).await;
    let r = platform
        .post(
            &format!("/v1/organizations/{org}/suspend"),
            json!({"reason": "unpaid"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = portal
        .post(&format!("/v1/contracts/{contract}/activate"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A later contract of another organization is still carried out.
    let other = active_contract(portal, &ok_org, line_items(), "2030-01-01T00:00:00Z").await;
    let shown = licences_stand(portal, &other, "issued").await;
    licence(
        platform,
        shown["license_steps"]["qpu"]["license_id"]
            .as_str()
            .unwrap(),
        "active",
    )
    .await;
    let pending = licences_stand(portal, &contract, "pending").await;
    let qpu = &pending["license_steps"]["qpu"];
    assert_eq!(qpu["hold"], "organization_suspended", "{pending}");
    assert!(
        qpu["reason"].as_str().unwrap().contains("suspended"),
        "{pending}"
    );
    assert!(qpu["retry_at"].as_str().is_some(), "{pending}");
    assert_eq!(pending["license_failures"], json!({}), "{pending}");
    let id = qpu["license_id"].as_str().unwrap().to_owned();
    let r = platform.get(&format!("/v1/licenses/{id}")).await;
    assert_eq!(r.status, 404, "no licence yet: {}", r.body);
    listed_licences_stand(portal, &org, &contract, "pending").await;
    // Pending is recorded as events on the contract.
    let events = platform.events_of("Contract").await;
    assert!(
        events
            .iter()
            .any(|e| e["envelope"]["event_type"] == "ContractLicensePending"
                && e["envelope"]["aggregate_id"] == contract.as_str()),
        "no ContractLicensePending"
    );
    // A suspended organization gets no new contract either.
    let r = portal
        .post(
            "/v1/contracts",
            json!({"organization_id": org, "line_items": line_items(),
                   "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    is_problem(&r, 409);

    let r = platform
        .post(&format!("/v1/organizations/{org}/reactivate"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let issued = licences_stand(portal, &contract, "issued").await;
    assert_eq!(issued["status"], "active");
    // Issued because of the reactivation (not a timer that happened to fire): the recorded
    // outcome names the reactivation as its cause.
    let reactivated = platform.events_of("Organization").await;
    let reactivated = reactivated
        .iter()
        .find(|e| {
            e["envelope"]["event_type"] == "OrganizationReactivated"
                && e["envelope"]["aggregate_id"] == org.as_str()
        })
        .expect("OrganizationReactivated");
    let events = platform.events_of("Contract").await;
    let carried_out: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["envelope"]["event_type"] == "ContractLicenseCarriedOut"
                && e["envelope"]["aggregate_id"] == contract.as_str()
        })
        .collect();
    assert_eq!(carried_out.len(), 2, "{carried_out:?}");
    for e in carried_out {
        assert_eq!(
            e["envelope"]["causation_id"], reactivated["envelope"]["event_id"],
            "{e}"
        );
    }
    assert_eq!(issued["license_failures"], json!({}), "{issued}");
    licence(platform, &id, "active").await;
    listed_licences_stand(portal, &org, &contract, "issued").await;
}

/// A licence QuantumLock refuses for good (here: its id already holds other terms) is
/// recorded as failed, once, and never retried.
pub async fn refused_for_good(platform: &Api, portal: &Api) {
    let (org, _) = platform.create_org("Clash Ltd").await;
    register_customer(portal, &org, "CHF").await;
    let contract = signed_contract(portal, &org).await;
    // Someone issued licences under the ids the contract will plan, with other terms.
    for item in ["qpu", "sim"] {
        let id = quantus_domain::commercial::contract::license_id(&contract, item, 0);
        let r = platform
            .put(
                &format!("/v1/licenses/{id}"),
                json!({"organization_id": org, "product": "other", "edition": "x",
                       "expires_at": "2031-01-01T00:00:00Z", "max_activations": 1}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = portal
        .post(&format!("/v1/contracts/{contract}/activate"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let failed = licences_stand(portal, &contract, "failed").await;
    assert_eq!(
        failed["license_failures"].as_object().unwrap().len(),
        2,
        "{failed}"
    );
    assert!(
        failed["license_steps"]["qpu"]["reason"]
            .as_str()
            .unwrap()
            .contains("other terms"),
        "{failed}"
    );
    // Long enough for several retries (when the Portal retries every 2 s at most) had it been
    // taken for transient: still one failure each and nothing pending.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let events = platform.events_of("Contract").await;
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| {
                e["envelope"]["event_type"] == kind
                    && e["envelope"]["aggregate_id"] == contract.as_str()
            })
            .count()
    };
    assert_eq!(of("ContractLicenseFailed"), 2);
    assert_eq!(of("ContractLicensePending"), 0);
    assert_eq!(of("ContractLicenseCarriedOut"), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_licence_refused_while_suspended_is_pending_then_issued_on_reactivation() {
    let dir = temp_dir("portal-suspended");
    // No timed retry within the test: only the reactivation can have the licences issued.
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("QUANTUS_LICENSE_RETRY_FIRST_SECONDS", "3600"),
            ("QUANTUS_LICENSE_RETRY_MAX_SECONDS", "3600"),
        ],
    );
    let api = server.client();
    suspended_then_reactivated(&api, &api).await;
    let db = format!("sqlite://{}", dir.join("quantus.db").display());
    wait_for_projection(&db, "commercial", "Contract").await;
    drop(server);
    assert_model_equals_replay("commercial", &["--data-dir", dir.to_str().unwrap()]);
}

/// Starts forwarding TCP connections from `127.0.0.1:port` to `target` (`host:port`): the
/// moment QuantumLock "comes up" at the address the Portal was given.
pub async fn forward(port: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is still free");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// The Portal (`portal`) is pointed at a QuantumLock address nothing listens on
/// (`quantumlock_port`): an activated contract's licences are pending (unavailable) and
/// retried with backoff; once QuantumLock answers there (forwarded to `platform`), they are
/// issued.
pub async fn quantumlock_down_then_up(platform: &Api, portal: &Api, quantumlock_port: u16) {
    let (org, _) = platform.create_org("Patient Ltd").await;
    register_customer(portal, &org, "SEK").await;
    let contract = active_contract(portal, &org, line_items(), "2030-01-01T00:00:00Z").await;
    let pending = licences_stand(portal, &contract, "pending").await;
    assert_eq!(
        pending["license_steps"]["qpu"]["hold"], "unavailable",
        "{pending}"
    );
    // Retried: later attempts are recorded, each with its next time.
    let retried = eventually("a second attempt", Duration::from_secs(60), || async {
        let c = api_contract(portal, &contract).await;
        (c["license_steps"]["qpu"]["attempt"].as_u64()? >= 2).then_some(c)
    })
    .await;
    assert_eq!(
        retried["license_steps"]["qpu"]["standing"], "pending",
        "{retried}"
    );
    let target = platform
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = forward(quantumlock_port, target).await;
    let issued = licences_stand(portal, &contract, "issued").await;
    assert_eq!(issued["license_failures"], json!({}), "{issued}");
    licence(
        platform,
        issued["license_steps"]["sim"]["license_id"]
            .as_str()
            .unwrap(),
        "active",
    )
    .await;
    listed_licences_stand(portal, &org, &contract, "issued").await;
    proxy.abort();
}

async fn api_contract(api: &Api, contract: &str) -> Value {
    api.get(&format!("/v1/contracts/{contract}")).await.body
}

#[tokio::test(flavor = "current_thread")]
async fn a_quantumlock_that_is_down_is_retried_until_it_answers() {
    let dir = temp_dir("portal-ql-down");
    let port = free_port();
    let quantumlock = format!("http://127.0.0.1:{port}");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("QUANTUS_QUANTUMLOCK_URL", quantumlock.as_str()),
            ("QUANTUS_LICENSE_RETRY_MAX_SECONDS", "2"),
        ],
    );
    let api = server.client();
    quantumlock_down_then_up(&api, &api, port).await;
    // Timed retries run every 2 s at most here: a permanent refusal is still recorded once.
    refused_for_good(&api, &api).await;
}

/// A pending licence survives a restart: the restarted Portal, whose cursor is past the
/// activation, finds the pending step in the store and retries it until QuantumLock answers.
#[tokio::test(flavor = "current_thread")]
async fn a_pending_licence_is_retried_after_a_restart() {
    let dir = temp_dir("portal-pending-restart");
    let port = free_port();
    let quantumlock = format!("http://127.0.0.1:{port}");
    let vars = [
        ("QUANTUS_QUANTUMLOCK_URL", quantumlock.as_str()),
        ("QUANTUS_LICENSE_RETRY_MAX_SECONDS", "2"),
    ];
    let server = Server::start(&dir, &["--listen", "127.0.0.1:0"], &vars);
    let api = server.client();
    let (org, _) = api.create_org("Restarted Ltd").await;
    register_customer(&api, &org, "NOK").await;
    let contract = active_contract(&api, &org, line_items(), "2030-01-01T00:00:00Z").await;
    licences_stand(&api, &contract, "pending").await;
    drop(server);
    let server = Server::start(&dir, &["--listen", "127.0.0.1:0"], &vars);
    let api = server.client();
    let c = api_contract(&api, &contract).await;
    assert_eq!(c["license_steps"]["qpu"]["standing"], "pending", "{c}");
    let target = api.base.trim_start_matches("http://").trim_end_matches('/');
    let proxy = forward(port, target.to_owned()).await;
    licences_stand(&api, &contract, "issued").await;
    proxy.abort();
}
