//! QSA identity core, end to end over HTTP: service principals and scopes, tenant isolation,
//! users with crypto-shredded personal data, the browser sign-in with code + PKCE, refresh
//! rotation, the attacks (forged, replayed, mis-addressed tokens), lockout, and the audit
//! stream. The same flows run against an independent OIDC client in `tests/oidc` (Python).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::*;

/// An API client for a given access token.
fn api_with(server: &Server, token: &str) -> Api {
    Api {
        base: server.url().to_owned(),
        token: token.to_owned(),
        http: reqwest::Client::new(),
    }
}

async fn service_principal(api: &Api, org: &str, roles: Value) -> (String, String) {
    let r = api
        .post(
            "/v1/service-principals",
            json!({"organization_id": org, "name": "ci", "roles": roles}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    (
        r.body["client_id"].as_str().unwrap().to_owned(),
        r.body["client_secret"].as_str().unwrap().to_owned(),
    )
}

/// A browser without JavaScript: follows nothing by itself, keeps cookies, submits forms.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

/// The user agent the test browser sends (personal data the log must hold only sealed).
pub const BROWSER_AGENT: &str = "QuantusTestBrowser/1.0 (Ada's laptop)";

impl Browser {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // The server ends kept-alive connections idle for 10 s (its header-read
                // timeout); like browsers, drop them sooner rather than race its close
                // (on a loaded machine the SP steps between two requests can take that long).
                .pool_idle_timeout(std::time::Duration::from_secs(4))
                .user_agent(BROWSER_AGENT)
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: HashMap::new(),
        }
    }

    /// The `Cookie` header this browser sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie: String = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let res = req.header("cookie", cookie).send().await.unwrap();
        for c in res.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        Page {
            status: res.status().as_u16(),
            location: res
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            body: res.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let req = self.http.get(url);
        self.send(req).await
    }

    /// Submits the page's form with its hidden fields plus `fields`.
    pub async fn submit(&mut self, page: &Page, fields: &[(&str, &str)]) -> Page {
        let action = attr_after(&page.body, "<form", "action").expect("a form");
        // The first form only, as a browser submits the form whose button was pressed.
        let start = page.body.find("<form").expect("a form");
        let end = start
            + page.body[start..]
                .find("</form>")
                .unwrap_or(page.body.len() - start);
        let mut form: Vec<(String, String)> = hidden_fields(&page.body[start..end]);
        for (k, v) in fields {
            form.push(((*k).to_owned(), (*v).to_owned()));
        }
        let req = self.http.post(format!("{}{action}", self.base)).form(&form);
        self.send(req).await
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn attr_after(html: &str, tag: &str, attr: &str) -> Option<String> {
    let start = html.find(tag)?;
    let rest = &html[start..];
    let key = format!("{attr}=\"");
    let at = rest.find(&key)? + key.len();
    let end = rest[at..].find('"')?;
    Some(unescape(&rest[at..at + end]))
}

fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\"")
        .skip(1)
        .filter_map(|chunk| {
            let name = attr_after(chunk, "", "name")?;
            let value = attr_after(chunk, "", "value")?;
            Some((name, value))
        })
        .collect()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    parsed
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

pub struct Fixture {
    pub server: Server,
    pub admin: Api,
    pub org: String,
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub client_id: String,
    pub client_secret: String,
}

pub async fn fixture(name: &str) -> Fixture {
    fixture_on(Server::embedded(&temp_dir(name))).await
}

/// An organization with a member and a confidential web client, on `server`.
pub async fn fixture_on(server: Server) -> Fixture {
    let admin = server.client();
    let (org, _) = admin.create_org("Acme").await;
    let email = format!("ada+{}@example.com", uuid::Uuid::now_v7().simple());
    let password = "correct horse battery staple".to_owned();
    let r = admin
        .post(
            "/v1/users",
            json!({"organization_id": org, "email": email, "name": "Ada Lovelace", "password": password, "roles": ["member"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let user_id = r.body["id"].as_str().unwrap().to_owned();
    let r = admin
        .post(
            "/v1/clients",
            json!({"organization_id": org, "name": "Acme Console", "kind": "confidential",
                   "redirect_uris": [REDIRECT], "post_logout_redirect_uris": ["http://127.0.0.1:9/bye"],
                   "grant_types": ["authorization_code", "refresh_token"],
                   "scopes": ["openid", "email", "profile", "offline_access", "organizations:read", "licenses:read", "keys:manage"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    Fixture {
        client_id: r.body["client_id"].as_str().unwrap().to_owned(),
        client_secret: r.body["client_secret"].as_str().unwrap().to_owned(),
        server,
        admin,
        org,
        user_id,
        email,
        password,
    }
}

pub fn authorize_path(client_id: &str, scope: &str, challenge: Option<&str>) -> String {
    let mut url = url::Url::parse("http://x/oauth2/authorize").unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", "st-1")
        .append_pair("nonce", "n-1");
    if let Some(c) = challenge {
        url.query_pairs_mut()
            .append_pair("code_challenge", c)
            .append_pair("code_challenge_method", "S256");
    }
    format!("{}?{}", url.path(), url.query().unwrap())
}

/// Signs in through the login and consent pages; returns the authorization code.
pub async fn sign_in_for_code(f: &Fixture, browser: &mut Browser, scope: &str) -> String {
    let login = browser
        .get(&authorize_path(&f.client_id, scope, Some(CHALLENGE)))
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("Sign in"), "{}", login.body);
    let consent = browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("Allow access?"), "{}", consent.body);
    let done = browser.submit(&consent, &[("decision", "allow")]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let location = done.location.unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-1"));
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(f.server.url())
    );
    query_param(&location, "code").expect("a code")
}

/// A new group of the fixture's organization with the fixture's person in it: its id.
pub async fn group_with_the_person(f: &Fixture, name: &str) -> String {
    let r = f
        .admin
        .post(
            "/v1/groups",
            json!({"organization_id": f.org, "name": name}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let group = r.body["id"].as_str().unwrap().to_owned();
    let r = f
        .admin
        .post(
            &format!("/v1/groups/{group}/members"),
            json!({"user_id": f.user_id}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    group
}

/// Redeems an authorization code issued for `REDIRECT` with the PKCE `VERIFIER`: the tokens
/// (the token endpoint must grant them).
pub async fn redeem_code(f: &Fixture, code: &str) -> Value {
    let (status, tokens) = token_request(
        f,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

/// The password step of a sign-in for `scope`; answers the page that follows it.
pub async fn password_step(f: &Fixture, browser: &mut Browser, scope: &str) -> Page {
    let login = browser
        .get(&authorize_path(&f.client_id, scope, Some(CHALLENGE)))
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await
}

/// From the page after a complete sign-in (consent, or straight back to the client when the
/// person consented before) to tokens.
pub async fn consent_to_tokens(f: &Fixture, browser: &mut Browser, page: Page) -> Value {
    let done = if page.status == 303 {
        page
    } else {
        assert!(page.body.contains("Allow access?"), "{}", page.body);
        browser.submit(&page, &[("decision", "allow")]).await
    };
    assert_eq!(done.status, 303, "{}", done.body);
    let code = query_param(&done.location.unwrap(), "code").expect("a code");
    redeem_code(f, &code).await
}

pub async fn token_request(f: &Fixture, form: &[(&str, &str)]) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/oauth2/token", f.server.url()))
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

pub async fn introspect(f: &Fixture, token: &str) -> Value {
    introspection(f.server.url(), &f.client_id, &f.client_secret, token).await
}

pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn signing_needs_the_signatures_scope_and_platform_keys_need_the_platform() {
    let dir = temp_dir("qsa-scopes");
    let server = Server::embedded(&dir);
    let admin = server.client();
    let (org, _) = admin.create_org("Acme").await;
    let digest = hex::encode(sha2::Sha256::digest(b"evidence"));
    // The platform admin may sign.
    let sign = json!({"purpose": "evidence", "digest_algorithm": "sha-256", "digest": digest});
    let r = admin.post("/v1/signatures", sign.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let verify = json!({"purpose": "evidence", "digest_algorithm": "sha-256", "digest": digest,
                        "kid": r.body["kid"], "signature": r.body["signature"]});
    // An organization's admin principal may verify but not sign, nor rotate keys.
    let (id, secret) = service_principal(&admin, &org, json!(["admin"])).await;
    let tenant = api_with(&server, &client_token(server.url(), &id, &secret, None));
    let (other, other_secret) = service_principal(&admin, &org, json!(["member"])).await;
    let disabled = api_with(
        &server,
        &client_token(server.url(), &other, &other_secret, None),
    );
    let r = admin
        .post(
            &format!("/v1/clients/{other}/disable"),
            json!({"reason": "left"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(disabled.get("/v1/organizations").await.status, 401);
    let r = tenant.post("/v1/signatures", sign).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let r = tenant
        .post("/v1/keys/rotate", json!({"purpose": "license"}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = tenant.post("/v1/signatures/verify", verify).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["valid"], true, "{}", r.body);
    // It cannot even ask for a scope its roles do not allow.
    let res = reqwest::Client::new()
        .post(format!("{}/oauth2/token", server.url()))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "signatures:sign"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_scope");
    // A wrong secret is invalid_client, 401, and says nothing more.
    let res = reqwest::Client::new()
        .post(format!("{}/oauth2/token", server.url()))
        .basic_auth(&id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn one_organization_never_sees_another() {
    let dir = temp_dir("qsa-tenants");
    let server = Server::embedded(&dir);
    let admin = server.client();
    let (acme, _) = admin.create_org("Acme").await;
    let (globex, _) = admin.create_org("Globex").await;
    let r = admin
        .post(
            "/v1/licenses",
            json!({"organization_id": globex, "product": "qpu", "edition": "pro", "expires_at": "2030-01-01T00:00:00Z", "max_activations": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let globex_license = r.body["id"].as_str().unwrap().to_owned();
    let r = admin
        .post(
            "/v1/users",
            json!({"organization_id": globex, "email": "g@globex.example", "name": "G", "password": "a long enough secret"}),
        )
        .await;
    let globex_user = r.body["id"].as_str().unwrap().to_owned();

    let (id, secret) = service_principal(&admin, &acme, json!(["admin", "auditor"])).await;
    let acme_api = api_with(&server, &client_token(server.url(), &id, &secret, None));
    for path in [
        format!("/v1/organizations/{globex}"),
        format!("/v1/licenses/{globex_license}"),
        format!("/v1/licenses/{globex_license}/file"),
        format!("/v1/licenses?org={globex}"),
        format!("/v1/users/{globex_user}"),
    ] {
        let r = acme_api.get(&path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    let r = acme_api.get("/v1/organizations").await;
    let ids: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![acme.as_str()]);
    // Its event feed holds its own organization's events only.
    let events = acme_api.all_events().await;
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["envelope"]["tenant_id"] == acme));
    // Nor can it create into another organization.
    let r = acme_api
        .post(
            "/v1/service-principals",
            json!({"organization_id": globex, "name": "x", "roles": ["admin"]}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = acme_api
        .post(
            "/v1/service-principals",
            json!({"organization_id": acme, "name": "x", "roles": ["platform_admin"]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
}

#[tokio::test]
async fn a_person_signs_in_with_code_and_pkce_and_refresh_tokens_rotate() {
    let f = fixture("qsa-code").await;
    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(
        &f,
        &mut browser,
        "openid email profile offline_access organizations:read licenses:read keys:manage",
    )
    .await;
    // A wrong verifier fails; the code stays unspent for the right one.
    let wrong = "x".repeat(43);
    let (status, body) = token_request(
        &f,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &wrong),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let tokens = redeem_code(&f, &code).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let at = claims(&access);
    assert_eq!(at["sub"], f.user_id.as_str());
    assert_eq!(at["org"], f.org.as_str());
    // A member's token carries what a member may do, not what the client asked beyond it.
    assert!(at["scope"].as_str().unwrap().contains("licenses:read"));
    assert!(!at["scope"].as_str().unwrap().contains("keys:manage"));
    let id_token = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token["nonce"], "n-1");
    assert_eq!(id_token["aud"], f.client_id.as_str());
    let half = &sha2::Sha512::digest(access.as_bytes())[..32];
    assert_eq!(id_token["at_hash"], URL_SAFE_NO_PAD.encode(half));

    let user_api = api_with(&f.server, &access);
    let r = user_api.get(&format!("/v1/organizations/{}", f.org)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = user_api.get("/oauth2/userinfo").await;
    assert_eq!(r.body["email"], f.email.as_str(), "{}", r.body);
    let r = user_api.get(&format!("/v1/users/{}", f.user_id)).await;
    assert_eq!(r.body["name"], "Ada Lovelace", "{}", r.body);

    // Refresh rotates; the spent token presented again revokes the whole grant.
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = token_request(
        &f,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let (status, body) = token_request(
        &f,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = token_request(
        &f,
        &[("grant_type", "refresh_token"), ("refresh_token", &second)],
    )
    .await;
    assert_eq!(status, 400, "the grant was not revoked on reuse");
    assert_eq!(introspect(&f, &access).await["active"], false);
    assert_eq!(user_api.get("/v1/organizations").await.status, 401);

    let audit = f.admin.events_of("Grant").await;
    let types: Vec<&str> = audit
        .iter()
        .map(|e| e["envelope"]["event_type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"TokensRefreshed") && types.contains(&"GrantRevoked"));
    let revoked = audit
        .iter()
        .find(|e| e["envelope"]["event_type"] == "GrantRevoked")
        .unwrap();
    assert_eq!(
        revoked["envelope"]["payload"]["reason"],
        "refresh_token_reuse"
    );
    let signins = f.admin.events_of("SignInAttempt").await;
    assert_eq!(signins[0]["envelope"]["event_type"], "SignInSucceeded");
    // The address is recorded sealed for the person (issue 17), never in clear.
    let request = &signins[0]["envelope"]["payload"]["request"];
    assert!(request["ip"].is_null(), "{request}");
    assert_eq!(request["sealed"]["subject"], f.user_id.as_str());
}

#[tokio::test]
async fn a_replayed_code_revokes_what_it_gave_and_bad_redirects_never_redirect() {
    let f = fixture("qsa-replay").await;
    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(&f, &mut browser, "openid").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, tokens) = token_request(&f, &form).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(introspect(&f, access).await["active"], true);
    let (status, body) = token_request(&f, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(introspect(&f, access).await["active"], false);

    // The session is reused: no login page, straight to consent-free redirect.
    let again = browser
        .get(&authorize_path(&f.client_id, "openid", Some(CHALLENGE)))
        .await;
    assert_eq!(again.status, 303);
    // Missing verifier on a code with a challenge.
    let code = query_param(&again.location.unwrap(), "code").unwrap();
    let (status, body) = token_request(
        &f,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // An unregistered redirect URI gets an error page, never a redirect.
    let bad = authorize_path(&f.client_id, "openid", Some(CHALLENGE))
        .replace("127.0.0.1%3A9", "evil.example");
    let page = browser.get(&bad).await;
    assert_eq!(page.status, 400);
    assert!(page.location.is_none());
    // `plain` PKCE is refused, at the client's (registered) redirect URI.
    let plain = authorize_path(&f.client_id, "openid", None)
        + "&code_challenge=abc&code_challenge_method=plain";
    let page = browser.get(&plain).await;
    assert_eq!(page.status, 303);
    assert_eq!(
        query_param(&page.location.unwrap(), "error").as_deref(),
        Some("invalid_request")
    );
}

#[tokio::test]
async fn forged_mis_addressed_and_expired_looking_tokens_are_refused() {
    let f = fixture("qsa-forged").await;
    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(&f, &mut browser, "openid organizations:read").await;
    let tokens = redeem_code(&f, &code).await;
    let access = tokens["access_token"].as_str().unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();
    let [header, payload, _] = access.split('.').collect::<Vec<_>>()[..] else {
        panic!("a JWS")
    };
    let jwks: Value = reqwest::get(format!("{}/oauth2/jwks", f.server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    // alg none.
    let none = format!(
        "{}.{payload}.",
        b64(&json!({"alg": "none", "typ": "at+jwt"}))
    );
    // HS256 keyed with the public key (the classic algorithm-confusion attack).
    let hs_header = b64(&json!({"alg": "HS256", "typ": "at+jwt", "kid": jwks["keys"][0]["kid"]}));
    let mac = hmac_sha256(&public, format!("{hs_header}.{payload}").as_bytes());
    let hs256 = format!("{hs_header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac));
    // A changed claim under the original signature.
    let mut c = claims(access);
    c["org"] = json!("someone-else");
    let tampered = format!("{header}.{}.{}", b64(&c), access.split('.').nth(2).unwrap());
    // Expired: a real signature cannot be made here, so an expired claim set is tampering too;
    // expiry itself is covered by the domain tests and the Python suite's clock.
    for (what, token) in [
        ("alg none", none),
        ("HS256 with the public key", hs256),
        ("tampered claims", tampered),
        ("an ID token (wrong type and audience)", id_token.to_owned()),
    ] {
        let r = api_with(&f.server, &token).get("/v1/organizations").await;
        assert_eq!(r.status, 401, "{what} was accepted: {}", r.body);
        assert!(r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
    }
    assert_eq!(
        api_with(&f.server, access)
            .get("/v1/organizations")
            .await
            .status,
        200
    );
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    k[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(message.iter().copied())
        .collect();
    let inner = sha2::Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    sha2::Sha256::digest(&outer).to_vec()
}

#[tokio::test]
async fn wrong_passwords_get_one_message_and_five_lock_the_account() {
    let f = fixture("qsa-lockout").await;
    let mut browser = Browser::new(f.server.url());
    let path = authorize_path(&f.client_id, "openid", Some(CHALLENGE));
    let unknown = browser.get(&path).await;
    let r = browser
        .submit(
            &unknown,
            &[
                ("email", "nobody@example.com"),
                ("password", "whatever it is"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong email or password."));
    let mut page = browser.get(&path).await;
    for attempt in 1..=5 {
        page = browser
            .submit(
                &page,
                &[("email", &f.email), ("password", "not the password")],
            )
            .await;
        let expected = if attempt < 5 { 401 } else { 429 };
        assert_eq!(page.status, expected, "attempt {attempt}");
        assert!(page.body.contains("Wrong email or password.") == (attempt < 5));
    }
    // Locked: even the right password is refused now.
    let r = browser
        .submit(&page, &[("email", &f.email), ("password", &f.password)])
        .await;
    assert_eq!(r.status, 429);
    // A form without the CSRF cookie's value is refused.
    let mut stranger = Browser::new(f.server.url());
    let r = stranger
        .submit(&page, &[("email", &f.email), ("password", &f.password)])
        .await;
    assert_eq!(r.status, 403);
    // The sign-in outcomes operators watch: five wrong passwords (the unknown address among
    // them; the fifth locks), two refusals of the locked account; the CSRF refusal is no
    // sign-in step.
    let metrics = reqwest::get(format!("{}/metrics", f.server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (outcome, count) in [("invalid_credentials", 5), ("locked", 2)] {
        let line = format!(
            "quantus_sign_ins_total{{method=\"password\",outcome=\"{outcome}\"}} {count}\n"
        );
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    let failures = f.admin.events_of("SignInAttempt").await;
    let reasons: Vec<&str> = failures
        .iter()
        .map(|e| {
            e["envelope"]["payload"]["reason"]
                .as_str()
                .unwrap_or("success")
        })
        .collect();
    assert_eq!(reasons[0], "unknown_user");
    assert_eq!(reasons.iter().filter(|r| **r == "bad_password").count(), 5);
    assert_eq!(*reasons.last().unwrap(), "locked_out");
    assert!(failures
        .iter()
        .any(|e| e["envelope"]["payload"]["locked_until"].is_string()));
    // No password, email or name anywhere in the log.
    let log = serde_json::to_string(&f.admin.all_events().await).unwrap();
    for secret in [
        &f.password,
        "not the password",
        &f.email,
        "nobody@example.com",
        "Ada Lovelace",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log");
    }
}

#[tokio::test]
async fn erasing_a_user_shreds_their_data_across_the_log_which_still_verifies() {
    let f = fixture("qsa-erase").await;
    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(&f, &mut browser, "openid organizations:read").await;
    let tokens = redeem_code(&f, &code).await;
    let user_api = api_with(&f.server, tokens["access_token"].as_str().unwrap());
    assert_eq!(user_api.get("/v1/organizations").await.status, 200);
    let before = f.admin.get(&format!("/v1/users/{}", f.user_id)).await;
    assert_eq!(before.body["email"], f.email.as_str());
    let r = f
        .admin
        .delete(&format!("/v1/users/{}?erase=true", f.user_id))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = f.admin.get(&format!("/v1/users/{}", f.user_id)).await;
    assert_eq!(after.body["status"], "erased");
    // Their live access token stops working at once.
    assert_eq!(user_api.get("/v1/organizations").await.status, 401);
    // The read model dropped the data.
    let position = r.body["position"].as_u64().unwrap();
    let list = f
        .admin
        .get(&format!("/v1/users?org={}&min_position={position}", f.org))
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let row = &list.body["items"][0];
    assert_eq!(row["status"], "erased", "{}", list.body);
    assert!(
        row["email"].is_null() && row["name"].is_null(),
        "{}",
        list.body
    );
    assert!(after.body["email"].is_null() && after.body["name"].is_null());
    // The sealed fields are still in the log, unreadable; the log verifies unchanged.
    let sealed = f
        .admin
        .events_of("User")
        .await
        .into_iter()
        .find(|e| e["envelope"]["event_type"] == "UserRegistered")
        .unwrap();
    assert!(sealed["envelope"]["payload"]["email"]["ciphertext"].is_string());
    let (ok, out) = audit_verify(&["--data-dir", f.server.data_dir.to_str().unwrap()]);
    assert!(ok, "{out}");
    // The erased person can no longer sign in, and the email is free again.
    let mut browser = Browser::new(f.server.url());
    let page = browser
        .get(&authorize_path(&f.client_id, "openid", Some(CHALLENGE)))
        .await;
    let r = browser
        .submit(&page, &[("email", &f.email), ("password", &f.password)])
        .await;
    assert_eq!(r.status, 401);
    let r = f
        .admin
        .post(
            "/v1/users",
            json!({"organization_id": f.org, "email": f.email, "name": "New Ada", "password": "another long secret"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Let the live model catch up before the server stops, so the replay is compared with
    // a model that has seen the same events.
    let caught_up = f
        .admin
        .get(&format!(
            "/v1/users?org={}&min_position={}&wait_ms=30000",
            f.org,
            r.body["position"].as_u64().unwrap()
        ))
        .await;
    assert_eq!(caught_up.status, 200, "{}", caught_up.body);
    let dup = f
        .admin
        .post(
            "/v1/users",
            json!({"organization_id": f.org, "email": f.email.to_uppercase(), "name": "Dup", "password": "another long secret"}),
        )
        .await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    // A replay cannot bring the erased data back: the rebuilt model equals the live one.
    let dir = f.server.data_dir.clone();
    drop(f);
    let store = ["--data-dir", dir.to_str().unwrap()];
    assert_model_equals_replay("users", &store);
    let rows: Vec<Value> = dump("users", &store)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows
        .iter()
        .any(|r| r["status"] == "erased" && r["email"].is_null()));
    assert!(rows.iter().any(|r| r["name"] == "New Ada"));
}

#[tokio::test]
async fn sign_in_token_consent_and_session_events_hold_address_and_agent_sealed_and_erasure_shreds_them(
) {
    let f = fixture("qsa-sealed-request").await;
    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(&f, &mut browser, "openid organizations:read").await;
    redeem_code(&f, &code).await;
    let recorded = [
        "SignInSucceeded",
        "SessionStarted",
        "ConsentGranted",
        "AuthorizationCodeIssued",
        "TokensIssued",
    ];
    let events: Vec<Value> = f
        .admin
        .all_events()
        .await
        .into_iter()
        .filter(|e| {
            recorded.contains(&e["envelope"]["event_type"].as_str().unwrap_or_default())
                && e["envelope"]["payload"]["request"]["sealed"]["subject"] == f.user_id.as_str()
        })
        .collect();
    let kinds: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["envelope"]["event_type"].as_str())
        .collect();
    assert_eq!(
        kinds.len(),
        recorded.len(),
        "sealed for the person: {kinds:?}"
    );
    for e in &events {
        let request = &e["envelope"]["payload"]["request"];
        let keys: Vec<&String> = request.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["sealed"], "{e}");
        assert!(request["sealed"]["ciphertext"].is_string(), "{e}");
        // (The redirect URI names 127.0.0.1 too: look at everything but it.)
        let mut payload = e["envelope"]["payload"].clone();
        payload.as_object_mut().unwrap().remove("redirect_uri");
        let text = payload.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("QuantusTestBrowser"),
            "in clear: {text}"
        );
    }

    // With the person's data key (as the service holds it), each opens to the real request.
    let dir = f.server.data_dir.clone();
    let db = quantus_infra::Database::open(None, &dir).await.unwrap();
    let master = quantus_infra::keystore::master_key(&dir, None).unwrap();
    let keys = quantus_infra::subject_keys::SubjectKeys::new(db.clone(), &master);
    // The addresses a person signed in from, kept for the "new address" signal.
    let known_addresses = || {
        let db = db.clone();
        let prefix = format!("{}/%", f.user_id);
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM grant_index WHERE kind = 'known-address' AND lookup LIKE $1",
            )
            .bind(prefix)
            .fetch_one(&db.pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(known_addresses().await, 1);
    let open = |e: &Value| {
        let sealed: quantus_domain::identity::Sealed =
            serde_json::from_value(e["envelope"]["payload"]["request"]["sealed"].clone()).unwrap();
        let keys = keys.clone();
        async move {
            keys.open(&sealed, quantus_domain::identity::RequestInfo::SEALED_FIELD)
                .await
                .unwrap()
                .map(|plain| serde_json::from_slice::<Value>(&plain).unwrap())
        }
    };
    for e in &events {
        let opened = open(e).await.expect("opens while the person exists");
        assert_eq!(opened["ip"], "127.0.0.1", "{opened}");
        // The token request came from the client's back end, not the browser.
        if e["envelope"]["event_type"] != "TokensIssued" {
            assert_eq!(opened["user_agent"], BROWSER_AGENT, "{opened}");
        }
    }

    // Erasure destroys the key: none of them opens any more, and the log still verifies.
    let r = f
        .admin
        .delete(&format!("/v1/users/{}?erase=true", f.user_id))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for e in &events {
        assert_eq!(open(e).await, None, "still opens after erasure: {e}");
    }
    assert_eq!(known_addresses().await, 0, "their addresses are erased too");
    let (ok, out) = audit_verify(&["--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// Signs `claims` as a JWS with the server's real token key, read from its keystore, as an
/// insider with the key (or a bug minting tokens) could: only the claim checks stand between
/// such a token and the API.
fn sign_with_server_key(dir: &std::path::Path, kid: &str, typ: &str, claims: &Value) -> String {
    use quantus_infra::keystore::Keystore;
    let keystore = quantus_infra::keystore::FileKeystore::open(dir, None).unwrap();
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": typ});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = keystore.sign_jose(kid, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[tokio::test]
async fn expired_early_and_mis_addressed_tokens_fail_even_with_a_valid_signature() {
    let dir = temp_dir("qsa-claims");
    let server = Server::embedded(&dir);
    let admin = server.client();
    let real = claims(&admin.token);
    let kid = {
        let header = admin.token.split('.').next().unwrap();
        let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        h["kid"].as_str().unwrap().to_owned()
    };
    let now = chrono::Utc::now().timestamp();
    let with = |changes: Value| {
        let mut c = real.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // The control: the same claims re-signed are accepted, so the refusals below are the
    // claim checks, not the signing.
    let control = sign_with_server_key(&dir, &kid, "at+jwt", &real);
    assert_eq!(
        api_with(&server, &control)
            .get("/v1/organizations")
            .await
            .status,
        200
    );
    for (what, typ, c) in [
        (
            "expired",
            "at+jwt",
            with(json!({"exp": now - 60, "iat": now - 700})),
        ),
        (
            "wrong audience",
            "at+jwt",
            with(json!({"aud": "https://elsewhere.example/api"})),
        ),
        (
            "wrong issuer",
            "at+jwt",
            with(json!({"iss": "https://evil.example"})),
        ),
        ("not yet valid", "at+jwt", with(json!({"nbf": now + 3600}))),
        (
            "an unknown grant",
            "at+jwt",
            with(json!({"gid": uuid::Uuid::now_v7().to_string()})),
        ),
        ("not an access token", "JWT", real.clone()),
    ] {
        let token = sign_with_server_key(&dir, &kid, typ, &c);
        let r = api_with(&server, &token).get("/v1/organizations").await;
        assert_eq!(r.status, 401, "{what} was accepted: {}", r.body);
    }
}

#[tokio::test]
async fn token_keys_rotate_without_breaking_issued_tokens_and_retiring_ends_them() {
    let dir = temp_dir("qsa-rotation");
    let server = Server::embedded(&dir);
    let admin = server.client();
    let old_token = admin.token.clone();
    let jwks = |base: String| async move {
        let v: Value = reqwest::get(format!("{base}/oauth2/jwks"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let before = jwks(server.url().to_owned()).await;
    assert_eq!(before.len(), 1);
    let r = admin
        .post("/v1/keys/rotate", json!({"purpose": "token"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["algorithm"], "Ed25519", "{}", r.body);
    let after = jwks(server.url().to_owned()).await;
    assert_eq!(after.len(), 2, "the old key stays published until retired");
    // Tokens signed before the rotation still work; new ones carry the new kid.
    assert_eq!(admin.get("/v1/organizations").await.status, 200);
    let new_token = token(&server);
    let new_kid = {
        let h = new_token.split('.').next().unwrap();
        let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
        h["kid"].as_str().unwrap().to_owned()
    };
    assert_ne!(new_kid, before[0]);
    let new_api = api_with(&server, &new_token);
    let r = new_api
        .post(&format!("/v1/keys/{}/retire", before[0]), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(jwks(server.url().to_owned()).await, vec![new_kid]);
    let r = api_with(&server, &old_token).get("/v1/organizations").await;
    assert_eq!(
        r.status, 401,
        "a token of a retired key still works: {}",
        r.body
    );
    assert_eq!(new_api.get("/v1/organizations").await.status, 200);
}

#[tokio::test]
async fn groups_hold_their_own_organizations_people() {
    let f = fixture("qsa-groups").await;
    let group = group_with_the_person(&f, "Quantum team").await;
    let shown = f.admin.get(&format!("/v1/groups/{group}")).await;
    assert_eq!(shown.body["members"], json!([f.user_id]));
    // Someone of another organization cannot join, and that organization cannot see it.
    let (other, _) = f.admin.create_org("Globex").await;
    let r = f
        .admin
        .post(
            "/v1/users",
            json!({"organization_id": other, "email": "x@globex.example", "name": "X", "password": "a long enough secret"}),
        )
        .await;
    let stranger = r.body["id"].as_str().unwrap().to_owned();
    let r = f
        .admin
        .post(
            &format!("/v1/groups/{group}/members"),
            json!({"user_id": stranger}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let (id, secret) = service_principal(&f.admin, &other, json!(["admin"])).await;
    let globex = api_with(&f.server, &client_token(f.server.url(), &id, &secret, None));
    assert_eq!(globex.get(&format!("/v1/groups/{group}")).await.status, 404);
    let r = f
        .admin
        .delete(&format!("/v1/groups/{group}/members/{}", f.user_id))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = f.admin.delete(&format!("/v1/groups/{group}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        f.admin.get(&format!("/v1/groups/{group}")).await.status,
        404
    );
}

#[tokio::test]
async fn an_authorization_code_expires_after_a_minute() {
    let f = fixture("qsa-code-expiry").await;
    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(&f, &mut browser, "openid").await;
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    let (status, body) = token_request(
        &f,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn an_organizations_groups_are_listed_in_pages_to_its_own_administrators() {
    let f = fixture("qsa-group-list").await;
    let mut made = vec![];
    let mut position = 0;
    for name in ["Alpha", "Beta", "Gamma"] {
        let r = f
            .admin
            .post(
                "/v1/groups",
                json!({"organization_id": f.org, "name": name}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        made.push(r.body["id"].as_str().unwrap().to_owned());
        position = r.body["position"].as_u64().unwrap();
    }
    made.sort();
    // Read after the last write; two per page, by id.
    let first = f
        .admin
        .get(&format!(
            "/v1/groups?org={}&limit=2&min_position={position}&wait_ms=5000",
            f.org
        ))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let ids: Vec<&str> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        made[..2].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let next = first.body["next_after"].as_str().unwrap();
    assert_eq!(next, made[1]);
    let second = f
        .admin
        .get(&format!("/v1/groups?org={}&limit=2&after={next}", f.org))
        .await;
    assert_eq!(second.body["items"][0]["id"], json!(made[2]));
    assert_eq!(second.body["items"][0]["name"], json!("Gamma"));
    assert!(second.body["next_after"].is_null(), "{}", second.body);
    assert_eq!(
        f.admin
            .get(&format!("/v1/groups?org={}&limit=0", f.org))
            .await
            .status,
        400
    );
    // Another organization's administrator: 404 for these, an empty list of their own.
    let (other, _) = f.admin.create_org("Globex").await;
    let (id, secret) = service_principal(&f.admin, &other, json!(["admin"])).await;
    let globex = api_with(&f.server, &client_token(f.server.url(), &id, &secret, None));
    assert_eq!(
        globex
            .get(&format!("/v1/groups?org={}", f.org))
            .await
            .status,
        404
    );
    let own = globex.get(&format!("/v1/groups?org={other}")).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["items"], json!([]));
    // A member (no identity:read) may not list them.
    let (id, secret) = service_principal(&f.admin, &f.org, json!(["member"])).await;
    let member = api_with(&f.server, &client_token(f.server.url(), &id, &secret, None));
    assert_eq!(
        member
            .get(&format!("/v1/groups?org={}", f.org))
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn people_end_their_own_sessions_and_administrators_end_their_peoples() {
    let f = fixture("qsa-sessions").await;
    // Two browsers, two sessions at QSA, each with its grant.
    let mut tokens = vec![];
    for i in 0..2 {
        let mut browser = Browser::new(f.server.url());
        let code = if i == 0 {
            sign_in_for_code(&f, &mut browser, "openid offline_access").await
        } else {
            // Consent was given in the first browser: the login answers the code at once.
            let login = browser
                .get(&authorize_path(
                    &f.client_id,
                    "openid offline_access",
                    Some(CHALLENGE),
                ))
                .await;
            let done = browser
                .submit(&login, &[("email", &f.email), ("password", &f.password)])
                .await;
            assert_eq!(done.status, 303, "{}", done.body);
            query_param(&done.location.unwrap(), "code").expect("a code")
        };
        tokens.push(redeem_code(&f, &code).await);
    }
    let refresh = |i: usize| tokens[i]["refresh_token"].as_str().unwrap().to_owned();
    let person = api_with(&f.server, tokens[0]["access_token"].as_str().unwrap());
    let mine = person.get("/v1/me/sessions").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    let items = mine.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{}", mine.body);
    let here = items.iter().find(|s| s["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let there = items.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(items.iter().all(|s| s["amr"] == json!(["pwd"])));
    // The person ends the other browser's session: its grant (and refresh token) dies too.
    let r = person.delete(&format!("/v1/me/sessions/{there}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = token_request(
        &f,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh(1)),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let again = person.delete(&format!("/v1/me/sessions/{there}")).await;
    assert_eq!(again.status, 404, "{}", again.body);
    // A member may not list other people's sessions (nor their own through that route).
    assert_eq!(
        person
            .get(&format!("/v1/users/{}/sessions", f.user_id))
            .await
            .status,
        403
    );
    // Another organization's administrator: 404, nothing ended.
    let (other, _) = f.admin.create_org("Globex").await;
    let (id, secret) = service_principal(&f.admin, &other, json!(["admin"])).await;
    let globex = api_with(&f.server, &client_token(f.server.url(), &id, &secret, None));
    let path = format!("/v1/users/{}/sessions", f.user_id);
    assert_eq!(globex.get(&path).await.status, 404);
    let r = globex.delete(&format!("{path}/{here}")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    // Their own organization's administrator sees the one left and ends it.
    let listed = f.admin.get(&path).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["items"][0]["id"], json!(here));
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    let r = f.admin.delete(&format!("{path}/{here}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = token_request(
        &f,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh(0)),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(f.admin.get(&path).await.body["items"], json!([]));
}

/// The ids in a list answer's `items`, under `key`.
fn listed(body: &Value, key: &str) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {body}"))
        .iter()
        .map(|i| i[key].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_organizations_clients_scim_tokens_and_saml_providers_are_listed_to_its_own_administrators_without_secrets(
) {
    let f = fixture("qsa-lists").await;
    // Acme: a web client (the fixture's), a service principal, a public client later disabled.
    let (sp_id, sp_secret) = service_principal(&f.admin, &f.org, json!(["admin"])).await;
    let r = f
        .admin
        .post(
            "/v1/clients",
            json!({"organization_id": f.org, "name": "Acme Mobile", "kind": "public",
                   "redirect_uris": ["com.acme.app:/cb"], "grant_types": ["authorization_code"],
                   "scopes": ["openid"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mobile = r.body["client_id"].as_str().unwrap().to_owned();
    let r = f
        .admin
        .post(&format!("/v1/clients/{mobile}/disable"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Two SCIM tokens, one revoked.
    let mut tokens = vec![];
    for name in ["Okta", "Entra"] {
        let r = f
            .admin
            .post(
                &format!("/v1/organizations/{}/scim-tokens", f.org),
                json!({ "name": name }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        tokens.push((
            r.body["id"].as_str().unwrap().to_owned(),
            r.body["token"].as_str().unwrap().to_owned(),
        ));
    }
    let revoke = f
        .admin
        .delete(&format!(
            "/v1/organizations/{}/scim-tokens/{}",
            f.org, tokens[1].0
        ))
        .await;
    assert_eq!(revoke.status, 200, "{}", revoke.body);
    // Two SAML service providers, one removed afterwards.
    let mut sps = vec![];
    for host in ["expenses", "travel"] {
        let r = f
            .admin
            .post(
                "/v1/saml/service-providers",
                json!({"organization_id": f.org, "entity_id": format!("https://{host}.acme.example/saml"),
                       "name": host, "acs_urls": [format!("https://{host}.acme.example/acs")],
                       "name_id_format": "email_address"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        sps.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let removed = f
        .admin
        .delete(&format!("/v1/saml/service-providers/{}", sps[1]))
        .await;
    assert!(removed.status < 300, "{}", removed.body);

    // Acme's admin (a service principal of Acme with the admin role) reads all three lists.
    let acme = api_with(
        &f.server,
        &client_token(f.server.url(), &sp_id, &sp_secret, None),
    );
    let clients = acme.get(&format!("/v1/clients?org={}", f.org)).await;
    assert_eq!(clients.status, 200, "{}", clients.body);
    let mut want = vec![f.client_id.clone(), sp_id.clone(), mobile.clone()];
    want.sort();
    assert_eq!(listed(&clients.body, "client_id"), want, "by client id");
    assert!(clients.body["next_after"].is_null());
    let item = |id: &str| {
        clients.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(item(&mobile)["kind"], "public");
    assert_eq!(item(&mobile)["disabled"], true);
    assert_eq!(item(&mobile)["grant_types"], json!(["authorization_code"]));
    assert_eq!(item(&sp_id)["kind"], "service");
    assert_eq!(item(&sp_id)["disabled"], false);
    assert_eq!(item(&f.client_id)["name"], "Acme Console");
    // Pages of two, by id.
    let first = acme
        .get(&format!("/v1/clients?org={}&limit=2", f.org))
        .await;
    assert_eq!(listed(&first.body, "client_id"), want[..2]);
    let next = first.body["next_after"].as_str().unwrap();
    assert_eq!(next, want[1]);
    let second = acme
        .get(&format!("/v1/clients?org={}&limit=2&after={next}", f.org))
        .await;
    assert_eq!(listed(&second.body, "client_id"), want[2..]);
    assert!(second.body["next_after"].is_null());
    assert_eq!(
        acme.get(&format!("/v1/clients?org={}&limit=0", f.org))
            .await
            .status,
        400
    );

    let scim = acme
        .get(&format!("/v1/organizations/{}/scim-tokens", f.org))
        .await;
    assert_eq!(scim.status, 200, "{}", scim.body);
    let mut want_tokens: Vec<String> = tokens.iter().map(|t| t.0.clone()).collect();
    want_tokens.sort();
    assert_eq!(listed(&scim.body, "id"), want_tokens);
    for t in scim.body["items"].as_array().unwrap() {
        let revoked = t["id"] == json!(tokens[1].0);
        assert_eq!(t["revoked"], revoked, "{t}");
        assert_eq!(t["name"], if revoked { "Entra" } else { "Okta" });
        assert!(t["created_at"].as_str().unwrap().ends_with('Z'), "{t}");
    }
    let saml = acme
        .get(&format!("/v1/saml/service-providers?org={}", f.org))
        .await;
    assert_eq!(saml.status, 200, "{}", saml.body);
    assert_eq!(
        listed(&saml.body, "id"),
        vec![sps[0].clone()],
        "the removed one is not listed"
    );
    assert_eq!(
        saml.body["items"][0]["entity_id"],
        "https://expenses.acme.example/saml"
    );
    assert_eq!(
        saml.body["items"][0]["acs_urls"],
        json!(["https://expenses.acme.example/acs"])
    );

    // No secret, token or digest appears in any list.
    for body in [
        &clients.body,
        &first.body,
        &second.body,
        &scim.body,
        &saml.body,
    ] {
        let text = body.to_string();
        for secret in [&f.client_secret, &sp_secret, &tokens[0].1, &tokens[1].1] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret is listed: {text}"
            );
        }
        let secret_part = tokens[0].1.split('.').next_back().unwrap();
        assert!(!text.contains(secret_part), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("sha256") && !text.contains("\"token\""),
            "{text}"
        );
    }

    // Globex's admin: 404 for Acme's lists; their own lists hold none of Acme's.
    let (other, _) = f.admin.create_org("Globex").await;
    let (id, secret) = service_principal(&f.admin, &other, json!(["admin"])).await;
    let globex = api_with(&f.server, &client_token(f.server.url(), &id, &secret, None));
    for path in [
        format!("/v1/clients?org={}", f.org),
        format!("/v1/organizations/{}/scim-tokens", f.org),
        format!("/v1/saml/service-providers?org={}", f.org),
    ] {
        let r = globex.get(&path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(!r.body.to_string().contains("Acme"), "{}", r.body);
    }
    let own = globex.get(&format!("/v1/clients?org={other}")).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(
        listed(&own.body, "client_id"),
        vec![id.clone()],
        "only their own"
    );
    let own = globex
        .get(&format!("/v1/organizations/{other}/scim-tokens"))
        .await;
    assert_eq!(own.body["items"], json!([]), "{}", own.body);
    let own = globex
        .get(&format!("/v1/saml/service-providers?org={other}"))
        .await;
    assert_eq!(own.body["items"], json!([]), "{}", own.body);
    // A member (no identity:read) may not list them.
    let (id, secret) = service_principal(&f.admin, &f.org, json!(["member"])).await;
    let member = api_with(&f.server, &client_token(f.server.url(), &id, &secret, None));
    for path in [
        format!("/v1/clients?org={}", f.org),
        format!("/v1/organizations/{}/scim-tokens", f.org),
        format!("/v1/saml/service-providers?org={}", f.org),
    ] {
        assert_eq!(member.get(&path).await.status, 403, "{path}");
    }
}

/// Sessions started by a version that did not index them by person: the next start indexes
/// the live ones from the log (once: a marker row), and they are listed and ended like others.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_started_before_the_person_index_are_indexed_at_the_next_start() {
    let dir = temp_dir("qsa-session-backfill");
    let mut f = fixture_on(Server::embedded(&dir)).await;
    let mut browser = Browser::new(f.server.url());
    sign_in_for_code(&f, &mut browser, "openid").await;
    let path = format!("/v1/users/{}/sessions", f.user_id);
    let listed = f.admin.get(&path).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let session = listed.body["items"][0]["id"].as_str().unwrap().to_owned();
    f.server.terminate(std::time::Duration::from_secs(20));

    // As an older version left it: no person → session rows, no marker.
    let url = format!("sqlite://{}?mode=rwc", dir.join("quantus.db").display());
    let db = pool(&url).await;
    for kind in ["user-session", "index-migration"] {
        sqlx::query("DELETE FROM grant_index WHERE kind = $1")
            .bind(kind)
            .execute(&db)
            .await
            .unwrap();
    }
    db.close().await;

    let mut server = Server::embedded(&dir);
    let admin = server.client();
    let listed = admin.get(&path).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [session.as_str()], "{}", listed.body);
    // Once per store: the marker is there, and a second start changes nothing.
    server.terminate(std::time::Duration::from_secs(20));
    let db = pool(&url).await;
    let marked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM grant_index WHERE kind = 'index-migration'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(marked, 1);
    db.close().await;
    let server = Server::embedded(&dir);
    let admin = server.client();
    let listed = admin.get(&path).await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
    // An administrator ends it from the console's API like any other.
    let r = admin.delete(&format!("{path}/{session}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = admin.get(&path).await;
    assert_eq!(listed.body["items"], json!([]), "{}", listed.body);
}
