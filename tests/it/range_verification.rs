//! Issue 13 item 3, the event log explorer's last gap: `POST /v1/audit/verifications` verifies a
//! range of log positions against the store (hashes, schemas, chain links continued from before
//! the range, no gap) and against the newest signed checkpoint; each kind of tampering is named
//! at its position. On SQLite and on Postgres.

use serde_json::{json, Value};

use crate::harness::*;
use crate::portal::org_client;

async fn verify(api: &Api, from: u64, to: u64) -> Reply {
    api.post("/v1/audit/verifications", json!({"from": from, "to": to}))
        .await
}

/// A verification that ran (200): its answer.
async fn verified(api: &Api, from: u64, to: u64) -> Value {
    let r = verify(api, from, to).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// The store as an attacker with owner rights has it: the append-only guards switched off.
async fn attacker(url: &str, postgres: bool) -> sqlx::AnyPool {
    let db = pool(url).await;
    let guards: &[&str] = if postgres {
        &["ALTER TABLE events DISABLE TRIGGER USER"]
    } else {
        &[
            "DROP TRIGGER IF EXISTS events_no_update",
            "DROP TRIGGER IF EXISTS events_no_delete",
        ]
    };
    for g in guards {
        sqlx::query(g).execute(&db).await.unwrap();
    }
    db
}

/// Sets the stored payload and hash of the event at `position` (the payload as JSON text).
async fn rewrite(db: &sqlx::AnyPool, position: u64, payload: &str, hash: &str) {
    // Literals, not binds: the payload column is JSON on Postgres and text on SQLite.
    sqlx::query(&format!(
        "UPDATE events SET payload = '{}', hash = '{hash}' WHERE position = {position}",
        payload.replace('\'', "''")
    ))
    .execute(db)
    .await
    .unwrap();
}

/// The envelope at `position`, as the log API serves it (exactly what was hashed).
async fn envelope_at(api: &Api, position: u64) -> quantus_domain::envelope::Envelope {
    let r = api
        .get(&format!("/v1/events?after={}&limit=1", position - 1))
        .await;
    let entry = &r.body["events"][0];
    assert_eq!(entry["position"], position, "{}", r.body);
    serde_json::from_value(entry["envelope"].clone()).unwrap()
}

async fn range_story(label: &str, postgres: bool) {
    let dir = temp_dir(label);
    let url = if postgres {
        fresh_database().await
    } else {
        format!("sqlite://{}", dir.join("quantus.db").display())
    };
    let env: Vec<(&str, &str)> = if postgres {
        vec![("DATABASE_URL", url.as_str())]
    } else {
        vec![]
    };
    let server = Server::start(&dir, &["--listen", "127.0.0.1:0"], &env);
    let api = server.client();
    let (acme, _) = api.create_org("Acme").await;
    let (globex, globex_at) = api.create_org("Globex").await;
    let r = api
        .patch(
            &format!("/v1/organizations/{acme}"),
            json!({"name": "Acme Quantum"}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let renamed_at = r.body["position"].as_u64().unwrap();
    let r = api.post("/v1/audit/checkpoints", json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let signed = r.body["tree_size"].as_u64().unwrap();
    // After the checkpoint: checked, but under no signature yet.
    api.create_org("Initech").await;
    let head = api.head().await;
    assert!(head > signed + 1, "{head} {signed}");

    // The whole log: intact, checked against the checkpoint, its tail named as unsigned.
    let v = verified(&api, 1, head).await;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["events"], head, "{v}");
    assert!(v["aggregates"].as_u64().unwrap() >= 4, "{v}");
    assert_eq!(v["checkpoint"]["tree_size"], signed, "{v}");
    assert!(!v["checkpoint"]["kid"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(v["unsigned_from"], signed + 1, "{v}");
    assert!(v["failure"].is_null(), "{v}");
    assert!(
        v["summary"].as_str().unwrap().contains(&format!(
            "Positions {} to {head} are not under a signed checkpoint yet",
            signed + 1
        )),
        "{v}"
    );
    // A range that starts mid-chain: the rename links to Acme's creation before the range.
    let v = verified(&api, renamed_at, renamed_at).await;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(
        (v["events"].as_u64(), v["aggregates"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert!(v["unsigned_from"].is_null(), "{v}");

    // Ranges that cannot be verified are clear problems.
    for (from, to, says) in [
        (0, 1, "1 or more"),
        (3, 2, "must not be before"),
        (1, 100_001, "at most 100000 positions"),
        (1, head + 1, "past the end of the log"),
    ] {
        let r = verify(&api, from, to).await;
        assert_eq!(r.status, 400, "{from}..{to}: {}", r.body);
        assert!(
            r.body["detail"].as_str().unwrap().contains(says),
            "{}",
            r.body
        );
    }
    let r = api
        .post("/v1/audit/verifications", json!({"from": 1}))
        .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.body);
    // Platform operators only: a customer's admin is refused, no token is unauthenticated.
    let tenant_admin = org_client(&api, &acme, &["admin"]).await;
    let r = verify(&tenant_admin, 1, 1).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = api
        .http
        .post(format!("{}/v1/audit/verifications", api.base))
        .json(&json!({"from": 1, "to": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let db = attacker(&url, postgres).await;
    // One payload changed: that event's hash no longer matches.
    let original = envelope_at(&api, globex_at).await;
    let original_payload = serde_json::to_string(&original.payload).unwrap();
    rewrite(&db, globex_at, r#"{"name":"Evil"}"#, &original.hash).await;
    let v = verified(&api, 1, head).await;
    assert_eq!(v["verified"], false, "{v}");
    let f = &v["failure"];
    assert_eq!(f["kind"], "hash_mismatch", "{v}");
    assert_eq!(f["position"], globex_at, "{v}");
    assert_eq!(f["aggregate_id"], globex.as_str(), "{v}");
    assert_eq!(v["events"], globex_at - 1, "{v}");
    rewrite(&db, globex_at, &original_payload, &original.hash).await;
    assert_eq!(verified(&api, 1, head).await["verified"], true);

    // A consistent rewrite: the rename's payload and hash recomputed (the last event of its
    // chain, so every link holds): only the signed checkpoint tells.
    let original = envelope_at(&api, renamed_at).await;
    let mut forged = original.clone();
    forged.payload["name"] = json!("Evil Quantum");
    forged.hash = forged.compute_hash().unwrap();
    let forged_payload = serde_json::to_string(&forged.payload).unwrap();
    rewrite(&db, renamed_at, &forged_payload, &forged.hash).await;
    let v = verified(&api, 1, head).await;
    assert_eq!(v["verified"], false, "{v}");
    let f = &v["failure"];
    assert_eq!(f["kind"], "not_in_signed_tree", "{v}");
    assert_eq!(f["position"], renamed_at, "{v}");
    assert_eq!(f["aggregate_id"], acme.as_str(), "{v}");
    // Past the checkpoint there is nothing to compare with: the forgery passes there.
    let v = verified(&api, signed + 1, head).await;
    assert_eq!(v["verified"], true, "{v}");
    let original_payload = serde_json::to_string(&original.payload).unwrap();
    rewrite(&db, renamed_at, &original_payload, &original.hash).await;
    assert_eq!(verified(&api, 1, head).await["verified"], true);

    // A removed event: the gap is named.
    sqlx::query(&format!("DELETE FROM events WHERE position = {globex_at}"))
        .execute(&db)
        .await
        .unwrap();
    let v = verified(&api, 1, head).await;
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["failure"]["kind"], "missing_position", "{v}");
    assert_eq!(v["failure"]["position"], globex_at, "{v}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_verifies_and_each_tampering_is_named_on_sqlite() {
    range_story("range-sqlite", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_verifies_and_each_tampering_is_named_on_postgres() {
    range_story("range-postgres", true).await;
}
