//! `quantus bench scim`: latency of SCIM filtered lists (`count=100`) over HTTP against an
//! in-process server, with `--users` users (default 100 000) in one organization and one
//! group per 100 of them (50 members each), loaded through the command bus exactly as SCIM
//! creates them; `GET /Users`, `GET /Groups` and the `.search` forms. Prints figures; asserts
//! nothing.

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
    let groups_runner = ProjectionRunner::new(
        db.clone(),
        Arc::new(quantus_projections::groups::GroupsView),
    );
    groups_runner.prepare().await?;
    for runner in [users_runner.clone(), groups_runner.clone()] {
        tokio::spawn(async move {
            let _ = runner
                .run_from_store(tokio::sync::watch::channel(false).1)
                .await;
        });
    }

    println!("loading {users} users into one organization ({concurrency} writers)...");
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..concurrency {
        let scim = scim.clone();
        let org = org.clone();
        tasks.spawn(async move {
            let mut ids = vec![];
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
                let (id, _) = scim
                    .create_user(&ctx(&org), &org, &user)
                    .await
                    .map_err(|e| anyhow::anyhow!("user {i}: {e}"))?;
                ids.push((i, id));
                i += concurrency;
            }
            anyhow::Ok(ids)
        });
    }
    let mut user_ids = vec![String::new(); users as usize];
    while let Some(r) = tasks.join_next().await {
        for (i, id) in r?? {
            user_ids[i as usize] = id;
        }
    }
    let loaded = start.elapsed();
    println!(
        "loaded {users} users in {:.1} s ({:.0} users/s; 2 events each)",
        loaded.as_secs_f64(),
        users as f64 / loaded.as_secs_f64()
    );
    // Group g holds users g, g + n, g + 2n... (n groups, 50 members each at most).
    let group_count = (users / 100).max(1);
    let start = Instant::now();
    let mut group_ids = vec![];
    for g in 0..group_count {
        let members: Vec<serde_json::Value> = (g..users)
            .step_by(group_count as usize)
            .take(50)
            .map(|i| json!({"value": user_ids[i as usize]}))
            .collect();
        let group = json!({
            "displayName": format!("Group {g}"),
            "externalId": format!("gext{g}"),
            "members": members,
        });
        let (id, _) = scim
            .create_group(&ctx(&org), &org, &group)
            .await
            .map_err(|e| anyhow::anyhow!("group {g}: {e}"))?;
        group_ids.push(id);
    }
    println!(
        "loaded {group_count} groups in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let head = db.head_position().await?;
    let wait = Instant::now();
    while !(users_runner.has_applied(head).await? && groups_runner.has_applied(head).await?) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "read models caught up {:.1} s later",
        wait.elapsed().as_secs_f64()
    );

    let app = quantus_api::router(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = reqwest::Client::new();
    // Each filter form the indexes answer, one the blind index narrows, one tested in memory
    // after an indexed conjunct, and one refused with `tooMany` (it would test every user);
    // the groups' forms and the `.search` requests (POST with the query as a body).
    let member = user_ids[(users / 4) as usize].clone();
    let group = group_ids[group_ids.len() / 2].clone();
    let by_member = format!(r#"members.value eq "{member}""#);
    let in_group = format!(r#"groups.value eq "{group}""#);
    let user_id = format!(r#"id eq "{member}""#);
    for (path, filter, sort_by) in [
        ("/Users", "", ""),
        ("/Users", "", "userName"),
        ("/Users", r#"userName sw "user12""#, ""),
        ("/Users", r#"userName eq "user4242@example.com""#, ""),
        ("/Users", r#"externalId eq "ext777""#, ""),
        ("/Users", r#"id gt "8""#, "meta.created"),
        (
            "/Users",
            r#"meta.lastModified gt "2000-01-01T00:00:00Z""#,
            "",
        ),
        ("/Users", r#"active eq true"#, ""),
        ("/Users", r#"active eq false"#, ""),
        ("/Users", r#"emails eq "user31337@corp.example""#, ""),
        (
            "/Users",
            r#"name.familyName eq "Family7" and not (active eq false)"#,
            "",
        ),
        (
            "/Users",
            r#"userName sw "user12" and emails[type eq "work" and value co "@ex"]"#,
            "",
        ),
        ("/Users", r#"emails[type eq "work" and value co "@ex"]"#, ""),
        ("/Users", in_group.as_str(), ""),
        ("/Groups", "", ""),
        ("/Groups", "", "displayName"),
        ("/Groups", r#"displayName eq "group 42""#, ""),
        ("/Groups", r#"displayName sw "group 1""#, ""),
        ("/Groups", r#"externalId eq "gext7""#, ""),
        ("/Groups", by_member.as_str(), ""),
        ("/Groups", r#"displayName co "9""#, ""),
        ("/Users/.search", r#"userName sw "user12""#, ""),
        ("/Groups/.search", by_member.as_str(), ""),
        ("/.search", user_id.as_str(), ""),
        ("/.search", r#"meta.created gt "2000-01-01T00:00:00Z""#, ""),
    ] {
        let mut latencies = Vec::with_capacity(requests as usize);
        let mut total = 0;
        let mut refused = None;
        for _ in 0..requests {
            let t = Instant::now();
            let request = if path.ends_with(".search") {
                let mut body = json!({"count": 100});
                if !filter.is_empty() {
                    body["filter"] = filter.into();
                }
                if !sort_by.is_empty() {
                    body["sortBy"] = sort_by.into();
                }
                http.post(format!("{base}/scim/v2{path}")).json(&body)
            } else {
                let mut query = vec![("count", "100")];
                if !filter.is_empty() {
                    query.push(("filter", filter));
                }
                if !sort_by.is_empty() {
                    query.push(("sortBy", sort_by));
                }
                http.get(format!("{base}/scim/v2{path}")).query(&query)
            };
            let r = request.bearer_auth(&token).send().await?;
            let status = r.status();
            let body: serde_json::Value = r.json().await?;
            latencies.push(t.elapsed());
            if status.is_success() {
                total = body["totalResults"].as_u64().unwrap_or_default();
            } else if body["scimType"] == "tooMany" {
                refused = Some("tooMany");
            } else {
                anyhow::bail!("{path} {filter}: {status} {body}");
            }
        }
        let verb = if path.ends_with(".search") {
            "POST"
        } else {
            "GET"
        };
        let mut what = format!("{verb} {path}?filter={filter}&count=100");
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
