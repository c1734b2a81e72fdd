//! `quantus bench scim`: latency of SCIM filtered lists (`count=100`) over HTTP against an
//! in-process server, with `--users` users (default 100 000) in one organization, loaded
//! through the command bus exactly as SCIM creates them. Prints figures; asserts nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use quantus_api::AppState;
use quantus_commands::scim::Scim;
use quantus_domain::organization::OrganizationCommand;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::keystore::{master_key, FileKeystore};
use quantus_infra::Database;
use quantus_projections::runner::ProjectionRunner;
use serde_json::json;
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

fn report(what: &str, latencies: &mut [Duration], total: u64) {
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what:<60} p50 {:>8.1} ms  p99 {:>8.1} ms  ({} requests, totalResults {total})",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        latencies.len(),
    );
}

pub async fn run(
    database_url: Option<&str>,
    users: u64,
    concurrency: u64,
    requests: u64,
) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("quantus-bench-scim-{}", Uuid::now_v7()));
    let db = Database::open(database_url, &dir).await?;
    let keystore = FileKeystore::open(&dir, None)?;
    let master = master_key(&dir, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let objects = quantus_infra::objects::ObjectStorage::local(&dir.join("objects"))?;
    let state = AppState::new(
        db.clone(),
        Arc::new(keystore),
        &master,
        objects,
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
    let scim = Scim::new(state.identity.clone(), state.bus.clone());
    let (_, token, _) = scim.issue_token(&ctx(&org), &org, "bench").await?;

    // The users read model follows the log in the background, as `serve` runs it.
    let keys = state.identity.subject_keys().clone();
    let users_runner = ProjectionRunner::new(
        db.clone(),
        Arc::new(quantus_projections::users::UsersView::new(keys)),
    );
    users_runner.prepare().await?;
    // Lists read the groups model for each user's `groups`: its (empty) table must exist.
    ProjectionRunner::new(
        db.clone(),
        Arc::new(quantus_projections::groups::GroupsView),
    )
    .prepare()
    .await?;
    let background = users_runner.clone();
    tokio::spawn(async move {
        let _ = background
            .run_from_store(tokio::sync::watch::channel(false).1)
            .await;
    });

    println!("loading {users} users into one organization ({concurrency} writers)...");
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..concurrency {
        let scim = scim.clone();
        let org = org.clone();
        tasks.spawn(async move {
            let mut i = w;
            while i < users {
                let kind = if i % 2 == 0 { "work" } else { "home" };
                let domain = if i % 3 == 0 { "example.com" } else { "corp.example" };
                let user = json!({
                    "userName": format!("user{i}@{domain}"),
                    "name": {"givenName": format!("Given{i}"), "familyName": format!("Family{}", i % 1000)},
                    "externalId": format!("ext{i}"),
                    "emails": [{"value": format!("user{i}@{domain}"), "type": kind, "primary": true}],
                    "active": true,
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                        {"department": format!("dept{}", i % 50)},
                });
                scim.create_user(&ctx(&org), &org, &user)
                    .await
                    .map_err(|e| anyhow::anyhow!("user {i}: {e}"))?;
                i += concurrency;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let loaded = start.elapsed();
    println!(
        "loaded {users} users in {:.1} s ({:.0} users/s; 2 events each)",
        loaded.as_secs_f64(),
        users as f64 / loaded.as_secs_f64()
    );
    let head = db.head_position().await?;
    let wait = Instant::now();
    while !users_runner.has_applied(head).await? {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "users read model caught up {:.1} s later",
        wait.elapsed().as_secs_f64()
    );

    let app = quantus_api::router(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = reqwest::Client::new();
    // Each filter form the indexes answer, one the blind index narrows, one tested in memory
    // after an indexed conjunct, and one refused with `tooMany` (it would test every user).
    for (filter, sort_by) in [
        ("", ""),
        ("", "userName"),
        (r#"userName sw "user12""#, ""),
        (r#"userName eq "user4242@example.com""#, ""),
        (r#"externalId eq "ext777""#, ""),
        (r#"id gt "8""#, "meta.created"),
        (r#"meta.lastModified gt "2000-01-01T00:00:00Z""#, ""),
        (r#"active eq false"#, ""),
        (r#"emails eq "user31337@corp.example""#, ""),
        (
            r#"name.familyName eq "Family7" and not (active eq false)"#,
            "",
        ),
        (
            r#"userName sw "user12" and emails[type eq "work" and value co "@ex"]"#,
            "",
        ),
        (r#"emails[type eq "work" and value co "@ex"]"#, ""),
    ] {
        let mut latencies = Vec::with_capacity(requests as usize);
        let mut total = 0;
        let mut refused = None;
        for _ in 0..requests {
            let t = Instant::now();
            let mut query = vec![("count", "100")];
            if !filter.is_empty() {
                query.push(("filter", filter));
            }
            if !sort_by.is_empty() {
                query.push(("sortBy", sort_by));
            }
            let r = http
                .get(format!("{base}/scim/v2/Users"))
                .query(&query)
                .bearer_auth(&token)
                .send()
                .await?;
            let status = r.status();
            let body: serde_json::Value = r.json().await?;
            latencies.push(t.elapsed());
            if status.is_success() {
                total = body["totalResults"].as_u64().unwrap_or_default();
            } else if body["scimType"] == "tooMany" {
                refused = Some("tooMany");
            } else {
                anyhow::bail!("{filter}: {status} {body}");
            }
        }
        let mut what = format!("GET /Users?filter={filter}&count=100");
        if !sort_by.is_empty() {
            what.push_str(&format!("&sortBy={sort_by}"));
        }
        if let Some(r) = refused {
            what.push_str(&format!(" (refused: {r})"));
        }
        report(&what, &mut latencies, total);
    }
    Ok(ExitCode::SUCCESS)
}
