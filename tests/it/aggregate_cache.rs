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

/// A replay from the first event, with nothing cached.
async fn replayed(db: &Database, id: &str) -> (Organization, u64) {
    let cold = CommandBus::with_cache(SqlEventRepository::new(db.clone()), AggregateCache::new(1));
    cold.load::<Organization>(id).await.unwrap()
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
    cache.put("a", &org("A at 5"), 5);
    cache.put("a", &org("A at 3"), 3); // an older state arrives late: ignored
    assert_eq!(cache.get::<Organization>("a"), Some((org("A at 5"), 5)));
    cache.put("b", &org("B"), 1);
    cache.put("c", &org("C"), 1);
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
    use quantus_domain::usage::{meter_id, Period, UsageCommand, UsageMeter};
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
