//! `quantus serve`: wires the configured pieces together and runs them until a signal.

use std::process::ExitCode;

use anyhow::Context;
use quantus_api::AppState;
use quantus_infra::credentials::{ensure_bootstrap, load_token_hashes, Bootstrap};
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
    let db = Database::open(config.database_url.as_deref(), &config.data_dir)
        .await
        .context("opening the event store")?;
    let store = if config.is_embedded() {
        format!(
            "embedded store in {}",
            config.data_dir.join("quantus.db").display()
        )
    } else {
        "Postgres store".to_owned()
    };
    if let Bootstrap::Created(path) = ensure_bootstrap(&db, &config.data_dir).await? {
        println!(
            "created the bootstrap admin credential; its token is in {}",
            path.display()
        );
    }
    let projections: Vec<ProjectionRunner> = quantus_projections::all()
        .into_iter()
        .map(|p| ProjectionRunner::new(db.clone(), p))
        .collect();
    for runner in &projections {
        runner.prepare().await?;
    }

    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    if config.role.runs_projector() {
        for runner in projections {
            match config.kafka() {
                Some(kafka) => tasks.spawn(async move { Ok(runner.run_from_kafka(kafka).await?) }),
                None => tasks.spawn(async move { Ok(runner.run_from_store().await?) }),
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
        let keystore = quantus_infra::keystore::FileKeystore::open(
            &config.data_dir,
            config.master_key.as_ref().map(|k| k.0.as_str()),
        )
        .context("opening the keystore")?;
        let state = AppState::new(
            db.clone(),
            load_token_hashes(&db).await?,
            std::sync::Arc::new(keystore),
            config.public_url.clone(),
        );
        bootstrap_licensing(&state).await?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        println!(
            "quantus listening on http://{} ({store}{})",
            listener.local_addr()?,
            config
                .kafka_brokers
                .as_deref()
                .map(|b| format!(", Kafka at {b}"))
                .unwrap_or_default()
        );
        let app = quantus_api::router(state);
        tasks.spawn(async move { Ok(axum::serve(listener, app).await?) });
    } else {
        println!("quantus {:?} role running ({store})", config.role);
    }

    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            tasks.abort_all();
            Ok(ExitCode::SUCCESS)
        }
        Some(result) = tasks.join_next() => {
            // A piece ended on its own: that is a failure of the whole process.
            tasks.abort_all();
            match result {
                Ok(Ok(())) => anyhow::bail!("a service task stopped unexpectedly"),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// The default crypto policy and a key per purpose, on a new platform. Several processes may
/// start at once: a conflict means another one did it, so it is tried once more.
async fn bootstrap_licensing(state: &AppState) -> anyhow::Result<()> {
    let ctx = quantus_domain::CommandContext {
        tenant_id: quantus_domain::schema::PLATFORM_TENANT.to_owned(),
        actor: quantus_domain::Actor {
            kind: quantus_domain::ActorKind::System,
            id: "quantus-bootstrap".into(),
        },
        occurred_at: quantus_domain::envelope::truncate_to_micros(chrono::Utc::now()),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    };
    match state.licensing.bootstrap(&ctx).await {
        Err(quantus_commands::CommandError::Concurrency(_)) => {
            state.licensing.bootstrap(&ctx).await?
        }
        other => other?,
    }
    Ok(())
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
