//! Input crafted to crash the server: deeply nested SCIM filters and PATCH paths, instants
//! that overflow date arithmetic. Each gets a clear 4xx, and the process keeps serving every
//! other request and tenant.

use serde_json::{json, Value};

use crate::harness::*;
use crate::scim::{scim_client, scim_token};

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SEARCH: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

fn nested(open: &str, n: usize) -> String {
    format!("{}userName eq \"a\"{}", open.repeat(n), ")".repeat(n))
}

#[tokio::test(flavor = "multi_thread")]
async fn crafted_scim_filters_and_paths_get_invalid_filter_and_the_server_lives_on() {
    let dir = temp_dir("hostile-scim");
    let mut server = Server::embedded(&dir);
    let admin = server.client();
    let (org, _) = admin.create_org("Hostile SCIM").await;
    let (_, token) = scim_token(&admin, &org).await;
    let scim = scim_client(&server, &token);
    let user = scim
        .post(
            "/Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "ada@example.com",
                "emails": [{"value": "ada@example.com", "type": "work", "primary": true}],
            }),
        )
        .await;
    assert_eq!(user.status, 201, "{}", user.body);
    let id = user.body["id"].as_str().unwrap().to_owned();

    let refused = |r: &Reply, what: &str| {
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(
            matches!(
                r.body["scimType"].as_str(),
                Some("invalidFilter" | "invalidPath")
            ),
            "{what}: {}",
            r.body
        );
    };
    for (what, filter) in [
        ("1,300 parentheses", nested("(", 1300)),
        ("3,000 not(", nested("not(", 3000)),
        ("17 levels", nested("(", 17)),
    ] {
        let r = scim
            .get(&format!("/Users?filter={}", urlencode(&filter)))
            .await;
        refused(&r, what);
    }
    let many_ands = vec![r#"userName eq "a""#; 40_000].join(" and ");
    let r = scim
        .post(
            "/Users/.search",
            json!({"schemas": [SEARCH], "filter": many_ands}),
        )
        .await;
    assert!(matches!(r.status, 400 | 413), "{}", r.body);
    let path = format!(
        "emails[{}type eq \"work\"{}].value",
        "(".repeat(1300),
        ")".repeat(1300)
    );
    let r = scim
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": path, "value": "x@example.com"}]),
            None,
        )
        .await;
    refused(&r, "a PATCH path with 1,300 parentheses");
    let _ = PATCH_OP;

    // Still alive, and still answering this tenant's ordinary requests.
    assert!(server.is_running(), "the server process died");
    let r = scim
        .get(&format!(
            "/Users?filter={}",
            urlencode(r#"userName eq "ada@example.com""#)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["totalResults"], 1);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn instants_that_would_overflow_are_refused_at_every_input() {
    let dir = temp_dir("hostile-dates");
    let mut server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Far Future").await;
    let terms = |expires_at: &str, grace: u64| {
        json!({
            "organization_id": org, "product": "qpu", "edition": "pro",
            "expires_at": expires_at, "grace_period_seconds": grace, "max_activations": 1,
        })
    };
    // Past RFC 3339's years: refused as a bad body, naming the field's problem.
    let r = api
        .post("/v1/licenses", terms("+262142-12-31T23:59:59Z", 86_400))
        .await;
    assert!(matches!(r.status, 400 | 422), "{}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("out of range"),
        "{}",
        r.body
    );
    // In range, but the grace period would end past it.
    let r = api
        .post("/v1/licenses", terms("9999-12-31T23:59:59Z", 86_400))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // The last second itself with no grace period is a licence like any other: its status,
    // activation and file all answer.
    let r = api
        .post("/v1/licenses", terms("9999-12-31T23:59:59Z", 0))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let status = api.get(&format!("/v1/licenses/{id}/status")).await;
    assert_eq!(status.status, 200, "{}", status.body);
    let activated = api
        .post(
            &format!("/v1/licenses/{id}/activate"),
            json!({"fingerprint": "machine-1"}),
        )
        .await;
    assert_eq!(activated.status, 200, "{}", activated.body);
    // Renewal and contracts refuse out-of-range instants too.
    let r = api
        .post(
            &format!("/v1/licenses/{id}/renew"),
            json!({"expires_at": "+262142-12-31T23:59:59Z"}),
        )
        .await;
    assert!(matches!(r.status, 400 | 422), "{}", r.body);
    let r = api
        .post(
            "/v1/contracts",
            json!({"organization_id": org, "line_items": [],
                   "starts_at": "2026-01-01T00:00:00Z", "ends_at": "+262142-12-31T23:59:59Z"}),
        )
        .await;
    assert!(matches!(r.status, 400 | 422), "{}", r.body);
    assert!(server.is_running(), "the server process died");
    let _: Value = api.get("/healthz").await.body;
}

#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_json_is_refused_or_stored_never_a_crash() {
    let dir = temp_dir("hostile-json");
    let mut server = Server::embedded(&dir);
    let api = server.client();
    let (org, _) = api.create_org("Deep JSON").await;
    let nest = |n: usize| -> String { format!("{}1{}", "[".repeat(n), "]".repeat(n)) };
    let job = |config: &str| {
        format!(r#"{{"organization_id":"{org}","backend":"sim","config":{config}}}"#)
    };
    // Past serde_json's recursion limit (128): a 400, nothing written.
    let r = api
        .send(
            api.request(reqwest::Method::POST, "/v1/jobs")
                .header("content-type", "application/json")
                .body(job(&nest(100_000))),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Just inside it: stored, hashed, schema-checked and read back without exhausting a stack.
    let r = api
        .send(
            api.request(reqwest::Method::POST, "/v1/jobs")
                .header("content-type", "application/json")
                .body(job(&nest(120))),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(server.is_running(), "the server process died");
}
