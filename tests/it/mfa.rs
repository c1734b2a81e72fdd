//! TOTP second factor (RFC 6238): enrolment with an `otpauth://` URI and a QR code, codes from
//! an independent generator (Python `pyotp`), each code accepted once, single-use recovery
//! codes, lockout, the sealed seed, and `amr` in the tokens.

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::{tool_output, Api};
use crate::qsa::{
    claims, consent_to_tokens, fixture, password_step, query_param, redeem_code, Browser, Fixture,
};

/// A TOTP code for `uri` at `offset` seconds from now, computed by pyotp.
pub(crate) fn pyotp(uri: &str, offset: i64) -> String {
    tool_output(
        Command::new("python3").args([
            "-c",
            "import pyotp, sys, time; print(pyotp.parse_uri(sys.argv[1]).at(time.time() + int(sys.argv[2])))",
            uri,
            &offset.to_string(),
        ]),
        "python3 must be installed (scripts/test.sh installs pyotp)",
        "pyotp failed (pip install -r tests/mfa/requirements.txt):",
    )
    .trim()
    .to_owned()
}

/// Enrols an authenticator app for `me` and confirms it with pyotp's current code: the
/// `otpauth://` URI and the confirmation's answer (which holds the recovery codes).
pub(crate) async fn enrol_totp(me: &Api) -> (String, Value) {
    let uri = me.post("/v1/me/totp", json!({})).await.body["otpauth_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = me
        .post("/v1/me/totp/confirm", json!({"code": pyotp(&uri, 0)}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    (uri, r.body)
}

/// The person's own access token (authorization code flow with PKCE, password only).
pub(crate) async fn person_token(f: &Fixture) -> String {
    let mut browser = Browser::new(f.server.url());
    let code = crate::qsa::sign_in_for_code(f, &mut browser, "openid").await;
    redeem_code(f, &code).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sign_in_failures(admin: &Api, reason: &str) -> usize {
    admin
        .events_of("SignInAttempt")
        .await
        .iter()
        .filter(|e| e["envelope"]["payload"]["reason"] == reason)
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn a_person_enrols_an_authenticator_app_and_each_code_works_once() {
    enrolment_scenario(&fixture("mfa").await).await;
}

/// Enrolment, codes, replays, recovery codes and removal on `f`'s server.
pub async fn enrolment_scenario(f: &Fixture) {
    let token = person_token(f).await;
    let me = Api {
        base: f.server.url().to_owned(),
        token,
        http: reqwest::Client::new(),
    };
    // Service principals have no second factor.
    let r = f.admin.post("/v1/me/totp", json!({})).await;
    assert_eq!(r.status, 403, "{}", r.body);

    let r = me.post("/v1/me/totp", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let uri = r.body["otpauth_uri"].as_str().unwrap().to_owned();
    assert!(uri.starts_with("otpauth://totp/Quantus:"), "{uri}");
    assert!(uri.contains("issuer=Quantus"), "{uri}");
    assert!(r.body["qr_code"]
        .as_str()
        .unwrap()
        .starts_with("data:image/svg+xml;base64,"));
    let secret = query_param(&uri, "secret").unwrap();

    // A wrong code does not confirm; a code from pyotp does, and yields ten recovery codes.
    let r = me
        .post("/v1/me/totp/confirm", json!({"code": "000000"}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let first = pyotp(&uri, 0);
    let r = me.post("/v1/me/totp/confirm", json!({"code": first})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let recovery: Vec<String> = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    // The seed is in no event in clear; it is sealed with the person's own data key.
    let events = f.admin.all_events().await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&secret), "the TOTP seed is in the log");
    let started = events
        .iter()
        .find(|e| e["envelope"]["event_type"] == "TotpEnrollmentStarted")
        .unwrap();
    assert_eq!(started["envelope"]["payload"]["seed"]["subject"], f.user_id);
    assert!(
        !text.contains(&recovery[0]),
        "a recovery code is in the log"
    );

    // Signing in now asks for a code after the password. The code that confirmed the
    // enrolment is refused (used once already); the next one is accepted.
    let mut browser = Browser::new(f.server.url());
    let second = password_step(f, &mut browser, "openid").await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert!(
        second.body.contains("Two-step verification"),
        "{}",
        second.body
    );
    let again = browser.submit(&second, &[("code", &first)]).await;
    assert_eq!(again.status, 401, "{}", again.body);
    assert!(again.body.contains("not valid"));
    let next = pyotp(&uri, 30);
    let signed_in = browser.submit(&again, &[("code", &next)]).await;
    let tokens = consent_to_tokens(f, &mut browser, signed_in).await;
    let id = claims(tokens["id_token"].as_str().unwrap());
    let amr: Vec<&str> = id["amr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(amr, ["pwd", "otp", "mfa"], "{id}");
    assert_eq!(
        sign_in_failures(&f.admin, "replayed_second_factor").await,
        1
    );

    // The same code in another sign-in: refused as a replay.
    let mut other = Browser::new(f.server.url());
    let second = password_step(f, &mut other, "openid").await;
    let replay = other.submit(&second, &[("code", &next)]).await;
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert_eq!(
        sign_in_failures(&f.admin, "replayed_second_factor").await,
        2
    );
    // A recovery code works once, typed loosely.
    let loose = recovery[3].to_lowercase().replace('-', " ");
    let signed_in = other.submit(&replay, &[("code", &loose)]).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let mut third = Browser::new(f.server.url());
    let second = password_step(f, &mut third, "openid").await;
    let used = third.submit(&second, &[("code", &recovery[3])]).await;
    assert_eq!(used.status, 401, "{}", used.body);

    let mfa_token = tokens["access_token"].as_str().unwrap().to_owned();
    let me2 = Api {
        token: mfa_token,
        ..me.clone()
    };
    recovery_codes_are_replaced(f, &me, &me2, &recovery).await;

    // With the second factor in the session, the person may remove it; then the password
    // alone signs in again.
    let password_only = me.clone();
    let r = password_only.delete("/v1/me/totp").await;
    assert_eq!(
        r.status, 403,
        "a password-only session removed the factor: {}",
        r.body
    );
    let r = me2.delete("/v1/me/totp").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut fourth = Browser::new(f.server.url());
    let signed_in = password_step(f, &mut fourth, "openid").await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    // No app, no recovery codes to replace.
    let r = me2.post("/v1/me/recovery-codes", json!({})).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

/// `POST /v1/me/recovery-codes`: only a session that used the second factor replaces the
/// codes; the new ten work, the old unused ones stop working, and the log holds digests only.
async fn recovery_codes_are_replaced(
    f: &Fixture,
    password_only: &Api,
    stepped_up: &Api,
    old: &[String],
) {
    let r = f.admin.post("/v1/me/recovery-codes", json!({})).await;
    assert_eq!(
        r.status, 403,
        "a service principal has no codes: {}",
        r.body
    );
    let r = password_only.post("/v1/me/recovery-codes", json!({})).await;
    assert_eq!(
        r.status, 403,
        "a password-only session replaced the codes: {}",
        r.body
    );
    assert_eq!(
        r.body["type"]
            .as_str()
            .map(|t| t.ends_with("step-up-required")),
        Some(true),
        "{}",
        r.body
    );
    let r = stepped_up.post("/v1/me/recovery-codes", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let fresh: Vec<String> = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !old.contains(c)));

    let events = f.admin.all_events().await;
    let regenerated = events
        .iter()
        .find(|e| e["envelope"]["event_type"] == "TotpRecoveryCodesRegenerated")
        .expect("the replacement is an event");
    let digests = regenerated["envelope"]["payload"]["recovery_code_digests"]
        .as_array()
        .unwrap();
    assert_eq!(digests.len(), 10);
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        fresh.iter().all(|c| !text.contains(c.as_str())),
        "a new recovery code is in the log"
    );

    // An old code never used (recovery[3] was) no longer signs in; a new one does.
    let mut browser = Browser::new(f.server.url());
    let second = password_step(f, &mut browser, "openid").await;
    let refused = browser.submit(&second, &[("code", &old[5])]).await;
    assert_eq!(
        refused.status, 401,
        "an old recovery code still works: {}",
        refused.body
    );
    let signed_in = browser.submit(&refused, &[("code", &fresh[0])]).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_codes_lock_the_account_like_wrong_passwords() {
    let f = fixture("mfa-lock").await;
    let token = person_token(&f).await;
    let me = Api {
        base: f.server.url().to_owned(),
        token,
        http: reqwest::Client::new(),
    };
    enrol_totp(&me).await;
    let mut browser = Browser::new(f.server.url());
    let mut page = password_step(&f, &mut browser, "openid").await;
    for _ in 0..4 {
        page = browser.submit(&page, &[("code", "123456")]).await;
        assert_eq!(page.status, 401, "{}", page.body);
    }
    let locked = browser.submit(&page, &[("code", "654321")]).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    // Locked: even the right password and code do not get in now.
    let mut other = Browser::new(f.server.url());
    let page = password_step(&f, &mut other, "openid").await;
    assert_eq!(page.status, 429, "{}", page.body);
    // An administrator can reset a lost authenticator.
    let r = f
        .admin
        .delete(&format!("/v1/users/{}/totp", f.user_id))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}
