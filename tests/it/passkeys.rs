//! Passkeys (WebAuthn) against a software authenticator not written here: kanidm's
//! `webauthn-authenticator-rs` SoftPasskey (packed attestation, user verification, a signature
//! counter). Registration, the passkey as a second factor, replays and `amr`/`acr`.
//! Passkey-only sign-in with a discoverable credential is exercised in headless Chromium with
//! a virtual authenticator (`tests/browser`).

use std::collections::HashMap;

use serde_json::{json, Value};
use webauthn_authenticator_rs::prelude::*;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::harness::{free_port, temp_dir, Api, Server};
use crate::qsa::{authorize_path, claims, query_param, Browser, CHALLENGE, REDIRECT, VERIFIER};

/// An embedded server whose public URL is `http://localhost:PORT` (WebAuthn needs a domain
/// name; browsers treat localhost as secure).
pub fn localhost_server(label: &str, env: &[(&str, &str)]) -> (Server, String) {
    let port = free_port();
    let public = format!("http://localhost:{port}");
    let listen = format!("127.0.0.1:{port}");
    let mut vars = vec![("QUANTUS_PUBLIC_URL", public.as_str())];
    vars.extend_from_slice(env);
    let mut server = Server::start(&temp_dir(label), &["--listen", &listen], &vars);
    // Clients use the public URL (the issuer), as a browser would.
    server.url = Some(public.clone());
    (server, public)
}

struct Person {
    email: String,
    password: String,
    client_id: String,
    client_secret: String,
}

async fn setup(admin: &Api) -> Person {
    let (org, _) = admin.create_org("Acme").await;
    let email = format!("grace+{}@example.com", uuid::Uuid::now_v7().simple());
    let password = "correct horse battery staple".to_owned();
    let r = admin
        .post(
            "/v1/users",
            json!({"organization_id": org, "email": email, "name": "Grace Hopper", "password": password, "roles": ["member"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin
        .post(
            "/v1/clients",
            json!({"organization_id": org, "name": "Console", "kind": "confidential",
                   "redirect_uris": [REDIRECT], "grant_types": ["authorization_code"],
                   "scopes": ["openid"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    Person {
        email,
        password,
        client_id: r.body["client_id"].as_str().unwrap().to_owned(),
        client_secret: r.body["client_secret"].as_str().unwrap().to_owned(),
    }
}

async fn exchange(public: &str, p: &Person, location: &str) -> Value {
    let code = query_param(location, "code").expect("a code");
    let res = reqwest::Client::new()
        .post(format!("{public}/oauth2/token"))
        .basic_auth(&p.client_id, Some(&p.client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Hidden fields of the form with `id`.
fn form_fields(html: &str, id: &str) -> HashMap<String, String> {
    let start = html.find(&format!("<form id=\"{id}\"")).expect("the form");
    let end = start + html[start..].find("</form>").unwrap();
    html[start..end]
        .split("<input type=\"hidden\"")
        .skip(1)
        .filter_map(|chunk| {
            let attr = |a: &str| {
                let key = format!("{a}=\"");
                let at = chunk.find(&key)? + key.len();
                let end = chunk[at..].find('"')?;
                Some(
                    chunk[at..at + end]
                        .replace("&quot;", "\"")
                        .replace("&amp;", "&"),
                )
            };
            Some((attr("name")?, attr("value")?))
        })
        .collect()
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    cookies: &str,
    fields: &HashMap<String, String>,
) -> (u16, Option<String>, String) {
    let res = http
        .post(url)
        .header("cookie", cookies)
        .form(fields)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (status, location, res.text().await.unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn a_software_authenticator_registers_and_serves_as_the_second_factor() {
    let (server, public) = localhost_server("passkeys", &[]);
    scenario(&server, &public).await;
}

/// Registration, second factor and replays against `server`, public at `public`.
pub async fn scenario(server: &Server, public: &str) {
    let public = public.to_owned();
    let admin = server.client();
    let p = setup(&admin).await;
    let origin = Url::parse(&public).unwrap();

    // Sign in with the password (no second factor yet) and take the person's token.
    let mut browser = Browser::new(&public);
    let login = browser
        .get(&authorize_path(&p.client_id, "openid", Some(CHALLENGE)))
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let consent = browser
        .submit(&login, &[("email", &p.email), ("password", &p.password)])
        .await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    let done = browser.submit(&consent, &[("decision", "allow")]).await;
    let tokens = exchange(&public, &p, &done.location.unwrap()).await;
    let me = Api {
        base: public.clone(),
        token: tokens["access_token"].as_str().unwrap().to_owned(),
        http: reqwest::Client::new(),
    };

    // Registration: packed attestation from the soft authenticator.
    let mut authenticator = WebauthnAuthenticator::new(SoftPasskey::new(true));
    let r = me.post("/v1/me/passkeys/options", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let options: CreationChallengeResponse =
        serde_json::from_value(r.body["options"].clone()).unwrap();
    assert_eq!(r.body["options"]["publicKey"]["rp"]["id"], "localhost");
    let credential = authenticator
        .do_registration(origin.clone(), options)
        .expect("the soft authenticator registers");
    let ceremony = r.body["ceremony"].as_str().unwrap().to_owned();
    let body = json!({"ceremony": ceremony, "credential": credential, "name": "soft key"});
    let r = me.post("/v1/me/passkeys", body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The same ceremony cannot register twice.
    let again = me.post("/v1/me/passkeys", body).await;
    assert_eq!(again.status, 422, "{}", again.body);
    let list = me.get("/v1/me/passkeys").await;
    assert_eq!(
        list.body["items"][0]["attestation_format"], "packed",
        "{}",
        list.body
    );
    // An answer whose client data names another origin (a phishing site relaying it) is
    // refused.
    let r = me.post("/v1/me/passkeys/options", json!({})).await;
    let options: CreationChallengeResponse =
        serde_json::from_value(r.body["options"].clone()).unwrap();
    let mut other = WebauthnAuthenticator::new(SoftPasskey::new(true));
    let mut phished = serde_json::to_value(
        other
            .do_registration(origin.clone(), options)
            .expect("registers"),
    )
    .unwrap();
    {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let field = &mut phished["response"]["clientDataJSON"];
        let mut client: Value =
            serde_json::from_slice(&b64.decode(field.as_str().unwrap()).unwrap()).unwrap();
        client["origin"] = json!("https://login.evil.example");
        *field = json!(b64.encode(client.to_string()));
    }
    let r = me
        .post(
            "/v1/me/passkeys",
            json!({"ceremony": r.body["ceremony"], "credential": phished, "name": "phished"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // Sign in again: after the password, the passkey is the second factor.
    let mut second_browser = Browser::new(&public);
    let login = second_browser
        .get(&authorize_path(&p.client_id, "openid", Some(CHALLENGE)))
        .await;
    let second = second_browser
        .submit(&login, &[("email", &p.email), ("password", &p.password)])
        .await;
    assert!(second.body.contains("Use a passkey"), "{}", second.body);
    let fields = form_fields(&second.body, "passkey-form");
    let opts = reqwest::Client::new()
        .post(format!("{public}/oauth2/passkey/options"))
        .json(&json!({"pending": fields["pending"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(opts.status(), 200);
    let opts: Value = opts.json().await.unwrap();
    let request: RequestChallengeResponse =
        serde_json::from_value(opts["options"].clone()).unwrap();
    let assertion = authenticator
        .do_authentication(origin.clone(), request)
        .expect("the soft authenticator signs");
    let cookies = second_browser_cookies(&second_browser);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut answer = fields.clone();
    answer.insert("ceremony".into(), opts["ceremony"].as_str().unwrap().into());
    answer.insert(
        "credential".into(),
        serde_json::to_string(&assertion).unwrap(),
    );
    let (status, location, page) = post_form(
        &http,
        &format!("{public}/oauth2/login/second-factor"),
        &cookies,
        &answer,
    )
    .await;
    assert_eq!(status, 303, "{page}");
    let tokens = exchange(&public, &p, &location.unwrap()).await;
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["amr"], json!(["pwd", "hwk", "mfa"]), "{id}");
    // A passkey answer is bound to the origin: phishing-resistant.
    assert_eq!(id["acr"], "urn:quantus:acr:phishing-resistant");

    // The same answer again (same ceremony): refused. With a fresh ceremony: refused too, its
    // challenge differs.
    let (status, _, _) = post_form(
        &http,
        &format!("{public}/oauth2/login/second-factor"),
        &cookies,
        &answer,
    )
    .await;
    assert_eq!(status, 401);
    let fresh: Value = reqwest::Client::new()
        .post(format!("{public}/oauth2/passkey/options"))
        .json(&json!({"pending": fields["pending"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer.insert(
        "ceremony".into(),
        fresh["ceremony"].as_str().unwrap().into(),
    );
    let (status, _, _) = post_form(
        &http,
        &format!("{public}/oauth2/login/second-factor"),
        &cookies,
        &answer,
    )
    .await;
    assert_eq!(status, 401);
    let attempts = admin.events_of("SignInAttempt").await;
    assert!(
        attempts
            .iter()
            .filter(|e| e["envelope"]["payload"]["reason"] == "bad_passkey")
            .count()
            >= 2
    );
    // Each use recorded the authenticator's counter.
    let used: Vec<u64> = admin
        .events_of("PasskeyCredentials")
        .await
        .iter()
        .filter(|e| e["envelope"]["event_type"] == "PasskeyUsed")
        .map(|e| e["envelope"]["payload"]["counter"].as_u64().unwrap())
        .collect();
    assert_eq!(used, [1]);
    // The credential is sealed with the person's data key; its public key is in no event in
    // clear.
    let registered = admin
        .events_of("PasskeyCredentials")
        .await
        .into_iter()
        .find(|e| e["envelope"]["event_type"] == "PasskeyRegistered")
        .unwrap();
    assert!(registered["envelope"]["payload"]["credential"]["ciphertext"].is_string());
}

fn second_browser_cookies(b: &Browser) -> String {
    b.cookie_header()
}
