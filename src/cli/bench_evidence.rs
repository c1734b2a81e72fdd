//! `quantus bench evidence`: artifact upload MB/s over HTTP against writing the same bytes
//! straight to the same storage, evidence bundles created per second, offline bundle
//! verifications per second, and `audit verify` events per second with checkpoints. Prints
//! figures; asserts nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use quantus_api::AppState;
use quantus_commands::evidence::NewJob;
use quantus_domain::organization::OrganizationCommand;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::keystore::{master_key, FileKeystore};
use quantus_infra::objects::ObjectStorage;
use quantus_infra::{Config, Database};
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

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

pub async fn run(
    database_url: Option<&str>,
    object_store_url: Option<&str>,
    megabytes: u64,
    bundles: u64,
    events: u64,
) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("quantus-bench-evidence-{}", Uuid::now_v7()));
    let db = Database::open(database_url, &dir).await?;
    let mut config = Config::load(Default::default())?;
    config.data_dir = dir.clone();
    config.object_store_url = object_store_url.map(str::to_owned);
    let objects = ObjectStorage::open(&config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = AppState::new(
        db.clone(),
        Arc::new(FileKeystore::open(&dir, None)?),
        &*master_key(&dir, None)?,
        objects.clone(),
        base.clone(),
    );
    state.licensing.bootstrap(&ctx(PLATFORM_TENANT)).await?;
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
    let evidence = state.evidence.clone();
    let checkpoints = state.checkpoints.clone();
    let job = Uuid::now_v7().to_string();
    let new = |_: ()| NewJob {
        organization_id: org.clone(),
        backend: "bench".into(),
        job_class: "default".into(),
        workload: serde_json::json!({"shots": 1000}),
        config: serde_json::json!({"seed": 1}),
        requested_by: "bench".into(),
    };
    evidence.submit(&ctx(&org), &job, new(())).await?;
    let app = quantus_api::router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    println!(
        "store: {}; objects: {}",
        if database_url.is_some() {
            "postgres"
        } else {
            "embedded sqlite"
        },
        objects.description
    );

    // 1. Raw: the same bytes written straight to the same storage (no HTTP, no hashing).
    let size = megabytes * 1024 * 1024;
    let body: Vec<u8> = (0..size).map(|i| (i * 2654435761 % 251) as u8).collect();
    let started = Instant::now();
    objects
        .put_bytes(&format!("bench/raw-{}", Uuid::now_v7()), body.clone())
        .await?;
    let raw = started.elapsed().as_secs_f64();

    // 2. Through the API: streamed, hashed, multipart, recorded as an event.
    let token = {
        let id = Uuid::now_v7().to_string();
        let client = quantus_commands::identity::NewClient {
            organization_id: org.clone(),
            kind: quantus_domain::identity::client::ClientKind::Service,
            name: "bench".into(),
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            grant_types: [quantus_domain::identity::client::GrantType::ClientCredentials].into(),
            scopes: ["jobs:write".to_owned(), "jobs:read".to_owned()].into(),
            roles: [quantus_domain::identity::Role::Admin].into(),
            auth_method: quantus_domain::identity::client::AuthMethod::ClientSecretBasic,
            require_par: false,
            jwks: None,
            dpop_bound_access_tokens: false,
        };
        let (client_id, secret, _) = state
            .identity
            .register_client_with_id(&ctx(&org), &id, client, None)
            .await?;
        let r: serde_json::Value = reqwest::Client::new()
            .post(format!("{base}/oauth2/token"))
            .basic_auth(client_id, secret)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await?
            .json()
            .await?;
        r["access_token"].as_str().unwrap_or_default().to_owned()
    };
    let started = Instant::now();
    let response = reqwest::Client::new()
        .put(format!("{base}/v1/jobs/{job}/artifacts/bench.bin"))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "upload: {}",
        response.status()
    );
    let api = started.elapsed().as_secs_f64();
    println!(
        "artifact upload, {megabytes} MiB: API {:.0} MiB/s; the same storage written directly {:.0} MiB/s ({:.0} %)",
        mb_per_s(size, api),
        mb_per_s(size, raw),
        100.0 * raw / api
    );

    // 3. Bundles: each signs a checkpoint-covered manifest and stores it.
    let started = Instant::now();
    let mut last = String::new();
    for _ in 0..bundles {
        let (id, _, _) = evidence.create_bundle(&ctx(&org), &job).await?;
        last = id;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "evidence bundles created: {:.1}/s ({bundles} in {elapsed:.2} s)",
        bundles as f64 / elapsed
    );

    // 4. Offline verification of one archive (without artifacts), as an auditor's machine does.
    let archive = evidence.export(&last, false).await?;
    let unpacked = quantus_commands::evidence::unpack(&archive).map_err(anyhow::Error::msg)?;
    let keys = unpacked
        .keys
        .clone()
        .unwrap_or_else(|| unreachable!("export includes keys"));
    let n = 200;
    let started = Instant::now();
    for _ in 0..n {
        quantus_crypto::evidence::verify(&unpacked.manifest, &unpacked.files, &keys, Utc::now())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "offline bundle verifications: {:.0}/s ({:.2} ms each)",
        n as f64 / elapsed,
        1e3 * elapsed / n as f64
    );

    // 5. audit verify with checkpoints over a log of `events` more events, checkpointed every
    // 1000 as the default scheduler would.
    for i in 0..events {
        let id = Uuid::now_v7().to_string();
        state
            .bus
            .organization(
                &ctx(&id),
                &id,
                OrganizationCommand::Create {
                    name: format!("org {i}"),
                },
                Some(0),
            )
            .await?;
        if i % 1000 == 999 {
            checkpoints.sign_now(&ctx(PLATFORM_TENANT)).await?;
        }
    }
    checkpoints.sign_now(&ctx(PLATFORM_TENANT)).await?;
    let started = Instant::now();
    let mut audit = quantus_domain::audit::Audit::new();
    super::audit::audit_store(&db, &mut audit).await?.clean()?;
    let summary = audit.finish().map_err(anyhow::Error::msg)?;
    let cps = audit
        .check_checkpoints(&state.licensing.key_set().await?, &[], Utc::now())
        .map_err(anyhow::Error::msg)?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "audit verify with checkpoints: {:.0} events/s ({} events, {} checkpoints, {elapsed:.2} s)",
        summary.events as f64 / elapsed,
        summary.events,
        cps.verified
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
