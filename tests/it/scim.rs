//! SCIM 2.0 at `/scim/v2`, end to end over HTTP: per-organization tokens, what Okta and
//! Microsoft Entra really send, filters, paging, ETags, tenant isolation, the same events as
//! the REST API, erasure on DELETE; and the independent `scim2-tester` checker (Python,
//! `tests/scim`).

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A SCIM client of one organization.
pub struct Scim {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Scim {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Reply {
        let mut b = self
            .http
            .request(method, format!("{}/scim/v2{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            b = b
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        if let Some(m) = if_match {
            b = b.header("if-match", m);
        }
        let response = b.send().await.expect("SCIM request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            // Every error is a SCIM error (RFC 7644 §3.12) in application/scim+json.
            assert_eq!(body["schemas"], json!([ERROR]), "{status} {body}");
            assert_eq!(body["status"], status.to_string(), "{body}");
            assert_eq!(headers["content-type"], "application/scim+json");
        }
        Reply {
            status,
            headers,
            body,
        }
    }
    pub async fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path, None, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(body), None)
            .await
    }
    pub async fn patch(&self, path: &str, ops: Value, if_match: Option<&str>) -> Reply {
        let body = json!({"schemas": [PATCH_OP], "Operations": ops});
        self.call(reqwest::Method::PATCH, path, Some(body), if_match)
            .await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(reqwest::Method::PUT, path, Some(body), None)
            .await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.call(reqwest::Method::DELETE, path, None, None).await
    }
    /// The ids a filter finds (one page of 1000).
    pub async fn find(&self, filter: &str) -> Vec<String> {
        let r = self
            .http
            .get(format!("{}/scim/v2/Users", self.base))
            .query(&[("filter", filter)])
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{filter}");
        let body: Value = r.json().await.unwrap();
        body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Issues a SCIM token for `org` through the REST API.
pub async fn scim_token(admin: &Api, org: &str) -> (String, String) {
    let r = admin
        .post(
            &format!("/v1/organizations/{org}/scim-tokens"),
            json!({"name": "Okta production"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let token = r.body["token"].as_str().unwrap().to_owned();
    (r.body["id"].as_str().unwrap().to_owned(), token)
}

pub fn scim_client(server: &Server, token: &str) -> Scim {
    Scim {
        base: server.url().to_owned(),
        token: token.to_owned(),
        http: reqwest::Client::new(),
    }
}

fn okta_user(user_name: &str, given: &str, family: &str) -> Value {
    json!({
        "schemas": [USER, ENTERPRISE],
        "userName": user_name,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"primary": true, "value": user_name, "type": "work"}],
        "displayName": format!("{given} {family}"),
        "locale": "en-US",
        "externalId": format!("00u{given}"),
        "groups": [],
        "password": "a long enough okta password",
        "active": true,
        ENTERPRISE: {"department": "Quantum", "costCenter": "42", "employeeNumber": "7"}
    })
}

/// The whole SCIM scenario against a running server; works on SQLite and on Postgres.
pub async fn scenario(server: &Server) {
    let admin = server.client();
    let (org_a, _) = admin.create_org("SCIM A").await;
    let (org_b, _) = admin.create_org("SCIM B").await;
    let (token_a_id, token_a) = scim_token(&admin, &org_a).await;
    let (_, token_b) = scim_token(&admin, &org_b).await;
    let a = scim_client(server, &token_a);
    let b = scim_client(server, &token_b);

    // Only the digest of a token's secret is in the log.
    let issued = admin.events_of("ScimToken").await;
    assert_eq!(issued.len(), 2);
    let secret = token_a.split_once('.').unwrap().1;
    assert!(!serde_json::to_string(&issued).unwrap().contains(secret));
    assert_eq!(
        issued[0]["envelope"]["payload"]["secret_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    // No token, a wrong one, an access token of the REST API: 401.
    let none = reqwest::get(format!("{}/scim/v2/Users", server.url()))
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    for wrong in [
        format!("{}x", token_a),
        format!("{token_a_id}.AAAA"),
        admin.token.clone(),
    ] {
        assert_eq!(scim_client(server, &wrong).get("/Users").await.status, 401);
    }

    // Discovery.
    let spc = a.get("/ServiceProviderConfig").await;
    assert_eq!(spc.status, 200);
    assert_eq!(spc.body["patch"]["supported"], true);
    assert_eq!(spc.body["etag"]["supported"], true);
    let types = a.get("/ResourceTypes").await;
    assert_eq!(types.body["totalResults"], 2);
    assert_eq!(
        types.body["Resources"][0]["schemaExtensions"][0]["schema"],
        ENTERPRISE
    );
    let schemas = a.get("/Schemas").await;
    assert_eq!(schemas.body["totalResults"], 3);
    assert_eq!(
        a.get(&format!("/Schemas/{USER}")).await.body["name"],
        "User"
    );

    // Okta creates a user.
    let r = a
        .post(
            "/Users",
            okta_user("Ada.Lovelace@Example.com", "Ada", "Lovelace"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ada = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.headers["content-type"], "application/scim+json");
    assert_eq!(
        r.headers["location"],
        format!("{}/scim/v2/Users/{ada}", server.url()).as_str()
    );
    assert_eq!(r.body["userName"], "Ada.Lovelace@Example.com");
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body[ENTERPRISE]["department"], "Quantum");
    assert!(r.body.get("password").is_none(), "{}", r.body);
    assert_eq!(r.body["meta"]["resourceType"], "User");
    let version = r.body["meta"]["version"].as_str().unwrap().to_owned();
    assert_eq!(r.headers["etag"], version.as_str());
    assert!(version.starts_with("W/\""), "{version}");
    assert!(r.body["meta"]["created"].as_str().unwrap().ends_with('Z'));

    // userName is unique per organization, whatever its case: 409 uniqueness.
    let dup = a
        .post("/Users", okta_user("ada.lovelace@example.COM", "A", "L"))
        .await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    assert_eq!(dup.body["scimType"], "uniqueness");
    let bad = a
        .post("/Users", json!({"schemas": [USER], "name": {}}))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["scimType"], "invalidValue");

    // The same events as the REST API: the user is in GET /v1/users, personal data sealed.
    // SCIM answers once the users read model has the change.
    let listed = admin.get(&format!("/v1/users?org={org_a}")).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let row = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == ada.as_str())
        .unwrap_or_else(|| panic!("{ada} not in {}", listed.body))
        .clone();
    assert_eq!(row["email"], "ada.lovelace@example.com");
    assert_eq!(row["name"], "Ada Lovelace");
    let events: Vec<Value> = admin
        .events_of("User")
        .await
        .into_iter()
        .filter(|e| e["envelope"]["aggregate_id"] == ada.as_str())
        .collect();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["envelope"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["UserRegistered", "UserPasswordSet", "UserProfileChanged"],
        "{events:?}"
    );
    let log = serde_json::to_string(&events).unwrap();
    for plain in [
        "Lovelace",
        "lovelace@example.com",
        "Quantum",
        "okta password",
    ] {
        assert!(!log.contains(plain), "{plain} in clear in the log");
    }

    // A user made over the REST API is a SCIM user too (userName: its email).
    let made = admin
        .post(
            "/v1/users",
            json!({"organization_id": org_a, "email": "Rest.User@Example.org", "name": "Rest User"}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let rest_user = made.body["id"].as_str().unwrap().to_owned();
    let seen = admin
        .get(&format!(
            "/v1/users?org={org_a}&min_position={}",
            made.body["position"]
        ))
        .await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(
        a.find(r#"userName eq "REST.user@example.org""#).await,
        vec![rest_user.clone()]
    );
    assert_eq!(
        a.find(r#"userName sw "rest.""#).await,
        vec![rest_user.clone()]
    );
    let shown = a.get(&format!("/Users/{rest_user}")).await;
    assert_eq!(shown.body["displayName"], "Rest User");
    assert_eq!(shown.body["emails"][0]["value"], "rest.user@example.org");
    assert_eq!(a.delete(&format!("/Users/{rest_user}")).await.status, 204);

    // Entra creates users (UPN userName, externalId), and more for filters and paging.
    let mut ids = vec![ada.clone()];
    for (n, (user, given, family, dept, email)) in [
        (
            "grace@contoso.onmicrosoft.com",
            "Grace",
            "Hopper",
            "Navy",
            "grace@example.com",
        ),
        (
            "alan@contoso.onmicrosoft.com",
            "Alan",
            "Turing",
            "Quantum",
            "alan@home.example",
        ),
        (
            "edsger@contoso.onmicrosoft.com",
            "Edsger",
            "Dijkstra",
            "Algorithms",
            "ed@example.com",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let r = a
            .post(
                "/Users",
                json!({
                    "schemas": [USER, ENTERPRISE],
                    "externalId": format!("entra-{n}"),
                    "userName": user,
                    "active": true,
                    "displayName": format!("{given} {family}"),
                    "title": if n == 0 { json!("Rear Admiral") } else { Value::Null },
                    "emails": [{"primary": true, "type": if n == 1 { "home" } else { "work" }, "value": email}],
                    "name": {"formatted": format!("{given} {family}"), "familyName": family, "givenName": given},
                    ENTERPRISE: {"department": dept, "manager": {"value": ada}},
                }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let (grace, alan, edsger) = (ids[1].clone(), ids[2].clone(), ids[3].clone());

    // Filters: every operator family, and/or/not, grouping, complex attributes, full URNs.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        a.find(r#"userName eq "GRACE@contoso.onmicrosoft.com""#)
            .await,
        vec![grace.clone()]
    );
    assert_eq!(
        sorted(a.find(r#"userName sw "a""#).await),
        sorted(vec![ada.clone(), alan.clone()])
    );
    assert_eq!(
        sorted(
            a.find(r#"emails[type eq "work" and value co "@example.com"]"#)
                .await
        ),
        sorted(vec![ada.clone(), grace.clone(), edsger.clone()])
    );
    assert_eq!(
        a.find(r#"emails[type eq "work" and value co "@example.com"] and not (name.familyName ew "a" or userName sw "ada")"#).await,
        vec![grace.clone()]
    );
    assert_eq!(
        sorted(
            a.find(&format!(r#"{ENTERPRISE}:department eq "quantum""#))
                .await
        ),
        sorted(vec![ada.clone(), alan.clone()])
    );
    assert_eq!(a.find("title pr").await, vec![grace.clone()]);
    assert_eq!(
        a.find(r#"externalId eq "entra-2""#).await,
        vec![edsger.clone()]
    );
    assert!(
        a.find(r#"externalId eq "ENTRA-2""#).await.is_empty(),
        "externalId is caseExact"
    );
    assert_eq!(
        sorted(
            a.find(r#"(displayName co "ing" or displayName co "str") and active eq true"#)
                .await
        ),
        sorted(vec![alan.clone(), edsger.clone()])
    );
    assert_eq!(
        a.find(r#"meta.created gt "2000-01-01T00:00:00Z""#)
            .await
            .len(),
        4
    );
    assert_eq!(
        sorted(a.find(r#"userName ne "x" and userName lt "b""#).await),
        sorted(vec![ada.clone(), alan.clone()])
    );
    for bad in [
        r#"userName eq"#,
        r#"emails[type eq "work""#,
        r#"userName zz "a""#,
    ] {
        let r = a.get(&format!("/Users?filter={}", urlencode(bad))).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.body["scimType"], "invalidFilter");
    }

    // Sorting and paging (startIndex is 1-based).
    let page = a
        .get("/Users?sortBy=userName&sortOrder=descending&startIndex=2&count=2&attributes=userName")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["totalResults"], 4);
    assert_eq!(page.body["startIndex"], 2);
    assert_eq!(page.body["itemsPerPage"], 2);
    let names: Vec<&str> = page.body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "edsger@contoso.onmicrosoft.com",
            "alan@contoso.onmicrosoft.com"
        ]
    );
    assert!(page.body["Resources"][0].get("emails").is_none());
    assert!(page.body["Resources"][0].get("id").is_some());
    let none = a.get("/Users?count=0").await;
    assert_eq!(none.body["totalResults"], 4);
    assert_eq!(none.body["Resources"], json!([]));
    let excluded = a
        .get(&format!(
            "/Users/{ada}?excludedAttributes=emails,{ENTERPRISE}:department"
        ))
        .await;
    assert!(excluded.body.get("emails").is_none());
    assert_eq!(excluded.body[ENTERPRISE]["costCenter"], "42");
    assert!(excluded.body[ENTERPRISE].get("department").is_none());

    // ETags: a stale If-Match is 412; the current one works.
    let current = a.get(&format!("/Users/{grace}")).await;
    let etag = current.headers["etag"].to_str().unwrap().to_owned();
    let stale = a
        .patch(
            &format!("/Users/{grace}"),
            json!([{"op": "replace", "path": "title", "value": "x"}]),
            Some("W/\"1\""),
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    // Entra disables with a string boolean, op in capitals.
    let off = a
        .patch(
            &format!("/Users/{grace}"),
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
            Some(&etag),
        )
        .await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(off.body["active"], false);
    assert_ne!(off.body["meta"]["version"], etag.as_str());
    let rest = admin.get(&format!("/v1/users/{grace}")).await;
    assert_eq!(rest.body["status"], "disabled");
    // Okta enables with a no-path replace, and changes attributes through value filters.
    let on = a
        .patch(
            &format!("/Users/{grace}"),
            json!([{"op": "replace", "value": {"active": true}},
                   {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "hopper@example.com"},
                   {"op": "add", "path": format!("{ENTERPRISE}:department"), "value": "Computing"},
                   {"op": "Replace", "value": {"name.givenName": "Amazing Grace"}}]),
            None,
        )
        .await;
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(on.body["active"], true);
    assert_eq!(on.body["emails"][0]["value"], "hopper@example.com");
    assert_eq!(on.body[ENTERPRISE]["department"], "Computing");
    assert_eq!(on.body["name"]["givenName"], "Amazing Grace");
    assert_eq!(on.body["name"]["familyName"], "Hopper");
    let grace_types: Vec<String> = admin
        .events_of("User")
        .await
        .into_iter()
        .filter(|e| e["envelope"]["aggregate_id"] == grace.as_str())
        .map(|e| e["envelope"]["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        grace_types.ends_with(&[
            "UserDisabled".to_owned(),
            "UserProfileChanged".to_owned(),
            // The work email changed: the login follows it.
            "UserEmailChanged".to_owned(),
            "UserEnabled".to_owned()
        ]),
        "{grace_types:?}"
    );
    let no_target = a
        .patch(
            &format!("/Users/{grace}"),
            json!([{"op": "replace", "path": "phoneNumbers[type eq \"work\"].value", "value": "1"}]),
            None,
        )
        .await;
    assert_eq!(no_target.body["scimType"], "noTarget");
    // PUT replaces the whole user.
    let put = a
        .put(
            &format!("/Users/{alan}"),
            json!({"schemas": [USER], "userName": "alan.turing@contoso.onmicrosoft.com", "active": true,
                   "name": {"givenName": "Alan"}}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(put.body.get(ENTERPRISE).is_none());
    assert!(a
        .find(r#"userName eq "alan@contoso.onmicrosoft.com""#)
        .await
        .is_empty());

    // Groups: Okta's and Entra's membership patches; the REST API sees the same group.
    let g = a
        .post(
            "/Groups",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                   "displayName": "Quantum team", "members": [{"value": ada}]}),
        )
        .await;
    assert_eq!(g.status, 201, "{}", g.body);
    let group = g.body["id"].as_str().unwrap().to_owned();
    let r = a
        .patch(
            &format!("/Groups/{group}"),
            json!([{"op": "add", "path": "members", "value": [{"value": grace, "display": "Grace"}, {"value": alan}]}]),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["members"].as_array().unwrap().len(), 3);
    let r = a
        .patch(
            &format!("/Groups/{group}"),
            json!([{"op": "remove", "path": format!("members[value eq \"{ada}\"]")},
                   {"op": "Remove", "path": "members", "value": [{"value": alan}]},
                   {"op": "Replace", "path": "displayName", "value": "Quantum guild"}]),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["members"],
        json!([{"value": grace, "$ref": format!("{}/scim/v2/Users/{grace}", server.url()), "type": "User"}])
    );
    assert_eq!(r.body["displayName"], "Quantum guild");
    let rest = admin.get(&format!("/v1/groups/{group}")).await;
    assert_eq!(rest.body["members"], json!([grace]));
    assert_eq!(rest.body["name"], "Quantum guild");
    let found = a
        .get(&format!(
            "/Groups?filter={}",
            urlencode(&format!(r#"members[value eq "{grace}"]"#))
        ))
        .await;
    assert_eq!(found.body["totalResults"], 1, "{}", found.body);

    // Tenant isolation: B never sees A's users or groups, and cannot reach them.
    assert_eq!(b.get(&format!("/Users/{ada}")).await.status, 404);
    assert_eq!(b.get(&format!("/Groups/{group}")).await.status, 404);
    assert_eq!(b.get("/Users").await.body["totalResults"], 0);
    assert_eq!(b.get("/Groups").await.body["totalResults"], 0);
    assert_eq!(
        b.patch(
            &format!("/Users/{ada}"),
            json!([{"op": "replace", "path": "active", "value": false}]),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(b.delete(&format!("/Users/{ada}")).await.status, 404);
    let bg = b
        .post(
            "/Groups",
            json!({"displayName": "B team", "members": [{"value": ada}]}),
        )
        .await;
    assert_eq!(bg.status, 400, "{}", bg.body);
    // The same userName may exist in another organization.
    let same = b
        .post("/Users", okta_user("Ada.Lovelace@B.example", "Ada", "B"))
        .await;
    assert_eq!(same.status, 201, "{}", same.body);

    // DELETE erases: 404 afterwards, erased in the REST API, the userName free again.
    let gone = a.delete(&format!("/Users/{edsger}")).await;
    assert_eq!(gone.status, 204);
    assert_eq!(a.get(&format!("/Users/{edsger}")).await.status, 404);
    assert_eq!(
        admin.get(&format!("/v1/users/{edsger}")).await.body["status"],
        "erased"
    );
    let again = a
        .post(
            "/Users",
            json!({"userName": "edsger@contoso.onmicrosoft.com", "active": false}),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["active"], false);
    assert_eq!(a.delete(&format!("/Groups/{group}")).await.status, 204);
    assert_eq!(a.get(&format!("/Groups/{group}")).await.status, 404);

    // A revoked token stops working at once.
    let revoke = admin
        .delete(&format!(
            "/v1/organizations/{org_a}/scim-tokens/{token_a_id}"
        ))
        .await;
    assert_eq!(revoke.status, 200, "{}", revoke.body);
    assert_eq!(a.get("/Users").await.status, 401);
    // Another organization's admin cannot revoke B's token: 404.
    let _ = org_b;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `tests/scim/check.py` (scim2-tester) against the server; panics on any failed check.
pub fn run_checker(server: &Server, token: &str) {
    let stdout = tool_output(
        Command::new("python3")
            .arg(repo_root().join("tests/scim/check.py"))
            .env("SCIM_URL", format!("{}/scim/v2", server.url()))
            .env("SCIM_TOKEN", token),
        "python3 is needed for the SCIM interoperability check",
        "scim2-tester failed (is tests/scim/requirements.txt installed?):",
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_provisions_users_and_groups_like_okta_and_entra() {
    let dir = temp_dir("scim");
    let server = Server::embedded(&dir);
    scenario(&server).await;
    let spec = server.client().get("/openapi.json").await.body;
    for path in [
        "/v1/organizations/{org}/scim-tokens",
        "/v1/organizations/{org}/scim-tokens/{id}",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is not documented");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_passes_the_scim2_tester_checker() {
    let dir = temp_dir("scim-tester");
    let server = Server::embedded(&dir);
    let admin = server.client();
    let (org, _) = admin.create_org("SCIM interop").await;
    let (_, token) = scim_token(&admin, &org).await;
    // A group the checker does not touch (it deletes what it made), for the replay below.
    let kept = admin
        .post(
            "/v1/groups",
            json!({"organization_id": org, "name": "kept"}),
        )
        .await;
    assert_eq!(kept.status, 201, "{}", kept.body);
    let server = tokio::task::spawn_blocking(move || {
        run_checker(&server, &token);
        server
    })
    .await
    .unwrap();
    drop(server);
    // Every read model still equals a replay of the log (profiles and groups included).
    let store = ["--data-dir", dir.to_str().unwrap()];
    assert_model_equals_replay("users", &store);
    assert_model_equals_replay("groups", &store);
}

/// A GET with `If-None-Match`: (status, ETag header, body text).
async fn get_if_none_match(scim: &Scim, path: &str, tag: &str) -> (u16, String, String) {
    let r = scim
        .http
        .get(format!("{}/scim/v2{path}", scim.base))
        .bearer_auth(&scim.token)
        .header("if-none-match", tag)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, etag, r.text().await.unwrap())
}

/// Signs in on the login page with `email` and `password`: the next page's body.
async fn sign_in_page(f: &crate::qsa::Fixture, email: &str, password: &str) -> String {
    let mut browser = crate::qsa::Browser::new(f.server.url());
    let login = browser
        .get(&crate::qsa::authorize_path(
            &f.client_id,
            "openid email",
            Some(crate::qsa::CHALLENGE),
        ))
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    browser
        .submit(&login, &[("email", email), ("password", password)])
        .await
        .body
}

/// The invitation code of the one invite to `to` in the server's outbox (`DATA_DIR/outbox`).
fn invite_code(server: &Server, user: &str, to: &str) -> String {
    let messages: Vec<Value> = std::fs::read_dir(server.data_dir.join("outbox"))
        .expect("an outbox")
        .map(|e| {
            serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
        })
        .filter(|m: &Value| m["user_id"] == user)
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["to"], to);
    let link = m["link"].as_str().unwrap();
    assert!(m["text"].as_str().unwrap().contains(link));
    let (page, code) = link.split_once('#').unwrap();
    assert_eq!(page, format!("{}/oauth2/invite", server.url()));
    code.to_owned()
}

/// Issue 14 item 7, found by Okta- and Entra-shaped clients; runs on SQLite and Postgres.
pub async fn findings(server: Server) {
    let mut f = crate::qsa::fixture_on(server).await;
    let (_, token) = scim_token(&f.admin, &f.org).await;
    let a = scim_client(&f.server, &token);
    let ada = f.user_id.clone();
    let old_email = f.email.clone();
    let tag = uuid::Uuid::now_v7().simple().to_string();

    // 1. A rename through PATCH (userName and work email) moves the login.
    let new_email = format!("ada.king+{tag}@example.com");
    let r = a
        .patch(
            &format!("/Users/{ada}"),
            json!([{"op": "replace", "path": "userName", "value": new_email},
                   {"op": "replace", "path": "emails", "value": [{"value": new_email, "type": "work", "primary": true}]}]),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["userName"], new_email.as_str());
    let rest = f.admin.get(&format!("/v1/users/{ada}")).await;
    assert_eq!(rest.body["email"], new_email.as_str(), "{}", rest.body);
    let old = sign_in_page(&f, &old_email, &f.password).await;
    assert!(old.contains("Wrong email or password."), "{old}");
    let new = sign_in_page(&f, &new_email, &f.password).await;
    assert!(new.contains("Allow access?"), "{new}");
    // The tokens' userinfo names the new address.
    f.email = new_email.clone();
    let mut browser = crate::qsa::Browser::new(f.server.url());
    let code = crate::qsa::sign_in_for_code(&f, &mut browser, "openid email").await;
    let tokens = crate::qsa::redeem_code(&f, &code).await;
    let person = Api {
        base: f.server.url().to_owned(),
        token: tokens["access_token"].as_str().unwrap().to_owned(),
        http: reqwest::Client::new(),
    };
    let info = person.get("/oauth2/userinfo").await;
    assert_eq!(info.body["email"], new_email.as_str(), "{}", info.body);
    // The log holds the move sealed, never the address in clear.
    let moved: Vec<Value> = f
        .admin
        .events_of("User")
        .await
        .into_iter()
        .filter(|e| {
            e["envelope"]["aggregate_id"] == ada.as_str()
                && e["envelope"]["event_type"] == "UserEmailChanged"
        })
        .collect();
    assert_eq!(moved.len(), 1);
    assert!(!serde_json::to_string(&moved).unwrap().contains("ada.king"));

    // A rename through PUT moves it too; onto an address someone else holds is a bare 409.
    let bob_email = format!("bob+{tag}@example.com");
    let r = a
        .post(
            "/Users",
            json!({"schemas": [USER], "userName": bob_email, "active": true,
                   "emails": [{"value": bob_email, "type": "work", "primary": true}],
                   "password": "bob's long enough password"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bob = r.body["id"].as_str().unwrap().to_owned();
    let taken = a
        .put(
            &format!("/Users/{bob}"),
            json!({"schemas": [USER], "userName": format!("robert+{tag}"), "active": true,
                   "emails": [{"value": new_email.to_uppercase(), "type": "work", "primary": true}]}),
        )
        .await;
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert_eq!(taken.body["scimType"], "uniqueness");
    let detail = taken.body["detail"].as_str().unwrap();
    assert!(
        !detail.contains(&ada) && !detail.contains("ada"),
        "{detail}"
    );
    // Nothing moved: bob keeps his userName and login, and the refused userName is free.
    assert_eq!(
        a.get(&format!("/Users/{bob}")).await.body["userName"],
        bob_email.as_str()
    );
    assert!(sign_in_page(&f, &bob_email, "bob's long enough password")
        .await
        .contains("Allow access?"));
    let bob_new = format!("robert+{tag}@example.com");
    let r = a
        .put(
            &format!("/Users/{bob}"),
            json!({"schemas": [USER], "userName": bob_new, "active": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        f.admin.get(&format!("/v1/users/{bob}")).await.body["email"],
        bob_new.as_str()
    );
    assert!(sign_in_page(&f, &bob_email, "bob's long enough password")
        .await
        .contains("Wrong email or password."));
    assert!(sign_in_page(&f, &bob_new, "bob's long enough password")
        .await
        .contains("Allow access?"));
    // Ada's old address is free again.
    let r = a
        .post(
            "/Users",
            json!({"userName": old_email, "emails": [{"value": old_email, "primary": true}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let carol = r.body["id"].as_str().unwrap().to_owned();

    // 5. Users carry their groups (read-only: value, $ref, display).
    let g = a
        .post(
            "/Groups",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                   "displayName": "Physicists", "members": [{"value": ada}, {"value": bob}]}),
        )
        .await;
    assert_eq!(g.status, 201, "{}", g.body);
    let group = g.body["id"].as_str().unwrap().to_owned();
    let expected = json!([{"value": group, "$ref": format!("{}/scim/v2/Groups/{group}", f.server.url()), "display": "Physicists"}]);
    assert_eq!(
        a.get(&format!("/Users/{ada}")).await.body["groups"],
        expected
    );
    let listed = a.get("/Users?sortBy=userName").await;
    let groups_of = |id: &str| {
        listed.body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == id)
            .map(|u| u.get("groups").cloned())
            .unwrap()
    };
    assert_eq!(groups_of(&bob), Some(expected.clone()));
    assert_eq!(groups_of(&carol), None, "no groups, no attribute");
    assert_eq!(
        a.find(&format!(r#"groups[value eq "{group}"]"#))
            .await
            .len(),
        2
    );
    // Read-only: a PUT that names groups changes no membership.
    let r = a
        .put(
            &format!("/Users/{carol}"),
            json!({"userName": old_email, "active": true, "groups": [{"value": group}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.get("groups").is_none(), "{}", r.body);

    // 3. If-None-Match with the current ETag: 304 without a body; another: the resource.
    for path in [format!("/Users/{ada}"), format!("/Groups/{group}")] {
        let current = a.get(&path).await;
        let etag = current.headers["etag"].to_str().unwrap().to_owned();
        let (status, tag, body) = get_if_none_match(&a, &path, &etag).await;
        assert_eq!(
            (status, tag.as_str(), body.as_str()),
            (304, etag.as_str(), "")
        );
        let strong = etag.trim_start_matches("W/");
        assert_eq!(get_if_none_match(&a, &path, strong).await.0, 304);
        assert_eq!(get_if_none_match(&a, &path, "*").await.0, 304);
        let (status, _, body) = get_if_none_match(&a, &path, "W/\"0\", W/\"999\"").await;
        assert_eq!(status, 200, "{body}");
    }

    // 4. Unknown extension schemas are refused, not dropped.
    const ACME: &str = "urn:acme:params:scim:schemas:extension:badge:2.0:User";
    for body in [
        json!({"schemas": [USER, ACME], "userName": format!("x1+{tag}")}),
        json!({"schemas": [USER], "userName": format!("x2+{tag}"), ACME: {"badge": "7"}}),
    ] {
        let r = a.post("/Users", body).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["scimType"], "invalidValue");
    }
    let r = a
        .patch(
            &format!("/Users/{carol}"),
            json!([{"op": "add", "path": format!("{ACME}:badge"), "value": "7"}]),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["scimType"], "invalidValue");
    let r = a
        .post(
            "/Groups",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group", "urn:acme:Group"], "displayName": "x"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["scimType"], "invalidValue");
    assert!(a
        .find(&format!(r#"userName sw "x1+{tag}""#))
        .await
        .is_empty());

    // 6. Provisioned without a password: a one-time set-password link goes to the outbox.
    let dora_email = format!("dora+{tag}@example.com");
    let r = a
        .post(
            "/Users",
            json!({"schemas": [USER], "userName": dora_email, "active": true,
                   "emails": [{"value": dora_email, "type": "work", "primary": true}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let dora = r.body["id"].as_str().unwrap().to_owned();
    let code = invite_code(&f.server, &dora, &dora_email);
    let secret = code.split_once('.').unwrap().1.to_owned();
    let events = serde_json::to_string(&f.admin.events_of("User").await).unwrap();
    assert!(events.contains("UserInvited") && !events.contains(&secret));
    let password = "dora's own long password";
    assert!(sign_in_page(&f, &dora_email, password)
        .await
        .contains("Wrong email or password."));
    let mut browser = crate::qsa::Browser::new(f.server.url());
    let page = browser.get("/oauth2/invite").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("/oauth2/invite.js"), "{}", page.body);
    let short = browser
        .submit(&page, &[("token", &code), ("password", "too short")])
        .await;
    assert_eq!(short.status, 400, "{}", short.body);
    assert!(
        short.body.contains("password must be 12 to"),
        "{}",
        short.body
    );
    let wrong = browser
        .submit(
            &short,
            &[
                ("token", &format!("{dora}.{}", "A".repeat(43))),
                ("password", password),
            ],
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert!(wrong.body.contains("not valid"), "{}", wrong.body);
    let page = browser.get("/oauth2/invite").await;
    let done = browser
        .submit(&page, &[("token", &code), ("password", password)])
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Password set"), "{}", done.body);
    assert!(sign_in_page(&f, &dora_email, password)
        .await
        .contains("Allow access?"));
    // The link works once.
    let page = browser.get("/oauth2/invite").await;
    let again = browser
        .submit(
            &page,
            &[("token", &code), ("password", "another long password")],
        )
        .await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("not valid"), "{}", again.body);
    assert!(sign_in_page(&f, &dora_email, password)
        .await
        .contains("Allow access?"));
    // No code in the server's log.
    let log = std::fs::read_to_string(f.server.data_dir.join("server.log")).unwrap();
    assert!(!log.contains(&secret));

    // 2. A deleted (erased) user leaves every group: membership events, read model, SCIM.
    assert_eq!(a.delete(&format!("/Users/{bob}")).await.status, 204);
    let shown = a.get(&format!("/Groups/{group}")).await;
    let members: Vec<&str> = shown.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(members, [ada.as_str()], "{}", shown.body);
    let removed = |user: &str| {
        let user = user.to_owned();
        let group = group.clone();
        move |events: &Vec<Value>| {
            events.iter().any(|e| {
                e["envelope"]["aggregate_id"] == group.as_str()
                    && e["envelope"]["event_type"] == "GroupMemberRemoved"
                    && e["envelope"]["payload"]["user_id"] == user.as_str()
            })
        }
    };
    assert!(removed(&bob)(&f.admin.events_of("Group").await));
    // Erasure over the REST API does the same.
    let r = f.admin.delete(&format!("/v1/users/{ada}?erase=true")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(removed(&ada)(&f.admin.events_of("Group").await));
    let rest = f.admin.get(&format!("/v1/groups/{group}")).await;
    assert_eq!(rest.body["members"], json!([]), "{}", rest.body);
    let shown = eventually(
        "the group's members without Ada",
        std::time::Duration::from_secs(10),
        || async {
            let g = a.get(&format!("/Groups/{group}")).await;
            (g.body["members"] == json!([])).then_some(g)
        },
    )
    .await;
    assert_eq!(shown.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_findings_of_issue_14_hold_on_sqlite_and_postgres() {
    findings(Server::embedded(&temp_dir("scim-findings"))).await;
    let url = fresh_database().await;
    let postgres = Server::start(
        &temp_dir("scim-findings-pg"),
        &["--listen", "127.0.0.1:0", "--database-url", &url],
        &[],
    );
    findings(postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_invite_sets_no_password() {
    let server = Server::start(
        &temp_dir("scim-invite-expiry"),
        &["--listen", "127.0.0.1:0"],
        &[("QUANTUS_INVITE_SECONDS", "1")],
    );
    let admin = server.client();
    let (org, _) = admin.create_org("Invites").await;
    let (_, token) = scim_token(&admin, &org).await;
    let a = scim_client(&server, &token);
    let r = a
        .post("/Users", json!({"userName": "late@example.com"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let code = invite_code(&server, r.body["id"].as_str().unwrap(), "late@example.com");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut browser = crate::qsa::Browser::new(server.url());
    let page = browser.get("/oauth2/invite").await;
    let late = browser
        .submit(
            &page,
            &[("token", &code), ("password", "a long enough password")],
        )
        .await;
    assert_eq!(late.status, 400, "{}", late.body);
    assert!(late.body.contains("not valid"), "{}", late.body);
    let types: Vec<String> = admin
        .events_of("User")
        .await
        .iter()
        .map(|e| e["envelope"]["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert!(!types.contains(&"UserPasswordSet".to_owned()), "{types:?}");
}
