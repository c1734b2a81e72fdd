//! `quantus bench identity`: client-credentials tokens/s and introspections/s over HTTP against
//! an in-process server, and password sign-ins/s at the documented argon2id cost. Prints
//! figures; asserts nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_api::AppState;
use quantus_commands::identity::{NewClient, NewUser};
use quantus_domain::identity::client::{AuthMethod, ClientKind, GrantType};
use quantus_domain::identity::{RequestInfo, Role};
use quantus_domain::organization::OrganizationCommand;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::keystore::{master_key, FileKeystore};
use quantus_infra::Database;
use tokio::task::JoinSet;
use uuid::Uuid;

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

fn report(what: &str, n: u64, elapsed: Duration, latencies: &mut [Duration]) {
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "{what:<44} {:>8.0}/s  p50 {:>6.1} ms  p99 {:>6.1} ms  ({n} in {:.2} s)",
        n as f64 / elapsed.as_secs_f64(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        elapsed.as_secs_f64()
    );
}

/// This process's CPU time (user + system) so far, in seconds (Linux: `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

/// [`load`], also returning the CPU seconds the process spent meanwhile.
async fn load_cpu<F, Fut>(
    count: u64,
    concurrency: u64,
    call: F,
) -> anyhow::Result<(Duration, Vec<Duration>, f64)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let before = cpu_seconds();
    let (elapsed, lat) = load(count, concurrency, call).await?;
    Ok((elapsed, lat, cpu_seconds() - before))
}

/// Runs `count` calls of `call` from `concurrency` tasks; returns elapsed time and latencies.
async fn load<F, Fut>(
    count: u64,
    concurrency: u64,
    call: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..concurrency {
        let call = call.clone();
        let n = count / concurrency + u64::from(w < count % concurrency);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t = Instant::now();
                call().await?;
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

pub async fn run(
    database_url: Option<&str>,
    count: u64,
    concurrency: u64,
) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("quantus-bench-identity-{}", Uuid::now_v7()));
    let db = Database::open(database_url, &dir).await?;
    let keystore = FileKeystore::open(&dir, None)?;
    let master = master_key(&dir, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let objects = quantus_infra::objects::ObjectStorage::local(&dir.join("objects"))?;
    let state = AppState::new(db, Arc::new(keystore), &master, objects, base.clone());
    state.licensing.bootstrap(&ctx(PLATFORM_TENANT)).await?;
    let identity = state.identity.clone();
    let org = Uuid::now_v7().to_string();
    state
        .bus
        .organization(
            &ctx(&org),
            &org,
            OrganizationCommand::Create {
                name: "Bench".into(),
            },
            Some(0),
        )
        .await?;
    let sp = NewClient {
        organization_id: org.clone(),
        kind: ClientKind::Service,
        name: "bench".into(),
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes: ["licenses:read".to_owned()].into(),
        roles: [Role::Admin].into(),
        auth_method: AuthMethod::ClientSecretBasic,
        require_par: false,
        jwks: None,
        dpop_bound_access_tokens: false,
    };
    let (client_id, secret, _) = identity.register_client(&ctx(&org), sp).await?;
    let secret = secret.unwrap_or_default();
    let bus = state.bus.clone();
    let app = quantus_api::router(state);
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let mode = if database_url.is_some() {
        "postgres"
    } else {
        "embedded sqlite"
    };
    println!("mode: {mode}; concurrency: {concurrency}; argon2id m=19 MiB t=2 p=1");

    let http = reqwest::Client::new();
    let token = {
        let (http, base, id, secret) = (
            http.clone(),
            base.clone(),
            client_id.clone(),
            secret.clone(),
        );
        move || {
            let (http, base, id, secret) = (http.clone(), base.clone(), id.clone(), secret.clone());
            async move {
                let r = http
                    .post(format!("{base}/oauth2/token"))
                    .basic_auth(id, Some(secret))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "token: {}", r.status());
                let body: serde_json::Value = r.json().await?;
                Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
            }
        }
    };
    let t = token.clone();
    let (elapsed, mut lat) = load(count, concurrency, move || {
        let t = t.clone();
        async move { t().await.map(|_| ()) }
    })
    .await?;
    report(
        "client_credentials tokens (HTTP, one event each)",
        count,
        elapsed,
        &mut lat,
    );

    let access = token().await?;
    let (http2, base2, id2, secret2) = (
        http.clone(),
        base.clone(),
        client_id.clone(),
        secret.clone(),
    );
    let introspect = move || {
        let (http, base, id, secret, access) = (
            http2.clone(),
            base2.clone(),
            id2.clone(),
            secret2.clone(),
            access.clone(),
        );
        async move {
            let r = http
                .post(format!("{base}/oauth2/introspect"))
                .basic_auth(id, Some(secret))
                .form(&[("token", access.as_str())])
                .send()
                .await?;
            let body: serde_json::Value = r.json().await?;
            anyhow::ensure!(body["active"] == true, "introspection said inactive");
            Ok(())
        }
    };
    // Interleaved rounds in one run: reading the store every time (no log follower, as with
    // QUANTUS_READ_STALENESS_MS=0), then from memory kept current by the log (1 s bound).
    for round in 1..=2 {
        let (elapsed, mut lat, cpu) = load_cpu(count, concurrency, introspect.clone()).await?;
        report(
            &format!("introspections (HTTP), store, round {round}"),
            count,
            elapsed,
            &mut lat,
        );
        println!("  CPU {:.0} µs per introspection", cpu * 1e6 / count as f64);
        let follower = bus.clone();
        let following =
            tokio::spawn(async move { follower.follow_log(Duration::from_secs(1)).await });
        while !bus.follower().is_fresh() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let served = bus.follower().served_from_memory();
        let (elapsed, mut lat, cpu) = load_cpu(count, concurrency, introspect.clone()).await?;
        report(
            &format!("introspections (HTTP), memory, round {round}"),
            count,
            elapsed,
            &mut lat,
        );
        println!(
            "  CPU {:.0} µs per introspection; {:.1} loads from memory each",
            cpu * 1e6 / count as f64,
            (bus.follower().served_from_memory() - served) as f64 / count as f64
        );
        if round == 1 {
            // Stopped: its last pass ages past the bound and the hot paths read the store.
            following.abort();
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    let t = token.clone();
    let (elapsed, mut lat) = load(count, concurrency, move || {
        let t = t.clone();
        async move { t().await.map(|_| ()) }
    })
    .await?;
    report(
        "client_credentials tokens, client from memory",
        count,
        elapsed,
        &mut lat,
    );

    let user = Uuid::now_v7().to_string();
    let password = "correct horse battery staple".to_owned();
    identity
        .register_user(
            &ctx(&org),
            &user,
            NewUser {
                organization_id: org.clone(),
                email: "bench@example.com".into(),
                name: "Bench".into(),
                password: Some(password.clone()),
                roles: [Role::Member].into(),
            },
        )
        .await?;
    let logins = (count / 20).max(20);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let (elapsed, mut lat) = load(logins, cores, move || {
        let (identity, org, user, password) = (
            identity.clone(),
            org.clone(),
            user.clone(),
            password.clone(),
        );
        async move {
            // Distinct login names per attempt would be unrealistic; the lockout only counts
            // failures, and these all succeed.
            let outcome = identity
                .sign_in(
                    &ctx(&org),
                    "bench@example.com",
                    Some(user),
                    password,
                    None,
                    RequestInfo::default(),
                )
                .await?;
            anyhow::ensure!(outcome.is_ok(), "sign-in refused");
            Ok(())
        }
    })
    .await?;
    report(
        &format!("password sign-ins (argon2id, {cores} tasks)"),
        logins,
        elapsed,
        &mut lat,
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
