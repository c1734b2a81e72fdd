//! What the benches share: the all-in-one process wired as `quantus serve` wires it (every
//! projection from the store or from Kafka, the ContractLicensing process manager calling
//! QuantumLock over HTTP, usage metering, the HTTP API on a local port), an admin's HTTP
//! client, and the load generator with its p50/p99 report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_api::AppState;
use quantus_commands::commercial::{ContractLicensing, UsageMetering};
use quantus_commands::identity::NewClient;
use quantus_domain::identity::client::{AuthMethod, ClientKind, GrantType};
use quantus_domain::identity::Role;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::config::Secret;
use quantus_infra::gateway::{QuantumLockClient, ServiceCredentials, ServiceToken};
use quantus_infra::kafka::KafkaSettings;
use quantus_infra::keystore::{master_key, FileKeystore};
use quantus_infra::relay::Relay;
use quantus_infra::Database;
use quantus_projections::runner::ProjectionRunner;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use uuid::Uuid;

pub(crate) fn ctx(tenant: &str) -> CommandContext {
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

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
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

/// Runs `count` calls of `call(i)` from `concurrency` tasks; returns elapsed time and latencies.
pub(crate) async fn load<F, Fut>(
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
pub(crate) async fn service_principal(
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
pub(crate) struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub async fn call(
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
    pub async fn ok(
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

pub(crate) async fn access_token(
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
pub(crate) async fn signed_contract(api: &Api, n: u64) -> anyhow::Result<(String, String)> {
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

/// One all-in-one deployment in a temporary folder (or on Postgres), running until [`stop`].
///
/// [`stop`]: Deployment::stop
pub(crate) struct Deployment {
    pub dir: PathBuf,
    pub db: Database,
    /// The process's state as the router has it (its handles share the router's).
    pub state: AppState,
    pub base: String,
    pub http: reqwest::Client,
    /// The platform admin service principal's client id and secret.
    pub admin: (String, String),
    /// As the platform admin.
    pub api: Api,
    pub tasks: JoinSet<anyhow::Result<()>>,
    pub kafka: Option<KafkaSettings>,
    /// The store and where the projections read the log from, for the report's first line.
    pub mode: String,
}

impl Deployment {
    pub async fn start(database_url: Option<&str>, kafka: Option<&str>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("quantus-bench-{}", Uuid::now_v7()));
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
                    tasks.spawn(async move {
                        Ok(runner.run_from_kafka_group(kafka, group, never).await?)
                    })
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
        let served = state.clone();
        let app = quantus_api::router(state);
        tasks.spawn(async move {
            Ok(axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await?)
        });
        let mode = format!(
            "{}{}",
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
        Ok(Self {
            dir,
            db,
            state: served,
            mode,
            base,
            http,
            admin: (admin_id, admin_secret),
            api,
            tasks,
            kafka,
        })
    }

    /// Pieces that stopped on their own, worth knowing about.
    pub fn stopped(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.tasks.try_join_next())
            .map(|r| match r {
                Ok(Ok(())) => "a service task ended".to_owned(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => e.to_string(),
            })
            .collect()
    }

    /// Stops every piece and closes the pool before removing the folder, or a task still
    /// writing can recreate files in it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.db.pool.close().await;
        if let Some(kafka) = &self.kafka {
            quantus_infra::kafka::delete_topics(kafka).await?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}
