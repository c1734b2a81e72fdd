//! Issue 14 hardening: slow clients, body limits, query edge cases, idempotent creation.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

/// The embedded default and a Postgres-backed server: what touches storage runs on both.
async fn both_stores(label: &str, env: &[(&str, &str)]) -> Vec<(&'static str, Server)> {
    let embedded = Server::start(&temp_dir(label), &["--listen", "127.0.0.1:0"], env);
    let url = fresh_database().await;
    let postgres = Server::start(
        &temp_dir(label),
        &["--listen", "127.0.0.1:0", "--database-url", &url],
        env,
    );
    vec![("sqlite", embedded), ("postgres", postgres)]
}

fn assert_problem(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{what}"
    );
    assert_eq!(r.body["status"], status, "{what}: {}", r.body);
}

/// The list routes that take `min_position` (read-your-writes).
fn list_routes(org: &str) -> Vec<String> {
    vec![
        "/v1/organizations?".to_owned(),
        format!("/v1/users?org={org}&"),
        format!("/v1/jobs?org={org}&"),
        format!("/v1/licenses?org={org}&"),
        format!("/v1/customers?org={org}&"),
        format!("/v1/contracts?org={org}&"),
        format!("/v1/invoices?org={org}&"),
    ]
}

#[tokio::test]
async fn min_position_zero_is_always_applied_and_positions_past_the_store_range_are_400() {
    for (store, server) in both_stores("min-position", &[]).await {
        let api = server.client();
        let (org, _) = api.create_org("Acme").await;
        for route in list_routes(&org) {
            // A short wait: before the fix position 0 was never "applied" and ended in a timeout.
            let r = api.get(&format!("{route}min_position=0&wait_ms=200")).await;
            assert_eq!(r.status, 200, "{store} {route}min_position=0: {}", r.body);
            for past in [
                "9223372036854775808",  // 2^63: no stored position can be this large
                "18446744073709551615", // u64::MAX
                "18446744073709551616", // not even a u64
            ] {
                let r = api
                    .get(&format!("{route}min_position={past}&wait_ms=200"))
                    .await;
                assert_problem(&r, 400, &format!("{store} {route}min_position={past}"));
            }
        }
    }
}

#[tokio::test]
async fn events_after_a_position_past_the_log_are_none() {
    for (store, server) in both_stores("events-after", &[]).await {
        let api = server.client();
        api.create_org("Acme").await;
        let head = api.head().await;
        assert!(head > 0);
        for after in [head, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let r = api.get(&format!("/v1/events?after={after}")).await;
            assert_eq!(r.status, 200, "{store} after={after}: {}", r.body);
            assert_eq!(r.body["events"], json!([]), "{store} after={after}");
            assert_eq!(r.body["next_after"], after, "{store} after={after}");
        }
    }
}

#[tokio::test]
async fn a_licence_put_retried_without_not_before_is_the_same_licence() {
    for (store, server) in both_stores("license-put", &[]).await {
        let api = server.client();
        let (org, _) = api.create_org("Acme").await;
        let terms = json!({
            "organization_id": org, "product": "qpu", "edition": "pro",
            "expires_at": "2030-01-01T00:00:00Z", "max_activations": 2,
        });
        let put = |id: String, body: Value| {
            let api = api.clone();
            async move {
                api.send(
                    api.request(Method::PUT, &format!("/v1/licenses/{id}"))
                        .json(&body),
                )
                .await
            }
        };
        let id = uuid::Uuid::now_v7().to_string();
        let first = put(id.clone(), terms.clone()).await;
        assert_eq!(first.status, 201, "{store}: {}", first.body);
        // Later, so "now" differs from the first issue: the default must not.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let retry = put(id.clone(), terms.clone()).await;
        assert_eq!(retry.status, 200, "{store} retry: {}", retry.body);
        assert_eq!(retry.body["position"], first.body["position"], "{store}");
        assert_eq!(
            api.events_of("License")
                .await
                .iter()
                .filter(|e| e["envelope"]["aggregate_id"] == id.as_str())
                .count(),
            1,
            "{store}"
        );

        // Other terms under the same id still conflict.
        let mut other = terms.clone();
        other["max_activations"] = json!(3);
        assert_problem(&put(id.clone(), other).await, 409, store);

        // A licence issued with an explicit future start is not what "from issue" asks for.
        let later = uuid::Uuid::now_v7().to_string();
        let mut future = terms.clone();
        future["not_before"] = json!("2029-01-01T00:00:00Z");
        assert_eq!(
            put(later.clone(), future.clone()).await.status,
            201,
            "{store}"
        );
        assert_eq!(put(later.clone(), future).await.status, 200, "{store}");
        assert_problem(&put(later, terms.clone()).await, 409, store);
    }
}

// ---- Item 3: slow clients, connection cap, body limits, unfinished uploads ----

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.url().trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Everything the server sends until it closes the connection (a reset counts as closed).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Writes `bytes` one at a time, `every` apart, until done or the server hangs up.
async fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    for b in bytes {
        tokio::time::sleep(every).await;
        if writer.write_all(&[b]).await.is_err() {
            return;
        }
    }
}

/// Starts a raw HTTP/1.1 exchange: writes `head` (and its blank line unless `partial`), then
/// trickles `body`; returns what the server answered and when it hung up.
async fn slow_client(server: &Server, head: String, body: Vec<u8>) -> (String, Duration) {
    let stream = connect(server).await;
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    write.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(trickle(write, body, Duration::from_millis(500)));
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    // Unbounded, the server would keep this client for a minute and then wait forever.
    let _ = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    writer.abort();
    (String::from_utf8_lossy(&all).into_owned(), elapsed)
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let dir = temp_dir("slow-clients");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("QUANTUS_HEADER_READ_TIMEOUT_SECONDS", "2"),
            ("QUANTUS_BODY_READ_TIMEOUT_SECONDS", "2"),
        ],
    );
    let api = server.client();
    // Headers that never end: one byte of a header every 500 ms.
    let partial_headers = slow_client(
        &server,
        "GET /healthz HTTP/1.1\r\nHost: quantus\r\nX-Slow: ".to_owned(),
        vec![b'a'; 120],
    );
    // A body one byte every 500 ms: each gap is shorter than the body read timeout, but the
    // average (2 bytes/s) is far below the minimum rate.
    let trickled_body = slow_client(
        &server,
        format!(
            "POST /v1/organizations HTTP/1.1\r\nHost: quantus\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 120\r\n\r\n",
            api.token
        ),
        vec![b' '; 120],
    );
    let others = async {
        let mut statuses = Vec::new();
        for i in 0..5 {
            let r = api
                .post(
                    "/v1/organizations",
                    json!({ "name": format!("Served {i}") }),
                )
                .await;
            statuses.push(r.status);
            statuses.push(api.get("/v1/organizations").await.status);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        statuses
    };
    let ((headers_answer, headers_took), (body_answer, body_took), statuses) =
        tokio::join!(partial_headers, trickled_body, others);

    // Each would have gone on for a minute; both ended near the 2 s bound (a loaded machine
    // may add a few seconds, never 60).
    assert!(
        headers_took >= Duration::from_millis(1500) && headers_took < Duration::from_secs(30),
        "partial headers cut after {headers_took:?}"
    );
    assert!(
        !headers_answer.contains("200 OK"),
        "partial headers were served: {headers_answer}"
    );
    assert!(
        body_took >= Duration::from_millis(1500) && body_took < Duration::from_secs(30),
        "trickled body cut after {body_took:?}"
    );
    assert!(
        body_answer.starts_with("HTTP/1.1 408"),
        "trickled body: {body_answer}"
    );
    assert!(
        body_answer.contains("application/problem+json"),
        "{body_answer}"
    );
    assert!(body_answer.contains("request-timeout"), "{body_answer}");
    assert!(
        statuses.iter().all(|s| (200..300).contains(s)),
        "the other clients were not all served: {statuses:?}"
    );
    // The trickled create never happened.
    assert_eq!(api.events_of("Organization").await.len(), 5);
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_a_slot_frees() {
    let dir = temp_dir("connection-cap");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("QUANTUS_MAX_CONNECTIONS", "4"),
            // No connection is shed (`shedding::` tests that): past the cap they wait.
            ("QUANTUS_SHED_CONNECTIONS", "0"),
            ("QUANTUS_HEADER_READ_TIMEOUT_SECONDS", "3"),
        ],
    );
    // Four connections that never send a byte hold every slot until the header-read timeout.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(&server).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/healthz", server.url()))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("served once a slot frees");
    let waited = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        waited >= Duration::from_secs(2),
        "served after {waited:?}: the cap did not hold it back"
    );
    for mut stream in silent {
        let answer = tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut stream))
            .await
            .expect("an idle connection was closed");
        assert!(answer.is_empty(), "{answer}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_answer_413_problem_json() {
    let dir = temp_dir("body-limit");
    let server = Server::embedded(&dir);
    let api = server.client();
    let post = |length: &str| {
        format!(
            "POST /v1/organizations HTTP/1.1\r\nHost: quantus\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{length}\r\n",
            api.token
        )
    };
    // 10 MB of JSON, announced: refused from the head, before the body is read.
    let mut stream = connect(&server).await;
    let mut request = post("Content-Length: 10485760\r\n").into_bytes();
    request.extend_from_slice(b"{\"name\": \"");
    stream.write_all(&request).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("payload-too-large"), "{answer}");

    // Chunked, so the size shows only while reading: 2 MiB and one byte in 64 KiB chunks.
    let mut stream = connect(&server).await;
    stream
        .write_all(post("Transfer-Encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut left = 2 * 1024 * 1024 + 1;
        while left > 0 {
            let n: usize = left.min(64 * 1024);
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend(std::iter::repeat_n(b' ', n));
            chunk.extend_from_slice(b"\r\n");
            if write.write_all(&chunk).await.is_err() {
                return;
            }
            left -= n;
        }
        // No last chunk: the server must answer without waiting for the end.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut all)).await;
    writer.abort();
    let answer = String::from_utf8_lossy(&all);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload-too-large"), "{answer}");
    assert!(api.events_of("Organization").await.is_empty());
}

#[tokio::test]
async fn artifacts_have_their_own_limit() {
    let dir = temp_dir("artifact-limit");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[
            ("QUANTUS_MAX_BODY_BYTES", "1000"),
            ("QUANTUS_MAX_ARTIFACT_BYTES", "4000"),
        ],
    );
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let job = api
        .post(
            "/v1/jobs",
            json!({ "organization_id": org, "backend": "ibm_kyiv" }),
        )
        .await;
    assert_eq!(job.status, 201, "{}", job.body);
    let job = job.body["id"].as_str().unwrap().to_owned();
    let put = |name: &str, size: usize| {
        api.send(
            api.request(Method::PUT, &format!("/v1/jobs/{job}/artifacts/{name}"))
                .body(vec![b'x'; size]),
        )
    };
    // Larger than a JSON body may be, within the artifact limit.
    let r = put("counts.bin", 3000).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = put("big.bin", 4001).await;
    assert_problem(&r, 413, "artifact over its limit");
    // And the JSON limit holds elsewhere.
    let r = api
        .post("/v1/organizations", json!({ "name": "x".repeat(2000) }))
        .await;
    assert_problem(&r, 413, "JSON over its limit");
}

#[tokio::test]
async fn an_upload_killed_midway_leaves_no_staging_file_after_a_restart() {
    let dir = temp_dir("staging-sweep");
    let mut server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let job = api
        .post(
            "/v1/jobs",
            json!({ "organization_id": org, "backend": "ibm_kyiv" }),
        )
        .await;
    let job = job.body["id"].as_str().unwrap().to_owned();
    let mut stream = connect(&server).await;
    let mut request = format!(
        "PUT /v1/jobs/{job}/artifacts/counts.bin HTTP/1.1\r\nHost: quantus\r\n\
         Authorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\n",
        api.token
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'x', 1000));
    stream.write_all(&request).await.unwrap();
    let objects = dir.join("objects");
    let staging = || {
        let mut found = Vec::new();
        let mut folders = vec![objects.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
                if entry.file_type().unwrap().is_dir() {
                    folders.push(entry.path());
                } else if entry.file_name().to_string_lossy().contains('#') {
                    found.push(entry.path());
                }
            }
        }
        found
    };
    let staged = eventually("the upload to stage", Duration::from_secs(30), || {
        let found = staging();
        async move { (!found.is_empty()).then_some(found) }
    })
    .await;
    server.kill();
    assert!(
        staged.iter().all(|p| p.exists()),
        "a crash leaves the staging file"
    );

    let server = Server::embedded(&dir);
    assert_eq!(staging(), Vec::<std::path::PathBuf>::new());
    // The job is as it was: no artifact.
    let r = server.client().get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(r.body["artifacts"], json!([]), "{}", r.body);
}

// ---- Item 8d: Idempotency-Key on creating requests ----

#[tokio::test]
async fn twenty_concurrent_evidence_posts_with_one_key_make_one_bundle() {
    use crate::evidence::{start_job, submit_job, upload};
    for (store, server) in both_stores("idempotency", &[]).await {
        let api = server.client();
        let (org, _) = api.create_org("Acme").await;
        let job = submit_job(&api, &org).await;
        start_job(&api, &job).await;
        let r = upload(
            &api,
            &job,
            "counts.json",
            br#"{"00":2048,"11":2048}"#.to_vec(),
        )
        .await;
        assert_eq!(r.status(), 201, "{store}");
        assert_eq!(
            api.post(&format!("/v1/jobs/{job}/complete"), json!({}))
                .await
                .status,
            200
        );

        let create = |key: &'static str, body: Value| {
            let api = api.clone();
            let job = job.clone();
            async move {
                api.send(
                    api.request(Method::POST, &format!("/v1/jobs/{job}/evidence"))
                        .header("idempotency-key", key)
                        .json(&body),
                )
                .await
            }
        };
        let answers =
            futures::future::join_all((0..20).map(|_| create("\"bundle-1\"", json!({})))).await;
        let created: Vec<&Reply> = answers.iter().filter(|r| r.status == 201).collect();
        assert!(!created.is_empty(), "{store}: none created");
        for r in &answers {
            match r.status {
                201 => assert_eq!(r.body, created[0].body, "{store}: answers differ"),
                // Still being made when this one came: the draft's "retry later".
                409 => assert_eq!(
                    r.body["type"], "https://quantus.dev/problems/idempotency-key-in-flight",
                    "{store}"
                ),
                other => panic!("{store}: {other} {}", r.body),
            }
        }
        let bundles = |events: Vec<Value>| {
            events
                .iter()
                .map(|e| e["envelope"]["aggregate_id"].as_str().unwrap().to_owned())
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(
            bundles(api.events_of("EvidenceBundle").await).len(),
            1,
            "{store}"
        );

        // A retry later: the same answer, marked as a replay.
        let again = create("\"bundle-1\"", json!({})).await;
        assert_eq!(again.status, 201, "{store}");
        assert_eq!(again.body, created[0].body, "{store}");
        assert_eq!(again.headers["idempotent-replayed"], "true", "{store}");

        // The key with another body: 422, nothing made.
        let other = create("\"bundle-1\"", json!({"note": "different"})).await;
        assert_problem(&other, 422, store);
        assert_eq!(
            other.body["type"], "https://quantus.dev/problems/idempotency-key-reused",
            "{store}"
        );
        assert_eq!(
            bundles(api.events_of("EvidenceBundle").await).len(),
            1,
            "{store}"
        );

        // Another tenant's principal with the same key gets its own answer, never this one.
        let (globex, _) = api.create_org("Globex").await;
        let robot = crate::portal::org_client(&api, &globex, &["admin"]).await;
        let theirs = robot
            .send(
                robot
                    .request(Method::POST, "/v1/jobs")
                    .header("idempotency-key", "\"bundle-1\"")
                    .json(&json!({"organization_id": globex, "backend": "ibm_kyiv"})),
            )
            .await;
        assert_eq!(theirs.status, 201, "{store}: {}", theirs.body);
        assert_ne!(theirs.body["id"], created[0].body["id"], "{store}");
        assert!(
            theirs.headers.get("idempotent-replayed").is_none(),
            "{store}"
        );

        // Keys work on every creating POST, here organizations.
        let org_once = |key: &'static str| {
            let api = api.clone();
            async move {
                api.send(
                    api.request(Method::POST, "/v1/organizations")
                        .header("idempotency-key", key)
                        .json(&json!({"name": "Once Ltd"})),
                )
                .await
            }
        };
        let a = org_once("\"org-1\"").await;
        let b = org_once("\"org-1\"").await;
        assert_eq!((a.status, b.status), (201, 201), "{store}");
        assert_eq!(a.body["id"], b.body["id"], "{store}");
        assert_eq!(b.headers["location"], a.headers["location"], "{store}");
    }
}

#[tokio::test]
async fn the_openapi_document_names_the_idempotency_key_and_the_body_bounds() {
    let dir = temp_dir("openapi-bounds");
    let server = Server::embedded(&dir);
    let spec = server.client().get("/openapi.json").await.body;
    let evidence = &spec["paths"]["/v1/jobs/{id}/evidence"]["post"];
    let names: Vec<&str> = evidence["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"Idempotency-Key"), "{names:?}");
    for status in ["408", "409", "413", "422"] {
        assert!(
            evidence["responses"][status].is_object(),
            "POST evidence lacks {status}"
        );
    }
    let upload = &spec["paths"]["/v1/jobs/{id}/artifacts/{name}"]["put"];
    assert!(upload["responses"]["413"].is_object());
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_off() {
    use crate::evidence::{submit_job, upload};
    let dir = temp_dir("idle-reader");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[("QUANTUS_IDLE_TIMEOUT_SECONDS", "2")],
    );
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let job = submit_job(&api, &org).await;
    // Far more than socket buffers hold, so the server must wait for the reader.
    let size = 48 * 1024 * 1024;
    let r = upload(&api, &job, "big.bin", vec![7u8; size]).await;
    assert_eq!(r.status(), 201);

    // A reader with a tiny window that then reads nothing for a while.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = server.url().trim_start_matches("http://").parse().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /v1/jobs/{job}/artifacts/big.bin HTTP/1.1\r\nHost: quantus\r\n\
                 Authorization: Bearer {}\r\n\r\n",
                api.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // What was in flight still arrives; then the connection ends, well short of the body.
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the server closed the connection");
    assert!(
        received > 0 && received < size,
        "received {received} of {size} bytes: the stalled response was not cut off"
    );
    assert_eq!(api.get("/healthz").await.status, 200);
}

/// A schemathesis run holding the bootstrap admin's token disabled that very client and spent
/// the rest of its time on 401s: a principal may not lock itself out.
#[tokio::test]
async fn a_principal_cannot_disable_the_client_its_token_came_from() {
    let server = Server::embedded(&temp_dir("self-lockout"));
    let admin = server.client();
    let r = admin
        .post(
            "/v1/clients/quantus-bootstrap-admin/disable",
            json!({"reason": "oops"}),
        )
        .await;
    assert_problem(&r, 409, "disabling one's own client");
    assert!(
        r.body["type"].as_str().unwrap().ends_with("/self-lockout"),
        "{}",
        r.body
    );
    // Still signed in, and still an administrator of other clients.
    let (org, _) = admin.create_org("Acme").await;
    let r = admin
        .post(
            "/v1/clients",
            json!({"organization_id": org, "name": "Acme app", "kind": "confidential",
                   "redirect_uris": ["https://app.example/cb"], "grant_types": ["authorization_code"],
                   "scopes": ["openid"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let other = r.body["client_id"].as_str().unwrap();
    let r = admin
        .post(
            &format!("/v1/clients/{other}/disable"),
            json!({"reason": "gone"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}
