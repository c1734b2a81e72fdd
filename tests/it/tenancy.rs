//! Issue 14 item 4: uniqueness is per organization. The same email (REST and SCIM) and the same
//! SAML entity id may exist in two organizations; a second organization's conflict answer is
//! the same whether or not another organization holds the value; sign-in picks the account by
//! the client's organization (or the organization typed, for platform-wide clients); access
//! rules refuse another organization's group and client ids. On SQLite and on Postgres.

use serde_json::{json, Value};

use crate::harness::*;
use crate::qsa::{authorize_path, Browser, CHALLENGE, REDIRECT};
use crate::scim::{scim_client, scim_token};

struct Org {
    id: String,
    client_id: String,
}

async fn org_with_client(admin: &Api, name: &str) -> Org {
    let (id, _) = admin.create_org(name).await;
    let r = admin
        .post(
            "/v1/clients",
            json!({"organization_id": id, "name": format!("{name} app"), "kind": "confidential",
                   "redirect_uris": [REDIRECT], "grant_types": ["authorization_code"],
                   "scopes": ["openid", "email"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    Org {
        id,
        client_id: r.body["client_id"].as_str().unwrap().to_owned(),
    }
}

async fn create_user(admin: &Api, org: &str, email: &str, password: &str) -> Reply {
    admin
        .post(
            "/v1/users",
            json!({"organization_id": org, "email": email, "name": "Grace", "password": password}),
        )
        .await
}

/// The sign-in page of `client_id` submitted with these fields: 200 consent when the account
/// was found and the password matched, 401 otherwise.
async fn sign_in(base: &str, client_id: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let mut browser = Browser::new(base);
    let login = browser
        .get(&authorize_path(client_id, "openid email", Some(CHALLENGE)))
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let page = browser.submit(&login, fields).await;
    (page.status, page.body)
}

/// A 409's problem body without what differs by value (the instance).
fn shape(body: &Value) -> Value {
    json!({"type": body["type"], "title": body["title"], "status": body["status"], "detail": body["detail"]})
}

async fn scenario(server: Server) {
    let base = server.url().to_owned();
    let admin = server.client();
    let a = org_with_client(&admin, "Alpha").await;
    let b = org_with_client(&admin, "Beta").await;
    let email = format!("grace+{}@example.com", uuid::Uuid::now_v7().simple());
    let fresh = format!("new+{}@example.com", uuid::Uuid::now_v7().simple());
    let pw_a = "alpha password is long";
    let pw_b = "beta password is longer";

    // The same address in two organizations: one person, two accounts.
    let r = create_user(&admin, &a.id, &email, pw_a).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let user_a = r.body["id"].as_str().unwrap().to_owned();
    let r = create_user(&admin, &b.id, &email.to_uppercase(), pw_b).await;
    assert_eq!(
        r.status, 201,
        "B must be able to register A's address: {}",
        r.body
    );
    let user_b = r.body["id"].as_str().unwrap().to_owned();
    // Within an organization it stays unique, and B's conflict reads the same whether or not
    // another organization holds the address.
    let r = create_user(&admin, &b.id, &fresh, pw_b).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let taken_in_both = create_user(&admin, &b.id, &email, pw_b).await;
    let taken_in_b_only = create_user(&admin, &b.id, &fresh, pw_b).await;
    assert_eq!(taken_in_both.status, 409, "{}", taken_in_both.body);
    assert_eq!(taken_in_b_only.status, 409, "{}", taken_in_b_only.body);
    assert_eq!(shape(&taken_in_both.body), shape(&taken_in_b_only.body));

    // SCIM: a third organization provisions the same address (userName and email).
    let c = org_with_client(&admin, "Gamma").await;
    let (_, token) = scim_token(&admin, &c.id).await;
    let scim = scim_client(&server, &token);
    let r = scim
        .post(
            "/Users",
            json!({"userName": email, "emails": [{"value": email, "primary": true}], "password": "gamma password is long"}),
        )
        .await;
    assert_eq!(r.status, 201, "SCIM in C must take A's address: {}", r.body);
    let r = scim
        .post("/Users", json!({"userName": email.to_uppercase()}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["scimType"], "uniqueness");

    // Sign-in picks the account of the client's organization.
    let (status, body) = sign_in(
        &base,
        &a.client_id,
        &[("email", &email), ("password", pw_a)],
    )
    .await;
    assert_eq!(status, 200, "A's client, A's password: {body}");
    assert!(body.contains("Allow access?"), "{body}");
    let (status, body) = sign_in(
        &base,
        &b.client_id,
        &[("email", &email), ("password", pw_b)],
    )
    .await;
    assert_eq!(status, 200, "B's client, B's password: {body}");
    let (status, body) = sign_in(
        &base,
        &b.client_id,
        &[("email", &email), ("password", pw_a)],
    )
    .await;
    assert_eq!(
        status, 401,
        "A's password must not open B's account: {body}"
    );
    assert!(body.contains("Wrong email or password."), "{body}");
    // A client of one organization ignores an organization typed on the page.
    let (status, _) = sign_in(
        &base,
        &b.client_id,
        &[
            ("email", &email),
            ("password", pw_a),
            ("organization", &a.id),
        ],
    )
    .await;
    assert_eq!(status, 401);

    // A platform-wide client (the Account console): the address is in three organizations,
    // so the person names theirs; unnamed, it is the one failure message.
    let console = "quantus-console-account";
    let console_authorize = || {
        let mut url = url::Url::parse("http://x/oauth2/authorize").unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", console)
            .append_pair("redirect_uri", &format!("{base}/account/callback"))
            .append_pair("scope", "openid")
            .append_pair("state", "s")
            .append_pair("code_challenge", CHALLENGE)
            .append_pair("code_challenge_method", "S256");
        format!("{}?{}", url.path(), url.query().unwrap())
    };
    let mut browser = Browser::new(&base);
    let login = browser.get(&console_authorize()).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(
        login.body.contains("name=\"organization\""),
        "{}",
        login.body
    );
    let page = browser
        .submit(&login, &[("email", &email), ("password", pw_a)])
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(
        page.body.contains("Wrong email or password."),
        "{}",
        page.body
    );
    // (The refusal's page carries the fresh form.)
    let page = browser
        .submit(
            &page,
            &[
                ("email", &email),
                ("password", pw_b),
                ("organization", &b.id),
            ],
        )
        .await;
    assert!(
        page.status == 200 || page.status == 303,
        "B's account through the console: {} {}",
        page.status,
        page.body
    );
    // An address in one organization only needs no organization.
    let mut browser = Browser::new(&base);
    let login = browser.get(&console_authorize()).await;
    let page = browser
        .submit(&login, &[("email", &fresh), ("password", pw_b)])
        .await;
    assert!(
        page.status == 200 || page.status == 303,
        "{} {}",
        page.status,
        page.body
    );

    // A person of A holding a role in B (grant-role) signs in to B's client with A's account.
    let guest = format!("guest+{}@example.com", uuid::Uuid::now_v7().simple());
    let r = create_user(&admin, &a.id, &guest, pw_a).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let guest_id = r.body["id"].as_str().unwrap().to_owned();
    let (status, _) = sign_in(
        &base,
        &b.client_id,
        &[("email", &guest), ("password", pw_a)],
    )
    .await;
    assert_eq!(status, 401, "no account and no role in B yet");
    let r = admin
        .post(
            &format!("/v1/users/{guest_id}/grant-role"),
            json!({"organization_id": b.id, "role": "member"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = sign_in(
        &base,
        &b.client_id,
        &[("email", &guest), ("password", pw_a)],
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Erasing B's user frees the address in B only; A's account still signs in.
    let r = admin
        .delete(&format!("/v1/users/{user_b}?erase=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = create_user(&admin, &b.id, &email, pw_b).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (status, _) = sign_in(
        &base,
        &a.client_id,
        &[("email", &email), ("password", pw_a)],
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(user_a, user_b);

    // SAML: the same entity id in two organizations; unique within one, with one answer.
    let sp = |org: &str, entity: &str| {
        json!({"organization_id": org, "entity_id": entity, "name": "SP",
               "acs_urls": ["https://sp.example.test/acs"], "name_id_format": "persistent"})
    };
    let entity = "https://shared-sp.example.test/metadata";
    let other = "https://only-b.example.test/metadata";
    let r = admin
        .post("/v1/saml/service-providers", sp(&a.id, entity))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sp_a = r.body["id"].as_str().unwrap().to_owned();
    let r = admin
        .post("/v1/saml/service-providers", sp(&b.id, entity))
        .await;
    assert_eq!(
        r.status, 201,
        "B must be able to register A's SP: {}",
        r.body
    );
    let sp_b = r.body["id"].as_str().unwrap().to_owned();
    assert_ne!(sp_a, sp_b);
    let r = admin
        .post("/v1/saml/service-providers", sp(&b.id, other))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let again_both = admin
        .post("/v1/saml/service-providers", sp(&b.id, entity))
        .await;
    let again_b = admin
        .post("/v1/saml/service-providers", sp(&b.id, other))
        .await;
    assert_eq!(again_both.status, 409, "{}", again_both.body);
    assert_eq!(again_b.status, 409, "{}", again_b.body);
    assert_eq!(shape(&again_both.body), shape(&again_b.body));
    // The shared endpoint cannot tell which registration a request means; each
    // organization's metadata names its own endpoints.
    let md = reqwest::get(format!("{base}/saml/o/{}/metadata", b.id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(md.contains(&format!("{base}/saml/o/{}/sso", b.id)), "{md}");
    let r = reqwest::get(format!("{base}/saml/o/{}/metadata", uuid::Uuid::now_v7()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Access rules: another organization's group or client is refused like one that does not
    // exist; the organization's own are taken.
    let r = admin
        .post(
            "/v1/groups",
            json!({"organization_id": a.id, "name": "Alpha staff"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let group_a = r.body["id"].as_str().unwrap().to_owned();
    let r = admin
        .post(
            "/v1/groups",
            json!({"organization_id": b.id, "name": "Beta staff"}),
        )
        .await;
    let group_b = r.body["id"].as_str().unwrap().to_owned();
    let rule = |conditions: Value| {
        admin
            .request(
                reqwest::Method::PUT,
                &format!("/v1/access-policies/{}/rules/r1", b.id),
            )
            .json(&json!({"priority": 1, "conditions": conditions, "outcome": "require_mfa"}))
    };
    let missing = uuid::Uuid::now_v7().to_string();
    let foreign_group = admin.send(rule(json!({"groups": [group_a]}))).await;
    let missing_group = admin.send(rule(json!({"groups": [missing]}))).await;
    assert_eq!(foreign_group.status, 422, "{}", foreign_group.body);
    assert_eq!(missing_group.status, foreign_group.status);
    assert_eq!(
        foreign_group.body["detail"]
            .as_str()
            .unwrap()
            .replace(&group_a, "X"),
        missing_group.body["detail"]
            .as_str()
            .unwrap()
            .replace(&missing, "X")
    );
    let foreign_client = admin.send(rule(json!({"clients": [a.client_id]}))).await;
    let missing_client = admin.send(rule(json!({"clients": [missing]}))).await;
    assert_eq!(foreign_client.status, 422, "{}", foreign_client.body);
    assert_eq!(missing_client.status, 422, "{}", missing_client.body);
    // The platform's own clients (the consoles) serve every organization's people: a rule
    // may name them.
    let own = admin
        .send(rule(json!({
            "groups": [group_b],
            "clients": [b.client_id, entity, "quantus-console-portal"]
        })))
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn emails_and_saml_entity_ids_are_unique_per_organization_on_sqlite_and_postgres() {
    scenario(Server::embedded(&temp_dir("tenancy"))).await;
    let url = fresh_database().await;
    scenario(Server::start(
        &temp_dir("tenancy-pg"),
        &["--listen", "127.0.0.1:0", "--database-url", &url],
        &[],
    ))
    .await;
}

/// The login-index row an older version wrote for `email`: the keyed digest of the address
/// alone (the key derives from the master key in the data folder).
fn legacy_login(data_dir: &std::path::Path, email: &str) -> String {
    use sha2::Digest as _;
    let master = hex::decode(
        std::fs::read_to_string(data_dir.join("master.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let login_key =
        sha2::Sha256::digest([b"quantus-login-key/v1\0".as_slice(), master.as_slice()].concat());
    hex::encode(sha2::Sha256::digest(
        [
            login_key.as_slice(),
            b"\0login\0",
            email.trim().to_lowercase().as_bytes(),
        ]
        .concat(),
    ))
}

/// Data of a version where emails were unique across the platform: the login row keyed by
/// the address alone. The next start moves it; the person signs in as before.
async fn old_login_rows_are_moved(dir: &std::path::Path, database_url: Option<&str>) {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let mut server = Server::start(dir, &args, &[]);
    let admin = server.client();
    let org = org_with_client(&admin, "Legacy").await;
    let email = format!("old+{}@example.com", uuid::Uuid::now_v7().simple());
    let password = "an old and long password";
    let r = create_user(&admin, &org.id, &email, password).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let user = r.body["id"].as_str().unwrap().to_owned();
    server.terminate(std::time::Duration::from_secs(20));

    let url = database_url
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("quantus.db").display()));
    let db = pool(&url).await;
    for q in [
        "DELETE FROM user_logins WHERE user_id = $1",
        "DELETE FROM login_directory WHERE user_id = $1",
    ] {
        sqlx::query(q).bind(&user).execute(&db).await.unwrap();
    }
    sqlx::query("DELETE FROM user_logins WHERE login = 'moved:emails-per-organization'")
        .execute(&db)
        .await
        .unwrap();
    let old = legacy_login(dir, &email);
    sqlx::query("INSERT INTO user_logins (login, user_id) VALUES ($1, $2)")
        .bind(&old)
        .bind(&user)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    let server = Server::start(dir, &args, &[]);
    let (status, body) = sign_in(
        server.url(),
        &org.client_id,
        &[("email", &email), ("password", password)],
    )
    .await;
    assert_eq!(status, 200, "the moved login must sign in: {body}");
    let db = pool(&url).await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user_logins WHERE login = $1")
        .bind(&old)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0, "the platform-wide row is gone");
    // Another organization may now register the address.
    let other = org_with_client(&server.client(), "Other").await;
    let r = create_user(&server.client(), &other.id, &email, password).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_rows_of_the_platform_wide_index_are_moved_at_start_on_sqlite_and_postgres() {
    old_login_rows_are_moved(&temp_dir("tenancy-move"), None).await;
    let url = fresh_database().await;
    old_login_rows_are_moved(&temp_dir("tenancy-move-pg"), Some(&url)).await;
}
