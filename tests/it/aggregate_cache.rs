//! The in-memory aggregate states (issue 18, long streams): a warm aggregate loads from its
//! cached state plus the events after it, and is always the state a full replay gives, also
//! when another process (another bus on the same store) appended in between. On both stores.

use quantus_commands::aggregate_cache::AggregateCache;
use quantus_commands::{CommandBus, CommandError};
use quantus_domain::organization::{Organization, OrganizationCommand};
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::{Database, SqlEventRepository};
use uuid::Uuid;

use crate::harness::*;

/// The organization's aggregate type, as stored.
const ORG: &str = <Organization as cqrs_es::Aggregate>::TYPE;

fn ctx(id: &str) -> CommandContext {
    CommandContext {
        tenant_id: id.to_owned(),
        actor: Actor {
            kind: ActorKind::System,
            id: "cache-test".into(),
        },
        occurred_at: quantus_domain::envelope::truncate_to_micros(chrono::Utc::now()),
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
    }
}

async fn rename(bus: &CommandBus, id: &str, name: &str) -> Result<u64, CommandError> {
    let command = OrganizationCommand::Rename { name: name.into() };
    Ok(bus.organization(&ctx(id), id, command, None).await?.version)
}

/// A replay from the first event, with nothing cached or saved.
async fn replayed(db: &Database, id: &str) -> (Organization, u64) {
    let bus = CommandBus::new(SqlEventRepository::new(db.clone()));
    let records = bus
        .repository()
        .aggregate_records_until(ORG, id, u64::MAX)
        .await
        .unwrap();
    let sequence = records.last().map_or(0, |r| r.envelope.sequence);
    (
        bus.load_until::<Organization>(id, u64::MAX).await.unwrap(),
        sequence,
    )
}

async fn a_warm_aggregate_is_the_replayed_one(db: Database) {
    let ours = CommandBus::new(SqlEventRepository::new(db.clone()));
    let theirs = CommandBus::new(SqlEventRepository::new(db.clone()));
    let id = Uuid::now_v7().to_string();
    let create = OrganizationCommand::Create {
        name: "Acme".into(),
    };
    ours.organization(&ctx(&id), &id, create, Some(0))
        .await
        .unwrap();
    for i in 0..300 {
        rename(&ours, &id, &format!("Acme {i}")).await.unwrap();
    }
    assert_eq!(ours.cache().len(), 1);
    assert_eq!(
        ours.load::<Organization>(&id).await.unwrap(),
        replayed(&db, &id).await
    );

    // Another process renames it: our cached state is older, and what we load (and decide
    // on) includes its events.
    assert_eq!(
        rename(&theirs, &id, "Renamed elsewhere").await.unwrap(),
        302
    );
    let (state, version) = ours.load::<Organization>(&id).await.unwrap();
    assert_eq!(version, 302);
    assert_eq!((state.clone(), version), replayed(&db, &id).await);
    assert_eq!(state.name, "Renamed elsewhere");
    // A command after it is numbered after it (no conflict from a stale state).
    assert_eq!(rename(&ours, &id, "Back home").await.unwrap(), 303);
    assert_eq!(
        ours.load::<Organization>(&id).await.unwrap(),
        replayed(&db, &id).await
    );

    // A command refused by the aggregate leaves the cached state as it was.
    let refused = ours
        .organization(&ctx(&id), &id, OrganizationCommand::Reactivate, None)
        .await;
    assert!(refused.is_err(), "reactivating an active organization");
    assert_eq!(
        ours.load::<Organization>(&id).await.unwrap(),
        replayed(&db, &id).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_aggregate_is_the_replayed_one_on_sqlite() {
    let dir = temp_dir("cache-sqlite");
    a_warm_aggregate_is_the_replayed_one(Database::open(None, &dir).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_aggregate_is_the_replayed_one_on_postgres() {
    let url = fresh_database().await;
    let dir = temp_dir("cache-postgres");
    a_warm_aggregate_is_the_replayed_one(Database::open(Some(&url), &dir).await.unwrap()).await;
}

#[test]
fn the_cache_keeps_at_most_its_capacity_and_never_goes_back_in_time() {
    let cache = AggregateCache::new(2);
    let org = |name: &str| Organization {
        name: name.into(),
        ..Organization::default()
    };
    cache.put("a", &org("A at 5"), 5, 0);
    cache.put("a", &org("A at 3"), 3, 0); // an older state arrives late: ignored
    assert_eq!(cache.get::<Organization>("a"), Some((org("A at 5"), 5)));
    cache.put("b", &org("B"), 1, 0);
    cache.put("c", &org("C"), 1, 0);
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache.get::<Organization>("a"),
        None,
        "the least recently used went"
    );
}

/// A meter counts: the state kept after each command must count each event once (the event
/// sink already applied the command's events to the aggregate it decided on).
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_meter_counts_each_event_once() {
    use quantus_domain::commercial::usage::{meter_id, Period, UsageCommand, UsageMeter};
    let dir = temp_dir("cache-meter");
    let db = Database::open(None, &dir).await.unwrap();
    let bus = CommandBus::new(SqlEventRepository::new(db.clone()));
    let org = Uuid::now_v7().to_string();
    let period = Period {
        year: 2026,
        month: 12,
    };
    let id = meter_id(&org, period);
    for i in 0..25 {
        let command = UsageCommand::Record {
            organization_id: org.clone(),
            period,
            metric: "shots".into(),
            amount: 4,
            source: format!("job-{i}"),
            quota: None,
        };
        bus.execute::<UsageMeter>(&ctx(&org), &id, command, None, &())
            .await
            .unwrap();
    }
    let cold = CommandBus::with_cache(SqlEventRepository::new(db.clone()), AggregateCache::new(1));
    let replayed = cold.load::<UsageMeter>(&id).await.unwrap();
    assert_eq!(replayed.0.used["shots"], 100);
    assert_eq!(bus.cache().get::<UsageMeter>(&id), Some(replayed.clone()));
    assert_eq!(bus.load::<UsageMeter>(&id).await.unwrap(), replayed);
}

/// Snapshots (issue 18, item 3): a process that has not kept a long stream's state (a restart,
/// another replica) reads its saved state and at most `SNAPSHOT_EVERY` events after it, and
/// gets exactly the state a full replay gives. A snapshot written by another build, or one
/// that cannot be read, is ignored: the stream is replayed.
async fn a_long_stream_loads_from_its_snapshot(db: Database) {
    use quantus_commands::SNAPSHOT_EVERY;
    let writer = CommandBus::new(SqlEventRepository::new(db.clone()));
    let repo = SqlEventRepository::new(db.clone());
    let id = Uuid::now_v7().to_string();
    let create = OrganizationCommand::Create {
        name: "Acme".into(),
    };
    writer
        .organization(&ctx(&id), &id, create, Some(0))
        .await
        .unwrap();
    let renames = 1_000;
    for i in 0..renames {
        rename(&writer, &id, &format!("Acme {i}")).await.unwrap();
    }
    let head = renames + 1;
    // The writer saves in the background at each multiple of SNAPSHOT_EVERY.
    let newest = head / SNAPSHOT_EVERY * SNAPSHOT_EVERY;
    let fingerprint = quantus_domain::STATE_FINGERPRINT;
    assert_eq!(saved_at(&repo, &id, newest).await, Some(newest));

    let cold =
        || CommandBus::with_cache(SqlEventRepository::new(db.clone()), AggregateCache::new(1));
    let restarted = cold();
    let loaded = restarted.load::<Organization>(&id).await.unwrap();
    assert_eq!(loaded, replayed(&db, &id).await);
    assert_eq!(loaded.0.name, format!("Acme {}", renames - 1));
    assert_eq!(
        restarted.events_replayed(),
        head - newest,
        "only the events after the snapshot are read"
    );
    // ... and a command from it is numbered after the head.
    assert_eq!(rename(&restarted, &id, "Next").await.unwrap(), head + 1);

    // Another build's snapshot (other fingerprint) is not read: a full replay, which saves
    // this build's state again.
    repo.save_snapshot(ORG, &id, head + 1, "another-build", "{}")
        .await
        .unwrap();
    let after_upgrade = cold();
    assert_eq!(
        after_upgrade.load::<Organization>(&id).await.unwrap(),
        replayed(&db, &id).await
    );
    assert_eq!(after_upgrade.events_replayed(), head + 1);

    assert_eq!(saved_at(&repo, &id, head + 1).await, Some(head + 1));

    // An unreadable snapshot of this build is ignored the same way, and replaced.
    repo.save_snapshot(ORG, &id, head + 2, fingerprint, "not json")
        .await
        .unwrap();
    let damaged = cold();
    assert_eq!(
        damaged.load::<Organization>(&id).await.unwrap(),
        replayed(&db, &id).await
    );
    assert_eq!(damaged.events_replayed(), head + 1);
    assert_eq!(saved_at(&repo, &id, head + 1).await, Some(head + 1));

    // A save that arrives late (an older sequence) never replaces a newer one.
    repo.save_snapshot(ORG, &id, 5, fingerprint, "{}")
        .await
        .unwrap();
    let kept = repo.snapshot(ORG, &id, fingerprint).await.unwrap();
    assert_eq!(kept.map(|(sequence, _)| sequence), Some(head + 1));
}

/// The sequence of the organization's saved state once it is `expected` (saves run in the
/// background), or what it is after 5 s.
async fn saved_at(repo: &SqlEventRepository, id: &str, expected: u64) -> Option<u64> {
    let fingerprint = quantus_domain::STATE_FINGERPRINT;
    let mut saved = None;
    for _ in 0..100 {
        saved = repo
            .snapshot(ORG, id, fingerprint)
            .await
            .unwrap()
            .map(|(sequence, _)| sequence);
        if saved == Some(expected) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    saved
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_stream_loads_from_its_snapshot_on_sqlite() {
    let dir = temp_dir("snapshot-sqlite");
    a_long_stream_loads_from_its_snapshot(Database::open(None, &dir).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_stream_loads_from_its_snapshot_on_postgres() {
    let url = fresh_database().await;
    let dir = temp_dir("snapshot-postgres");
    a_long_stream_loads_from_its_snapshot(Database::open(Some(&url), &dir).await.unwrap()).await;
}

// Issue 18, item 2: the hot paths (access-token verification, introspection, the token
// keyring, client authentication, grant liveness) answer from memory kept current by the log,
// and a change recorded by any process holds in every process within the staleness bound
// (`QUANTUS_READ_STALENESS_MS`, 1 s by default), at once in the process that recorded it.

/// Whether `server` calls `token` active, asked by the bootstrap admin.
async fn introspect(server: &Server, token: &str) -> bool {
    let (client_id, secret) = bootstrap_credentials(&server.data_dir);
    let answer = introspection(server.url(), &client_id, &secret, token).await;
    answer["active"].as_bool().expect("active")
}

async fn revoke(server: &Server, token: &str) {
    let (client_id, secret) = bootstrap_credentials(&server.data_dir);
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", server.url()))
        .basic_auth(&client_id, Some(&secret))
        .form(&[("token", token)])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);
}

/// Loads `server`'s hot paths answered from memory so far.
async fn loads_from_memory(server: &Server) -> u64 {
    let scrape = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix("quantus_aggregate_loads_from_memory_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no loads-from-memory counter in {scrape}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_paths_answer_introspection_from_memory_and_a_revocation_holds_at_once() {
    let dir = temp_dir("hot-paths");
    let server = Server::embedded(&dir);
    let (client_id, secret) = bootstrap_credentials(&dir);
    let token = client_token(server.url(), &client_id, &secret, None);
    assert!(introspect(&server, &token).await);
    let before = loads_from_memory(&server).await;
    for _ in 0..10 {
        assert!(introspect(&server, &token).await);
    }
    // Each introspection authenticates the caller, finds the token key, and checks the grant
    // and its client: all from memory once warm.
    let served = loads_from_memory(&server).await - before;
    assert!(
        served >= 30,
        "only {served} loads from memory for 10 introspections"
    );
    revoke(&server, &token).await;
    assert!(
        !introspect(&server, &token).await,
        "the process that revoked the token refuses it at once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_through_one_process_is_refused_by_another_within_the_bound() {
    let url = fresh_database().await;
    let dir = temp_dir("hot-paths-two");
    // Two replicas of one deployment: one issuer (public URL), one store.
    let listen = format!("127.0.0.1:{}", free_port());
    let public = format!("http://{listen}");
    let vars = [
        ("QUANTUS_READ_STALENESS_MS", "1000"),
        ("QUANTUS_PUBLIC_URL", public.as_str()),
    ];
    let store = ["--database-url", url.as_str()];
    let first = Server::start(
        &dir,
        &[&["--listen", listen.as_str()][..], &store].concat(),
        &vars,
    );
    let second = Server::start(
        &dir,
        &[&["--listen", "127.0.0.1:0"][..], &store].concat(),
        &vars,
    );
    let (client_id, secret) = bootstrap_credentials(&dir);
    let token = client_token(first.url(), &client_id, &secret, None);
    // The second process answers from memory once warm.
    assert!(introspect(&second, &token).await);
    let before = loads_from_memory(&second).await;
    assert!(introspect(&second, &token).await);
    assert!(loads_from_memory(&second).await > before);

    revoke(&first, &token).await;
    assert!(!introspect(&first, &token).await);
    // A request that reaches the second process the bound after the revocation was committed
    // is answered from a pass over the log that began after it.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert!(
        !introspect(&second, &token).await,
        "the other process still accepts a token revoked a second ago"
    );
    // And its access token no longer opens the API there either.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/organizations", second.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
}
