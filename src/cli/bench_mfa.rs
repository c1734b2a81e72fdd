//! `quantus bench mfa`: TOTP verifications/s and WebAuthn (passkey) assertions/s through the
//! same code a sign-in uses (seed unsealed, code checked, the accepted step or the new counter
//! recorded as an event). Assertions are made by a software authenticator (kanidm's
//! SoftPasskey); only the server's verification is timed. Prints figures; asserts nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_api::AppState;
use quantus_commands::identity::NewUser;
use quantus_domain::identity::Role;
use quantus_domain::organization::OrganizationCommand;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::keystore::{master_key, FileKeystore};
use quantus_infra::Database;
use uuid::Uuid;
use webauthn_authenticator_rs::prelude::*;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

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

fn report(what: &str, latencies: &mut [Duration], elapsed: Duration) {
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "{what:<40} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} in {:.2} s)",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        latencies.len(),
        elapsed.as_secs_f64()
    );
}

pub async fn run(database_url: Option<&str>, count: u64) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("quantus-bench-mfa-{}", Uuid::now_v7()));
    let db = Database::open(database_url, &dir).await?;
    let keystore = FileKeystore::open(&dir, None)?;
    let master = master_key(&dir, None)?;
    let objects = quantus_infra::objects::ObjectStorage::local(&dir.join("objects"))?;
    // WebAuthn needs a domain name for its relying-party id.
    let issuer = "http://localhost:8080".to_owned();
    let state = AppState::new(db, Arc::new(keystore), &master, objects, issuer.clone());
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
    let identity = state.identity.clone();
    let mode = if database_url.is_some() {
        "postgres"
    } else {
        "embedded sqlite"
    };
    println!("mode: {mode}; one request at a time");

    // TOTP: one person per verification (a code is good once per 30 s step).
    let mut people = Vec::with_capacity(count as usize);
    for i in 0..count {
        let id = Uuid::now_v7().to_string();
        let new = NewUser {
            organization_id: org.clone(),
            email: format!("bench{i}-{}@example.com", Uuid::now_v7().simple()),
            name: format!("Bench {i}"),
            password: None,
            roles: [Role::Member].into(),
        };
        identity.register_user(&ctx(&org), &id, new).await?;
        let e = identity
            .mfa()
            .start_totp(&ctx(&org), &id, &format!("bench{i}"))
            .await?;
        let totp = totp_rs::Totp::from_url(&e.uri)?;
        let now = Utc::now().timestamp() as u64;
        identity
            .mfa()
            .confirm_totp(&ctx(&org), &id, &totp.generate(now).to_string())
            .await?;
        people.push((id, totp));
    }
    let mut latencies = Vec::with_capacity(people.len());
    let start = Instant::now();
    for (id, totp) in &people {
        // The next step's code: within the ±1 step window and never used.
        let code = totp
            .generate(Utc::now().timestamp() as u64 + 30)
            .to_string();
        let t = Instant::now();
        let verdict = identity.mfa().verify(&ctx(&org), id, &code).await?;
        latencies.push(t.elapsed());
        anyhow::ensure!(verdict.is_ok(), "a valid code was refused");
    }
    report("TOTP verifications", &mut latencies, start.elapsed());

    // WebAuthn: one person, one passkey, `count` assertions (the counter grows each time).
    let (user, _) = people
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("--commands must be at least 1"))?;
    let origin = Url::parse(&issuer)?;
    let mut authenticator = WebauthnAuthenticator::new(SoftPasskey::new(true));
    let passkeys = identity.passkeys();
    let (options, ceremony) = passkeys
        .registration_options(&user, "bench", "Bench", Utc::now())
        .await?;
    let credential = authenticator
        .do_registration(origin.clone(), serde_json::from_value(options)?)
        .map_err(|e| anyhow::anyhow!("soft authenticator: {e:?}"))?;
    passkeys
        .register(
            &ctx(&org),
            &user,
            &ceremony,
            serde_json::to_value(credential)?,
            "bench",
        )
        .await?;
    let mut latencies = Vec::with_capacity(count as usize);
    let mut busy = Duration::ZERO;
    for _ in 0..count {
        let (options, ceremony) = passkeys.second_factor_options(&user, Utc::now()).await?;
        let assertion = authenticator
            .do_authentication(origin.clone(), serde_json::from_value(options)?)
            .map_err(|e| anyhow::anyhow!("soft authenticator: {e:?}"))?;
        let assertion = serde_json::to_value(assertion)?;
        let t = Instant::now();
        let verdict = passkeys
            .verify_second_factor(&ctx(&org), &user, &ceremony, assertion)
            .await?;
        let took = t.elapsed();
        busy += took;
        latencies.push(took);
        anyhow::ensure!(
            verdict.is_ok(),
            "a valid assertion was refused: {verdict:?}"
        );
    }
    report("WebAuthn assertions (verify only)", &mut latencies, busy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
