//! The web consoles: server-rendered pages for people, each an OAuth client of QSA
//! (authorization code + PKCE, confidential), backend-for-frontend style: the browser holds an
//! HttpOnly session cookie, the tokens stay on the server ([`session`]), and every page calls
//! the same `/v1` API outside clients use, in-process, with the signed-in person's token
//! ([`api::Api`]). Pages never read the database: authorization, tenant isolation and
//! validation are exactly the API's.
//!
//! A console is a marker type implementing [`Console`]; [`routes`] mounts its sign-in,
//! callback and sign-out routes ([`session`]) next to its pages (e.g. [`portal`]).

mod account;
mod admin;
mod admin_as_of;
mod admin_billing;
mod admin_retention;
mod admin_verify;
mod api;
mod portal;
mod qsa;
mod session;
mod verify;

use askama::Template;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use quantus_infra::config::Secret;

pub use session::SignedIn;

use crate::AppState;

/// The Portal console's OAuth client at QSA (registered at bootstrap).
pub const PORTAL_CLIENT_ID: &str = "quantus-console-portal";
/// The vendor's Admin console's OAuth client at QSA.
pub const ADMIN_CLIENT_ID: &str = "quantus-console-admin";
/// The account console's OAuth client at QSA.
pub const ACCOUNT_CLIENT_ID: &str = "quantus-console-account";

/// The QSA console's OAuth client (an organization's security administrators).
pub const QSA_CLIENT_ID: &str = "quantus-console-qsa";

/// A console's confidential client credentials.
#[derive(Clone, Debug)]
pub struct ConsoleClient {
    pub client_id: String,
    pub client_secret: Secret,
    /// The scopes its sign-in asks for: the console's own that its client is registered
    /// with (a client registered by an older version may lack newer ones; asking for them
    /// would make QSA refuse every sign-in).
    pub scope: String,
}

/// The consoles this process serves (each one whose client credentials are known), and how
/// they keep their tokens fresh.
#[derive(Clone, Debug)]
pub struct ConsoleClients {
    clients: std::collections::BTreeMap<String, ConsoleClient>,
    /// Refresh an access token this many seconds before it expires.
    pub refresh_early_seconds: i64,
}

impl Default for ConsoleClients {
    fn default() -> Self {
        Self {
            clients: Default::default(),
            refresh_early_seconds: 30,
        }
    }
}

impl ConsoleClients {
    /// The client of console `console` (its [`Console::CLIENT_ID`]); the client's own id
    /// differs where a process other than QSA serves the console.
    pub fn insert(&mut self, console: &str, client: ConsoleClient) {
        self.clients.insert(console.to_owned(), client);
    }

    pub fn get(&self, console: &str) -> Option<&ConsoleClient> {
        self.clients.get(console)
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// What bootstrap registers at QSA for a console.
pub struct ConsoleRegistration {
    /// The console ([`Console::CLIENT_ID`]).
    pub console: &'static str,
    pub client_id: String,
    pub name: &'static str,
    /// File under the data folder that keeps the client's secret (mode 0600).
    pub file: String,
    pub redirect_uri: String,
    pub post_logout_redirect_uri: String,
    pub scopes: Vec<String>,
}

/// The registrations of every console served at `public_url`, with exact redirect URIs
/// under it. QSA's own process serves them as `quantus-console-<name>`; another process (the
/// Portal role, `served_by = Some("portal")`) has clients of its own,
/// `quantus-console-<name>-portal`, so that each client names the one public URL it returns to.
pub fn registrations(public_url: &str, served_by: Option<&str>) -> Vec<ConsoleRegistration> {
    vec![
        registration::<portal::Portal>(public_url, served_by),
        registration::<account::Account>(public_url, served_by),
        registration::<admin::Admin>(public_url, served_by),
        registration::<qsa::Qsa>(public_url, served_by),
    ]
}

fn registration<C: Console>(public_url: &str, served_by: Option<&str>) -> ConsoleRegistration {
    let base = public_url.trim_end_matches('/');
    let client_id = match served_by {
        Some(process) => format!("{}-{process}", C::CLIENT_ID),
        None => C::CLIENT_ID.to_owned(),
    };
    let short = client_id.trim_start_matches("quantus-");
    ConsoleRegistration {
        console: C::CLIENT_ID,
        file: format!("{short}-client.json"),
        client_id,
        name: C::info().name,
        redirect_uri: format!("{base}{}/callback", C::info().base),
        post_logout_redirect_uri: format!("{base}{}/signed-out", C::info().base),
        scopes: C::SCOPES.split(' ').map(str::to_owned).collect(),
    }
}

/// Name and mount point of a console, for layouts and error pages.
#[derive(Debug)]
pub struct ConsoleInfo {
    pub name: &'static str,
    /// The path prefix (`/portal`); the home page is `<base>/`.
    pub base: &'static str,
    /// Navigation: (path under base, label, the scope the page needs).
    pub nav: &'static [(&'static str, &'static str, &'static str)],
}

/// A console: its client at QSA and what it asks for.
pub trait Console: Send + Sync + 'static {
    fn info() -> &'static ConsoleInfo;
    const CLIENT_ID: &'static str;
    /// The scopes it asks for (a token gets those the person's roles allow).
    const SCOPES: &'static str;
    /// Its pages (sign-in, callback and sign-out are added to them).
    fn pages() -> Router<AppState>;

    fn client(clients: &ConsoleClients) -> Option<&ConsoleClient> {
        clients.get(Self::CLIENT_ID)
    }
}

/// A console's sign-in routes and pages, when its client is configured.
fn mount<C: Console>(router: Router<AppState>, kit: &Kit) -> Router<AppState> {
    if C::client(&kit.clients).is_some() {
        router.merge(session::routes::<C>()).merge(C::pages())
    } else {
        router
    }
}

/// What every console handler reaches besides [`AppState`]: the `/v1` router to call
/// in-process and the session store.
#[derive(Clone)]
pub struct Kit {
    /// The whole API (with its own middleware), called with the person's bearer token.
    pub api: Router,
    /// QSA's OAuth endpoints (`/oauth2/token`, `/oauth2/userinfo`, `/oauth2/revoke`): the
    /// same router as `api` in QSA's process, QSA over HTTP elsewhere.
    pub oauth: Router,
    pub sessions: quantus_infra::console_sessions::ConsoleSessions,
    /// QSA's public URL (the issuer): sign-in and sign-out continue there.
    pub issuer: String,
    /// This process's public URL: the consoles' redirect URIs are under it.
    pub public_url: String,
    pub clients: ConsoleClients,
}

impl Kit {
    /// `; Secure` when served over TLS (the public URL is https).
    fn secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

/// QSA's endpoints over HTTP, as a router the consoles call like the in-process one.
pub fn qsa_over_http(issuer: &str) -> Router {
    let qsa = quantus_infra::gateway::QsaEndpoints::new(issuer);
    Router::new().fallback(move |request: Request| {
        let qsa = qsa.clone();
        async move { forward(&qsa, request).await }
    })
}

async fn forward(qsa: &quantus_infra::gateway::QsaEndpoints, request: Request) -> Response {
    use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let headers: Vec<(String, String)> = [AUTHORIZATION, CONTENT_TYPE, ACCEPT, USER_AGENT]
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    match qsa
        .send(parts.method.as_str(), &path, &headers, body.to_vec())
        .await
    {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut response = (status, answer.body).into_response();
            if let Some(Ok(value)) = answer
                .content_type
                .map(|c| axum::http::HeaderValue::from_str(&c))
            {
                response.headers_mut().insert(CONTENT_TYPE, value);
            }
            response
        }
        Err(error) => {
            tracing::warn!(%error, "QSA is unavailable to the consoles");
            crate::Problem::new(
                StatusCode::BAD_GATEWAY,
                "qsa-unavailable",
                "QSA is unavailable",
                error.to_string(),
            )
            .into_response()
        }
    }
}

/// The consoles' routes (each console whose client is configured), calling `api` and QSA's
/// OAuth endpoints through `oauth`.
pub fn routes(state: &AppState, api: Router, oauth: Router) -> Router<AppState> {
    let kit = Kit {
        api,
        oauth,
        sessions: quantus_infra::console_sessions::ConsoleSessions::new(
            state.db.clone(),
            state.identity.subject_keys().clone(),
        ),
        issuer: state.gateway.issuer.clone(),
        public_url: state.issuer.trim_end_matches('/').to_owned(),
        clients: state.consoles.clone(),
    };
    let router = Router::new()
        .route("/console/assets/{name}", get(asset))
        .merge(verify::routes());
    let router = mount::<portal::Portal>(router, &kit);
    let router = mount::<account::Account>(router, &kit);
    let router = mount::<admin::Admin>(router, &kit);
    let router = mount::<qsa::Qsa>(router, &kit);
    router
        .layer(axum::middleware::from_fn_with_state(
            kit.issuer.clone(),
            security_headers,
        ))
        .layer(Extension(kit))
}

/// Every console response: a CSP without inline script, no framing, no sniffing, and no
/// caching of pages (they show one person's data).
async fn security_headers(
    axum::extract::State(issuer): axum::extract::State<String>,
    request: Request,
    next: Next,
) -> Response {
    let is_asset = request.uri().path().starts_with("/console/assets/");
    // The verify page reads the published key set from this origin; nothing else fetches.
    let connect = if request.uri().path().starts_with("/verify") {
        "connect-src 'self'; "
    } else {
        ""
    };
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // Forms post to the console itself; sign-in and sign-out continue at QSA (the issuer).
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; \
         {connect}form-action 'self' {issuer}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !is_asset {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The embedded assets: one stylesheet, the small scripts, the verify page's vendored
/// cryptography, the icon. Nothing is fetched from anywhere else.
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static [u8], &'static str) = match name.as_str() {
        "console.css" => (
            include_bytes!("../../assets/console.css"),
            "text/css; charset=utf-8",
        ),
        "console.js" => (
            include_bytes!("../../assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "passkey-register.js" => (
            include_bytes!("../../assets/passkey-register.js"),
            "text/javascript; charset=utf-8",
        ),
        "verify.js" => (
            include_bytes!("../../assets/verify.js"),
            "text/javascript; charset=utf-8",
        ),
        // The noble libraries, bundled by scripts/vendor-assets.sh.
        "noble.js" => (
            include_bytes!("../../assets/vendor/noble/noble.js"),
            "text/javascript; charset=utf-8",
        ),
        "icon.svg" => (include_bytes!("../../assets/icon.svg"), "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// The chrome of every page: the console, its navigation, who is signed in.
pub struct Layout {
    pub title: String,
    pub console: &'static ConsoleInfo,
    /// The navigation entry of this page (its path under the base).
    pub current: &'static str,
    pub user: Option<UserBox>,
    /// A status message after an action (shown once, announced to screen readers).
    pub notice: Option<String>,
    /// The signed-in person's scopes: navigation shows the pages they may use.
    pub scopes: std::collections::BTreeSet<String>,
}

/// The signed-in person, as the header shows them, and the sign-out form's CSRF token.
#[derive(Debug, Clone)]
pub struct UserBox {
    pub name: String,
    pub organization: String,
    pub csrf: String,
    /// The person administers their organization's identity: the header links the QSA
    /// console.
    pub security_admin: bool,
}

/// Whether these roles (the access token's) manage people, clients and access rules: the
/// QSA console is theirs.
pub fn is_security_admin(roles: &std::collections::BTreeSet<String>) -> bool {
    roles.iter().any(|r| {
        quantus_domain::identity::Role::parse(r)
            .is_some_and(|r| r.scopes().contains(&"identity:write"))
    })
}

impl Layout {
    pub fn nav(&self) -> Vec<NavLink> {
        self.console
            .nav
            .iter()
            .filter(|(_, _, scope)| self.scopes.contains(*scope))
            .map(|(path, label, _)| NavLink {
                href: format!("{}{}", self.console.base, path),
                label,
                current: *path == self.current,
            })
            .collect()
    }
}

pub struct NavLink {
    pub href: String,
    pub label: &'static str,
    pub current: bool,
}

/// Renders a page template (a failure to render is a 500 page, never a panic).
pub fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a console page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be shown",
            )
                .into_response()
        }
    }
}

/// A page that could not be shown: its status, and the API's `detail` (or ours).
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
    pub console: &'static ConsoleInfo,
    /// Offer to sign in again (the session ended).
    pub sign_in: bool,
    /// The signed-in person's header and navigation, when the error happened on their page.
    pub chrome: Option<Box<Chrome>>,
    /// Where to go instead of the console's home (href, label), e.g. when the whole console
    /// is not for this person.
    pub elsewhere: Option<(&'static str, &'static str)>,
}

/// What an error page needs to keep the signed-in header and navigation.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub user: UserBox,
    pub scopes: std::collections::BTreeSet<String>,
}

impl PageError {
    pub fn new(
        console: &'static ConsoleInfo,
        status: StatusCode,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            title: title.into(),
            detail: detail.into(),
            console,
            sign_in: false,
            chrome: None,
            elsewhere: None,
        }
    }

    pub fn not_found(console: &'static ConsoleInfo, detail: impl Into<String>) -> Self {
        Self::new(console, StatusCode::NOT_FOUND, "Not found", detail)
    }

    pub fn internal(console: &'static ConsoleInfo) -> Self {
        Self::new(
            console,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "the page could not be shown; it was logged",
        )
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    error: &'a PageError,
}

impl IntoResponse for PageError {
    fn into_response(mut self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED && self.sign_in {
            // The API refused the session's token (revoked by a sign-out elsewhere, or the
            // person was disabled): sign in again, which asks QSA afresh.
            return session::redirect(&format!("{}/sign-in", self.console.base));
        }
        let chrome = self.chrome.take();
        let page = ErrorPage {
            layout: Layout {
                title: self.title.clone(),
                console: self.console,
                current: "",
                user: chrome.as_ref().map(|c| c.user.clone()),
                notice: None,
                scopes: chrome.map(|c| c.scopes).unwrap_or_default(),
            },
            error: &self,
        };
        let mut response = render(&page);
        *response.status_mut() = self.status;
        response
    }
}

/// Formats an amount of minor units in its currency (`1 500.00 EUR`), as the API does.
pub fn money(currency: &str, minor: i64) -> String {
    quantus_domain::commercial::money::Currency::parse(currency)
        .map(|c| c.format(minor))
        .unwrap_or_else(|_| format!("{minor} {currency} (minor units)"))
}

/// A list's "next page" link, when there is one.
pub struct Pager {
    pub next: Option<String>,
    /// Whether this is not the first page (offer "first page").
    pub later: bool,
    pub first: String,
}

/// The pager of a list at `path` (which may carry a query of its own, e.g. a filter).
pub fn pager(path: &str, next_after: Option<String>, after: &Option<String>) -> Pager {
    let joiner = if path.contains('?') { '&' } else { '?' };
    Pager {
        next: next_after.map(|n| {
            let q = api::query(&[("after", Some(&n))]);
            format!("{path}{joiner}{}", q.trim_start_matches('?'))
        }),
        later: after.is_some(),
        first: path.to_owned(),
    }
}

/// The date part of an RFC 3339 timestamp, for tables.
pub fn day(timestamp: &str) -> String {
    timestamp.get(..10).unwrap_or(timestamp).to_owned()
}
