//! Scenario (e): the spine in the embedded mode, where the SQLite outbox is the log.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// Sixteen writers, each creating an organization and renaming it three times.
async fn concurrent_writers(api: &Api, writers: usize) -> u64 {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let api = api.clone();
            tokio::spawn(async move {
                let (id, _) = api.create_org(&format!("Writer {w}")).await;
                let mut last = 0;
                for v in 1..=3u64 {
                    let r = api
                        .patch(
                            &format!("/v1/organizations/{id}"),
                            json!({"name": format!("Writer {w} v{v}")}),
                            Some(v),
                        )
                        .await;
                    assert_eq!(r.status, 200, "{}", r.body);
                    last = r.body["position"].as_u64().unwrap();
                }
                last
            })
        })
        .collect();
    let mut max = 0;
    for t in tasks {
        max = max.max(t.await.unwrap());
    }
    max
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_log_is_gap_free_replayable_and_survives_a_crash() {
    let dir = temp_dir("embedded");
    let store = ["--data-dir", dir.to_str().unwrap()];
    let mut server = Server::embedded(&dir);
    let api = server.client();
    let last = concurrent_writers(&api, 16).await;

    // Positions are gap-free and each aggregate's events are in sequence order.
    let events = api.all_events().await;
    let total = events.len() as u64;
    assert_eq!(api.events_of("Organization").await.len(), 64);
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>());
    assert_eq!(last, total, "the last write is the last event");
    let r = api
        .get(&format!("/v1/organizations?limit=200&min_position={last}"))
        .await;
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 16);
    assert!(items
        .iter()
        .all(|o| o["name"].as_str().unwrap().ends_with(" v3") && o["version"] == 4));

    // A crash (SIGKILL) in the middle of writes loses nothing that was acknowledged.
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut acknowledged = vec![];
            for i in 0..10_000 {
                // The connection drops when the server dies: that ends the writes.
                let sent = api
                    .request(reqwest::Method::POST, "/v1/organizations")
                    .json(&json!({"name": format!("Late {i}")}))
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                if response.status() != 201 {
                    break;
                }
                let Ok(body) = response.json::<serde_json::Value>().await else {
                    break;
                };
                acknowledged.push(body["id"].as_str().unwrap().to_owned());
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill();
    let acknowledged = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .ok()
        .map(Result::unwrap);
    let acknowledged = acknowledged.unwrap_or_default();
    assert!(
        !acknowledged.is_empty(),
        "no write was acknowledged before the crash"
    );

    let server = Server::embedded(&dir);
    let api = server.client();
    let head = api.all_events().await.len() as u64;
    for id in &acknowledged {
        let r = api
            .get(&format!("/v1/organizations/{id}?min_position={head}"))
            .await;
        assert_eq!(r.status, 200, "acknowledged organization {id} lost");
    }
    drop(server);

    let (ok, out) = audit_verify(&store);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("events: {head}")) && out.contains(&format!("positions: 1..{head}")),
        "{out}"
    );
    assert!(out.trim_end().ends_with("OK"), "{out}");
    assert_model_equals_replay("organizations", &store);
}

#[tokio::test]
async fn changing_one_stored_event_is_named_by_the_auditor() {
    let dir = temp_dir("tamper-sqlite");
    let store = ["--data-dir", dir.to_str().unwrap()];
    {
        let server = Server::embedded(&dir);
        let api = server.client();
        for i in 0..5 {
            api.create_org(&format!("Org {i}")).await;
        }
    }
    assert!(audit_verify(&store).0);
    // For scripts: the same verdict as one JSON object, and `projections rebuild` likewise.
    let json = |args: &[&str]| -> serde_json::Value {
        let out = quantus(&[args, &store[..], &["--json"]].concat(), &[]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let clean = json(&["audit", "verify"]);
    assert_eq!(clean["ok"], true, "{clean}");
    assert_eq!(clean["first_position"], 1, "{clean}");
    assert_eq!(clean["events"], clean["last_position"], "{clean}");
    assert!(clean["broken"].is_null(), "{clean}");
    let rebuilt = json(&["projections", "rebuild", "organizations"]);
    assert_eq!(rebuilt["projection"], "organizations", "{rebuilt}");
    assert_eq!(rebuilt["position"], clean["last_position"], "{rebuilt}");
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", dir.join("quantus.db").display());
    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    // The store itself refuses updates; an attacker with file access drops the guard first.
    let refused =
        sqlx::query("UPDATE events SET payload = '{\"name\":\"Evil\"}' WHERE position = 3")
            .execute(&db)
            .await;
    assert!(refused.is_err(), "the events table accepted an update");
    sqlx::query("DROP TRIGGER events_no_update")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET payload = '{\"name\":\"Evil\"}' WHERE position = 3")
        .execute(&db)
        .await
        .unwrap();
    let event_id: String = sqlx::query_scalar("SELECT event_id FROM events WHERE position = 3")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;

    let (ok, out) = audit_verify(&store);
    assert!(!ok, "tampering went unnoticed: {out}");
    assert!(
        out.contains("BROKEN at position 3")
            && out.contains(&event_id)
            && out.contains("hash mismatch"),
        "{out}"
    );
    let broken = json(&["audit", "verify"]);
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["broken"]["position"], 3, "{broken}");
    assert_eq!(broken["broken"]["event_id"], event_id.as_str(), "{broken}");
}

#[tokio::test]
async fn removing_an_event_breaks_the_chain_and_the_positions() {
    let dir = temp_dir("remove-sqlite");
    let store = ["--data-dir", dir.to_str().unwrap()];
    {
        let server = Server::embedded(&dir);
        let api = server.client();
        let (id, _) = api.create_org("Org").await;
        api.patch(
            &format!("/v1/organizations/{id}"),
            json!({"name": "Org 2"}),
            None,
        )
        .await;
        api.patch(
            &format!("/v1/organizations/{id}"),
            json!({"name": "Org 3"}),
            None,
        )
        .await;
    }
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&format!("sqlite://{}", dir.join("quantus.db").display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER events_no_delete")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE position = 2")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (ok, out) = audit_verify(&store);
    assert!(!ok);
    assert!(
        out.contains("BROKEN at position 3") && out.contains("sequence 3 follows 1"),
        "{out}"
    );
}

#[tokio::test]
async fn an_unreadable_stored_event_is_a_break_not_a_tool_failure() {
    let dir = temp_dir("corrupt-sqlite");
    let store = ["--data-dir", dir.to_str().unwrap()];
    {
        let server = Server::embedded(&dir);
        server.client().create_org("Org").await;
    }
    let db = pool(&format!("sqlite://{}", dir.join("quantus.db").display())).await;
    sqlx::query("DROP TRIGGER events_no_update")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET actor_kind = 'robot' WHERE position = 1")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let out = quantus(&["audit", "verify", store[0], store[1]], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("BROKEN") && stdout.contains("position 1") && stdout.contains("actor_kind"),
        "{stdout}"
    );
}
