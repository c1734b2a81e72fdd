//! QSA as a SAML 2.0 identity provider, checked by an SP library not written here: pysaml2,
//! which verifies our XML signatures with xmlsec1 (`tests/saml/sp.py`, installed by
//! `scripts/saml.sh`). The browser flow goes through the real login page; the attacks
//! (signature wrapping, replay, wrong audience or recipient, expiry, unregistered SPs and ACS
//! URLs, bad request signatures) must each be refused.

use std::process::Command;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::*;
use crate::qsa::{fixture, group_with_the_person, Browser, Fixture, Page};

pub const SP: &str = "https://sp.example.test/metadata";
pub const ACS: &str = "https://sp.example.test/acs";
pub const SLO: &str = "https://sp.example.test/slo";

fn install() -> &'static str {
    static XMLSEC: OnceLock<String> = OnceLock::new();
    XMLSEC.get_or_init(|| installed("scripts/saml.sh", "scripts/saml.sh failed:", "XMLSEC1"))
}

/// Runs the Python SP; (accepted, its JSON answer).
pub fn sp_py(args: &[&str]) -> (bool, Value) {
    let xmlsec = install();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/saml/sp.py"))
        .args(args)
        .env("XMLSEC1", xmlsec)
        .output()
        .expect("run python3 tests/saml/sp.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "sp.py {args:?} printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

/// The form QSA auto-submits to the SP: (action, SAMLResponse, RelayState).
pub fn auto_post(page: &Page) -> (String, String, Option<String>) {
    assert_eq!(page.status, 200, "{}", page.body);
    let field = |name: &str| -> Option<String> {
        let key = format!("name=\"{name}\" value=\"");
        let at = page.body.find(&key)? + key.len();
        let end = page.body[at..].find('"')?;
        Some(
            page.body[at..at + end]
                .replace("&quot;", "\"")
                .replace("&amp;", "&"),
        )
    };
    let key = "<form method=\"post\" action=\"";
    let at = page.body.find(key).expect("an auto-submitting form") + key.len();
    let end = page.body[at..].find('"').unwrap();
    let action = page.body[at..at + end].replace("&amp;", "&");
    (
        action,
        field("SAMLResponse").expect("SAMLResponse"),
        field("RelayState"),
    )
}

async fn register(f: &Fixture, entity_id: &str, certificate: Option<&str>) -> String {
    let r = f
        .admin
        .post(
            "/v1/saml/service-providers",
            json!({
                "organization_id": f.org, "entity_id": entity_id, "name": "Example SP",
                "acs_urls": [ACS], "slo_url": SLO, "certificate": certificate,
                "name_id_format": "email_address",
                "attributes": {"mail": "email", "displayName": "name", "role": "roles"},
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

fn sp_args<'a>(metadata: &'a str, sp: &'a str, acs: &'a str) -> Vec<&'a str> {
    vec!["--metadata", metadata, "--sp", sp, "--acs", acs]
}

/// SP-initiated sign-on over HTTP-Redirect for a browser that already has a session: the
/// request id and the base64 Response QSA posts back.
async fn sso(browser: &mut Browser, metadata: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["authn"];
    args.extend(sp_args(metadata, SP, ACS));
    args.extend(extra);
    let (ok, authn) = sp_py(&args);
    assert!(ok, "{authn}");
    let page = browser.get(authn["url"].as_str().unwrap()).await;
    let (action, response, relay) = auto_post(&page);
    assert_eq!(action, ACS);
    assert_eq!(relay.as_deref(), Some("rs-1"));
    (authn["request_id"].as_str().unwrap().to_owned(), response)
}

fn acs(
    metadata: &str,
    state: &str,
    request_id: Option<&str>,
    response: &str,
    extra: &[&str],
) -> (bool, Value) {
    acs_of(metadata, (SP, ACS), state, request_id, response, extra)
}

/// What the SP with entity id `sp` and assertion consumer `acs_url` makes of a Response.
fn acs_of(
    metadata: &str,
    (sp, acs_url): (&str, &str),
    state: &str,
    request_id: Option<&str>,
    response: &str,
    extra: &[&str],
) -> (bool, Value) {
    let mut args = vec!["acs"];
    args.extend(sp_args(metadata, sp, acs_url));
    args.extend(["--state", state, "--response", response]);
    if let Some(r) = request_id {
        args.extend(["--request-id", r]);
    }
    args.extend(extra);
    sp_py(&args)
}

/// Asserts the SP refused, and shows why (the test log then documents each reason).
fn expect_refusal(ok: bool, answer: &Value, what: &str, reason: &str) {
    assert!(!ok, "{what}: {answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains(reason),
        "{what}, but not for the expected reason ({reason}): {answer}"
    );
    eprintln!("refused as expected ({what}): {}", answer["error"]);
}

/// The whole scenario on a running server (also run on Postgres and Kafka).
pub async fn scenario(f: &Fixture) {
    let base = f.server.url().to_owned();
    let metadata = format!("{base}/saml/metadata");
    let state_file = temp_dir("saml-sp-state").join("state.json");
    let state = state_file.to_str().unwrap();

    // Metadata: entity id, signing certificate, both bindings, logout, NameID formats.
    let md = reqwest::get(&metadata).await.unwrap();
    assert_eq!(md.status(), 200);
    assert_eq!(md.headers()["content-type"], "application/samlmetadata+xml");
    let md = md.text().await.unwrap();
    for needle in [
        &format!("entityID=\"{base}/saml/metadata\""),
        "<md:KeyDescriptor use=\"signing\">",
        "<ds:X509Certificate>",
        "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect",
        "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST",
        "<md:SingleLogoutService",
        "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    ] {
        assert!(md.contains(needle), "metadata lacks {needle}: {md}");
    }

    let sp_id = register(f, SP, None).await;
    // Another organization's caller does not see it; the same entity id cannot be taken twice.
    let r = f
        .admin
        .get(&format!("/v1/saml/service-providers/{sp_id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["entity_id"], SP);
    let r = f
        .admin
        .post(
            "/v1/saml/service-providers",
            json!({"organization_id": f.org, "entity_id": SP, "name": "again", "acs_urls": [ACS], "name_id_format": "persistent"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = f
        .admin
        .post(
            "/v1/saml/service-providers",
            json!({"organization_id": f.org, "entity_id": "https://x.example.test", "name": "x", "acs_urls": ["http://x.example.test/acs"], "name_id_format": "persistent"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // SP-initiated over HTTP-Redirect, through the login page.
    let mut browser = Browser::new(&base);
    let (ok, authn) = sp_py(&[&["authn"][..], &sp_args(&metadata, SP, ACS)].concat());
    assert!(ok, "{authn}");
    let request_id = authn["request_id"].as_str().unwrap().to_owned();
    let login = browser.get(authn["url"].as_str().unwrap()).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("Sign in"), "{}", login.body);
    let back = browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await;
    assert_eq!(back.status, 303, "{}", back.body);
    let resume = back.location.clone().unwrap();
    assert!(resume.starts_with("/saml/sso/continue?"), "{resume}");
    let page = browser.get(&resume).await;
    let (action, response, relay) = auto_post(&page);
    assert_eq!(action, ACS);
    assert_eq!(relay.as_deref(), Some("rs-1"));

    let (ok, accepted) = acs(&metadata, state, Some(&request_id), &response, &[]);
    assert!(ok, "the independent SP refused our Response: {accepted}");
    assert_eq!(accepted["name_id"], f.email.as_str());
    assert_eq!(
        accepted["name_id_format"],
        "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    );
    assert_eq!(accepted["issuer"], format!("{base}/saml/metadata"));
    assert_eq!(accepted["audience"], json!([SP]));
    assert_eq!(accepted["recipient"], ACS);
    assert_eq!(accepted["in_response_to"], request_id.as_str());
    assert_eq!(accepted["assertion_signed"], true);
    assert_eq!(accepted["response_signed"], true);
    assert_eq!(
        accepted["authn_context"],
        "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
    );
    assert_eq!(accepted["attributes"]["mail"], json!([f.email]));
    assert_eq!(
        accepted["attributes"]["displayName"],
        json!(["Ada Lovelace"])
    );
    assert_eq!(accepted["attributes"]["role"], json!(["member"]));
    let session_index = accepted["session_index"].as_str().unwrap().to_owned();

    // Replay: the same Response again is refused by the SP.
    let (ok, refused) = acs(&metadata, state, Some(&request_id), &response, &[]);
    expect_refusal(ok, &refused, "a replayed Response was accepted", "replayed");

    // Expiry: checked ten minutes later (NotOnOrAfter is five minutes).
    let (rid, response) = sso(&mut browser, &metadata, &[]).await;
    let (ok, refused) = acs(
        &metadata,
        state,
        Some(&rid),
        &response,
        &["--offset", "600"],
    );
    expect_refusal(ok, &refused, "an expired Response was accepted", "too old");

    // Wrong audience: an SP with another entity id refuses it.
    let (rid, response) = sso(&mut browser, &metadata, &[]).await;
    let (ok, refused) = acs_of(
        &metadata,
        ("https://other.example.test/metadata", ACS),
        state,
        Some(&rid),
        &response,
        &[],
    );
    expect_refusal(
        ok,
        &refused,
        "a Response for another audience was accepted",
        "AudienceRestrictions",
    );

    // Wrong recipient: an SP at another ACS URL refuses it.
    let (rid, response) = sso(&mut browser, &metadata, &[]).await;
    let (ok, refused) = acs_of(
        &metadata,
        (SP, "https://sp.example.test/other-acs"),
        state,
        Some(&rid),
        &response,
        &[],
    );
    expect_refusal(
        ok,
        &refused,
        "a Response for another recipient was accepted",
        "recipient",
    );

    // SP-initiated over HTTP-POST: QSA continues with a top-level GET (where the SameSite=Lax
    // session cookie is sent) and answers the same way.
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&metadata, SP, ACS),
            &["--binding", "post"],
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let form = Page {
        status: 200,
        location: None,
        body: authn["form"].as_str().unwrap().replace(&base, ""),
    };
    assert!(form.body.contains("action=\"/saml/sso\""), "{}", form.body);
    let back = browser.submit(&form, &[]).await;
    assert_eq!(back.status, 303, "{}", back.body);
    let page = browser.get(&back.location.unwrap()).await;
    let (action, response, relay) = auto_post(&page);
    assert_eq!((action.as_str(), relay.as_deref()), (ACS, Some("rs-1")));
    let rid = authn["request_id"].as_str().unwrap();
    let (ok, accepted) = acs(&metadata, state, Some(rid), &response, &[]);
    assert!(ok, "{accepted}");
    assert_eq!(accepted["in_response_to"], rid);

    // Signature wrapping: an evil unsigned assertion next to (or around) the signed one.
    let (rid, response) = sso(&mut browser, &metadata, &[]).await;
    let xml = String::from_utf8(STANDARD.decode(&response).unwrap()).unwrap();
    let start = xml.find("<saml:Assertion ").unwrap();
    let end = xml.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
    let signed = &xml[start..end];
    let sig_start = signed.find("<ds:Signature").unwrap();
    let sig_end = signed.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let evil = format!("{}{}", &signed[..sig_start], &signed[sig_end..])
        .replace(&f.email, "mallory@evil.example")
        .replace(" ID=\"_", " ID=\"_evil");
    // (a) evil assertion first, signed one after; (b) the same with the Response's own
    // signature removed; (c) the signed assertion moved inside the evil one.
    let a = format!("{}{evil}{}", &xml[..start], &xml[start..]);
    let rsig_start = xml.find("<ds:Signature").unwrap();
    let rsig_end = xml.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    assert!(
        rsig_start < start,
        "the Response's signature precedes its assertion"
    );
    let unsigned_response = format!("{}{}", &xml[..rsig_start], &xml[rsig_end..]);
    let ustart = unsigned_response.find("<saml:Assertion ").unwrap();
    let b = format!(
        "{}{evil}{}",
        &unsigned_response[..ustart],
        &unsigned_response[ustart..]
    );
    let uend = unsigned_response.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
    let c = format!(
        "{}{}{}{}",
        &unsigned_response[..ustart],
        evil.replace(
            "</saml:Assertion>",
            &format!(
                "<saml:Advice>{}</saml:Advice></saml:Assertion>",
                &unsigned_response[ustart..uend]
            )
        ),
        "",
        &unsigned_response[uend..]
    );
    for (name, wrapped) in [("evil first", a), ("unsigned response", b), ("nested", c)] {
        let (ok, refused) = acs(
            &metadata,
            state,
            Some(&rid),
            &STANDARD.encode(wrapped.as_bytes()),
            &[],
        );
        expect_refusal(
            ok,
            &refused,
            &format!("wrapped Response ({name}) was accepted"),
            "Signature",
        );
    }
    // ...while the untouched Response of that same exchange is what the SP accepts.
    let (ok, accepted) = acs(&metadata, state, Some(&rid), &response, &[]);
    assert!(ok, "{accepted}");
    assert_eq!(accepted["name_id"], f.email.as_str());

    // Requests QSA refuses: an unregistered SP, an unregistered ACS URL.
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&metadata, "https://unknown.example.test/metadata", ACS),
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let page = browser.get(authn["url"].as_str().unwrap()).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(
        page.body
            .contains("is not a registered SAML service provider"),
        "{}",
        page.body
    );
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&metadata, SP, "https://sp.example.test/evil-acs"),
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let page = browser.get(authn["url"].as_str().unwrap()).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("is not registered"), "{}", page.body);

    // IdP-initiated: unsolicited, accepted only by an SP that allows it.
    let page = browser
        .get(&format!(
            "/saml/sso/idp-initiated?sp={}&RelayState=home",
            url::form_urlencoded::byte_serialize(SP.as_bytes()).collect::<String>()
        ))
        .await;
    let (_, response, relay) = auto_post(&page);
    assert_eq!(relay.as_deref(), Some("home"));
    let (ok, refused) = acs(&metadata, state, None, &response, &[]);
    expect_refusal(
        ok,
        &refused,
        "an unsolicited Response was accepted without allow_unsolicited",
        "Unsolicited",
    );
    let (ok, accepted) = acs(&metadata, state, None, &response, &["--unsolicited"]);
    assert!(ok, "{accepted}");
    assert_eq!(accepted["in_response_to"], Value::Null);

    // Audit: one SamlAssertionIssued per Response, naming the SP, user and session, with no
    // personal data in clear.
    let issued: Vec<Value> = f
        .admin
        .events_of("SamlExchange")
        .await
        .into_iter()
        .filter(|e| e["envelope"]["event_type"] == "SamlAssertionIssued")
        .collect();
    assert!(issued.len() >= 6, "{issued:?}");
    for e in &issued {
        let text = e.to_string();
        assert!(!text.contains(&f.email), "{text}");
        assert!(!text.contains("Ada Lovelace"), "{text}");
    }
    assert!(issued
        .iter()
        .any(|e| e.to_string().contains(&f.user_id) && e.to_string().contains(&session_index)));

    // Single logout (SP-initiated, HTTP-Redirect): the session ends, a signed LogoutResponse
    // goes to the SP's SLO URL, and the next sign-on asks for the password again.
    let mut args = vec!["logout"];
    args.extend(sp_args(&metadata, SP, ACS));
    args.extend([
        "--slo",
        SLO,
        "--name-id",
        &f.email,
        "--session-index",
        &session_index,
    ]);
    let (ok, logout) = sp_py(&args);
    assert!(ok, "{logout}");
    // Over the binding of the request (HTTP-Redirect, issue 14 item 6): a signed query.
    let page = browser.get(logout["url"].as_str().unwrap()).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let to = page.location.clone().unwrap();
    assert!(to.starts_with(&format!("{SLO}?SAMLResponse=")), "{to}");
    assert!(to.contains("&Signature="), "{to}");
    let mut args = vec!["logout-response"];
    args.extend(sp_args(&metadata, SP, ACS));
    args.extend(["--slo", SLO, "--redirect-url", &to]);
    let (ok, answer) = sp_py(&args);
    assert!(ok, "the SP refused our LogoutResponse: {answer}");
    assert_eq!(answer["binding"], "redirect");
    assert_eq!(
        answer["status"],
        "urn:oasis:names:tc:SAML:2.0:status:Success"
    );
    assert_eq!(answer["in_response_to"], logout["request_id"]);
    assert_eq!(answer["signed"], true);
    let (ok, authn) = sp_py(&[&["authn"][..], &sp_args(&metadata, SP, ACS)].concat());
    assert!(ok, "{authn}");
    let page = browser.get(authn["url"].as_str().unwrap()).await;
    assert!(page.body.contains("Sign in"), "{}", page.body);
    let ended = f.admin.events_of("Session").await;
    assert!(ended
        .iter()
        .any(|e| e["envelope"]["event_type"] == "SessionEnded"
            && e["envelope"]["aggregate_id"] == session_index.as_str()));
}

#[tokio::test]
async fn saml_sso_slo_and_attacks_checked_by_pysaml2() {
    let f = fixture("saml").await;
    scenario(&f).await;
}

#[tokio::test]
async fn saml_signed_authn_requests_are_verified_with_the_registered_certificate() {
    let f = fixture("saml-signed").await;
    let base = f.server.url().to_owned();
    let metadata = format!("{base}/saml/metadata");
    let dir = temp_dir("saml-sp-key");
    let key = dir.join("sp.key");
    let cert = dir.join("sp.crt");
    tool_output(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=sp.example.test",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "run openssl",
        "openssl could not make the SP's key and certificate:",
    );
    let pem = std::fs::read_to_string(&cert).unwrap();
    register(&f, SP, Some(&pem)).await;
    let (key, cert) = (key.to_str().unwrap(), cert.to_str().unwrap());

    let mut browser = Browser::new(&base);
    // Sign in once (through an IdP-initiated sign-on).
    let login = browser
        .get(&format!(
            "/saml/sso/idp-initiated?sp={}",
            url::form_urlencoded::byte_serialize(SP.as_bytes()).collect::<String>()
        ))
        .await;
    assert!(login.body.contains("Sign in"), "{}", login.body);
    let back = browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await;
    let page = browser.get(&back.location.unwrap()).await;
    auto_post(&page);

    // Signed with the registered key: answered.
    let (rid, response) = sso(&mut browser, &metadata, &["--key", key, "--cert", cert]).await;
    let state = dir.join("state.json");
    let (ok, accepted) = acs(
        &metadata,
        state.to_str().unwrap(),
        Some(&rid),
        &response,
        &[],
    );
    assert!(ok, "{accepted}");

    // Unsigned: refused.
    let (ok, authn) = sp_py(&[&["authn"][..], &sp_args(&metadata, SP, ACS)].concat());
    assert!(ok, "{authn}");
    let page = browser.get(authn["url"].as_str().unwrap()).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("must be signed"), "{}", page.body);

    // Signed, then tampered with (another RelayState): refused.
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&metadata, SP, ACS),
            &["--key", key, "--cert", cert],
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let url = authn["url"]
        .as_str()
        .unwrap()
        .replace("RelayState=rs-1", "RelayState=rs-2");
    let page = browser.get(&url).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("does not verify"), "{}", page.body);

    // Signed by another key: refused.
    let other = dir.join("other.key");
    let other_cert = dir.join("other.crt");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=other",
            "-keyout",
        ])
        .arg(&other)
        .arg("-out")
        .arg(&other_cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success());
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&metadata, SP, ACS),
            &[
                "--key",
                other.to_str().unwrap(),
                "--cert",
                other_cert.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let page = browser.get(authn["url"].as_str().unwrap()).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("does not verify"), "{}", page.body);

    // Conditional access applies to SAML sign-ons: a rule blocking this address refuses the
    // next one, naming the rule's reason.
    let r = f
        .admin
        .put(
            &format!("/v1/access-policies/{}/rules/no-loopback", f.org),
            json!({"priority": 1, "conditions": {"ip_in": ["127.0.0.0/8"]}, "outcome": "block"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = browser
        .get(&format!(
            "/saml/sso/idp-initiated?sp={}",
            url::form_urlencoded::byte_serialize(SP.as_bytes()).collect::<String>()
        ))
        .await;
    // (Issue 14 item 6: the SP hears it as a signed SAML status, not an HTML page.)
    let (action, response, _) = auto_post(&page);
    assert_eq!(action, ACS);
    let xml = String::from_utf8(STANDARD.decode(&response).unwrap()).unwrap();
    assert!(
        xml.contains("status:Responder") && xml.contains("status:RequestDenied"),
        "{xml}"
    );
    assert!(xml.contains("access policy"), "{xml}");
    assert!(!xml.contains("<saml:Assertion"), "{xml}");
    let state_file = temp_dir("saml-blocked-state").join("state.json");
    let (ok, refused) = acs(
        &metadata,
        state_file.to_str().unwrap(),
        None,
        &response,
        &["--unsolicited"],
    );
    expect_refusal(ok, &refused, "a RequestDenied status", "RequestDenied");
}

#[tokio::test]
async fn saml_signing_key_rotation_keeps_the_old_certificate_published_until_retired() {
    let f: Fixture = fixture("saml-rotate").await;
    let base = f.server.url().to_owned();
    let md1 = reqwest::get(format!("{base}/saml/metadata"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(md1.matches("<ds:X509Certificate>").count(), 1, "{md1}");
    let r = f
        .admin
        .post("/v1/saml/signing-keys/rotate", json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new_kid = r.body["kid"].as_str().unwrap().to_owned();
    let md2 = reqwest::get(format!("{base}/saml/metadata"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(md2.matches("<ds:X509Certificate>").count(), 2, "{md2}");
    let keys = f.admin.get("/v1/saml/signing-keys").await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    assert_eq!(keys.body["active"], new_kid.as_str());
    let old = keys.body["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_ne!(old, new_kid);
    // The active key cannot be retired; the old one can.
    let r = f
        .admin
        .post(
            &format!("/v1/saml/signing-keys/{new_kid}/retire"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = f
        .admin
        .post(&format!("/v1/saml/signing-keys/{old}/retire"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let md3 = reqwest::get(format!("{base}/saml/metadata"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(md3.matches("<ds:X509Certificate>").count(), 1, "{md3}");
    // No private key material in the log: only certificates.
    let events = f.admin.events_of("SamlSigningKeys").await;
    assert_eq!(events.len(), 3);
    for e in events {
        let text = e.to_string();
        assert!(!text.contains("PRIVATE"), "{text}");
    }
}

/// `<start>…<end>` in `s`.
fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let at = s.find(start).unwrap_or_else(|| panic!("no {start} in {s}")) + start.len();
    let to = s[at..].find(end).unwrap() + at;
    &s[at..to]
}

/// The XML of the Response QSA auto-posts.
fn posted_xml(page: &Page) -> (String, String) {
    let (action, response, _) = auto_post(page);
    assert_eq!(action, ACS);
    let xml = String::from_utf8(STANDARD.decode(&response).unwrap()).unwrap();
    (response, xml)
}

/// An AuthnRequest as an SP without a certificate may send it over HTTP-POST.
fn post_request_form(base: &str, endpoint: &str, entity: &str, id: &str, instant: &str) -> Page {
    let xml = format!(
        "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{instant}\" \
Destination=\"{base}{endpoint}\" AssertionConsumerServiceURL=\"{ACS}\"><saml:Issuer>{entity}</saml:Issuer></samlp:AuthnRequest>"
    );
    Page {
        status: 200,
        location: None,
        body: format!(
            "<form method=\"post\" action=\"{endpoint}\"><input type=\"hidden\" name=\"SAMLRequest\" value=\"{}\"></form>",
            STANDARD.encode(xml)
        ),
    }
}

/// Issue 14 item 6 (and the SAML side of item 4), on a running server.
async fn findings(f: &Fixture) {
    let base = f.server.url().to_owned();
    let metadata = format!("{base}/saml/metadata");
    let state_file = temp_dir("saml-findings-state").join("state.json");
    let state = state_file.to_str().unwrap();

    // The signing certificate's key usage includes digitalSignature (read by Python's
    // `cryptography`), and it is not a CA.
    let md = reqwest::get(&metadata).await.unwrap().text().await.unwrap();
    let cert = between(&md, "<ds:X509Certificate>", "</ds:X509Certificate>");
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, base64\nfrom cryptography import x509\n\
c = x509.load_der_x509_certificate(base64.b64decode(sys.argv[1]))\n\
ku = c.extensions.get_extension_for_class(x509.KeyUsage).value\n\
bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value\n\
print(ku.digital_signature, ku.key_cert_sign, bc.ca)",
            cert,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True False False",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An SP that asks for group memberships.
    group_with_the_person(f, "Engineers").await;
    let r = f
        .admin
        .post(
            "/v1/saml/service-providers",
            json!({
                "organization_id": f.org, "entity_id": SP, "name": "Example SP",
                "acs_urls": [ACS], "slo_url": SLO, "name_id_format": "email_address",
                "attributes": {"mail": "email", "memberOf": "groups"},
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // IsPassive without a session: a signed Response with NoPassive, not a page.
    let mut browser = Browser::new(&base);
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&metadata, SP, ACS),
            &["--is-passive"],
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let rid = authn["request_id"].as_str().unwrap().to_owned();
    let (response, xml) = posted_xml(&browser.get(authn["url"].as_str().unwrap()).await);
    assert!(xml.contains("status:NoPassive"), "{xml}");
    let (ok, refused) = acs(&metadata, state, Some(&rid), &response, &[]);
    expect_refusal(ok, &refused, "a NoPassive status", "NoPassive");

    // Sign in; the group goes out as an attribute.
    let (ok, authn) = sp_py(&[&["authn"][..], &sp_args(&metadata, SP, ACS)].concat());
    assert!(ok, "{authn}");
    let url = authn["url"].as_str().unwrap().to_owned();
    let rid = authn["request_id"].as_str().unwrap().to_owned();
    let login = browser.get(&url).await;
    let back = browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await;
    assert_eq!(back.status, 303, "{}", back.body);
    let (response, _) = posted_xml(&browser.get(&back.location.unwrap()).await);
    let (ok, accepted) = acs(&metadata, state, Some(&rid), &response, &[]);
    assert!(ok, "{accepted}");
    assert_eq!(accepted["attributes"]["memberOf"], json!(["Engineers"]));
    assert_eq!(accepted["attributes"]["mail"], json!([f.email]));

    // The same AuthnRequest again (within the IssueInstant window): a replay, refused with a
    // Requester/RequestDenied status.
    let (response, xml) = posted_xml(&browser.get(&url).await);
    assert!(
        xml.contains("status:Requester")
            && xml.contains("status:RequestDenied")
            && xml.contains("replay"),
        "{xml}"
    );
    assert!(!xml.contains("<saml:Assertion"), "{xml}");
    let (ok, refused) = acs(&metadata, state, Some(&rid), &response, &[]);
    expect_refusal(ok, &refused, "a replayed request's status", "RequestDenied");

    // IssueInstant outside the window (ten minutes old, or ahead): refused as a status; a
    // current one goes on.
    let ago = (chrono::Utc::now() - chrono::Duration::minutes(10))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ahead = (chrono::Utc::now() + chrono::Duration::minutes(10))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (id, instant) in [("_old1", &ago), ("_ahead1", &ahead)] {
        let form = post_request_form(&base, "/saml/sso", SP, id, instant);
        let (_, xml) = posted_xml(&browser.submit(&form, &[]).await);
        assert!(
            xml.contains("status:Requester") && xml.contains("IssueInstant"),
            "{xml}"
        );
        assert!(xml.contains(&format!("InResponseTo=\"{id}\"")), "{xml}");
    }
    let form = post_request_form(&base, "/saml/sso", SP, "_now1", &now);
    let page = browser.submit(&form, &[]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let (_, xml) = posted_xml(&browser.get(&page.location.unwrap()).await);
    assert!(xml.contains("status:Success"), "{xml}");
    let page = browser.submit(&form, &[]).await;
    let (_, xml) = posted_xml(&page);
    assert!(xml.contains("replay"), "a replayed POST request: {xml}");

    // ForceAuthn: the session is seconds old, and still the person signs in again.
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&metadata, SP, ACS),
            &["--force-authn"],
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let rid = authn["request_id"].as_str().unwrap().to_owned();
    let login = browser.get(authn["url"].as_str().unwrap()).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(
        login.body.contains("name=\"password\""),
        "ForceAuthn must ask again: {}",
        login.body
    );
    let back = browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await;
    assert_eq!(back.status, 303, "{}", back.body);
    let (response, _) = posted_xml(&browser.get(&back.location.unwrap()).await);
    let (ok, accepted) = acs(&metadata, state, Some(&rid), &response, &[]);
    assert!(ok, "{accepted}");

    // Registration from metadata: pysaml2 writes its SP's metadata (SLO over HTTP-Redirect).
    let other = "https://md-sp.example.test/metadata";
    let (ok, spmd) = sp_py(&[
        "sp-metadata",
        "--metadata",
        &metadata,
        "--sp",
        other,
        "--acs",
        "https://md-sp.example.test/acs",
        "--slo",
        "https://md-sp.example.test/slo",
        "--slo-binding",
        "redirect",
    ]);
    assert!(ok, "{spmd}");
    let r = f
        .admin
        .post(
            "/v1/saml/service-providers/metadata",
            json!({"organization_id": f.org, "metadata_xml": spmd["xml"], "attributes": {"groups": "groups"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = f
        .admin
        .get(&format!("/v1/saml/service-providers/{id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["entity_id"], other);
    assert_eq!(
        r.body["acs_urls"],
        json!(["https://md-sp.example.test/acs"])
    );
    assert_eq!(r.body["slo_url"], "https://md-sp.example.test/slo");
    assert_eq!(r.body["slo_binding"], "http_redirect");
    let big = format!(
        "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" entityID=\"x\"><!--{}--></md:EntityDescriptor>",
        "x".repeat(300 * 1024)
    );
    let deep = format!(
        "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" entityID=\"x\">{}{}</md:EntityDescriptor>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    let dtd = format!(
        "<!DOCTYPE x [<!ENTITY e \"e\">]>{}",
        spmd["xml"].as_str().unwrap()
    );
    for (what, xml, reason) in [
        ("too large", big, "larger than"),
        ("too deep", deep, "deeper than"),
        ("a DTD", dtd, "DTD"),
        ("not metadata", "<x/>".to_owned(), "EntityDescriptor"),
    ] {
        let r = f
            .admin
            .post(
                "/v1/saml/service-providers/metadata",
                json!({"organization_id": f.org, "metadata_xml": xml}),
            )
            .await;
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        assert!(
            r.body["detail"].as_str().unwrap().contains(reason),
            "{what}: {}",
            r.body
        );
    }
    let doc: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/saml/service-providers/metadata"]["post"].is_object());

    // Another organization registers the same SP (item 4): the shared endpoint can no longer
    // tell them apart and says so; each organization's endpoints serve its own registration.
    let (org_b, _) = f.admin.create_org("Beta").await;
    let r = f
        .admin
        .post(
            "/v1/saml/service-providers",
            json!({"organization_id": org_b, "entity_id": SP, "name": "Beta's copy",
                   "acs_urls": [ACS], "name_id_format": "persistent"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (ok, authn) = sp_py(&[&["authn"][..], &sp_args(&metadata, SP, ACS)].concat());
    assert!(ok, "{authn}");
    let page = browser.get(authn["url"].as_str().unwrap()).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(
        page.body.contains("more than one organization"),
        "{}",
        page.body
    );
    let org_metadata = format!("{base}/saml/o/{}/metadata", f.org);
    let (ok, authn) = sp_py(&[&["authn"][..], &sp_args(&org_metadata, SP, ACS)].concat());
    assert!(ok, "{authn}");
    assert!(
        authn["url"]
            .as_str()
            .unwrap()
            .contains(&format!("/saml/o/{}/sso?", f.org)),
        "{authn}"
    );
    let rid = authn["request_id"].as_str().unwrap().to_owned();
    let (response, _) = posted_xml(&browser.get(authn["url"].as_str().unwrap()).await);
    let (ok, accepted) = acs(&org_metadata, state, Some(&rid), &response, &[]);
    assert!(ok, "{accepted}");
    assert_eq!(accepted["name_id"], f.email.as_str());
    // Through Beta's endpoint, Ada (of Acme) is not let in: AuthnFailed, as a status.
    let beta_metadata = format!("{base}/saml/o/{org_b}/metadata");
    let (ok, authn) = sp_py(
        &[
            &["authn"][..],
            &sp_args(&beta_metadata, SP, ACS),
            &[
                "--name-id-format",
                "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
            ],
        ]
        .concat(),
    );
    assert!(ok, "{authn}");
    let (_, xml) = posted_xml(&browser.get(authn["url"].as_str().unwrap()).await);
    assert!(xml.contains("status:AuthnFailed"), "{xml}");
}

#[tokio::test(flavor = "multi_thread")]
async fn saml_findings_of_issue_14_hold_on_sqlite_and_postgres() {
    let f = fixture("saml-findings").await;
    findings(&f).await;
    let url = fresh_database().await;
    let f = crate::qsa::fixture_on(Server::start(
        &temp_dir("saml-findings-pg"),
        &["--listen", "127.0.0.1:0", "--database-url", &url],
        &[],
    ))
    .await;
    findings(&f).await;
}
