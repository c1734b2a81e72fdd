//! `quantus bench time-travel`: as-of queries (`quantus_projections::history`) over a long
//! history. One organization's 100 groups are renamed `--commands` times in all (one event
//! each, through the command bus), the groups model is built from the log with its history,
//! then pages of 100 groups are read as of positions spread over the whole log. Prints
//! figures; asserts nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_commands::CommandBus;
use quantus_domain::identity::group::{Group, GroupCommand};
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::{Database, SqlEventRepository};
use quantus_projections::groups::GroupsView;
use quantus_projections::history;
use quantus_projections::runner::ProjectionRunner;
use tokio::task::JoinSet;
use uuid::Uuid;

const GROUPS: u64 = 100;

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

fn report(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what:<52} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  ({} queries)",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        p(1.0).as_secs_f64() * 1e3,
        latencies.len(),
    );
}

pub async fn run(
    database_url: Option<&str>,
    commands: u64,
    concurrency: u64,
) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("quantus-bench-travel-{}", Uuid::now_v7()));
    let db = Database::open(database_url, &dir).await?;
    let mode = if database_url.is_some() {
        "postgres"
    } else {
        "embedded sqlite"
    };
    let org = Uuid::now_v7().to_string();
    let bus = Arc::new(CommandBus::new(SqlEventRepository::new(db.clone())));
    let groups: Vec<String> = (0..GROUPS).map(|_| Uuid::now_v7().to_string()).collect();
    for id in &groups {
        bus.execute::<Group>(
            &ctx(&org),
            id,
            GroupCommand::Create {
                organization_id: org.clone(),
                name: format!("group {id}"),
            },
            Some(0),
            &(),
        )
        .await?;
    }
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let (bus, org) = (bus.clone(), org.clone());
        let mine: Vec<String> = groups
            .iter()
            .skip(worker as usize)
            .step_by(concurrency as usize)
            .cloned()
            .collect();
        let count = commands / concurrency + u64::from(worker < commands % concurrency);
        workers.spawn(async move {
            for i in 0..count {
                let Some(id) = mine.get(i as usize % mine.len().max(1)) else {
                    break;
                };
                bus.execute::<Group>(
                    &ctx(&org),
                    id,
                    GroupCommand::Rename {
                        name: format!("{id} #{i}"),
                    },
                    None,
                    &(),
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let head = db.head_position().await?;
    println!(
        "mode: {mode}; {GROUPS} groups of one organization, {commands} renames in {:.1} s; log head {head}",
        started.elapsed().as_secs_f64()
    );
    let runner = ProjectionRunner::new(db.clone(), Arc::new(GroupsView));
    let started = Instant::now();
    runner.rebuild().await?;
    println!(
        "groups model and its history rebuilt from the log in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut latencies = Vec::new();
    let mut rows = 0;
    for i in 0..=100 {
        let at = head * i / 100;
        let started = Instant::now();
        rows += history::as_of(&db.pool, GroupsView::NAME, Some(&org), at, None, 100)
            .await?
            .len();
        latencies.push(started.elapsed());
    }
    report(
        "as-of page of 100 groups, 101 positions over the log",
        &mut latencies,
    );
    let mut latencies = Vec::new();
    for _ in 0..=100 {
        let started = Instant::now();
        GroupsView::by_organization(&db.pool, &org).await?;
        latencies.push(started.elapsed());
    }
    report("current state (for comparison)", &mut latencies);
    println!("rows read as of: {rows}");
    if database_url.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ExitCode::SUCCESS)
}
