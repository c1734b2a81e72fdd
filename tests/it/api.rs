//! HTTP behaviour of the spine, on the embedded default.

use reqwest::Method;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn every_v1_route_refuses_missing_wrong_and_malformed_tokens() {
    let dir = temp_dir("auth");
    let server = Server::embedded(&dir);
    let api = server.client();
    let id = api.create_org("Acme").await.0;
    let routes = [
        (Method::POST, "/v1/organizations".to_owned()),
        (Method::GET, "/v1/organizations".to_owned()),
        (Method::GET, format!("/v1/organizations/{id}")),
        (Method::PATCH, format!("/v1/organizations/{id}")),
        (Method::POST, format!("/v1/organizations/{id}/suspend")),
        (Method::POST, format!("/v1/organizations/{id}/reactivate")),
        (Method::GET, "/v1/events".to_owned()),
    ];
    let http = reqwest::Client::new();
    for (method, path) in &routes {
        let url = format!("{}{path}", server.url());
        for auth in [
            None,
            Some("Bearer qtb_forged"),
            Some("Basic Zm9vOmJhcg=="),
            Some(&*format!("Bearer {}x", api.token)),
        ] {
            let mut req = http
                .request(method.clone(), &url)
                .json(&json!({"name": "x"}));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            let challenge = res.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            if auth.is_some_and(|a| a.starts_with("Bearer")) {
                assert!(challenge.contains("invalid_token"), "{challenge}");
            }
        }
    }
    // Only the one create made it into the log.
    assert_eq!(api.events_of("Organization").await.len(), 1);
}

#[tokio::test]
async fn the_first_start_writes_the_bootstrap_client_once_and_keeps_only_its_digest() {
    let dir = temp_dir("bootstrap");
    let mut server = Server::embedded(&dir);
    assert!(
        server.first_stdout.contains("bootstrap-client.json"),
        "{}",
        server.first_stdout
    );
    let (_, secret) = bootstrap_credentials(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("bootstrap-client.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!dir.join("bootstrap-client.json.pending").exists());
    server.client().create_org("Acme").await;
    server.kill();
    for file in ["quantus.db", "quantus.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&secret),
                "the client secret is stored in clear in {file}"
            );
        }
    }
    let again = Server::embedded(&dir);
    assert!(
        !again.first_stdout.contains("bootstrap-client.json"),
        "a second credential was made"
    );
    assert_eq!(again.client().get("/v1/organizations").await.status, 200);
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_writes_nothing() {
    let dir = temp_dir("bad-input");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (id, _) = api.create_org("Acme").await;
    let post = |body: &'static str, ctype: &'static str| {
        api.send(
            api.request(Method::POST, "/v1/organizations")
                .header("content-type", ctype)
                .body(body),
        )
    };
    for (body, ctype, status) in [
        ("{\"name\":", "application/json", 400),
        ("[1,2]", "application/json", 422),
        (
            "{\"name\": \"x\", \"admin\": true}",
            "application/json",
            422,
        ),
        ("{}", "application/json", 422),
        ("{\"name\": \"   \"}", "application/json", 422),
        ("{\"name\": \"bad\\u0000name\"}", "application/json", 422),
        ("{\"name\": \"x\"}", "text/plain", 415),
    ] {
        let r = post(body, ctype).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{body}"
        );
        assert_eq!(r.body["status"], status);
        assert!(r.body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://quantus.dev/problems/"));
    }
    let long = "x".repeat(129);
    let r = api.post("/v1/organizations", json!({ "name": long })).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = api
        .patch(
            &format!("/v1/organizations/{id}"),
            json!({"name": ""}),
            None,
        )
        .await;
    assert_eq!(r.status, 422);
    let r = api.get("/v1/organizations?limit=0").await;
    assert_eq!(r.status, 400);
    let r = api.get("/v1/organizations?bogus=1").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        api.events_of("Organization").await.len(),
        1,
        "a refused command wrote an event"
    );
}

#[tokio::test]
async fn concurrent_conditional_commands_let_exactly_one_win() {
    let dir = temp_dir("conflict");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (id, _) = api.create_org("Acme").await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let api = api.clone();
            let path = format!("/v1/organizations/{id}");
            tokio::spawn(async move {
                api.patch(&path, json!({ "name": format!("Acme {i}") }), Some(1))
                    .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        // Every loser named version 1 with If-Match: its precondition failed, whether it saw
        // the winner's event when it loaded or only when it appended.
        if r.status != 200 {
            assert_eq!(r.status, 412, "{}", r.body);
            assert_eq!(
                r.body["type"],
                "https://quantus.dev/problems/precondition-failed"
            );
            assert!(
                r.body["detail"].as_str().unwrap().contains("at version 2"),
                "{}",
                r.body
            );
        }
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    let events = api.events_of("Organization").await;
    assert_eq!(events.len(), 2, "losers wrote events");
}

/// RFC 9110 §13.1.1: a failed If-Match is 412; writers racing without one get 409.
#[tokio::test]
async fn a_stale_if_match_is_412_and_writers_racing_without_one_are_409() {
    let dir = temp_dir("precondition");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (id, _) = api.create_org("Acme").await;
    let path = format!("/v1/organizations/{id}");
    let r = api.patch(&path, json!({"name": "Acme 2"}), Some(1)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let stale = api.patch(&path, json!({"name": "Acme 3"}), Some(1)).await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert_eq!(stale.headers["content-type"], "application/problem+json");
    assert_eq!(
        stale.body["type"],
        "https://quantus.dev/problems/precondition-failed"
    );
    assert_eq!(
        stale.body["detail"],
        "expected version 1, but the organization is at version 2"
    );
    for action in ["suspend", "reactivate"] {
        let r = api
            .send(
                api.request(Method::POST, &format!("{path}/{action}"))
                    .header("if-match", "\"1\""),
            )
            .await;
        assert_eq!(r.status, 412, "{action}: {}", r.body);
    }
    assert_eq!(api.events_of("Organization").await.len(), 2);

    // Without If-Match a loser's version moved under it while it wrote: 409. Rounds of
    // racers until one loses (they can happen to run one after another).
    let mut lost = 0;
    for round in 0..10 {
        let racers: Vec<_> = (0..12)
            .map(|i| {
                let api = api.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    api.patch(&path, json!({"name": format!("Racer {round}.{i}")}), None)
                        .await
                })
            })
            .collect();
        for r in racers {
            let r = r.await.unwrap();
            match r.status {
                200 => {}
                409 => {
                    assert_eq!(
                        r.body["type"],
                        "https://quantus.dev/problems/concurrency-conflict"
                    );
                    lost += 1;
                }
                other => panic!("a racer without If-Match got {other}: {}", r.body),
            }
        }
        if lost > 0 {
            break;
        }
    }
    assert!(lost > 0, "no racer ever lost");
}

#[tokio::test]
async fn a_client_reads_its_own_writes_and_a_position_past_the_log_is_400() {
    let dir = temp_dir("ryw");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (id, created_at) = api.create_org("Acme").await;
    let r = api
        .patch(
            &format!("/v1/organizations/{id}"),
            json!({"name": "Acme Labs"}),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["etag"], "\"2\"");
    let position = r.body["position"].as_u64().unwrap();
    assert!(position > created_at);
    assert_eq!(
        r.headers["quantus-log-position"],
        position.to_string().as_str()
    );
    let r = api
        .get(&format!("/v1/organizations/{id}?min_position={position}"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "Acme Labs");
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.headers["etag"], "\"2\"");
    let r = api
        .get(&format!("/v1/organizations?min_position={position}"))
        .await;
    assert_eq!(r.body["items"][0]["name"], "Acme Labs");

    // No write has that position: a client's mistake, answered at once, not after the wait
    // (the read model falling behind a real write is 503 with Retry-After: postgres_kafka).
    let far = position + 1000;
    let started = std::time::Instant::now();
    let r = api
        .get(&format!(
            "/v1/organizations/{id}?min_position={far}&wait_ms=5000"
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("past the end of the log"),
        "{}",
        r.body
    );
    let r = api
        .get(&format!(
            "/v1/organizations/{id}?min_position=1&wait_ms=999999"
        ))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn the_organization_lifecycle_follows_its_rules() {
    let dir = temp_dir("lifecycle");
    let server = Server::embedded(&dir);
    let api = server.client();
    let (id, _) = api.create_org("  Acme  ").await;
    let path = format!("/v1/organizations/{id}");
    let r = api.post(&format!("{path}/reactivate"), json!({})).await;
    assert_eq!(
        (r.status, r.body["type"].as_str()),
        (409, Some("https://quantus.dev/problems/conflict"))
    );
    let r = api
        .post(
            &format!("{path}/suspend"),
            json!({"reason": "unpaid invoice"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let suspended_at = r.body["position"].as_u64().unwrap();
    let r = api.post(&format!("{path}/suspend"), json!({})).await;
    assert_eq!(r.status, 409);
    let r = api.patch(&path, json!({"name": "Renamed"}), None).await;
    assert_eq!(r.status, 409, "a suspended organization was renamed");
    let r = api
        .get(&format!("{path}?min_position={suspended_at}"))
        .await;
    assert_eq!(r.body["status"], "suspended");
    assert_eq!(r.body["suspended_reason"], "unpaid invoice");
    assert_eq!(r.body["name"], "Acme");
    let r = api
        .send(api.request(Method::POST, &format!("{path}/reactivate")))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .get(&format!("{path}?min_position={}", r.body["position"]))
        .await;
    assert_eq!(r.body["status"], "active");

    let unknown = uuid::Uuid::now_v7();
    for r in [
        api.get(&format!("/v1/organizations/{unknown}")).await,
        api.patch(
            &format!("/v1/organizations/{unknown}"),
            json!({"name": "x"}),
            None,
        )
        .await,
        api.post(&format!("/v1/organizations/{unknown}/suspend"), json!({}))
            .await,
        api.get("/v1/organizations/not-a-uuid").await,
    ] {
        assert_eq!(r.status, 404, "{}", r.body);
    }
    // Nothing was recorded for the refused commands.
    let types: Vec<String> = api
        .events_of("Organization")
        .await
        .iter()
        .map(|e| e["envelope"]["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "OrganizationCreated",
            "OrganizationSuspended",
            "OrganizationReactivated"
        ]
    );
}

#[tokio::test]
async fn listing_pages_through_organizations() {
    let dir = temp_dir("paging");
    let server = Server::embedded(&dir);
    let api = server.client();
    let mut last = 0;
    for i in 0..5 {
        last = api.create_org(&format!("Org {i}")).await.1;
    }
    let r = api
        .get(&format!("/v1/organizations?limit=2&min_position={last}"))
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let mut names = vec![];
    let mut after = String::new();
    loop {
        let r = api
            .get(&format!("/v1/organizations?limit=2&after={after}"))
            .await;
        names.extend(
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["name"].as_str().unwrap().to_owned()),
        );
        match r.body["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(names, ["Org 0", "Org 1", "Org 2", "Org 3", "Org 4"]);
}

#[tokio::test]
async fn subscribers_page_and_long_poll_the_log() {
    let dir = temp_dir("events");
    let server = Server::embedded(&dir);
    let api = server.client();
    // The platform's own bootstrap (crypto policy, keys) is already in the log.
    let base = api.head().await;
    api.create_org("A").await;
    api.create_org("B").await;
    let r = api.get(&format!("/v1/events?after={base}&limit=1")).await;
    assert_eq!(r.body["events"][0]["position"], base + 1);
    assert_eq!(r.body["next_after"], base + 1);
    // The head: where a reader of the latest events starts from.
    assert!(r.body["head"].as_u64().unwrap() >= base + 2, "{}", r.body);
    let envelope = &r.body["events"][0]["envelope"];
    assert_eq!(envelope["event_type"], "OrganizationCreated");
    assert_eq!(envelope["prev_hash"], "0".repeat(64));
    assert_eq!(envelope["schema_version"], 1);
    assert_eq!(envelope["actor"]["kind"], "service");
    assert!(envelope["occurred_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        uuid::Uuid::parse_str(envelope["event_id"].as_str().unwrap())
            .unwrap()
            .get_version_num(),
        7
    );

    // A long poll returns as soon as an event arrives.
    let waiter = {
        let api = api.clone();
        let after = base + 2;
        tokio::spawn(async move {
            api.get(&format!("/v1/events?after={after}&wait_ms=10000"))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    api.create_org("C").await;
    let r = waiter.await.unwrap();
    assert_eq!(r.body["events"][0]["position"], base + 3);

    let lines = tail_log(&server);
    let positions: Vec<u64> = lines
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    // Gap-free from 1; the tail's own token request is an audit event after `base + 3`.
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());
    assert!(positions.len() as u64 >= base + 3);
}

#[tokio::test]
async fn the_log_is_read_by_the_time_events_were_appended() {
    let dir = temp_dir("events-by-time");
    let server = Server::embedded(&dir);
    let api = server.client();
    let instant = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(30));
    let (_, a) = api.create_org("A").await;
    pause().await;
    let t1 = instant();
    pause().await;
    let (_, b) = api.create_org("B").await;
    let (_, c) = api.create_org("C").await;
    pause().await;
    let t2 = instant();
    pause().await;
    let (_, d) = api.create_org("D").await;
    let created = |r: &Reply| -> Vec<u64> {
        r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect()
    };

    // From t1 to t2: the read starts at B and stops before D, whatever `after` says.
    let r = api
        .get(&format!(
            "/v1/events?from={t1}&to={t2}&event_type=OrganizationCreated&limit=1000"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(created(&r), [b, c], "{}", r.body);
    assert_eq!(r.body["after"], b - 1, "{}", r.body);
    // The head of a range is its last position, where a reader from the end starts.
    assert!(r.body["head"].as_u64().unwrap() < d, "{}", r.body);
    assert!(r.body["head"].as_u64().unwrap() >= c, "{}", r.body);
    // Only `to`: everything before it (A and the platform's bootstrap), none after.
    let r = api
        .get(&format!(
            "/v1/events?to={t1}&event_type=OrganizationCreated&limit=1000"
        ))
        .await;
    assert_eq!(created(&r), [a], "{}", r.body);
    assert_eq!(r.body["after"], 0);
    // Only `from`, with a later `after`: the later start wins.
    let r = api
        .get(&format!(
            "/v1/events?from={t1}&after={c}&event_type=OrganizationCreated"
        ))
        .await;
    assert_eq!(created(&r), [d], "{}", r.body);
    // Past the end of the range: nothing, and `next_after` does not move, so readers stop
    // (and a long poll does not wait for events the range cannot hold).
    let started = std::time::Instant::now();
    let r = api
        .get(&format!("/v1/events?to={t2}&after={c}&wait_ms=5000"))
        .await;
    assert!(r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["position"].as_u64() < Some(d)));
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    // Bad instants are refused with a detail.
    for q in [
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        &format!("from={t2}&to={t1}"),
    ] {
        let r = api.get(&format!("/v1/events?{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(!r.body["detail"].as_str().unwrap().is_empty(), "{}", r.body);
    }
}

#[tokio::test]
async fn operations_endpoints_answer_without_credentials() {
    let dir = temp_dir("ops");
    let server = Server::embedded(&dir);
    server.client().create_org("Acme").await;
    let head = server.client().head().await;
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{}{p}", server.url())).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    // Refused protocol requests, each counted under its protocol's outcome.
    let refused = http
        .post(format!("{}/oauth2/token", server.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(get("/scim/v2/Users").await.unwrap().status(), 401);
    assert_eq!(get("/saml/sso").await.unwrap().status(), 400);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    let missing = [
        "quantus_oauth_token_requests_total{grant_type=\"client_credentials\",outcome=\"refused\"} 1\n",
        "quantus_scim_requests_total{resource=\"Users\",method=\"GET\",status=\"4xx\"} 1\n",
        "quantus_saml_requests_total{endpoint=\"sso\",outcome=\"refused\"} 1\n",
        "quantus_projection_lag_seconds{projection=\"organizations\"} ",
        "quantus_relay_publish_errors_total 0\n",
    ]
    .into_iter()
    .filter(|line| !metrics.contains(line))
    .collect::<Vec<_>>();
    assert!(missing.is_empty(), "{missing:?} missing:\n{metrics}");
    assert!(
        metrics.contains("quantus_http_requests_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("quantus_log_head_position {head}\n")),
        "{metrics}"
    );
    // The process's memory (issue 18 item 7): a real figure, not a zero.
    let resident = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quantus_resident_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(resident.is_some_and(|b| b > 1e6), "{metrics}");
    assert!(
        metrics.contains(
            "quantus_commands_total{context=\"identity\",aggregate=\"Organization\",outcome=\"recorded\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE quantus_commands_total counter\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("# EOF"),
        "classic text unless OpenMetrics is asked for"
    );
    let openmetrics = http
        .get(format!("{}/metrics", server.url()))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(openmetrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));
    metrics_pass_promtool_and_feed_the_shipped_rules(&metrics);
    let spec: serde_json::Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/organizations",
        "/v1/organizations/{id}",
        "/v1/organizations/{id}/suspend",
        "/v1/events",
        "/v1/crypto/policy",
        "/v1/keys",
        "/v1/keys/rotate",
        "/v1/licenses",
        "/v1/licenses/{id}/file",
        "/v1/licenses/{id}/revoke",
        "/v1/crl",
        "/v1/signatures",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    let r = get("/nope").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_honour_rust_log_and_json_and_carry_the_request_id() {
    let dir = temp_dir("logs");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
        &[("RUST_LOG", "info,tower_http=debug")],
    );
    let http = reqwest::Client::new();
    let mine = http
        .get(format!("{}/healthz", server.url()))
        .header("x-request-id", "support-ticket-42")
        .send()
        .await
        .unwrap();
    assert_eq!(mine.headers()["x-request-id"], "support-ticket-42");
    let made = http
        .get(format!("{}/v1/organizations", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 401);
    let made_id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made_id.len(), 36, "{made_id}");

    // The log file (not a terminal): one JSON object a line, no colour codes, and the lines
    // of each request name its id.
    let log = eventually(
        "the request lines are logged",
        std::time::Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let seen = log.contains(&made_id) && log.contains("support-ticket-42");
            async move { seen.then_some(log) }
        },
    )
    .await;
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a file");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_request: Vec<_> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == made_id)
        .collect();
    assert!(of_request.len() >= 2, "{log}");
    assert!(of_request
        .iter()
        .all(|l| l["span"]["uri"] == "/v1/organizations"));
}

/// Issue 15, item 4: a Kafka that does not answer costs a scrape at most the lag bound, is
/// counted in `quantus_kafka_lag_errors_total`, and invents no lag series.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_kafka_is_counted_and_the_scrape_still_answers() {
    let dir = temp_dir("kafka-away");
    let server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0", "--role", "api"],
        &[("KAFKA_BROKERS", "127.0.0.1:1")],
    );
    let http = reqwest::Client::new();
    for scrapes in 1..=2 {
        let started = std::time::Instant::now();
        let r = http
            .get(format!("{}/metrics", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        assert!(
            body.lines()
                .any(|l| l == format!("quantus_kafka_lag_errors_total {scrapes}")),
            "{body}"
        );
        assert!(
            !body.contains("\nquantus_kafka_consumer_lag_messages{"),
            "{body}"
        );
    }
}

/// `promtool` (Prometheus's own linter, Debian's `prometheus` package) accepts the scrape and
/// the shipped alert rules, and every `quantus_*` series the rules and the Grafana dashboard
/// use is one the server really exposes.
/// Series only a deployment on Kafka exposes.
pub const KAFKA_ONLY: [&str; 2] = [
    "quantus_relay_lag_events",
    "quantus_kafka_consumer_lag_messages",
];

fn metrics_pass_promtool_and_feed_the_shipped_rules(scrape: &str) {
    use std::io::Write as _;
    let promtool = |args: &[&str], stdin: Option<&str>| {
        let mut child = std::process::Command::new("promtool")
            .args(args)
            .current_dir(repo_root())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    promtool(&["check", "metrics"], Some(scrape));
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], None);

    let exposed: std::collections::HashSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(repo_root().join("deploy/grafana/quantus-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .chain(std::iter::once(rules))
        .collect();
    let mut used = 0;
    for text in &exprs {
        for (at, _) in text.match_indices("quantus_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Only a process configured with Kafka has these: without Kafka there is no
            // consumer, and a 0 would claim one that keeps up (checked on Kafka by
            // `postgres_kafka::r_relay_and_projection_lag_are_exposed_and_move`).
            if KAFKA_ONLY.contains(&name.as_str()) {
                used += 1;
                continue;
            }
            assert!(
                exposed.contains(name.as_str()),
                "{name} is used by deploy/ but not exposed; exposed: {exposed:?}"
            );
            used += 1;
        }
    }
    assert!(used > 15, "only {used} series references found");
}
