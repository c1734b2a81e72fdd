//! `quantus bench saml`: signed SAML responses per second.
//!
//! 1. Signing alone: a Response with its Assertion, both signed (two RSA-3072 PKCS#1 v1.5
//!    SHA-256 signatures, the key opened from its sealed form for each), nothing recorded.
//! 2. Whole sign-ons: `Saml::respond` for a signed-in person (SP and user loaded, NameID and
//!    attributes, both signatures, and the `SamlAssertionIssued` audit event appended to the
//!    log), as `--concurrency` concurrent senders.
//!
//! Prints figures; asserts nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use quantus_api::AppState;
use quantus_commands::identity::NewUser;
use quantus_domain::identity::saml::{NameIdFormat, SamlServiceProviderSettings, UserAttribute};
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

pub async fn run(
    database_url: Option<&str>,
    responses: u64,
    concurrency: u64,
) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("quantus-bench-saml-{}", Uuid::now_v7()));
    let db = Database::open(database_url, &dir).await?;
    let keystore = FileKeystore::open(&dir, None)?;
    let master = master_key(&dir, None)?;
    let objects = quantus_infra::objects::ObjectStorage::local(&dir.join("objects"))?;
    let state = AppState::new(
        db.clone(),
        Arc::new(keystore),
        &master,
        objects,
        "https://idp.example.com".into(),
    );
    state.licensing.bootstrap(&ctx(PLATFORM_TENANT)).await?;
    let mode = if database_url.is_some() {
        "postgres"
    } else {
        "embedded sqlite"
    };
    let started = Instant::now();
    state.saml.active_key(Utc::now()).await?;
    println!(
        "mode: {mode}; responses: {responses}; concurrency: {concurrency}; RSA-3072 key made in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // 1. Signing alone.
    let started = Instant::now();
    let mut set = JoinSet::new();
    for w in 0..concurrency {
        let saml = state.saml.clone();
        let n = responses / concurrency + u64::from(w < responses % concurrency);
        set.spawn(async move {
            for _ in 0..n {
                saml.sign_sample(Utc::now()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    println!(
        "signed SAML responses (Response + Assertion signed, nothing recorded) {:>8.0}/s  ({responses} in {:.2} s)",
        responses as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // 2. Whole sign-ons with their audit events.
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
    let user_id = Uuid::now_v7().to_string();
    let password = "correct horse battery staple".to_owned();
    state
        .identity
        .register_user(
            &ctx(&org),
            &user_id,
            NewUser {
                organization_id: org.clone(),
                email: "ada@example.com".into(),
                name: "Ada Lovelace".into(),
                password: Some(password.clone()),
                roles: BTreeSet::from([Role::Member]),
            },
        )
        .await?;
    let signed_in = match state
        .identity
        .sign_in(
            &ctx(PLATFORM_TENANT),
            "ada@example.com",
            Some(user_id.clone()),
            password,
            None,
            RequestInfo::default(),
        )
        .await?
    {
        Ok(s) => s,
        Err(e) => anyhow::bail!("the bench user could not sign in: {e:?}"),
    };
    let entity_id = "https://sp.example.com/metadata";
    state
        .saml
        .register(
            &ctx(&org),
            &org,
            entity_id,
            "Bench SP",
            SamlServiceProviderSettings {
                acs_urls: vec!["https://sp.example.com/acs".into()],
                slo_url: None,
                slo_binding: None,
                certificate: None,
                name_id_format: NameIdFormat::EmailAddress,
                attributes: BTreeMap::from([
                    ("mail".into(), UserAttribute::Email),
                    ("displayName".into(), UserAttribute::Name),
                ]),
            },
        )
        .await?;
    let request = state.saml.idp_initiated(entity_id, None, None).await?;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for w in 0..concurrency {
        let saml = state.saml.clone();
        let request = request.clone();
        let session = signed_in.session.clone();
        let org = org.clone();
        let n = responses / concurrency + u64::from(w < responses % concurrency);
        set.spawn(async move {
            for _ in 0..n {
                saml.respond(&ctx(&org), &request, &session, &[]).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    println!(
        "SAML sign-ons (Saml::respond: load SP and user, sign both, record audit event) {:>8.0}/s  ({responses} in {:.2} s)",
        responses as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
