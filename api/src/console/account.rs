//! A person's own account at QSA: who they are, how they sign in (password, authenticator
//! app, passkeys) and how this session was signed in; changing the password, enrolling an
//! authenticator app (its QR code is the API's server-rendered SVG, an `img` under the CSP)
//! with its recovery codes shown once, replacing those codes, removing it, and registering
//! and removing passkeys. Registering runs `navigator.credentials.create` in the browser
//! (`assets/passkey-register.js`, the only script that needs to run) with the options the
//! console fetched for the person; the page posts the authenticator's answer back here.

use askama::Template;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use super::api::segment;
use super::session::{redirect, Posted};
use super::{render, Console, ConsoleInfo, Layout};
use super::{PageError, SignedIn, ACCOUNT_CLIENT_ID};
use crate::AppState;

/// The account console.
pub struct Account;

static INFO: ConsoleInfo = ConsoleInfo {
    name: "Account",
    base: "/account",
    nav: &[("/", "Your account", "openid")],
};

impl Console for Account {
    fn info() -> &'static ConsoleInfo {
        &INFO
    }
    const CLIENT_ID: &'static str = ACCOUNT_CLIENT_ID;
    const SCOPES: &'static str = "openid profile email organizations:read";
    fn pages() -> Router<AppState> {
        routes()
    }
}

fn routes() -> Router<AppState> {
    Router::new()
        .route("/account", get(|| async { redirect("/account/") }))
        .route("/account/", get(overview))
        .route(
            "/account/password",
            get(password_form).post(change_password),
        )
        .route("/account/totp", post(start_totp))
        .route("/account/totp/confirm", post(confirm_totp))
        .route("/account/totp/remove", post(remove_totp))
        .route("/account/passkeys/new", get(new_passkey))
        .route("/account/passkeys", post(register_passkey))
        .route("/account/passkeys/{id}/remove", post(remove_passkey))
        .route("/account/recovery-codes", post(regenerate_recovery_codes))
        .route("/account/sessions/{id}/end", post(end_session))
        .route("/account/{*rest}", get(not_found))
}

async fn not_found(_me: SignedIn<Account>) -> PageError {
    PageError::not_found(&INFO, "there is no such page in your account")
}

#[derive(Debug, Deserialize)]
struct Profile {
    email: Option<String>,
    name: Option<String>,
    status: String,
    memberships: BTreeMap<String, BTreeSet<String>>,
    has_password: bool,
}

#[derive(Debug, Deserialize)]
struct Totp {
    enrolled: bool,
}

#[derive(Debug, Deserialize)]
struct Passkey {
    id: String,
    name: String,
    attestation_format: String,
    counter: u64,
}

#[derive(Debug, Deserialize)]
struct Passkeys {
    items: Vec<Passkey>,
}

/// A live session at QSA (a browser signed in), as the API lists them.
#[derive(Debug, Deserialize)]
pub(super) struct SessionRow {
    pub id: String,
    pub amr: Vec<String>,
    pub auth_time: String,
    pub expires_at: String,
    /// The session this page was signed in through.
    #[serde(default)]
    pub current: bool,
}

impl SessionRow {
    pub fn methods(&self) -> String {
        self.amr
            .iter()
            .map(|m| method(m))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    pub fn since(&self) -> String {
        super::qsa::moment(&self.auth_time)
    }

    pub fn until(&self) -> String {
        super::qsa::moment(&self.expires_at)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Sessions {
    pub items: Vec<SessionRow>,
}

#[derive(Debug, Deserialize)]
struct Organization {
    name: String,
}

struct Membership {
    organization: String,
    roles: String,
}

#[derive(Template)]
#[template(path = "account/overview.html")]
struct OverviewPage {
    layout: Layout,
    profile: Profile,
    memberships: Vec<Membership>,
    totp: bool,
    passkeys: Vec<Passkey>,
    sessions: Vec<SessionRow>,
    /// How this session was signed in (`amr` of the ID token, in words) and when.
    methods: String,
    signed_in_at: String,
    /// This session used a second factor (removing the app needs one).
    stepped_up: bool,
    csrf: String,
}

/// RFC 8176 method references, as people say them.
pub(super) fn method(amr: &str) -> &str {
    match amr {
        "pwd" => "password",
        "otp" => "authenticator app code",
        "hwk" => "passkey",
        "mfa" => "two factors",
        "swk" => "software key",
        other => other,
    }
}

#[derive(Debug, Default, Deserialize)]
struct Done {
    done: Option<String>,
}

async fn overview(me: SignedIn<Account>, Query(d): Query<Done>) -> Result<Response, PageError> {
    let api = me.api();
    let user = segment(&INFO, &me.session.sub)?;
    let profile: Profile = api.get(&format!("/users/{user}")).await?;
    let totp: Totp = api.get("/me/totp").await?;
    let passkeys: Passkeys = api.get("/me/passkeys").await?;
    let sessions: Sessions = api.get("/me/sessions").await?;
    let mut memberships = vec![];
    for (org, roles) in &profile.memberships {
        // An organization's name where the person may read it; its id otherwise.
        let name = match segment(&INFO, org) {
            Ok(id) if me.may("organizations:read") => api
                .find::<Organization>(&format!("/organizations/{id}"))
                .await
                .ok()
                .flatten()
                .map(|o| o.name),
            _ => None,
        };
        memberships.push(Membership {
            organization: name.unwrap_or_else(|| org.clone()),
            roles: roles.iter().cloned().collect::<Vec<_>>().join(", "),
        });
    }
    let claims = me.id_claims();
    let methods = claims["amr"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str())
                .map(method)
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .unwrap_or_default();
    let signed_in_at = claims["auth_time"]
        .as_i64()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let stepped_up = claims["amr"]
        .as_array()
        .is_some_and(|a| a.iter().any(|m| m == "mfa" || m == "hwk" || m == "swk"));
    let mut layout = me.layout("Your account", "/");
    layout.notice = match d.done.as_deref() {
        Some("password") => Some("Your password was changed.".into()),
        Some("totp-removed") => Some("Your authenticator app was removed.".into()),
        Some("passkey-removed") => Some("The passkey was removed.".into()),
        Some("passkey-added") => Some("Your passkey was registered; it can sign you in.".into()),
        Some("session-ended") => Some(
            "That session was ended; the applications it signed in to lost their tokens.".into(),
        ),
        _ => None,
    };
    Ok(render(&OverviewPage {
        layout,
        profile,
        memberships,
        totp: totp.enrolled,
        passkeys: passkeys.items,
        sessions: sessions.items,
        methods,
        signed_in_at,
        stepped_up,
        csrf: me.session.csrf.clone(),
    }))
}

fn refused(detail: impl Into<String>) -> PageError {
    PageError::new(
        &INFO,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Nothing changed",
        detail,
    )
}

#[derive(Template)]
#[template(path = "account/password.html")]
struct PasswordPage {
    layout: Layout,
    csrf: String,
}

async fn password_form(me: SignedIn<Account>) -> Result<Response, PageError> {
    Ok(render(&PasswordPage {
        layout: me.layout("Change your password", "/"),
        csrf: me.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    password: String,
    repeat: String,
}

async fn change_password(posted: Posted<Account, PasswordForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    if form.password != form.repeat {
        return Err(refused(
            "the two passwords differ; type the same new password twice",
        ));
    }
    let user = segment(&INFO, &me.session.sub)?;
    me.api()
        .post(
            &format!("/users/{user}/password"),
            &serde_json::json!({ "password": form.password }),
        )
        .await?;
    Ok(redirect("/account/?done=password"))
}

#[derive(Template)]
#[template(path = "account/totp.html")]
struct TotpPage {
    layout: Layout,
    /// The API's QR code: a `data:image/svg+xml` URI rendered on the server.
    qr_code: String,
    /// The seed, for typing it in by hand.
    secret: String,
    csrf: String,
}

#[derive(Debug, Deserialize)]
struct NoFields {}

/// The base32 secret of an `otpauth://` URI (people without a camera type it).
fn otpauth_secret(uri: &str) -> String {
    url::Url::parse(uri)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "secret")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default()
}

async fn start_totp(posted: Posted<Account, NoFields>) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let e = me.api().post("/me/totp", &serde_json::json!({})).await?;
    let qr_code = e["qr_code"].as_str().unwrap_or_default();
    if !qr_code.starts_with("data:image/svg+xml;base64,") {
        return Err(PageError::internal(&INFO));
    }
    Ok(render(&TotpPage {
        layout: me.layout("Set up an authenticator app", "/"),
        qr_code: qr_code.to_owned(),
        secret: otpauth_secret(e["otpauth_uri"].as_str().unwrap_or_default()),
        csrf: me.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct CodeForm {
    code: String,
}

#[derive(Template)]
#[template(path = "account/recovery.html")]
struct RecoveryPage {
    layout: Layout,
    codes: Vec<String>,
}

async fn confirm_totp(posted: Posted<Account, CodeForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    let code: String = form.code.chars().filter(|c| !c.is_whitespace()).collect();
    let answer = me
        .api()
        .post("/me/totp/confirm", &serde_json::json!({ "code": code }))
        .await?;
    let codes = answer["recovery_codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut layout = me.layout("Your recovery codes", "/");
    layout.notice = Some("Your authenticator app is set up.".into());
    Ok(render(&RecoveryPage { layout, codes }))
}

async fn remove_totp(posted: Posted<Account, NoFields>) -> Result<Response, PageError> {
    posted.signed_in.api().delete("/me/totp").await?;
    Ok(redirect("/account/?done=totp-removed"))
}

async fn end_session(
    Path(id): Path<String>,
    posted: Posted<Account, NoFields>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    posted
        .signed_in
        .api()
        .delete(&format!("/me/sessions/{id}"))
        .await?;
    Ok(redirect("/account/?done=session-ended"))
}

async fn remove_passkey(
    Path(id): Path<String>,
    posted: Posted<Account, NoFields>,
) -> Result<Response, PageError> {
    let id = segment(&INFO, &id)?;
    posted
        .signed_in
        .api()
        .delete(&format!("/me/passkeys/{id}"))
        .await?;
    Ok(redirect("/account/?done=passkey-removed"))
}

#[derive(Template)]
#[template(path = "account/passkey.html")]
struct PasskeyPage {
    layout: Layout,
    /// `PublicKeyCredentialCreationOptions` (WebAuthn JSON, base64url binaries) for the script.
    options: String,
    /// QSA's sealed registration ceremony, posted back with the answer.
    ceremony: String,
    csrf: String,
}

async fn new_passkey(me: SignedIn<Account>) -> Result<Response, PageError> {
    let answer = me
        .api()
        .post("/me/passkeys/options", &serde_json::json!({}))
        .await?;
    let (Some(options), Some(ceremony)) = (
        answer.get("options").filter(|o| o.is_object()),
        answer["ceremony"].as_str(),
    ) else {
        return Err(PageError::internal(&INFO));
    };
    Ok(render(&PasskeyPage {
        layout: me.layout("Add a passkey", "/"),
        options: options.to_string(),
        ceremony: ceremony.to_owned(),
        csrf: me.session.csrf.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct PasskeyForm {
    name: String,
    ceremony: String,
    /// The authenticator's answer as WebAuthn JSON, filled in by the page's script.
    #[serde(default)]
    credential: String,
}

async fn register_passkey(posted: Posted<Account, PasskeyForm>) -> Result<Response, PageError> {
    let Posted {
        signed_in: me,
        form,
    } = posted;
    if form.credential.trim().is_empty() {
        return Err(refused(
            "your browser did not create a passkey; registering one needs JavaScript and a \
             browser or device that supports passkeys",
        ));
    }
    let credential: serde_json::Value = serde_json::from_str(&form.credential)
        .map_err(|_| refused("the browser's answer is not a WebAuthn credential"))?;
    me.api()
        .post(
            "/me/passkeys",
            &serde_json::json!({
                "ceremony": form.ceremony,
                "credential": credential,
                "name": form.name.trim(),
            }),
        )
        .await?;
    Ok(redirect("/account/?done=passkey-added"))
}

async fn regenerate_recovery_codes(
    posted: Posted<Account, NoFields>,
) -> Result<Response, PageError> {
    let me = posted.signed_in;
    let answer = me
        .api()
        .post("/me/recovery-codes", &serde_json::json!({}))
        .await?;
    let codes: Vec<String> = answer["recovery_codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if codes.is_empty() {
        return Err(PageError::internal(&INFO));
    }
    let mut layout = me.layout("Your recovery codes", "/");
    layout.notice =
        Some("Your new recovery codes replace the old ones, which no longer work.".into());
    Ok(render(&RecoveryPage { layout, codes }))
}

#[cfg(test)]
mod tests {
    use super::otpauth_secret;

    #[test]
    fn the_key_to_type_is_the_otpauth_uris_secret() {
        assert_eq!(
            otpauth_secret(
                "otpauth://totp/Quantus:bob%40example.com?secret=JBSWY3DPEHPK3PXP&issuer=Quantus"
            ),
            "JBSWY3DPEHPK3PXP"
        );
        assert_eq!(otpauth_secret("not a uri"), "");
    }
}
