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
        .send(admin.request(
            reqwest::Method::DELETE,
            &format!("/v1/organizations/{org_a}/scim-tokens/{token_a_id}"),
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
    let out = Command::new("python3")
        .arg(repo_root().join("tests/scim/check.py"))
        .env("SCIM_URL", format!("{}/scim/v2", server.url()))
        .env("SCIM_TOKEN", token)
        .output()
        .expect("python3 is needed for the SCIM interoperability check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scim2-tester failed (is tests/scim/requirements.txt installed?):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
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
