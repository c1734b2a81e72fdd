//! `quantus bench crypto`: signing and verification per algorithm, offline licence
//! verification latency, and licences issued end to end. Prints figures; asserts nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_commands::licensing::Licensing;
use quantus_commands::CommandBus;
use quantus_crypto::document::SignedDocument;
use quantus_crypto::license::verify;
use quantus_crypto::{Algorithm, SecretKey};
use quantus_domain::licensing::license::{LicenseCommand, LicenseIssued};
use quantus_domain::organization::OrganizationCommand;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::keystore::FileKeystore;
use quantus_infra::{Database, SqlEventRepository};
use uuid::Uuid;

/// Runs `f` repeatedly for about `budget`; returns operations per second.
fn per_second(budget: Duration, mut f: impl FnMut()) -> (f64, u64) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n < 3 {
        f();
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

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

pub async fn run(licences: u64) -> anyhow::Result<ExitCode> {
    let budget = Duration::from_secs(2);
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>9}",
        "algorithm", "keygen/s", "sign/s", "verify/s", "sig bytes"
    );
    let message = [0xABu8; 1024];
    for alg in Algorithm::ALL {
        let seed = vec![7u8; alg.seed_len()];
        let (keygen, _) = per_second(budget, || {
            let _ = SecretKey::from_seed(alg, &seed).map(|k| k.public_key());
        });
        let key = SecretKey::from_seed(alg, &seed)?;
        // Fresh randomness each time: ML-DSA's rejection sampling takes a different number of
        // rounds per signature, and one fixed input would measure a single path.
        let mut counter = 0u64;
        let (sign, _) = per_second(budget, || {
            counter += 1;
            let mut rnd = [0u8; 32];
            rnd[..8].copy_from_slice(&counter.to_le_bytes());
            let _ = key.sign(&message, b"bench", &rnd);
        });
        let sig = key.sign(&message, b"bench", &[1; 32])?;
        let public = key.public_key();
        let (verify_rate, _) = per_second(budget, || {
            let _ = public.verify(&message, b"bench", &sig);
        });
        println!(
            "{:<20} {keygen:>12.0} {sign:>12.0} {verify_rate:>12.0} {:>9}",
            alg.name(),
            sig.len()
        );
    }

    // Licences through the whole write path, on a fresh embedded store.
    let dir = std::env::temp_dir().join(format!("quantus-bench-crypto-{}", Uuid::now_v7()));
    let db = Database::open(None, &dir).await?;
    let licensing = Licensing::new(
        CommandBus::new(SqlEventRepository::new(db.clone())),
        Arc::new(FileKeystore::open(&dir, None)?),
        "https://bench.invalid",
    );
    licensing
        .bootstrap(&ctx(quantus_domain::schema::PLATFORM_TENANT))
        .await?;
    let org = Uuid::now_v7().to_string();
    licensing
        .bus()
        .organization(
            &ctx(&org),
            &org,
            OrganizationCommand::Create {
                name: "Bench".into(),
            },
            Some(0),
        )
        .await?;
    let terms = || LicenseIssued {
        organization_id: org.clone(),
        product: "qpu".into(),
        edition: "pro".into(),
        features: vec!["sso".into()],
        limits: [("qpu_hours".to_owned(), 100)].into(),
        not_before: Utc::now(),
        expires_at: Utc::now() + chrono::Duration::days(365),
        grace_period_seconds: 0,
        max_activations: 1,
        machine_fingerprint: None,
    };
    let start = Instant::now();
    let mut last = String::new();
    for _ in 0..licences {
        last = Uuid::now_v7().to_string();
        licensing
            .license_command(&ctx(&org), &last, LicenseCommand::Issue(terms()), Some(0))
            .await?;
        licensing.license_file(&last, Utc::now()).await?;
    }
    let elapsed = start.elapsed();
    println!(
        "licences issued and signed (embedded store, one at a time): {:.0}/s ({licences} in {:.2} s)",
        licences as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // Offline verification: parse the canonical file and verify it, as a customer machine does.
    let bytes = licensing
        .license_file(&last, Utc::now())
        .await?
        .to_canonical_json()?;
    let keys = licensing.key_set().await?;
    let mut samples = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let doc = SignedDocument::from_canonical_json(&bytes)?;
        verify(&doc, &keys, Utc::now(), None, None)?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "offline licence verify ({} B file): median {:.3} ms, p99 {:.3} ms",
        bytes.len(),
        samples[samples.len() / 2].as_secs_f64() * 1e3,
        samples[samples.len() * 99 / 100].as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
