//! A person's own account at QSA: who they are, how they sign in (password, authenticator
//! app, passkeys) and how this session was signed in. The read side; changing them is still
//! done through `/v1/me/*`.

use askama::Template;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use super::api::segment;
use super::session::redirect;
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
    name: String,
    attestation_format: String,
    counter: u64,
}

#[derive(Debug, Deserialize)]
struct Passkeys {
    items: Vec<Passkey>,
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
    /// How this session was signed in (`amr` of the ID token, in words) and when.
    methods: String,
    signed_in_at: String,
}

/// RFC 8176 method references, as people say them.
fn method(amr: &str) -> &str {
    match amr {
        "pwd" => "password",
        "otp" => "authenticator app code",
        "hwk" => "passkey",
        "mfa" => "two factors",
        "swk" => "software key",
        other => other,
    }
}

async fn overview(me: SignedIn<Account>) -> Result<Response, PageError> {
    let api = me.api();
    let user = segment(&INFO, &me.session.sub)?;
    let profile: Profile = api.get(&format!("/users/{user}")).await?;
    let totp: Totp = api.get("/me/totp").await?;
    let passkeys: Passkeys = api.get("/me/passkeys").await?;
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
    Ok(render(&OverviewPage {
        layout: me.layout("Your account", "/"),
        profile,
        memberships,
        totp: totp.enrolled,
        passkeys: passkeys.items,
        methods,
        signed_in_at,
    }))
}
