//! Conditional access: per-organization rules changed by events, evaluated at sign-in, at the
//! authorization endpoint and at the token endpoint; step-up with a second factor; `acr` in
//! tokens and `acr_values` from clients; each decision audited with the rule that made it; a
//! what-if that records nothing.

use serde_json::{json, Value};

use crate::harness::{client_token, Api};
use crate::mfa::{enrol_totp, pyotp};
use crate::qsa::{
    authorize_path, claims, consent_to_tokens, fixture, password_step, query_param, token_request,
    Browser, Fixture, CHALLENGE,
};

const ACR_MFA: &str = "urn:quantus:acr:mfa";

async fn put_rule(f: &Fixture, name: &str, rule: Value) {
    let r = f
        .admin
        .put(&format!("/v1/access-policies/{}/rules/{name}", f.org), rule)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn remove_rule(f: &Fixture, name: &str) {
    let r = f
        .admin
        .delete(&format!("/v1/access-policies/{}/rules/{name}", f.org))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn decisions(f: &Fixture) -> Vec<Value> {
    f.admin
        .events_of("AccessDecision")
        .await
        .into_iter()
        .map(|e| e["envelope"]["payload"].clone())
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn rules_step_up_block_and_explain_and_every_decision_is_audited() {
    scenario(&fixture("access").await).await;
}

/// The whole story on `f`'s server (embedded here, Postgres + Kafka in `postgres_kafka::m_`).
pub async fn scenario(f: &Fixture) {
    // Without rules: a password session, acr password, and no decision records.
    let mut browser = Browser::new(f.server.url());
    let page = password_step(f, &mut browser, "openid offline_access").await;
    let t = consent_to_tokens(f, &mut browser, page).await;
    let id = claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["acr"], "urn:quantus:acr:password");
    assert_eq!(
        claims(t["access_token"].as_str().unwrap())["acr"],
        "urn:quantus:acr:password"
    );
    assert!(decisions(f).await.is_empty());
    let password_refresh = t["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let me = Api {
        base: f.server.url().to_owned(),
        token: t["access_token"].as_str().unwrap().to_owned(),
        http: reqwest::Client::new(),
    };

    // A client demands a second factor (acr_values): the person has none yet.
    let denied = browser
        .get(&format!(
            "{}&acr_values={ACR_MFA}",
            authorize_path(&f.client_id, "openid", Some(CHALLENGE))
        ))
        .await;
    assert_eq!(denied.status, 303, "{}", denied.body);
    let location = denied.location.unwrap();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("unmet_authentication_requirements"),
        "{location}"
    );

    // Once an authenticator app is enrolled, the same request steps the session up.
    let (uri, confirmed) = enrol_totp(&me).await;
    // Later sign-ins use recovery codes: a TOTP code is good once per 30 s step.
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let step_up = browser
        .get(&format!(
            "{}&acr_values={ACR_MFA}",
            authorize_path(&f.client_id, "openid", Some(CHALLENGE))
        ))
        .await;
    assert_eq!(step_up.status, 200, "{}", step_up.body);
    assert!(
        step_up.body.contains("Two-step verification"),
        "{}",
        step_up.body
    );
    let done = browser
        .submit(&step_up, &[("code", &pyotp(&uri, 30))])
        .await;
    let t = consent_to_tokens(f, &mut browser, done).await;
    let id = claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["acr"], ACR_MFA, "{id}");

    // A rule: members need a second factor. The what-if explains it and records nothing.
    put_rule(
        f,
        "members-need-mfa",
        json!({"priority": 20, "conditions": {"roles": ["member"], "strength_below": "mfa"},
               "outcome": "require_mfa"}),
    )
    .await;
    let before = decisions(f).await.len();
    let what_if = f
        .admin
        .post(
            "/v1/access-policies/evaluate",
            json!({"organization_id": f.org, "user_id": f.user_id, "ip": "203.0.113.5",
                   "authentication": "password"}),
        )
        .await;
    assert_eq!(what_if.status, 200, "{}", what_if.body);
    assert_eq!(what_if.body["outcome"], "require_mfa");
    assert_eq!(what_if.body["policy"], "members-need-mfa");
    assert_eq!(what_if.body["granted"], false);
    let with_mfa = f
        .admin
        .post(
            "/v1/access-policies/evaluate",
            json!({"organization_id": f.org, "user_id": f.user_id, "authentication": "mfa"}),
        )
        .await;
    assert_eq!(with_mfa.body["outcome"], "allow", "{}", with_mfa.body);
    assert_eq!(
        decisions(f).await.len(),
        before,
        "a what-if recorded a decision"
    );
    // The password-only session's refresh token no longer gets tokens: the rule applies at
    // the token endpoint too.
    let (status, body) = token_request(
        f,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", password_refresh.as_str()),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("members-need-mfa"));

    // The person signs in with password and code; the decision names the rule.
    let mut fresh = Browser::new(f.server.url());
    let second = password_step(f, &mut fresh, "openid").await;
    assert!(
        second.body.contains("Two-step verification"),
        "{}",
        second.body
    );
    let done = fresh.submit(&second, &[("code", &recovery[0])]).await;
    consent_to_tokens(f, &mut fresh, done).await;
    let all = decisions(f).await;
    let sign_in = all
        .iter()
        .find(|d| d["stage"] == "sign_in")
        .expect("a sign-in decision");
    assert_eq!(sign_in["policy"], Value::Null, "{sign_in}"); // with MFA the rule does not match
    assert_eq!(sign_in["granted"], true);
    assert!(all.iter().any(|d| d["stage"] == "authorize"));

    // A block rule for addresses outside a range: the local address is outside, so the
    // sign-in is refused, naming the rule; the audit says so too.
    put_rule(
        f,
        "office-only",
        json!({"priority": 10, "conditions": {"ip_not_in": ["10.20.0.0/16"]}, "outcome": "block"}),
    )
    .await;
    let mut blocked = Browser::new(f.server.url());
    let page = password_step(f, &mut blocked, "openid").await;
    let page = if page.body.contains("Two-step verification") {
        blocked.submit(&page, &[("code", &recovery[1])]).await
    } else {
        page
    };
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("office-only"), "{}", page.body);
    let last = decisions(f).await.pop().unwrap();
    assert_eq!(last["policy"], "office-only");
    assert_eq!(last["outcome"], "block");
    assert_eq!(last["granted"], false);
    let failures = f.admin.events_of("SignInAttempt").await;
    assert!(failures
        .iter()
        .any(|e| e["envelope"]["payload"]["reason"] == "blocked_by_policy"));

    // Service principals are subject to it too (token endpoint).
    let r = f
        .admin
        .post(
            "/v1/service-principals",
            json!({"organization_id": f.org, "name": "ci", "roles": ["member"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (sp, secret) = (
        r.body["client_id"].as_str().unwrap().to_owned(),
        r.body["client_secret"].as_str().unwrap().to_owned(),
    );
    let res = reqwest::Client::new()
        .post(format!("{}/oauth2/token", f.server.url()))
        .basic_auth(&sp, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized_client", "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("office-only"));
    // Rules change by events: removing it lets both in again.
    remove_rule(f, "office-only").await;
    client_token(f.server.url(), &sp, &secret, None);
    let policy = f.admin.get(&format!("/v1/access-policies/{}", f.org)).await;
    assert_eq!(policy.body["rules"].as_array().unwrap().len(), 1);
    let events = f.admin.events_of("AccessPolicy").await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["envelope"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["AccessRuleSet", "AccessRuleSet", "AccessRuleRemoved"]
    );

    // Time windows and signals, explained.
    put_rule(
        f,
        "nights",
        json!({"priority": 5, "conditions": {"outside": {"weekdays": [1,2,3,4,5], "from_minute": 420, "to_minute": 1200}},
               "outcome": "block"}),
    )
    .await;
    let at_night = f
        .admin
        .post(
            "/v1/access-policies/evaluate",
            json!({"organization_id": f.org, "at": "2026-12-01T23:30:00Z", "authentication": "mfa"}),
        )
        .await;
    assert_eq!(at_night.body["outcome"], "block");
    assert_eq!(at_night.body["policy"], "nights");
    let by_day = f
        .admin
        .post(
            "/v1/access-policies/evaluate",
            json!({"organization_id": f.org, "at": "2026-12-01T09:30:00Z", "authentication": "mfa"}),
        )
        .await;
    assert_eq!(by_day.body["outcome"], "allow", "{}", by_day.body);
    put_rule(
        f,
        "suspicious",
        json!({"priority": 1, "conditions": {"new_ip": true, "recent_failures_at_least": 3},
               "outcome": "require_passkey"}),
    )
    .await;
    let r = f
        .admin
        .post(
            "/v1/access-policies/evaluate",
            json!({"organization_id": f.org, "new_ip": true, "recent_failures": 4, "authentication": "mfa"}),
        )
        .await;
    assert_eq!(r.body["policy"], "suspicious");
    assert_eq!(r.body["granted"], false);
    // Bad rules are refused with a clear error; other organizations' policies are not there.
    let r = f
        .admin
        .put(
            &format!("/v1/access-policies/{}/rules/bad", f.org),
            json!({"priority": 1, "conditions": {"ip_in": ["300.1.1.1/8"]}, "outcome": "block"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let (other, _) = f.admin.create_org("Other").await;
    let r = me.get(&format!("/v1/access-policies/{other}")).await;
    assert_eq!(r.status, 403, "{}", r.body); // a person's token has no identity:read here
}
