//! `quantus bench`: throughput of the write path, the projection path and the auditor, in the
//! configured mode (embedded, or Postgres + Kafka). Prints figures; asserts nothing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use quantus_commands::CommandBus;
use quantus_domain::audit::Audit;
use quantus_domain::organization::OrganizationCommand;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::relay::Relay;
use quantus_infra::{Database, SqlEventRepository};
use quantus_projections::runner::ProjectionRunner;
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure: the event-sourcing spine, QuantumLock's cryptography, QSA's token
    /// endpoint, introspection and password sign-in, the evidence plane, the Portal
    /// (entitlement checks, activation to licence), SCIM lists, SAML responses, or second
    /// factors (TOTP, passkeys), or the API under twice its write capacity (overload).
    #[arg(value_enum, default_value = "spine")]
    what: BenchTarget,
    /// Licences to issue and sign (crypto).
    #[arg(long, default_value_t = 500)]
    licences: u64,
    /// Size of the artifact to upload, in MiB (evidence).
    #[arg(long, default_value_t = 256)]
    megabytes: u64,
    /// Contracts to activate, each timed until its licence file is available (portal).
    #[arg(long, default_value_t = 50)]
    contracts: u64,
    /// Evidence bundles to create (evidence).
    #[arg(long, default_value_t = 100)]
    bundles: u64,
    /// Commands to run (each records one event; evidence: events for the audit measurement).
    #[arg(long, default_value_t = 5000)]
    commands: u64,
    /// Users to load into one organization (scim; scale: spread over the stages).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Requests per measured filter (scim).
    #[arg(long, default_value_t = 50)]
    requests: u64,
    /// Signed SAML responses to make (saml).
    #[arg(long, default_value_t = 500)]
    responses: u64,
    /// Concurrent command senders.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Events in the one long aggregate stream whose loading is measured (spine).
    #[arg(long, default_value_t = 10_000)]
    stream: u64,
    /// Log sizes, in events, at which to measure (scale).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 1_000_000])]
    stages: Vec<u64>,
    /// Samples per figure and stage (scale; sign-ins and bundles: a tenth, at least 10).
    #[arg(long, default_value_t = 200)]
    samples: u64,
    /// Postgres URL; without it, a fresh embedded store in a temporary folder.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Kafka brokers; with them, also measure relay -> Kafka -> projection.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka: Option<String>,
    /// Folder for the embedded store (default: a new temporary folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Writes per second to offer (overload; default: twice the capacity measured first).
    #[arg(long)]
    rate: Option<u64>,
    /// How long to offer them, in seconds (overload).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
}

fn rate(n: u64, elapsed: Duration) -> String {
    format!(
        "{:>10.0}/s  ({n} in {:.2} s)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    )
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BenchTarget {
    Spine,
    Crypto,
    Identity,
    Evidence,
    Portal,
    Scim,
    Mfa,
    Saml,
    /// The API past its capacity: goodput, shed writes, latency of accepted ones.
    Overload,
    /// Read models as of a past position over a long history.
    TimeTravel,
    /// Hot operations' latency and resident memory as one deployment grows in stages.
    Scale,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let BenchTarget::Overload = args.what {
        return super::bench_overload::run(
            args.database_url.as_deref(),
            args.seconds,
            args.rate,
            args.concurrency,
        )
        .await;
    }
    if let BenchTarget::TimeTravel = args.what {
        return super::bench_travel::run(
            args.database_url.as_deref(),
            args.commands,
            args.concurrency,
        )
        .await;
    }
    if let BenchTarget::Scale = args.what {
        return super::bench_scale::run(
            args.database_url.as_deref(),
            args.kafka.as_deref(),
            &args.stages,
            args.users,
            args.samples,
            args.concurrency,
        )
        .await;
    }
    if let BenchTarget::Crypto = args.what {
        return super::bench_crypto::run(args.licences).await;
    }
    if let BenchTarget::Evidence = args.what {
        return super::bench_evidence::run(
            args.database_url.as_deref(),
            std::env::var("OBJECT_STORE_URL").ok().as_deref(),
            args.megabytes,
            args.bundles,
            args.commands,
        )
        .await;
    }
    if let BenchTarget::Portal = args.what {
        return super::bench_portal::run(
            args.database_url.as_deref(),
            args.kafka.as_deref(),
            args.commands,
            args.concurrency,
            args.contracts,
        )
        .await;
    }
    if let BenchTarget::Saml = args.what {
        return super::bench_saml::run(
            args.database_url.as_deref(),
            args.responses,
            args.concurrency,
        )
        .await;
    }
    if let BenchTarget::Scim = args.what {
        return super::bench_scim::run(
            args.database_url.as_deref(),
            args.users,
            args.concurrency,
            args.requests,
        )
        .await;
    }
    if let BenchTarget::Mfa = args.what {
        return super::bench_mfa::run(args.database_url.as_deref(), args.commands.min(2000)).await;
    }
    if let BenchTarget::Identity = args.what {
        return super::bench_identity::run(
            args.database_url.as_deref(),
            args.commands,
            args.concurrency,
        )
        .await;
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("quantus-bench-{}", Uuid::now_v7())));
    let db = Database::open(args.database_url.as_deref(), &data_dir).await?;
    let bench_keys = quantus_infra::subject_keys::SubjectKeys::new(
        db.clone(),
        &*quantus_infra::keystore::master_key(&data_dir, None)?,
    );
    let mode = if args.database_url.is_some() {
        "postgres"
    } else {
        "embedded sqlite"
    };
    println!(
        "mode: {mode}; commands: {}; concurrency: {}",
        args.commands, args.concurrency
    );
    let start_position = db.head_position().await?;

    // 1. Commands into the store.
    let bus = Arc::new(CommandBus::new(SqlEventRepository::new(db.clone())));
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for worker in 0..args.concurrency {
        let bus = bus.clone();
        let count =
            args.commands / args.concurrency + u64::from(worker < args.commands % args.concurrency);
        senders.spawn(async move {
            for i in 0..count {
                let id = Uuid::now_v7().to_string();
                let ctx = CommandContext {
                    tenant_id: id.clone(),
                    actor: Actor {
                        kind: ActorKind::System,
                        id: "bench".into(),
                    },
                    occurred_at: Utc::now(),
                    correlation_id: Uuid::now_v7(),
                    causation_id: Uuid::now_v7(),
                };
                bus.organization(
                    &ctx,
                    &id,
                    OrganizationCommand::Create {
                        name: format!("bench {worker}-{i}"),
                    },
                    Some(0),
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    println!(
        "commands -> store:        {}",
        rate(args.commands, started.elapsed())
    );
    let (batches, batched) = db.append_stats().get();
    println!(
        "  group commit: {batched} commands in {batches} transactions ({:.1} per transaction)",
        batched as f64 / batches.max(1) as f64
    );
    let head = db.head_position().await?;

    // 2. The store's log into a projection (the embedded path).
    let runner = ProjectionRunner::new(
        db.clone(),
        quantus_projections::by_name("organizations", &bench_keys).context("projection")?,
    );
    let started = Instant::now();
    let rebuilt = runner.rebuild().await?;
    println!(
        "log -> projection (store): {}",
        rate(rebuilt, started.elapsed())
    );

    // 3. Relay -> Kafka -> projection consumer group.
    if let Some(brokers) = &args.kafka {
        let mut kafka = quantus_infra::kafka::KafkaSettings::new(brokers.clone());
        kafka.topic_prefix = format!("bench-{}.", Uuid::now_v7());
        quantus_infra::kafka::ensure_topics(&kafka).await?;
        let relay = Relay::new(db.clone(), &kafka)?.with_name(kafka.topic_prefix.clone());
        let from = relay.cursor().await?;
        let started = Instant::now();
        while relay.cursor().await? < head {
            relay.publish_batch().await?;
        }
        let published = head - from;
        println!(
            "relay -> kafka:           {}",
            rate(published, started.elapsed())
        );

        // Empty the model first: a rebuilt model would make the consumer skip every event as a
        // duplicate, which measures skipping, not projecting.
        let runner = ProjectionRunner::new(
            db.clone(),
            quantus_projections::by_name("organizations", &bench_keys).context("projection")?,
        );
        runner.reset().await?;
        let mut consumer = tokio::spawn(runner.clone().run_from_kafka_group(
            kafka.clone(),
            format!("bench.{}", Uuid::now_v7()),
            tokio::sync::watch::channel(false).1,
        ));
        let target: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE aggregate_type = 'Organization'")
                .fetch_one(&db.pool)
                .await?;
        // Events applied so far: the sum of the sequences reached per organization.
        let applied_sql =
            "SELECT CAST(COALESCE(SUM(sequence), 0) AS BIGINT) FROM projection_streams \
                           WHERE projection = 'organizations'";
        let deadline = Instant::now() + Duration::from_secs(600);
        // The clock starts at the first applied batch: joining the consumer group is not
        // projection work.
        let mut first: Option<(i64, Instant)> = None;
        loop {
            if consumer.is_finished() {
                let outcome = (&mut consumer).await;
                anyhow::bail!("the Kafka projection stopped: {outcome:?}");
            }
            let applied: i64 = sqlx::query_scalar(applied_sql).fetch_one(&db.pool).await?;
            if applied > 0 && first.is_none() {
                first = Some((applied, Instant::now()));
            }
            if applied >= target {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Kafka projection did not finish within 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        consumer.abort();
        let (first_batch, since) = first.unwrap_or((0, Instant::now()));
        println!(
            "kafka -> projection:      {}  (after the first batch of {first_batch})",
            rate((target - first_batch) as u64, since.elapsed())
        );
        quantus_infra::kafka::delete_topics(&kafka).await?;
    }

    // 4. The auditor over the store.
    let started = Instant::now();
    let mut audit = Audit::new();
    super::audit::audit_store(&db, &mut audit).await?.clean()?;
    let summary = audit.finish().map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "audit verify (store):     {}",
        rate(summary.events, started.elapsed())
    );
    // The bound the auditor is compared with: SHA-256 alone over the same canonical bytes,
    // already in memory (reading and canonicalising are not timed).
    let mut canonical = Vec::with_capacity(summary.events as usize);
    let mut after = 0;
    loop {
        let records = quantus_infra::event_store::read_log(&db, after, 5000).await?;
        let Some(last) = records.last().map(|r| r.position) else {
            break;
        };
        for r in &records {
            canonical.push(r.envelope.canonical_bytes()?);
        }
        after = last;
    }
    let started = Instant::now();
    for bytes in &canonical {
        std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    }
    println!(
        "raw SHA-256, same bytes:  {}  (one core; {} bytes on average)",
        rate(canonical.len() as u64, started.elapsed()),
        canonical.iter().map(Vec::len).sum::<usize>() / canonical.len().max(1)
    );
    proofs(&db, head).await?;
    println!(
        "log: positions {}..{head} (this run appended {})",
        start_position + 1,
        head - start_position
    );
    // Appends its own stream, after the log figures above.
    aggregate_loads(&db, args.stream).await?;
    if args.data_dir.is_none() {
        // The temporary folder this run made for itself.
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// Inclusion proofs over the whole log: from the stored tiles (O(log n) tiles each) beside the
/// whole-tree computation they replaced (every leaf read and hashed), at this log's size.
async fn proofs(db: &Database, head: u64) -> anyhow::Result<()> {
    let store = quantus_infra::log_tiles::LogTiles::new(db.clone());
    let started = Instant::now();
    let before = store.size().await?;
    store.grow_to(head).await?;
    println!(
        "tiles grown:              {}",
        rate(head - before, started.elapsed())
    );
    let repo = SqlEventRepository::new(db.clone());
    let rounds = 200u64;
    let mut latencies = Vec::new();
    let started = Instant::now();
    for i in 0..rounds {
        let t = Instant::now();
        prove_inclusion(&store, i * 7919 % head, head).await?;
        latencies.push(t.elapsed());
    }
    super::bench_kit::report(
        "inclusion proof from tiles",
        rounds,
        started.elapsed(),
        &mut latencies,
    );
    let mut latencies = Vec::new();
    let started = Instant::now();
    let rounds = 5u64;
    for i in 0..rounds {
        let t = Instant::now();
        let leaves: Vec<_> = repo
            .event_hashes_between(0, head)
            .await?
            .iter()
            .map(|h| quantus_crypto::merkle::leaf_hash(h))
            .collect();
        std::hint::black_box(quantus_crypto::merkle::inclusion_proof(
            &leaves,
            (i * 7919 % head) as usize,
        ));
        latencies.push(t.elapsed());
    }
    super::bench_kit::report(
        "inclusion proof from every leaf (before)",
        rounds,
        started.elapsed(),
        &mut latencies,
    );
    Ok(())
}

/// The inclusion proof of leaf `index` in the tree of size `head`, from the stored tiles.
pub(crate) async fn prove_inclusion(
    store: &quantus_infra::log_tiles::LogTiles,
    index: u64,
    head: u64,
) -> anyhow::Result<()> {
    use quantus_crypto::tiles;
    let compute = |n: &mut dyn FnMut(u32, u64) -> quantus_crypto::merkle::Hash| {
        tiles::inclusion_path(index, head, n)
    };
    let set = store
        .load(head, &tiles::tiles_needed(head, compute))
        .await?;
    std::hint::black_box(set.run(compute)?);
    Ok(())
}

/// Loading one aggregate with a long stream (`events` events): replaying the whole stream
/// (the baseline), cold (a process that has not kept it: its saved state plus at most
/// `SNAPSHOT_EVERY` events), and warm (this process's kept state plus the events after it).
async fn aggregate_loads(db: &Database, events: u64) -> anyhow::Result<()> {
    use quantus_commands::aggregate_cache::AggregateCache;
    use quantus_domain::organization::Organization;
    let bus = CommandBus::new(SqlEventRepository::new(db.clone()));
    let id = Uuid::now_v7().to_string();
    let ctx = CommandContext {
        tenant_id: id.clone(),
        actor: Actor {
            kind: ActorKind::System,
            id: "bench".into(),
        },
        occurred_at: Utc::now(),
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
    };
    let create = OrganizationCommand::Create {
        name: "Long stream".into(),
    };
    bus.organization(&ctx, &id, create, Some(0)).await?;
    for i in 1..events {
        let rename = OrganizationCommand::Rename {
            name: format!("Long stream {i}"),
        };
        bus.organization(&ctx, &id, rename, None).await?;
    }
    // Background saves of the snapshot settle before the cold loads.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut cold = Vec::new();
    let mut replayed = 0;
    let started = Instant::now();
    for _ in 0..50 {
        let fresh =
            CommandBus::with_cache(SqlEventRepository::new(db.clone()), AggregateCache::new(1));
        let t = Instant::now();
        std::hint::black_box(fresh.load::<Organization>(&id).await?);
        cold.push(t.elapsed());
        replayed = fresh.events_replayed();
    }
    super::bench_kit::report(
        &format!(
            "aggregate load, {events} events, cold from its snapshot ({replayed} events read)"
        ),
        50,
        started.elapsed(),
        &mut cold,
    );
    let mut full = Vec::new();
    let started = Instant::now();
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(bus.load_until::<Organization>(&id, u64::MAX).await?);
        full.push(t.elapsed());
    }
    super::bench_kit::report(
        &format!("aggregate load, {events} events, full replay"),
        5,
        started.elapsed(),
        &mut full,
    );
    let mut warm = Vec::new();
    let started = Instant::now();
    for _ in 0..1000 {
        let t = Instant::now();
        std::hint::black_box(bus.load::<Organization>(&id).await?);
        warm.push(t.elapsed());
    }
    super::bench_kit::report(
        &format!("aggregate load, {events} events, warm"),
        1000,
        started.elapsed(),
        &mut warm,
    );
    Ok(())
}
