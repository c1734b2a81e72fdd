//! `quantus serve`: wires the configured pieces together and runs them until a signal.

use std::process::ExitCode;

use anyhow::Context;
use quantus_api::AppState;
use quantus_infra::credentials::{
    random_secret, secret_matches, write_secret, BOOTSTRAP_CLIENT_FILE,
};
use quantus_infra::relay::Relay;
use quantus_infra::Database;
use quantus_projections::runner::ProjectionRunner;
use tokio::task::JoinSet;

use super::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = args.store.overrides();
    overrides.listen = args.listen;
    overrides.role = Some(args.role);
    let config = quantus_infra::Config::load(overrides)?;
    // Before any thread hashes a password (issue 18 item 7; infra::memory says why).
    quantus_infra::memory::fix_mmap_threshold(config.malloc_mmap_threshold);
    let db = Database::open(config.database_url.as_deref(), &config.data_dir)
        .await
        .context("opening the event store")?
        .with_write_limits(config.write);
    let store = if config.is_embedded() {
        format!(
            "embedded store in {}",
            config.data_dir.join("quantus.db").display()
        )
    } else {
        "Postgres store".to_owned()
    };
    let master_hex = config.master_key.as_ref().map(|k| k.0.as_str());
    let master = quantus_infra::keystore::master_key(&config.data_dir, master_hex)?;
    let keys = quantus_infra::subject_keys::SubjectKeys::new(db.clone(), &master);
    let projections: Vec<ProjectionRunner> = quantus_projections::all(&keys)
        .into_iter()
        .map(|p| ProjectionRunner::new(db.clone(), p))
        .collect();
    for runner in &projections {
        runner.prepare().await?;
    }

    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    // Projectors get a stop signal rather than an abort, so that they end between batches and
    // leave their consumer groups (bounded below: the broker may be away).
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut projectors: JoinSet<anyhow::Result<()>> = JoinSet::new();
    if config.role.runs_projector() {
        for runner in projections {
            let shutdown = shutdown.clone();
            match config.kafka() {
                Some(kafka) => projectors
                    .spawn(async move { Ok(runner.run_from_kafka(kafka, shutdown).await?) }),
                None => projectors.spawn(async move { Ok(runner.run_from_store(shutdown).await?) }),
            };
        }
    }
    if config.role.runs_relay() {
        match config.kafka() {
            Some(kafka) => {
                quantus_infra::kafka::ensure_topics(&kafka)
                    .await
                    .context("creating Kafka topics")?;
                let relay = Relay::new(db.clone(), &kafka)?;
                tasks.spawn(async move {
                    relay.run().await;
                    Ok(())
                });
            }
            None if config.role == quantus_infra::Role::Relay => {
                anyhow::bail!("--role relay needs KAFKA_BROKERS (the embedded log needs no relay)")
            }
            None => {}
        }
    }
    if config.role.runs_api() {
        let keystore = quantus_infra::keystore::FileKeystore::open(&config.data_dir, master_hex)
            .context("opening the keystore")?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        // Without a configured public URL the issuer is where this process really listens
        // (which matters with port 0).
        let issuer = if config.public_url == format!("http://{}", config.listen) {
            format!("http://{}", listener.local_addr()?)
        } else {
            config.public_url.trim_end_matches('/').to_owned()
        };
        let objects = quantus_infra::objects::ObjectStorage::open(&config)
            .context("opening object storage")?;
        // Uploads cut short by a crash (kill -9) leave staging files nobody will finish. The
        // Portal alone takes no uploads: it leaves the folder to the process that does.
        if config.role != quantus_infra::Role::Portal {
            let swept = objects
                .sweep_staging()
                .context("sweeping unfinished uploads")?;
            if swept > 0 {
                tracing::info!(swept, "removed staging files of unfinished uploads");
            }
        }
        let qsa = config.qsa_url.clone().unwrap_or_else(|| issuer.clone());
        let billing: std::sync::Arc<dyn quantus_infra::billing::BillingProvider> =
            match &config.stripe_secret_key {
                Some(key) => std::sync::Arc::new(
                    quantus_infra::billing::StripeBilling::new(&config.stripe_api_base, &key.0)
                        .context("configuring Stripe")?,
                ),
                None => std::sync::Arc::new(quantus_infra::billing::BuiltInBilling),
            };
        let quantumlock_url = config
            .quantumlock_url
            .clone()
            .unwrap_or_else(|| issuer.clone());
        let mut state = AppState::new(
            db.clone(),
            std::sync::Arc::new(keystore),
            &master,
            objects,
            issuer,
        )
        .with_qsa(&qsa)
        .with_billing(billing);
        state
            .bus
            .cache()
            .resize(usize::try_from(config.aggregate_cache).unwrap_or(usize::MAX));
        if config.read_staleness_ms > 0 {
            let bus = state.bus.clone();
            let staleness = std::time::Duration::from_millis(config.read_staleness_ms);
            tasks.spawn(async move { Ok(bus.follow_log(staleness).await?) });
        }
        state.exports = state.exports.with_witnesses(config.witnesses.clone());
        state.stripe_webhook_secret = config.stripe_webhook_secret.clone();
        state.limits = config.http;
        observe(&mut state, &config)?;
        state.invites = Some(quantus_commands::invites::Invites::new(
            state.identity.clone(),
            std::sync::Arc::new(quantus_commands::invites::OutboxSender::new(
                config.data_dir.join("outbox"),
            )),
            i64::try_from(config.invite_seconds).unwrap_or(i64::MAX),
        ));
        let portal_only = config.role == quantus_infra::Role::Portal;
        // One process at a time registers the platform's clients and writes their secret
        // files: replicas booting on a fresh database and shared volume would otherwise race
        // (both registering, one file holding the other's secret).
        let bootstrap_lock = db
            .bootstrap_lock()
            .await
            .context("taking the bootstrap lock")?;
        if portal_only {
            // The consoles served here return to this process's own public URL: clients of
            // their own (`quantus-console-<name>-portal`).
            state.consoles = bootstrap_consoles(&state, &config, Some("portal")).await?;
        } else {
            bootstrap_licensing(&state).await?;
            // Emails became unique per organization (issue 14 item 4): move the login rows
            // an older version keyed by the address alone, once.
            let moved = state.identity.move_platform_wide_logins().await?;
            if moved > 0 {
                tracing::info!(moved, "login index: emails are now unique per organization");
            }
            // Sessions started before they were indexed by person (issue 13), once.
            let indexed = state
                .identity
                .index_earlier_sessions(chrono::Utc::now())
                .await?;
            if indexed > 0 {
                tracing::info!(
                    indexed,
                    "session index: earlier live sessions indexed by person"
                );
            }
            if let Some(path) = bootstrap_admin(&state, &config.data_dir).await? {
                println!(
                    "created the bootstrap admin service principal; its client credentials are in {}",
                    path.display()
                );
            }
            if config.portal_client.is_none() {
                bootstrap_portal(&state, &config.data_dir).await?;
            }
            state.consoles = bootstrap_consoles(&state, &config, None).await?;
        }
        drop(bootstrap_lock);
        // The Portal reaches QuantumLock with its own service principal, by HTTP, whether
        // QuantumLock is this process or another one.
        match portal_credentials(&config)? {
            Some((client_id, client_secret)) => {
                let token = std::sync::Arc::new(quantus_infra::gateway::ServiceToken::new(
                    quantus_infra::gateway::ServiceCredentials {
                        issuer: qsa.clone(),
                        client_id,
                        client_secret,
                    },
                    "licenses:read licenses:write",
                ));
                let quantumlock =
                    quantus_infra::gateway::QuantumLockClient::new(&quantumlock_url, token);
                state.quantumlock = Some(quantumlock.clone());
                if config.role.runs_portal_processes() {
                    let max = std::time::Duration::from_secs(config.license_retry_max_seconds);
                    let policy = quantus_domain::commercial::contract::RetryPolicy {
                        first: std::time::Duration::from_secs(config.license_retry_first_seconds)
                            .min(max),
                        max,
                    };
                    let process = quantus_commands::commercial::ContractLicensing::new(
                        state.bus.clone(),
                        quantumlock,
                    )
                    .with_policy(policy);
                    tasks.spawn(async move { Ok(process.run().await?) });
                }
            }
            None if portal_only => anyhow::bail!(
                "--role portal needs the Portal's service principal: set QUANTUS_PORTAL_CLIENT_ID and QUANTUS_PORTAL_CLIENT_SECRET (the QSA process writes them to its DATA_DIR/{PORTAL_CLIENT_FILE})"
            ),
            None => {}
        }
        if config.role.runs_portal_processes() {
            let metering = quantus_commands::commercial::UsageMetering::new(state.portal.clone());
            tasks.spawn(async move { Ok(metering.run().await?) });
            spawn_expiry(&mut tasks, &state);
            spawn_billing_run(&mut tasks, &state);
        }
        println!(
            "quantus listening on http://{} ({store}{})",
            listener.local_addr()?,
            config
                .kafka_brokers
                .as_deref()
                .map(|b| format!(", Kafka at {b}"))
                .unwrap_or_default()
        );
        if !portal_only {
            spawn_schedulers(&mut tasks, &state, &config);
        }
        let app = if portal_only {
            quantus_api::portal_router(state)
        } else {
            quantus_api::router(state)
        };
        let limits = config.http;
        tasks.spawn(async move { Ok(quantus_api::serve(listener, app, limits).await?) });
    } else {
        // A relay or a projector serves its own metrics and probes, nothing else.
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let keystore = quantus_infra::keystore::FileKeystore::open(&config.data_dir, master_hex)
            .context("opening the keystore")?;
        let objects = quantus_infra::objects::ObjectStorage::open(&config)
            .context("opening object storage")?;
        let mut state = AppState::new(
            db.clone(),
            std::sync::Arc::new(keystore),
            &master,
            objects,
            config.public_url.trim_end_matches('/').to_owned(),
        );
        state.limits = config.http;
        observe(&mut state, &config)?;
        println!(
            "quantus listening on http://{} ({:?} role: /metrics, /healthz, /readyz; {store})",
            listener.local_addr()?,
            config.role
        );
        let app = quantus_api::operations_router(state);
        let limits = config.http;
        tasks.spawn(async move { Ok(quantus_api::serve(listener, app, limits).await?) });
    }

    let ended = tokio::select! {
        _ = shutdown_signal() => None,
        Some(result) = tasks.join_next() => Some(result),
        Some(result) = projectors.join_next() => Some(result),
    };
    tasks.abort_all();
    let _ = stop.send(true);
    // Bounded: a shutdown must not wait for a broker that is away.
    let drained = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while projectors.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("projectors did not stop within 5 s; exiting anyway");
        projectors.abort_all();
    }
    match ended {
        None => {
            tracing::info!("shut down");
            Ok(ExitCode::SUCCESS)
        }
        // A piece ended on its own: that is a failure of the whole process.
        Some(Ok(Ok(()))) => anyhow::bail!("a service task stopped unexpectedly"),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(e.into()),
    }
}

/// What `/readyz` and `/metrics` need beyond the store: when a read model counts as stalled,
/// and where Kafka's partitions end (consumer lag).
fn observe(state: &mut AppState, config: &quantus_infra::Config) -> anyhow::Result<()> {
    state.readiness = quantus_api::Readiness {
        stall_after: std::time::Duration::from_secs(config.ready_stall_seconds),
        max_lag: config.ready_max_lag,
    };
    state.kafka_ends = config
        .kafka()
        .map(|kafka| quantus_infra::kafka::PartitionEnds::new(&kafka))
        .transpose()
        .context("configuring the Kafka lag reader")?
        .map(std::sync::Arc::new);
    Ok(())
}

/// The default crypto policy and a key per purpose, on a new platform. Several processes may
/// start at once: a conflict means another one did it, so it is tried once more.
/// The context of the platform's own commands (bootstrap, checkpoints).
fn system_context() -> quantus_domain::CommandContext {
    quantus_domain::CommandContext {
        tenant_id: quantus_domain::schema::PLATFORM_TENANT.to_owned(),
        actor: quantus_domain::Actor {
            kind: quantus_domain::ActorKind::System,
            id: "quantus-bootstrap".into(),
        },
        occurred_at: quantus_domain::envelope::truncate_to_micros(chrono::Utc::now()),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    }
}

async fn bootstrap_licensing(state: &AppState) -> anyhow::Result<()> {
    let ctx = system_context();
    match state.licensing.bootstrap(&ctx).await {
        Err(quantus_commands::CommandError::Concurrency(_)) => {
            state.licensing.bootstrap(&ctx).await?
        }
        other => other?,
    }
    Ok(())
}

/// The bootstrap admin: a platform service principal whose client id and secret are written
/// once to `DATA_DIR/bootstrap-client.json` (mode 0600). The file is written before the
/// client is registered and renamed after, so a crash in between is finished on the next start.
async fn bootstrap_admin(
    state: &AppState,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    bootstrap_service_principal(
        state,
        data_dir,
        &PlatformPrincipal {
            id: "quantus-bootstrap-admin",
            file: BOOTSTRAP_CLIENT_FILE,
            name: "Bootstrap admin",
            role: quantus_domain::identity::Role::PlatformAdmin,
        },
    )
    .await
}

/// The Portal's own service principal (role `license_issuer`), whose credentials go to
/// `DATA_DIR/portal-client.json` the same way.
async fn bootstrap_portal(
    state: &AppState,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    bootstrap_service_principal(
        state,
        data_dir,
        &PlatformPrincipal {
            id: PORTAL_CLIENT_ID,
            file: PORTAL_CLIENT_FILE,
            name: "Portal",
            role: quantus_domain::identity::Role::LicenseIssuer,
        },
    )
    .await
}

const PORTAL_CLIENT_ID: &str = "quantus-portal";
const PORTAL_CLIENT_FILE: &str = "portal-client.json";

struct PlatformPrincipal {
    id: &'static str,
    file: &'static str,
    name: &'static str,
    role: quantus_domain::identity::Role,
}

async fn bootstrap_service_principal(
    state: &AppState,
    data_dir: &std::path::Path,
    principal: &PlatformPrincipal,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    use quantus_commands::identity::NewClient;
    use quantus_domain::identity::client::{AuthMethod, ClientKind, GrantType};
    let new = NewClient {
        organization_id: quantus_domain::schema::PLATFORM_TENANT.to_owned(),
        kind: ClientKind::Service,
        name: principal.name.into(),
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes: principal
            .role
            .scopes()
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        roles: [principal.role].into(),
        auth_method: AuthMethod::ClientSecretBasic,
        require_par: false,
        jwks: None,
        dpop_bound_access_tokens: false,
    };
    bootstrap_client(state, data_dir, principal.id, principal.file, new).await
}

/// Each web console's OAuth client at QSA (confidential, authorization code + PKCE and
/// refresh, exact redirect URIs under the public URL), its secret kept in
/// `DATA_DIR/console-<name>-client.json` the same way. Answers the credentials to serve with.
async fn bootstrap_consoles(
    state: &AppState,
    config: &quantus_infra::Config,
    served_by: Option<&str>,
) -> anyhow::Result<quantus_api::console::ConsoleClients> {
    use quantus_commands::identity::NewClient;
    let data_dir = config.data_dir.as_path();
    use quantus_domain::identity::client::{AuthMethod, ClientKind, GrantType};
    let mut clients = quantus_api::console::ConsoleClients::default();
    clients.refresh_early_seconds =
        i64::try_from(config.console_refresh_seconds).unwrap_or(i64::MAX);
    for console in quantus_api::console::registrations(&state.issuer, served_by) {
        let new = NewClient {
            organization_id: quantus_domain::schema::PLATFORM_TENANT.to_owned(),
            kind: ClientKind::Confidential,
            name: console.name.into(),
            redirect_uris: vec![console.redirect_uri.clone()],
            post_logout_redirect_uris: vec![console.post_logout_redirect_uri.clone()],
            grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
            scopes: console.scopes.iter().cloned().collect(),
            roles: Default::default(),
            auth_method: AuthMethod::ClientSecretBasic,
            require_par: false,
            jwks: None,
            dpop_bound_access_tokens: false,
        };
        bootstrap_client(state, data_dir, &console.client_id, &console.file, new).await?;
        let (client, _) = state.identity.client(&console.client_id).await?;
        let registered = client
            .registration
            .as_ref()
            .map(|r| r.scopes.clone())
            .unwrap_or_default();
        let (granted, missing): (Vec<String>, Vec<String>) = console
            .scopes
            .iter()
            .cloned()
            .partition(|s| registered.contains(s));
        if !missing.is_empty() {
            // Registered by an older version: its pages needing these scopes are not offered
            // (navigation follows the token's scopes) instead of every sign-in failing.
            tracing::warn!(
                client = %console.client_id,
                missing = %missing.join(" "),
                "the console's client was registered without scopes this version's pages use; those pages are not offered"
            );
        }
        if !client
            .registration
            .as_ref()
            .is_some_and(|r| r.redirect_uris.contains(&console.redirect_uri))
        {
            // Registered under another public URL: QSA would refuse its redirects.
            tracing::warn!(
                client = %console.client_id,
                expected = %console.redirect_uri,
                "the console's client was registered for another public URL; sign-in will fail until it is registered again"
            );
        }
        let Some((client_id, client_secret)) = read_client_file(&data_dir.join(&console.file))?
        else {
            // Another process registered it (its data folder has the secret): this one
            // serves the console once the file is copied here.
            tracing::warn!(
                client = %console.client_id,
                "{} is not in this data folder: the console is not served by this process",
                console.file
            );
            continue;
        };
        clients.insert(
            console.console,
            quantus_api::console::ConsoleClient {
                client_id,
                client_secret,
                scope: granted.join(" "),
            },
        );
    }
    Ok(clients)
}

/// Registers client `id` once, its secret written first to `<file>.pending` (mode 0600),
/// renamed to `<file>` after the registration, so a crash in between is finished on the
/// next start.
async fn bootstrap_client(
    state: &AppState,
    data_dir: &std::path::Path,
    id: &str,
    file_name: &str,
    new: quantus_commands::identity::NewClient,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let done = data_dir.join(file_name);
    let pending = data_dir.join(format!("{file_name}.pending"));
    match state.identity.client(id).await {
        Ok((client, _)) => {
            if !done.exists() && pending.exists() {
                let text = std::fs::read_to_string(&pending)?;
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let secret = v["client_secret"].as_str().unwrap_or_default();
                if client
                    .secret_sha256
                    .as_deref()
                    .is_some_and(|d| secret_matches(secret, d))
                {
                    std::fs::rename(&pending, &done)?;
                    return Ok(Some(done));
                }
            }
            return Ok(None);
        }
        Err(quantus_commands::CommandError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(data_dir)?;
    let secret = random_secret();
    let ctx = system_context();
    let file = serde_json::json!({
        "client_id": id,
        "client_secret": secret,
        "issuer": state.gateway.issuer,
        "token_endpoint": format!("{}/oauth2/token", state.gateway.issuer),
    });
    write_secret(&pending, &serde_json::to_string_pretty(&file)?)?;
    match state
        .identity
        .register_client_with_id(&ctx, id, new, Some(secret))
        .await
    {
        Ok(_) => {
            std::fs::rename(&pending, &done)?;
            Ok(Some(done))
        }
        // Another process registered it at the same moment: its file is the real one.
        Err(quantus_commands::CommandError::Rejected(_))
        | Err(quantus_commands::CommandError::Concurrency(_)) => {
            std::fs::remove_file(&pending)?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Submits each new checkpoint (and, once its cosignature ages past `refresh`, the latest again)
/// to the configured witnesses. A witness that does not answer or refuses is asked again
/// later, backing off up to five minutes; a refusal is worth a warning, since a witness refuses
/// only a log that is not consistent with what it saw.
async fn witness_checkpoints(
    checkpoints: quantus_commands::checkpoints::Checkpoints,
    witnesses: Vec<quantus_infra::witness::WitnessEndpoint>,
    refresh: chrono::Duration,
) -> anyhow::Result<()> {
    use quantus_commands::checkpoints::Witnessed;
    use std::time::{Duration, Instant};
    let client = quantus_infra::witness::WitnessClient::default();
    let mut backoff: std::collections::HashMap<String, (Instant, Duration)> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let due: Vec<_> = witnesses
            .iter()
            .filter(|w| {
                backoff
                    .get(&w.key.name)
                    .is_none_or(|(at, _)| Instant::now() >= *at)
            })
            .cloned()
            .collect();
        if due.is_empty() {
            continue;
        }
        let outcomes = match checkpoints
            .witness_latest(&due, &client, refresh, chrono::Utc::now())
            .await
        {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(error = %e, "submitting the checkpoint to witnesses failed");
                continue;
            }
        };
        for (name, outcome) in outcomes {
            let failed = match &outcome {
                Witnessed::Cosigned(size) => {
                    tracing::info!(witness = %name, tree_size = size, "witness cosigned the checkpoint");
                    false
                }
                Witnessed::Fresh => false,
                Witnessed::Refused(why) => {
                    tracing::warn!(witness = %name, reason = %why, "witness refused the checkpoint");
                    true
                }
                Witnessed::Unreachable(why) => {
                    tracing::warn!(witness = %name, reason = %why, "witness unreachable");
                    true
                }
            };
            if failed {
                let wait = backoff.get(&name).map_or(Duration::from_secs(2), |(_, d)| {
                    (*d * 2).min(Duration::from_secs(300))
                });
                backoff.insert(name, (Instant::now() + wait, wait));
            } else {
                backoff.remove(&name);
            }
        }
    }
}

/// Signed checkpoints every N events or T seconds (docs/event-log.md, "Checkpoints"), and the
/// retention sweep (delete artifacts whose time is up, record each purge).
fn spawn_schedulers(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    state: &AppState,
    config: &quantus_infra::Config,
) {
    let checkpoints = state.checkpoints.clone();
    let (every_events, every) = (
        config.checkpoint_events,
        chrono::Duration::seconds(config.checkpoint_seconds as i64),
    );
    tasks.spawn(async move {
        let mut last = chrono::Utc::now();
        // A failure that lasts (a policy that no longer lets the checkpoint key sign, until an
        // operator rotates it) is logged when it starts and then once a minute, not every try.
        let mut failing: Option<(String, std::time::Instant)> = None;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let now = chrono::Utc::now();
            match checkpoints.due(every_events, every, now, last).await {
                Ok(true) => match checkpoints.sign_now(&system_context()).await {
                    Ok(_) => {
                        last = now;
                        failing = None;
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        let repeat = failing.as_ref().is_some_and(|(r, at)| {
                            *r == reason && at.elapsed() < std::time::Duration::from_secs(60)
                        });
                        if !repeat {
                            tracing::warn!(error = %reason, "signing a checkpoint failed");
                            failing = Some((reason, std::time::Instant::now()));
                        }
                    }
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "checking for a due checkpoint failed"),
            }
        }
    });
    if !config.witnesses.is_empty() {
        tasks.spawn(witness_checkpoints(
            state.checkpoints.clone(),
            config.witnesses.clone(),
            chrono::Duration::seconds(config.witness_refresh_seconds as i64),
        ));
    }
    let evidence = state.evidence.clone();
    let every = std::time::Duration::from_secs(config.retention_seconds);
    tasks.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match evidence.sweep(&system_context(), chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "retention sweep"),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
        }
    });
}

/// The Portal's client credentials: from the environment, or the file bootstrap wrote.
fn portal_credentials(
    config: &quantus_infra::Config,
) -> anyhow::Result<Option<(String, quantus_infra::config::Secret)>> {
    if let Some((id, secret)) = &config.portal_client {
        return Ok(Some((id.clone(), secret.clone())));
    }
    read_client_file(&config.data_dir.join(PORTAL_CLIENT_FILE))
}

/// Client credentials from a file bootstrap wrote (`None` if there is none).
fn read_client_file(
    path: &std::path::Path,
) -> anyhow::Result<Option<(String, quantus_infra::config::Secret)>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match (v["client_id"].as_str(), v["client_secret"].as_str()) {
        (Some(id), Some(secret)) => Ok(Some((
            id.to_owned(),
            quantus_infra::config::Secret(secret.to_owned()),
        ))),
        _ => anyhow::bail!("{} lacks client_id or client_secret", path.display()),
    }
}

/// Contracts whose term has ended are recorded as expired (every minute; a contract stops
/// granting at its end regardless, this records it).
fn spawn_expiry(tasks: &mut JoinSet<anyhow::Result<()>>, state: &AppState) {
    let (portal, pool) = (state.portal.clone(), state.db.pool.clone());
    tasks.spawn(async move {
        loop {
            let now = chrono::Utc::now();
            match quantus_projections::commercial::CommercialView::due_to_expire(&pool, now, 100)
                .await
            {
                Ok(ids) => {
                    for id in ids {
                        let ctx = quantus_domain::CommandContext {
                            actor: quantus_domain::Actor {
                                kind: quantus_domain::ActorKind::System,
                                id: "contract-expiry".into(),
                            },
                            ..system_context()
                        };
                        let ctx = match portal.contract(&id).await {
                            Ok((c, _)) => quantus_domain::CommandContext {
                                tenant_id: c.organization_id,
                                ..ctx
                            },
                            Err(_) => continue,
                        };
                        let expire = quantus_domain::commercial::contract::ContractCommand::Expire {
                            now: ctx.occurred_at,
                        };
                        if let Err(e) = portal.contract_command(&ctx, &id, expire, None).await {
                            tracing::warn!(contract = %id, error = %e, "expiring a contract failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "finding contracts to expire failed"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
    });
}

/// The monthly billing run: at start and every hour, every contract that was in force last
/// month and has no invoice for it gets one, handed to the billing provider.
fn spawn_billing_run(tasks: &mut JoinSet<anyhow::Result<()>>, state: &AppState) {
    let (portal, pool) = (state.portal.clone(), state.db.pool.clone());
    tasks.spawn(async move {
        loop {
            let period = quantus_domain::commercial::usage::Period::of(chrono::Utc::now()).previous();
            let mut after: Option<String> = None;
            loop {
                let page = match quantus_projections::commercial::CommercialView::contracts(
                    &pool,
                    None,
                    None,
                    after.as_deref(),
                    200,
                )
                .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "listing contracts to bill failed");
                        break;
                    }
                };
                for c in &page {
                    if matches!(c.status.as_str(), "draft" | "sent" | "signed") {
                        continue;
                    }
                    let ctx = quantus_domain::CommandContext {
                        tenant_id: c.organization_id.clone(),
                        actor: quantus_domain::Actor {
                            kind: quantus_domain::ActorKind::System,
                            id: "billing-run".into(),
                        },
                        ..system_context()
                    };
                    match portal.bill(&ctx, &c.id, period).await {
                        Ok(Some(invoice)) => {
                            tracing::info!(contract = %c.id, %invoice, %period, "invoice issued")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(contract = %c.id, error = %e, "billing a contract failed")
                        }
                    }
                }
                match page.last() {
                    Some(last) if page.len() == 200 => after = Some(last.id.clone()),
                    _ => break,
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
}
