//! Load shedding (issue 17, item 4): the queue in front of the event writer is bounded; once it
//! is full a write is answered at once with 503 problem+json and `Retry-After` (nothing of it
//! written), while reads and token introspection are still served. The writer is held up for
//! real: another connection holds the append lock (SQLite's write lock, Postgres' advisory
//! lock), so admitted writes cannot finish until the test lets go.

use std::time::Duration;

use quantus_infra::Database;
use serde_json::{json, Value};

use crate::harness::*;

const DEPTH: usize = 3;

/// The value of an OpenMetrics sample `name` (no labels), if the scrape has it.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(name))
            .then(|| parts.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

async fn writes_are_shed_while_reads_and_introspection_are_served(database_url: Option<String>) {
    let dir = temp_dir("shedding");
    let mut args = vec!["--listen", "127.0.0.1:0"];
    if let Some(url) = &database_url {
        args.extend(["--database-url", url.as_str()]);
    }
    let depth = DEPTH.to_string();
    let server = Server::start(
        &dir,
        &args,
        &[
            ("QUANTUS_WRITE_QUEUE_DEPTH", depth.as_str()),
            // Long enough that no held write is withdrawn while the test looks.
            ("QUANTUS_WRITE_QUEUE_TIMEOUT_MS", "600000"),
            ("QUANTUS_WRITE_RETRY_AFTER_SECONDS", "7"),
        ],
    );
    let api = server.client();
    let (org, position) = api.create_org("Written before the overload").await;
    let seen = api
        .get(&format!("/v1/organizations/{org}?min_position={position}"))
        .await;
    assert_eq!(seen.status, 200, "{}", seen.body);

    // Hold the append lock from outside the server: its writer now waits for it.
    let outside = Database::open(database_url.as_deref(), &dir)
        .await
        .expect("open the store beside the server");
    let lock = outside.begin_write().await.expect("take the append lock");

    let held: Vec<_> = (0..DEPTH)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                api.post("/v1/organizations", json!({"name": format!("Held {i}")}))
                    .await
                    .status
            })
        })
        .collect();
    let base = server.url().to_owned();
    eventually(
        "every slot of the write queue to be taken",
        Duration::from_secs(30),
        || {
            let base = base.clone();
            async move {
                (sample(&metrics(&base).await, "quantus_write_queue")? >= DEPTH as u64)
                    .then_some(())
            }
        },
    )
    .await;

    // The queue is full: the next write is shed at once, with Retry-After, as problem+json.
    // (A bound on the client, so that a server that queues instead fails the test rather than
    // hanging it: the lock is held until the test lets go.)
    let shed = api
        .send(
            api.request(reqwest::Method::POST, "/v1/organizations")
                .json(&json!({"name": "One too many"}))
                .timeout(Duration::from_secs(60)),
        )
        .await;
    assert_eq!(shed.status, 503, "{}", shed.body);
    assert_eq!(
        shed.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    assert_eq!(
        shed.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert_eq!(shed.body["status"], 503);
    assert_eq!(
        shed.body["type"], "https://quantus.dev/problems/overloaded",
        "{}",
        shed.body
    );
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the admitted writes are still waiting for the writer"
    );
    // Shed on arrival, before any work: even a bad token gets 503, not 401.
    let unchecked = reqwest::Client::new()
        .post(format!("{}/v1/organizations", server.url()))
        .bearer_auth("not-a-token")
        .json(&json!({"name": "Unchecked"}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("an answer");
    assert_eq!(unchecked.status(), 503);
    assert!(unchecked.headers().contains_key("retry-after"));

    // Reads and token introspection are served while writes are shed.
    let read = api.get(&format!("/v1/organizations/{org}")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["name"], "Written before the overload");
    let list = api.get("/v1/organizations").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let (client_id, secret) = bootstrap_credentials(&dir);
    let answer = introspection(&base, &client_id, &secret, &api.token).await;
    assert_eq!(answer["active"], true, "{answer}");
    let scraped = metrics(&base).await;
    assert!(
        sample(&scraped, "quantus_writes_shed_total").is_some_and(|n| n >= 1),
        "{scraped}"
    );

    // Let go: the held writes are answered by the writer (none of them shed), and the queue
    // takes writes again.
    lock.rollback().await.expect("release the append lock");
    for h in held {
        let status = h.await.expect("held write");
        assert_ne!(status, 503, "an admitted write was shed");
        if database_url.is_some() {
            assert_eq!(status, 201);
        }
    }
    let after = api
        .post("/v1/organizations", json!({"name": "After the overload"}))
        .await;
    assert_eq!(after.status, 201, "{}", after.body);
    // The shed write left nothing in the log.
    let names: Vec<Value> = api
        .events_of("Organization")
        .await
        .into_iter()
        .map(|e| e["envelope"]["payload"]["name"].clone())
        .collect();
    assert!(!names.contains(&json!("One too many")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shedding_writes_get_503_while_reads_are_served_on_sqlite() {
    writes_are_shed_while_reads_and_introspection_are_served(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shedding_writes_get_503_while_reads_are_served_on_postgres() {
    writes_are_shed_while_reads_and_introspection_are_served(Some(fresh_database().await)).await;
}

/// The store's own admission, without HTTP: a full queue refuses at once, and a write the busy
/// writer has not taken within the queueing time is withdrawn, never written, while the one the
/// writer had taken is committed when the lock goes.
#[tokio::test(flavor = "multi_thread")]
async fn shedding_a_full_queue_refuses_and_a_write_queued_too_long_is_withdrawn_unwritten() {
    use quantus_infra::group_commit::{Overloaded, WriteLimits};
    let dir = temp_dir("shedding-store");
    let db = Database::open(None, &dir)
        .await
        .unwrap()
        .with_write_limits(WriteLimits {
            queue_depth: 2,
            queue_timeout: Duration::from_millis(300),
            retry_after: Duration::from_secs(3),
        });
    let first = db.admit_write().expect("a free slot");
    let second = db.admit_write().expect("a free slot");
    let refused = db.admit_write().err().expect("the queue is full");
    assert_eq!(refused.retry_after, Duration::from_secs(3));
    assert_eq!(db.write_queue().in_flight, 2);
    assert_eq!(db.write_queue().shed, 1);
    drop((first, second));
    assert_eq!(db.write_queue().in_flight, 0);

    // Hold SQLite's write lock from another connection: the writer's first batch waits for it.
    let outside = Database::open(None, &dir).await.unwrap();
    let lock = outside.begin_write().await.unwrap();
    let (batches_before, _) = db.append_stats().get();
    let taken = {
        let db = db.clone();
        tokio::spawn(async move {
            db.append(crate::group_commit::command("taken", 1, &["Taken"]))
                .await
        })
    };
    eventually(
        "the writer to take the first write into a batch",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move { (db.append_stats().get().0 > batches_before).then_some(()) }
        },
    )
    .await;
    let withdrawn = db
        .append(crate::group_commit::command("withdrawn", 1, &["Withdrawn"]))
        .await
        .expect_err("waited longer than the queueing time");
    assert!(Overloaded::of(&withdrawn).is_some(), "{withdrawn}");
    lock.rollback().await.unwrap();
    let position = taken.await.unwrap().expect("the taken write commits");
    assert!(position > 0);
    let log = quantus_infra::event_store::read_log(&db, 0, 1000)
        .await
        .unwrap();
    assert!(log.iter().any(|r| r.envelope.aggregate_id == "taken"));
    assert!(!log.iter().any(|r| r.envelope.aggregate_id == "withdrawn"));
    assert_eq!(db.write_queue().in_flight, 0);
    assert_eq!(db.write_queue().shed, 2);
}

/// Past the connection cap a connection is not left in the listen backlog: it is accepted and
/// its request answered at once with 503 problem+json, `Retry-After` and `Connection: close`
/// (nothing of it done), and connections are served again once a slot frees.
#[tokio::test(flavor = "multi_thread")]
async fn shedding_a_connection_past_the_cap_is_answered_503_at_once_not_left_waiting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("shedding-connections");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("QUANTUS_MAX_CONNECTIONS", "2"),
            // The silent connections below hold their slots for the whole test.
            ("QUANTUS_HEADER_READ_TIMEOUT_SECONDS", "60"),
            ("QUANTUS_WRITE_RETRY_AFTER_SECONDS", "5"),
        ],
    );
    let api = server.client();
    let address = server.url().trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = json!({"name": "Past the cap"}).to_string();
    let request = format!(
        "POST /v1/organizations HTTP/1.1\r\nHost: quantus\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        api.token,
        body.len()
    );
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("a connection past the cap was left waiting")
        .expect("the answer");
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 5\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("/problems/overloaded"), "{answer}");
    assert!(
        waited < Duration::from_secs(2),
        "shed after {waited:?}, not at once"
    );

    // The slots free when their connections go; then requests are served again.
    drop(silent);
    eventually(
        "a request to be served once the cap frees",
        Duration::from_secs(30),
        || {
            let api = &api;
            async move {
                let r = api
                    .post("/v1/organizations", json!({"name": "After the cap"}))
                    .await;
                (r.status == 201).then_some(())
            }
        },
    )
    .await;
    let names: Vec<Value> = api
        .events_of("Organization")
        .await
        .into_iter()
        .map(|e| e["envelope"]["payload"]["name"].clone())
        .collect();
    assert!(names.contains(&json!("After the cap")), "{names:?}");
    assert!(!names.contains(&json!("Past the cap")), "{names:?}");
}

/// The queueing deadline counts from the request's arrival (the HTTP server sets it): a write
/// that has already been in the server longer than the queue timeout is refused at admission,
/// before it loads anything, while one that has just arrived is admitted.
#[tokio::test(flavor = "multi_thread")]
async fn shedding_a_write_that_arrived_longer_ago_than_the_queue_timeout_is_refused_at_admission() {
    use quantus_infra::group_commit::WriteLimits;
    let dir = temp_dir("shedding-arrival");
    let db = Database::open(None, &dir)
        .await
        .unwrap()
        .with_write_limits(WriteLimits {
            queue_depth: 4,
            queue_timeout: Duration::from_millis(300),
            retry_after: Duration::from_secs(2),
        });
    let now = tokio::time::Instant::now();
    let late =
        quantus_infra::arriving(now - Duration::from_millis(301), async { db.admit_write() }).await;
    let refused = late.err().expect("arrived past the queue timeout");
    assert_eq!(refused.retry_after, Duration::from_secs(2));
    assert_eq!(db.write_queue().shed, 1);
    assert_eq!(db.write_queue().in_flight, 0);
    let fresh = quantus_infra::arriving(tokio::time::Instant::now(), async { db.admit_write() })
        .await
        .expect("arrived just now");
    assert_eq!(db.write_queue().in_flight, 1);
    drop(fresh);
    // Outside any request (jobs, the CLI) the deadline counts from admission.
    assert!(db.admit_write().is_ok());
}
