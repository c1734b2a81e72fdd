//! Time travel (issue 19, item 3): the read models as of a log position or an instant, on
//! SQLite and PostgreSQL, with the current-state query's tenant isolation and erasure.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{fresh_database, quantus, temp_dir, Api, Server};
use crate::portal::org_client;

/// An instant between two writes: UUID v7 ids carry milliseconds, so keep clear of both.
async fn now_between() -> String {
    tokio::time::sleep(Duration::from_millis(15)).await;
    let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(15)).await;
    t
}

fn position(r: &crate::harness::Reply) -> u64 {
    assert!(matches!(r.status, 200 | 201), "{}", r.body);
    r.body["position"].as_u64().expect("position")
}

/// `GET path` with `&as_of=instant`, answered 200; with the moment it names.
async fn as_of(api: &Api, path: &str, instant: &str) -> Value {
    let r = api
        .send(
            api.request(reqwest::Method::GET, path)
                .query(&[("as_of", instant)]),
        )
        .await;
    assert_eq!(r.status, 200, "{path} as of {instant}: {}", r.body);
    assert_eq!(r.body["as_of"]["instant"].as_str().map(|_| ()), Some(()));
    r.body
}

fn only(page: &Value) -> &Value {
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    &items[0]
}

fn store_args<'a>(dir: &'a str, url: Option<&'a str>) -> Vec<&'a str> {
    match url {
        Some(url) => vec!["--data-dir", dir, "--database-url", url],
        None => vec!["--data-dir", dir],
    }
}

fn start(dir: &std::path::Path, url: Option<&str>) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    if let Some(url) = url {
        args.extend(["--database-url", url]);
    }
    Server::start(dir, &args, &[])
}

async fn scenario(label: &str, url: Option<&str>) {
    let dir = temp_dir(label);
    let server = start(&dir, url);
    let admin = server.client();
    let (acme, org_at) = admin.create_org("Acme").await;
    let (globex, _) = admin.create_org("Globex").await;
    let users = format!("/v1/users?org={acme}");
    let groups = format!("/v1/groups?org={acme}");
    let licenses = format!("/v1/licenses?org={acme}");

    // A user registered, given a role, disabled; a group joined; a licence issued, suspended.
    let r = admin
        .post(
            "/v1/users",
            json!({"organization_id": acme, "email": "grace@acme.example", "name": "Grace", "password": "a long enough secret"}),
        )
        .await;
    let registered_at = position(&r);
    let grace = r.body["id"].as_str().unwrap().to_owned();
    let t_registered = now_between().await;
    let granted_at = position(
        &admin
            .post(
                &format!("/v1/users/{grace}/grant-role"),
                json!({"organization_id": acme, "role": "admin"}),
            )
            .await,
    );
    let t_granted = now_between().await;
    position(
        &admin
            .post(&format!("/v1/users/{grace}/disable"), json!({}))
            .await,
    );
    let t_disabled = now_between().await;
    let r = admin
        .post(
            "/v1/groups",
            json!({"organization_id": acme, "name": "Quantum team"}),
        )
        .await;
    position(&r);
    let group = r.body["id"].as_str().unwrap().to_owned();
    position(
        &admin
            .post(
                &format!("/v1/groups/{group}/members"),
                json!({"user_id": grace}),
            )
            .await,
    );
    let t_joined = now_between().await;
    let r = admin
        .post(
            "/v1/licenses",
            json!({"organization_id": acme, "product": "qpu", "edition": "pro",
                   "expires_at": "2099-01-01T00:00:00Z", "max_activations": 2}),
        )
        .await;
    let issued_at = position(&r);
    let license = r.body["id"].as_str().unwrap().to_owned();
    let t_issued = now_between().await;
    position(
        &admin
            .post(
                &format!("/v1/licenses/{license}/suspend"),
                json!({"reason": "unpaid"}),
            )
            .await,
    );

    // Each instant gives that state, and names the position it reflects.
    let page = as_of(&admin, &users, &t_registered).await;
    let pos = page["as_of"]["position"].as_u64().unwrap();
    assert!(
        (registered_at..granted_at).contains(&pos),
        "{pos} not in {registered_at}..{granted_at}"
    );
    let user = only(&page);
    assert_eq!(user["status"], "active");
    assert_eq!(user["email"], "grace@acme.example");
    let roles = |u: &Value| u["memberships"][&acme].to_string();
    assert!(!roles(user).contains("admin"), "{user}");
    let user = only(&as_of(&admin, &users, &t_granted).await).clone();
    assert!(roles(&user).contains("admin"), "{user}");
    assert_eq!(user["status"], "active");
    let user = only(&as_of(&admin, &users, &t_disabled).await).clone();
    assert_eq!(user["status"], "disabled");
    // The group did not exist yet, then had Grace.
    let page = as_of(&admin, &groups, &t_disabled).await;
    assert_eq!(page["items"], json!([]), "{page}");
    let page = as_of(&admin, &groups, &t_joined).await;
    assert_eq!(only(&page)["members"], json!([grace]));
    let page = as_of(&admin, &licenses, &t_issued).await;
    assert_eq!(only(&page)["status"], "active");
    let now = admin.get(&licenses).await;
    assert_eq!(only(&now.body)["status"], "suspended");
    // A position names itself and when it was appended.
    let r = admin
        .get(&format!("{licenses}&as_of_position={issued_at}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["as_of"]["position"], issued_at);
    assert!(r.body["as_of"]["instant"].is_string(), "{}", r.body);
    assert_eq!(only(&r.body)["status"], "active");
    // Before the organization existed: nothing.
    for path in [&users, &groups, &licenses] {
        let r = admin
            .get(&format!("{path}&as_of_position={}", org_at - 1))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["items"], json!([]), "{path}: {}", r.body);
        let r = admin
            .get(&format!("{path}&as_of=2001-01-01T00:00:00Z"))
            .await;
        assert_eq!(r.body["items"], json!([]), "{path}: {}", r.body);
        assert_eq!(r.body["as_of"]["position"], 0);
    }

    // Another organization's administrator sees nothing of Acme, in the past either.
    let other = org_client(&admin, &globex, &["admin"]).await;
    for path in [&users, &groups, &licenses] {
        let r = other.get(&format!("{path}&as_of={t_joined}")).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    // Its own past holds none of Acme's rows.
    let r = other
        .get(&format!("/v1/licenses?as_of_position={issued_at}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["items"], json!([]), "{}", r.body);

    // Bad moments are 400 problems.
    for query in [
        "as_of=yesterday".to_owned(),
        format!("as_of={}&as_of_position=1", "2026-01-01T00:00:00Z"),
        "as_of_position=999999999".to_owned(),
        "as_of_position=-1".to_owned(),
    ] {
        let r = admin.get(&format!("{users}&{query}")).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{query}"
        );
    }

    // An erased person's past versions lose their personal data too.
    let r = admin
        .post(
            "/v1/users",
            json!({"organization_id": acme, "email": "ada@acme.example", "name": "Ada", "password": "a long enough secret"}),
        )
        .await;
    position(&r);
    let ada = r.body["id"].as_str().unwrap().to_owned();
    let t_ada = now_between().await;
    let before = as_of(&admin, &users, &t_ada).await;
    assert!(before.to_string().contains("ada@acme.example"));
    let r = admin.delete(&format!("/v1/users/{ada}?erase=true")).await;
    let erased_at = position(&r);
    // Like the current state, the past shows the erasure once the model has applied it.
    let then = as_of(&admin, &format!("{users}&min_position={erased_at}"), &t_ada).await;
    let text = then.to_string();
    assert!(
        !text.contains("ada@acme.example") && !text.contains("\"Ada\""),
        "{then}"
    );
    let items = then["items"].as_array().unwrap();
    let erased = items.iter().find(|u| u["id"] == ada.as_str()).unwrap();
    assert_eq!(erased["status"], "erased");
    assert!(erased["email"].is_null() && erased["name"].is_null());
    // Grace's past is untouched by Ada's erasure.
    assert!(text.contains("grace@acme.example"), "{then}");

    // A rebuild writes the same history again from the log.
    let answers = |api: Api| {
        let (users, groups, licenses) = (users.clone(), groups.clone(), licenses.clone());
        let instants = [
            t_registered.clone(),
            t_granted.clone(),
            t_disabled.clone(),
            t_joined.clone(),
            t_issued.clone(),
            t_ada.clone(),
        ];
        async move {
            let mut out = Vec::new();
            for t in &instants {
                for path in [&users, &groups, &licenses] {
                    out.push(as_of(&api, path, t).await);
                }
            }
            out
        }
    };
    let live = answers(admin.clone()).await;
    drop(server);
    let dir_s = dir.to_str().unwrap().to_owned();
    for model in ["users", "groups", "licenses"] {
        let mut args = vec!["projections", "rebuild", model];
        args.extend(store_args(&dir_s, url));
        let out = quantus(&args, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = start(&dir, url);
    let rebuilt = answers(server.client()).await;
    assert_eq!(
        live, rebuilt,
        "the rebuilt history differs from the live one"
    );
}

/// Contracts and the entitlements they grant, as of before, during and after a contract.
async fn commercial(label: &str, url: Option<&str>) {
    use crate::portal::{active_contract, line_items, register_customer};
    let dir = temp_dir(label);
    let server = start(&dir, url);
    let admin = server.client();
    let (acme, _) = admin.create_org("Acme").await;
    let (globex, _) = admin.create_org("Globex").await;
    register_customer(&admin, &acme, "EUR").await;
    let t_before = now_between().await;
    let contract = active_contract(&admin, &acme, line_items(), "2099-01-01T00:00:00Z").await;
    // The Portal's process manager records each licence on the contract: terminating before
    // it has would race it (409, "reload and retry").
    crate::portal::licences_stand(&admin, &contract, "issued").await;
    let t_active = now_between().await;
    let r = admin
        .post(
            &format!("/v1/contracts/{contract}/terminate"),
            json!({"reason": "moved on"}),
        )
        .await;
    let terminated_at = position(&r);
    let contracts = format!("/v1/contracts?org={acme}");
    let entitlements = format!("/v1/entitlements?org={acme}");

    let page = as_of(&admin, &contracts, &t_before).await;
    assert_eq!(page["items"], json!([]), "{page}");
    let page = as_of(&admin, &contracts, &t_active).await;
    assert_eq!(only(&page)["status"], "active", "{page}");
    let page = admin
        .get(&format!("{contracts}&min_position={terminated_at}"))
        .await;
    assert_eq!(only(&page.body)["status"], "terminated", "{}", page.body);

    let e = as_of(&admin, &entitlements, &t_before).await;
    assert_eq!(e["features"], json!([]), "{e}");
    let e = as_of(&admin, &entitlements, &t_active).await;
    assert_eq!(e["contracts"], json!([contract]), "{e}");
    assert!(e["features"].to_string().contains("qpu"), "{e}");
    let e = admin
        .get(&format!("{entitlements}&min_position={terminated_at}"))
        .await;
    assert_eq!(e.body["features"], json!([]), "{}", e.body);

    // Another organization's administrator: 404, in the past too.
    let other = org_client(&admin, &globex, &["admin"]).await;
    for path in [&contracts, &entitlements] {
        let r = other.get(&format!("{path}&as_of={t_active}")).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    let r = admin.get(&format!("{entitlements}&as_of=soon")).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

/// Access rules (an aggregate, not a read model) as of before, while and after a rule was
/// added, replaced and deleted.
async fn access_rules(label: &str, url: Option<&str>) {
    let dir = temp_dir(label);
    let server = start(&dir, url);
    let admin = server.client();
    let t_before_org = now_between().await;
    let (acme, org_at) = admin.create_org("Acme").await;
    let (globex, _) = admin.create_org("Globex").await;
    let rule = |name: &str| format!("/v1/access-policies/{acme}/rules/{name}");
    let put = |name: String, body: Value| {
        let admin = admin.clone();
        async move { position(&admin.put(&name, body).await) }
    };
    let t_none = now_between().await;
    let added_at = put(
        rule("office"),
        json!({"priority": 10, "conditions": {"ip_not_in": ["10.0.0.0/8"]}, "outcome": "require_mfa"}),
    )
    .await;
    let t_added = now_between().await;
    put(
        rule("office"),
        json!({"priority": 10, "conditions": {"ip_not_in": ["10.0.0.0/8"]}, "outcome": "block"}),
    )
    .await;
    let t_replaced = now_between().await;
    position(&admin.delete(&rule("office")).await);
    let policy = format!("/v1/access-policies/{acme}");

    let outcomes = |body: &Value| -> Vec<String> {
        body["rules"]
            .as_array()
            .unwrap_or_else(|| panic!("rules: {body}"))
            .iter()
            .map(|r| {
                format!(
                    "{}:{}",
                    r["name"].as_str().unwrap(),
                    r["outcome"].as_str().unwrap()
                )
            })
            .collect()
    };
    let then = as_of(&admin, &policy, &t_none).await;
    assert_eq!(outcomes(&then), Vec::<String>::new(), "{then}");
    assert_eq!(then["version"], 0, "{then}");
    let then = as_of(&admin, &policy, &t_added).await;
    assert_eq!(outcomes(&then), ["office:require_mfa"], "{then}");
    assert_eq!(then["version"], 1, "{then}");
    let pos = then["as_of"]["position"].as_u64().unwrap();
    assert!(pos >= added_at, "{then}");
    let then = as_of(&admin, &policy, &t_replaced).await;
    assert_eq!(outcomes(&then), ["office:block"], "{then}");
    assert_eq!(then["version"], 2, "{then}");
    let now = admin.get(&policy).await;
    assert_eq!(now.status, 200, "{}", now.body);
    assert_eq!(outcomes(&now.body), Vec::<String>::new(), "{}", now.body);
    assert_eq!(now.body["version"], 3, "{}", now.body);
    assert!(now.body.get("as_of").is_none(), "{}", now.body);
    // A position names itself and when it was appended.
    let r = admin
        .get(&format!("{policy}?as_of_position={added_at}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["as_of"]["position"], added_at);
    assert!(r.body["as_of"]["instant"].is_string(), "{}", r.body);
    assert_eq!(outcomes(&r.body), ["office:require_mfa"], "{}", r.body);
    // Before the organization existed: no rules, as the read models answer no rows.
    for query in [
        format!("as_of_position={}", org_at - 1),
        format!("as_of={t_before_org}"),
    ] {
        let r = admin.get(&format!("{policy}?{query}")).await;
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        assert_eq!(
            outcomes(&r.body),
            Vec::<String>::new(),
            "{query}: {}",
            r.body
        );
    }

    // Bad moments are 400 problems.
    for query in [
        "as_of=yesterday".to_owned(),
        "as_of=2026-01-01T00:00:00Z&as_of_position=1".to_owned(),
        "as_of_position=999999999".to_owned(),
        "as_of_position=-1".to_owned(),
    ] {
        let r = admin.get(&format!("{policy}?{query}")).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{query}"
        );
    }

    // Another organization's administrator: 404, in the past too, and nothing of the rule.
    let other = org_client(&admin, &globex, &["admin"]).await;
    for query in [
        format!("as_of={t_added}"),
        format!("as_of_position={added_at}"),
    ] {
        let r = other.get(&format!("{policy}?{query}")).await;
        assert_eq!(r.status, 404, "{query}: {}", r.body);
        assert!(!r.body.to_string().contains("office"), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn access_rules_answer_as_of_an_instant_or_a_position_on_sqlite_and_postgres() {
    access_rules("time-travel-access", None).await;
    let url = fresh_database().await;
    access_rules("time-travel-access-pg", Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_models_answer_as_of_an_instant_or_a_position_on_sqlite() {
    scenario("time-travel", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn contracts_and_entitlements_answer_as_of_an_instant_on_sqlite_and_postgres() {
    commercial("time-travel-portal", None).await;
    let url = fresh_database().await;
    commercial("time-travel-portal-pg", Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_models_answer_as_of_an_instant_or_a_position_on_postgres() {
    let url = fresh_database().await;
    scenario("time-travel-pg", Some(&url)).await;
}
