//! `quantus bench portal`: entitlement checks per second over HTTP (and the same read-model call
//! made directly, without HTTP and authentication), and the latency from a contract's
//! activation to its licence file being available at QuantumLock. Against an in-process server
//! wired as `quantus serve` wires the all-in-one process: every projection (from the store, or
//! from Kafka when brokers are given), the ContractLicensing process manager calling QuantumLock
//! over HTTP with the Portal's own service principal, and usage metering. Prints figures;
//! asserts nothing.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_domain::commercial::contract::ContractActivated;
use quantus_domain::licensing::license::LicenseIssued;
use quantus_projections::commercial::CommercialView;
use reqwest::StatusCode;
use serde_json::json;

use super::bench_kit::{
    access_token, load, ms, quantile, report, signed_contract, Api, Deployment,
};

/// The checks, in turn: a granted feature, a limit within and over, a quota.
const CHECKS: [(&str, i64, bool); 4] = [
    ("qpu", 1, true),
    ("qubits", 32, true),
    ("qubits", 128, false),
    ("jobs", 10, true),
];

/// How often the licence file is asked for after an activation.
const POLL: Duration = Duration::from_millis(2);

fn latency(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    println!(
        "{what:<48} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  ({} contracts)",
        ms(quantile(latencies, 0.5)),
        ms(quantile(latencies, 0.99)),
        ms(latencies[latencies.len() - 1]),
        latencies.len()
    );
}

pub async fn run(
    database_url: Option<&str>,
    kafka: Option<&str>,
    checks: u64,
    concurrency: u64,
    contracts: u64,
) -> anyhow::Result<ExitCode> {
    let contracts = contracts.max(1);
    let mut deployment = Deployment::start(database_url, kafka).await?;
    let (db, base, http, api) = (
        deployment.db.clone(),
        deployment.base.clone(),
        deployment.http.clone(),
        deployment.api.clone(),
    );
    let (admin_id, admin_secret) = deployment.admin.clone();
    println!(
        "mode: {}; checks: {checks}; concurrency: {concurrency}; contracts: {contracts}",
        deployment.mode
    );

    // 1. Contract activation -> licence file available, one contract at a time.
    let mut orgs = Vec::new();
    let mut to_file = Vec::new();
    let mut activate_calls = Vec::new();
    let (mut file_calls, mut pairs, mut polls) = (Vec::new(), Vec::new(), 0u64);
    let (mut timeouts, mut odd_statuses, mut last_position) = (0u64, Vec::new(), 0u64);
    for n in 0..contracts {
        let (org, contract) = signed_contract(&api, n).await?;
        let started = Instant::now();
        let activated = api
            .ok(
                reqwest::Method::POST,
                &format!("/v1/contracts/{contract}/activate"),
                None,
            )
            .await?;
        activate_calls.push(started.elapsed());
        last_position = last_position.max(activated["position"].as_u64().unwrap_or(0));
        let shown = api
            .ok(
                reqwest::Method::GET,
                &format!("/v1/contracts/{contract}"),
                None,
            )
            .await?;
        let license = shown["licenses"]["qpu"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("contract {contract} names no licence: {shown}"))?
            .to_owned();
        let file = format!("{base}/v1/licenses/{license}/file");
        let deadline = started + Duration::from_secs(60);
        loop {
            let asked = Instant::now();
            let status = http
                .get(&file)
                .bearer_auth(&api.token)
                .send()
                .await?
                .status();
            polls += 1;
            if status == StatusCode::OK {
                to_file.push(started.elapsed());
                file_calls.push(asked.elapsed());
                break;
            }
            if status != StatusCode::NOT_FOUND && !odd_statuses.contains(&status) {
                odd_statuses.push(status);
            }
            if Instant::now() > deadline {
                timeouts += 1;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        orgs.push(org);
        pairs.push((contract, license));
    }
    latency(
        "activate call (HTTP, until its answer)",
        &mut activate_calls,
    );
    if to_file.is_empty() {
        println!("activation -> licence file: no licence file appeared within 60 s");
    } else {
        latency("activation -> licence file available", &mut to_file);
    }
    // Where the time went, from the log: each event's `occurred_at` is when its command's
    // request arrived, so this is activation request -> the process manager's PUT arriving at
    // QuantumLock (log wake-up, contract load, token, HTTP).
    let mut activated_at = std::collections::HashMap::new();
    let mut issued_at = std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let records = quantus_infra::event_store::read_log(&db, after, 5000).await?;
        let Some(last) = records.last().map(|r| r.position) else {
            break;
        };
        for r in records {
            let e = r.envelope;
            let times = if e.is::<ContractActivated>() {
                &mut activated_at
            } else if e.is::<LicenseIssued>() {
                &mut issued_at
            } else {
                continue;
            };
            times.insert(e.aggregate_id, e.occurred_at);
        }
        after = last;
    }
    let mut to_issue: Vec<Duration> = pairs
        .iter()
        .filter_map(|(c, l)| (*issued_at.get(l)? - *activated_at.get(c)?).to_std().ok())
        .collect();
    if !to_issue.is_empty() {
        latency(
            "  activation -> LicenseIssued (log timestamps)",
            &mut to_issue,
        );
    }
    if !file_calls.is_empty() {
        latency(
            "  the answering GET .../file (signs the file)",
            &mut file_calls,
        );
    }
    println!(
        "  polls of GET .../file: {polls} ({:.1} per contract, every {} ms)",
        polls as f64 / contracts as f64,
        POLL.as_millis()
    );
    if timeouts > 0 || !odd_statuses.is_empty() {
        println!(
            "  licence files not there after 60 s: {timeouts}; statuses other than 404 while polling: {odd_statuses:?}"
        );
    }

    // The checks read the commercial read model: wait until it has the last activation.
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            &format!(
                "/v1/entitlements?org={}&min_position={last_position}&wait_ms=30000",
                orgs[orgs.len() - 1]
            ),
            None,
        )
        .await?;
    if !status.is_success() {
        println!("  the read model did not catch up: {status} {body}");
    }

    // 2. Entitlement checks over HTTP (bearer token verified through QSA's JWKS, liveness check).
    // A fresh token: access tokens live ten minutes.
    let api = Api {
        token: access_token(&http, &base, &admin_id, &admin_secret).await?,
        ..api
    };
    let orgs = Arc::new(orgs);
    let unexpected = Arc::new(AtomicU64::new(0));
    let (o, u, a) = (orgs.clone(), unexpected.clone(), api.clone());
    let (elapsed, mut lat) = load(checks, concurrency, move |i| {
        let (orgs, unexpected, api) = (o.clone(), u.clone(), a.clone());
        async move {
            let (feature, amount, expected) = CHECKS[(i % CHECKS.len() as u64) as usize];
            let org = &orgs[((i / CHECKS.len() as u64) % orgs.len() as u64) as usize];
            let (status, body) = api
                .call(
                    reqwest::Method::POST,
                    "/v1/entitlements/check",
                    Some(json!({"org": org, "feature": feature, "amount": amount})),
                )
                .await?;
            anyhow::ensure!(status.is_success(), "entitlement check: {status} {body}");
            if body["allowed"].as_bool() != Some(expected) {
                unexpected.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await?;
    report("entitlement checks (HTTP)", checks, elapsed, &mut lat);
    let http_unexpected = unexpected.swap(0, Ordering::Relaxed);

    // The HTTP floor of this client and server: a route with no token and no database.
    let (h, healthz) = (http.clone(), format!("{base}/healthz"));
    let (elapsed, mut lat) = load(checks, concurrency, move |_| {
        let (http, url) = (h.clone(), healthz.clone());
        async move {
            let r = http.get(url).send().await?;
            anyhow::ensure!(r.status().is_success(), "healthz: {}", r.status());
            r.bytes().await?;
            Ok(())
        }
    })
    .await?;
    report("GET /healthz (HTTP floor)", checks, elapsed, &mut lat);

    // HTTP and authentication without the read model: the token is verified (signature, then
    // the grant and the client are loaded to see they are still live), then the body is
    // refused (no `feature`).
    let a = api.clone();
    let (elapsed, mut lat) = load(checks, concurrency, move |_| {
        let api = a.clone();
        async move {
            let (status, body) = api
                .call(
                    reqwest::Method::POST,
                    "/v1/entitlements/check",
                    Some(json!({"org": "bench"})),
                )
                .await?;
            anyhow::ensure!(
                matches!(status.as_u16(), 400 | 422),
                "an authenticated bad request: {status} {body}"
            );
            Ok(())
        }
    })
    .await?;
    report(
        "authenticated, refused body (HTTP + auth)",
        checks,
        elapsed,
        &mut lat,
    );

    // 3. The same decision straight from the read model (no HTTP, no token).
    let (o, u, pool) = (orgs.clone(), unexpected.clone(), db.pool.clone());
    let (elapsed, mut lat) = load(checks, concurrency, move |i| {
        let (orgs, unexpected, pool) = (o.clone(), u.clone(), pool.clone());
        async move {
            let (feature, amount, expected) = CHECKS[(i % CHECKS.len() as u64) as usize];
            let org = &orgs[((i / CHECKS.len() as u64) % orgs.len() as u64) as usize];
            let row = CommercialView::entitlements(&pool, org, Utc::now()).await?;
            let decision = row.entitlements.check(feature, amount, &row.usage);
            if decision.allowed != expected {
                unexpected.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await?;
    report(
        "entitlement checks (read model, direct)",
        checks,
        elapsed,
        &mut lat,
    );
    let direct_unexpected = unexpected.load(Ordering::Relaxed);
    println!(
        "  mix: qpu (feature), qubits 32 (limit 64), qubits 128 (over), jobs 10 (quota) over {} organizations; unexpected decisions: {http_unexpected} (HTTP), {direct_unexpected} (direct)",
        orgs.len()
    );

    // A piece that stopped on its own is worth knowing about.
    let stopped = deployment.stopped();
    if !stopped.is_empty() {
        println!("  stopped during the run: {stopped:?}");
    }
    deployment.stop().await?;
    Ok(ExitCode::SUCCESS)
}
