//! `quantus bench scale` (issue 18 item 8): grows one all-in-one deployment in stages (by
//! default to 10k, 100k and 1M events, with up to `--users` SCIM users spread over them) and at
//! each stage measures each hot operation's p50/p99 over a fixed number of samples, one at a
//! time (latency, not throughput), and the process's resident memory. Closes with each figure's
//! ratio from the first stage to the last: a flat line is within 2x. Prints figures; asserts
//! nothing.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quantus_commands::aggregate_cache::AggregateCache;
use quantus_commands::evidence::NewJob;
use quantus_commands::identity::{hash_password, verify_password, NewUser};
use quantus_commands::scim::Scim;
use quantus_commands::scim::ScimErrorKind;
use quantus_commands::{CommandBus, CommandError};
use quantus_domain::identity::{RequestInfo, Role};
use quantus_domain::organization::{Organization, OrganizationCommand};
use quantus_infra::log_tiles::LogTiles;
use quantus_infra::SqlEventRepository;
use quantus_projections::runner::ProjectionRunner;
use reqwest::Method;
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::bench_kit::{access_token, ctx, ms, quantile, signed_contract, Api, Deployment};

/// How often a write the store shed while growing is tried again.
const RETRIES: u32 = 10;

/// The operations measured at each stage, in the order printed.
const OPERATIONS: [&str; 10] = [
    "single-event append",
    "client_credentials token (HTTP)",
    "introspection (HTTP)",
    "sign-in less argon2id",
    "entitlement check (HTTP)",
    "inclusion proof (tiles)",
    "evidence bundle creation",
    "SCIM filter userName eq (HTTP)",
    "aggregate load, cold",
    "projection lag (append -> model)",
];

/// The process's memory in MiB (Linux: `/proc/self/status`): resident now, of it anonymous
/// (the heap: what caches and maps hold; the rest is mapped files such as the binary's own
/// code), and the resident peak so far.
#[derive(Clone, Copy)]
struct Memory {
    rss: f64,
    anon: f64,
    peak: f64,
}

fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        peak: field("VmHWM:"),
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB (RssAnon {:.1} MiB), VmHWM {:.1} MiB",
            self.rss, self.anon, self.peak
        )
    }
}

/// `count` calls of `call(i)`, one after the other; their latencies.
async fn sample<F, Fut>(count: u64, mut call: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>>,
{
    let mut latencies = Vec::with_capacity(count as usize);
    for i in 0..count {
        latencies.push(call(i).await?);
    }
    Ok(latencies)
}

/// Times one call.
async fn timed<T>(
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    call.await?;
    Ok(t.elapsed())
}

/// A SCIM user as the SCIM bench loads them (2 events each).
fn scim_user(i: u64) -> serde_json::Value {
    json!({
        "userName": format!("user{i}@example.com"),
        "name": {"givenName": format!("Given{i}"), "familyName": format!("Family{}", i % 1000)},
        "externalId": format!("ext{i}"),
        "emails": [{"value": format!("user{i}@example.com"), "type": "work", "primary": true}],
        "active": true,
    })
}

pub async fn run(
    database_url: Option<&str>,
    kafka: Option<&str>,
    stages: &[u64],
    users: u64,
    samples: u64,
    concurrency: u64,
) -> anyhow::Result<ExitCode> {
    let mut stages = stages.to_vec();
    stages.sort_unstable();
    stages.dedup();
    anyhow::ensure!(!stages.is_empty(), "--stages names no stage");
    let last_stage = *stages.last().unwrap_or(&1);
    let samples = samples.max(2);
    // Sign-ins and bundles cost far more than the rest (argon2id, a signature and a stored
    // manifest); fewer of them keep a stage short.
    let few = (samples / 10).max(10);

    // The allocator as `serve` sets it (QUANTUS_MALLOC_MMAP_THRESHOLD; infra::memory).
    let config = quantus_infra::Config::load(Default::default())?;
    let fixed = quantus_infra::memory::fix_mmap_threshold(config.malloc_mmap_threshold);
    let mut deployment = Deployment::start(database_url, kafka).await?;
    let (db, state, api) = (
        deployment.db.clone(),
        deployment.state.clone(),
        deployment.api.clone(),
    );
    // The hot paths from memory kept current by the log, as `serve` runs them (1 s bound).
    let follower = state.bus.clone();
    deployment
        .tasks
        .spawn(async move { Ok(follower.follow_log(Duration::from_secs(1)).await?) });
    let (admin_id, admin_secret) = deployment.admin.clone();
    let (http, base) = (deployment.http.clone(), deployment.base.clone());
    println!(
        "mode: {}; stages: {stages:?} events; users up to {users}; {samples} samples per figure ({few} for sign-ins and bundles), one at a time; {concurrency} senders grow the log; allocator mmap threshold {}",
        deployment.mode,
        if fixed {
            format!("fixed at {} bytes", config.malloc_mmap_threshold)
        } else {
            "glibc's adjusting one".to_owned()
        }
    );

    // The measured organization: an active contract (entitlements), a person with a password,
    // a job (bundles), a SCIM token.
    let (org, contract) = signed_contract(&api, 0).await?;
    let activated = api
        .ok(
            Method::POST,
            &format!("/v1/contracts/{contract}/activate"),
            None,
        )
        .await?;
    let position = activated["position"].as_u64().unwrap_or(0);
    api.ok(
        Method::GET,
        &format!("/v1/entitlements?org={org}&min_position={position}&wait_ms=30000"),
        None,
    )
    .await?;
    let password = "correct horse battery staple".to_owned();
    let person = Uuid::now_v7().to_string();
    state
        .identity
        .register_user(
            &ctx(&org),
            &person,
            NewUser {
                organization_id: org.clone(),
                email: "scale@example.com".into(),
                name: "Scale".into(),
                password: Some(password.clone()),
                roles: [Role::Member].into(),
            },
        )
        .await?;
    // The same argon2id cost as the person's own hash: timed beside each sign-in and taken off.
    let hash = hash_password(password.clone()).await?;
    let job = Uuid::now_v7().to_string();
    state
        .evidence
        .submit(
            &ctx(&org),
            &job,
            NewJob {
                organization_id: org.clone(),
                backend: "bench".into(),
                job_class: "default".into(),
                workload: json!({"shots": 1000}),
                config: json!({"seed": 1}),
                requested_by: "bench".into(),
            },
        )
        .await?;
    let scim = Scim::new(state.identity.clone(), state.bus.clone());
    let (_, scim_token, _) = scim.issue_token(&ctx(&org), &org, "bench").await?;
    let keys = state.identity.subject_keys().clone();
    let organizations = ProjectionRunner::new(
        db.clone(),
        quantus_projections::by_name("organizations", &keys)
            .ok_or_else(|| anyhow::anyhow!("no organizations projection"))?,
    );
    let users_model = ProjectionRunner::new(
        db.clone(),
        Arc::new(quantus_projections::users::UsersView::new(keys.clone())),
    );
    let tiles = LogTiles::new(db.clone());

    let fresh = memory();
    println!("memory fresh (deployment started, nothing grown): {fresh}");
    // Per operation: (p50, p99) at each stage.
    let mut figures: BTreeMap<&str, Vec<(Duration, Duration)>> = BTreeMap::new();
    let mut rss = vec![];
    let created = Arc::new(AtomicU64::new(0));
    for &stage in &stages {
        // 1. Grow: SCIM users up to this stage's share, then one-event organizations up to the
        // stage's size, from many senders (the writer commits them in groups).
        let before = db.head_position().await?;
        let head = before;
        let users_due = users * stage / last_stage;
        let users_now = created.load(Ordering::Relaxed);
        let new_users = users_due.saturating_sub(users_now);
        let new_orgs = stage.saturating_sub(head + 2 * new_users);
        let grow = Instant::now();
        let mut senders = JoinSet::new();
        let orgs_left = Arc::new(AtomicU64::new(new_orgs));
        let users_end = users_now + new_users;
        for _ in 0..concurrency {
            let (scim, org, created, orgs_left, bus) = (
                scim.clone(),
                org.clone(),
                created.clone(),
                orgs_left.clone(),
                state.bus.clone(),
            );
            senders.spawn(async move {
                loop {
                    let i = created.fetch_add(1, Ordering::Relaxed);
                    if i >= users_end {
                        created.fetch_sub(1, Ordering::Relaxed);
                        break;
                    }
                    // A write the store sheds (overloaded) is tried again after a second, as
                    // a client does; SCIM answers it as an internal error, so a retry that
                    // finds the user there (a conflict) is a success.
                    let mut tries = 0;
                    loop {
                        match scim.create_user(&ctx(&org), &org, &scim_user(i)).await {
                            Ok(_) => break,
                            Err(e) if tries > 0 && e.kind == ScimErrorKind::Conflict => break,
                            Err(e) if tries < RETRIES && e.kind == ScimErrorKind::Internal => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => anyhow::bail!("user {i}: {e}"),
                        }
                    }
                }
                while orgs_left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let id = Uuid::now_v7().to_string();
                    let name = format!("grown {id}");
                    let mut tries = 0;
                    loop {
                        let create = OrganizationCommand::Create { name: name.clone() };
                        match bus.organization(&ctx(&id), &id, create, Some(0)).await {
                            Ok(_) => break,
                            Err(CommandError::Unavailable {
                                retry_after_seconds,
                                ..
                            }) if tries < RETRIES => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_secs(retry_after_seconds)).await;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = senders.join_next().await {
            r??;
        }
        let head = db.head_position().await?;
        let grown = grow.elapsed();
        // Measured on caught-up models, with the tiles grown to the head.
        while !users_model.has_applied(head).await? || !organizations.has_applied(head).await? {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tiles.grow_to(head).await?;
        let users_total = created.load(Ordering::Relaxed);
        println!(
            "stage {stage}: log at {head} events, {users_total} SCIM users; grown in {:.1} s ({:.0} events/s); models caught up {:.1} s after",
            grown.as_secs_f64(),
            (head - before) as f64 / grown.as_secs_f64(),
            grow.elapsed().as_secs_f64() - grown.as_secs_f64()
        );

        println!("  memory after growing, before measuring: {}", memory());

        // 2. Measure, one call at a time.
        // A fresh admin token: access tokens live ten minutes, and growing takes longer.
        let api = Api {
            token: access_token(&http, &base, &admin_id, &admin_secret).await?,
            ..api.clone()
        };
        let mut results: Vec<Vec<Duration>> = Vec::new();
        let bus = state.bus.clone();
        results.push(
            sample(samples, |_| {
                let id = Uuid::now_v7().to_string();
                let bus = bus.clone();
                timed(async move {
                    let create = OrganizationCommand::Create {
                        name: "sample".into(),
                    };
                    Ok(bus.organization(&ctx(&id), &id, create, Some(0)).await?)
                })
            })
            .await?,
        );
        let token = || {
            let (http, base, id, secret) = (
                http.clone(),
                base.clone(),
                admin_id.clone(),
                admin_secret.clone(),
            );
            async move {
                let r = http
                    .post(format!("{base}/oauth2/token"))
                    .basic_auth(id, Some(secret))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "token: {}", r.status());
                let body: serde_json::Value = r.json().await?;
                anyhow::Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
            }
        };
        results.push(sample(samples, |_| timed(token())).await?);
        let access = token().await?;
        results.push(
            sample(samples, |_| {
                let request = http
                    .post(format!("{base}/oauth2/introspect"))
                    .basic_auth(&admin_id, Some(&admin_secret))
                    .form(&[("token", access.as_str())]);
                timed(async move {
                    let body: serde_json::Value = request.send().await?.json().await?;
                    anyhow::ensure!(body["active"] == true, "introspection said inactive");
                    Ok(())
                })
            })
            .await?,
        );
        let mut signins = Vec::new();
        for _ in 0..few {
            let t = Instant::now();
            let outcome = state
                .identity
                .sign_in(
                    &ctx(&org),
                    "scale@example.com",
                    Some(person.clone()),
                    password.clone(),
                    None,
                    RequestInfo::default(),
                )
                .await?;
            let total = t.elapsed();
            anyhow::ensure!(outcome.is_ok(), "sign-in refused");
            let t = Instant::now();
            anyhow::ensure!(verify_password(Some(hash.clone()), password.clone()).await);
            signins.push(total.saturating_sub(t.elapsed()));
        }
        results.push(signins);
        results.push(
            sample(samples, |_| {
                let api = api.clone();
                let body = json!({"org": org, "feature": "qubits", "amount": 32});
                timed(async move {
                    let answer = api
                        .ok(Method::POST, "/v1/entitlements/check", Some(body))
                        .await?;
                    anyhow::ensure!(answer["allowed"] == true, "entitlement refused: {answer}");
                    Ok(())
                })
            })
            .await?,
        );
        results.push(
            sample(samples, |i| {
                let tiles = &tiles;
                timed(async move { super::bench::prove_inclusion(tiles, i * 7919 % head, head).await })
            })
            .await?,
        );
        results.push(
            sample(few, |_| {
                let (evidence, org, job) = (state.evidence.clone(), org.clone(), job.clone());
                timed(async move { Ok(evidence.create_bundle(&ctx(&org), &job).await?) })
            })
            .await?,
        );
        results.push(
            sample(samples, |i| {
                let filter = format!(
                    "userName eq \"user{}@example.com\"",
                    i * 7919 % users_total.max(1)
                );
                let request = http
                    .get(format!("{base}/scim/v2/Users"))
                    .query(&[("filter", filter.as_str()), ("count", "100")])
                    .bearer_auth(&scim_token);
                let expected = u64::from(users_total > 0);
                timed(async move {
                    let r = request.send().await?;
                    let status = r.status();
                    let body: serde_json::Value = r.json().await?;
                    anyhow::ensure!(
                        status.is_success() && body["totalResults"] == expected,
                        "SCIM filter {filter}: {status} {body}"
                    );
                    Ok(())
                })
            })
            .await?,
        );
        results.push(
            sample(samples, |_| {
                // A process that has not kept the aggregate: its snapshot plus the events after.
                let cold = CommandBus::with_cache(
                    SqlEventRepository::new(db.clone()),
                    AggregateCache::new(1),
                );
                let org = org.clone();
                timed(async move { Ok(cold.load::<Organization>(&org).await?) })
            })
            .await?,
        );
        let mut lags = Vec::new();
        for _ in 0..few {
            let id = Uuid::now_v7().to_string();
            let create = OrganizationCommand::Create { name: "lag".into() };
            let outcome = bus.organization(&ctx(&id), &id, create, Some(0)).await?;
            let t = Instant::now();
            while !organizations.has_applied(outcome.position).await? {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            lags.push(t.elapsed());
        }
        results.push(lags);

        for (what, mut latencies) in OPERATIONS.iter().zip(results) {
            latencies.sort();
            let (p50, p99) = (quantile(&latencies, 0.5), quantile(&latencies, 0.99));
            println!(
                "  {stage:>8} events  {what:<36} p50 {:>8.2} ms  p99 {:>8.2} ms  ({} samples)",
                ms(p50),
                ms(p99),
                latencies.len()
            );
            figures.entry(what).or_default().push((p50, p99));
        }
        let now = memory();
        println!(
            "  {stage:>8} events  resident memory                      {now} ({:.2}x fresh; RssAnon {:.2}x); aggregate cache {} entries",
            now.rss / fresh.rss.max(1.0),
            now.anon / fresh.anon.max(1.0),
            state.bus.cache().len()
        );
        rss.push(now);
        let stopped = deployment.stopped();
        if !stopped.is_empty() {
            println!("  stopped during the stage: {stopped:?}");
        }
    }

    let names: Vec<String> = stages.iter().map(|s| short(*s)).collect();
    println!(
        "\n{} ratio (last stage / first; flat: within 2x)",
        names.join(" → ")
    );
    for what in OPERATIONS {
        let row = &figures[what];
        let (first, last) = (row[0], row[row.len() - 1]);
        let p50s: Vec<String> = row
            .iter()
            .map(|(p50, _)| format!("{:.2}", ms(*p50)))
            .collect();
        println!(
            "  {what:<36} p50 ms {:<28} p50 {:>6.2}x  p99 {:>6.2}x",
            p50s.join(" → "),
            ms(last.0) / ms(first.0).max(1e-3),
            ms(last.1) / ms(first.1).max(1e-3),
        );
    }
    for (what, of) in [
        (
            "resident memory (VmRSS)",
            (|m: &Memory| m.rss) as fn(&Memory) -> f64,
        ),
        ("of it anonymous (RssAnon)", |m: &Memory| m.anon),
    ] {
        let mib: Vec<String> = rss.iter().map(|m| format!("{:.0}", of(m))).collect();
        println!(
            "  {what:<36} MiB    {:<28} {:>6.2}x (last stage / fresh {:.2}x)",
            mib.join(" → "),
            of(&rss[rss.len() - 1]) / of(&rss[0]).max(1.0),
            of(&rss[rss.len() - 1]) / of(&fresh).max(1.0)
        );
    }
    deployment.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// 10000 -> "10k", 1000000 -> "1M".
fn short(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
