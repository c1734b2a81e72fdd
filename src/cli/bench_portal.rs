//! `quantus bench portal`: entitlement checks per second over HTTP (and the same read-model call
//! made directly, without HTTP and authentication), and the latency from a contract's
//! activation to its licence file being available at QuantumLock. Against an in-process server
//! wired as `quantus serve` wires the all-in-one process: every projection (from the store, or
//! from Kafka when brokers are given), the ContractLicensing process manager calling QuantumLock
//! over HTTP with the Portal's own service principal, and usage metering. Prints figures;
//! asserts nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_api::AppState;
use quantus_commands::commercial::{ContractLicensing, UsageMetering};
use quantus_commands::identity::NewClient;
use quantus_domain::commercial::contract::ContractActivated;
use quantus_domain::identity::client::{AuthMethod, ClientKind, GrantType};
use quantus_domain::identity::Role;
use quantus_domain::licensing::license::LicenseIssued;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::config::Secret;
use quantus_infra::gateway::{QuantumLockClient, ServiceCredentials, ServiceToken};
use quantus_infra::keystore::{master_key, FileKeystore};
use quantus_infra::relay::Relay;
use quantus_infra::Database;
use quantus_projections::commercial::CommercialView;
use quantus_projections::runner::ProjectionRunner;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::ExitCode;
use tokio::task::JoinSet;
use uuid::Uuid;

/// The checks, in turn: a granted feature, a limit within and over, a quota.
const CHECKS: [(&str, i64, bool); 4] = [
    ("qpu", 1, true),
    ("qubits", 32, true),
    ("qubits", 128, false),
    ("jobs", 10, true),
];

/// How often the licence file is asked for after an activation.
const POLL: Duration = Duration::from_millis(2);

fn ctx(tenant: &str) -> CommandContext {
    CommandContext {
        tenant_id: tenant.to_owned(),
        actor: Actor {
            kind: ActorKind::System,
            id: "bench".into(),
        },
        occurred_at: quantus_domain::envelope::truncate_to_micros(Utc::now()),
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q) as usize]
}

pub(crate) fn report(what: &str, n: u64, elapsed: Duration, latencies: &mut [Duration]) {
    latencies.sort();
    println!(
        "{what:<48} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({n} in {:.2} s)",
        n as f64 / elapsed.as_secs_f64(),
        ms(quantile(latencies, 0.5)),
        ms(quantile(latencies, 0.99)),
        elapsed.as_secs_f64()
    );
}

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

/// Runs `count` calls of `call(i)` from `concurrency` tasks; returns elapsed time and latencies.
async fn load<F, Fut>(
    count: u64,
    concurrency: u64,
    call: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..concurrency {
        let (call, next) = (call.clone(), next.clone());
        let n = count / concurrency + u64::from(w < count % concurrency);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                call(i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok((start.elapsed(), all))
}

/// A platform service principal, registered as `quantus serve` registers its own.
async fn service_principal(
    state: &AppState,
    name: &str,
    role: Role,
) -> anyhow::Result<(String, String)> {
    let new = NewClient {
        organization_id: PLATFORM_TENANT.to_owned(),
        kind: ClientKind::Service,
        name: name.into(),
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes: role.scopes().iter().map(|s| (*s).to_owned()).collect(),
        roles: [role].into(),
        auth_method: AuthMethod::ClientSecretBasic,
        require_par: false,
        jwks: None,
        dpop_bound_access_tokens: false,
    };
    let (id, secret, _) = state
        .identity
        .register_client(&ctx(PLATFORM_TENANT), new)
        .await?;
    Ok((id, secret.unwrap_or_default()))
}

/// The bench's HTTP client, as the bootstrap admin.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A call that must succeed; its JSON answer.
    async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {value}");
        Ok(value)
    }
}

async fn access_token(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "token: {}", r.status());
    let body: Value = r.json().await?;
    Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
}

/// One organization with a customer record and a signed contract, ready to activate.
async fn signed_contract(api: &Api, n: u64) -> anyhow::Result<(String, String)> {
    use reqwest::Method;
    let org = api
        .ok(
            Method::POST,
            "/v1/organizations",
            Some(json!({"name": format!("Bench {n}")})),
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.ok(
        Method::POST,
        "/v1/customers",
        Some(json!({
            "organization_id": org, "name": format!("Bench {n} GmbH"),
            "billing_email": "billing@bench.example", "currency": "EUR",
        })),
    )
    .await?;
    let contract = api
        .ok(
            Method::POST,
            "/v1/contracts",
            Some(json!({
                "organization_id": org,
                "starts_at": "2026-01-01T00:00:00Z",
                "ends_at": "2028-01-01T00:00:00Z",
                "line_items": [{
                    "id": "qpu", "product": "qpu-access", "edition": "pro",
                    "features": ["qpu", "sim"],
                    "quotas": {"jobs": {"amount": 1_000_000, "enforcement": "hard"}},
                    "limits": {"qubits": 64},
                    "quantity": 1, "unit_price": 150_000, "usage_prices": {"jobs": 250},
                    "max_activations": 2,
                }],
            })),
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.ok(
        Method::POST,
        &format!("/v1/contracts/{contract}/send"),
        None,
    )
    .await?;
    api.ok(
        Method::POST,
        &format!("/v1/contracts/{contract}/sign"),
        Some(json!({"signed_by": "Ada"})),
    )
    .await?;
    Ok((org, contract))
}

pub async fn run(
    database_url: Option<&str>,
    kafka: Option<&str>,
    checks: u64,
    concurrency: u64,
    contracts: u64,
) -> anyhow::Result<ExitCode> {
    let contracts = contracts.max(1);
    let dir = std::env::temp_dir().join(format!("quantus-bench-portal-{}", Uuid::now_v7()));
    let db = Database::open(database_url, &dir).await?;
    let master = master_key(&dir, None)?;
    let keystore = FileKeystore::open(&dir, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let objects = quantus_infra::objects::ObjectStorage::local(&dir.join("objects"))?;
    let mut state = AppState::new(
        db.clone(),
        Arc::new(keystore),
        &master,
        objects,
        base.clone(),
    );
    state.licensing.bootstrap(&ctx(PLATFORM_TENANT)).await?;
    let (admin_id, admin_secret) =
        service_principal(&state, "Bootstrap admin", Role::PlatformAdmin).await?;
    let (portal_id, portal_secret) =
        service_principal(&state, "Portal", Role::LicenseIssuer).await?;

    // The pieces of the all-in-one process, as `quantus serve` starts them.
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let keys = quantus_infra::subject_keys::SubjectKeys::new(db.clone(), &master);
    let kafka = kafka.map(|brokers| {
        let mut k = quantus_infra::kafka::KafkaSettings::new(brokers.to_owned());
        k.topic_prefix = format!("bench-{}.", Uuid::now_v7());
        k
    });
    if let Some(kafka) = &kafka {
        quantus_infra::kafka::ensure_topics(kafka).await?;
        let relay = Relay::new(db.clone(), kafka)?.with_name(kafka.topic_prefix.clone());
        tasks.spawn(async move {
            relay.run().await;
            Ok(())
        });
    }
    for projection in quantus_projections::all(&keys) {
        let runner = ProjectionRunner::new(db.clone(), projection);
        runner.prepare().await?;
        match &kafka {
            Some(kafka) => {
                let (kafka, group) = (kafka.clone(), format!("bench.{}", Uuid::now_v7()));
                let never = tokio::sync::watch::channel(false).1;
                tasks.spawn(
                    async move { Ok(runner.run_from_kafka_group(kafka, group, never).await?) },
                )
            }
            None => tasks.spawn(async move {
                Ok(runner
                    .run_from_store(tokio::sync::watch::channel(false).1)
                    .await?)
            }),
        };
    }
    let token = Arc::new(ServiceToken::new(
        ServiceCredentials {
            issuer: base.clone(),
            client_id: portal_id,
            client_secret: Secret(portal_secret),
        },
        "licenses:read licenses:write",
    ));
    let quantumlock = QuantumLockClient::new(&base, token);
    state.quantumlock = Some(quantumlock.clone());
    let licensing = ContractLicensing::new(state.bus.clone(), quantumlock);
    tasks.spawn(async move { Ok(licensing.run().await?) });
    let metering = UsageMetering::new(state.portal.clone());
    tasks.spawn(async move { Ok(metering.run().await?) });
    let app = quantus_api::router(state);
    tasks.spawn(async move {
        Ok(axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await?)
    });
    println!(
        "mode: {}{}; checks: {checks}; concurrency: {concurrency}; contracts: {contracts}",
        if database_url.is_some() {
            "postgres"
        } else {
            "embedded sqlite"
        },
        if kafka.is_some() {
            " + kafka (projections from Kafka)"
        } else {
            " (projections from the store)"
        }
    );

    let http = reqwest::Client::new();
    let api = Api {
        token: access_token(&http, &base, &admin_id, &admin_secret).await?,
        http: http.clone(),
        base: base.clone(),
    };

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
    let stopped: Vec<String> = std::iter::from_fn(|| tasks.try_join_next())
        .map(|r| match r {
            Ok(Ok(())) => "a service task ended".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        })
        .collect();
    if !stopped.is_empty() {
        println!("  stopped during the run: {stopped:?}");
    }
    // Stop every piece and close the pool before removing the folder, or a task still
    // writing can recreate files in it.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    db.pool.close().await;
    if let Some(kafka) = &kafka {
        quantus_infra::kafka::delete_topics(kafka).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
